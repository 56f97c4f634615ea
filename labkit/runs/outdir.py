"""A run's output directory (``--out``): checked before anything is created,
opened and held by its run lock, read back (its meta file), and removed
again when a refused run measured nothing into it."""
from __future__ import annotations

import os
from typing import Any

from labkit.core.errors import UsageError
from labkit.core.files import META_MAX, check_regular
from labkit.rundir import safepath, schema, store


def prepare_out(out: str | None, kind: str, resume: bool) -> str | None:
    """Check ``--out`` for a run of ``kind``, creating nothing.

    * the path: no component a symbolic link, no directory on it that
      another user can change (:func:`labkit.rundir.safepath.check`); no
      other labkit process holding its run lock;
    * resume: the directory must hold a run of this kind;
    * new run: the directory may not exist yet, or be empty, or be another
      kind's run directory that holds none of this kind's files (``labkit cpu
      --out`` a sweep's directory); any other file is refused, so labkit never
      overwrites what is not its own.
    """
    if out is None:
        if resume:
            raise UsageError("--resume needs --out")
        return None
    if not out:
        raise UsageError("--out is needed")
    out = safepath.check(out, "--out")
    if os.path.isdir(out) and not safepath.in_guest():
        pid = safepath.lock_holder(out)
        if pid is not None:
            who = f"labkit process {pid}" if pid else "another labkit process"
            raise UsageError(f"--out {out} is in use by {who} (it holds {schema.LOCK}); wait for it "
                             "to finish, or choose another --out")
    try:
        names = set(os.listdir(out)) if os.path.isdir(out) else set()
    except OSError as exc:
        raise UsageError(f"--out {out} cannot be read: {exc.strerror}") from None
    _check_names(out, kind, resume, names)
    return out


def _check_names(out: str, kind: str, resume: bool, names: set[str]) -> None:
    """The rules of :func:`prepare_out` on what the directory ``out`` holds."""
    rk = schema.KINDS[kind]
    if resume:
        if rk.meta not in names:
            raise UsageError(f"--resume: {out} holds no {kind} run to resume (no {rk.meta})")
        return
    if rk.meta in names:
        raise UsageError(f"{out} already holds a {kind} run; pass --resume to continue it "
                         "or choose another --out")
    mine = sorted(n for n in names if n in rk.tables)
    if mine:
        raise UsageError(f"{out} already holds {', '.join(mine)} of another run; choose another --out")
    foreign = sorted(n for n in names if n not in schema.KNOWN_FILES
                     and not n.startswith(schema.TMP_PREFIX))
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise UsageError(f"--out {out} is not empty and not a labkit run directory (holds {shown}); "
                         "choose a new or empty directory")


def open_out(out: str, kind: str, resume: bool) -> safepath.OutDir:
    """``out`` held open for the run (created if missing, every component
    checked again as it is opened) and its run lock taken; what
    :func:`prepare_out` checked is checked again under the lock, since another
    run may have started in between."""
    d = safepath.open_dir(out, "--out", create=True)
    try:
        d.writable()
        d.lock()
        if not d.created:
            _check_names(d.path, kind, resume, set(d.names()))
    except BaseException:
        release_out(d, kind)
        raise
    return d


def release_out(d: safepath.OutDir, kind: str) -> None:
    """Give the run directory up: its lock, and the directory itself when this
    run created it and measured nothing into it."""
    d.unlock()
    if d.created:
        _remove_empty_run(d, kind)
    d.close()


# ---------------------------------------------------------------------------
# the runner

def read_meta(out: str, kind: str, dir_fd: int | None = None) -> dict[str, Any]:
    """The meta file of the ``kind`` run in ``out`` (read through ``dir_fd``,
    the run directory held open, when given); UsageError when it is missing,
    unreadable or not a labkit meta file."""
    path = os.path.join(out, schema.KINDS[kind].meta)
    try:
        # a regular file of a sane size (a FIFO would block the read, /dev/zero never end it)
        check_regular(schema.KINDS[kind].meta if dir_fd is not None else path, path, META_MAX, dir_fd=dir_fd)
        meta = store.read_json(schema.KINDS[kind].meta, dir_fd=dir_fd) if dir_fd is not None \
            else store.read_json(path)
    except FileNotFoundError:
        raise UsageError(f"{out} holds no {kind} run ({os.path.basename(path)} is missing)") from None
    except UsageError as exc:   # not a regular file, or too large
        raise UsageError(f"{out} is not a valid labkit run: {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}); the run cannot be resumed") from None
    except OSError as exc:
        raise UsageError(f"{path} cannot be read: {exc.strerror}") from None
    problem = schema.meta_problem(meta, kind, resume=True)
    if problem:
        raise UsageError(f"{out} is not a valid labkit run: {problem}")
    return meta


def _remove_empty_run(d: safepath.OutDir, kind: str) -> None:
    """Remove a directory this run created, if nothing was measured into it
    (it holds at most the run's meta file, its lock file, temporary files and
    the guest kernel's facts, written before the guest boots)."""
    ours = {schema.KINDS[kind].meta, schema.LOCK, schema.GUEST_FACTS}
    names = d.names()
    if all(n in ours or n.startswith(schema.TMP_PREFIX) for n in names):
        for n in names:
            os.unlink(n, dir_fd=d.fd)
        try:
            os.rmdir(d.path)   # the empty directory: its path, as checked (rmdir follows no link)
        except OSError:
            pass

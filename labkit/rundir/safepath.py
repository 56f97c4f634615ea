"""Output directories no other user can redirect, held open, one run at a time.

labkit runs as root and writes where ``--out`` (sweep, control, cpu, bench)
and ``--out-dir`` (report, compare) say.  Every command goes through here:

* **resolved once, walked safely**: the path is made absolute and normalised,
  then walked from ``/`` one component at a time with ``openat(O_NOFOLLOW)``.
  A component that is a symbolic link is refused, and so is a directory that
  another user could change under us (:func:`refusal`): one owned by a user
  other than root or the invoking user, or writable by other users (group or
  world) unless it is sticky (like ``/tmp``: there nobody renames or removes
  what is not theirs).  What is missing is created by this walk, root's, 0755.
* **held open**: the walk ends with the output directory open
  (``O_DIRECTORY|O_NOFOLLOW``, :class:`OutDir`); every file is then written
  relative to that descriptor (:func:`labkit.rundir.store.atomic_write_at`:
  ``O_EXCL|O_NOFOLLOW`` random temporary names, a rename, an fsync of the
  directory), so a directory swapped for a symbolic link after the walk
  changes nothing: the writes go on into the directory that was checked.
* **one run per directory**: :meth:`OutDir.lock` takes an exclusive ``flock``
  on ``.labkit.lock`` inside it (opened ``O_NOFOLLOW``) for the run's life and
  records the holder's PID there; a second run or resume is refused in one
  line naming that PID.  Inside a kernel labkit booted (``LABKIT_GUEST``),
  which writes into the host's run directory through hostfs, no lock is
  taken: the host process holds it.

Refusals are :class:`~labkit.core.errors.UsageError` (one line, exit 2).
"""
from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import stat
from typing import Any

from labkit.core.errors import UsageError
from labkit.core.files import TMP_PREFIX, open_regular
from labkit.core.kernel_kinds import in_guest
from labkit.rundir.schema import LOCK

_WALK = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_HOLD = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# ---------------------------------------------------------------------------
# who may change a directory

def _env_id(name: str) -> set[int]:
    v = os.environ.get(name, "")
    return {int(v)} if os.getuid() == 0 and v.isascii() and v.isdigit() else set()


def trusted_users() -> frozenset[int]:
    """Root and the invoking user (through sudo or pkexec: the user who ran it)."""
    return frozenset({0, os.getuid(), os.geteuid()} | _env_id("SUDO_UID") | _env_id("PKEXEC_UID"))


def trusted_groups(users: frozenset[int]) -> frozenset[int]:
    """Group 0, and the invoking user's own group when no one else is listed in it."""
    names = set()
    for uid in users:
        try:
            names.add(pwd.getpwuid(uid).pw_name)
        except KeyError:
            pass
    out = {0}
    for gid in {os.getgid()} | _env_id("SUDO_GID"):
        try:
            members = set(grp.getgrgid(gid).gr_mem)
        except KeyError:
            continue
        if members <= names:
            out.add(gid)
    return frozenset(out)


def refusal(st: os.stat_result, users: frozenset[int], groups: frozenset[int]) -> str | None:
    """Why a directory with status ``st`` is one another user could redirect
    labkit's writes through, or None when only root and ``users`` can change it.
    Pure."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(mode):
        return "is not a directory"
    if st.st_uid not in users:
        return f"belongs to uid {st.st_uid}, another user, who could redirect labkit's writes"
    others = mode & stat.S_IWOTH or (mode & stat.S_IWGRP and st.st_gid not in groups)
    if others and not mode & stat.S_ISVTX:
        return f"is writable by other users (mode {stat.S_IMODE(mode):o}, not sticky)"
    return None


# ---------------------------------------------------------------------------
# the walk

def resolve(path: str | os.PathLike[str], what: str) -> str:
    """``path`` absolute and normalised (``..`` and ``.`` removed), once."""
    p = os.fspath(path)
    if not p:
        raise UsageError(f"{what} is needed")
    if "\0" in p:
        raise UsageError(f"{what} holds a NUL character")
    return os.path.normpath(os.path.abspath(p))


def _refuse(what: str, path: str, comp: str, why: str) -> UsageError:
    hint = ("give the path without symbolic links" if "symbolic" in why else
            "choose a directory" if "not a directory" in why else
            "choose a directory only root and you can change")
    where = "" if comp == path else f" ({comp})"
    return UsageError(f"{what} {path}{where} {why}; {hint}")


def _walk(path: str, what: str, create: bool) -> tuple[int | None, bool]:
    """Walk ``path`` (absolute, normalised) from ``/``: (an ``O_PATH`` descriptor
    of it, or None when it does not exist and ``create`` is False; whether this
    walk created its last component)."""
    users = trusted_users()
    groups = trusted_groups(users)
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", _WALK)
    created = False
    try:
        why = refusal(os.fstat(fd), users, groups)
        if why:
            raise _refuse(what, path, "/", why)
        for i, name in enumerate(parts):
            comp = "/" + "/".join(parts[:i + 1])
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    return None, False
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                    created = i == len(parts) - 1
                except FileExistsError:
                    pass   # made by someone else in between: checked below like any other
                except OSError as exc:
                    raise UsageError(f"{what} {path} cannot be created: {exc.strerror}") from None
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError as exc:
                raise UsageError(f"{what} {path}: {comp} cannot be examined: {exc.strerror}") from None
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
                raise _refuse(what, path, comp, refusal(st, users, groups) or "is not a directory")
            try:
                nfd = os.open(name, _WALK, dir_fd=fd)
            except OSError as exc:   # ELOOP: it became a symbolic link since the stat
                raise _refuse(what, path, comp, "is a symbolic link" if exc.errno in (errno.ELOOP, errno.ENOTDIR)
                              else f"cannot be opened: {exc.strerror}") from None
            os.close(fd)
            fd = nfd
            why = refusal(os.fstat(fd), users, groups)
            if why and not (in_guest() and "symbolic" not in why):
                # (in a guest kernel the host has checked ownership: hostfs shows the host's ids)
                raise _refuse(what, path, comp, why)
        return fd, created
    except BaseException:
        os.close(fd)
        raise


def check(path: str | os.PathLike[str], what: str) -> str:
    """``path`` resolved, or UsageError when a component of it is a symbolic
    link or a directory another user can change.  Creates nothing; the part
    of the path that does not exist yet is not judged (:func:`open_dir`
    creates it, root's)."""
    p = resolve(path, what)
    fd, _ = _walk(p, what, create=False)
    if fd is not None:
        os.close(fd)
    return p


def open_dir(path: str | os.PathLike[str], what: str, create: bool = True) -> "OutDir":
    """The directory ``path`` held open, after the walk of :func:`check`;
    with ``create``, what is missing of it is created."""
    p = resolve(path, what)
    fd, created = _walk(p, what, create)
    if fd is None:
        raise UsageError(f"{what} {p} does not exist")
    try:
        held = os.open(".", _HOLD, dir_fd=fd)
    except OSError as exc:
        raise UsageError(f"{what} {p} cannot be opened: {exc.strerror}") from None
    finally:
        os.close(fd)
    return OutDir(p, held, created, what)


# ---------------------------------------------------------------------------
# the held directory

def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def lock_holder(path: str) -> int | None:
    """The PID of the labkit process holding ``path``'s run lock (0 when it is
    held but names no PID), or None when no one holds it.  Never blocks."""
    with open_regular(os.path.join(path, LOCK), os.O_RDONLY) as fd:
        if fd is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        except OSError:
            return None
        return None


class OutDir:
    """An output directory held open: ``fd`` (``O_DIRECTORY|O_NOFOLLOW``),
    ``path`` (for messages and for programs that need one), ``created`` (this
    process made it).  Write into it with :func:`labkit.rundir.store.atomic_write_at`."""

    def __init__(self, path: str, fd: int, created: bool, what: str = "--out") -> None:
        self.path = path
        self.fd = fd
        self.created = created
        self.what = what
        self._lock_fd: int | None = None

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def writable(self) -> None:
        """UsageError unless a file can be created in it."""
        name = f"{TMP_PREFIX}probe-{os.urandom(6).hex()}"
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600, dir_fd=self.fd))
            os.unlink(name, dir_fd=self.fd)
        except OSError as exc:
            raise UsageError(f"{self.what} {self.path} is not writable: {exc.strerror}") from None

    def lock(self) -> "OutDir":
        """Take the directory's run lock (exclusive ``flock``, held until
        :meth:`unlock` or :meth:`close`), recording this PID; UsageError naming
        the holder's PID when another process holds it.  A no-op in a guest
        kernel: the host's labkit holds the lock for the guest's run."""
        if self._lock_fd is not None or in_guest():
            return self
        for _ in range(10):
            try:
                fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                             0o644, dir_fd=self.fd)
            except OSError as exc:
                raise UsageError(f"{self.what} {self.path}: its lock file {LOCK} cannot be opened "
                                 f"({exc.strerror})") from None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise UsageError(f"{self.what} {self.path}: {LOCK} is not a regular file")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pid = _read_pid(fd)
                    who = f"labkit process {pid}" if pid else "another labkit process"
                    raise UsageError(f"{self.what} {self.path} is in use by {who} (it holds "
                                     f"{LOCK}); wait for it to finish, or choose another "
                                     f"{self.what}") from None
                # the file may have been unlinked by its last holder between our open and flock
                now = os.stat(LOCK, dir_fd=self.fd, follow_symlinks=False)
                mine = os.fstat(fd)
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            os.fchmod(fd, 0o644)
            self._lock_fd = fd
            return self
        raise UsageError(f"{self.what} {self.path}: its lock file {LOCK} keeps changing")

    def unlock(self) -> None:
        """Give the run lock up, removing the lock file (while still holding it)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            st = os.stat(LOCK, dir_fd=self.fd, follow_symlinks=False)
            mine = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(LOCK, dir_fd=self.fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def close(self) -> None:
        self.unlock()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "OutDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover (a forgotten close)
        try:
            self.close()
        except Exception:
            pass

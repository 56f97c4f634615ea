"""Run directories: tidy tables written atomically.

Every file is written to a temporary name in the same directory, flushed to
disk (fsync) and renamed over the old one, and the directory is flushed after
the rename, so a reader (or a crash, or a power cut) never sees a half-written
file, nor loses a rename that was reported done.  Files are 0644: a run made as root can be
analysed by anyone who can read its directory.

The writes are relative to an open directory (:func:`atomic_write_at`, the
``dir_fd`` arguments; :class:`labkit.rundir.safepath.OutDir` holds one): the
temporary file has a random name and is created ``O_EXCL|O_NOFOLLOW`` (a
symbolic link planted under any name is never written through), and the
rename replaces whatever the final name was, a symbolic link included, never
its target.  Given a path, the directory is opened ``O_NOFOLLOW`` first.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
from typing import IO, Any

import pandas as pd

from labkit.rundir.schema import TMP_PREFIX

FILE_MODE = 0o644
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a file name: {name!r}")
    return name


def atomic_write_at(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``data`` to the file ``name`` of the open directory ``dir_fd``:
    a new temporary file of a random name (``O_EXCL|O_NOFOLLOW``), fsynced,
    renamed onto ``name`` within the directory, then the directory fsynced."""
    _name(name)
    for _ in range(100):
        tmp = f"{TMP_PREFIX}{secrets.token_hex(6)}{name}"
        try:
            fd = os.open(tmp, _NEW, FILE_MODE, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover (2**48 names)
        raise FileExistsError(f"no free temporary name for {name}")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    os.fsync(dir_fd)      # the rename itself, on disk


def open_parent(path: str) -> tuple[int, str]:
    """(the directory of ``path`` opened ``O_NOFOLLOW``, the file's name in it)."""
    path = os.path.abspath(path)
    return os.open(os.path.dirname(path), _DIR), _name(os.path.basename(path))


def atomic_write_bytes(path: str, data: bytes, *, dir_fd: int | None = None) -> None:
    """:func:`atomic_write_at` for a path (or a name in ``dir_fd``)."""
    if dir_fd is not None:
        atomic_write_at(dir_fd, path, data)
        return
    dfd, name = open_parent(path)
    try:
        atomic_write_at(dfd, name, data)
    finally:
        os.close(dfd)


def open_read(path: str, dir_fd: int | None = None) -> IO[bytes]:
    """``path`` opened for reading; with ``dir_fd``, the name ``path`` in that
    directory, never through a symbolic link."""
    if dir_fd is None:
        return open(path, "rb")
    return os.fdopen(os.open(_name(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd), "rb")


def exists(path: str, dir_fd: int | None = None) -> bool:
    try:
        os.stat(path, dir_fd=dir_fd, follow_symlinks=dir_fd is None)
    except FileNotFoundError:
        return False
    return True


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, hex (raw data checksums, pinned packages)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str, obj: Any, *, dir_fd: int | None = None) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(),
                       dir_fd=dir_fd)


def read_json(path: str, *, dir_fd: int | None = None) -> Any:
    with open_read(path, dir_fd) as f:
        return json.loads(f.read().decode("utf-8"))


def write_table(path: str, df: pd.DataFrame, *, dir_fd: int | None = None) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue(), dir_fd=dir_fd)


def remove_stale_temps(directory: str | int) -> list[str]:
    """Remove the temporary files a killed writer left in ``directory`` (a
    path, or an open directory's descriptor); their names."""
    dir_fd = directory if isinstance(directory, int) else None
    gone = []
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            if dir_fd is None:
                os.unlink(os.path.join(str(directory), name))
            else:
                os.unlink(name, dir_fd=dir_fd)
            gone.append(name)
    return gone


def read_table(path: str, *, dir_fd: int | None = None) -> pd.DataFrame:
    """A table, read through one open file: given a path, pyarrow may open it twice
    (footer, then pages), and a writer's atomic replace in between mixes two
    versions ("Page was smaller than expected"). One descriptor holds one version."""
    with open_read(path, dir_fd) as f:
        return pd.read_parquet(f)

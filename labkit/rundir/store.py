"""Run directories: tidy tables written atomically.

Every file is written to a temporary name in the same directory, flushed to
disk (fsync) and renamed over the old one, and the directory is flushed after
the rename, so a reader (or a crash, or a power cut) never sees a half-written
file, nor loses a rename that was reported done.  Files are 0644: a run made as root can be
analysed by anyone who can read its directory.

The writes are relative to an open directory (:func:`atomic_write_at`, the
``dir_fd`` arguments; :class:`labkit.rundir.safepath.OutDir` holds one),
through labkit's one atomic write (:mod:`labkit.core.files`): the temporary
file has a random name and is created ``O_EXCL|O_NOFOLLOW`` (a symbolic link
planted under any name is never written through), and the rename replaces
whatever the final name was, a symbolic link included, never its target.
Given a path, the directory is opened ``O_NOFOLLOW`` first.
"""
from __future__ import annotations

import io
import json
import os
from typing import IO, Any

import pandas as pd

from labkit.core.files import TMP_PREFIX, file_name
from labkit.core.files import atomic_write_at as atomic_write_at
from labkit.core.files import atomic_write_bytes as atomic_write_bytes
from labkit.core.files import sha256_file as sha256_file


def open_read(path: str, dir_fd: int | None = None) -> IO[bytes]:
    """``path`` opened for reading; with ``dir_fd``, the name ``path`` in that
    directory, never through a symbolic link."""
    if dir_fd is None:
        return open(path, "rb")
    return os.fdopen(os.open(file_name(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd), "rb")


def exists(path: str, dir_fd: int | None = None) -> bool:
    try:
        os.stat(path, dir_fd=dir_fd, follow_symlinks=dir_fd is None)
    except FileNotFoundError:
        return False
    return True


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
    path, or an open directory's descriptor); their names.  One that is gone
    by the time it is removed (renamed by a live writer) is skipped: only a
    run's owner calls this, never a segment of it while the owner writes."""
    dir_fd = directory if isinstance(directory, int) else None
    gone = []
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            try:
                if dir_fd is None:
                    os.unlink(os.path.join(str(directory), name))
                else:
                    os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            gone.append(name)
    return gone


def read_table(path: str, *, dir_fd: int | None = None) -> pd.DataFrame:
    """A table, read through one open file: given a path, pyarrow may open it twice
    (footer, then pages), and a writer's atomic replace in between mixes two
    versions ("Page was smaller than expected"). One descriptor holds one version."""
    with open_read(path, dir_fd) as f:
        return pd.read_parquet(f)

"""Run directories: tidy tables written atomically.

Every file is written to a temporary name in the same directory, flushed to
disk (fsync) and renamed over the old one, and the directory is flushed after
the rename, so a reader (or a crash, or a power cut) never sees a half-written
file, nor loses a rename that was reported done.  Files are 0644: a run made as root can be
analysed by anyone who can read its directory.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any

import pandas as pd

from labkit.rundir.schema import TMP_PREFIX

FILE_MODE = 0o644


def atomic_write_bytes(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=TMP_PREFIX, suffix=os.path.basename(path))
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)      # the rename itself, on disk
    finally:
        os.close(dfd)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, hex (raw data checksums, pinned packages)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def write_table(path: str, df: pd.DataFrame) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def remove_stale_temps(directory: str) -> list[str]:
    """Remove the temporary files a killed writer left in ``directory``; their names."""
    gone = []
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            os.unlink(os.path.join(directory, name))
            gone.append(name)
    return gone


def read_table(path: str) -> pd.DataFrame:
    """A table, read through one open file: given a path, pyarrow may open it twice
    (footer, then pages), and a writer's atomic replace in between mixes two
    versions ("Page was smaller than expected"). One descriptor holds one version."""
    with open(path, "rb") as f:
        return pd.read_parquet(f)

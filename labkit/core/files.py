"""Reading a small input file that a user names (a parameter file, a run's
meta file) without trusting what the path is: only a regular file is read,
and only up to a size cap.

A FIFO, a device (``/dev/zero``), a directory or a symbolic link is refused
from its ``lstat``, before it is opened; the file is then opened with
``O_NONBLOCK`` (opening a FIFO swapped in meanwhile never waits for a writer)
and ``O_NOFOLLOW``, and checked again with ``fstat`` on the descriptor that
is read.  At most ``cap + 1`` bytes are read, so a file that grows past the
cap after the check is refused too.
"""
from __future__ import annotations

import contextlib
import os
import stat
from typing import Iterator

from labkit.core.errors import UsageError

#: the size cap of a parameter file
PARAMS_MAX = 1 << 20
#: the size cap of a run's meta file (its block list grows with the run)
META_MAX = 64 << 20


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None: a regular file)."""
    if stat.S_ISREG(mode):
        return None
    return ("a directory" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode)
            else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")


def _size(n: int) -> str:
    return f"{n / (1 << 20):.3g} MiB" if n >= 1 << 20 else f"{n:,} bytes"


def check_regular(path: str, what: str, cap: int, *, dir_fd: int | None = None) -> None:
    """Refuse ``path`` (a name in ``dir_fd`` when given) unless it is a regular
    file, not a symbolic link, of at most ``cap`` bytes, from its ``lstat``:
    nothing is opened.  FileNotFoundError when it does not exist."""
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UsageError(f"{what} cannot be read: {exc.strerror}") from None
    kind = _kind(st.st_mode)
    if kind is not None:
        hint = "; give the file itself" if kind == "a symbolic link" else ""
        raise UsageError(f"{what} is {kind}, not a regular file{hint}")
    if st.st_size > cap:
        raise UsageError(f"{what} is {_size(st.st_size)}; at most {_size(cap)} is read")


def read_regular(path: str, what: str, cap: int) -> bytes:
    """The bytes of the regular file ``path`` (``what`` names it in errors:
    "parameter file x.yaml"), at most ``cap`` bytes.  FileNotFoundError when
    it does not exist (the caller words that); UsageError for anything else."""
    check_regular(path, what, cap)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UsageError(f"{what} cannot be read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        kind = _kind(st.st_mode)
        if kind is not None:   # swapped after the lstat
            raise UsageError(f"{what} is {kind}, not a regular file")
        chunks, got = [], 0
        while got <= cap:
            chunk = os.read(fd, min(1 << 16, cap + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as exc:
        raise UsageError(f"{what} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if got > cap:
        raise UsageError(f"{what} is larger than {_size(cap)}; at most that is read")
    return b"".join(chunks)


@contextlib.contextmanager
def open_regular(path: str, flags: int) -> Iterator[int | None]:
    """A descriptor of ``path`` for the block when it is a regular file, opened
    with ``flags`` plus ``O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC`` (never through a
    symbolic link, never waiting on a FIFO); None when it is missing, a link or
    not a regular file.  Closed after the block (the lock files of
    :mod:`labkit.host.state` and :mod:`labkit.rundir.safepath`)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        yield None
        return
    try:
        yield fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)

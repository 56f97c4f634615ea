"""Files read and written without trusting what a path is.

Reading a small input file that a user names (a parameter file, a run's
meta file): only a regular file is read, and only up to a size cap.

A FIFO, a device (``/dev/zero``), a directory or a symbolic link is refused
from its ``lstat``, before it is opened; the file is then opened with
``O_NONBLOCK`` (opening a FIFO swapped in meanwhile never waits for a writer)
and ``O_NOFOLLOW``, and checked again with ``fstat`` on the descriptor that
is read.  At most ``cap + 1`` bytes are read, so a file that grows past the
cap after the check is refused too.

Writing, the one atomic write of labkit (:func:`atomic_write_at`, used by
run directories, the state files of ``/run/labkit``, reports and the
cache): the data goes to a new temporary file of a random name in the same
directory, created ``O_EXCL|O_NOFOLLOW`` relative to the open directory (a
symbolic link planted under any name is never written through), is fsynced
and renamed onto the final name (which replaces whatever was there, a
symbolic link included, never its target), and the directory is fsynced
after the rename: a reader, a crash or a power cut never sees a
half-written file nor loses a rename reported done.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import stat
from typing import IO, Callable, Iterator

from labkit.core.errors import UsageError

#: the size cap of a parameter file
PARAMS_MAX = 1 << 20
#: the size cap of a run's meta file (its block list grows with the run)
META_MAX = 64 << 20
#: prefix of the temporary files of :func:`atomic_write_at` (``remove_stale_temps`` of a run)
TMP_PREFIX = ".tmp-"
#: the mode of a written file: a run made as root can be analysed by anyone who can read it
FILE_MODE = 0o644
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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


# ---------------------------------------------------------------------------
# the atomic write

def file_name(name: str) -> str:
    """``name`` when it is one name in a directory (no ``/``, not ``.``/``..``)."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a file name: {name!r}")
    return name


def temp_name(name: str) -> str:
    """A fresh temporary name for ``name``: ``.tmp-<random><name>``."""
    return f"{TMP_PREFIX}{secrets.token_hex(6)}{name}"


def atomic_write_at(dir_fd: int, name: str, data: bytes | IO[bytes], *, mode: int = FILE_MODE,
                    temp: Callable[[str], str] = temp_name) -> None:
    """Write ``data`` (bytes, or a binary file read to its end) to the file
    ``name`` of the open directory ``dir_fd``, with permissions ``mode``: a new
    temporary file named by ``temp`` (random; ``O_EXCL|O_NOFOLLOW``), fsynced,
    renamed onto ``name`` within the directory, then the directory fsynced."""
    file_name(name)
    for _ in range(100):
        tmp = temp(name)
        try:
            fd = os.open(tmp, _NEW, mode, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover (2**48 names)
        raise FileExistsError(f"no free temporary name for {name}")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                shutil.copyfileobj(data, f, 1 << 20)
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


def open_parent(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(the directory of ``path`` opened ``O_NOFOLLOW``, the file's name in it)."""
    p = os.path.abspath(path)
    return os.open(os.path.dirname(p), _DIR), file_name(os.path.basename(p))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | IO[bytes], *,
                       dir_fd: int | None = None, mode: int = FILE_MODE,
                       temp: Callable[[str], str] = temp_name) -> None:
    """:func:`atomic_write_at` for a path (or a name in ``dir_fd``)."""
    if dir_fd is not None:
        atomic_write_at(dir_fd, os.fspath(path), data, mode=mode, temp=temp)
        return
    dfd, name = open_parent(path)
    try:
        atomic_write_at(dfd, name, data, mode=mode, temp=temp)
    finally:
        os.close(dfd)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, hex (raw data checksums, pinned packages)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

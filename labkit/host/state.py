"""What each labkit run has made, on disk, so that `labkit clean` can remove
it even after a SIGKILL, and can prove which runs are still alive.

Each run owns two files in ``/run/labkit`` (a root-owned 0700 directory,
checked before use: never a symlink, never another user's):

* ``<run id>.lock``, created and ``flock``-ed exclusively by the run before
  anything else exists and held for the run's whole life: the lock is the
  proof of life (the kernel drops it when the process dies, however it dies;
  no pid is trusted for this);
* ``<run id>.json``: the owner's pid and every namespace, process (pid with
  its start time, so a reused pid is never mistaken for it), mount and
  temporary directory it made.  Resources are recorded *before* they are
  created, so a crash in between leaves a record.

``/run`` is a tmpfs: a reboot clears it together with the resources.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from labkit.core.errors import LabkitError
from labkit.core.files import atomic_write_bytes, open_regular

STATE_DIR = os.environ.get("LABKIT_STATE_DIR", "/run/labkit")
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8


def private_dir(path: str) -> str:
    """``path`` as a directory only this user can enter: created 0700 if
    missing; refused when it is a symlink, not a directory, owned by another
    user or writable by others (someone could plant files in it)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise LabkitError(f"{path} is not a private directory of this user (a symlink, another "
                          "owner, or writable by others): labkit will not keep its state there")
    return path


def proc_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), or None
    when it does not run.  With the pid it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":  # a zombie is gone
        return None
    return int(fields[19])


def same_process(pid: int, start: int | None) -> bool:
    """True while the process that was ``pid`` at ``start`` still runs."""
    return start is not None and proc_start(pid) == start


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    return proc_start(pid) is not None


def lock_held(run_id: str) -> bool:
    """True while the run ``run_id`` holds its lock (it is alive)."""
    path = os.path.join(STATE_DIR, f"{run_id}.lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # a lock file we cannot open is not ours to judge: treat as alive
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _same_file(fd: int, path: str) -> bool:
    """``path`` (not followed) is still the file open as ``fd``."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def remove_unheld_lock(run_id: str) -> bool:
    """Remove the lock file of ``run_id`` when no process holds it and no state
    file is beside it (a run killed between removing its state file and its
    lock file leaves one); True when it was removed.  The lock is taken
    (``LOCK_EX|LOCK_NB``) while the file is checked and removed, so a run that
    is taking it waits and then makes a new one (:meth:`RunState.acquire`)."""
    path = os.path.join(STATE_DIR, f"{run_id}.lock")
    with open_regular(path, os.O_RDWR) as fd:
        if fd is None:
            return False   # gone, a symbolic link or not a file: not a lock file of labkit's
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False   # held: a live run
        if os.path.lexists(os.path.join(STATE_DIR, f"{run_id}.json")) or not _same_file(fd, path):
            return False
        os.unlink(path)
        return True


@dataclass
class RunState:
    run_id: str
    pid: int = field(default_factory=os.getpid)
    pid_start: int | None = field(default_factory=lambda: proc_start(os.getpid()))
    started: float = field(default_factory=time.time)
    namespaces: list[str] = field(default_factory=list)
    pids: list[list[int]] = field(default_factory=list)   # [pid, start time]
    paths: list[str] = field(default_factory=list)        # temporary directories
    mounts: list[str] = field(default_factory=list)       # what this run mounted (bpffs)

    def __post_init__(self) -> None:
        self._lock_fd: int | None = None

    @property
    def file(self) -> str:
        return os.path.join(STATE_DIR, f"{self.run_id}.json")

    @property
    def lock_file(self) -> str:
        return os.path.join(STATE_DIR, f"{self.run_id}.lock")

    # -- the owner's side -------------------------------------------------
    def acquire(self) -> None:
        """Take the run's lock (before anything of the run exists) and write
        the first state file."""
        private_dir(STATE_DIR)
        deadline = time.monotonic() + 10
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            try:
                # `clean` may hold a lock file without a state file for a moment, to remove it
                # (:func:`remove_unheld_lock`): wait, then make sure the file is still the one
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise LabkitError(f"the run lock {self.lock_file} stays held by another "
                                              "process") from None
                        time.sleep(0.01)
                still = _same_file(fd, self.lock_file)
            except BaseException:
                os.close(fd)
                raise
            if still:
                break
            os.close(fd)   # removed meanwhile: make a new one
        self._lock_fd = fd
        self.save()

    def save(self) -> None:
        """Write the state file atomically, 0600; its temporary file is named
        ``<run id>.json.tmp<pid>-<random>`` so `clean` knows when its writer is gone."""
        atomic_write_bytes(self.file, json.dumps(asdict(self)).encode(), mode=0o600,
                           temp=lambda name: f"{name}.tmp{os.getpid()}-{secrets.token_hex(6)}")

    def add(self, kind: str, value: Any) -> None:
        getattr(self, kind).append(value)
        self.save()

    def discard(self, kind: str, value: Any) -> None:
        items = getattr(self, kind)
        if value in items:
            items.remove(value)
            self.save()

    def add_pid(self, pid: int) -> None:
        self.add("pids", [pid, proc_start(pid) or 0])

    def discard_pid(self, pid: int) -> None:
        for item in [p for p in self.pids if p[0] == pid]:
            self.discard("pids", item)

    def drop(self) -> None:
        """The run is over and left nothing: remove its files, release the lock."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_file)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- anyone's side ----------------------------------------------------------
    @classmethod
    def load(cls, path: str) -> "RunState":
        with open(path) as f:
            d = json.load(f)
        d["pids"] = [p if isinstance(p, list) else [p, 0] for p in d.get("pids", [])]
        d.setdefault("pid_start", None)  # a file of an older labkit
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def owner_alive(self) -> bool:
        """The run is alive: it holds its lock (or it is this process).  A
        state file without a lock file (written by an older labkit, or being
        dropped right now) counts as alive while its owner's pid runs with
        the recorded start time: only a run proven dead is cleaned."""
        if self._lock_fd is not None or lock_held(self.run_id):
            return True
        if os.path.exists(self.lock_file):
            return False   # the lock exists and nobody holds it: the owner died
        if self.pid_start is None:
            return pid_alive(self.pid)
        return same_process(self.pid, self.pid_start)


def all_states() -> list[RunState]:
    """Every run's state file (none when the state directory is missing, or
    private to root and read by another user: labkit's runs are root's)."""
    out: list[RunState] = []
    try:
        names = os.listdir(STATE_DIR)
    except (FileNotFoundError, PermissionError):
        return out
    for n in sorted(names):
        if n.endswith(".json"):
            try:
                out.append(RunState.load(os.path.join(STATE_DIR, n)))
            except (OSError, ValueError, TypeError):
                continue
    return out


def unmount(path: str) -> None:
    """Detach a mount this run made (a run's private bpffs instance: its pins
    go with it), never following a symlink to somewhere else."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
        e = ctypes.get_errno()
        if e in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
            return
        raise OSError(e, f"cannot unmount {path}: {os.strerror(e)}")


def is_mount(path: str) -> bool:
    """``path`` itself (not a symlink's target) is a mount point."""
    target = os.path.realpath(path)
    if target != os.path.abspath(path):
        return False
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def remove_path(path: str) -> None:
    """Remove a directory or file a run made; a symlink is unlinked, never followed."""
    if os.path.islink(path):
        os.unlink(path)
        return
    if is_mount(path):
        unmount(path)
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

"""What each labkit run has made, on disk, so that `labkit clean` can remove
it even after a SIGKILL.

Each run owns ``/run/labkit/<run id>.json``: the owner's pid and every
namespace, process, bpffs pin and temporary directory it made.  Resources are
recorded *before* they are created, so a crash in between leaves a record.
``/run`` is a tmpfs: a reboot clears it together with the resources.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field

STATE_DIR = os.environ.get("LABKIT_STATE_DIR", "/run/labkit")


@dataclass
class RunState:
    run_id: str
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)
    namespaces: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)   # bpffs pin dirs, temp dirs

    @property
    def file(self) -> str:
        return os.path.join(STATE_DIR, f"{self.run_id}.json")

    def save(self) -> None:
        os.makedirs(STATE_DIR, exist_ok=True)
        tmp = f"{self.file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f)
        os.replace(tmp, self.file)

    def add(self, kind: str, value: object) -> None:
        getattr(self, kind).append(value)
        self.save()

    def discard(self, kind: str, value: object) -> None:
        items = getattr(self, kind)
        if value in items:
            items.remove(value)
            self.save()

    def drop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file)

    @classmethod
    def load(cls, path: str) -> "RunState":
        with open(path) as f:
            return cls(**json.load(f))

    def owner_alive(self) -> bool:
        return self.pid == os.getpid() or pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def all_states() -> list[RunState]:
    out: list[RunState] = []
    try:
        names = os.listdir(STATE_DIR)
    except FileNotFoundError:
        return out
    for n in sorted(names):
        if n.endswith(".json"):
            try:
                out.append(RunState.load(os.path.join(STATE_DIR, n)))
            except (OSError, ValueError, TypeError):
                continue
    return out


MNT_DETACH = 2


def unmount(path: str) -> None:
    """Detach a mount (a run's private bpffs instance: its pins go with it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"cannot unmount {path}: {os.strerror(e)}")


def remove_path(path: str) -> None:
    if os.path.ismount(path):
        unmount(path)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

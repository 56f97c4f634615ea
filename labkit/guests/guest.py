"""What every "other kernel" backend shares (virtme-ng VM, user-mode Linux):
the exchange directory, the guest's command script, the guest environment,
supervising the kernel process (boot timeout, command timeout, its whole
process group killed on timeout, error and Ctrl-C) and its result.

The exchange directory ``xdir`` (made with ``mkdtemp``: private, unpredictable)
is shared with the guest, which writes into it::

    xdir/run.sh      the command, as the guest runs it (written by the host)
    xdir/started     the guest's uptime when the command starts (boot done)
    xdir/stdout, stderr, rc   the command's output and exit status
    xdir/console.log the kernel process's own output (its console)
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, AbstractSet, Any, Callable, Mapping, Sequence

from labkit.core.errors import LabkitError
from labkit.core.kernel_kinds import GUEST_ENV
from labkit.core.topology import new_run_id
from labkit.host.state import RunState, remove_path

CONSOLE_TAIL = 20


class GuestBootError(LabkitError):
    """The other kernel did not come up to run the command."""


class GuestResult(subprocess.CompletedProcess):
    """A CompletedProcess with the guest console and the facts for the meta file."""

    def __init__(self, args: Any, returncode: int, stdout: str, stderr: str, console: str,
                 facts: dict) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.console = console
        self.facts = facts


def run_command(ap: argparse.ArgumentParser, a: argparse.Namespace, run: Callable[..., Any]) -> int:
    """The ``run -- CMD`` subcommand of ``python -m labkit.guests.uml|vm``: run CMD
    with ``run`` (``run_in_uml``/``run_in_vm``), its output echoed, the guest's facts
    on stderr; returns its exit status."""
    cmd = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    if not cmd:
        ap.error("run needs a command after --")
    res = run(cmd, a.timeout, rw=a.rw, check=False, echo=sys.stdout)
    print(json.dumps(res.facts), file=sys.stderr)
    return res.returncode


def default_memory() -> str:
    """Half the host's memory, 1 to 4 GiB."""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        return f"{max(1, min(4, kb // (2 * 1024 * 1024)))}G"
    except (OSError, ValueError, IndexError):
        return "2G"


def guest_env(env: Mapping[str, str] | None, backend: str, tmpdir: str = "/tmp") -> dict[str, str]:
    """The command's environment in the guest: the host's PATH, locale and
    LABKIT_* variables, ``LABKIT_GUEST=<backend>`` (labkit inside then stays
    there: ``--kernel`` resolves to host), plus ``env``."""
    keep = {k: v for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "PYTHONPATH") or k.startswith("LABKIT_")}
    path = keep.get("PATH", "/usr/bin:/bin")
    for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        if extra not in path.split(":"):
            path += ":" + extra
    keep.update(PATH=path, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", TMPDIR=tmpdir)
    keep[GUEST_ENV] = backend
    keep.update(env or {})
    return keep


def command_script(xdir: Path, argv: Sequence[str], cwd: str, env: Mapping[str, str], who: str) -> str:
    """The shell lines that run ``argv`` once inside the guest and leave
    ``started``, ``stdout``, ``stderr`` and ``rc`` in ``xdir``."""
    q = shlex.quote
    d = q(str(xdir))
    assigns = " ".join(q(f"{k}={v}") for k, v in sorted(env.items()))
    return (f"# written by {who}: runs once inside the guest\n"
            f"cat /proc/sys/net/core/bpf_jit_enable > {d}/bpf_jit 2>/dev/null || echo none > {d}/bpf_jit\n"
            f"cat /proc/uptime > {d}/started.tmp && mv {d}/started.tmp {d}/started\n"
            f"rc=125\n"
            f"if cd {q(cwd)}; then\n"
            f"  env -i {assigns} {' '.join(q(a) for a in argv)} </dev/null >{d}/stdout 2>{d}/stderr\n"
            f"  rc=$?\n"
            f"  # killed by a signal: what the guest kernel logged about it (segfault, OOM) goes to stderr\n"
            f"  if [ $rc -ge 128 ]; then dmesg 2>/dev/null | grep -E 'segfault|traps:|oom|Killed process' "
            f"| tail -3 >>{d}/stderr; fi\n"
            f"else\n"
            f"  echo '{who}: cannot enter {cwd} in the guest' >{d}/stderr\n"
            f"fi\n"
            f"echo $rc > {d}/rc.tmp && mv {d}/rc.tmp {d}/rc\n")


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGKILL when its parent dies, for any
    reason, SIGKILL included (``PR_SET_PDEATHSIG``); if the parent is gone
    already, the child exits before it starts.  A guest kernel so never
    outlives the labkit process that supervises it (user-mode Linux's own
    helper processes carry the same signal from their kernel)."""
    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(125)
    return arm


def on_cpus(first: Callable[[], None], cpus: AbstractSet[int] | None) -> Callable[[], None]:
    """The ``preexec_fn`` ``first``, then (with ``cpus``) the child, and all it
    starts, held to those host CPUs."""
    def start() -> None:
        first()
        if cpus:
            os.sched_setaffinity(0, cpus)
    return start


def group_pids(pgid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d))
    return out


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def kill_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()
            if not group_pids(proc.pid):
                return
            time.sleep(0.05)


class Tail:
    """Copies what a growing file gains to ``out``."""

    def __init__(self, path: Path, out: IO[str] | None) -> None:
        self.path, self.out, self.pos = path, out, 0

    def pump(self) -> None:
        if self.out is None:
            return
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            self.pos += len(data)
            self.out.write(data.decode(errors="replace"))
            self.out.flush()


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def console_tail(console: str, n: int = CONSOLE_TAIL, skip: Callable[[str], bool] | None = None) -> str:
    lines = [ln for ln in console.rstrip().splitlines() if not (skip and skip(ln))]
    return "\n".join(lines[-n:]) or "(empty)"


@dataclass
class Exchange:
    """A guest run's exchange directory and state record (for ``labkit clean``)."""
    xdir: Path
    state: RunState

    @classmethod
    def make(cls, parent: Path) -> "Exchange":
        parent.mkdir(parents=True, exist_ok=True)
        state = RunState(new_run_id())
        state.acquire()   # the lock: `labkit clean` leaves a live guest alone
        xdir = Path(tempfile.mkdtemp(prefix=f"labkit-{state.run_id}-", dir=parent))
        state.add("paths", str(xdir))
        return cls(xdir, state)

    def close(self) -> None:
        remove_path(str(self.xdir))
        self.state.drop()


@dataclass
class Supervised:
    returncode: int
    stdout: str
    stderr: str
    console: str
    boot_s: float
    command_s: float
    guest_uptime_s: float | None
    #: the guest's net.core.bpf_jit_enable, "none" when its kernel has no BPF JIT
    bpf_jit: str = ""


def supervise(cmd: Sequence[str], ex: Exchange, *, what: str, argv: Sequence[str], timeout: float,
              boot_timeout: float, env: Mapping[str, str] | None = None, echo: IO[str] | None = None,
              on_tick: Callable[[subprocess.Popen], None] | None = None,
              console_skip: Callable[[str], bool] | None = None,
              cpus: AbstractSet[int] | None = None) -> Supervised:
    """Start the kernel process ``cmd`` (its own process group, console to
    ``xdir/console.log``; on the host CPUs ``cpus`` only, when given), wait
    for the command in ``xdir/run.sh`` to start (``boot_timeout``) and end
    (``timeout``), and kill the whole group afterwards, whatever happened.
    ``what`` names the guest in errors."""
    xdir = ex.xdir
    proc: subprocess.Popen | None = None
    try:
        t0 = time.monotonic()
        with open(xdir / "console.log", "wb") as log:
            proc = subprocess.Popen(list(cmd), cwd=xdir, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=dict(env) if env else None,
                                    start_new_session=True, preexec_fn=on_cpus(die_with_parent(os.getpid()), cpus))
        ex.state.add_pid(proc.pid)
        tails = [Tail(xdir / "stdout", echo), Tail(xdir / "stderr", echo)]
        started_at: float | None = None
        while proc.poll() is None:
            now = time.monotonic()
            if on_tick:
                on_tick(proc)
            if started_at is None and (xdir / "started").exists():
                started_at = now
            for t in tails:
                t.pump()
            if started_at is None and now - t0 > boot_timeout:
                raise GuestBootError(f"{what} did not start the command within {boot_timeout:g} s; "
                                     f"console tail:\n{console_tail(read(xdir / 'console.log'), skip=console_skip)}")
            if started_at is not None and now - started_at > timeout:
                raise LabkitError(f"`{shlex.join(argv)}` did not finish in {what} within {timeout:.0f} s; "
                                  f"console tail:\n{console_tail(read(xdir / 'console.log'), skip=console_skip)}")
            time.sleep(0.1)
        end = time.monotonic()
        if started_at is None and (xdir / "started").exists():
            started_at = end
        for t in tails:
            t.pump()
        console = read(xdir / "console.log")
        rc_text = read(xdir / "rc").strip()
        if started_at is None:
            raise GuestBootError(f"{what} exited (status {proc.returncode}) before running the command; "
                                 f"console tail:\n{console_tail(console, skip=console_skip)}")
        if not rc_text.isdigit():
            raise LabkitError(f"`{shlex.join(argv)}` ended in {what} without an exit status (kernel "
                              f"panic, OOM?); console tail:\n{console_tail(console, skip=console_skip)}")
        uptime = read(xdir / "started").split()
        return Supervised(int(rc_text), read(xdir / "stdout"), read(xdir / "stderr"), console,
                          round(started_at - t0, 3), round(end - started_at, 3),
                          float(uptime[0]) if uptime else None, read(xdir / "bpf_jit").strip())
    finally:
        if proc is not None:
            kill_group(proc)
            proc.wait()

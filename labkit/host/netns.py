"""Thin kernel helpers: namespaces, netlink, commands inside a namespace.

Everything here acts inside a named namespace; nothing touches the root
namespace.  pyroute2's synchronous API cannot run inside a running asyncio
loop (a Jupyter kernel has one), so netlink work runs in a worker thread.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Iterator, Sequence, TypeVar

from pyroute2 import IPRoute

from labkit.core.errors import LabkitError, Unavailable, UsageError
from labkit.core.topology import PREFIX
from labkit.host.state import pid_alive

NETNS_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="labkit-netlink")

log = logging.getLogger(__name__)


def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("labkit needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network "
                         "namespaces: run it as root (with sudo from a user account)")


def require_tool(name: str, package: str | None = None) -> str:
    path = shutil.which(name)
    if not path:
        pkg = package or name
        raise Unavailable(f"{name} not found on PATH (Debian package {pkg}; `sudo make setup` installs it)")
    return path


def list_namespaces() -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if not n.startswith("."))
    except FileNotFoundError:
        return []


def _ip_netns(*args: str) -> None:
    # iproute2 does the unshare + bind mount without forking this process
    # (pyroute2's netns.create forks, which deadlocks in a threaded process)
    cp = subprocess.run(["ip", "netns", *args], capture_output=True, text=True, timeout=60)
    if cp.returncode != 0:
        raise LabkitError(f"ip netns {' '.join(args)} failed: {cp.stderr.strip()}")


def create(name: str) -> None:
    if name in list_namespaces():
        raise LabkitError(f"network namespace {name} already exists")
    _ip_netns("add", name)


def ns_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name``."""
    try:
        target = os.stat(os.path.join(NETNS_DIR, name))
    except FileNotFoundError:
        return []
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{d}/ns/net")
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            pids.append(int(d))
    return pids


def kill_pids(pids: Sequence[int], grace: float = 2.0) -> None:
    pids = [p for p in pids if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if pid_alive(p)]
            time.sleep(0.02)
        if not pids:
            return


def remove(name: str) -> None:
    """Kill what runs in the namespace, then delete it (its links, routes,
    rules and IPVS/netfilter state go with it)."""
    kill_pids(ns_pids(name))
    if name in list_namespaces():
        try:
            _ip_netns("delete", name)
        except LabkitError:
            if name in list_namespaces():  # not a race with another remover
                raise


def _in_thread(fn: Callable[[], T]) -> T:
    return _pool.submit(fn).result()


def netlink(ns: str, fn: Callable[..., T]) -> T:
    """Run ``fn(ipr)`` with a pyroute2 IPRoute bound to namespace ``ns``."""

    def call() -> T:
        # enter the namespace in this worker thread and open the socket there:
        # IPRoute(netns=...) would fork, which is unsafe in a threaded process
        with entered(ns):
            ipr = IPRoute()
        with ipr:
            return fn(ipr)
    return _in_thread(call)


class PeakMemory:
    """Largest resident set (MB) of any command :func:`run` finished while active."""

    def __init__(self) -> None:
        self.mb = 0.0


_peaks: list[PeakMemory] = []

# Runs argv as its child and reports the child's ru_maxrss (KB) on fd argv[1].  The
# measurement needs this small parent: a child forked straight from a large Python
# process starts with the parent's resident set as its high-water mark, which
# would hide the loader's own peak under the renderer's.
_MAXRSS = ("import os, sys\n"
           "fd = int(sys.argv[1])\n"
           "pid = os.fork()\n"
           "if pid == 0:\n"
           "    os.close(fd)\n"
           "    os.execvp(sys.argv[2], sys.argv[2:])\n"
           "_, status, ru = os.wait4(pid, 0)\n"
           "os.write(fd, str(ru.ru_maxrss).encode())\n"
           "code = os.waitstatus_to_exitcode(status)\n"
           "sys.exit(code if code >= 0 else 128 - code)\n")


def _run_measured(cmd: Sequence[str], input, text: bool, timeout: float,
                  env: dict | None) -> tuple[subprocess.CompletedProcess, float]:
    """``cmd`` under the measuring parent; returns its result and its peak RSS (MB).
    The command runs in a process group of its own, so a timeout kills it too
    (raising :class:`subprocess.TimeoutExpired`)."""
    rfd, wfd = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-c", _MAXRSS, str(wfd), *cmd],
                                stdin=subprocess.PIPE if input is not None else None,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text, env=env,
                                pass_fds=(wfd,), start_new_session=True)
    finally:
        os.close(wfd)
    with os.fdopen(rfd, "rb") as report, proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        kb = report.read().strip()
    mb = int(kb) / 1024 if kb.isdigit() else 0.0
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err), mb


@contextlib.contextmanager
def peak_memory() -> Iterator[PeakMemory]:
    """``with peak_memory() as pm: dp.setup(cat)``; then ``pm.mb`` is the peak
    resident set of the commands run meanwhile (the datapath's loaders).  Each
    command then starts through a small measuring parent (one more Python
    interpreter start per command): use it in benchmarks, not around timed
    sweeps."""
    pm = PeakMemory()
    _peaks.append(pm)
    try:
        yield pm
    finally:
        _peaks.remove(pm)


def run(ns: str, argv: Sequence[str], *, input: str | bytes | None = None, check: bool = True,
        timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command inside namespace ``ns`` (``ip netns exec``)."""
    cmd = ["ip", "netns", "exec", ns, *argv]
    log.debug("in %s: %s", ns, " ".join(argv))
    text = not isinstance(input, bytes)
    try:
        if _peaks:
            cp, mb = _run_measured(cmd, input, text, timeout, env)
            for pm in _peaks:
                pm.mb = max(pm.mb, mb)
        else:
            cp = subprocess.run(cmd, input=input, capture_output=True, text=text, timeout=timeout,
                                env=env)
    except subprocess.TimeoutExpired:
        raise LabkitError(f"`{' '.join(argv)}` in {ns} did not finish in {timeout:.0f} s") from None
    if check and cp.returncode != 0:
        err = cp.stderr if text else cp.stderr.decode(errors="replace")
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise LabkitError(f"`{' '.join(argv[:3])}` in {ns} failed (exit {cp.returncode}): {tail}")
    return cp


def sysctl(ns: str, settings: dict[str, object]) -> None:
    """Set sysctls inside ``ns``: sysctl(ns, {"net.ipv4.ip_forward": 1})."""
    run(ns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())])


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """Move the *calling thread* into namespace ``ns`` and back.

    Sockets opened inside keep that namespace after the block ends.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise LabkitError(f"cannot enter namespace {ns}: {os.strerror(e)}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:  # pragma: no cover - would be fatal
                os._exit(70)
    finally:
        os.close(target)
        os.close(own)


def require_inside(ns: str, what: str = "send a probe") -> None:
    """Raise unless the calling thread is inside lab namespace ``ns``.

    A positive check: probes leave only from a namespace the lab made, never
    from the host's (root) namespace or any other.
    """
    if not ns.startswith(PREFIX + "-"):
        raise LabkitError(f"refusing to {what} from {ns!r}: not a labkit namespace")
    here = os.stat("/proc/thread-self/ns/net")
    try:
        there = os.stat(os.path.join(NETNS_DIR, ns))
    except FileNotFoundError:
        raise LabkitError(f"refusing to {what}: namespace {ns} does not exist") from None
    if (here.st_ino, here.st_dev) != (there.st_ino, there.st_dev):
        raise LabkitError(f"refusing to {what} from outside the lab namespace {ns}")


def conntrack_entries(ns: str) -> int | None:
    """Entries in the conntrack table of namespace ``ns`` (None without conntrack).

    Read from /proc/net/stat/nf_conntrack as seen from inside ``ns`` (the
    per-CPU lines all carry the same table-wide count).
    """
    with entered(ns):
        try:
            with open("/proc/thread-self/net/stat/nf_conntrack") as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            return None
    return int(lines[1].split()[lines[0].split().index("entries")], 16)

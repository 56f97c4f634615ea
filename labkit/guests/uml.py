"""Run a command inside user-mode Linux: labkit's own Linux kernel, built as
an ordinary program, at native instruction speed.

The host kernel here has no IPVS, and a virtme-ng VM can only emulate (TCG,
slow and noisy).  User-mode Linux runs as a process: labkit builds one from
Debian's kernel source with every option its modes need
(:mod:`labkit.guests.umlbuild`, ``uml.config``), boots it over the host's
root, read-only, and runs the command there::

    host                                          guest (linux, one process group)
    linux mem=.. root=/dev/root                   /: the host's /, hostfs, read-only
      rootfstype=hostfs rootflags=/ ro            /proc /sys /run /dev/shm: its own; TMPDIR=/run/tmp
      init=<xdir>/init.sh con0=null,fd:1          <xdir> and the run directory: hostfs, writable

Every mode runs in it: iptables-legacy, iptables-nft, nftables, IPVS (with
kube-proxy's iptables helper rules and ipsets) and eBPF, which is interpreted
there (arch um has no BPF JIT).  Everything is built in: no modules.  The
guest writes only its exchange directory and the directories given as
``rw``.  It is uniprocessor, and its own costs (system calls, memory) differ
from a real kernel's: compare figures measured in it only with each other,
and relate them to the host's only through modes whose code runs natively in
both (iptables, nftables), never through eBPF.

One host CPU.  The guest's kernel and the host processes that carry its
user space (ptrace'd stubs) hand every system call and page fault back and
forth; spread over several host CPUs, each hand-over is a cross-CPU wake-up.
labkit therefore starts the whole process group on one host CPU
(:func:`host_cpu`: the highest one labkit may use, or :data:`CPU_ENV`), like
a VM's vCPU pinned to a core.  Measured on a 2-CPU Intel Xeon (IPVS and eBPF
at 1 and 1,000 services, 6 rounds, ``docs/uml.md``): 55 s instead of 179 s,
and the round-to-round spread of a cell's p50 fell from 0.28 to 0.12 (median
sd of log p50).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path
from typing import IO, Mapping, Sequence

from labkit.core.errors import LabkitError, Unavailable, UsageError
from labkit.core.kernel_kinds import in_guest
from labkit.guests import guest, umlbuild
from labkit.guests.guest import (
    Exchange,
    GuestBootError,
    GuestResult,
    command_script,
    default_memory,
    guest_env,
    supervise,
)
from labkit.host import debcache

LOCK_FILE = Path(__file__).resolve().with_name("umlkernel.lock")
KIND = "uml"
BOOT_TIMEOUT = 60.0
#: which pinned kernel series runs as user-mode Linux: the default (``umlkernel.lock``)
#: or another one pinned beside it (``umlkernel-<series>.lock``), e.g. ``6.12``
SERIES_ENV = "LABKIT_UML_SERIES"
DEFAULT_SERIES = "7.2"
#: the host CPU user-mode Linux runs on (default: :func:`host_cpu`'s choice)
CPU_ENV = "LABKIT_UML_CPU"


def pinned_series() -> list[str]:
    """The kernel series labkit can build as user-mode Linux, the default first."""
    others = sorted(p.name.removeprefix("umlkernel-").removesuffix(".lock")
                    for p in LOCK_FILE.parent.glob("umlkernel-*.lock"))
    return [DEFAULT_SERIES, *others]


def series() -> str:
    """The series chosen (``$LABKIT_UML_SERIES``, else the default)."""
    return os.environ.get(SERIES_ENV, "").strip() or DEFAULT_SERIES


def lock_file(name: str | None = None) -> Path:
    s = name or series()
    if s == DEFAULT_SERIES:
        return LOCK_FILE
    p = LOCK_FILE.with_name(f"umlkernel-{s}.lock")
    if not p.is_file():
        raise UsageError(f"{SERIES_ENV}={s}: no user-mode Linux {s} is pinned "
                         f"(pinned: {', '.join(pinned_series())})")
    return p


def pin(name: str | None = None) -> umlbuild.SourcePin:
    """The pinned kernel source of series ``name`` (default: :func:`series`)."""
    path = lock_file(name)
    d = debcache.read_lock(path)
    try:
        return umlbuild.SourcePin(debcache.pin_of(d, path), str(d["suite"]), str(d["tarball"]),
                                  absent=tuple(str(o) for o in d.get("absent", [])),
                                  boots_with_amx=bool(d.get("boots_with_amx", True)),
                                  lock_name=path.name)
    except (KeyError, TypeError) as exc:
        raise LabkitError(f"cannot read the UML pin {path}: {exc!r}") from None


def host_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether the host CPU has AMX (``amx_tile`` among /proc/cpuinfo's flags)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return any(ln.startswith("flags") and "amx_tile" in ln.split() for ln in cpuinfo.splitlines())


def max_map_count() -> int | None:
    """The host's ``vm.max_map_count`` (None if unreadable)."""
    try:
        return int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return None


def segv_hint(returncode: int, stderr: str, maps: int | None) -> str:
    """A sentence on the likely cause when a guest process died of SIGSEGV
    (exit 139 or -11, or "Segmentation fault" in its errors), else "" (pure).
    Each page a guest process touches is one mapping of the host's UML
    process; at the host's ``vm.max_map_count`` the next page fault fails and
    the guest process gets SIGSEGV (seen with one ``ip -batch`` of 100,000
    VIPs, and with the sweep's Python at 10,000-service iptables blocks)."""
    if returncode not in (139, -11) and "exit -11" not in stderr and "Segmentation fault" not in stderr \
            and "exit 139" not in stderr:
        return ""
    cap = f"{maps:,}" if maps else "unknown"
    return (f" A guest process died of SIGSEGV: in user-mode Linux each page a process touches is a mapping "
            f"of the host's process, and the host's vm.max_map_count ({cap}) caps it at about "
            f"{(maps or 65530) * 4 // 1024:,} MB (docs/uml.md, \"SIGSEGV\"); raising it "
            f"(`sysctl -w vm.max_map_count=262144`) is the host owner's decision.")


def host_cpu(allowed: set[int] | None = None, env: Mapping[str, str] | None = None) -> int:
    """The one host CPU the guest runs on: :data:`CPU_ENV` when set (it must be
    one labkit may use), else the highest of ``allowed`` (default: this
    process's CPUs), the one :func:`labkit.host.wire.isolated` pins the
    host's probing to as well."""
    allowed = set(os.sched_getaffinity(0) if allowed is None else allowed)
    want = (os.environ if env is None else env).get(CPU_ENV, "").strip()
    if not want:
        return max(allowed)
    if not want.isdigit() or int(want) not in allowed:
        raise UsageError(f"{CPU_ENV}={want!r}: not one of the CPUs this process may use "
                         f"({', '.join(map(str, sorted(allowed)))})")
    return int(want)


def guest_kernel_release() -> str:
    return pin().pin.release


def root_dir(p: umlbuild.SourcePin) -> Path:
    return umlbuild.root_dir(p)


def fetch(p: umlbuild.SourcePin | None = None, progress: bool = False) -> Path:
    """The built kernel's directory (``linux``, ``config``, ``build.json``):
    built once from the pinned source (:func:`labkit.guests.umlbuild.build`)."""
    return umlbuild.build(p or pin(), progress=progress)


def uml_available() -> tuple[bool, str]:
    """Whether user-mode Linux can run here (cheap checks; boots and builds nothing)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return False, f"labkit's user-mode Linux is built for Linux x86_64, not {platform.machine()}"
    if os.geteuid() != 0:
        return False, "running labs in user-mode Linux needs root (the guest mounts the run directory)"
    if in_guest():
        return False, "already inside a guest kernel"
    try:
        p = pin()
        root = root_dir(p)
    except LabkitError as exc:
        return False, str(exc)
    k = p.pin
    if not p.boots_with_amx and host_has_amx():
        return False, (f"user-mode Linux {k.release} dies at boot on a CPU with AMX, as this one "
                       f"(\"ptrace set fp regs failed\"; {p.lock_name}); use {DEFAULT_SERIES} "
                       f"(unset {SERIES_ENV})")
    if umlbuild.complete(root):
        return True, f"user-mode Linux {k.release} (labkit's build of {k.package} {k.version}), in {root}"
    missing = umlbuild.missing_tools() + ([] if shutil.which("apt-get") else ["apt-get (Debian package apt)"])
    if missing:
        return False, (f"user-mode Linux {k.release} is not built, and building it needs "
                       + ", ".join(missing) + " (`make setup` installs them)")
    return True, (f"user-mode Linux {k.release} (from {k.package} {k.version}), built on first use "
                  "(about 10 minutes on 2 cores; `make setup` builds it)")


def init_script(xdir: Path, rw: Sequence[str], command: str) -> str:
    """The guest's init (PID 1): its own /proc, /sys, /run; the exchange
    directory and ``rw`` writable through hostfs; then the command; then
    power off (pure).  The kernel has everything built in: its module
    requests go to ``/bin/true`` (never to the host's module tree)."""
    q = shlex.quote
    x = q(str(xdir))
    lines = [
        "#!/bin/sh",
        "# labkit: init of the user-mode Linux guest (PID 1); the host's / is read-only here",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t tmpfs -o mode=0755 tmpfs /run",
        "mount -t tmpfs tmpfs /dev/shm 2>/dev/null",
        "mkdir -p /run/netns /run/tmp /run/labkit",
        "chmod 0700 /run/labkit",
        "mount -t bpf bpf /sys/fs/bpf 2>/dev/null",
        f"mount -t hostfs none {x} -o {x}",
        *(f"mount -t hostfs none {q(d)} -o {q(d)}" for d in rw),
        "echo /bin/true > /proc/sys/kernel/modprobe",
        command,
        "sync",
        "poweroff -f 2>/dev/null || halt -f 2>/dev/null || echo o > /proc/sysrq-trigger",
    ]
    return "\n".join(lines) + "\n"


def run_in_uml(argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None, *,
               cwd: str | None = None, rw: Sequence[str] = (), check: bool = True,
               echo: IO[str] | None = None, boot_timeout: float = BOOT_TIMEOUT) -> GuestResult:
    """Boot user-mode Linux, run ``argv`` in it (as root, in ``cwd``), power
    off.  ``rw`` lists host directories the guest may write (created if
    missing).  Raises :class:`GuestBootError` if the kernel does not come up
    and, with ``check``, :class:`LabkitError` if the command fails."""
    ok, why = uml_available()
    if not ok:
        raise Unavailable(why)
    p = pin()
    k = p.pin
    root = fetch(p)
    built = umlbuild.facts(root)
    cwd = os.path.abspath(cwd or os.getcwd())
    rwdirs = []
    for d in rw:
        d = os.path.abspath(d)
        os.makedirs(d, exist_ok=True)
        rwdirs.append(d)
    memory = os.environ.get("LABKIT_UML_MEMORY") or default_memory()
    cpu = host_cpu()
    ex = Exchange.make(debcache.kind_dir(KIND) / "runs")
    try:
        xdir = ex.xdir
        # the guest reads labkit's cache (nginx) from the host, read-only
        genv = guest_env({"HOME": "/run/tmp", "LABKIT_CACHE": str(debcache.cache_base()), **(env or {})},
                         KIND, "/run/tmp")
        (xdir / "run.sh").write_text(command_script(xdir, argv, cwd, genv, "labkit.guests.uml"))
        (xdir / "init.sh").write_text(init_script(xdir, rwdirs, f"/bin/sh {xdir}/run.sh"))
        os.chmod(xdir / "init.sh", 0o755)
        cmd = [str(root / "linux"), f"mem={memory}", "root=/dev/root",
               "rootfstype=hostfs", "rootflags=/", "ro", f"init={xdir}/init.sh", "con=null",
               "con0=null,fd:1", f"umid=labkit-{ex.state.run_id}", "uml_dir=" + str(xdir)]
        host_env = {**os.environ, "TMPDIR": str(xdir)}   # the guest's memory file dies with xdir
        s = supervise(cmd, ex, what=f"user-mode Linux {k.release}", argv=argv, timeout=timeout,
                      boot_timeout=boot_timeout, env=host_env, echo=echo, cpus={cpu})
    finally:
        ex.close()
    facts = {"backend": KIND, "kernel_package": k.package, "kernel_version": k.version,
             "kernel_sha256": k.sha256, "kernel_release": k.release, "accel": "native (user-mode Linux)",
             "built_by": "labkit", "config_sha256": built.get("config_sha256", ""),
             "fragment_sha256": built.get("fragment_sha256", ""), "build_key": built.get("build_key", ""),
             "boot_s": s.boot_s, "guest_uptime_s": s.guest_uptime_s, "command_s": s.command_s,
             "bpf_jit": s.bpf_jit, "host_max_map_count": max_map_count(),
             "cpus": 1, "host_cpu": cpu, "memory": memory}
    res = GuestResult(list(argv), s.returncode, s.stdout, s.stderr, s.console, facts)
    if check and res.returncode != 0:
        raise LabkitError(f"`{shlex.join(argv)}` failed in user-mode Linux {k.release} (exit "
                          f"{res.returncode}): {debcache.tail(res.stderr, 5) or '(no stderr)'}"
                          + segv_hint(res.returncode, res.stderr, max_map_count()))
    return res



def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labkit.guests.uml",
                                 description="user-mode Linux: info, fetch, or run a command in it")
    ap.add_argument("--series", choices=pinned_series(), default=None,
                    help=f"the pinned kernel series (default: ${SERIES_ENV}, else {DEFAULT_SERIES}); "
                         f"a sweep picks it from ${SERIES_ENV}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="availability and the pinned kernel")
    sub.add_parser("build", help="build the pinned kernel (once; `make setup` runs this)")
    sub.add_parser("fetch", help="the same as build (older name)")
    r = sub.add_parser("run", help="run a command: run [--timeout S] [--rw DIR] -- argv...")
    r.add_argument("--timeout", type=float, default=600)
    r.add_argument("--rw", action="append", default=[])
    r.add_argument("argv", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    if a.series:
        os.environ[SERIES_ENV] = a.series
    try:
        if a.cmd == "info":
            ok, why = uml_available()
            p = pin()
            root = root_dir(p)
            print(json.dumps({"available": ok, "reason": why, "suite": p.suite, "source": vars(p.pin),
                              "fragment": str(umlbuild.FRAGMENT), "built": umlbuild.complete(root),
                              "dir": str(root), **({"build": umlbuild.facts(root)} if umlbuild.complete(root)
                                                   else {})}, indent=2))
        elif a.cmd in ("build", "fetch"):
            print(fetch(progress=True))
        else:
            return guest.run_command(ap, a, run_in_uml)
    except (LabkitError, GuestBootError) as exc:
        print(f"labkit.guests.uml: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

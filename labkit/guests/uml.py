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
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tomllib
from pathlib import Path
from typing import IO, Mapping, Sequence

from labkit.core.errors import LabkitError, Unavailable
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


def pin() -> umlbuild.SourcePin:
    k = debcache.read_pin(LOCK_FILE)
    try:
        d = tomllib.loads(LOCK_FILE.read_text())
        return umlbuild.SourcePin(k, str(d["suite"]), str(d["tarball"]))
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise LabkitError(f"cannot read the UML pin {LOCK_FILE}: {exc!r}") from None


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
                      boot_timeout=boot_timeout, env=host_env, echo=echo)
    finally:
        ex.close()
    facts = {"backend": KIND, "kernel_package": k.package, "kernel_version": k.version,
             "kernel_sha256": k.sha256, "kernel_release": k.release, "accel": "native (user-mode Linux)",
             "built_by": "labkit", "config_sha256": built.get("config_sha256", ""),
             "fragment_sha256": built.get("fragment_sha256", ""), "build_key": built.get("build_key", ""),
             "boot_s": s.boot_s, "guest_uptime_s": s.guest_uptime_s, "command_s": s.command_s,
             "bpf_jit": s.bpf_jit,
             "cpus": 1, "memory": memory}
    res = GuestResult(list(argv), s.returncode, s.stdout, s.stderr, s.console, facts)
    if check and res.returncode != 0:
        raise LabkitError(f"`{shlex.join(argv)}` failed in user-mode Linux {k.release} (exit "
                          f"{res.returncode}): {debcache.tail(res.stderr, 5) or '(no stderr)'}")
    return res



def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labkit.guests.uml",
                                 description="user-mode Linux: info, fetch, or run a command in it")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="availability and the pinned kernel")
    sub.add_parser("build", help="build the pinned kernel (once; `make setup` runs this)")
    sub.add_parser("fetch", help="the same as build (older name)")
    r = sub.add_parser("run", help="run a command: run [--timeout S] [--rw DIR] -- argv...")
    r.add_argument("--timeout", type=float, default=600)
    r.add_argument("--rw", action="append", default=[])
    r.add_argument("argv", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
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

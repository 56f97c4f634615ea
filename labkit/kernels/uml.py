"""Run a command inside user-mode Linux: a Debian kernel built as an ordinary
program, at native instruction speed.

The host kernel here has no IPVS, and a virtme-ng VM can only emulate (TCG,
slow and noisy).  Debian's ``user-mode-linux`` package is a kernel with IPVS,
veth, ipset and eBPF (interpreted: arch um has no BPF JIT) that runs as a process: labkit boots
it over the host's root, read-only, and runs the command there::

    host                                          guest (linux.uml, one process group)
    linux.uml mem=.. root=/dev/root               /: the host's /, hostfs, read-only
      rootfstype=hostfs rootflags=/ ro            /proc /sys /run /dev/shm: its own; TMPDIR=/run/tmp
      init=<xdir>/init.sh con0=null,fd:1          <xdir> and the run directory: hostfs, writable
                                                  modules: modprobe -d <cache>/uml/.../modroot

The kernel is pinned in ``labkit/kernels/umlkernel.lock`` (package, version,
sha256), fetched with ``apt-get download`` into labkit's cache and unpacked
there: never installed, nothing written to the host's ``/lib/modules`` or
``/boot``.  The guest writes only its exchange directory and the directories
given as ``rw``.  Its config has neither legacy x_tables nor nf_tables NAT, so
no iptables mode and not ``nftables`` can run in it; the IPVS mode runs there
without kube-proxy's iptables helper rules (:mod:`labkit.datapaths.ipvs`
picks the backend a kernel has, and records "none" here).  It is uniprocessor,
and its own costs (system calls, memory) differ from a real kernel's: compare
figures measured in it only with each other, and calibrate against the host
with a mode that runs in both.
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Mapping, Sequence

from labkit.core.errors import LabkitError, Unavailable
from labkit.kernels import cache
from labkit.kernels.guest import (
    Exchange,
    GuestBootError,
    GuestResult,
    command_script,
    default_memory,
    guest_env,
    supervise,
)

LOCK_FILE = cache.HERE / "umlkernel.lock"
KIND = "uml"
BOOT_TIMEOUT = 60.0
#: loaded at boot (before labkit's sysctls, which need ipv6); the kernel loads the
#: rest on demand through the modprobe wrapper
MODULES = ("ipv6", "veth", "dummy", "nf_conntrack", "nf_nat", "nf_tables", "nft_compat", "ip_set",
           "ip_set_hash_ip", "ip_set_hash_ipport", "ip_set_bitmap_port", "xt_set",
           "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_sh", "ip_vs_mh", "sch_ingress", "cls_bpf")
LIBDIR = "usr/lib/x86_64-linux-gnu"


@dataclass(frozen=True)
class UmlPin:
    """The pinned kernel package, the libc6 its binary needs, and their suite."""
    kernel: cache.KernelPin
    libc: cache.KernelPin
    suite: str


def pin() -> UmlPin:
    k = cache.read_pin(LOCK_FILE)
    try:
        d = tomllib.loads(LOCK_FILE.read_text())
        libc = cache.KernelPin(str(d["libc_package"]), str(d["libc_version"]), str(d["libc_sha256"]), "")
        return UmlPin(k, libc, str(d["suite"]))
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise LabkitError(f"cannot read the UML pin {LOCK_FILE}: {exc!r}") from None


def guest_kernel_release() -> str:
    return pin().kernel.release


def root_dir(p: UmlPin) -> Path:
    return cache.kind_dir(KIND) / f"{p.kernel.package}_{p.kernel.version}"


def _complete(root: Path, p: UmlPin) -> bool:
    return ((root / "usr" / "bin" / "linux.uml").is_file()
            and (root / "libc" / LIBDIR / "ld-linux-x86-64.so.2").is_file()
            and (root / "modroot" / "lib" / "modules" / p.kernel.release / "modules.dep").is_file())


def fetch(p: UmlPin | None = None) -> Path:
    """Download, verify and unpack the pinned kernel and its libc (once);
    returns the root: ``usr/bin/linux.uml`` (its interpreter and library path
    set to ``libc/`` beside it), ``modroot/lib/modules/<release>``."""
    p = p or pin()
    root = root_dir(p)
    if cache.ready(root, p.kernel, lambda r: _complete(r, p)):
        return root
    cache.need("patchelf", "patchelf")
    kdir = cache.kind_dir(KIND)
    kdir.mkdir(parents=True, exist_ok=True)
    opts = cache.private_index(p.suite, kdir / "apt")
    libc_deb = cache.download(p.libc, kdir, LOCK_FILE.name, opts)
    lib = root / "libc" / LIBDIR   # final paths: the tree is renamed to root once complete
    mods = "{root}/modroot/lib/modules"
    return cache.fetch(p.kernel, KIND, LOCK_FILE.name, lambda r: _complete(r, p), apt_opts=opts,
                       after_unpack=(
                           ["dpkg-deb", "-x", str(libc_deb), "{root}/libc"],
                           ["mkdir", "-p", mods],
                           ["ln", "-s", f"../../../usr/lib/uml/modules/{p.kernel.release}",
                            f"{mods}/{p.kernel.release}"],
                           ["patchelf", "--set-interpreter", str(lib / "ld-linux-x86-64.so.2"),
                            "--set-rpath", str(lib), "{root}/usr/bin/linux.uml"]))


def uml_available() -> tuple[bool, str]:
    """Whether user-mode Linux can run here (cheap checks; boots nothing)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return False, f"user-mode Linux here is amd64 and needs Linux x86_64, not {platform.machine()}"
    if os.geteuid() != 0:
        return False, "running labs in user-mode Linux needs root (the guest mounts the run directory)"
    if os.environ.get("LABKIT_GUEST"):
        return False, "already inside a guest kernel"
    missing = [f"{t} (Debian package {pkg})" for t, pkg in (("dpkg-deb", "dpkg"), ("modprobe", "kmod"))
               if not shutil.which(t)]
    if missing:
        return False, "cannot run user-mode Linux: missing " + ", ".join(missing)
    try:
        p = pin()
    except LabkitError as exc:
        return False, str(exc)
    k = p.kernel
    if cache.ready(root_dir(p), k, lambda r: _complete(r, p)):
        return True, f"user-mode Linux {k.release} ({k.package} {k.version}), cached in {root_dir(p)}"
    if not shutil.which("apt-get") or not shutil.which("patchelf"):
        return False, (f"user-mode Linux {k.package} {k.version} is not cached, and fetching it needs "
                       "apt-get and patchelf (`make setup` installs patchelf)")
    return True, f"user-mode Linux {k.release} ({k.package} {k.version}), downloaded on first use"


def init_script(xdir: Path, modroot: Path, rw: Sequence[str], command: str) -> str:
    """The guest's init (PID 1): its own /proc, /sys, /run; the exchange
    directory and ``rw`` writable through hostfs; modules from the cache;
    then the command; then power off (pure)."""
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
        f"printf '#!/bin/sh\\nexec /sbin/modprobe -d {q(str(modroot))} \"$@\"\\n' > /run/modprobe",
        "chmod 0755 /run/modprobe",
        "echo /run/modprobe > /proc/sys/kernel/modprobe",
        f"for m in {' '.join(MODULES)}; do /run/modprobe $m 2>/dev/null; done",
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
    k = p.kernel
    root = fetch(p)
    cwd = os.path.abspath(cwd or os.getcwd())
    rwdirs = []
    for d in rw:
        d = os.path.abspath(d)
        os.makedirs(d, exist_ok=True)
        rwdirs.append(d)
    memory = os.environ.get("LABKIT_UML_MEMORY") or default_memory()
    ex = Exchange.make(cache.kind_dir(KIND) / "runs")
    try:
        xdir = ex.xdir
        # the guest reads labkit's cache (nginx) from the host, read-only
        genv = guest_env({"HOME": "/run/tmp", "LABKIT_CACHE": str(cache.cache_base()),
                          "LABKIT_MODULES_ROOT": str(root / "modroot"), **(env or {})}, KIND, "/run/tmp")
        (xdir / "run.sh").write_text(command_script(xdir, argv, cwd, genv, "labkit.kernels.uml"))
        (xdir / "init.sh").write_text(init_script(xdir, root / "modroot", rwdirs, f"/bin/sh {xdir}/run.sh"))
        os.chmod(xdir / "init.sh", 0o755)
        cmd = [str(root / "usr" / "bin" / "linux.uml"), f"mem={memory}", "root=/dev/root",
               "rootfstype=hostfs", "rootflags=/", "ro", f"init={xdir}/init.sh", "con=null",
               "con0=null,fd:1", f"umid=labkit-{ex.state.run_id}", "uml_dir=" + str(xdir)]
        host_env = {**os.environ, "TMPDIR": str(xdir)}   # the guest's memory file dies with xdir
        s = supervise(cmd, ex, what=f"user-mode Linux {k.release}", argv=argv, timeout=timeout,
                      boot_timeout=boot_timeout, env=host_env, echo=echo)
    finally:
        ex.close()
    facts = {"backend": KIND, "kernel_package": k.package, "kernel_version": k.version,
             "kernel_sha256": k.sha256, "kernel_release": k.release, "accel": "native (user-mode Linux)",
             "boot_s": s.boot_s, "guest_uptime_s": s.guest_uptime_s, "command_s": s.command_s,
             "bpf_jit": s.bpf_jit,
             "cpus": 1, "memory": memory}
    res = GuestResult(list(argv), s.returncode, s.stdout, s.stderr, s.console, facts)
    if check and res.returncode != 0:
        raise LabkitError(f"`{shlex.join(argv)}` failed in user-mode Linux {k.release} (exit "
                          f"{res.returncode}): {cache.tail(res.stderr, 5) or '(no stderr)'}")
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labkit.kernels.uml",
                                 description="user-mode Linux: info, fetch, or run a command in it")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="availability and the pinned kernel")
    sub.add_parser("fetch", help="download and unpack the pinned kernel")
    r = sub.add_parser("run", help="run a command: run [--timeout S] [--rw DIR] -- argv...")
    r.add_argument("--timeout", type=float, default=600)
    r.add_argument("--rw", action="append", default=[])
    r.add_argument("argv", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "info":
            ok, why = uml_available()
            p = pin()
            print(json.dumps({"available": ok, "reason": why, "suite": p.suite, "kernel": vars(p.kernel),
                              "libc": vars(p.libc)}, indent=2))
        elif a.cmd == "fetch":
            print(fetch())
        else:
            cmd = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
            if not cmd:
                ap.error("run needs a command after --")
            res = run_in_uml(cmd, a.timeout, rw=a.rw, check=False, echo=sys.stdout)
            print(json.dumps(res.facts), file=sys.stderr)
            return res.returncode
    except (LabkitError, GuestBootError) as exc:
        print(f"labkit.kernels.uml: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

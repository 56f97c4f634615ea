"""Run a command inside a pinned Debian kernel, booted with virtme-ng.

Some datapaths need kernel features the host kernel lacks (IPVS here).
labkit then boots the distro kernel pinned in ``labkit/guests/vmkernel.lock`` with
virtme-ng (``vng``) over the host's own filesystem and runs the command in
it, usually ``python -m labkit sweep --kernel host ...``::

    host                                     guest (qemu; KVM or TCG emulation)
    vng --run <cache>/<pkg>/boot/vmlinuz-R   /: the host's /, 9p, read-only, with
        --rwdir <xdir> --rwdir <out> ...        tmpfs overlays on /etc /var /tmp ...
        --exec "sh <xdir>/run.sh"            /lib/modules/R -> <cache>/<pkg>/lib/modules/R
                                             run.sh: cd; env -i ... argv
    <xdir>/started  <- guest uptime when the command starts (boot time)
    <xdir>/stdout, stderr, rc  <- the command's output and exit status
    <xdir>/console.log <- vng/qemu output and the guest's serial console

The kernel is fetched with ``apt-get download`` into labkit's cache
(``$LABKIT_CACHE/vm`` or ``.cache/vm`` in the source tree), checked against
the lock file's sha256 and unpacked there with ``dpkg-deb -x``: it is never
installed on the host.  KVM is used when a short KVM boot works (nested KVM
may hang or crash); otherwise emulation (TCG), which is much slower: compare
modes only within one kernel and one run.

Nothing outlives a call: qemu runs in its own process group, killed on
timeout, error or Ctrl-C; the exchange dir is removed; both are recorded in
a :class:`~labkit.host.state.RunState` so ``labkit clean`` finds them after a
SIGKILL.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import IO, Mapping, Sequence

from labkit.core.errors import LabkitError, Unavailable
from labkit.core.files import sha256_file
from labkit.guests import guest
from labkit.guests.guest import (
    Exchange,
    GuestBootError,
    GuestResult,
    comm,
    command_script,
    console_tail,
    default_memory,
    group_pids,
    guest_env,
    supervise,
)
from labkit.host.debcache import KernelPin, download_deb, fetch_pinned, kind_dir, need, read_pin, ready, tail

LOCK_FILE = Path(__file__).with_name("vmkernel.lock")
KVM_PROBE_TIMEOUT = 60.0                         # a KVM guest that works boots in seconds
BOOT_TIMEOUT = {"kvm": 120.0, "tcg": 300.0}     # launch -> guest command started
KIND = "vm"
# paths the guest does not see from the host (tmpfs or overlays of their own)
GUEST_HIDDEN = ("/var/cache", "/var/log", "/var/tmp", "/var/lib/apt", "/run", "/dev", "/proc", "/sys")
QEMU = "qemu-system-x86_64"


class VMBootError(GuestBootError):
    """The VM did not come up to run the command (no KVM, bad kernel, hang)."""


# ---- the pinned kernel -----------------------------------------------------
def kernel_pin(path: Path = LOCK_FILE) -> KernelPin:
    return read_pin(path)


def guest_kernel_release() -> str:
    """``uname -r`` inside the VM (from the lock file)."""
    return kernel_pin().release


def cache_dir() -> Path:
    return kind_dir(KIND)


def kernel_root(pin: KernelPin) -> Path:
    return cache_dir() / f"{pin.package}_{pin.version}"


def _complete(root: Path, pin: KernelPin) -> bool:
    return ((root / "boot" / f"vmlinuz-{pin.release}").is_file()
            and (root / "lib" / "modules" / pin.release / "modules.dep").is_file())


def _fetched(root: Path, pin: KernelPin) -> bool:
    return ready(root, pin, lambda r: _complete(r, pin))


_EARLY_BOOT = re.compile(r"^\[\s*0\.0+\]|^(Memory|Poking) KASLR|^Probing EDD")


def _early_boot(line: str) -> bool:
    """Firmware map and early boot chatter, left out of console tails."""
    return bool(_EARLY_BOOT.search(line))


def fetch_kernel(pin: KernelPin | None = None) -> Path:
    """Download, verify and unpack the pinned kernel (once); returns its root:
    ``<root>/boot/vmlinuz-<release>`` and ``<root>/lib/modules/<release>``."""
    pin = pin or kernel_pin()
    need("depmod", "kmod")
    p = pin
    return fetch_pinned(p, KIND, LOCK_FILE.name, lambda r: _complete(r, p),
                 after_unpack=(["depmod", "-b", "{root}", p.release],))


# ---- tools -------------------------------------------------------------------
def _vng() -> str | None:
    local = Path(sys.executable).parent / "vng"
    if local.exists() and (local.parent / "virtme-run").exists():
        return str(local)
    return shutil.which("vng")


def _version(argv: Sequence[str]) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    out = (cp.stdout or cp.stderr).strip().splitlines()
    return out[0] if out else ""


def vm_available() -> tuple[bool, str]:
    """Whether a VM can be booted here (cheap checks; boots nothing)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return False, f"the VM kernel is amd64 and needs Linux x86_64, not {platform.system()} {platform.machine()}"
    if os.geteuid() != 0:
        return False, "booting the VM kernel needs root (the guest runs labs as root)"
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in
               ((QEMU, "qemu-system-x86"), ("busybox", "busybox-static"), ("depmod", "kmod"),
                ("modprobe", "kmod"), ("dpkg-deb", "dpkg"), ("file", "file"))
               if not shutil.which(tool)]
    if not _vng():
        missing.append("vng (PyPI virtme-ng: pip install 'labkit[vm]')")
    if missing:
        return False, "cannot boot the VM kernel: missing " + ", ".join(missing)
    try:
        pin = kernel_pin()
    except LabkitError as exc:
        return False, str(exc)
    if _fetched(kernel_root(pin), pin):
        return True, f"VM kernel {pin.release} ({pin.package} {pin.version}), cached in {kernel_root(pin)}"
    if not shutil.which("apt-get"):
        return False, f"VM kernel {pin.package} {pin.version} is not cached and apt-get is missing"
    return True, f"VM kernel {pin.release} ({pin.package} {pin.version}), downloaded on first use"


# ---- booting -------------------------------------------------------------------
def _boot(argv: Sequence[str], *, accel: str, timeout: float, boot_timeout: float,
          env: Mapping[str, str] | None = None, cwd: str | None = None,
          rw: Sequence[str] = (), echo: IO[str] | None = None) -> GuestResult:
    vng = _vng()
    if not vng:
        raise Unavailable("vng not found (PyPI virtme-ng: pip install 'labkit[vm]')")
    need(QEMU, "qemu-system-x86")
    pin = kernel_pin()
    root = fetch_kernel(pin)
    cwd = cwd or os.getcwd()
    ex = Exchange.make(cache_dir() / "runs")
    try:
        xdir = ex.xdir
        rwdirs = [str(xdir)]
        for d in rw:
            d = os.path.abspath(d)
            os.makedirs(d, exist_ok=True)
            if d not in rwdirs:
                rwdirs.append(d)
        for d in rwdirs + [str(root)]:
            if re.search(r"[\s=,]", d):
                raise LabkitError(f"cannot share {d!r} with the VM: no spaces, '=' or ',' allowed")
        cpus = int(os.environ.get("LABKIT_VM_CPUS") or os.cpu_count() or 1)
        memory = os.environ.get("LABKIT_VM_MEMORY") or default_memory()
        cmd = [vng, "--run", str(root / "boot" / f"vmlinuz-{pin.release}"), "--verbose",
               "--append", "loglevel=4", "--name", f"labkit-{ex.state.run_id}",
               "--cpus", str(cpus), "--memory", memory]
        if accel == "tcg":
            cmd.append("--disable-kvm")
        for d in rwdirs:
            cmd += ["--rwdir", d]
        if not str(root).startswith(GUEST_HIDDEN):
            cmd += ["--rodir", str(root)]
        cmd += ["--exec", f"/bin/sh {xdir}/run.sh"]
        host_env = dict(os.environ)
        host_env["PATH"] = f"{Path(vng).parent}:{host_env.get('PATH', '/usr/bin:/bin')}"
        host_env["TMPDIR"] = str(xdir / "host-tmp")  # vng's own temp files die with xdir
        os.mkdir(xdir / "host-tmp")
        (xdir / "run.sh").write_text(command_script(xdir, argv, cwd, guest_env(env, KIND),
                                                    "labkit.guests.vm"))
        qemu_seen: list[int] = []

        def track_qemu(proc: subprocess.Popen) -> None:
            if not qemu_seen:
                for pid in group_pids(proc.pid):
                    if comm(pid).startswith("qemu-system"):
                        ex.state.add_pid(pid)
                        qemu_seen.append(pid)
        s = supervise(cmd, ex, what="the VM", argv=argv, timeout=timeout, boot_timeout=boot_timeout,
                      env=host_env, echo=echo, on_tick=track_qemu, console_skip=_early_boot)
    except GuestBootError as exc:
        raise VMBootError(f"({accel}) {exc}") from None
    finally:
        ex.close()
    facts = {
        "backend": KIND, "kernel_package": pin.package, "kernel_version": pin.version,
        "kernel_sha256": pin.sha256, "kernel_release": pin.release, "accel": accel,
        "boot_s": s.boot_s, "guest_uptime_s": s.guest_uptime_s, "command_s": s.command_s,
        "bpf_jit": s.bpf_jit,
        "cpus": cpus, "memory": memory,
        "qemu": _version([QEMU, "--version"]), "virtme_ng": _version([vng, "--version"]),
    }
    return GuestResult(list(argv), s.returncode, s.stdout, s.stderr, s.console, facts)


def _qemu_key(pin: KernelPin) -> str:
    return "|".join((os.uname().release, _version([QEMU, "--version"]), pin.release))


def choose_accel() -> tuple[str, str]:
    """("kvm"|"tcg", why).  ``LABKIT_VM_ACCEL=kvm|tcg`` forces one; otherwise
    a short KVM boot decides, and the answer is cached per host kernel and
    qemu version."""
    forced = os.environ.get("LABKIT_VM_ACCEL", "auto")
    if forced not in ("auto", "kvm", "tcg"):
        raise LabkitError(f"LABKIT_VM_ACCEL must be auto, kvm or tcg, not {forced!r}")
    if forced == "tcg":
        return "tcg", "LABKIT_VM_ACCEL=tcg"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        if forced == "kvm":
            raise Unavailable("LABKIT_VM_ACCEL=kvm but /dev/kvm is missing or not accessible")
        return "tcg", "no usable /dev/kvm"
    if forced == "kvm":
        return "kvm", "LABKIT_VM_ACCEL=kvm"
    pin = kernel_pin()
    key = _qemu_key(pin)
    memo = cache_dir() / "accel.json"
    try:
        seen = json.loads(memo.read_text())
        if seen.get("key") == key:
            return seen["accel"], seen["why"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        _boot(["true"], accel="kvm", timeout=30, boot_timeout=KVM_PROBE_TIMEOUT)
        accel, why = "kvm", "a KVM test boot worked"
    except VMBootError as exc:
        first = str(exc).splitlines()
        last = [ln for ln in first[1:] if ln.strip()][-1:] or [""]
        accel, why = "tcg", f"a KVM test boot failed ({first[0]} {last[0].strip()[:160]}); using emulation"
    except LabkitError as exc:
        accel, why = "tcg", f"a KVM test boot failed ({str(exc).splitlines()[0]}); using emulation"
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps({"key": key, "accel": accel, "why": why}) + "\n")
    return accel, why


def run_in_vm(argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None, *,
              cwd: str | None = None, rw: Sequence[str] = (), check: bool = True,
              echo: IO[str] | None = None, boot_timeout: float | None = None) -> GuestResult:
    """Boot the pinned kernel, run ``argv`` in it (as root, in ``cwd``, with
    the host's PATH and LABKIT_* variables plus ``env``), power off.

    ``timeout`` bounds the command once it started; booting has its own
    bound.  ``rw`` lists host directories the guest may write (created if
    missing); the rest of the host's filesystem is read-only in the guest.
    ``echo`` receives the guest command's output as it arrives.  Raises
    :class:`VMBootError` if the VM does not come up and, with ``check``,
    :class:`LabkitError` if the command fails; both carry the console tail.
    """
    ok, why = vm_available()
    if not ok:
        raise Unavailable(why)
    fetch_kernel()
    accel, accel_why = choose_accel()
    res = _boot(argv, accel=accel, timeout=timeout, env=env, cwd=cwd, rw=rw, echo=echo,
                boot_timeout=boot_timeout or BOOT_TIMEOUT[accel])
    res.facts["accel_reason"] = accel_why
    if check and res.returncode != 0:
        raise LabkitError(
            f"`{shlex.join(argv)}` failed in the VM kernel {res.facts['kernel_release']} "
            f"(exit {res.returncode}): {tail(res.stderr, 5) or '(no stderr)'}\n"
            f"console tail:\n{console_tail(res.console, skip=_early_boot)}")
    return res




# ---- python -m labkit.guests.vm -------------------------------------------------------
def _lock(spec: str) -> None:
    package, _, version = spec.partition("=")
    if not package or not version:
        raise LabkitError("usage: python -m labkit.guests.vm lock <package>=<version>")
    release = re.sub(r"^linux-image-", "", package).removesuffix("-unsigned")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    deb = download_deb(spec, cache / f"{package}_{version}_amd64.deb", LOCK_FILE.name)
    pin = KernelPin(package, version, sha256_file(deb), release)
    text = LOCK_FILE.read_text()
    head = "".join(ln for ln in text.splitlines(keepends=True) if ln.startswith("#"))
    LOCK_FILE.write_text(head + "".join(f'{k} = "{v}"\n' for k, v in asdict(pin).items()))
    print(f"pinned {package} {version} sha256 {pin.sha256} in {LOCK_FILE}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m labkit.guests.vm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="availability, pinned kernel, accelerator")
    sub.add_parser("fetch", help="download and unpack the pinned kernel")
    r = sub.add_parser("run", help="run a command in the VM: run [--timeout S] -- argv...")
    r.add_argument("--timeout", type=float, default=600)
    r.add_argument("--rw", action="append", default=[], help="host dir the guest may write")
    r.add_argument("argv", nargs=argparse.REMAINDER)
    lk = sub.add_parser("lock", help="pin another kernel package: lock <package>=<version>")
    lk.add_argument("spec")
    a = p.parse_args(argv)
    try:
        if a.cmd == "info":
            ok, why = vm_available()
            info = {"available": ok, "reason": why, **asdict(kernel_pin())}
            if ok:
                info["accel"], info["accel_reason"] = choose_accel()
            print(json.dumps(info, indent=2))
        elif a.cmd == "fetch":
            print(fetch_kernel())
        elif a.cmd == "run":
            return guest.run_command(p, a, run_in_vm)
        elif a.cmd == "lock":
            _lock(a.spec)
    except LabkitError as exc:
        print(f"labkit.guests.vm: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

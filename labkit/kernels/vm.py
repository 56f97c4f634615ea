"""Run a command inside a pinned Debian kernel, booted with virtme-ng.

Some datapaths need kernel features the host kernel lacks (IPVS here).
labkit then boots the distro kernel pinned in ``labkit/kernels/vmkernel.lock`` with
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
a :class:`~labkit.kernel.state.RunState` so ``labkit clean`` finds them after a
SIGKILL.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Mapping, Sequence

from labkit.core.errors import LabkitError, Unavailable
from labkit.core.topology import new_run_id
from labkit.kernel.debcache import cache_base, flock
from labkit.kernel.state import RunState, remove_path

LOCK_FILE = Path(__file__).with_name("vmkernel.lock")
KVM_PROBE_TIMEOUT = 60.0                         # a KVM guest that works boots in seconds
BOOT_TIMEOUT = {"kvm": 120.0, "tcg": 300.0}     # launch -> guest command started
CONSOLE_TAIL = 20
# paths the guest does not see from the host (tmpfs or overlays of their own)
GUEST_HIDDEN = ("/var/cache", "/var/log", "/var/tmp", "/var/lib/apt", "/run", "/dev", "/proc", "/sys")
QEMU = "qemu-system-x86_64"


class VMBootError(LabkitError):
    """The VM did not come up to run the command (no KVM, bad kernel, hang)."""


# ---- the pinned kernel -----------------------------------------------------
@dataclass(frozen=True)
class KernelPin:
    package: str
    version: str
    sha256: str
    release: str


def kernel_pin(path: Path = LOCK_FILE) -> KernelPin:
    try:
        data = tomllib.loads(Path(path).read_text())
        return KernelPin(**{k: str(data[k]) for k in ("package", "version", "sha256", "release")})
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise LabkitError(f"cannot read the VM kernel pin {path}: {exc!r}") from None


def guest_kernel_release() -> str:
    """``uname -r`` inside the VM (from the lock file)."""
    return kernel_pin().release


def cache_dir() -> Path:
    return cache_base() / "vm"


def kernel_root(pin: KernelPin) -> Path:
    return cache_dir() / f"{pin.package}_{pin.version}"


def _fetched(root: Path, pin: KernelPin) -> bool:
    try:
        return ((root / ".sha256").read_text().strip() == pin.sha256
                and (root / "boot" / f"vmlinuz-{pin.release}").is_file()
                and (root / "lib" / "modules" / pin.release / "modules.dep").is_file())
    except OSError:
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise Unavailable(f"{tool} not found (Debian package {package}; `sudo make setup` installs it)")
    return path


def _tail(text: str, n: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


_EARLY_BOOT = re.compile(r"^\[\s*0\.0+\]|^(Memory|Poking) KASLR|^Probing EDD")


def _console_tail(console: str, n: int = CONSOLE_TAIL) -> str:
    """The console's last lines, without the firmware map and early boot
    chatter that precede the kernel's own messages."""
    lines = [ln for ln in console.rstrip().splitlines() if not _EARLY_BOOT.search(ln)]
    return "\n".join(lines[-n:]) or "(empty)"


def _download(pin: KernelPin, cache: Path) -> Path:
    deb = cache / f"{pin.package}_{pin.version}_amd64.deb"
    if deb.is_file() and _sha256(deb) == pin.sha256:
        return deb
    _need("apt-get", "apt")
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        cp = subprocess.run(["apt-get", "download", "-o", "APT::Sandbox::User=root",
                             f"{pin.package}={pin.version}"],
                            cwd=tmp, capture_output=True, text=True, timeout=1800)
        debs = sorted(tmp.glob("*.deb"))
        if cp.returncode != 0 or not debs:
            raise Unavailable(
                f"`apt-get download {pin.package}={pin.version}` failed: "
                f"{_tail(cp.stderr or cp.stdout, 2)}. Run `apt-get update`; if Debian no longer "
                f"has this version, move the pin: python -m labkit.kernels.vm lock <package>=<version>")
        got = _sha256(debs[0])
        if got != pin.sha256:
            raise LabkitError(f"{debs[0].name}: sha256 {got} does not match {pin.sha256} "
                              f"in {LOCK_FILE.name}")
        os.replace(debs[0], deb)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return deb


def fetch_kernel(pin: KernelPin | None = None) -> Path:
    """Download, verify and unpack the pinned kernel (once); returns its root:
    ``<root>/boot/vmlinuz-<release>`` and ``<root>/lib/modules/<release>``."""
    pin = pin or kernel_pin()
    root = kernel_root(pin)
    if _fetched(root, pin):
        return root
    _need("dpkg-deb", "dpkg")
    _need("depmod", "kmod")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with flock(cache / ".fetch.lock"):
        if _fetched(root, pin):
            return root
        deb = _download(pin, cache)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
        try:
            for argv in (["dpkg-deb", "-x", str(deb), str(tmp)],
                         ["depmod", "-b", str(tmp), pin.release]):
                cp = subprocess.run(argv, capture_output=True, text=True, timeout=600)
                if cp.returncode != 0:
                    raise LabkitError(f"`{' '.join(argv[:2])}` failed: {_tail(cp.stderr, 3)}")
            (tmp / ".sha256").write_text(pin.sha256 + "\n")
            if not _fetched(tmp, pin):
                raise LabkitError(f"{deb.name} has no boot/vmlinuz-{pin.release} or "
                                  f"lib/modules/{pin.release}: is `release` in {LOCK_FILE.name} right?")
            if root.exists():
                shutil.rmtree(root)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


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
class VMResult(subprocess.CompletedProcess):
    """A CompletedProcess with the guest console and the facts for meta.json."""

    def __init__(self, args, returncode, stdout, stderr, console: str, facts: dict) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.console = console
        self.facts = facts


def _default_memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        return f"{max(1, min(4, kb // (2 * 1024 * 1024)))}G"
    except (OSError, ValueError, IndexError):
        return "2G"


def _guest_env(env: Mapping[str, str] | None) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "PYTHONPATH") or k.startswith("LABKIT_")}
    path = keep.get("PATH", "/usr/bin:/bin")
    for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        if extra not in path.split(":"):
            path += ":" + extra
    keep.update(PATH=path, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", TMPDIR="/tmp",
                LABKIT_IN_VM="1")
    keep.update(env or {})
    return keep


def _script(xdir: Path, argv: Sequence[str], cwd: str, env: Mapping[str, str]) -> str:
    q = shlex.quote
    d = q(str(xdir))
    assigns = " ".join(q(f"{k}={v}") for k, v in sorted(env.items()))
    return (f"# written by labkit.kernels.vm: runs once inside the guest\n"
            f"cat /proc/uptime > {d}/started.tmp && mv {d}/started.tmp {d}/started\n"
            f"rc=125\n"
            f"if cd {q(cwd)}; then\n"
            f"  env -i {assigns} {' '.join(q(a) for a in argv)} </dev/null >{d}/stdout 2>{d}/stderr\n"
            f"  rc=$?\n"
            f"else\n"
            f"  echo 'labkit.kernels.vm: cannot enter {cwd} in the guest' >{d}/stderr\n"
            f"fi\n"
            f"echo $rc > {d}/rc.tmp && mv {d}/rc.tmp {d}/rc\n")


def _group_pids(pgid: int) -> list[int]:
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


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()
            if not _group_pids(proc.pid):
                return
            time.sleep(0.05)


class _Tail:
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


def _boot(argv: Sequence[str], *, accel: str, timeout: float, boot_timeout: float,
          env: Mapping[str, str] | None = None, cwd: str | None = None,
          rw: Sequence[str] = (), echo: IO[str] | None = None) -> VMResult:
    vng = _vng()
    if not vng:
        raise Unavailable("vng not found (PyPI virtme-ng: pip install 'labkit[vm]')")
    _need(QEMU, "qemu-system-x86")
    pin = kernel_pin()
    root = fetch_kernel(pin)
    cwd = cwd or os.getcwd()
    run_id = new_run_id()
    state = RunState(run_id)
    runs = cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    xdir = runs / f"labkit-{run_id}-vm"
    rwdirs = [str(xdir)]
    for p in rw:
        p = os.path.abspath(p)
        os.makedirs(p, exist_ok=True)
        if p not in rwdirs:
            rwdirs.append(p)
    for p in rwdirs + [str(root)]:
        if re.search(r"[\s=,]", p):
            raise LabkitError(f"cannot share {p!r} with the VM: no spaces, '=' or ',' allowed")
    cpus = int(os.environ.get("LABKIT_VM_CPUS") or os.cpu_count() or 1)
    memory = os.environ.get("LABKIT_VM_MEMORY") or _default_memory()
    cmd = [vng, "--run", str(root / "boot" / f"vmlinuz-{pin.release}"), "--verbose",
           "--append", "loglevel=4", "--name", f"labkit-{run_id}",
           "--cpus", str(cpus), "--memory", memory]
    if accel == "tcg":
        cmd.append("--disable-kvm")
    for p in rwdirs:
        cmd += ["--rwdir", p]
    if str(root).startswith(GUEST_HIDDEN):
        cmd += ["--rodir", str(root)]
    cmd += ["--exec", f"/bin/sh {xdir}/run.sh"]
    host_env = dict(os.environ)
    host_env["PATH"] = f"{Path(vng).parent}:{host_env.get('PATH', '/usr/bin:/bin')}"
    host_env["TMPDIR"] = str(xdir / "host-tmp")  # vng's own temp files die with xdir

    state.acquire()   # the lock: `labkit clean` leaves a live VM alone
    state.add("paths", str(xdir))
    proc: subprocess.Popen | None = None
    console = ""
    try:
        os.mkdir(xdir, 0o700)
        os.mkdir(xdir / "host-tmp")
        (xdir / "run.sh").write_text(_script(xdir, argv, cwd, _guest_env(env)))
        t0 = time.monotonic()
        with open(xdir / "console.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=xdir, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=host_env, start_new_session=True)
        state.add_pid(proc.pid)
        tails = [_Tail(xdir / "stdout", echo), _Tail(xdir / "stderr", echo)]
        started_at: float | None = None
        qemu_seen = False
        while proc.poll() is None:
            now = time.monotonic()
            if not qemu_seen:
                for pid in _group_pids(proc.pid):
                    if _comm(pid).startswith("qemu-system"):
                        state.add_pid(pid)
                        qemu_seen = True
            if started_at is None and (xdir / "started").exists():
                started_at = now
            for t in tails:
                t.pump()
            if started_at is None and now - t0 > boot_timeout:
                console = _read(xdir / "console.log")
                raise VMBootError(f"the VM ({accel}) did not start the command within {boot_timeout:.0f} s; "
                                  f"console tail:\n{_console_tail(console)}")
            if started_at is not None and now - started_at > timeout:
                console = _read(xdir / "console.log")
                raise LabkitError(f"`{shlex.join(argv)}` did not finish in the VM within {timeout:.0f} s; "
                                  f"console tail:\n{_console_tail(console)}")
            time.sleep(0.1)
        end = time.monotonic()
        if started_at is None and (xdir / "started").exists():
            started_at = end
        for t in tails:
            t.pump()
        console = _read(xdir / "console.log")
        rc_text = _read(xdir / "rc").strip()
        if started_at is None:
            raise VMBootError(f"the VM ({accel}) exited (vng status {proc.returncode}) before running the "
                              f"command; console tail:\n{_console_tail(console)}")
        if not rc_text.isdigit():
            raise LabkitError(f"`{shlex.join(argv)}` ended in the VM without an exit status (kernel panic, "
                              f"OOM?); console tail:\n{_console_tail(console)}")
        uptime = _read(xdir / "started").split()
        facts = {
            "kernel_package": pin.package, "kernel_version": pin.version,
            "kernel_sha256": pin.sha256, "kernel_release": pin.release, "accel": accel,
            "boot_s": round(started_at - t0, 3),
            "guest_uptime_s": float(uptime[0]) if uptime else None,
            "command_s": round(end - started_at, 3), "cpus": cpus, "memory": memory,
            "qemu": _version([QEMU, "--version"]), "virtme_ng": _version([vng, "--version"]),
        }
        return VMResult(list(argv), int(rc_text), _read(xdir / "stdout"), _read(xdir / "stderr"),
                        console, facts)
    finally:
        if proc is not None:
            _kill_group(proc)
            proc.wait()
        remove_path(str(xdir))
        state.drop()


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


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
              echo: IO[str] | None = None, boot_timeout: float | None = None) -> VMResult:
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
            f"(exit {res.returncode}): {_tail(res.stderr, 5) or '(no stderr)'}\n"
            f"console tail:\n{_console_tail(res.console)}")
    return res




# ---- python -m labkit.kernels.vm -------------------------------------------------------
def _lock(spec: str) -> None:
    package, _, version = spec.partition("=")
    if not package or not version:
        raise LabkitError("usage: python -m labkit.kernels.vm lock <package>=<version>")
    release = re.sub(r"^linux-image-", "", package).removesuffix("-unsigned")
    pin = KernelPin(package, version, "0" * 64, release)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".lock-", dir=cache))
    try:
        cp = subprocess.run(["apt-get", "download", "-o", "APT::Sandbox::User=root", spec],
                            cwd=tmp, capture_output=True, text=True, timeout=1800)
        debs = sorted(tmp.glob("*.deb"))
        if cp.returncode != 0 or not debs:
            raise LabkitError(f"`apt-get download {spec}` failed: {_tail(cp.stderr, 2)}")
        pin = KernelPin(package, version, _sha256(debs[0]), release)
        os.replace(debs[0], cache / f"{package}_{version}_amd64.deb")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = LOCK_FILE.read_text()
    head = "".join(ln for ln in text.splitlines(keepends=True) if ln.startswith("#"))
    LOCK_FILE.write_text(head + "".join(f'{k} = "{v}"\n' for k, v in asdict(pin).items()))
    print(f"pinned {package} {version} sha256 {pin.sha256} in {LOCK_FILE}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m labkit.kernels.vm", description=__doc__.split("\n\n")[0])
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
            cmd = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
            if not cmd:
                p.error("run needs a command after --")
            res = run_in_vm(cmd, a.timeout, rw=a.rw, check=False, echo=sys.stdout)
            print(json.dumps(res.facts), file=sys.stderr)
            return res.returncode
        elif a.cmd == "lock":
            _lock(a.spec)
    except LabkitError as exc:
        print(f"labkit.kernels.vm: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build labkit's own user-mode Linux kernel from Debian's kernel source.

Debian's prebuilt ``user-mode-linux`` kernels either die at boot on AMX hosts
(6.1, 6.12) or lack legacy x_tables and nf_tables' ip family (7.2), so no
iptables mode could run beside IPVS.  labkit builds one in which every mode
runs:

1. Debian's ``linux-source-<series>`` package, pinned by exact version and the
   sha256 of its ``.deb`` in ``umlkernel.lock``, is fetched with
   ``apt-get download`` through labkit's private apt index (the host's apt
   configuration is not touched) and its tarball unpacked in the cache;
2. ``make ARCH=um defconfig``, then every option of the fragment
   ``labkit/guests/uml.config`` set to ``y`` (``scripts/config -e``) or off
   (``=n``, ``scripts/config -d``), then
   ``make ARCH=um olddefconfig``;
3. the resulting ``.config`` is checked against the fragment: an option that
   olddefconfig dropped, or turned back on, fails the build and is named;
4. ``make ARCH=um vmlinux`` (all cores), everything built in: no modules, no
   modprobe in the guest.

The result, ``<cache>/uml/linux-<release>-<key>/`` with the binary ``linux``,
its ``config`` and ``build.json`` (sources, sha256 sums, build time), is keyed
on (source sha256, the fragment's options, patches' sha256): a second ``make setup``
reuses it, a changed fragment builds anew.  The source tree is removed once
the binary is in place.  Nothing is installed; nothing goes to ``/boot`` or
``/lib/modules``.

    python -m labkit.guests.uml build      # what `make setup` runs
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

from tqdm import tqdm

from labkit.core.errors import LabkitError, Unavailable
from labkit.host import debcache
from labkit.host.debcache import flock

HERE = Path(__file__).resolve().parent
FRAGMENT = HERE / "uml.config"
PATCH_DIR = HERE / "uml-patches"
#: compile steps of one build (``CC``/``AS``/``LD``... lines of make), for the
#: progress bar's total; measured on the pinned source with the fragment
EXPECTED_STEPS = 1700
#: Debian packages a build needs, by the tool that is looked for
BUILD_TOOLS = (("gcc", "gcc"), ("make", "make"), ("flex", "flex"), ("bison", "bison"), ("bc", "bc"),
               ("xz", "xz-utils"), ("perl", "perl"), ("dpkg-deb", "dpkg"))
_OPTION = re.compile(r"^(CONFIG_[A-Z0-9_]+)=y\b")
_SETTING = re.compile(r"^(CONFIG_[A-Z0-9_]+)=([yn])\b")
_STEP = re.compile(r"^\s+(CC|AS|LD|AR|HOSTCC|HOSTLD|GEN|UPD|SYSHDR|SYSTBL|WRAP|CPP|MKCAP|OBJCOPY)\s")


@dataclass(frozen=True)
class SourcePin:
    """Debian's kernel source package, and the path of its tarball inside the .deb."""
    pin: debcache.KernelPin
    suite: str
    tarball: str
    #: fragment options this source does not define at all (added in a later
    #: series; their function is built in unconditionally here): not set, and
    #: checked to be absent from the source's Kconfig
    absent: tuple[str, ...] = ()
    #: False where the series dies at boot on a host CPU with AMX
    boots_with_amx: bool = True
    #: the lock file it was read from (messages)
    lock_name: str = "umlkernel.lock"


def fragment_settings(text: str) -> dict[str, str]:
    """What a fragment sets: ``CONFIG_X`` -> ``"y"`` (built in) or ``"n"``
    (off; for a choice, the member defconfig picks, such as the debug-info
    format), in the fragment's order (comments and blank lines skipped; any
    other line, or an option set twice, is an error that names it)."""
    out: dict[str, str] = {}
    dup: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        m = _SETTING.match(body)
        if not m or body != m.group(0):
            raise LabkitError(f"{FRAGMENT.name}:{n}: expected `CONFIG_NAME=y` or `CONFIG_NAME=n`, got {body[:60]!r}")
        if m.group(1) in out:
            dup.append(m.group(1))
        out[m.group(1)] = m.group(2)
    if dup:
        raise LabkitError(f"{FRAGMENT.name}: options set twice: {', '.join(sorted(set(dup)))}")
    return out


def fragment_options(text: str) -> list[str]:
    """The ``CONFIG_X`` names a fragment sets to ``y``."""
    return [k for k, v in fragment_settings(text).items() if v == "y"]


def fragment_unset(text: str) -> list[str]:
    """The ``CONFIG_X`` names a fragment turns off (``=n``)."""
    return [k for k, v in fragment_settings(text).items() if v == "n"]


def unwanted_options(config_text: str, options: Sequence[str]) -> list[str]:
    """The options of ``options`` (to be off) that a ``.config`` sets, to ``y`` or ``m``."""
    have = {ln.split("=", 1)[0] for ln in config_text.splitlines() if re.match(r"^CONFIG_[A-Z0-9_]+=[ym]$", ln)}
    return [o for o in options if o in have]


def missing_options(config_text: str, options: Sequence[str]) -> list[str]:
    """The options of ``options`` that a ``.config`` does not set to ``y``."""
    have = {m.group(1) for m in (_OPTION.match(ln) for ln in config_text.splitlines()) if m}
    return [o for o in options if o not in have]


def kconfig_defines(tree: Path, option: str) -> bool:
    """Whether any Kconfig file of the source ``tree`` defines ``option``
    (``CONFIG_X``: a ``config X`` or ``menuconfig X`` line)."""
    name = option.removeprefix("CONFIG_")
    pat = re.compile(rf"^\s*(menu)?config\s+{re.escape(name)}\s*$", re.M)
    for k in tree.rglob("Kconfig*"):
        try:
            if pat.search(k.read_text(errors="replace")):
                return True
        except OSError:
            continue
    return False


def patches() -> list[Path]:
    return sorted(PATCH_DIR.glob("*.patch")) if PATCH_DIR.is_dir() else []


def build_key(source_sha256: str, fragment: str, patch_texts: Sequence[bytes] = ()) -> str:
    """The cache key of a build: what goes into it, hashed (16 hex digits).
    The fragment counts by its options, sorted, so a changed comment reuses
    the build and a changed option builds anew."""
    options = "\n".join(sorted(f"{k}={v}" if v == "n" else k
                                for k, v in fragment_settings(fragment).items())).encode()
    h = hashlib.sha256(source_sha256.encode() + b"\0" + hashlib.sha256(options).hexdigest().encode())
    for p in patch_texts:
        h.update(b"\0" + hashlib.sha256(p).hexdigest().encode())
    return h.hexdigest()[:16]


def key_of(src: SourcePin) -> str:
    return build_key(src.pin.sha256, FRAGMENT.read_text(), [p.read_bytes() for p in patches()])


def root_dir(src: SourcePin) -> Path:
    return debcache.kind_dir("uml") / f"linux-{src.pin.release}-{key_of(src)}"


def complete(root: Path) -> bool:
    return (root / "linux").is_file() and os.access(root / "linux", os.X_OK) and (root / "build.json").is_file()


def missing_tools() -> list[str]:
    return [f"{t} (Debian package {pkg})" for t, pkg in BUILD_TOOLS if not shutil.which(t)]


def _run(cmd: Sequence[str], cwd: Path, log: IO[str], what: str, timeout: float = 600) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    cp = subprocess.run(list(cmd), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if cp.returncode != 0:
        raise LabkitError(f"building user-mode Linux: {what} failed (exit {cp.returncode}); see {log.name}")


def _make_vmlinux(tree: Path, log: IO[str], jobs: int, progress: bool) -> None:
    """``make ARCH=um vmlinux`` with a progress bar over its compile steps."""
    cmd = ["make", "ARCH=um", f"-j{jobs}", "vmlinux"]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    bar = tqdm(total=EXPECTED_STEPS, unit="step", desc="building user-mode Linux", disable=not progress,
               file=sys.stderr, mininterval=2.0)
    with subprocess.Popen(cmd, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if _STEP.match(line) and bar.n < bar.total:
                bar.update(1)
        rc = proc.wait()
    bar.close()
    if rc != 0:
        raise LabkitError(f"building user-mode Linux: `make vmlinux` failed (exit {rc}); see {log.name}")


def build(src: SourcePin, *, progress: bool = True, jobs: int | None = None) -> Path:
    """The built kernel's directory (built once per key; see the module doc)."""
    root = root_dir(src)
    if complete(root):
        return root
    text = FRAGMENT.read_text()
    options = [o for o in fragment_options(text) if o not in src.absent]
    unset = [o for o in fragment_unset(text) if o not in src.absent]
    missing = missing_tools()
    if missing:
        raise Unavailable("building user-mode Linux needs " + ", ".join(missing) + " (`make setup` installs them)")
    kdir = debcache.kind_dir("uml")
    kdir.mkdir(parents=True, exist_ok=True)
    with flock(kdir / ".build.lock"):
        if complete(root):
            return root
        opts = debcache.private_index(src.suite, kdir / "apt")
        deb = debcache.download(src.pin, kdir, src.lock_name, opts)
        # the build tree is kept when a build fails, so the next try goes on where it stopped
        work = kdir / f".build-{root.name}"
        work.mkdir(exist_ok=True)
        logpath = kdir / f"build-{root.name}.log"
        t0 = time.monotonic()
        ok = False
        try:
            with open(logpath, "a") as log:
                tree = _source_tree(work, deb, src, log)
                defined = [o for o in src.absent if kconfig_defines(tree, o)]
                if defined:
                    raise LabkitError(f"{src.lock_name} lists {', '.join(defined)} as absent, but this "
                                      f"source defines them: remove them from `absent`")
                _run(["make", "ARCH=um", "defconfig"], tree, log, "make defconfig")
                args = [a for o in options for a in ("-e", o.removeprefix("CONFIG_"))] + \
                    [a for o in unset for a in ("-d", o.removeprefix("CONFIG_"))]
                _run(["scripts/config", "--file", ".config", *args], tree, log, "scripts/config")
                _run(["make", "ARCH=um", "olddefconfig"], tree, log, "make olddefconfig")
                config = (tree / ".config").read_text()
                lost = missing_options(config, options)
                if lost:
                    raise LabkitError(f"building user-mode Linux: olddefconfig dropped {', '.join(lost)} "
                                      f"(their dependencies are unmet in this source); fix {FRAGMENT.name}")
                kept = unwanted_options(config, unset)
                if kept:
                    raise LabkitError(f"building user-mode Linux: olddefconfig turned {', '.join(kept)} "
                                      f"back on (another option selects them); fix {FRAGMENT.name}")
                _make_vmlinux(tree, log, jobs or os.cpu_count() or 1, progress)
                release = subprocess.run(["make", "-s", "ARCH=um", "kernelrelease"], cwd=tree,
                                         capture_output=True, text=True, timeout=120).stdout.strip()
                if release != src.pin.release:
                    raise LabkitError(f"the source builds kernel {release!r}, not {src.pin.release!r} "
                                      f"as {src.lock_name} says")
                stage = work / "out"
                shutil.rmtree(stage, ignore_errors=True)
                stage.mkdir()
                shutil.copy2(tree / "vmlinux", stage / "linux")   # arch um's `linux` is vmlinux, linked
                (stage / "config").write_text(config)
                facts = {
                    "kernel_release": release, "source_package": src.pin.package,
                    "source_version": src.pin.version, "source_sha256": src.pin.sha256, "suite": src.suite,
                    "fragment_sha256": hashlib.sha256(FRAGMENT.read_bytes()).hexdigest(),
                    "patches": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in patches()},
                    "absent_in_source": list(src.absent),
                    "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
                    "build_key": key_of(src), "build_s": round(time.monotonic() - t0, 1),
                    "jobs": jobs or os.cpu_count() or 1, "gcc": _gcc_version(),
                }
                (stage / "build.json").write_text(json.dumps(facts, indent=2) + "\n")
            debcache.replace_tree(stage, root)
            ok = True
        finally:
            if ok:
                shutil.rmtree(work, ignore_errors=True)
    return root


def _source_tree(work: Path, deb: Path, src: SourcePin, log: IO[str]) -> Path:
    """The unpacked (and patched) source tree in ``work``: unpacked once, kept
    across a failed build."""
    done = work / ".unpacked"
    if done.exists():
        trees = [d for d in (work / "src").iterdir() if d.is_dir()]
        if len(trees) == 1:
            return trees[0]
    shutil.rmtree(work / "src", ignore_errors=True)
    shutil.rmtree(work / "deb", ignore_errors=True)
    _run(["dpkg-deb", "-x", str(deb), "deb"], work, log, f"unpacking {deb.name}")
    tar = work / "deb" / src.tarball
    if not tar.is_file():
        raise LabkitError(f"{deb.name} has no {src.tarball}: is `tarball` in {src.lock_name} right?")
    (work / "src").mkdir()
    _run(["tar", "-xJf", str(tar)], work / "src", log, "unpacking the source")
    shutil.rmtree(work / "deb")
    trees = [d for d in (work / "src").iterdir() if d.is_dir()]
    if len(trees) != 1:
        raise LabkitError(f"{src.tarball} holds {len(trees)} top directories, not one")
    for p in patches():
        _run(["patch", "-p1", "--forward", "-i", str(p)], trees[0], log, f"applying {p.name}")
    done.write_text("")
    return trees[0]


def _gcc_version() -> str:
    try:
        return subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def facts(root: Path) -> dict:
    """What ``build.json`` records of a built kernel."""
    try:
        return dict(json.loads((root / "build.json").read_text()))
    except (OSError, ValueError) as exc:
        raise LabkitError(f"cannot read {root / 'build.json'}: {exc}") from None

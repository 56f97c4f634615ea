"""Pinned Debian packages of other kernels, fetched into labkit's cache.

A kernel labkit boots (the virtme-ng VM's distro kernel, the user-mode Linux
kernel) is pinned in a lock file beside this module: Debian package, exact
version, the sha256 of its ``.deb`` and the kernel release it holds.  It is
fetched with ``apt-get download`` into ``<cache>/<kind>/``, checked against the
sha256 and unpacked there with ``dpkg-deb -x``: never installed, nothing
written to the host's ``/boot`` or ``/lib/modules``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from labkit.core.errors import LabkitError, Unavailable
from labkit.host.debcache import cache_base, flock
from labkit.rundir.store import sha256_file

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class KernelPin:
    package: str
    version: str
    sha256: str
    release: str


def read_pin(path: Path) -> KernelPin:
    try:
        data = tomllib.loads(Path(path).read_text())
        return KernelPin(**{k: str(data[k]) for k in ("package", "version", "sha256", "release")})
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise LabkitError(f"cannot read the kernel pin {path}: {exc!r}") from None


def kind_dir(kind: str) -> Path:
    """``<cache>/<kind>``: where the pinned packages of one kind live."""
    return cache_base() / kind


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise Unavailable(f"{tool} not found (Debian package {package}; `make setup` installs it)")
    return path


def tail(text: str, n: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def host_mirror() -> str:
    """The Debian mirror the host's own apt configuration uses (its first ``URIs:``
    or ``deb`` line), so a private index reaches the same archive."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split()
            if parts[:1] == ["URIs:"] and len(parts) > 1 and "security" not in parts[1]:
                return parts[1]
            if parts[:1] == ["deb"] and len(parts) > 2 and "security" not in line:
                return next(x for x in parts[1:] if "://" in x)
    raise Unavailable("no Debian mirror in the host's apt configuration (/etc/apt/sources.list*)")


def private_index(suite: str, where: Path) -> list[str]:
    """apt options for a private index of Debian ``suite`` (main) kept in
    ``where``: the host's sources, lists and cache are left alone.  The
    index is refreshed when it is older than a day."""
    need("apt-get", "apt")
    where.mkdir(parents=True, exist_ok=True)
    (where / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (where / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = where / "sources.list"
    sources.write_text(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {host_mirror()} "
                       f"{suite} main\n")
    opts = ["-o", f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", f"Dir::State::Lists={where / 'lists'}", "-o", f"Dir::Cache={where}",
            "-o", "APT::Sandbox::User=root"]
    stamp = where / "lists" / ".updated"
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > 86400:
        cp = subprocess.run(["apt-get", "-q", *opts, "update"], capture_output=True, text=True, timeout=1800)
        if cp.returncode != 0:
            raise Unavailable(f"`apt-get update` of a private {suite} index failed: {tail(cp.stderr, 2)}")
        stamp.write_text("")
    return opts


def download(pin: KernelPin, cache: Path, lock_name: str, apt_opts: Sequence[str] = ()) -> Path:
    """The pinned ``.deb`` in ``cache`` (downloaded once, sha256 checked);
    ``apt_opts`` select another index (:func:`private_index`)."""
    deb = cache / f"{pin.package}_{pin.version}_amd64.deb"
    if deb.is_file() and sha256_file(deb) == pin.sha256:
        return deb
    need("apt-get", "apt")
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        cp = subprocess.run(["apt-get", "download", "-o", "APT::Sandbox::User=root", *apt_opts,
                             f"{pin.package}={pin.version}"],
                            cwd=tmp, capture_output=True, text=True, timeout=1800)
        debs = sorted(tmp.glob("*.deb"))
        if cp.returncode != 0 or not debs:
            raise Unavailable(
                f"`apt-get download {pin.package}={pin.version}` failed: "
                f"{tail(cp.stderr or cp.stdout, 2)}. Run `apt-get update`; if Debian no longer "
                f"has this version, move the pin in {lock_name}")
        got = sha256_file(debs[0])
        if got != pin.sha256:
            raise LabkitError(f"{debs[0].name}: sha256 {got} does not match {pin.sha256} in {lock_name}")
        os.replace(debs[0], deb)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return deb


def ready(root: Path, pin: KernelPin, complete: Callable[[Path], bool]) -> bool:
    """``root`` holds ``pin`` unpacked whole (its sha256 recorded, ``complete`` true)."""
    try:
        return (root / ".sha256").read_text().strip() == pin.sha256 and complete(root)
    except OSError:
        return False


def fetch(pin: KernelPin, kind: str, lock_name: str, complete: Callable[[Path], bool],
          after_unpack: Sequence[Sequence[str]] = (), apt_opts: Sequence[str] = ()) -> Path:
    """Download, verify and unpack ``pin`` (once) into ``<cache>/<kind>/<package>_<version>``;
    ``complete(root)`` says whether an unpacked tree is whole; ``after_unpack``
    commands run with ``{root}`` replaced by the new tree.  Returns the root."""
    cache = kind_dir(kind)
    root = cache / f"{pin.package}_{pin.version}"
    if ready(root, pin, complete):
        return root
    need("dpkg-deb", "dpkg")
    cache.mkdir(parents=True, exist_ok=True)
    with flock(cache / ".fetch.lock"):
        if ready(root, pin, complete):
            return root
        deb = download(pin, cache, lock_name, apt_opts)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
        try:
            for argv in (["dpkg-deb", "-x", str(deb), "{root}"], *after_unpack):
                cmd = [a.replace("{root}", str(tmp)) for a in argv]
                cp = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                if cp.returncode != 0:
                    raise LabkitError(f"`{' '.join(cmd[:2])}` failed: {tail(cp.stderr, 3)}")
            (tmp / ".sha256").write_text(pin.sha256 + "\n")
            if not complete(tmp):
                raise LabkitError(f"{deb.name} does not hold kernel {pin.release} where expected: "
                                  f"is `release` in {lock_name} right?")
            if root.exists():
                shutil.rmtree(root)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root

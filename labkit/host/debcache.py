"""Debian packages unpacked into labkit's own cache, never installed.

Two kinds of package come this way, through one download and one unpack:

* **tools** (:data:`TOOLS`) whose Debian package does what a measurement tool
  must not do to a user's machine: Debian's nginx packages enable and start a
  web server in the root namespace.  labkit only needs the ``nginx`` binary,
  run by hand inside the backend namespace, so it unpacks the package into
  ``<cache>/tools/nginx`` (:func:`fetch_tool`, :func:`find_tool`);
* **pinned packages** of the kernels labkit boots (the virtme-ng VM's distro
  kernel, the source of the user-mode Linux kernel), each pinned in a lock
  file in :mod:`labkit.guests` (:class:`KernelPin`: package, exact version,
  the sha256 of its ``.deb``, the kernel release it holds): fetched into
  ``<cache>/<kind>/``, checked against the sha256 and unpacked there
  (:func:`download`, :func:`fetch_pinned`).

Either way: ``apt-get download`` into the cache, ``dpkg-deb -x`` there, under
a lock, into a temporary tree renamed into place when whole; nothing in
``/usr``, ``/etc``, ``/boot``, ``/lib/modules`` or the init system.

The cache is ``$LABKIT_CACHE`` if set, else ``.cache`` in a writable source
tree, else ``$XDG_CACHE_HOME/labkit``.

    python -m labkit.host.debcache fetch nginx     # what `make setup` runs
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from labkit.core.errors import LabkitError, Unavailable
from labkit.core.files import atomic_write_bytes, sha256_file

APT_TIMEOUT = 1800.0


def cache_base() -> Path:
    base = os.environ.get("LABKIT_CACHE")
    if base:
        return Path(base)
    repo = Path(__file__).resolve().parents[2]   # labkit/host/debcache.py -> the source tree
    if (repo / "pyproject.toml").exists() and os.access(repo, os.W_OK):
        return repo / ".cache"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "labkit"


def kind_dir(kind: str) -> Path:
    """``<cache>/<kind>``: where the pinned packages of one kind live."""
    return cache_base() / kind


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing) for the block."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise Unavailable(f"{tool} not found (Debian package {package}; `make setup` installs it)")
    return path


def tail(text: str, n: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def replace_tree(tmp: Path, dest: Path) -> None:
    """Put the whole tree ``tmp`` where ``dest`` is (one rename; an old ``dest`` removed first)."""
    if dest.exists():
        shutil.rmtree(dest)
    os.rename(tmp, dest)


# ---- one download, one unpack ----------------------------------------------------
def apt_download(spec: str, where: Path, apt_opts: Sequence[str] = ()) -> tuple[Path | None, str]:
    """``apt-get download spec`` into the directory ``where``: (the ``.deb``, or
    None with the last lines apt said)."""
    cp = subprocess.run(["apt-get", "download", "-o", "APT::Sandbox::User=root", *apt_opts, spec],
                        cwd=where, capture_output=True, text=True, timeout=APT_TIMEOUT)
    debs = sorted(where.glob("*.deb"))
    if cp.returncode != 0 or not debs:
        return None, tail(cp.stderr or cp.stdout, 2) or "no .deb"
    return debs[0], ""


def unpack(deb: Path, dest: Path, marker: tuple[str, str], complete: Callable[[Path], bool],
           after_unpack: Sequence[Sequence[str]] = ()) -> bool:
    """Unpack ``deb`` into a temporary tree beside ``dest`` and run the
    ``after_unpack`` commands (``{root}`` is the tree); when ``complete(tree)``,
    write the file ``marker`` (name, text) in it and rename it onto ``dest``.
    False (nothing changed) when the tree is not complete."""
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    root = tmp / "root"
    try:
        for argv in (["dpkg-deb", "-x", str(deb), "{root}"], *after_unpack):
            cmd = [a.replace("{root}", str(root)) for a in argv]
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if cp.returncode != 0:
                raise LabkitError(f"`{' '.join(cmd[:2])}` failed: {tail(cp.stderr, 3)}")
        if not complete(root):
            return False
        (root / marker[0]).write_text(marker[1] + "\n")
        replace_tree(root, dest)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_deb(spec: str, dest: Path, lock_name: str, apt_opts: Sequence[str] = (),
                 sha256: str | None = None) -> Path:
    """``apt-get download spec`` (checked against ``sha256``, pinned in
    ``lock_name``, when given), written atomically to ``dest``."""
    need("apt-get", "apt")
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
    try:
        deb, said = apt_download(spec, tmp, apt_opts)
        if deb is None:
            raise Unavailable(f"`apt-get download {spec}` failed: {said}. Run `apt-get update`; if "
                              f"Debian no longer has this version, move the pin in {lock_name}")
        got = sha256_file(deb) if sha256 is not None else sha256
        if got != sha256:
            raise LabkitError(f"{deb.name}: sha256 {got} does not match {sha256} in {lock_name}")
        with open(deb, "rb") as f:
            atomic_write_bytes(dest, f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ---- tools ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CachedTool:
    name: str                  # the command
    relpath: str               # where the binary sits inside the package
    packages: tuple[str, ...]  # tried in order: the first whose .deb has relpath wins
    why: str                   # why it is not installed the usual way


TOOLS = {
    "nginx": CachedTool(
        "nginx", "usr/sbin/nginx",
        # Debian carries the binary in nginx; Ubuntu jammy in nginx-core
        ("nginx", "nginx-core"),
        "Debian's nginx package would enable and start a web server on the host"),
}


def tool_dir(name: str) -> Path:
    return cache_base() / "tools" / name


def cached(name: str) -> str | None:
    """The cached binary of ``name``, if fetched."""
    exe = tool_dir(name) / TOOLS[name].relpath
    return str(exe) if exe.is_file() and os.access(exe, os.X_OK) else None


def find_tool(name: str) -> str:
    """``name`` from PATH, else from the cache; a clear error otherwise."""
    path = shutil.which(name) or cached(name)
    if path:
        return path
    tool = TOOLS[name]
    raise Unavailable(
        f"{name} not found on PATH nor in {tool_dir(name)} (`sudo make setup` fetches "
        f"Debian's {tool.packages[0]} there without installing it: {tool.why})")


def fetch_tool(name: str) -> str:
    """Download and unpack ``name`` into the cache (once); returns the binary."""
    have = cached(name)
    if have:
        return have
    tool = TOOLS[name]
    need("apt-get", "apt")
    need("dpkg-deb", "dpkg")
    dest = tool_dir(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    with flock(dest.parent / f".{name}.lock"):
        have = cached(name)
        if have:
            return have
        for pkg in tool.packages:
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
            try:
                deb, said = apt_download(pkg, tmp)
                if deb is None:
                    errors.append(f"{pkg}: {said.splitlines()[-1]}")
                elif unpack(deb, dest, (".package", deb.name), lambda r: (r / tool.relpath).is_file()):
                    return str(dest / tool.relpath)
                else:
                    errors.append(f"{pkg}: {deb.name} has no {tool.relpath}")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    raise Unavailable(f"could not fetch {name} ({'; '.join(errors)}); try `apt-get update`")


# ---- pinned packages ---------------------------------------------------------------
@dataclass(frozen=True)
class KernelPin:
    package: str
    version: str
    sha256: str
    release: str


def read_pin(path: Path) -> KernelPin:
    return pin_of(read_lock(path), path)


def read_lock(path: Path) -> dict[str, Any]:
    """A lock file's table (TOML), or a one-line error naming the file."""
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LabkitError(f"cannot read the kernel pin {path}: {exc!r}") from None


def pin_of(data: Mapping[str, Any], path: Path) -> KernelPin:
    """The package pin a lock file's table holds (``path`` names it in errors)."""
    try:
        return KernelPin(**{k: str(data[k]) for k in ("package", "version", "sha256", "release")})
    except KeyError as exc:
        raise LabkitError(f"cannot read the kernel pin {path}: {exc!r}") from None


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
    index is refreshed when it is older than a day or was made for another
    suite."""
    need("apt-get", "apt")
    where.mkdir(parents=True, exist_ok=True)
    (where / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (where / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = where / "sources.list"
    line = f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {host_mirror()} {suite} main\n"
    sources.write_text(line)
    opts = ["-o", f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", f"Dir::State::Lists={where / 'lists'}", "-o", f"Dir::Cache={where}",
            "-o", "APT::Sandbox::User=root"]
    stamp = where / "lists" / ".updated"
    # refreshed when older than a day, or made for another suite (one index, two pins)
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > 86400 or stamp.read_text() != line:
        cp = subprocess.run(["apt-get", "-q", *opts, "update"], capture_output=True, text=True,
                            timeout=APT_TIMEOUT)
        if cp.returncode != 0:
            raise Unavailable(f"`apt-get update` of a private {suite} index failed: {tail(cp.stderr, 2)}")
        stamp.write_text(line)
    return opts


def download(pin: KernelPin, cache: Path, lock_name: str, apt_opts: Sequence[str] = ()) -> Path:
    """The pinned ``.deb`` in ``cache`` (downloaded once, sha256 checked);
    ``apt_opts`` select another index (:func:`private_index`)."""
    deb = cache / f"{pin.package}_{pin.version}_amd64.deb"
    if deb.is_file() and sha256_file(deb) == pin.sha256:
        return deb
    return download_deb(f"{pin.package}={pin.version}", deb, lock_name, apt_opts, pin.sha256)


def ready(root: Path, pin: KernelPin, complete: Callable[[Path], bool]) -> bool:
    """``root`` holds ``pin`` unpacked whole (its sha256 recorded, ``complete`` true)."""
    try:
        return (root / ".sha256").read_text().strip() == pin.sha256 and complete(root)
    except OSError:
        return False


def fetch_pinned(pin: KernelPin, kind: str, lock_name: str, complete: Callable[[Path], bool],
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
        if not unpack(deb, root, (".sha256", pin.sha256), complete, after_unpack):
            raise LabkitError(f"{deb.name} does not hold kernel {pin.release} where expected: "
                              f"is `release` in {lock_name} right?")
    return root


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "fetch" or args[1] not in TOOLS:
        print(f"usage: python -m labkit.host.debcache fetch {{{','.join(TOOLS)}}}", file=sys.stderr)
        return 2
    name = args[1]
    if shutil.which(name):
        print(f"{name}: {shutil.which(name)} (on PATH)")
        return 0
    try:
        print(f"{name}: {fetch_tool(name)}")
    except (Unavailable, LabkitError) as exc:
        print(f"labkit: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

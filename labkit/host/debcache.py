"""Debian packages unpacked into labkit's own cache, never installed.

Some tools the lab needs come with things a measurement tool must not put on
a user's machine: Debian's nginx packages enable and start a web server in the
root namespace.  labkit only needs the ``nginx`` binary, run by hand inside the
backend namespace, so it takes that binary the way it takes the VM kernel:
``apt-get download`` into the cache, ``dpkg-deb -x`` there, nothing in
``/usr``, ``/etc`` or the init system.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from labkit.core.errors import LabkitError, Unavailable


def cache_base() -> Path:
    base = os.environ.get("LABKIT_CACHE")
    if base:
        return Path(base)
    repo = Path(__file__).resolve().parents[2]   # labkit/host/debcache.py -> the source tree
    if (repo / "pyproject.toml").exists() and os.access(repo, os.W_OK):
        return repo / ".cache"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "labkit"


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing) for the block."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


def _run(argv: list[str], cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def fetch(name: str) -> str:
    """Download and unpack ``name`` into the cache (once); returns the binary."""
    have = cached(name)
    if have:
        return have
    tool = TOOLS[name]
    for need in ("apt-get", "dpkg-deb"):
        if not shutil.which(need):
            raise Unavailable(f"{need} not found: fetching {name} needs Debian's apt and dpkg")
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
                cp = _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", pkg], cwd=tmp)
                debs = sorted(tmp.glob("*.deb"))
                if cp.returncode != 0 or not debs:
                    last = (cp.stderr or cp.stdout).strip().splitlines()[-1:]
                    errors.append(f"{pkg}: {last[0] if last else 'no .deb'}")
                    continue
                root = tmp / "root"
                cp = _run(["dpkg-deb", "-x", str(debs[0]), str(root)])
                if cp.returncode != 0:
                    raise LabkitError(f"dpkg-deb -x {debs[0].name} failed: {cp.stderr.strip()}")
                if not (root / tool.relpath).is_file():
                    errors.append(f"{pkg}: {debs[0].name} has no {tool.relpath}")
                    continue
                (root / ".package").write_text(debs[0].name + "\n")
                if dest.exists():
                    shutil.rmtree(dest)
                os.rename(root, dest)
                return str(dest / tool.relpath)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    raise Unavailable(f"could not fetch {name} ({'; '.join(errors)}); try `apt-get update`")


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
        print(f"{name}: {fetch(name)}")
    except (Unavailable, LabkitError) as exc:
        print(f"labkit: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a run came from, for its meta file: kernel, host, tool and package
versions, code revision.  Read-only: nothing here changes the machine (git is
asked with optional locks off, so a run never writes ``.git/index.lock``).
"""
from __future__ import annotations

import getpass
import os
import platform
import re
import subprocess
from importlib import metadata
from typing import Any, Sequence

TOOLS: dict[str, list[str]] = {
    "iproute2": ["ip", "-V"], "iptables-legacy": ["iptables-legacy", "--version"],
    "iptables-nft": ["iptables-nft", "--version"], "nft": ["nft", "--version"],
    "clang": ["clang", "--version"], "bpftool": ["bpftool", "version"],
    "ipvsadm": ["ipvsadm", "--version"],
}
PACKAGES = ("scapy", "pyroute2", "pandas", "pyarrow", "numpy", "scipy", "seaborn", "papermill")
_VERSION = re.compile(r"\bv?\d+\.\d+(?:[.\-]\w+)*")
#: lines that are complaints, not versions (ipvsadm without IPVS prints modprobe's error)
_NOT_A_VERSION = ("error", "can't", "cannot", "fatal", "not found", "not available")
#: the Debian package of a tool, asked when the tool cannot report its own version
PACKAGE_OF = {"ipvsadm": "ipvsadm", "bpftool": "bpftool", "nft": "nftables", "clang": "clang"}


def parse_version(output: str) -> str:
    """The first line of a tool's version output that carries a version
    number; "unknown" when none does (an error message is not a version)."""
    for line in output.splitlines():
        if _VERSION.search(line) and not any(w in line.lower() for w in _NOT_A_VERSION):
            return line.strip()
    return "unknown"


def tool_version(argv: Sequence[str]) -> str:
    try:
        cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    v = parse_version(cp.stdout + "\n" + cp.stderr)
    pkg = PACKAGE_OF.get(os.path.basename(argv[0]))
    if v == "unknown" and pkg:
        try:
            dq = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True,
                                timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return v
        if dq.returncode == 0 and dq.stdout.strip():
            return f"{pkg} {dq.stdout.strip()} (Debian package; the tool could not report its version here)"
    return v


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_revision() -> str:
    """``git describe --always --dirty`` of the source tree, or "unknown".
    labkit.guests passes the host's revision into another kernel through
    ``LABKIT_GIT_REVISION`` (git over a slow guest filesystem is slow)."""
    rev = os.environ.get("LABKIT_GIT_REVISION")
    if rev:
        return rev
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        cp = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty", "--abbrev=12"],
                            capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return cp.stdout.strip() if cp.returncode == 0 and cp.stdout.strip() else "unknown"


def bpf_jit() -> str:
    """Whether this kernel compiles BPF programs (``net.core.bpf_jit_enable``):
    "1" (JIT on), "0" (off: interpreted), "2" (on, debug), or "none" when the
    kernel has no JIT at all (user-mode Linux: every eBPF program interpreted)."""
    try:
        with open("/proc/sys/net/core/bpf_jit_enable") as f:
            return f.read().strip()
    except FileNotFoundError:
        return "none"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's first ``model name``): levels and
    slopes differ by 2x and more between CPUs; "" where it is not there."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def environment() -> dict[str, Any]:
    """The facts every meta file records."""
    return {
        "kernel_release": platform.release(),
        "bpf_jit": bpf_jit(),
        "host": {"hostname": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
                 "cpu_model": cpu_model(),
                 "python": platform.python_version(), "user": getpass.getuser()},
        "labkit_version": package_version("labkit"),
        "git_revision": git_revision(),
        "tools": {k: tool_version(v) for k, v in TOOLS.items()},
        "packages": {name: package_version(name) for name in PACKAGES},
    }

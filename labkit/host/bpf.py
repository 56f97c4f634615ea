"""eBPF in this machine's kernel: the ``bpf()`` system call, bpffs, the toolchain.

The thin kernel-facing half of the eBPF datapath (:mod:`labkit.datapaths.ebpf`
keeps the map layout, the renderer and the datapath class), as
:mod:`labkit.host.nfnetlink` is nftables': maps created, pinned, filled with
``BPF_MAP_UPDATE_BATCH``, walked and emptied through raw ``bpf()`` calls
(ctypes, no libbpf binding); a private bpffs instance mounted; C compiled
for the BPF target with clang and programs loaded (and maps filled from
text) with bpftool, after checking the headers and tools are there.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import subprocess
import sysconfig
from collections.abc import Iterator, Sequence

import numpy as np

from labkit.core.errors import LabkitError, Unavailable
from labkit.host import netns

BATCH = 1 << 18        # elements per BPF_MAP_UPDATE_BATCH call
BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_HASH = 1, 2, 6, 9


# ---- the bpf() system call -----------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
(BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY, BPF_OBJ_PIN,
 BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD, BPF_MAP_UPDATE_BATCH) = 0, 1, 3, 4, 6, 7, 15, 26


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise Unavailable(f"bpf() system call number unknown on {platform.machine()}")
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def _attr(fmt: str, *values) -> ctypes.Array:
    buf = ctypes.create_string_buffer(128)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def map_create(kind: int, key_size: int, value_size: int, entries: int, name: str) -> int:
    return _bpf(BPF_MAP_CREATE, _attr("=IIIIIII16s", kind, key_size, value_size, entries, 0, 0, 0,
                                      name.encode()))


def obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(path.encode())
    _bpf(BPF_OBJ_PIN, _attr("=QI", ctypes.addressof(p), fd))


def obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(path.encode())
    return _bpf(BPF_OBJ_GET, _attr("=QI", ctypes.addressof(p), 0))


def obj_id(fd: int) -> int:
    """The kernel's id of a program or map (second field of its info struct)."""
    info = ctypes.create_string_buffer(64)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _attr("=IIQ", fd, len(info), ctypes.addressof(info)))
    return struct.unpack_from("=I", info, 4)[0]


def map_update_batch(fd: int, keys: np.ndarray, values: np.ndarray) -> None:
    """Insert ``keys[n] -> values[n]`` in batches (BPF_MAP_UPDATE_BATCH)."""
    keys, values = np.ascontiguousarray(keys), np.ascontiguousarray(values)
    for lo in range(0, len(keys), BATCH):
        k, v = keys[lo:lo + BATCH], values[lo:lo + BATCH]
        attr = _attr("=QQQQII", 0, 0, k.ctypes.data, v.ctypes.data, len(k), fd)
        _bpf(BPF_MAP_UPDATE_BATCH, attr)
        done = struct.unpack_from("=I", attr, 32)[0]
        if done != len(k):
            raise LabkitError(f"BPF_MAP_UPDATE_BATCH stored {done} of {len(k)} entries")


def map_delete(fd: int, keys: np.ndarray) -> None:
    """Delete ``keys`` one by one (BPF_MAP_DELETE_ELEM), in the given order."""
    keys = np.ascontiguousarray(keys)
    for n in range(len(keys)):
        _bpf(BPF_MAP_DELETE_ELEM, _attr("=I4xQ", fd, keys[n:n + 1].ctypes.data))


def map_items(fd: int, key_size: int, value_size: int) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key bytes, value bytes) of a map (BPF_MAP_GET_NEXT_KEY walk)."""
    key = ctypes.create_string_buffer(key_size)
    nxt = ctypes.create_string_buffer(key_size)
    val = ctypes.create_string_buffer(value_size)
    first = True
    while True:
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, _attr("=I4xQQ", fd, 0 if first else ctypes.addressof(key),
                                             ctypes.addressof(nxt)))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        first = False
        ctypes.memmove(key, nxt, key_size)
        try:
            _bpf(BPF_MAP_LOOKUP_ELEM, _attr("=I4xQQ", fd, ctypes.addressof(key), ctypes.addressof(val)))
        except OSError as exc:  # deleted meanwhile
            if exc.errno == errno.ENOENT:
                continue
            raise
        yield key.raw, val.raw


def possible_cpus() -> int:
    with open("/sys/devices/system/cpu/possible") as f:
        return max(int(part.split("-")[-1]) for part in f.read().strip().split(",")) + 1


# ---- toolchain -------------------------------------------------------------------
def _multiarch() -> str:
    return sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"


def toolchain() -> dict[str, str]:
    """Paths of clang and bpftool, after checking the headers lb.c needs.

    Raises Unavailable naming the missing tool or Debian package.
    """
    tools = {"clang": netns.require_tool("clang", "clang"),
             "bpftool": netns.require_tool("bpftool", "bpftool")}
    for header, package in (("linux/bpf.h", "linux-libc-dev"),
                            (f"{_multiarch()}/asm/types.h", "linux-libc-dev"),
                            ("bpf/bpf_helpers.h", "libbpf-dev")):
        if not os.path.exists(os.path.join("/usr/include", header)):
            raise Unavailable(f"/usr/include/{header} not found (Debian package {package}; "
                              "`sudo make setup` installs it)")
    return tools


def compile_object(out_dir: str, src: str) -> tuple[str, str]:
    """Compile the C file ``src`` for the BPF target into ``out_dir``; returns
    (object path, clang version)."""
    clang = toolchain()["clang"]
    obj = os.path.join(out_dir, os.path.basename(src).rsplit(".", 1)[0] + ".o")
    cmd = [clang, "-O2", "-g", "-Wall", "-target", "bpf", f"-I{os.path.dirname(src)}",
           f"-I/usr/include/{_multiarch()}", "-c", src, "-o", obj]
    cp = subprocess.run(cmd, capture_output=True, text=True)
    if cp.returncode != 0:
        errs = [ln for ln in cp.stderr.splitlines() if "error" in ln] or cp.stderr.splitlines()
        raise LabkitError(f"clang could not compile {os.path.basename(src)}: "
                          + " | ".join(errs[:3]))
    version = subprocess.run([clang, "--version"], capture_output=True, text=True).stdout
    return obj, version.splitlines()[0].strip()


def tool_version(argv: list[str]) -> str:
    """The first line ``argv`` (``clang --version``) prints, "" when it cannot run."""
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0].strip()
    except (OSError, IndexError):
        return ""


# ---- bpffs and bpftool ---------------------------------------------------------------
def mount_bpffs(path: str) -> None:
    """Mount a new bpffs instance on the directory ``path`` (unmounting it drops its pins)."""
    if _libc.mount(b"bpf", path.encode(), b"bpf", 0, None) != 0:
        e = ctypes.get_errno()
        raise Unavailable(f"cannot mount a bpffs instance at {path}: {os.strerror(e)} "
                          "(needs CONFIG_BPF_SYSCALL and CAP_SYS_ADMIN)")


def load_programs(obj: str, prog_dir: str, maps: Sequence[str], pin_dir: str) -> None:
    """Load every program of the object ``obj`` (pinned in ``prog_dir``) with
    ``bpftool prog loadall``, its maps ``maps`` being those pinned in ``pin_dir``."""
    cmd = [toolchain()["bpftool"], "prog", "loadall", obj, prog_dir]
    for m in maps:
        cmd += ["map", "name", m, "pinned", f"{pin_dir}/{m}"]
    cp = subprocess.run(cmd, capture_output=True, text=True)
    if cp.returncode != 0:
        tail = [ln for ln in cp.stderr.splitlines() if ln.strip()][-4:]
        raise LabkitError(f"bpftool could not load {os.path.basename(obj)}: {' | '.join(tail)}")


def batch(text: str) -> None:
    """Run ``bpftool batch`` commands (map updates of pinned maps)."""
    cp = subprocess.run([toolchain()["bpftool"], "batch", "file", "-"], input=text,
                        capture_output=True, text=True)
    if cp.returncode != 0:
        raise LabkitError(f"bpftool batch failed: {' | '.join(cp.stderr.strip().splitlines()[-3:])}")

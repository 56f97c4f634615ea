"""Shared fixtures.  Root tests build real labs in namespaces and are skipped,
with the reason printed (-rs), when the suite does not run as root."""
from __future__ import annotations

import os
import shutil

import pytest

from labkit import netns
from labkit.topology import NS_RE

IS_ROOT = os.geteuid() == 0


def _labkit_namespaces() -> set[str]:
    """labkit namespaces, except those of runs still alive in *other* processes
    (a developer's sweep running next to the suite is not the suite's leftover)."""
    from labkit.state import all_states
    others = {s.run_id for s in all_states() if s.pid != os.getpid() and s.owner_alive()}
    return {n for n in netns.list_namespaces()
            if (m := NS_RE.match(n)) and m.group(1) not in others}


def _labkit_pins() -> set[str]:
    """bpffs pins and mounts of labkit runs (not of runs alive in other processes)."""
    from labkit.state import all_states
    others = {s.run_id for s in all_states() if s.pid != os.getpid() and s.owner_alive()}
    try:
        pins = {f"/sys/fs/bpf/{p}" for p in os.listdir("/sys/fs/bpf") if p.startswith("labkit-")}
    except OSError:
        pins = set()
    with open("/proc/self/mounts") as f:
        mounts = {line.split()[1] for line in f if line.split()[2] == "bpf"}
    pins |= {m for m in mounts if "/labkit-" in m}
    return {p for p in pins if p.split("labkit-")[1][:6] not in others}


def pytest_collection_modifyitems(config, items):
    skip_root = pytest.mark.skip(reason="needs root: network namespaces and netfilter (run `sudo make test`)")
    for item in items:
        if "root" in item.keywords and not IS_ROOT:
            item.add_marker(skip_root)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """After the whole suite, nothing the suite made may remain."""
    before_ns, before_pins = _labkit_namespaces(), _labkit_pins()
    yield
    left_ns = _labkit_namespaces() - before_ns
    left_pins = _labkit_pins() - before_pins
    assert not left_ns, f"tests left namespaces behind: {sorted(left_ns)}"
    assert not left_pins, f"tests left bpffs pins behind: {sorted(left_pins)}"


@pytest.fixture
def lab():
    """A running lab (client, node, backend namespaces and the echo server)."""
    from labkit.catalog import DEFAULT_ENDPOINT_CIDR
    from labkit.lab import Lab
    with Lab(endpoint_cidr=DEFAULT_ENDPOINT_CIDR) as lab:
        yield lab


def need_tool(name: str) -> None:
    from labkit import debcache
    from labkit.errors import Unavailable
    if name in debcache.TOOLS:
        try:
            debcache.find_tool(name)
        except Unavailable as exc:
            pytest.skip(str(exc))
    elif not shutil.which(name):
        pytest.skip(f"{name} not installed (`sudo make setup` installs it)")

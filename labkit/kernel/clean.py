"""Remove what earlier labkit runs left behind (after a crash or SIGKILL).

Found by name prefix and by the runs' state files: namespaces ``lk-<run>-*``,
bpffs pins and temp dirs ``labkit-<run>-*``, and recorded processes.  Runs
whose owner process is still alive are left alone unless ``force`` is set,
so cleaning never breaks a sweep running next to it.
"""
from __future__ import annotations

import glob
import os
import re

from labkit.core.topology import NS_RE
from labkit.kernel import netns
from labkit.kernel.state import all_states, pid_alive, remove_path

PATH_RE = re.compile(r"labkit-([a-z0-9]{6})(?:-|$)")
PATH_GLOBS = ("/sys/fs/bpf/labkit-*", "/tmp/labkit-*")


def clean(force: bool = False) -> list[str]:
    """Remove leftovers; returns a line per thing removed."""
    netns.require_root()
    removed: list[str] = []
    live: set[str] = set()
    for st in all_states():
        if st.owner_alive() and not force:
            live.add(st.run_id)
            continue
        for pid in st.pids:
            if pid_alive(pid):
                netns.kill_pids([pid])
                removed.append(f"process {pid}")
        for ns in st.namespaces:
            if ns in netns.list_namespaces():
                netns.remove(ns)
                removed.append(f"namespace {ns}")
        for path in st.paths:
            if os.path.lexists(path):
                remove_path(path)
                removed.append(f"path {path}")
        st.drop()
    for ns in netns.list_namespaces():
        m = NS_RE.match(ns)
        if m and m.group(1) not in live:
            netns.remove(ns)
            removed.append(f"namespace {ns}")
    for pattern in PATH_GLOBS:
        for path in glob.glob(pattern):
            m = PATH_RE.search(os.path.basename(path))
            if m and m.group(1) not in live:
                remove_path(path)
                removed.append(f"path {path}")
    return removed


def leftovers() -> dict[str, list[str]]:
    """What labkit state exists right now (for tests and `doctor`)."""
    return {
        "namespaces": [n for n in netns.list_namespaces() if NS_RE.match(n)],
        "paths": [p for g in PATH_GLOBS for p in glob.glob(g)],
        "states": [s.run_id for s in all_states()],
    }

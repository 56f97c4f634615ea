"""Remove what dead labkit runs left behind (after a crash or SIGKILL), and
nothing else.

What counts as a dead run's leftover, proven, not guessed:

* the run's state file exists and its lock is free (:mod:`labkit.host.state`:
  a live run holds the lock for its whole life, so a run starting or running
  next to ``clean`` is never touched);
* a namespace is removed only when it matches labkit's exact name pattern
  (``lk-<run id>-cl|nd|be``) *and* that dead run recorded it; a process only
  when its pid *and* start time match the record (a reused pid is someone
  else's); a directory only when the run recorded it, its name matches
  labkit's pattern for that run, and it belongs to this user.

A name that only looks like labkit's (a namespace ``lk-<six>-cl`` or a
directory ``/tmp/labkit-<six>-<random>`` that no state file records) is
*reported*, not removed, unless ``force`` is given; even then a live run's
and another user's are left alone.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field

from labkit.core.topology import NS_RE
from labkit.host import netns, state
from labkit.host.state import (
    RunState,
    all_states,
    lock_held,
    pid_alive,
    remove_path,
    remove_unheld_lock,
    same_process,
)

#: a run's temporary directory: tempfile.mkdtemp(prefix="labkit-<run id>-") in the temp dir
PATH_RE = re.compile(r"^labkit-([a-z0-9]{6})-(vm|[a-z0-9_]{8})$")
TMP_GLOB = "labkit-*"


@dataclass
class CleanReport:
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)    # looks like labkit's, not proven: left alone


def _tmp_dir() -> str:
    return os.environ.get("TMPDIR", "/tmp")


def _ours(path: str, run_id: str | None = None) -> bool:
    """A directory of labkit's name pattern (for ``run_id`` if given) owned by this user."""
    m = PATH_RE.match(os.path.basename(path.rstrip("/")))
    if not m or (run_id is not None and m.group(1) != run_id):
        return False
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return st.st_uid == os.geteuid()


def _clean_run(st: RunState, report: CleanReport) -> None:
    """Remove what the dead run ``st`` recorded."""
    for pid, start in st.pids:
        if same_process(pid, start):
            netns.kill_pids([pid])
            report.removed.append(f"process {pid}")
    present = set(netns.list_namespaces())
    for ns in st.namespaces:
        m = NS_RE.match(ns)
        if ns in present and m and m.group(1) == st.run_id:
            netns.remove(ns)
            report.removed.append(f"namespace {ns}")
    for path in st.mounts + st.paths:
        if os.path.lexists(path):
            if _ours(path, st.run_id) or path in st.mounts:
                remove_path(path)
                report.removed.append(f"path {path}")
            else:
                report.kept.append(f"path {path} (recorded by run {st.run_id}, but not labkit's pattern "
                                   "or not this user's)")
    st.drop()


def clean(force: bool = False, live: bool = False) -> CleanReport:
    """Remove dead runs' leftovers; with ``force`` also unrecorded ones that
    match labkit's pattern; with ``live`` also runs that are still alive."""
    netns.require_root()
    report = CleanReport()
    recorded: set[str] = set()
    for st in all_states():
        recorded.add(st.run_id)
        if st.owner_alive() and not live:
            continue
        _clean_run(st, report)
    # names that look like labkit's but no state file records (looked up after the
    # state files: a run starting meanwhile has its lock before its first namespace)
    for ns in netns.list_namespaces():
        m = NS_RE.match(ns)
        if not m or m.group(1) in recorded:
            continue
        if lock_held(m.group(1)) and not live:
            continue
        if force:
            netns.remove(ns)
            report.removed.append(f"namespace {ns}")
        else:
            report.kept.append(f"namespace {ns} (no labkit state file records it; "
                               "`labkit clean --force` removes it)")
    _clean_state_dir(recorded, live, report)
    for path in glob.glob(os.path.join(_tmp_dir(), TMP_GLOB)):
        m = PATH_RE.match(os.path.basename(path))
        if not m or m.group(1) in recorded or not _ours(path):
            continue
        if lock_held(m.group(1)) and not live:
            continue
        if force:
            remove_path(path)
            report.removed.append(f"path {path}")
        else:
            report.kept.append(f"path {path} (no labkit state file records it; "
                               "`labkit clean --force` removes it)")
    return report


#: a state file being written: ``<run id>.json.tmp<pid>-<random>`` (:meth:`RunState.save`;
#: labkit before the one atomic write left no ``-<random>``)
STATE_TMP_RE = re.compile(r"^(.+)\.json\.tmp(\d+)(?:-[0-9a-f]+)?$")


def _clean_state_dir(recorded: set[str], live: bool, report: CleanReport) -> None:
    """The state directory's own leftovers: a lock file with no state file that
    no process holds, and a state file half-written by a process that is gone."""
    try:
        names = sorted(os.listdir(state.STATE_DIR))
    except (FileNotFoundError, PermissionError):
        return
    present = set(names)
    for n in names:
        path = os.path.join(state.STATE_DIR, n)
        if n.endswith(".lock") and n[:-5] not in recorded and f"{n[:-5]}.json" not in present:
            if remove_unheld_lock(n[:-5]):
                report.removed.append(f"lock file {path} (no state file, held by no process)")
        elif (m := STATE_TMP_RE.match(n)) and not pid_alive(int(m.group(2))) \
                and (live or not lock_held(m.group(1))):
            os.unlink(path)
            report.removed.append(f"file {path} (a state file a killed run was writing)")


def leftovers() -> dict[str, list[str]]:
    """What labkit state exists right now (for tests and CI)."""
    return {
        "namespaces": [n for n in netns.list_namespaces() if NS_RE.match(n)],
        "paths": [p for p in glob.glob(os.path.join(_tmp_dir(), TMP_GLOB))
                  if PATH_RE.match(os.path.basename(p))],
        "states": [s.run_id for s in all_states()],
    }

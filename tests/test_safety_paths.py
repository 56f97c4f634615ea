"""Root-safety of output paths (README "Safety", issue 26 items 1 and 2): labkit never
writes through a path another user can redirect, and one run at a time writes into an
--out.  Layouts are built under tmp_path; "nobody" (65534) plays the hostile user and a
root-owned directory under tmp_path plays the victim (any path such as /etc)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import types

import pandas as pd
import pytest
from conftest import _labkit_namespaces, host_modes
from test_report import make_run

from labkit import cli
from labkit.core.errors import UsageError
from labkit.report import browser, sections
from labkit.report import build as report
from labkit.report.compare import build_compare
from labkit.rundir import safepath, schema, store
from labkit.runs import runner
from labkit.runs.control import Control

NOBODY = 65534
ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = ["--services", "1", "--targets", "last", "--probes", "20", "--rounds", "1", "--warmup", "2",
        "--kernel", "host", "--quiet"]


def labkit(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, **kw)


def one_line(cp: subprocess.CompletedProcess, code: int, pattern: str) -> str:
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode == code and len(lines) == 1 and re.search(pattern, lines[0]), cp.stderr[-3000:]
    return lines[0]


def _victim(tmp_path) -> str:
    """A root-owned directory with a file in it: what an attacker would like root to write into."""
    v = tmp_path / "victim"
    v.mkdir(mode=0o755)
    (v / "precious").write_text("keep me")
    return str(v)


def _untouched(victim: str) -> None:
    assert sorted(os.listdir(victim)) == ["precious"], os.listdir(victim)
    assert open(os.path.join(victim, "precious")).read() == "keep me"


@pytest.fixture
def layouts(tmp_path):
    """tmp_path/u: nobody's directory holding a symlink `link` (nobody's) to the victim;
    tmp_path/r: root's directory holding such a symlink; world-writable and sticky ones."""
    os.chmod(tmp_path, 0o755)
    victim = _victim(tmp_path)
    u = tmp_path / "u"
    u.mkdir()
    os.symlink(victim, u / "link")
    os.lchown(u / "link", NOBODY, NOBODY)
    os.chown(u, NOBODY, NOBODY)
    r = tmp_path / "r"
    r.mkdir()
    os.symlink(victim, r / "link")
    for name, mode, owner in (("open", 0o777, 0), ("grp", 0o775, 0), ("sticky", 0o1777, 0),
                              ("nsticky", 0o1777, NOBODY)):
        d = tmp_path / name
        d.mkdir()
        os.chmod(d, mode)
        os.chown(d, owner, 12345 if name == "grp" else owner)
    return types.SimpleNamespace(base=tmp_path, victim=victim, u=u, r=r)


# ---- 1a: every component checked, once, for every command ----------------------------------

@pytest.mark.root
def test_the_walk_refuses_every_component_another_user_can_change(layouts):
    """A symlink anywhere on the path, a directory of another user's, a directory
    others can write unless sticky and root's (or the invoker's): refused, creating nothing."""
    b = layouts.base
    refused = {
        f"{b}/u/link/newrun": r"\(.*/u\) belongs to uid 65534",        # issue 26 1a
        f"{b}/r/link/newrun": r"\(.*/r/link\) is a symbolic link",     # a symlink in the middle
        f"{b}/r/link": r"is a symbolic link",                           # ... or at the end
        f"{b}/open/x": r"\(.*/open\) is writable by other users \(mode 777, not sticky\)",
        f"{b}/grp/x": r"\(.*/grp\) is writable by other users \(mode 775",
        f"{b}/nsticky/x": r"\(.*/nsticky\) belongs to uid 65534",
        f"{b}/u": r"belongs to uid 65534",          # the output itself: its owner could swap it (1b)
        f"{b}/victim/precious/x": r"is not a directory",
    }
    for path, why in refused.items():
        with pytest.raises(UsageError, match=why):
            safepath.check(path, "--out")
        with pytest.raises(UsageError, match=why):
            safepath.open_dir(path, "--out", create=True)
    _untouched(layouts.victim)
    assert not os.path.exists(f"{b}/open/x") and not os.path.exists(f"{b}/nsticky/x")
    # sticky and root's, like /tmp: fine, and what is missing is made root's, 0755
    assert safepath.check(f"{b}/sticky/a/b", "--out") == f"{b}/sticky/a/b"
    with safepath.open_dir(f"{b}/sticky/a/b", "--out") as d:
        assert d.created
        st = os.stat(f"{b}/sticky/a")
        assert st.st_uid == 0 and st.st_mode & 0o777 == 0o755
    assert safepath.check(f"{b}/r/../r/new", "--out") == f"{b}/r/new"   # normalised once


def test_refusal_is_a_pure_rule():
    def st(mode, uid=0, gid=0):
        return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))
    users, groups = frozenset({0, 1000}), frozenset({0, 1000})
    assert safepath.refusal(st(0o40755), users, groups) is None
    assert safepath.refusal(st(0o40755, uid=1000), users, groups) is None
    assert safepath.refusal(st(0o41777), users, groups) is None                    # /tmp
    assert "another user" in safepath.refusal(st(0o41777, uid=7), users, groups)
    assert "writable by other users" in safepath.refusal(st(0o40777), users, groups)
    assert "writable by other users" in safepath.refusal(st(0o40775, gid=7), users, groups)
    assert safepath.refusal(st(0o40775, gid=1000), users, groups) is None
    assert "symbolic link" in safepath.refusal(st(0o120777), users, groups)
    assert "not a directory" in safepath.refusal(st(0o100644), users, groups)


def test_the_user_who_ran_sudo_is_trusted_and_no_one_else(monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("SUDO_UID", "1000")
    monkeypatch.delenv("PKEXEC_UID", raising=False)
    assert safepath.trusted_users() == {0, 1000}
    monkeypatch.setenv("SUDO_UID", "1000; 7")
    assert safepath.trusted_users() == {0}


def _run_dirs(tmp_path) -> tuple[str, str]:
    """Two small synthetic runs (report needs one, compare two)."""
    a = make_run(tmp_path / "arun", modes=("iptables-nft", "nftables"), services=(1, 1000),
                 targets=("last",), rounds=1, probes=50, invalid_point=-1)
    b = str(tmp_path / "brun")
    shutil.copytree(a, b)
    return a, b


COMMANDS = {
    "sweep": ["sweep", "--modes", "nftables", *TINY, "--out", "{out}"],
    "control": ["control", "--modes", "nftables", "--services", "0", "--quiet", "--out", "{out}"],
    "cpu": ["cpu", "--modes", "nftables", "--services", "0", "--rounds", "1", "--quiet", "--out", "{out}"],
    "bench": ["bench", "program", "--modes", "nftables", "--services", "1", "--repeat", "1", "--quiet",
              "--out", "{out}"],
    "report": ["report", "{a}", "--out-dir", "{out}"],
    "compare": ["compare", "{a}", "{b}", "--out-dir", "{out}"],
}


@pytest.mark.root
@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_no_command_writes_through_a_symlink_in_a_users_directory(layouts, cmd):
    """Issue 26 1a: --out /tmp/u/link/newrun, /tmp/u nobody's and link -> a root-owned
    directory: one line, exit 2, nothing created in the victim, for every command (the
    other layouts of the walk's test refuse through the same code)."""
    a, b = _run_dirs(layouts.base) if cmd in ("report", "compare") else ("", "")
    cp = labkit(*[x.format(out=f"{layouts.u}/link/newrun", a=a, b=b) for x in COMMANDS[cmd]])
    one_line(cp, 2, r"/u\) belongs to uid 65534")
    _untouched(layouts.victim)


# ---- 1c: planted symlinks in an --out-dir are never written through -------------------------

def _plant(out: str, victim: str, names: list[str]) -> dict[str, str]:
    """Symlinks named like labkit's outputs and temporary files, each to a victim file of
    its own (holding the link's name)."""
    os.makedirs(out, exist_ok=True)
    targets = {}
    for i, name in enumerate(names):
        t = os.path.join(victim, f"target{i}")
        with open(t, "w") as f:
            f.write(name)
        os.symlink(t, os.path.join(out, name))
        targets[name] = t
    return targets


def _never_written_through(out: str, targets: dict[str, str], finals: set[str]) -> None:
    for name, t in targets.items():
        assert open(t).read() == name, f"written through the planted {name}"
        p = os.path.join(out, name)
        if name in finals:   # the rename replaced the link itself, never its target
            assert not os.path.islink(p) and os.path.isfile(p) and os.path.getsize(p) > 0, name
        else:                # a link under a temporary name is left alone
            assert os.path.islink(p), name


def test_report_never_writes_through_a_planted_symlink(tmp_path):
    """Issue 26 1c: symlinks named analysis.ipynb, report.html.tmp, crossover.csv.tmp ...
    (and the final names themselves) in --out-dir; report writes none of their targets."""
    run, _ = _run_dirs(tmp_path)
    victim = _victim(tmp_path)
    out = str(tmp_path / "rep")
    finals = {"analysis.ipynb", "report.html", "crossover.csv", "fits.csv", "summary.csv", "claims.csv"}
    temps = ["report.html.tmp", "crossover.csv.tmp", "fits.csv.tmp", "summary.csv.tmp", "claims.csv.tmp",
             "report.png.tmp.png"]
    shot = browser.browser() is not None
    if shot:
        finals.add("report.png")
    targets = _plant(out, victim, sorted(finals) + temps)
    path = report.build_report(run, out_dir=out, n_boot=50, screenshot=shot)
    assert path == os.path.join(out, "report.html")
    _never_written_through(out, targets, finals)
    assert "<html" in open(path, encoding="utf-8").read()[:2000].lower()
    assert not [n for n in os.listdir(out) if n.startswith(schema.TMP_PREFIX)]


def test_compare_never_writes_through_a_planted_symlink(tmp_path):
    """Issue 26 1c: compare.html.tmp and compare.csv.tmp (and the final names) planted."""
    a, b = _run_dirs(tmp_path)
    victim = _victim(tmp_path)
    out = str(tmp_path / "cmp")
    finals = {"compare.html", "compare.csv"}
    targets = _plant(out, victim, sorted(finals) + ["compare.html.tmp", "compare.csv.tmp"])
    build_compare([a, b], out, n_boot=50)
    _never_written_through(out, targets, finals)
    assert len(pd.read_csv(os.path.join(out, "compare.csv")))


def test_a_run_file_replaces_a_planted_symlink_and_never_follows_one(tmp_path):
    victim = _victim(tmp_path)
    d = tmp_path / "d"
    d.mkdir()
    os.symlink(os.path.join(victim, "precious"), d / "meta.json")
    os.symlink(os.path.join(victim, "precious"), d / "points.parquet")
    with safepath.open_dir(str(d), "--out") as held:
        store.write_json("meta.json", {"a": 1}, dir_fd=held.fd)
        with pytest.raises(OSError):   # reading never follows a link either
            store.read_table("points.parquet", dir_fd=held.fd)
    assert not os.path.islink(d / "meta.json") and json.loads((d / "meta.json").read_text()) == {"a": 1}
    _untouched(victim)
    os.symlink(d, tmp_path / "link")
    with pytest.raises(OSError):   # given a path, its directory is opened without following a link
        store.write_json(str(tmp_path / "link" / "x.json"), {})
    assert not (d / "x.json").exists()


def test_the_reproduce_line_suggests_no_shared_directory():
    """Issue 26 1d: the report said `--out-dir /tmp/<name>-report`, a predictable path."""
    an = types.SimpleNamespace(run=types.SimpleNamespace(meta={}, path="/x/data/reference/host-6.18"),
                               settings={"budget_us": 10.0, "budget_frac": 0.10})
    text = sections.reproduce(an).data
    assert "--out runs/host-6.18-report" in text and "/tmp" not in text


# ---- 1b: an --out swapped for a symlink while the run writes -------------------------------

@pytest.mark.root
def test_an_out_swapped_for_a_symlink_mid_run_writes_on_into_the_original(tmp_path):
    """Issue 26 1b: once meta.json appears, the --out directory is renamed away and a
    symlink to a root-owned directory put in its place.  Every later write goes through
    the descriptor held since the start: into the original directory, never the victim."""
    mode = "nftables" if "nftables" in host_modes() else host_modes()[0]
    victim = _victim(tmp_path)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "labkit", "sweep", "--modes", mode, "--services", "1,10",
                             "--targets", "last", "--probes", "20", "--rounds", "2", "--warmup", "2",
                             "--kernel", "host", "--quiet", "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "LABKIT_FLUSH_S": "0"})
    deadline = time.monotonic() + 120
    while not (out / schema.META).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    os.rename(out, tmp_path / "moved")
    os.symlink(victim, out)
    done_at_swap = json.loads((tmp_path / "moved" / schema.META).read_text())["blocks_done"]
    stdout, stderr = proc.communicate(timeout=300)
    _untouched(victim)
    meta = json.loads((tmp_path / "moved" / schema.META).read_text())
    assert len(done_at_swap) < 4, "the run ended before the swap: nothing was tested"
    assert meta["complete"] and sorted(meta["blocks_done"]) == [0, 1, 2, 3], (meta, stderr)
    assert len(pd.read_parquet(tmp_path / "moved" / schema.POINTS)) == 4
    # the closing summary is read back through --out, by then a symlink: refused in one line
    lines = stderr.strip().splitlines()
    assert proc.returncode == 0 or (len(lines) == 1 and "symbolic link" in lines[0]), stderr


# ---- 2: one run per --out ---------------------------------------------------------------

def _hold(out: str) -> safepath.OutDir:
    return safepath.open_dir(out, "--out").lock()


@pytest.mark.parametrize("argv", [
    ["sweep", "--modes", "nftables", *TINY],
    ["sweep", "--resume", "--quiet"],
    ["control", "--modes", "nftables", "--services", "0", "--quiet"],
    ["control", "--resume", "--quiet"],
    ["cpu", "--modes", "nftables", "--services", "0", "--rounds", "1", "--quiet"],
    ["bench", "program", "--modes", "nftables", "--services", "1", "--repeat", "1", "--quiet"],
], ids=lambda a: " ".join(a[:2]))
def test_a_second_run_on_one_out_is_refused_naming_the_holder(tmp_path, argv):
    """Issue 26 2: while a run holds --out, a second run or resume there is refused in one
    line naming the holder's PID, and changes nothing."""
    out = tmp_path / "run"
    out.mkdir()
    if "--resume" in argv:
        kind = argv[0]
        (out / schema.KINDS[kind].meta).write_text(json.dumps({"params": {}, "kind": kind}))
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    with _hold(str(out)):
        assert (out / schema.LOCK).read_text().strip() == str(os.getpid())
        cp = labkit(*argv, "--out", str(out))
        one_line(cp, 2, rf"--out {out} is in use by labkit process {os.getpid()}\b")
        assert {n: (out / n).read_bytes() for n in os.listdir(out) if n != schema.LOCK} == before
    assert not (out / schema.LOCK).exists()     # given up with the run: nothing left behind


def test_the_lock_names_its_holder_and_a_dead_holder_blocks_nothing(tmp_path):
    out = str(tmp_path / "run")
    first = _hold(out)
    assert safepath.lock_holder(out) == os.getpid()
    with pytest.raises(UsageError, match=rf"in use by labkit process {os.getpid()}\b"):
        safepath.open_dir(out, "--out").lock()          # another open file: flock says no
    first.close()
    assert safepath.lock_holder(out) is None and not os.path.exists(os.path.join(out, schema.LOCK))
    # a lock file a SIGKILLed run left (its pid long gone): nobody holds it
    with open(os.path.join(out, schema.LOCK), "w") as f:
        f.write("999999999\n")
    assert safepath.lock_holder(out) is None
    with _hold(out) as d:
        assert d.locked and open(os.path.join(out, schema.LOCK)).read().strip() == str(os.getpid())
    # a symlink planted as the lock file is not followed
    os.symlink(os.path.join(_victim(tmp_path), "precious"), os.path.join(out, schema.LOCK))
    with pytest.raises(UsageError, match="lock file"):
        _hold(out)
    _untouched(str(tmp_path / "victim"))


def test_a_guest_kernel_writing_the_hosts_run_takes_no_lock(tmp_path, monkeypatch):
    """In a UML/VM run the host holds --out's lock while labkit runs again inside the
    guest (LABKIT_GUEST set), into the same directory: the guest is not refused."""
    out = tmp_path / "run"
    seen = {}

    def fake_relaunch(where, command, argv, out_dir, kind, **kw):
        seen["holder"] = safepath.lock_holder(out_dir)
        monkeypatch.setenv("LABKIT_GUEST", where)
        assert runner.prepare_out(out_dir, kind, False) == out_dir        # not refused ...
        with safepath.open_dir(out_dir, "--out") as d:
            assert not d.lock().locked                                   # ... and takes no lock
            store.write_json(schema.META, {"params": {}}, dir_fd=d.fd)
        monkeypatch.delenv("LABKIT_GUEST")
        return types.SimpleNamespace(facts={"kernel_release": "7.2", "accel": "none", "boot_s": 1.0})
    monkeypatch.setattr(cli, "choose_kernel", lambda *a: ("uml", "test"))
    monkeypatch.setattr(cli, "relaunch", fake_relaunch)
    args = types.SimpleNamespace(out=str(out), resume=False, cmd="sweep", argv=[])
    assert cli._elsewhere(args, "uml", ["ipvs"], "sweep")
    assert seen["holder"] == os.getpid()                # the host held it for the guest's run
    assert sorted(os.listdir(out)) == [schema.META]     # and gave it up after


@pytest.mark.root
def test_a_run_that_loses_the_race_for_the_lock_creates_nothing(tmp_path, monkeypatch):
    """Two runs pass the early check at once (issue 26 2: started 0.3 s apart): the one
    that does not get the lock stops in one line before any namespace exists."""
    mode = "nftables" if "nftables" in host_modes() else host_modes()[0]
    out = tmp_path / "run"
    before = _labkit_namespaces()
    with _hold(str(out)):
        monkeypatch.setattr(safepath, "lock_holder", lambda path: None)   # the early check saw no one
        r = runner.Runner(Control([mode], ["0"], endpoints=2), str(out), progress=False)
        with pytest.raises(UsageError, match=rf"in use by labkit process {os.getpid()}\b"):
            r.run()
        assert os.listdir(out) == [schema.LOCK]
    assert _labkit_namespaces() <= before

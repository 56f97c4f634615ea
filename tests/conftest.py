"""Shared fixtures.  Root tests build real labs in namespaces and are skipped,
with the reason printed (-rs), when the suite does not run as root."""
from __future__ import annotations

import functools
import os
import shutil
import signal

import pytest

from labkit import datapaths
from labkit.core.catalog import DEFAULT_ENDPOINT_CIDR
from labkit.core.errors import Unavailable
from labkit.core.topology import NS_RE
from labkit.guests import guest
from labkit.host import debcache, netns
from labkit.host.state import all_states
from labkit.lab.lab import Lab
from labkit.runs.estimate import RATES_DIR_ENV

IS_ROOT = os.geteuid() == 0


def _labkit_namespaces() -> set[str]:
    """labkit namespaces, except those of runs still alive in *other* processes
    (a developer's sweep running next to the suite is not the suite's leftover)."""
    others = {s.run_id for s in all_states() if s.pid != os.getpid() and s.owner_alive()}
    return {n for n in netns.list_namespaces()
            if (m := NS_RE.match(n)) and m.group(1) not in others}


def _labkit_pins() -> set[str]:
    """bpffs pins and mounts of labkit runs (not of runs alive in other processes)."""
    others = {s.run_id for s in all_states() if s.pid != os.getpid() and s.owner_alive()}
    try:
        pins = {f"/sys/fs/bpf/{p}" for p in os.listdir("/sys/fs/bpf") if p.startswith("labkit-")}
    except OSError:
        pins = set()
    with open("/proc/self/mounts") as f:
        mounts = {line.split()[1] for line in f if line.split()[2] == "bpf"}
    pins |= {m for m in mounts if "/labkit-" in m}
    return {p for p in pins if p.split("labkit-")[1][:6] not in others}


# A suite started in the background of a shell without job control (`cmd &`) inherits SIGINT
# ignored, and so would every labkit the tests start: the tests that send SIGINT (Ctrl-C at
# start-up, a sweep interrupted mid-run) need it delivered, as in a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """The one way root tests are marked: ``@pytest.mark.root`` (or a fixture
    that builds a lab, which implies it).  Without root they are skipped with
    the reason printed (-rs)."""
    skip_root = pytest.mark.skip(reason="needs root: network namespaces and netfilter (run `make test` as root)")
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.root)
        if "root" in item.keywords and not IS_ROOT:
            item.add_marker(skip_root)


#: fixtures that build kernel state: a test using one is a root test
LAB_FIXTURES = {"lab", "programmed"}


@functools.cache
def host_modes() -> tuple[str, ...]:
    """The modes this host's kernel runs, tried for real in a scratch lab (on
    first use, never at import or collection: collecting builds no namespace)."""
    out = []
    with Lab(endpoint_cidr=DEFAULT_ENDPOINT_CIDR, server=False) as lab:
        for name, cls in datapaths.MODES.items():
            lab.reset_node()
            if cls.unavailable(None) is None and cls.unavailable(lab) is None:
                out.append(name)
    return tuple(out)


def need_host_mode(mode: str) -> None:
    if mode not in host_modes():
        elsewhere = ("; tests/test_ipvs.py::test_ipvs_teardown_under_faults_in_uml runs the ipvs "
                     "cases in user-mode Linux") if mode == "ipvs" else ""
        pytest.skip(f"{mode} does not run on this host kernel (see `labkit doctor`){elsewhere}")


@pytest.fixture(scope="session", autouse=True)
def own_rates(tmp_path_factory):
    """The suite's sweeps keep their rates in a directory of its own (labkit
    processes the tests start, in any kernel, inherit it): a test's small sweep
    must not become the estimate of the user's next real run."""
    old = os.environ.get(RATES_DIR_ENV)
    os.environ[RATES_DIR_ENV] = str(tmp_path_factory.mktemp("rates"))
    yield
    if old is None:
        os.environ.pop(RATES_DIR_ENV, None)
    else:
        os.environ[RATES_DIR_ENV] = old


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
    with Lab(endpoint_cidr=DEFAULT_ENDPOINT_CIDR) as lab:
        yield lab


def need_tool(name: str) -> None:
    if name in debcache.TOOLS:
        try:
            debcache.find_tool(name)
        except Unavailable as exc:
            pytest.skip(str(exc))
    elif not shutil.which(name):
        pytest.skip(f"{name} not installed (`sudo make setup` installs it)")


@pytest.fixture
def nobody_python() -> str:
    """This checkout's venv interpreter, for tests that run it as user nobody;
    skipped (with the reason) when nobody cannot reach it, as when the venv
    was built on an interpreter under /root (``make`` builds it on Debian's)."""
    python = os.path.join(os.path.dirname(__file__), "..", ".venv", "bin", "python")
    parts = os.path.realpath(python).split(os.sep)
    for i in range(2, len(parts)):
        d = os.sep.join(parts[:i])
        if os.path.isdir(d) and not os.stat(d).st_mode & 0o001:
            pytest.skip(f"user nobody cannot enter {d}, on the way to this venv's interpreter")
    return python


def _guest_pids(comm_prefixes: tuple[str, ...], marker: bytes) -> list[int]:
    """Processes whose name starts with one of ``comm_prefixes`` and whose
    command line holds ``marker`` (labkit's guests carry their run id)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and guest.comm(int(d)).startswith(comm_prefixes):
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if marker in f.read():
                        out.append(int(d))
            except OSError:
                pass
    return out


def guest_lifecycle(available, comm_prefixes: tuple[str, ...], marker: bytes, runs, what: str):
    """Body of a fixture for tests that boot a guest kernel: skips unless root
    and ``available()``; yields the run ids of state files before; afterwards
    asserts that no guest process, exchange directory (under ``runs``) or
    state file of the test's is left."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    ok, why = available()
    if not ok:
        pytest.skip(f"{what} cannot run here: {why}")
    if _guest_pids(comm_prefixes, marker):
        pytest.skip(f"another labkit {what} is running here; it would confuse the leftover check")
    before = {s.run_id for s in all_states()}
    yield before
    left = {"processes": _guest_pids(comm_prefixes, marker),
            "exchange dirs": sorted(os.listdir(runs)) if runs.is_dir() else [],
            "state files": sorted(s.run_id for s in all_states()
                                  if s.run_id not in before and any(p.startswith(str(runs)) for p in s.paths))}
    assert left == {"processes": [], "exchange dirs": [], "state files": []}

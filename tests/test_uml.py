"""User-mode Linux as a process: every way a run ends leaves nothing behind
(no linux.uml process, exchange directory or state file): a boot timeout, a
command timeout, and a parent killed with SIGKILL, after which
``labkit clean`` removes the orphaned kernel."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import _guest_pids, guest_lifecycle

from labkit.core.errors import LabkitError
from labkit.datapaths.ipvs import Ipvs
from labkit.kernels import cache, dispatch, guest, uml


def _uml_pids() -> list[int]:
    """linux.uml processes started by labkit (their umid is labkit-<run>)."""
    return _guest_pids(("linux",), b"umid=labkit-")


@pytest.fixture
def bootable():
    yield from guest_lifecycle(uml.uml_available, ("linux",), b"umid=labkit-",
                               cache.kind_dir(uml.KIND) / "runs", "user-mode Linux")


@pytest.mark.root
def test_boot_timeout_kills_user_mode_linux(bootable):
    with pytest.raises(guest.GuestBootError, match="did not start the command within 1 s"):
        uml.run_in_uml(["true"], timeout=10, boot_timeout=1)


@pytest.mark.root
def test_command_timeout_kills_user_mode_linux(bootable):
    with pytest.raises(LabkitError, match="did not finish in user-mode Linux .* within 3 s"):
        uml.run_in_uml(["sleep", "600"], timeout=3)


@pytest.mark.root
def test_clean_removes_the_kernel_of_a_killed_run(bootable):
    """SIGKILL the parent while the guest runs: its linux.uml (its own
    process group) outlives it; ``labkit clean`` finds it by the run's state
    file and removes it, with the exchange directory."""
    proc = subprocess.Popen([sys.executable, "-m", "labkit.kernels.uml", "run", "--timeout", "600", "--",
                             "sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _uml_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _uml_pids(), "user-mode Linux did not start"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _uml_pids(), "the kernel died with its parent: nothing to clean"
    cp = subprocess.run([sys.executable, "-m", "labkit", "clean"], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    deadline = time.monotonic() + 10
    while _uml_pids() and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.mark.root
def test_auto_and_doctor_send_ipvs_to_user_mode_linux():
    """Where the host has no IPVS and user-mode Linux runs: ``--kernel auto
    --modes ipvs`` picks it, and ``labkit doctor --json`` says so, with the
    host's reason."""
    if Ipvs.unavailable() is None:
        pytest.skip("the host kernel has IPVS: it needs no other kernel")
    ok, why = uml.uml_available()
    if not ok:
        pytest.skip(f"user-mode Linux cannot run here: {why}")
    assert dispatch.choose_kernel("auto", ["ipvs"])[0] == "uml"
    cp = subprocess.run([sys.executable, "-m", "labkit", "doctor", "--json"], capture_output=True, text=True,
                        timeout=300)
    assert cp.returncode == 0, cp.stderr
    row = {r["mode"]: r for r in json.loads(cp.stdout)}["ipvs"]
    assert row["where"] == "uml" and "IP_VS" in json.dumps(row), row

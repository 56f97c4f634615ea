"""labkit.guests.vm: the kernel pin, the guest script, and the VM's failure paths.

The failure-path tests boot the pinned kernel for real (skipped, with the
reason, when it cannot boot here) and check that a failing guest command
raises LabkitError carrying the console tail, that a boot that does not
finish in time raises VMBootError, and that no qemu process, exchange
directory or state file is left behind.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import _guest_pids, guest_lifecycle

from labkit.core.errors import LabkitError
from labkit.datapaths import MODES
from labkit.guests import dispatch, guest, uml, vm


def test_lock_file_pins_a_debian_kernel():
    pin = vm.kernel_pin()
    assert pin.package.startswith("linux-image-") and pin.release in pin.package
    assert len(pin.sha256) == 64 and int(pin.sha256, 16) >= 0
    assert vm.guest_kernel_release() == pin.release


def test_kernel_pin_reports_a_broken_lock(tmp_path):
    bad = tmp_path / "k.lock"
    bad.write_text('package = "linux-image-x"\n')
    with pytest.raises(LabkitError, match="cannot read the kernel pin"):
        vm.kernel_pin(bad)


def test_cache_dir_follows_labkit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    assert vm.cache_dir() == tmp_path / "vm"


def test_guest_script_records_start_output_and_status(tmp_path):
    """The script the guest runs, run here by sh: same contract."""
    env = {"PATH": os.environ["PATH"], "GREETING": "it's \"quoted\" $HOME"}
    script = guest.command_script(tmp_path, ["sh", "-c", 'echo "$GREETING"; pwd; echo oops >&2; exit 3'],
                                  str(tmp_path), env, "labkit.guests.vm")
    (tmp_path / "run.sh").write_text(script)
    subprocess.run(["sh", str(tmp_path / "run.sh")], check=True, env={})
    assert (tmp_path / "rc").read_text().strip() == "3"
    assert (tmp_path / "stdout").read_text() == f"it's \"quoted\" $HOME\n{tmp_path}\n"
    assert (tmp_path / "stderr").read_text() == "oops\n"
    assert float((tmp_path / "started").read_text().split()[0]) > 0


def test_guest_script_without_its_directory(tmp_path):
    script = guest.command_script(tmp_path, ["true"], str(tmp_path / "missing"), {"PATH": "/usr/bin:/bin"},
                                  "labkit.guests.vm")
    (tmp_path / "run.sh").write_text(script)
    subprocess.run(["sh", str(tmp_path / "run.sh")], check=True, env={}, capture_output=True)
    assert (tmp_path / "rc").read_text().strip() == "125"
    assert "cannot enter" in (tmp_path / "stderr").read_text()


def test_guest_env_keeps_labkit_variables(monkeypatch):
    monkeypatch.setenv("LABKIT_SOMETHING", "x")
    monkeypatch.setenv("SECRET_TOKEN", "y")
    env = guest.guest_env({"EXTRA": "1"}, "vm")
    assert env["LABKIT_SOMETHING"] == "x" and env["EXTRA"] == "1" and env["LABKIT_GUEST"] == "vm"
    assert "SECRET_TOKEN" not in env and "/usr/sbin" in env["PATH"].split(":")


def test_strip_options_removes_both_forms():
    args = ["--modes", "ipvs", "--kernel", "vm", "--out=/x", "--probes", "5", "--kernel=auto", "--out", "y"]
    assert dispatch.strip_options(args, ("--kernel", "--out")) == ["--modes", "ipvs", "--probes", "5"]


def test_choose_kernel(monkeypatch, tmp_path):
    def _lacks(modes):   # what the runner's pre-flight passes: each mode, why the host cannot run it
        return {m: MODES[m].unavailable(None) for m in modes}

    monkeypatch.delenv("LABKIT_GUEST", raising=False)
    host_modes = [m for m, cls in MODES.items() if cls.unavailable(None) is None]
    lacking = [m for m, cls in MODES.items() if cls.unavailable(None) is not None]
    assert dispatch.choose_kernel("host", _lacks(lacking))[0] == "host"
    if host_modes:
        assert dispatch.choose_kernel("auto", _lacks(host_modes)) == ("host", "the host kernel runs every mode")
    if lacking:
        # labkit's user-mode Linux runs every mode: a mix with host-only modes goes there,
        # else to the VM
        with_legacy = ["iptables-legacy"] + [m for m in lacking if m != "iptables-legacy"]
        where, why = dispatch.choose_kernel("auto", _lacks(with_legacy))
        expect = "uml" if uml.uml_available()[0] else "vm" if vm.vm_available()[0] else "host"
        assert where == expect and lacking[0] in why
    if "ipvs" in lacking and uml.uml_available()[0]:
        assert dispatch.choose_kernel("auto", _lacks(["ipvs", "ebpf"]))[0] == "uml"
        assert dispatch.choose_kernel("uml", _lacks(["ipvs", "iptables-nft", "iptables-legacy"]))[0] == "uml"
    (tmp_path / "vm.json").write_text("{}")
    assert dispatch.choose_kernel(None, _lacks([]), str(tmp_path), resume=True)[0] == "vm"
    with pytest.raises(Exception, match="measured in vm, not host"):   # a resume stays in its kernel
        dispatch.choose_kernel("host", _lacks([]), str(tmp_path), resume=True)
    monkeypatch.setenv("LABKIT_GUEST", "vm")
    assert dispatch.choose_kernel("vm", _lacks(lacking), str(tmp_path), resume=True)[0] == "host"


# ---- booting the VM ---------------------------------------------------------------
def _qemu_pids() -> list[int]:
    return _guest_pids(("qemu-system",), b"labkit-")


@pytest.fixture
def bootable():
    yield from guest_lifecycle(vm.vm_available, ("qemu-system",), b"labkit-", vm.cache_dir() / "runs",
                               "VM kernel")


def _error_of(argv, timeout) -> str:
    """The LabkitError message run_in_vm raises (skips if the VM cannot boot)."""
    try:
        vm.run_in_vm(argv, timeout=timeout)
    except vm.VMBootError as exc:
        pytest.skip(f"VM kernel did not boot: {exc}")
    except LabkitError as exc:
        return str(exc)
    pytest.fail(f"{argv} raised nothing")


@pytest.mark.vm
@pytest.mark.root
@pytest.mark.slow
def test_failing_guest_command_raises_with_console_tail(bootable):
    msg = _error_of(["sh", "-c", "uname -r; echo guest-says-no >&2; exit 3"], timeout=120)
    assert "exit 3" in msg and "guest-says-no" in msg and "console tail" in msg
    assert vm.guest_kernel_release() in msg


@pytest.mark.vm
@pytest.mark.root
@pytest.mark.slow
def test_result_and_facts_of_a_guest_command(bootable, tmp_path):
    out = tmp_path / "shared"
    try:
        res = vm.run_in_vm([sys.executable, "-c",
                            "import os, platform; print(platform.release());"
                            f"open({str(out / 'w')!r}, 'w').write(os.environ['LABKIT_GUEST'])"],
                           timeout=120, rw=[str(out)], check=False)
    except vm.VMBootError as exc:
        pytest.skip(f"VM kernel did not boot: {exc}")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == vm.guest_kernel_release() != os.uname().release
    assert (out / "w").read_text() == "vm"  # written in the guest, seen on the host
    f = res.facts
    assert f["accel"] in ("kvm", "tcg") and f["accel_reason"]
    assert f["kernel_sha256"] == vm.kernel_pin().sha256
    assert 0 < f["guest_uptime_s"] < f["boot_s"] < vm.BOOT_TIMEOUT[f["accel"]]


@pytest.mark.vm
@pytest.mark.root
def test_boot_timeout_kills_qemu(bootable):
    vm.fetch_kernel()
    with pytest.raises(vm.VMBootError, match="did not start the command within 1 s"):
        vm._boot(["true"], accel="tcg", timeout=10, boot_timeout=1)


@pytest.mark.vm
@pytest.mark.root
@pytest.mark.slow
def test_command_timeout_kills_qemu(bootable):
    assert "did not finish in the VM within 3 s" in _error_of(["sleep", "600"], timeout=3)

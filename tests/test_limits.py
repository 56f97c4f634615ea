"""Memory pre-flight (pure) and the loaders' peak-memory measurement."""
import os
import subprocess
import sys
import time

import pytest

from labkit import cli, datapaths
from labkit.core.errors import LabkitError, Unavailable
from labkit.host import limits, netns
from labkit.host.limits import BASE_BYTES, check_memory, mem_available, memory_needed

GB = 1 << 30
ALLOC = "b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096])"


def test_every_mode_states_its_memory_cost():
    for cls in datapaths.MODES.values():
        assert cls.mem_per_endpoint > 0, cls.name


def test_needed_memory_grows_with_the_catalog():
    nft = datapaths.get("nftables")
    assert memory_needed(nft, 0, 10) == BASE_BYTES
    small, large = memory_needed(nft, 10_000, 10), memory_needed(nft, 100_000, 10)
    assert BASE_BYTES < small < large
    assert memory_needed(nft, 100_000, 10, ports=2) > large
    # nft is the memory-hungry loader: 100k x 10 needs several GB, eBPF maps far less
    assert large > 8 * GB
    assert memory_needed(datapaths.get("ebpf"), 100_000, 10) < 2 * GB


def test_a_catalog_that_fits_passes():
    check_memory([datapaths.get("nftables"), datapaths.get("ebpf")], 10_000, 10, available=24 * GB)


def test_a_catalog_too_large_is_refused_with_the_figures():
    classes = [datapaths.get(m) for m in ("nftables", "ebpf", "iptables-nft")]
    with pytest.raises(Unavailable) as exc:
        check_memory(classes, 100_000, 10, available=4 * GB)
    msg = str(exc.value)
    assert "100,000 services x 10 endpoints" in msg
    assert "nftables needs about" in msg and "4.0 GB available" in msg
    assert "ebpf needs" not in msg          # only the modes that do not fit are named
    assert exc.value.exit_code == 3


def test_the_check_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("LABKIT_SKIP_MEMORY_CHECK", "1")
    check_memory([datapaths.get("nftables")], 100_000, 10, available=1)


def test_mem_available_reads_this_machine():
    got = mem_available()
    assert got is None or got > 0


def test_the_measuring_parent_reports_its_childs_peak_not_its_own():
    r, w = os.pipe()
    cp = subprocess.run([sys.executable, "-c", netns._MAXRSS, str(w), sys.executable, "-c", ALLOC],
                        pass_fds=(w,), capture_output=True, timeout=60)
    os.close(w)
    with os.fdopen(r) as f:
        kb = int(f.read())
    assert cp.returncode == 0
    assert 150 < kb / 1024 < 300


def test_the_measuring_parent_passes_the_exit_status_on():
    r, w = os.pipe()
    cp = subprocess.run([sys.executable, "-c", netns._MAXRSS, str(w), "sh", "-c", "exit 7"],
                        pass_fds=(w,), capture_output=True, timeout=60)
    os.close(w)
    os.close(r)
    assert cp.returncode == 7


@pytest.mark.root
def test_peak_memory_of_commands_run_in_a_namespace(lab):
    with netns.peak_memory() as pm:
        lab.run(lab.node, [sys.executable, "-c", "pass"])
        small = pm.mb
        lab.run(lab.node, [sys.executable, "-c", ALLOC])
    # the figure is the command's own, not the (much larger) test process's
    assert 0 < small < 60 and 150 < pm.mb < 300
    lab.run(lab.node, [sys.executable, "-c", ALLOC])   # outside the block: not counted


@pytest.mark.root
@pytest.mark.parametrize("argv", [
    ["sweep", "--modes", "ebpf,nftables", "--services", "0,100000", "--targets", "last",
     "--probes", "10", "--kernel", "host"],
    ["control", "--modes", "nftables", "--services", "100000"],
    ["cpu", "--modes", "nftables", "--services", "100000"],
    ["bench", "program", "--modes", "nftables", "--services", "100000", "--repeat", "1"],
], ids=["sweep", "control", "cpu", "bench"])
def test_commands_refuse_a_catalog_too_large_before_touching_the_kernel(argv, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setattr(limits, "mem_available", lambda: 4 * GB)
    before = netns.list_namespaces()
    out = tmp_path / "run"
    if argv[0] != "bench":
        argv = argv + ["--out", str(out)]
    assert cli.main(argv) == 3
    err = capsys.readouterr().err
    assert "not enough memory" in err and "nftables needs about" in err and "4.0 GB available" in err
    assert netns.list_namespaces() == before
    assert not (out / "samples.parquet").exists() and not (out / "control.parquet").exists()


@pytest.mark.root
def test_a_measured_command_that_times_out_is_killed_with_its_parent(lab):

    marker = "sleep 31.4159"     # an argument no other process has
    with netns.peak_memory():
        with pytest.raises(LabkitError, match="did not finish in 1 s"):
            lab.run(lab.node, marker.split(), timeout=1)
    time.sleep(0.2)
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert left == []

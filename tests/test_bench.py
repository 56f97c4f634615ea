"""bench nft-change: the strace split (pure) and one small real run."""
from __future__ import annotations

import pytest

from labkit.datapaths.nftables import Nftables
from labkit.runs.bench import _strace_split, bench_nft_change

STRACE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 62.95    0.307945         722       426         2 recvmsg
 36.95    0.180782      180781         1           sendmsg
  0.10    0.000470          78         6           sendto
------ ----------- ----------- --------- --------- ----------------
100.00    0.489197        1129       433         2 total
"""


def test_strace_split_reads_recvmsg_and_sendmsg_seconds():
    assert _strace_split(STRACE) == {"recvmsg": 0.307945, "sendmsg": 0.180782,
                                     "recvmsg_calls": 426, "sendmsg_calls": 1}
    assert _strace_split("") == {"recvmsg": 0.0, "sendmsg": 0.0, "recvmsg_calls": 0, "sendmsg_calls": 0}


@pytest.mark.root
def test_bench_nft_change_times_every_operation_both_ways():
    if Nftables.unavailable():
        pytest.skip(Nftables.unavailable())
    rows = bench_nft_change(services=40, endpoints=2, repeat=2)
    assert [(r["op"], r["loader"]) for r in rows] == [
        (op, lo) for lo in ("nft", "netlink")
        for op in ("add", "remove", "endpoints", "empty chain", "chain with a jump")]
    assert all(0 < r["min_s"] <= r["median_s"] <= r["max_s"] for r in rows)
    nft = [r for r in rows if r["loader"] == "nft"]
    # nft read something back for a change and sent a batch each time; strace saw both
    # (counted by calls: a 40-service table's sendmsg can take under 0.1 ms)
    assert all(r["sendmsg_calls"] >= 1 for r in nft), nft
    assert all(r["recvmsg_calls"] >= 1 for r in nft if r["op"] in ("add", "remove", "endpoints")), nft
    assert all(r["sendmsg_s"] >= 0 and r["recvmsg_s"] >= 0 for r in nft), nft

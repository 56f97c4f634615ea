"""The eBPF datapath: pure map renderer (no root), the toolchain and the bpf() calls of
labkit.host.bpf, and the real kernel path (root)."""
from __future__ import annotations

import collections
import ctypes
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from labkit.core.catalog import ServiceCatalog
from labkit.core.errors import LabkitError, Unavailable
from labkit.datapaths import MODES, ebpf
from labkit.host import bpf, netns
from labkit.host.state import remove_path
from labkit.lab.lab import Lab
from labkit.probes.syn import SynProber

needs_clang = pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")


# ---- pure rendering -----------------------------------------------------------
def test_modes_registered():
    assert MODES["ebpf"] is ebpf.Ebpf
    assert MODES["ebpf-xdp"] is ebpf.EbpfXdp


def test_render_maps_exact_small_catalog():
    cat = ServiceCatalog(services=2, endpoints=2, ports=(80, 443))
    m = ebpf.render_maps(cat)
    keys = [(int(k["addr"]), int(k["port"]), int(k["slot"]), int(k["proto"])) for k in m.service_keys]
    vals = [(int(v["backend_id"]), int(v["count"])) for v in m.service_values]
    vip0, vip1 = 0x0A600001, 0x0A600002   # 10.96.0.1, 10.96.0.2
    assert keys == [
        (vip0, 80, 0, 6), (vip0, 80, 1, 6), (vip0, 80, 2, 6),
        (vip0, 443, 0, 6), (vip0, 443, 1, 6), (vip0, 443, 2, 6),
        (vip1, 80, 0, 6), (vip1, 80, 1, 6), (vip1, 80, 2, 6),
        (vip1, 443, 0, 6), (vip1, 443, 1, 6), (vip1, 443, 2, 6),
    ]
    assert vals == [(0, 2), (1, 0), (3, 0), (0, 2), (2, 0), (4, 0),
                    (0, 2), (5, 0), (7, 0), (0, 2), (6, 0), (8, 0)]
    ep = 0x0A800001  # 10.128.0.1
    assert list(m.backend_ids) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [(int(b["addr"]), int(b["port"]), int(b["proto"])) for b in m.backends] == [
        (ep, 80, 6), (ep, 443, 6), (ep + 1, 80, 6), (ep + 1, 443, 6),
        (ep + 2, 80, 6), (ep + 2, 443, 6), (ep + 3, 80, 6), (ep + 3, 443, 6)]
    # the wire bytes: addresses and ports in network order, slot/ids in host order
    assert m.service_keys[1].tobytes() == bytes([10, 96, 0, 1, 0, 80]) + (1).to_bytes(2, "little") \
        + bytes([6, 0, 0, 0])
    assert m.backends[1].tobytes() == bytes([10, 128, 0, 1, 1, 187, 6, 0])
    assert (m.service_max, m.backend_max) == (12, 9)


def test_render_batch_exact():
    cat = ServiceCatalog(services=1, endpoints=2)
    assert ebpf.Ebpf.render(cat) == (
        "# default/svc-000000 10.96.0.1:80/tcp: 2 backends\n"
        "map update pinned @PIN@/lb_services key hex 0a 60 00 01 00 50 00 00 06 00 00 00 "
        "value hex 00 00 00 00 02 00 00 00\n"
        "map update pinned @PIN@/lb_services key hex 0a 60 00 01 00 50 01 00 06 00 00 00 "
        "value hex 01 00 00 00 00 00 00 00\n"
        "map update pinned @PIN@/lb_services key hex 0a 60 00 01 00 50 02 00 06 00 00 00 "
        "value hex 02 00 00 00 00 00 00 00\n"
        "map update pinned @PIN@/lb_backends key hex 01 00 00 00 value hex 0a 80 00 01 00 50 06 00\n"
        "map update pinned @PIN@/lb_backends key hex 02 00 00 00 value hex 0a 80 00 02 00 50 06 00\n")


def test_render_maps_agrees_with_catalog():
    cat = ServiceCatalog(services=1000, endpoints=10)
    m = ebpf.render_maps(cat)
    assert len(m.service_keys) == 1000 * 11 and len(m.backends) == 10_000
    backend = {int(b): (str(socket.inet_ntoa(int(x["addr"]).to_bytes(4, "big"))), int(x["port"]))
               for b, x in zip(m.backend_ids, m.backends)}
    assert len(backend) == 10_000 and 0 not in backend
    for n in range(0, len(m.service_keys), 11):
        i = n // 11
        assert socket.inet_ntoa(int(m.service_keys[n]["addr"]).to_bytes(4, "big")) == cat.vip(i)
        assert int(m.service_values[n]["count"]) == 10
        eps = [backend[int(m.service_values[n + s]["backend_id"])] for s in range(1, 11)]
        assert eps == [(a, 80) for a in cat.endpoints_of(i)]


def test_render_zero_services():
    m = ebpf.render_maps(ServiceCatalog(services=0))
    assert len(m.service_keys) == len(m.backends) == 0
    assert (m.service_max, m.backend_max) == (1, 1)
    assert ebpf.Ebpf.render(ServiceCatalog(services=0)) == "\n"


def test_layouts_match_header():
    """The numpy dtypes and the C structs must agree byte for byte."""
    with open(ebpf.source_path().replace("lb.c", "lb.h")) as f:
        sizes = dict(re.findall(r"sizeof\(struct (\w+)\) == (\d+)", f.read()))
    assert sizes == {"lb_svc_key": str(ebpf.SVC_KEY.itemsize), "lb_svc_val": str(ebpf.SVC_VAL.itemsize),
                     "lb_backend": str(ebpf.BACKEND.itemsize), "lb_ct_key": str(ebpf.CT_KEY.size),
                     "lb_ct_val": str(ebpf.CT_VAL.size)}
    assert ebpf.STATS and len(ebpf.STATS) == 8


# ---- toolchain --------------------------------------------------------------
def test_missing_clang_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(Unavailable, match=r"clang not found .*Debian package clang"):
        bpf.toolchain()
    with pytest.raises(Unavailable, match="clang"):
        bpf.compile_object(str(tmp_path), ebpf.source_path())


@needs_clang
def test_compile_error_is_reported(tmp_path):
    src = tmp_path / "broken.c"
    src.write_text("int f(void) { return undefined_thing; }\n")
    with pytest.raises(LabkitError, match=r"clang could not compile broken\.c: .*undefined_thing"):
        bpf.compile_object(str(tmp_path), str(src))


@needs_clang
def test_compiles_with_all_programs(tmp_path):
    obj, version = bpf.compile_object(str(tmp_path), ebpf.source_path())
    assert "clang" in version
    out = subprocess.run(["llvm-objdump", "-t", obj], capture_output=True, text=True).stdout \
        if shutil.which("llvm-objdump") else open(obj, "rb").read().decode("latin1")
    for prog in ("lb_from_client", "lb_from_backend", "lb_xdp_from_client", "lb_xdp_from_backend",
                 *ebpf.MAPS):
        assert prog in out


# ---- the kernel ------------------------------------------------------------------
root = pytest.mark.root
CAT = ServiceCatalog(services=50, endpoints=10)


def _skip_unless_ebpf():
    """Root tests are marked @pytest.mark.root (skipped without root by conftest);
    here: skip when this host cannot run the ebpf mode."""
    reason = ebpf.Ebpf.unavailable()
    if reason:
        pytest.skip(f"ebpf mode unavailable here: {reason}")


@pytest.fixture(scope="module")
def lab():
    _skip_unless_ebpf()
    with Lab(endpoint_cidr=CAT.endpoint_cidr, ports=CAT.ports) as lab:
        yield lab


@pytest.fixture(params=["ebpf", "ebpf-xdp"])
def dp(lab, request):
    d = MODES[request.param](lab)
    d.setup(CAT)
    yield d
    d.teardown()


def _connect(lab, addr: str, port: int = 80, timeout: float = 2.0) -> socket.socket:
    with netns.entered(lab.client):
        netns.require_inside(lab.client, "open a test connection")
        return socket.create_connection((addr, port), timeout=timeout)


def _echo(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _backend_peers(lab) -> dict[int, str]:
    """client port -> endpoint address of established connections, as the backend sees them."""
    out = lab.run(lab.backend, ["ss", "-Htn", "state", "established", "( sport = :80 )"]).stdout
    peers = {}
    for line in out.splitlines():
        local, peer = line.split()[-2:]
        peers[int(peer.rsplit(":", 1)[1])] = local.rsplit(":", 1)[0]
    return peers


@root
def test_syn_probe_answered_from_vip(lab, dp):
    with SynProber(lab, timeout=1.0, seed=1) as prober:
        outcomes = prober.run(prober.craft_for(CAT, "random", 200))
    bad = [o for o in outcomes if o.error]
    assert not bad, f"{len(bad)} probes failed, e.g. {bad[0].error}"
    for o in outcomes:
        assert o.rtt_ns and o.rtt_ns > 0
        addr = o.endpoint.split(":")[0]
        assert addr in CAT.endpoints_of(o.probe.service), (o.probe.dst, o.endpoint)
    st = dp.stats()
    assert st["new"] >= 200 and st["reply"] >= 200 and st["stack"] == 0 and st["error"] == 0
    time.sleep(0.2)
    # the client kernel answers each SYN-ACK with a RST, which removes the flow
    assert not [e for e in dp.ct_entries() if e.dport == 80 and not e.reply]


@root
def test_tcp_exchange_and_even_spread(lab, dp):
    vip = CAT.vip(CAT.services - 1)
    socks = [_connect(lab, vip) for _ in range(300)]
    try:
        for n, s in enumerate(socks):
            msg = b"request %d" % n
            assert _echo(s, msg) == msg
            assert s.getpeername() == (vip, 80)
        peers = _backend_peers(lab)
        ports = [s.getsockname()[1] for s in socks]
        reached = [peers[p] for p in ports]
        # the CT map agrees with what the backend's kernel sees
        ct = {e.sport: e.nat_addr for e in dp.ct_entries() if not e.reply and e.daddr == vip}
        assert [ct[p] for p in ports] == reached
        counts = collections.Counter(reached)
        assert set(counts) == set(CAT.endpoints_of(CAT.services - 1))
        # 300 draws over 10 endpoints: expect 30 each; chi-square, 9 dof, p < 0.001 at 27.9
        chi2 = sum((c - 30) ** 2 / 30 for c in counts.values())
        assert chi2 < 27.9, counts
        # later packets of each flow reach the same endpoint
        for n, s in enumerate(socks):
            assert _echo(s, b"again %d" % n) == b"again %d" % n
        assert [_backend_peers(lab)[p] for p in ports] == reached
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)
    closing = [e for e in dp.ct_entries() if e.daddr == vip or e.nat_addr == vip]
    assert closing and all(e.closing for e in closing)


@root
def test_non_service_traffic_untouched(lab, dp):
    before = dp.stats()
    s = _connect(lab, CAT.none_address)
    try:
        assert _echo(s, b"plain routing") == b"plain routing"
    finally:
        s.close()
    after = dp.stats()
    assert after["new"] == before["new"] and after["reply"] == before["reply"]


@root
def test_forwarding_skips_netfilter(lab, dp):
    """With the node's FORWARD policy at DROP, services still work (eBPF
    redirects past netfilter) while plain routed traffic is dropped."""
    tool = shutil.which("iptables-nft") or shutil.which("iptables")
    if tool is None:
        pytest.skip("iptables not installed")
    lab.run(lab.node, [tool, "-P", "FORWARD", "DROP"])
    try:
        s = _connect(lab, CAT.vip(3))
        assert _echo(s, b"past netfilter") == b"past netfilter"
        s.close()
        with pytest.raises(OSError):
            _connect(lab, CAT.none_address, timeout=0.5)
    finally:
        lab.run(lab.node, [tool, "-P", "FORWARD", "ACCEPT"])


@root
def test_batch_text_loads_same_maps(lab):
    small = ServiceCatalog(services=3, endpoints=2, ports=(80, 8080))
    fast, slow = ebpf.Ebpf(lab), ebpf.Ebpf(lab)
    try:
        fast.setup(small)
        want = sorted(fast.map_dump("lb_services")), sorted(fast.map_dump("lb_backends"))
        fast.teardown()
        slow.prepare(small)
        slow.load(slow.render(small))
        assert (sorted(slow.map_dump("lb_services")), sorted(slow.map_dump("lb_backends"))) == want
        s = _connect(lab, small.vip(2), 80)  # the lab server listens on 80 only
        assert _echo(s, b"via batch") == b"via batch"
        s.close()
    finally:
        fast.teardown()
        slow.teardown()


@root
@pytest.mark.parametrize("mode", ["ebpf", "ebpf-xdp"])
def test_teardown_leaves_nothing(lab, mode):
    d = MODES[mode](lab)
    d.setup(CAT)
    pin = d.describe()["pin_dir"]
    ids = d.program_ids()
    assert os.path.isdir(pin) and len(ids) == (2 if mode == "ebpf" else 3)
    d.teardown()
    assert not os.path.exists(pin)
    for ns, ifname in ((lab.node, "n0"), (lab.node, "n1"), (lab.client, "c0"), (lab.backend, "b0")):
        assert "clsact" not in lab.run(ns, ["tc", "qdisc", "show", "dev", ifname]).stdout
        assert "xdp" not in lab.run(ns, ["ip", "link", "show", "dev", ifname]).stdout
        if shutil.which("ethtool"):
            assert "tx-checksumming: on" in lab.run(ns, ["ethtool", "-k", ifname]).stdout
    time.sleep(0.1)  # programs are freed after an RCU grace period
    listed = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True).stdout
    for pid in ids:
        assert f'"id":{pid},' not in listed


@root
def test_lab_close_removes_bpffs():
    _skip_unless_ebpf()
    with Lab(endpoint_cidr=CAT.endpoint_cidr) as lab:
        d = ebpf.Ebpf(lab)
        d.setup(ServiceCatalog(services=2, endpoints=2))
        root_dir = os.path.dirname(d.describe()["pin_dir"])
        assert os.path.ismount(root_dir) and root_dir in lab.state.mounts
        # no teardown: the lab's own undo steps must remove it
    assert not os.path.exists(root_dir)
    assert not any(root_dir in line for line in open("/proc/self/mounts"))


@root
def test_remove_path_unmounts_a_bpffs(tmp_path):
    """What `labkit clean` does with a killed run's bpffs instance."""
    _skip_unless_ebpf()

    path = str(tmp_path / "labkit-zzzzzz-bpffs")
    os.mkdir(path)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mount(b"bpf", path.encode(), b"bpf", 0, None) == 0, os.strerror(ctypes.get_errno())
    fd = bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, 8, 1, "lb_test")
    try:
        bpf.obj_pin(fd, f"{path}/lb_test")
    finally:
        os.close(fd)
    remove_path(path)
    assert not os.path.ismount(path) and not os.path.exists(path)

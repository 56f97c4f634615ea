"""kube-proxy IPVS mode: the pure renderer, and the datapath on a real kernel.

The real-kernel test programs IPVS in a lab's node namespace and makes real
TCP connections through it.  This host's kernel has no IP_VS, so
``test_ipvs_in_vm`` boots the pinned VM kernel (labkit.guests.vm) and runs
``test_ipvs_datapath_real_kernel`` inside it; on a host with IPVS the latter
runs directly.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter

import pandas as pd
import pytest

from labkit.core.catalog import ServiceCatalog
from labkit.datapaths import MODES
from labkit.datapaths.ipvs import (
    CHUNK_LINES,
    IPTABLES_BACKEND,
    SECTION_ORDER,
    Ipvs,
    chunks,
    host_ipvs_missing,
    render_addresses,
    render_ipset,
    render_iptables_ipvs,
    render_ipvs,
    render_ipvsadm,
    split_sections,
)
from labkit.guests import uml, vm
from labkit.host import netns
from labkit.lab.lab import Lab

CAT = ServiceCatalog(services=2, endpoints=2)


# ---- renderer (pure, no root) ---------------------------------------------------
def test_ipvsadm_text_exact():
    assert render_ipvsadm(CAT) == (
        "-A -t 10.96.0.1:80 -s rr\n"
        "-a -t 10.96.0.1:80 -r 10.128.0.1:80 -m -w 1\n"
        "-a -t 10.96.0.1:80 -r 10.128.0.2:80 -m -w 1\n"
        "-A -t 10.96.0.2:80 -s rr\n"
        "-a -t 10.96.0.2:80 -r 10.128.0.3:80 -m -w 1\n"
        "-a -t 10.96.0.2:80 -r 10.128.0.4:80 -m -w 1\n")


def test_ipvsadm_one_virtual_service_per_vip_port():
    cat = ServiceCatalog(services=1, endpoints=3, ports=(80, 443))
    assert render_ipvsadm(cat) == (
        "-A -t 10.96.0.1:80 -s rr\n"
        "-a -t 10.96.0.1:80 -r 10.128.0.1:80 -m -w 1\n"
        "-a -t 10.96.0.1:80 -r 10.128.0.2:80 -m -w 1\n"
        "-a -t 10.96.0.1:80 -r 10.128.0.3:80 -m -w 1\n"
        "-A -t 10.96.0.1:443 -s rr\n"
        "-a -t 10.96.0.1:443 -r 10.128.0.1:443 -m -w 1\n"
        "-a -t 10.96.0.1:443 -r 10.128.0.2:443 -m -w 1\n"
        "-a -t 10.96.0.1:443 -r 10.128.0.3:443 -m -w 1\n")


def test_addresses_text_exact():
    assert render_addresses(CAT) == ("link add kube-ipvs0 type dummy\n"
                                     "addr add 10.96.0.1/32 dev kube-ipvs0\n"
                                     "addr add 10.96.0.2/32 dev kube-ipvs0\n")


def test_ipset_text_exact():
    cat = ServiceCatalog(services=2, endpoints=2, ports=(80, 8080))
    assert render_ipset(cat) == (
        "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n"
        "create KUBE-IPVS-IPS hash:ip family inet hashsize 1024 maxelem 65536\n"
        "create KUBE-LOAD-BALANCER hash:ip,port family inet hashsize 1024 maxelem 65536\n"
        "create KUBE-EXTERNAL-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n"
        "create KUBE-EXTERNAL-IP-LOCAL hash:ip,port family inet hashsize 1024 maxelem 65536\n"
        "create KUBE-HEALTH-CHECK-NODE-PORT bitmap:port range 0-65535\n"
        "add KUBE-CLUSTER-IP 10.96.0.1,tcp:80\n"
        "add KUBE-CLUSTER-IP 10.96.0.1,tcp:8080\n"
        "add KUBE-IPVS-IPS 10.96.0.1\n"
        "add KUBE-CLUSTER-IP 10.96.0.2,tcp:80\n"
        "add KUBE-CLUSTER-IP 10.96.0.2,tcp:8080\n"
        "add KUBE-IPVS-IPS 10.96.0.2\n")


def test_ipset_maxelem_grows_past_kube_proxy_default():
    head = render_ipset(ServiceCatalog(services=70_000, endpoints=1)).splitlines()[:2]
    assert head == ["create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 131072",
                    "create KUBE-IPVS-IPS hash:ip family inet hashsize 1024 maxelem 131072"]


def test_iptables_text_exact():
    assert render_iptables_ipvs(CAT) == "\n".join([
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-POSTROUTING - [0:0]",
        ":KUBE-NODE-PORT - [0:0]",
        ":KUBE-LOAD-BALANCER - [0:0]",
        ":KUBE-MARK-MASQ - [0:0]",
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN",
        '-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade '
        'purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.128.0.0/9 -j KUBE-MARK-MASQ',
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
        "-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ",
        "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "COMMIT",
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":KUBE-FORWARD - [0:0]",
        ":KUBE-NODE-PORT - [0:0]",
        ":KUBE-PROXY-FIREWALL - [0:0]",
        ":KUBE-SOURCE-RANGES-FIREWALL - [0:0]",
        ":KUBE-IPVS-FILTER - [0:0]",
        ":KUBE-IPVS-OUT-FILTER - [0:0]",
        '-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT',
        '-A INPUT -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL',
        '-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER',
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL',
        '-A OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER',
        "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
        "-m mark --mark 0x4000/0x4000 -j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        '-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" '
        "-m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT",
        "COMMIT",
        ""])


def test_zero_services_has_no_cluster_ip_rules_or_addresses():
    cat = ServiceCatalog(services=0, endpoints=1)
    assert render_ipvsadm(cat) == ""
    assert render_addresses(cat) == "link add kube-ipvs0 type dummy\n"
    nat = render_iptables_ipvs(cat).split("*filter")[0]
    assert "KUBE-CLUSTER-IP" not in nat


def test_sections_round_trip_in_load_order():
    text = render_ipvs(CAT)
    sections = split_sections(text)
    assert list(sections) == list(SECTION_ORDER)
    assert sections["sysctl"] == ("net.ipv4.vs.conntrack = 1\nnet.ipv4.vs.expire_nodest_conn = 1\n"
                                  "net.ipv4.vs.expire_quiescent_template = 1\nnet.ipv4.ip_forward = 1\n")
    assert sections["ipvsadm -R"] == render_ipvsadm(CAT)
    assert sections["ipset restore"] == render_ipset(CAT)
    assert sections["ip -batch"] == render_addresses(CAT)
    assert sections[f"iptables-{IPTABLES_BACKEND}-restore"] == render_iptables_ipvs(CAT)
    assert Ipvs.render(CAT) == text


def test_registered_as_a_mode():
    assert MODES["ipvs"] is Ipvs


def test_unavailable_names_what_is_missing():
    why = Ipvs.unavailable()
    missing = host_ipvs_missing()
    if missing is None:
        assert why is None or "not found" in why
    else:
        assert why is not None and why.startswith(("host kernel has no IP_VS", "ipvsadm not found",
                                                   "ipset not found", "ip not found"))


# ---- real kernel ----------------------------------------------------------------
IPVS_CONN = re.compile(r"^TCP\s+\S+\s+\S+\s+(\S+):(\d+)\s+(\S+):(\d+)\s+(\S+):(\d+)\s*$")


def _connect(lab, addr: str, port: int) -> tuple[int, bytes]:
    """A real TCP connection from the client namespace; returns (source port, echo)."""
    with netns.entered(lab.client):
        s = socket.create_connection((addr, port), timeout=10)
    with s:
        s.sendall(b"labkit")
        got = b""
        while len(got) < 6:
            chunk = s.recv(64)
            if not chunk:
                break
            got += chunk
        return s.getsockname()[1], got


@pytest.mark.root
def test_ipvs_datapath_real_kernel():
    why = Ipvs.unavailable()
    if why:
        pytest.skip(f"{why}; test_ipvs_in_uml runs this test in user-mode Linux")
    cat = ServiceCatalog(services=3, endpoints=3)
    per_service = 6
    with Lab(endpoint_cidr=cat.endpoint_cidr, ports=cat.ports) as lab:
        dp = Ipvs(lab)
        lab.defer("ipvs teardown", dp.teardown)
        lab.run(lab.node, ["modprobe", "ip_vs"], check=False)  # its sysctls appear with it
        before = lab.run(lab.node, ["sysctl", "-n", "net.ipv4.vs.conntrack"]).stdout.strip()
        dp.setup(cat)
        # the kernel holds what was rendered
        saved = lab.run(lab.node, ["ipvsadm", "-Sn"]).stdout
        assert sorted(saved.split("\n")) == sorted(render_ipvsadm(cat).split("\n"))
        assert lab.run(lab.node, ["sysctl", "-n", "net.ipv4.vs.conntrack"]).stdout.strip() == "1"
        local = lab.run(lab.node, ["ip", "route", "show", "table", "local", "dev", "kube-ipvs0"]).stdout
        assert all(f"local {cat.vip(i)} " in local for i in range(cat.services))

        # real connections to every VIP
        # (client port, VIP): connections; the client may reuse a port for another VIP
        # (a CI run saw port reuse turn a right DNAT into a failure when keyed by port alone)
        sent: Counter = Counter()
        vip_index = {cat.vip(i): i for i in range(cat.services)}
        for _ in range(per_service):
            for i in range(cat.services):
                sport, echo = _connect(lab, cat.vip(i), 80)
                assert echo == b"labkit", f"no echo through {cat.vip(i)}"
                sent[(sport, cat.vip(i))] += 1
        conns = lab.run(lab.node, ["ipvsadm", "-Lnc"]).stdout
        hits: dict[int, Counter] = {i: Counter() for i in range(cat.services)}
        seen = 0
        for line in conns.splitlines():
            m = IPVS_CONN.match(line)
            if not m or m.group(1) != lab.topo.client_ip or (int(m.group(2)), m.group(3)) not in sent:
                continue
            i = vip_index[m.group(3)]
            assert m.group(4) == "80"
            owner = cat.service_of_endpoint(m.group(5))
            assert owner is not None and owner[0] == i, f"{cat.vip(i)} DNATed to {m.group(5)}"
            hits[i][m.group(5)] += 1
            seen += 1
        assert seen == sum(sent.values()), f"IPVS saw {seen} of {sum(sent.values())} connections:\n{conns}"
        for i, c in hits.items():  # rr: every endpoint, evenly
            assert set(c) == set(cat.endpoints_of(i)) and max(c.values()) - min(c.values()) <= 1, c

        # masquerade: the backend saw the node's address, not the client's (the helper
        # rules do it; a kernel without NAT tables runs IPVS without them: DNAT only)
        if dp.backend != "none":
            ct = lab.run(lab.node, ["conntrack", "-L", "-p", "tcp", "--orig-dst", cat.vip(0)],
                         check=False).stdout
            assert f"dst={lab.topo.node_backend_ip}" in ct, ct

        # a port the VIP does not serve is rejected (KUBE-IPVS-FILTER)
        with pytest.raises(ConnectionRefusedError):
            _connect(lab, cat.vip(0), 81)
        # traffic to no service passes the node untouched
        _, echo = _connect(lab, cat.none_address, 80)
        assert echo == b"labkit"

        dp.teardown()
        assert lab.run(lab.node, ["ipvsadm", "-Sn"]).stdout.strip() == ""
        assert lab.run(lab.node, ["ipset", "list", "-n"]).stdout.strip() == ""
        assert lab.run(lab.node, ["ip", "link", "show", "kube-ipvs0"], check=False).returncode != 0
        assert lab.run(lab.node, ["sysctl", "-n", "net.ipv4.vs.conntrack"]).stdout.strip() == before


@pytest.mark.vm
@pytest.mark.root
@pytest.mark.slow
def test_ipvs_in_vm():
    """Boots the pinned VM kernel and runs the real-kernel test inside it."""
    if host_ipvs_missing() is None:
        pytest.skip("the host kernel has IPVS: test_ipvs_datapath_real_kernel runs it directly")
    ok, why = vm.vm_available()
    if not ok:
        pytest.skip(f"VM kernel cannot boot here: {why}")
    t0 = time.monotonic()
    try:
        res = vm.run_in_vm([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                            f"{__file__}::test_ipvs_datapath_real_kernel"],
                           timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)), check=False)
    except vm.VMBootError as exc:
        pytest.skip(f"VM kernel did not boot: {exc}")
    print(f"VM ({res.facts['accel']}, kernel {res.facts['kernel_release']}): boot "
          f"{res.facts['boot_s']:.1f} s, test {res.facts['command_s']:.1f} s, "
          f"total {time.monotonic() - t0:.1f} s")
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout + res.stderr


# ---- in user-mode Linux: the IPVS tests at native speed, on every CI run ------------------

def _in_uml(*tests: str) -> None:
    """Run ``tests`` of this repository with pytest inside user-mode Linux."""
    if host_ipvs_missing() is None:
        pytest.skip("the host kernel has IPVS: the tests run on it directly")
    ok, why = uml.uml_available()
    if not ok:
        pytest.skip(f"user-mode Linux cannot run here: {why}")
    root = os.path.dirname(os.path.dirname(__file__))
    t0 = time.monotonic()
    res = uml.run_in_uml([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *tests],
                         timeout=900, cwd=root, check=False)
    print(f"user-mode Linux {res.facts['kernel_release']}: boot {res.facts['boot_s']:.1f} s, "
          f"tests {res.facts['command_s']:.1f} s, total {time.monotonic() - t0:.1f} s")
    assert res.returncode == 0 and f"{len(tests)} passed" in res.stdout, res.stdout + res.stderr
    assert "skipped" not in res.stdout, res.stdout


@pytest.mark.root
@pytest.mark.slow
def test_ipvs_in_uml():
    """Programming, DNAT to a right endpoint, even spread and teardown of the IPVS
    datapath, and one service added and removed: in user-mode Linux, none skipped."""
    _in_uml(f"{__file__}::test_ipvs_datapath_real_kernel",
            "tests/test_control.py::test_add_and_remove_one_service_real_kernel[ipvs]")


@pytest.mark.root
@pytest.mark.slow
def test_ipvs_teardown_under_faults_in_uml():
    """A sweep of IPVS interrupted by an exception, SIGINT, SIGTERM and SIGKILL
    (then `labkit clean`) leaves nothing: tests/test_reliability.py's fault
    tests for ipvs, in user-mode Linux, none skipped."""
    _in_uml(*(f"tests/test_reliability.py::test_teardown_under_fault[ipvs-{f}]"
              for f in ("exception", "SIGINT", "SIGTERM", "SIGKILL")))


@pytest.mark.parametrize("scheduler", ["sh", "mh", "wrr", "lc"])
def test_scheduler_is_rendered_with_port_hashing(scheduler):
    cat = ServiceCatalog(2, 3)
    text = render_ipvsadm(cat, scheduler)
    flags = {"sh": " -b sh-port", "mh": " -b mh-port"}.get(scheduler, "")
    assert text.splitlines()[0] == f"-A -t {cat.vip(0)}:80 -s {scheduler}{flags}"
    assert render_ipvs(cat, "none", scheduler).count("#: iptables") == 0
    assert "#: iptables-legacy-restore" in render_ipvs(cat, "legacy", scheduler)


@pytest.mark.root
@pytest.mark.slow
def test_a_sweep_over_the_host_and_user_mode_linux(tmp_path):
    """`--kernel host+uml`: each mode where it runs, the calibrator (iptables-legacy,
    native in both) in both, eBPF on the host only; one run directory, the rows of
    each kernel labelled with its release, crossovers only inside one kernel."""
    ok, why = uml.uml_available()
    if not ok:
        pytest.skip(f"user-mode Linux cannot run here: {why}")
    if Ipvs.unavailable() is None:
        pytest.skip("the host kernel has IPVS: no other kernel is needed")
    out = tmp_path / "two"
    cp = subprocess.run([sys.executable, "-m", "labkit", "sweep", "--kernel", "host+uml", "--modes",
                         "ebpf,ipvs,iptables-legacy", "--services", "1,40", "--targets", "last", "--probes", "40",
                         "--warmup", "5", "--rounds", "1", "--out", str(out), "--quiet"], capture_output=True,
                        text=True, timeout=900)
    assert cp.returncode == 0, cp.stderr
    pts = pd.read_parquet(out / "points.parquet")
    kernels = dict(pts.groupby("mode")["kernel_release"].unique().map(sorted))
    assert kernels["ebpf"] == [os.uname().release] and kernels["ipvs"] == [uml.guest_kernel_release()]
    assert len(kernels["iptables-legacy"]) == 2
    assert len(pts) == 8 and pts["valid"].all(), pts["reason"].tolist()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["params"]["kernels_by_mode"] == {
        "ebpf": ["host"], "ipvs": ["uml"], "iptables-legacy": ["host", "uml"]}
    assert len(meta["guests"]) == 1 and meta["guests"][0]["backend"] == "uml"
    assert meta["guests"][0]["config_sha256"]  # labkit's own build, its config recorded
    assert meta["guests"][0]["bpf_jit"] == "none"  # arch um has no BPF JIT: eBPF is interpreted there


def test_line_by_line_loaders_get_whole_lines_in_chunks():
    """100,000 VIPs go to `ip -batch` in pieces of at most CHUNK_LINES whole
    lines (a guest process of user-mode Linux dies at the host's
    vm.max_map_count): joined, the pieces are the input, in order."""
    body = render_addresses(ServiceCatalog(services=25_001, endpoints=1))
    parts = chunks(body)
    assert "".join(parts) == body and len(parts) == -(-len(body.splitlines()) // CHUNK_LINES)
    assert all(p.endswith("\n") and len(p.splitlines()) <= CHUNK_LINES for p in parts)
    assert chunks("") == [""] and chunks("a\nb\n", 1) == ["a\n", "b\n"]

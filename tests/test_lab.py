"""The lab itself: built in namespaces, torn down completely, also after an exception."""
import os

import pytest

from labkit.core.catalog import DEFAULT_ENDPOINT_CIDR
from labkit.core.errors import LabkitError
from labkit.host import netns
from labkit.host.state import STATE_DIR
from labkit.lab.lab import Lab

pytestmark = pytest.mark.root


def _gone(lab):
    assert not set(lab.topo.namespaces) & set(netns.list_namespaces())
    assert not os.path.exists(os.path.join(STATE_DIR, f"{lab.run_id}.json"))
    assert lab.tmpdir and not os.path.exists(lab.tmpdir)
    assert lab.server.poll() is not None, "the backend server must be stopped"


def test_lab_builds_and_tears_down():
    with Lab(endpoint_cidr=DEFAULT_ENDPOINT_CIDR) as lab:
        assert set(lab.topo.namespaces) <= set(netns.list_namespaces())
        routes = lab.run(lab.backend, ["ip", "route", "show", "table", "local"]).stdout
        assert f"local {DEFAULT_ENDPOINT_CIDR} dev lo" in routes
        assert lab.run(lab.node, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
        # a real TCP exchange client -> an endpoint address, answered by the backend
        out = lab.run(lab.client, ["bash", "-c", "exec 3<>/dev/tcp/10.128.0.9/80; echo ping >&3; "
                                                 "head -c5 <&3"]).stdout
        assert out == "ping\n"
    _gone(lab)


def test_teardown_runs_after_an_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(endpoint_cidr=DEFAULT_ENDPOINT_CIDR) as lab:
            raise RuntimeError("boom")
    _gone(lab)


def test_reset_node_gives_a_fresh_namespace():
    with Lab(endpoint_cidr=DEFAULT_ENDPOINT_CIDR) as lab:
        lab.run(lab.node, ["iptables-legacy", "-t", "nat", "-N", "MARKER"])
        lab.reset_node()
        save = lab.run(lab.node, ["iptables-legacy-save", "-t", "nat"], check=False).stdout
        assert "MARKER" not in save
        out = lab.run(lab.client, ["bash", "-c", "exec 3<>/dev/tcp/10.128.0.9/80; echo ok >&3; "
                                                 "head -c3 <&3"]).stdout
        assert out == "ok\n"
    _gone(lab)


def test_commands_fail_loudly():
    with Lab(endpoint_cidr=DEFAULT_ENDPOINT_CIDR, server=False) as lab:
        with pytest.raises(LabkitError, match="failed"):
            lab.run(lab.node, ["false"])


def test_probes_are_refused_outside_the_lab():
    with pytest.raises(LabkitError, match="not a labkit namespace"):
        netns.require_inside("default")
    with Lab(endpoint_cidr=DEFAULT_ENDPOINT_CIDR, server=False) as lab:
        # the calling thread is in the host's namespace, not the client's
        with pytest.raises(LabkitError, match="outside the lab namespace"):
            netns.require_inside(lab.client)
        with netns.entered(lab.client):
            netns.require_inside(lab.client)

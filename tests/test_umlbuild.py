"""labkit's own user-mode Linux kernel: the config fragment, the build's cache key
and its check of the resulting .config (pure), and the built kernel itself
(root: built by `make setup`, every fragment option in its config, every mode
available in it)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from labkit.core.errors import LabkitError, UsageError
from labkit.guests import uml, umlbuild


def test_the_fragment_sets_options_to_y_each_with_the_reason():
    text = umlbuild.FRAGMENT.read_text()
    opts = umlbuild.fragment_options(text)
    assert len(opts) > 60 and len(set(opts)) == len(opts)
    # the options the modes need beside IPVS, which Debian's prebuilt UML lacks
    for o in ("CONFIG_NETFILTER_XTABLES_LEGACY", "CONFIG_NF_TABLES_IPV4", "CONFIG_NFT_FIB_IPV4", "CONFIG_IP_VS",
              "CONFIG_IP_VS_MH", "CONFIG_IP_SET_HASH_IPPORT", "CONFIG_NET_CLS_BPF", "CONFIG_IKCONFIG_PROC"):
        assert o in opts
    for line in text.splitlines():
        if line.startswith("CONFIG_"):
            assert "#" in line and line.split("#", 1)[1].strip(), f"no reason given: {line}"


@pytest.mark.parametrize("bad", ["CONFIG_X=m", "IP_VS=y", "CONFIG_X=y junk", "CONFIG_X=no"])
def test_a_fragment_line_that_is_not_an_option_set_to_y_or_n_is_refused(bad):
    with pytest.raises(LabkitError, match=":2: expected `CONFIG_NAME=y` or `CONFIG_NAME=n`"):
        umlbuild.fragment_options(f"# comment\n{bad}\n")


def test_an_option_turned_off_is_applied_with_d_and_checked():
    text = "CONFIG_A=y\nCONFIG_B=n  # off\n"
    assert umlbuild.fragment_options(text) == ["CONFIG_A"] and umlbuild.fragment_unset(text) == ["CONFIG_B"]
    config = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=m\n# CONFIG_D is not set\n"
    assert umlbuild.unwanted_options(config, ["CONFIG_B", "CONFIG_C", "CONFIG_D"]) == ["CONFIG_B", "CONFIG_C"]
    # the debug-info choice: defconfig's DWARF member off, no debug info
    unset = umlbuild.fragment_unset(umlbuild.FRAGMENT.read_text())
    assert "CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT" in unset


def test_an_option_set_twice_is_refused():
    with pytest.raises(LabkitError, match="set twice: CONFIG_A"):
        umlbuild.fragment_options("CONFIG_A=y\nCONFIG_B=y # b\nCONFIG_A=y\n")
    with pytest.raises(LabkitError, match="set twice: CONFIG_A"):
        umlbuild.fragment_options("CONFIG_A=y\nCONFIG_A=n\n")


def test_missing_options_names_what_olddefconfig_dropped():
    config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\nCONFIG_AB=y\n"
    assert umlbuild.missing_options(config, ["CONFIG_A", "CONFIG_B", "CONFIG_C"]) == ["CONFIG_B", "CONFIG_C"]


def test_the_build_key_changes_with_the_source_the_options_and_the_patches():
    k = umlbuild.build_key("a" * 64, "CONFIG_A=y\n")
    assert k == umlbuild.build_key("a" * 64, "CONFIG_A=y\n") and len(k) == 16
    assert k != umlbuild.build_key("b" * 64, "CONFIG_A=y\n")
    assert k != umlbuild.build_key("a" * 64, "CONFIG_A=y\nCONFIG_B=y\n")
    assert k != umlbuild.build_key("a" * 64, "CONFIG_A=y\n", [b"--- a\n+++ b\n"])
    assert k != umlbuild.build_key("a" * 64, "CONFIG_A=y\nCONFIG_B=n\n")
    # a comment or the order of the options does not rebuild
    assert umlbuild.build_key("a" * 64, "CONFIG_B=y\nCONFIG_A=y  # why\n") == \
        umlbuild.build_key("a" * 64, "# header\nCONFIG_A=y\nCONFIG_B=y\n")


def test_the_pin_names_debian_kernel_source():
    p = uml.pin()
    assert p.pin.package.startswith("linux-source-") and len(p.pin.sha256) == 64
    assert p.tarball == f"usr/src/{p.pin.package}.tar.xz"
    assert p.pin.package.removeprefix("linux-source-") == ".".join(p.pin.release.split(".")[:2])


@pytest.mark.parametrize("name", uml.pinned_series())
def test_every_pinned_series_names_debian_kernel_source(name):
    p = uml.pin(name)
    assert p.pin.package == f"linux-source-{name}" and len(p.pin.sha256) == 64
    assert p.tarball == f"usr/src/{p.pin.package}.tar.xz" and p.pin.release.startswith(name + ".")
    assert all(o.startswith("CONFIG_") for o in p.absent)
    # an option a series lacks is one the fragment asks for (else the entry is stale)
    assert set(p.absent) <= set(umlbuild.fragment_options(umlbuild.FRAGMENT.read_text()))


def test_the_series_comes_from_the_environment_and_an_unpinned_one_is_refused(monkeypatch):
    assert uml.pinned_series()[0] == uml.DEFAULT_SERIES and "6.12" in uml.pinned_series()
    monkeypatch.delenv(uml.SERIES_ENV, raising=False)
    assert uml.pin().pin.package == f"linux-source-{uml.DEFAULT_SERIES}"
    monkeypatch.setenv(uml.SERIES_ENV, "6.12")
    assert uml.guest_kernel_release().startswith("6.12.")
    assert uml.root_dir(uml.pin()) != uml.root_dir(uml.pin(uml.DEFAULT_SERIES))   # one build per series
    monkeypatch.setenv(uml.SERIES_ENV, "5.4")
    with pytest.raises(UsageError, match="no user-mode Linux 5.4 is pinned"):
        uml.pin()


def test_a_series_that_dies_with_amx_is_refused_on_an_amx_host_only(monkeypatch):
    flags = "processor\t: 0\nflags\t\t: fpu sse avx2 {}\n"
    assert uml.host_has_amx(flags.format("amx_bf16 amx_tile amx_int8"))
    assert not uml.host_has_amx(flags.format("avx512f"))
    assert uml.pin("6.12").boots_with_amx is False and uml.pin(uml.DEFAULT_SERIES).boots_with_amx is True
    monkeypatch.setenv(uml.SERIES_ENV, "6.12")
    monkeypatch.setattr(uml, "host_has_amx", lambda cpuinfo=None: True)
    monkeypatch.setattr(uml.os, "geteuid", lambda: 0)
    monkeypatch.setattr(uml, "in_guest", lambda: False)
    ok, why = uml.uml_available()
    assert not ok and "dies at boot on a CPU with AMX" in why and uml.SERIES_ENV in why


def test_kconfig_defines_finds_config_and_menuconfig_lines(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "Kconfig").write_text("config IP_NF_IPTABLES\n\ttristate \"x\"\n"
                                              "menuconfig NETFILTER\n\tbool \"y\"\n")
    assert umlbuild.kconfig_defines(tmp_path, "CONFIG_IP_NF_IPTABLES")
    assert umlbuild.kconfig_defines(tmp_path, "CONFIG_NETFILTER")
    assert not umlbuild.kconfig_defines(tmp_path, "CONFIG_IP_NF_IPTABLES_LEGACY")   # a prefix is not a match


@pytest.mark.root
def test_the_built_kernel_has_every_fragment_option_and_runs_every_mode():
    """`make setup` built it: its config holds every option of the fragment, its
    facts name the source and the config's sha256, and inside it `labkit doctor`
    finds every mode available."""
    ok, why = uml.uml_available()
    if not ok:
        pytest.skip(f"user-mode Linux cannot run here: {why}")
    root = uml.fetch()
    facts = umlbuild.facts(root)
    assert facts["source_sha256"] == uml.pin().pin.sha256 and facts["kernel_release"] == uml.guest_kernel_release()
    config = (root / "config").read_text()
    assert umlbuild.missing_options(config, umlbuild.fragment_options(umlbuild.FRAGMENT.read_text())) == []
    assert umlbuild.unwanted_options(config, umlbuild.fragment_unset(umlbuild.FRAGMENT.read_text())) == []
    res = uml.run_in_uml([sys.executable, "-m", "labkit", "doctor", "--json"], timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    assert res.facts["config_sha256"] == facts["config_sha256"] and res.facts["kernel_release"] == facts[
        "kernel_release"]
    rows = {r["mode"]: r for r in json.loads(res.stdout)}
    unavailable = {m: r["reason"] for m, r in rows.items() if not r["host"]}   # "host": the guest's own kernel
    assert set(rows) >= {"iptables-legacy", "iptables-nft", "nftables", "ipvs", "ebpf"} and not unavailable, rows
    cp = subprocess.run([sys.executable, "-m", "labkit.guests.uml", "info"], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0 and json.loads(cp.stdout)["built"] is True

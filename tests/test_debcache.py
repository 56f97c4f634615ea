"""Debian packages unpacked into labkit's cache rather than installed: tools and pinned
kernel packages (no root, no network: a fake apt-get hands out a .deb built here)."""
import os
import pathlib
import stat
import subprocess

import pytest

from labkit.core.errors import LabkitError, Unavailable
from labkit.guests import vm
from labkit.host import debcache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))   # nothing on PATH
    return tmp_path


def test_cache_base_follows_LABKIT_CACHE(cache):
    assert debcache.cache_base() == cache
    assert debcache.tool_dir("nginx") == cache / "tools" / "nginx"


def test_missing_tool_names_the_cache_and_the_reason(cache):
    with pytest.raises(Unavailable) as exc:
        debcache.find_tool("nginx")
    msg = str(exc.value)
    assert str(cache / "tools" / "nginx") in msg
    assert "make setup" in msg and "web server on the host" in msg


def test_cached_binary_is_found_only_when_executable(cache):
    exe = cache / "tools" / "nginx" / "usr" / "sbin" / "nginx"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    assert debcache.cached("nginx") is None            # not executable yet
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    assert debcache.find_tool("nginx") == str(exe)


def test_a_tool_on_PATH_wins_over_the_cache(cache):
    bindir = cache / "empty-bin"
    bindir.mkdir()
    onpath = bindir / "nginx"
    onpath.write_text("#!/bin/sh\n")
    onpath.chmod(0o755)
    assert debcache.find_tool("nginx") == str(onpath)


def test_cli_refuses_unknown_tools(capsys):
    assert debcache.main(["fetch", "nosuchtool"]) == 2
    assert "usage" in capsys.readouterr().err


def test_vm_kernel_shares_the_cache(cache):
    assert vm.cache_dir() == cache / "vm"


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """An ``apt-get download`` that hands out one .deb built here (no network)."""
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text("Package: nginx\nVersion: 1.0\nArchitecture: amd64\n"
                                             "Maintainer: labkit\nDescription: test\n")
    exe = tree / "usr" / "sbin" / "nginx"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    deb = tmp_path / "nginx_1.0_amd64.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)], check=True,
                   capture_output=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "apt-get").write_text(f"#!/bin/sh\ncp {deb} .\n")
    (bindir / "apt-get").chmod(0o755)
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return deb


def _no_temporaries(d):
    return [p.name for p in d.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]


def test_a_tool_is_unpacked_into_the_cache_whole(fake_apt):
    exe = debcache.fetch_tool("nginx")
    root = debcache.tool_dir("nginx")
    assert exe == str(root / "usr" / "sbin" / "nginx") and debcache.cached("nginx") == exe
    assert (root / ".package").read_text() == fake_apt.name + "\n"
    assert not _no_temporaries(root.parent)


def test_a_pinned_package_is_checked_against_its_sha256(fake_apt):
    good = debcache.KernelPin("nginx", "1.0", debcache.sha256_file(fake_apt), "R")
    bad = debcache.KernelPin("nginx", "1.0", "0" * 64, "R")
    nginx = pathlib.Path("usr/sbin/nginx")

    def complete(r):
        return (r / nginx).is_file()
    with pytest.raises(LabkitError, match="does not match .* in test.lock"):
        debcache.fetch_pinned(bad, "k", "test.lock", complete)
    cache = debcache.kind_dir("k")
    assert not (cache / fake_apt.name).exists() and not _no_temporaries(cache)
    root = debcache.fetch_pinned(good, "k", "test.lock", complete)
    assert root == cache / "nginx_1.0" and debcache.ready(root, good, complete)
    assert (cache / fake_apt.name).read_bytes() == fake_apt.read_bytes()
    assert (cache / fake_apt.name).stat().st_mode & 0o777 == 0o644
    assert not _no_temporaries(cache)

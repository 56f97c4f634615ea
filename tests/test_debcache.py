"""Tools unpacked into labkit's cache rather than installed (pure: no root, no network)."""
import stat

import pytest

from labkit.core.errors import Unavailable
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

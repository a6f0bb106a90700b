"""vm/load/haproxy.py: the rendered config says what the keep-alive scenario relies on, and the real
``haproxy -c`` accepts it (and rejects a broken one, so the check can fail)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_portable_upgrade.load.haproxy import PROXY_PORT, HaproxyConfig, proxy_port_for

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed on the host")


def lines(config: str) -> list[str]:
    return [ln.strip() for ln in config.splitlines() if ln.strip() and not ln.startswith("#")]


def directives(config: str, keyword: str) -> list[str]:
    return [ln for ln in lines(config) if ln.split()[0] == keyword]


def test_render_has_the_retry_and_reuse_settings() -> None:
    config = HaproxyConfig(8080).render()
    assert "retry-on all-retryable-errors" in lines(config)
    assert "http-reuse safe" in lines(config)
    assert directives(config, "retries") == ["retries 3"]
    assert "option http-server-close" not in config  # server connections stay alive too


def test_render_binds_loopback_only() -> None:
    config = HaproxyConfig(8080).render()
    assert directives(config, "bind") == [f"bind 127.0.0.1:{PROXY_PORT}"]
    assert PROXY_PORT == 8081
    assert "*:" not in config
    assert "0.0.0.0" not in config
    assert not re.search(r"bind\s+:", config)  # ":8081" alone means every address
    assert "::" not in config


def test_render_forwards_to_the_service() -> None:
    config = HaproxyConfig(8080).render()
    assert directives(config, "server") == ["server portable 127.0.0.1:8080"]
    assert directives(config, "default_backend") == ["default_backend service"]
    assert directives(config, "mode") == ["mode http"]


def test_proxy_port_steps_aside_for_a_subject_on_it() -> None:
    assert proxy_port_for(8080) == PROXY_PORT
    assert proxy_port_for(PROXY_PORT) != PROXY_PORT


def test_render_uses_its_fields() -> None:
    config = HaproxyConfig(listen_port=9001, server_port=9002, retries=5, timeout_connect_s=2,
                           timeout_server_s=40, timeout_client_s=50).render()
    assert directives(config, "bind") == ["bind 127.0.0.1:9001"]
    assert directives(config, "server") == ["server portable 127.0.0.1:9002"]
    assert directives(config, "retries") == ["retries 5"]
    timeouts = directives(config, "timeout")
    assert {"timeout connect 2s", "timeout server 40s", "timeout client 50s"} <= set(timeouts)


def test_render_ends_with_a_newline() -> None:
    # scenarios/run.py writes it with a heredoc whose EOF must start a line.
    assert HaproxyConfig(8080).render().endswith("\n")


def haproxy_check(path: Path) -> subprocess.CompletedProcess[str]:
    assert HAPROXY is not None
    return subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)


@needs_haproxy
def test_real_haproxy_accepts_the_config(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(HaproxyConfig(8080).render())
    result = haproxy_check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


@needs_haproxy
def test_real_haproxy_rejects_a_broken_config(tmp_path: Path) -> None:
    """The validation above can fail: an unknown retry-on keyword is a fatal error."""
    config = HaproxyConfig(8080).render()
    broken = config.replace("retry-on all-retryable-errors", "retry-on bogus-error")
    assert broken != config
    path = tmp_path / "haproxy.cfg"
    path.write_text(broken)
    result = haproxy_check(path)
    assert result.returncode != 0
    assert "bogus-error" in result.stdout + result.stderr


def test_haproxy_starts_in_the_attach_round_trip_checked_first() -> None:
    from pytest_portable_upgrade.scenarios.run import HAPROXY_UNIT, haproxy_steps

    write, serve = haproxy_steps(8080, 8081)
    (path, config), = write["files"].items()  # type: ignore[union-attr]
    assert "bind 127.0.0.1:8081" in config and "server portable 127.0.0.1:8080" in config
    assert serve["step"] == "serve" and serve["unit"] == HAPROXY_UNIT and serve["port"] == 8081
    assert serve["check"] == ["haproxy", "-c", "-q", "-f", path]
    assert serve["argv"] == ["haproxy", "-db", "-f", path]

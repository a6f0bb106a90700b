"""Security basics of the booted guest and of what the run opened on the host.

Runs on the session's VM in seconds: no scenario, no load.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

pytestmark = pytest.mark.vm

VAGRANT_INSECURE_KEY_COMMENT = "vagrant insecure public key"


def test_forwarded_ssh_port_listens_on_loopback_only(vm: Any) -> None:
    port = vm.target.port
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                               text=True, check=True).stdout.split("\n")
    addresses = [line.split()[3] for line in listening if line.strip()]
    assert addresses, f"nothing listens on the forwarded port {port}"
    assert all(a.startswith("127.0.0.1:") for a in addresses), addresses


def test_no_management_bridge_on_the_host() -> None:
    out = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True,
                         check=True).stdout
    assert "192.168.121." not in out, out


def test_password_login_is_off(vm: Any) -> None:
    config = vm.succeed("sshd -T 2>/dev/null").lower().splitlines()
    assert "passwordauthentication no" in config
    assert "kbdinteractiveauthentication no" in config
    assert "permitrootlogin no" in config


def test_login_key_is_this_hosts_own(vm: Any, box: Any) -> None:
    keys = vm.succeed("cat ~vagrant/.ssh/authorized_keys")
    assert VAGRANT_INSECURE_KEY_COMMENT not in keys
    if box.private_key is not None:  # built here: our per-host key, nothing else
        ours = box.private_key.with_suffix(".pub").read_text().split()[1]
        assert [line.split()[1] for line in keys.splitlines() if line.strip()] == [ours]

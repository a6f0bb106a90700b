"""Security basics of the booted guest and of what the run opened on the host.

Runs on the session's VM in seconds: no scenario, no load. The guest is inspected with
testinfra's ``host`` (vm/machine/guest_host.py).
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

pytestmark = pytest.mark.vm

VAGRANT_INSECURE_KEY_COMMENT = "vagrant insecure public key"


def test_forwarded_ssh_port_listens_on_loopback_only(machine: Any) -> None:
    port = machine.target.port
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                               text=True, check=True).stdout.split("\n")
    addresses = [line.split()[3] for line in listening if line.strip()]
    assert addresses, f"nothing listens on the forwarded port {port}"
    assert all(a.startswith("127.0.0.1:") for a in addresses), addresses


def test_no_management_bridge_on_the_host() -> None:
    out = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True,
                         check=True).stdout
    assert "192.168.121." not in out, out


def test_password_login_is_off(host: Any) -> None:
    config = host.check_output("sshd -T 2>/dev/null").lower().splitlines()
    assert "passwordauthentication no" in config
    assert "kbdinteractiveauthentication no" in config
    assert "permitrootlogin no" in config


def test_sshd_runs_and_listens_in_the_guest(host: Any) -> None:
    assert host.service("ssh.service").is_running or host.service("sshd.service").is_running
    assert host.socket("tcp://22").is_listening


def test_login_key_is_this_hosts_own(host: Any, box: Any) -> None:
    vagrant = host.user("vagrant")
    assert vagrant.exists
    keys_file = host.file(f"{vagrant.home}/.ssh/authorized_keys")
    assert keys_file.exists and keys_file.user == "vagrant"
    assert keys_file.mode & 0o022 == 0, oct(keys_file.mode)  # sshd refuses writable keys
    keys = keys_file.content_string
    assert VAGRANT_INSECURE_KEY_COMMENT not in keys
    if box.private_key is not None:  # built here: our per-host key, nothing else
        ours = box.private_key.with_suffix(".pub").read_text().split()[1]
        assert [line.split()[1] for line in keys.splitlines() if line.strip()] == [ours]

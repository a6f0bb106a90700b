"""vm/machine.py without SSH: ssh-config parsing, CommandResult, and the verbs over a fake
``execute``."""

from __future__ import annotations

from pathlib import Path

import pytest

from vm.errors import GuestError, HarnessError
from vm.machine import CommandResult, Machine, SshTarget, parse_ssh_config

SSH_CONFIG = """\
Host default
  HostName 127.0.0.1
  User vagrant
  Port 40123
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /var/lib/x/keys/id_ed25519
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

"""


def test_parse_ssh_config() -> None:
    assert parse_ssh_config(SSH_CONFIG) == SshTarget(
        host="127.0.0.1", port=40123, user="vagrant",
        identity_file=Path("/var/lib/x/keys/id_ed25519"))


def test_parse_ssh_config_quoted_identity_with_spaces() -> None:
    text = SSH_CONFIG.replace("IdentityFile /var/lib/x/keys/id_ed25519",
                              'IdentityFile "/home/a b/.vagrant.d/insecure_private_key"')
    target = parse_ssh_config(text)
    assert target.identity_file == Path("/home/a b/.vagrant.d/insecure_private_key")


def test_parse_ssh_config_first_value_wins() -> None:
    # vagrant lists one IdentityFile per key it may use; the first is the one it configured.
    text = SSH_CONFIG.replace("  IdentitiesOnly yes\n",
                              "  IdentityFile /home/u/.vagrant.d/insecure_private_key\n"
                              "  IdentitiesOnly yes\n")
    assert parse_ssh_config(text).identity_file == Path("/var/lib/x/keys/id_ed25519")


@pytest.mark.parametrize(("drop", "named"), [
    (("Port",), "port"),
    (("IdentityFile",), "identityfile"),
    (("HostName", "User"), "hostname, user"),
])
def test_parse_ssh_config_missing_fields(drop: tuple[str, ...], named: str) -> None:
    text = "\n".join(ln for ln in SSH_CONFIG.splitlines() if ln.split()[:1] != [] and
                     ln.split()[0] not in drop)
    with pytest.raises(HarnessError, match=f"lacks {named}"):
        parse_ssh_config(text)


def test_parse_ssh_config_of_an_error_message() -> None:
    with pytest.raises(HarnessError, match="lacks hostname, port, user, identityfile"):
        parse_ssh_config("The provider for this Vagrant-managed machine is reporting that it "
                         "is not yet ready for SSH.")


def test_command_result() -> None:
    ok = CommandResult("true", 0, "", "", 0.01)
    bad = CommandResult("systemctl start x", 5, "out text\n", "Job failed\n", 0.2)
    assert ok.succeeded and not bad.succeeded
    text = bad.describe()
    assert text == "`systemctl start x` exited 5\n--- stdout\nout text\n--- stderr\nJob failed"


def test_describe_keeps_the_end_of_long_output() -> None:
    result = CommandResult("journalctl", 1, "x" * 5000 + "TAIL", "e" * 3000 + "ETAIL", 1.0)
    text = result.describe()
    assert "TAIL" in text and "ETAIL" in text
    assert len(text) < 4200
    assert "x" * 2001 not in text


class FakeGuest:
    """Answers ``execute`` from a script: command substring -> CommandResult pieces."""

    def __init__(self, answers: dict[str, tuple[int, str]]) -> None:
        self.answers = answers
        self.commands: list[str] = []

    def __call__(self, command: str, timeout: float = 120.0) -> CommandResult:
        self.commands.append(command)
        for key, (rc, out) in self.answers.items():
            if key in command:
                return CommandResult(command, rc, out, "", 0.0)
        return CommandResult(command, 127, "", "command not found", 0.0)


def machine(monkeypatch: pytest.MonkeyPatch, answers: dict[str, tuple[int, str]]
            ) -> tuple[Machine, FakeGuest]:
    m = Machine("guest", SshTarget("127.0.0.1", 40123, "vagrant", Path("/k")))
    fake = FakeGuest(answers)
    monkeypatch.setattr(m, "execute", fake)
    return m, fake


def test_succeed_and_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    m, _ = machine(monkeypatch, {"echo hi": (0, "hi\n"), "false": (1, "")})
    assert m.succeed("echo hi") == "hi\n"
    with pytest.raises(GuestError, match="command failed on guest: `false` exited 1"):
        m.succeed("false")
    assert m.fail("false") == ""
    with pytest.raises(GuestError, match="unexpectedly succeeded"):
        m.fail("echo hi")


def test_systemd_version(monkeypatch: pytest.MonkeyPatch) -> None:
    m, _ = machine(monkeypatch, {"systemctl --version": (
        0, "systemd 252 (252.30-1~deb12u2)\n+PAM +AUDIT +SELINUX +APPARMOR\n")})
    assert m.systemd_version() == 252


def test_wait_for_unit_stops_at_once_on_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    m, fake = machine(monkeypatch, {"is-active": (3, "failed\n"),
                                    "systemctl status": (3, "x.socket - failed\n")})
    with pytest.raises(GuestError, match=r"unit x\.socket is 'failed', not active"):
        m.wait_for_unit("x.socket", timeout=30)
    assert sum("is-active" in c for c in fake.commands) == 1


def test_wait_for_unit_active(monkeypatch: pytest.MonkeyPatch) -> None:
    m, _ = machine(monkeypatch, {"is-active": (0, "active\n")})
    m.wait_for_unit("x.socket", timeout=30)
    assert m.unit_state("x.socket") == "active"


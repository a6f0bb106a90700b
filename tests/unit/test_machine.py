"""vm/machine/machine.py without SSH: ssh-config parsing, CommandResult, and the verbs over a fake
``execute``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from support import WALKTHROUGH, FakeGuest, fake_machine, program_answer, sent_steps

from pytest_portable_upgrade.core.errors import GuestError, HarnessError
from pytest_portable_upgrade.core.log import StepLogger
from pytest_portable_upgrade.machine import machine as machine_module
from pytest_portable_upgrade.machine.machine import (
    CommandResult,
    Machine,
    SshTarget,
    one_line,
    parse_ssh_config,
)
from pytest_portable_upgrade.systemd.portable import CLIENT_UNITS, PortableService

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


def test_succeed_and_fail() -> None:
    m, _ = fake_machine({"echo hi": (0, "hi\n"), "false": (1, "")})
    assert m.succeed("echo hi") == "hi\n"
    with pytest.raises(GuestError, match="command failed on guest: `false` exited 1"):
        m.succeed("false")
    assert m.fail("false") == ""
    with pytest.raises(GuestError, match="unexpectedly succeeded"):
        m.fail("echo hi")


def test_systemd_version() -> None:
    m, _ = fake_machine({"systemctl --version": (
        0, "systemd 252 (252.30-1~deb12u2)\n+PAM +AUDIT +SELINUX +APPARMOR\n")})
    assert m.systemd_version() == 252


@pytest.mark.parametrize(("answer", "version"), [
    ((0, "262.1-1\n"), "262.1-1"),  # dpkg-query on a Debian box
    ((0, "259.3-1.fc44\n"), "259.3-1.fc44"),  # rpm on a Fedora box (dpkg-query failed first)
    ((1, "package systemd is not installed\n"), ""),
    ((0, ""), ""),
    ((0, "package systemd is not installed\n"), ""),
])
def test_systemd_package_version(answer: tuple[int, str], version: str) -> None:
    m, fake = fake_machine({"dpkg-query -W": answer})
    assert m.systemd_package_version() == version
    assert fake.commands == [machine_module.PACKAGE_VERSION_COMMAND]


def test_package_version_command_asks_dpkg_then_rpm_for_the_version_only(
    tmp_path: Path,
) -> None:
    """Run the real command line with stand-ins for dpkg-query and rpm that print their
    arguments: the format strings reach them intact (no shell expansion of ${Version})."""
    for tool, rc in (("dpkg-query", 1), ("rpm", 0)):
        script = tmp_path / tool
        script.write_text(f"#!/bin/sh\nprintf '%s|' \"$@\" >> {tmp_path}/calls\n"
                          f"echo >> {tmp_path}/calls\nexit {rc}\n")
        script.chmod(0o755)
    subprocess.run(["bash", "-c", machine_module.PACKAGE_VERSION_COMMAND], check=False,
                   env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["-W|-f=${Version}\\n|systemd|", "-q|--qf|%{VERSION}-%{RELEASE}\\n|systemd|"]


SHOW = "systemctl show -p ActiveState -p Job"


def test_wait_for_unit_stops_at_once_on_failed() -> None:
    m, fake = fake_machine({SHOW: (0, "ActiveState=failed\n"),
                            "systemctl status": (3, "x.socket - failed\n")})
    with pytest.raises(GuestError, match=r"unit x\.socket is 'failed', not active"):
        m.wait_for_unit("x.socket", timeout=30)
    assert sum(SHOW in c for c in fake.commands) == 1


@pytest.mark.parametrize("show", ["ActiveState=inactive\nJob=\n", "ActiveState=inactive\n",
                                  "Job=0\nActiveState=inactive\n"])
def test_wait_for_unit_stops_at_once_on_inactive_without_a_job(show: str) -> None:
    """Nothing is going to start it: waiting the whole bound would only hide that."""
    m, fake = fake_machine({SHOW: (0, show), "systemctl status": (3, "x.socket - dead\n")})
    with pytest.raises(GuestError, match=r"unit x\.socket is 'inactive', no job queued, not "
                                         r"active:\nx\.socket - dead"):
        m.wait_for_unit("x.socket", timeout=30)
    assert sum(SHOW in c for c in fake.commands) == 1


def test_wait_for_unit_waits_while_a_start_job_is_queued() -> None:
    m, fake = fake_machine({SHOW: [(0, "ActiveState=inactive\nJob=41\n"),
                                   (0, "ActiveState=activating\nJob=41\n"),
                                   (0, "ActiveState=active\nJob=\n")]},
                           )
    m.wait_for_unit("x.service", timeout=30)
    assert sum(SHOW in c for c in fake.commands) == 3
    assert all("is-active" not in c for c in fake.commands)  # one round trip per try


def test_wait_for_unit_times_out_on_a_job_that_never_runs() -> None:
    m, _ = fake_machine({SHOW: (0, "ActiveState=inactive\nJob=41\n"),
                         "systemctl status": (3, "waiting\n")})
    with pytest.raises(GuestError, match=r"unit x\.service is 'inactive', not active"):
        m.wait_for_unit("x.service", timeout=0.5)


def test_wait_for_unit_active() -> None:
    m, fake = fake_machine({SHOW: (0, "ActiveState=active\nJob=\n"),
                            "is-active": (0, "active\n")})
    m.wait_for_unit("x.socket", timeout=30)
    assert fake.commands == ["systemctl show -p ActiveState -p Job x.socket"]
    assert m.unit_state("x.socket") == "active"


# --- check_clean (one guest program call through the fake machine) -------------------------
IMAGES = WALKTHROUGH.image_paths()
UNITS = [*CLIENT_UNITS, WALKTHROUGH.socket, WALKTHROUGH.service]


def service_on(words: dict[str, str] | None = None, missing: tuple[str, ...] = (),
               answer: tuple[int, str] | None = None) -> tuple[PortableService, FakeGuest]:
    """A PortableService on a fake guest whose clean check answers each image "detached" and
    each unit "inactive", or its word in ``words``; ``missing`` names get no word at all."""
    said = {**{p: "detached" for p in IMAGES}, **{u: "inactive" for u in UNITS}, **(words or {})}
    said = {k: v for k, v in said.items() if k not in missing}
    m, fake = fake_machine({"portable.py": answer or program_answer({"words": [said]})})
    return (PortableService(m, 252, 240, lambda _loc: None,  # type: ignore[arg-type,return-value]
                            WALKTHROUGH, None), fake)


def test_check_clean_of_a_clean_guest() -> None:
    service, _ = service_on({WALKTHROUGH.socket: "failed"})
    service.check_clean()
    assert service.clean_verified


def test_check_clean_sees_an_attached_image_and_an_active_unit() -> None:
    service, _ = service_on({IMAGES[0]: "running", "pwt-ab.service": "active"})
    with pytest.raises(GuestError, match="not clean") as e:
        service.check_clean()
    assert f"{IMAGES[0]} running" in str(e.value) and "pwt-ab.service active" in str(e.value)
    assert not service.clean_verified


def test_check_clean_is_one_round_trip_asking_every_image_and_unit() -> None:
    """The clean check is one call of the guest program: one ``host.service(u)`` per unit
    would cost a round trip each, before every scenario."""
    service, fake = service_on()
    service.check_clean()
    (command,) = fake.commands
    (step,) = sent_steps(command)
    (part,) = step["parts"]  # type: ignore[misc]
    assert (part["images"], part["units"]) == (IMAGES, UNITS)


@pytest.mark.parametrize("missing", [tuple(IMAGES), (WALKTHROUGH.service,)],
                         ids=["no-images", "one-unit-missing"])
def test_check_clean_takes_missing_answers_for_dirty(missing: tuple[str, ...]) -> None:
    with pytest.raises(GuestError, match="not clean") as e:
        service_on(missing=missing)[0].check_clean()
    for name in missing:
        assert f"{name}: no answer" in str(e.value)


def test_a_cut_off_answer_is_no_answer_never_clean() -> None:
    service, _ = service_on(answer=(124, '{"ok": true, "answers": [{"words": [{"/var/l'))
    with pytest.raises(GuestError, match="gave no answer"):
        service.check_clean()
    assert not service.clean_verified


def test_check_clean_takes_an_activating_unit_for_dirty() -> None:
    """"activating" is not clean (testinfra's is_running would say False: not running)."""
    with pytest.raises(GuestError, match=r"portable-walkthrough\.socket activating"):
        service_on({WALKTHROUGH.socket: "activating"})[0].check_clean()


# --- every guest command in run.log ------------------------------------------------------------
class FakeStream:
    def __init__(self, data: bytes, rc: int) -> None:
        self.data = data
        self.channel = self
        self.rc = rc

    def read(self) -> bytes:
        return self.data

    def recv_exit_status(self) -> int:
        return self.rc


class FakeClient:
    """paramiko's SSHClient as Machine.execute uses it; ``broken``: the channel times out."""

    def __init__(self, rc: int = 0, broken: bool = False) -> None:
        self.rc, self.broken = rc, broken

    def exec_command(self, command: str, timeout: float) -> tuple[None, FakeStream, FakeStream]:
        if self.broken:
            raise TimeoutError("timed out")
        return None, FakeStream(b"out\n", self.rc), FakeStream(b"", self.rc)


@pytest.fixture
def step_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[StepLogger, list[str]]:
    """A fresh step logger for pytest_portable_upgrade.machine.machine, writing run.log under
    tmp_path; the terminal lines it emitted are collected in the list."""
    shown: list[str] = []
    logger = StepLogger()
    logger.emit = shown.append
    logger.log_to(tmp_path / "run.log")
    monkeypatch.setattr(machine_module, "log", logger)
    return logger, shown


def run_log(tmp_path: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in (tmp_path / "run.log").read_text().splitlines()]


def test_every_command_lands_in_run_log_only(step_log: tuple[StepLogger, list[str]],
                                            tmp_path: Path) -> None:
    logger, shown = step_log
    m = Machine("guest", SshTarget("127.0.0.1", 1, "v", Path("/k")))
    m._client = FakeClient(rc=3)  # type: ignore[assignment]
    with logger.nested("a step"):
        result = m.execute("systemctl is-active x.socket")
    assert result.rc == 3
    lines = run_log(tmp_path)
    assert re.fullmatch(r"  \$ systemctl is-active x\.socket  -> rc 3 in \d+\.\d\d s", lines[1])
    assert not any("$ systemctl" in line for line in shown), shown  # the terminal: steps only
    assert shown[0] == "▶ a step"


def test_a_broken_off_command_is_logged_too(step_log: tuple[StepLogger, list[str]],
                                            tmp_path: Path) -> None:
    m = Machine("guest", SshTarget("127.0.0.1", 1, "v", Path("/k")))
    m._client = FakeClient(broken=True)  # type: ignore[assignment]
    with pytest.raises(HarnessError, match="broke off"):
        m.execute("portablectl reattach --now x")
    assert re.fullmatch(r"\$ portablectl reattach --now x  -> broke off after \d+\.\d\d s: "
                        r"timed out", run_log(tmp_path)[0])


def test_detail_without_a_log_file_goes_nowhere() -> None:
    shown: list[str] = []
    logger = StepLogger()
    logger.emit = shown.append
    logger.detail("$ true  -> rc 0 in 0.01 s")
    assert shown == []


@pytest.mark.parametrize("command", [
    "echo plain",
    "mkdir -p /tmp && cat <<'EOF'\nglobal\n  maxconn 100\\n 'quoted' \"dq\" $HOME\tTAB\nEOF",
    "printf 'a\\nb'\necho \"é ü\"; echo $'\\x01' | od -c | head -n1",
])
def test_one_line_replays_the_same_command(command: str) -> None:
    """The logged line, pasted into a shell, does what the command did."""
    line = one_line(command)
    assert "\n" not in line

    def run(cmd: str) -> str:
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True,
                              check=True).stdout

    assert run(line) == run(command)

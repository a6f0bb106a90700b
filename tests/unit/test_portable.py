"""vm/systemd/portable.py: the service's state in one answer, attach in one round trip, reset +
check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from support import WALKTHROUGH

from pytest_portable_upgrade.core.errors import GuestError
from pytest_portable_upgrade.machine.machine import CommandResult
from pytest_portable_upgrade.systemd.portable import ImageRefused, PortableService, ServiceFacts

SOCKET = WALKTHROUGH.socket
FACTS = ("user=_du1234\ndynamic=yes\nsince=123456789\nsocket=active\n"
         "attached=running\nimage=/var/lib/portables/portable-walkthrough_2.raw\n")
ANSWER = ('answer={"t": 1700000040.0, "latency_ms": 3.0, "status": 200, "greeting": "Hola",'
          ' "visitor": 43}\n')


def test_service_facts_from_one_answer() -> None:
    facts = ServiceFacts.parse(FACTS)
    assert facts == ServiceFacts("_du1234", True, "123456789", "active", "running",
                                 "/var/lib/portables/portable-walkthrough_2.raw")
    assert facts.counter is None  # not asked for


def test_the_count_is_the_probe_requests_visitor_less_its_own() -> None:
    assert ServiceFacts.parse(FACTS + ANSWER, count=True).counter == 42


def test_no_probe_answer_through_a_dead_socket_is_none_not_zero() -> None:
    dead = FACTS.replace("socket=active", "socket=failed") + "answer=\n"
    assert ServiceFacts.parse(dead, count=True).counter is None


def test_an_answer_without_the_promised_counter_is_an_error() -> None:
    no_count = ANSWER.replace(', "visitor": 43', "")
    with pytest.raises(GuestError, match="no counter in the answer"):
        ServiceFacts.parse(FACTS + no_count, count=True)


def test_a_cut_off_answer_is_an_error_not_empty_facts() -> None:
    cut = FACTS.split("attached=")[0]
    with pytest.raises(GuestError, match=r"without \['attached', 'image'\]"):
        ServiceFacts.parse(cut)
    with pytest.raises(GuestError, match=r"without \['answer'\]"):
        ServiceFacts.parse(FACTS, count=True)


class ScriptedMachine:
    """Plays back one answer per ``execute``; records the commands."""

    def __init__(self, *answers: tuple[int, str]) -> None:
        self.answers = list(answers)
        self.commands: list[str] = []
        self.waited: list[str] = []

    def execute(self, command: str, timeout: float = 120.0) -> CommandResult:
        self.commands.append(command)
        rc, out = self.answers.pop(0)
        return CommandResult(command, rc, out, "", 0.3)

    def wait_for_unit(self, unit: str, timeout: float = 60.0) -> None:
        self.waited.append(unit)

    def copy_from_host(self, source: Path, destination: str, mode: str = "0644",
                       once: bool = False) -> None:
        self.commands.append(f"copy {source.name} {destination}")


class NoHost:
    """A testinfra host the scenario path must not need: attach, observe and reset are one
    round trip each through the machine."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"host.{name} used")


def service(machine: ScriptedMachine, subject: object = WALKTHROUGH) -> PortableService:
    return PortableService(machine, 252, 240.0, lambda loc: None,  # type: ignore[arg-type,return-value]
                           subject, NoHost())  # type: ignore[arg-type]


ATTACHED = f"Created …\nPWT-ATTACHED running\nPWT-SOCKET {SOCKET} active\n"


def test_attach_is_one_round_trip_with_the_socket_file_written_before_the_attach() -> None:
    m = ScriptedMachine((0, ATTACHED))
    service(m).attach(1)
    (command,) = m.commands
    assert command.index("cat > /etc/systemd/system/portable-walkthrough.socket") < \
        command.index("ln -sfn portable-walkthrough_1.raw") < \
        command.index("portablectl attach --profile default") < \
        command.index(f"for u in {SOCKET}; do systemctl start $u")
    assert "daemon-reload" not in command  # portablectl attach reloads the manager
    assert m.waited == []
    # The socket file is the subject's own, whole, in a quoted here-document.
    assert f"<<'PWT-EOF'\n{WALKTHROUGH.sockets[0].read_text()}PWT-EOF\n" in command


def test_every_socket_of_a_subject_is_written_and_started_in_the_same_round_trip(
        tmp_path: Path) -> None:
    second = tmp_path / "portable-walkthrough-admin.socket"
    second.write_text("[Socket]\nListenStream=8081\n")
    subject = dataclasses.replace(WALKTHROUGH, sockets=(*WALKTHROUGH.sockets, second))
    m = ScriptedMachine((0, ATTACHED + f"PWT-SOCKET {second.name} failed\n"))
    service(m, subject).attach(2)
    (command,) = m.commands
    assert f"cat > /etc/systemd/system/{second.name}" in command
    assert f"for u in {SOCKET} {second.name}; do" in command
    assert m.waited == [second.name]  # only the one that did not come up


def test_an_image_socket_writes_no_socket_file() -> None:
    m = ScriptedMachine((0, ATTACHED))
    service(m).attach(1, host_socket=False)
    assert "/etc/systemd/system/" not in m.commands[0]


def test_a_socket_that_did_not_come_up_goes_to_wait_for_unit_for_its_reason() -> None:
    m = ScriptedMachine((0, f"PWT-ATTACHED running\nPWT-SOCKET {SOCKET} failed\n"))
    service(m).attach(1)
    assert m.waited == [SOCKET]


def test_a_refused_image_ends_the_run_with_portablectls_words() -> None:
    m = ScriptedMachine((1, "Failed to attach: image is not a portable service\n"
                            "PWT-REFUSED 1\n"))
    with pytest.raises(ImageRefused, match=r"portablectl attach /var/lib/portables/"
                                           r"portable-walkthrough\.raw \(v1, .*walkthrough"
                                           r"\.toml\): Failed to attach: image is not a "
                                           r"portable service$"):
        service(m).attach(1)


def test_an_attach_that_broke_before_portablectl_is_a_guest_error() -> None:
    m = ScriptedMachine((1, "mv: cannot move 'x': No space left on device\n"))
    with pytest.raises(GuestError, match=r"the attach of v1 failed \(exit 1\).*No space") as e:
        service(m).attach(1)
    assert not isinstance(e.value, ImageRefused)


def test_detached_after_attach_is_an_error() -> None:
    m = ScriptedMachine((0, f"PWT-ATTACHED detached\nPWT-SOCKET {SOCKET} active\n"))
    with pytest.raises(GuestError, match="is-attached says 'detached'"):
        service(m).attach(1)


CLEAN = "\n".join(
    [f"/var/lib/portables/portable-walkthrough{s}.raw detached" for s in ("_1", "_2", "")]
    + [f"{u} inactive" for u in ("pwt-ab.service", "pwt-probe.service", "pwt-holders.service",
                                "pwt-haproxy.service", "pwt-source-http.service", SOCKET,
                                "portable-walkthrough.service")]) + "\n"


def test_reset_checks_clean_in_the_same_round_trip_and_remembers_it() -> None:
    m = ScriptedMachine((0, "Removed …\n" + CLEAN))
    svc = service(m)
    svc.reset()
    assert len(m.commands) == 1 and svc.clean_verified
    m.answers.append((0, ATTACHED))
    svc.attach(1)
    assert not svc.clean_verified  # attached: the next test checks again


def test_a_reset_that_leaves_a_socket_active_is_dirty() -> None:
    m = ScriptedMachine((0, CLEAN.replace(f"{SOCKET} inactive", f"{SOCKET} active")))
    svc = service(m)
    with pytest.raises(GuestError, match="not clean"):
        svc.reset()
    assert not svc.clean_verified


def test_timed_commands_are_read_back_from_their_marker_line() -> None:
    from pytest_portable_upgrade.systemd.portable import parse_timed, timed

    assert "PWT-TIMES $s $e $rc $(readlink x)" in timed("true", extra="$(readlink x)")
    out = "Queued …\n\nPWT-TIMES 1700.25 1702.5 0 portable-walkthrough_2.raw\njournal line\n"
    assert parse_timed(out) == (1700.25, 1702.5, 0, ["portable-walkthrough_2.raw"])
    with pytest.raises(GuestError, match="no PWT-TIMES line"):
        parse_timed("Failed to connect to bus\n")


def test_the_facts_before_the_load_are_one_round_trip_without_a_request() -> None:
    m = ScriptedMachine((0, FACTS))
    facts = service(m).observe()
    (command,) = m.commands
    assert "probe.py" not in command  # a request before the load would move the counter
    assert f"systemctl is-active {SOCKET}" in command and facts.counter is None


def test_the_facts_after_the_load_carry_the_count_in_the_same_round_trip() -> None:
    m = ScriptedMachine((0, FACTS + ANSWER))
    facts = service(m).observe(count=True)
    copies = [c for c in m.commands if c.startswith("copy ")]
    assert copies == ["copy probe.py /run/pwt/probe.py"]  # once per boot (Machine's once=True)
    (command,) = [c for c in m.commands if not c.startswith("copy ")]
    # The request only through a socket that is active: a dead one has no count to read.
    assert '[ "$socket" = active ] && answer=$(python3 /run/pwt/probe.py --once --port 8080' \
        in command
    assert "--counter-regex" in command and facts.counter == 42


def test_a_subject_without_a_counter_sends_no_request_for_one() -> None:
    subject = dataclasses.replace(WALKTHROUGH, counter_regex=None)
    m = ScriptedMachine((0, FACTS))
    facts = service(m, subject).observe(count=True)
    assert len(m.commands) == 1 and "probe.py" not in m.commands[0]
    assert facts.counter is None

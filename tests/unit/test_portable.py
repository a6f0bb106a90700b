"""vm/portable.py: the service's state in one answer, attach in one round trip, reset + check."""

from __future__ import annotations

import pytest

from vm.errors import GuestError
from vm.machine import CommandResult
from vm.portable import SOCKET, PortableService, ServiceFacts

FACTS = ("user=_du1234\ndynamic=yes\nsince=123456789\nsocket=active\ncounter=42\n"
         "attached=running\nimage=/var/lib/portables/portable-walkthrough_2.raw\n")


def test_service_facts_from_one_answer() -> None:
    facts = ServiceFacts.parse(FACTS)
    assert facts == ServiceFacts("_du1234", True, "123456789", "active", 42, "running",
                                 "/var/lib/portables/portable-walkthrough_2.raw")


def test_no_visitor_yet_is_none_not_zero() -> None:
    assert ServiceFacts.parse(FACTS.replace("counter=42", "counter=")).counter is None


def test_a_cut_off_answer_is_an_error_not_empty_facts() -> None:
    cut = FACTS.split("attached=")[0]
    with pytest.raises(GuestError, match=r"without \['attached', 'image'\]"):
        ServiceFacts.parse(cut)


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


def service(machine: ScriptedMachine) -> PortableService:
    return PortableService(machine, 252, 240.0, lambda loc: None)  # type: ignore[arg-type,return-value]


def test_attach_is_one_round_trip_with_the_socket_file_written_before_the_attach() -> None:
    m = ScriptedMachine((0, "Created …\nPWT-ATTACHED running\nPWT-SOCKET active\n"))
    service(m).attach(1)
    (command,) = m.commands
    assert command.index("cat > /etc/systemd/system/portable-walkthrough.socket") < \
        command.index("portablectl attach --profile default") < \
        command.index(f"systemctl start {SOCKET}")
    assert "daemon-reload" not in command  # portablectl attach reloads the manager
    assert m.waited == []


def test_a_socket_that_did_not_come_up_goes_to_wait_for_unit_for_its_reason() -> None:
    m = ScriptedMachine((0, "PWT-ATTACHED running\nPWT-SOCKET failed\n"))
    service(m).attach(1)
    assert m.waited == [SOCKET]


def test_a_refused_image_ends_with_portablectls_words() -> None:
    m = ScriptedMachine((1, "Failed to attach: image is not a portable service\n"))
    with pytest.raises(GuestError, match=r"portablectl attach failed.*not a portable service"):
        service(m).attach(1)


def test_detached_after_attach_is_an_error() -> None:
    m = ScriptedMachine((0, "PWT-ATTACHED detached\nPWT-SOCKET active\n"))
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
    m.answers.append((0, "PWT-ATTACHED running\nPWT-SOCKET active\n"))
    svc.attach(1)
    assert not svc.clean_verified  # attached: the next test checks again


def test_a_reset_that_leaves_a_socket_active_is_dirty() -> None:
    m = ScriptedMachine((0, CLEAN.replace(f"{SOCKET} inactive", f"{SOCKET} active")))
    svc = service(m)
    with pytest.raises(GuestError, match="not clean"):
        svc.reset()
    assert not svc.clean_verified


def test_timed_commands_are_read_back_from_their_marker_line() -> None:
    from vm.portable import parse_timed, timed

    assert "PWT-TIMES $s $e $rc $(readlink x)" in timed("true", extra="$(readlink x)")
    out = "Queued …\n\nPWT-TIMES 1700.25 1702.5 0 portable-walkthrough_2.raw\njournal line\n"
    assert parse_timed(out) == (1700.25, 1702.5, 0, ["portable-walkthrough_2.raw"])
    with pytest.raises(GuestError, match="no PWT-TIMES line"):
        parse_timed("Failed to connect to bus\n")

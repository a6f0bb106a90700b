"""Helpers shared by the unit tests (imported as ``support``; pytest puts this directory on
sys.path): module loading, the fake socket activation launcher, a tiny HTTP client and
builders of measured runs (LoadOutcome, Upgrade, ...)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from pytest_portable_upgrade.load.ab import AbResult
from pytest_portable_upgrade.load.load import LoadOutcome
from pytest_portable_upgrade.load.timeline import ProbeRecord, Timeline
from pytest_portable_upgrade.machine.guest_host import guest_host
from pytest_portable_upgrade.machine.machine import CommandResult, Machine, SshTarget
from pytest_portable_upgrade.scenarios.catalogue import Scenario
from pytest_portable_upgrade.scenarios.checks import SocketObservation
from pytest_portable_upgrade.scenarios.run import ScenarioRun
from pytest_portable_upgrade.subject.spec import DEFAULT_SPEC, Subject, load_subject
from pytest_portable_upgrade.systemd.portable import Upgrade
from pytest_portable_upgrade.systemd.scope import SCOPES

ROOT = Path(__file__).resolve().parents[2]
SERVER_PY = ROOT / "images" / "server.py"
PROBE_PY = ROOT / "vm" / "load" / "guest" / "probe.py"
PORTABLE_PY = ROOT / "vm" / "systemd" / "guest" / "portable.py"
LOAD_PY = ROOT / "vm" / "load" / "guest" / "load.py"
DATA = Path(__file__).resolve().parent / "data"
# The default subject (images/walkthrough.toml): v1 answers Hello, v2 Hola.
WALKTHROUGH: Subject = load_subject(DEFAULT_SPEC)


def old_of(scenario: Scenario, subject: Subject = WALKTHROUGH) -> str:
    """What the scenario's old version answers (Hello for the walkthrough's v1)."""
    return subject.answer(scenario.from_version)


def new_of(scenario: Scenario, subject: Subject = WALKTHROUGH) -> str:
    return subject.answer(scenario.to_version)


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- fake socket activation ------------------------------------------------------------------
# Runs in the child before the server's exec, like systemd does: puts the listening socket at
# fd 3 (inheritable: a dup2 onto itself would leave it close-on-exec) and names the process in
# LISTEN_PID. execv keeps the pid, so LISTEN_PID names the server.
LAUNCHER = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""

SD_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "GREETING", "PW_SHUTDOWN",
          "STATE_DIRECTORY", "NOTIFY_SOCKET")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SD_ENV}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


class RunningServer:
    """One server process; a reader thread collects its stderr lines."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, state_dir: Path) -> None:
        self.proc = proc
        self.port = port
        self.state_dir = state_dir
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The next stderr line containing ``text`` (lines before it are consumed)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"server never logged {text!r}; stderr: {self.lines}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"server exited before logging {text!r}: {self.lines}")
            if text in line:
                return line

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc

    def stop(self) -> None:
        """Kill (by the Popen handle) if still running, reap, close the pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


StartServer = Callable[..., RunningServer]


# --- a tiny HTTP client ----------------------------------------------------------------------
class HttpResponse:
    def __init__(self, status_line: str, headers: dict[str, str], body: bytes) -> None:
        self.status_line = status_line
        self.headers = headers
        self.body = body

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    @property
    def text(self) -> str:
        return self.body.decode()


def read_response(sock: socket.socket) -> HttpResponse:
    """Read exactly one response (head, then Content-Length bytes of body) from ``sock``."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed before a full head: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed mid-body: {rest!r}")
        rest += chunk
    assert len(rest) == length, f"more bytes than Content-Length {length}: {rest!r}"
    return HttpResponse(lines[0], headers, rest)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def send_request(sock: socket.socket, version: str = "HTTP/1.0", headers: str = "") -> None:
    sock.sendall(f"GET / {version}\r\nHost: test\r\n{headers}\r\n".encode())


def request(sock: socket.socket, version: str = "HTTP/1.0", headers: str = "") -> HttpResponse:
    send_request(sock, version, headers)
    return read_response(sock)


def at_eof(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the peer closed the connection cleanly (FIN and no further bytes)."""
    sock.settimeout(timeout)
    return sock.recv(4096) == b""


def read_to_eof(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    raw = b""
    while chunk := sock.recv(4096):
        raw += chunk
    return raw


def get(port: int, headers: str = "") -> HttpResponse:
    """One HTTP/1.0 request on a fresh connection; checks the server then closed it."""
    with connect(port) as s:
        response = request(s, headers=headers)
        assert at_eof(s), "the server kept a non-keep-alive connection open"
    return response


# --- a guest without a VM -------------------------------------------------------------------
Answer = tuple[int, str]


class FakeGuest:
    """Answers ``execute`` from a script: command substring -> (rc, stdout), or a list of them
    given one per call (the last one repeats). Unknown commands exit 127."""

    def __init__(self, answers: dict[str, Answer | list[Answer]]) -> None:
        self.answers = answers
        self.commands: list[str] = []
        self.calls: dict[str, int] = {}
        self.copies: list[str] = []  # guest paths copy_from_host was asked to fill

    def copy_from_host(self, source: Path, destination: str, mode: str = "0644",
                       once: bool = False) -> None:
        self.copies.append(destination)

    def __call__(self, command: str, timeout: float = 120.0) -> CommandResult:
        self.commands.append(command)
        for key, answer in self.answers.items():
            if key in command:
                n = self.calls[key] = self.calls.get(key, 0) + 1
                rc, out = answer[min(n, len(answer)) - 1] if isinstance(answer, list) else answer
                return CommandResult(command, rc, out, "", 0.0)
        return CommandResult(command, 127, "", "command not found", 0.0)


def fake_machine(answers: dict[str, Answer | list[Answer]]) -> tuple[Machine, FakeGuest]:
    """A Machine whose ``execute`` is a FakeGuest (its other verbs are the real ones)."""
    m = Machine("guest", SshTarget("127.0.0.1", 40123, "vagrant", Path("/k")))
    fake = FakeGuest(answers)
    m.execute = fake  # type: ignore[method-assign]
    m.copy_from_host = fake.copy_from_host  # type: ignore[method-assign]
    return m, fake


def program_answer(*answers: dict[str, object], ok: bool = True, **failure: object) -> Answer:
    """What the guest program prints for a call whose steps answered ``answers`` (and, if not
    ``ok``, failed with ``failure``: step, error, refused), as a FakeGuest answer."""
    out = {"ok": ok, "answers": list(answers), **failure}
    return (0 if ok else 1, json.dumps(out) + "\n")


def sent_steps(command: str, program: str = "portable.py") -> list[dict[str, object]]:
    """The requests of one call of a guest program (``program``, in /run/pwt), read back from
    its command line."""
    import shlex

    words = shlex.split(command)
    assert words[:3] == ["python3", f"/run/pwt/{program}", "--json"], words[:3]
    steps: list[dict[str, object]] = json.loads(words[3])
    return steps


# What testinfra asks a Linux guest with systemd before its first service/file verb.
LINUX_WITH_SYSTEMD: dict[str, Answer | list[Answer]] = {
    "uname -s": (0, "Linux\n"), "uname -m": (0, "x86_64\n"),
    "cat /etc/os-release": (0, "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n"),
    "test -d /run/systemd/system/": (0, ""),
}


def fake_host(answers: dict[str, Answer | list[Answer]]) -> tuple[Machine, object, FakeGuest]:
    """A fake Machine and testinfra's ``host`` on it (vm/machine/guest_host.py: every testinfra
    command goes through Machine.execute, so the FakeGuest answers them too)."""
    m, fake = fake_machine({**answers, **LINUX_WITH_SYSTEMD})
    return m, guest_host(m, Path("/nonexistent/ssh_config")), fake


# --- the guest program on the host, with fake systemd tools ----------------------------------
FAKE_TOOL = """\
#!{python} -SE
import json, sys
args = " ".join(sys.argv[1:])
with open({log!r}, "a") as f:
    f.write(json.dumps([{name!r}, *sys.argv[1:]]) + "\\n")
for key, (rc, out, err) in json.load(open({answers!r})):
    if key in args:
        sys.stdout.write(out)
        sys.stdout.flush()
        sys.stderr.write(err)
        sys.exit(rc)
sys.exit(0)
"""


class FakeTools:
    """Fake executables (systemctl, portablectl, ...) in a directory put first on PATH: each
    logs its argv and answers the first (substring of its arguments -> rc, stdout, stderr)
    given for its name; anything else exits 0 silently."""

    NAMES = ("systemctl", "portablectl", "runuser", "ps", "journalctl", "loginctl", "useradd",
             "veritysetup", "openssl", "systemd-run", "ss", "pkcheck", "haproxy")

    def __init__(self, directory: Path,
                 answers: dict[str, list[tuple[str, tuple[int, str, str]]]] | None = None,
                 ) -> None:
        self.bin = directory / "bin"
        self.bin.mkdir(parents=True)
        self.log = directory / "calls.jsonl"
        self.log.touch()
        for name in self.NAMES:
            table = directory / f"{name}.json"
            table.write_text(json.dumps((answers or {}).get(name, [])))
            tool = self.bin / name
            tool.write_text(FAKE_TOOL.format(python=sys.executable, log=str(self.log),
                                             name=name, answers=str(table)))
            tool.chmod(0o755)

    @property
    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def env(self) -> dict[str, str]:
        env = clean_env()
        env["PATH"] = f"{self.bin}:{env['PATH']}"
        return env


def run_program(requests: list[dict[str, object]], tools: FakeTools | None = None,
                program: Path = PORTABLE_PY) -> dict[str, object]:
    """A guest program (vm/systemd/guest/portable.py unless ``program`` names another) run on
    the host as the harness runs it in the guest; its answer (with ``exit``: its exit
    status)."""
    result = subprocess.run(
        [sys.executable, str(program), "--json", json.dumps(requests)], capture_output=True,
        text=True, env=tools.env() if tools else clean_env(), timeout=60, check=False)
    lines = result.stdout.strip().splitlines()
    assert lines, f"no answer: {result.stderr}"
    answer: dict[str, object] = json.loads(lines[-1])
    answer["exit"] = result.returncode
    return answer


# --- builders of measured runs ---------------------------------------------------------------
T0 = 1_700_000_000.0  # guest epoch seconds at load start


def answer(t: float, greeting: str, visitor: int, latency_ms: float = 4.0) -> ProbeRecord:
    return ProbeRecord(t=t, latency_ms=latency_ms, status=200, greeting=greeting,
                       visitor=visitor)


def failure(t: float, error: str, latency_ms: float = 1.0) -> ProbeRecord:
    return ProbeRecord(t=t, latency_ms=latency_ms, error=error)


def probe_series(start: float, end: float, greeting: str, first_visitor: int,
                 step_visitors: int = 25, every: float = 0.2) -> list[ProbeRecord]:
    """Answers every ``every`` s in [start, end); visitor numbers grow with the ab load."""
    count = round((end - start) / every)
    return [answer(round(start + i * every, 4), greeting, first_visitor + i * step_visitors)
            for i in range(count)]


def ab_result(complete: int = 7000, failed: int = 0, connect: int = 0, receive: int = 0,
              length: int = 0, exceptions: int = 0, non_2xx: int = 0,
              time_taken_s: float = 29.9) -> AbResult:
    return AbResult(
        complete=complete, failed=failed, failed_connect=connect, failed_receive=receive,
        failed_length=length, failed_exceptions=exceptions, non_2xx=non_2xx, write_errors=0,
        keepalive_requests=0, requests_per_second=complete / time_taken_s,
        time_taken_s=time_taken_s,
    )


def outcome(records: list[ProbeRecord], ab: AbResult | None = None, started: float = T0,
            stopped: float = T0 + 30.0, old: str = "Hello", new: str = "Hola",
            ab_started: float | None = None) -> LoadOutcome:
    ab = ab or ab_result(time_taken_s=round(stopped - (ab_started or started) - 0.1, 3))
    return LoadOutcome(ab=ab, ab_output="(ab report)", timeline=Timeline.build(
        records, started, old, new), started=started, stopped=stopped,
        ab_command="ab -l -r -c 10 -t 240 -n 240000 -s 30 http://127.0.0.1:8080/",
        ab_started=ab_started)


def reattach(started: float = T0 + 5.0, ended: float = T0 + 6.5) -> Upgrade:
    return Upgrade(command="portablectl reattach --now /var/lib/portables/x.raw",
                    started=started, ended=ended, output="Queued /x.raw...\n")


def clean_records() -> list[ProbeRecord]:
    """Hello from +0.2 s to +6.0 s (the reattach runs +5.0..+6.5 s), Hola from +6.2 s on;
    visitors 3, 28, ... (ab takes the numbers in between)."""
    hello = probe_series(T0 + 0.2, T0 + 6.2, "Hello", first_visitor=3)
    hola = probe_series(T0 + 6.2, T0 + 30.0, "Hola", first_visitor=1000)
    return hello + hola


def healthy_socket() -> SocketObservation:
    return SocketObservation("123456789", "123456789", "active")


def greeted(records: list[ProbeRecord], old: str, new: str) -> list[ProbeRecord]:
    """The same records with 'Hello' answered by ``old`` and 'Hola' by ``new`` (a rollback)."""
    names = {"Hello": old, "Hola": new}
    return [dataclasses.replace(r, greeting=names.get(r.greeting or "", r.greeting))
            for r in records]


# What a refused tampered download leaves in the rollout's journal (see test_sysupdate.py).
REFUSAL_LINE = ("Nov 26 12:00:09 pwt systemd-pull[812]: DOWNLOAD INVALID: Checksum of "
                "http://127.0.0.1:8090/portable-walkthrough_2.raw file did not check out, file "
                "has been tampered with.")


def scenario_run(scenario: Scenario, out: LoadOutcome | None = None,
                 **changes: object) -> ScenarioRun:
    """A valid run of ``scenario`` that lost nothing, with ``changes`` (ScenarioRun fields).

    Its profile took effect, the right image is attached afterwards (the old one after a
    refused update, whose rollout failed with systemd-pull's checksum refusal)."""
    refused = scenario.expect == "refused"
    if out is None:
        records = (probe_series(T0 + 0.2, T0 + 30.0, "Hello", first_visitor=3) if refused
                   else clean_records())
        old, new = old_of(scenario), new_of(scenario)
        out = outcome(greeted(records, old, new), old=old, new=new)
    rollout = (dataclasses.replace(reattach(), command="systemctl start pwt-rollout.service",
                                   output=f"{REFUSAL_LINE}\n") if refused
               else reattach())
    scope = SCOPES[scenario.scope]
    fields: dict[str, object] = dict(
        scenario=scenario, subject=WALKTHROUGH, scope=scope, outcome=out, upgrade=rollout,
        socket=healthy_socket(), final_count=100_000, min_complete=200, post_switch_s=10.0,
        attached_state="running", profile=WALKTHROUGH.profile_for(scenario),
        attached_image=scope.image_path(
            WALKTHROUGH, scenario.from_version if refused else scenario.to_version),
        service_user=("root" if scenario.profile == "trusted" else
                      scope.user or "portable-walkthrough"),
        dynamic_user=scenario.profile != "trusted" and scenario.scope == "system",
        rollout_ok=not refused,
    )
    fields.update(changes)
    return ScenarioRun(**fields)  # type: ignore[arg-type]

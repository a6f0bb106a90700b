"""A booted guest and the verbs tests use on it, after the NixOS test driver.

Commands run as root (``sudo -n``) over SSH (paramiko), each bounded twice: by ``timeout`` in
the guest (so a stuck ``portablectl`` is killed there) and by the SSH channel's own timeout.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_portable_upgrade.core.errors import GuestError, HarnessError
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.core.retry import retry

if TYPE_CHECKING:
    import paramiko


# The systemd package's version: dpkg on Debian boxes, rpm on Fedora boxes (a box has one).
PACKAGE_VERSION_COMMAND = (
    "dpkg-query -W -f='${Version}\\n' systemd 2>/dev/null"
    " || rpm -q --qf '%{VERSION}-%{RELEASE}\\n' systemd 2>/dev/null"
)


def package_version_of(output: str) -> str:
    """The version in ``PACKAGE_VERSION_COMMAND``'s output: its first line, if it looks like
    one (rpm says "package systemd is not installed" with status 1, dpkg prints nothing)."""
    first = output.strip().splitlines()[0].strip() if output.strip() else ""
    return first if first[:1].isdigit() and " " not in first else ""


@dataclass(frozen=True)
class CommandResult:
    command: str
    rc: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def succeeded(self) -> bool:
        return self.rc == 0

    def describe(self) -> str:
        out = self.stdout.strip()[-2000:]
        err = self.stderr.strip()[-2000:]
        return f"`{self.command}` exited {self.rc}\n--- stdout\n{out}\n--- stderr\n{err}"


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    user: str
    identity_file: Path


def one_line(command: str) -> str:
    """``command`` as one line a root shell runs the same way: multi-line commands (here
    documents) become ``bash -c $'…'`` with the newlines escaped."""
    if "\n" not in command and "\r" not in command:
        return command
    special = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

    def escape(c: str) -> str:
        if c in special:
            return special[c]
        if c.isprintable():
            return c
        return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\U{ord(c):08x}"

    return "bash -c $'" + "".join(map(escape, command)) + "'"


def parse_ssh_config(text: str) -> SshTarget:
    """Read HostName, Port, User and IdentityFile from ``vagrant ssh-config`` output.

    >>> parse_ssh_config("Host default\\n  HostName 127.0.0.1\\n  Port 2222\\n ...")
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0].lower() not in values:
            values[parts[0].lower()] = parts[1].strip().strip('"')
    missing = [k for k in ("hostname", "port", "user", "identityfile") if k not in values]
    if missing:
        raise HarnessError(f"vagrant ssh-config lacks {', '.join(missing)}: {text[:300]!r}")
    return SshTarget(
        values["hostname"], int(values["port"]), values["user"], Path(values["identityfile"])
    )


class Machine:
    """A guest reachable over SSH. Verbs: execute, succeed, fail, wait_until_succeeds,
    wait_for_unit, wait_for_open_port, copy_from_host."""

    def __init__(self, name: str, target: SshTarget, console_log: Path | None = None) -> None:
        self.name = name
        self.target = target
        self.console_log = console_log
        self._client: paramiko.SSHClient | None = None
        self.uploaded: dict[str, str] = {}  # guest path -> sha256 of what copy_from_host put

    # --- connection -------------------------------------------------------------------
    def connect(self, timeout: float = 60.0) -> None:
        import paramiko

        def attempt(last: bool) -> bool:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # fresh VM, new key
            try:
                client.connect(
                    self.target.host, port=self.target.port, username=self.target.user,
                    key_filename=str(self.target.identity_file), timeout=10,
                    allow_agent=False, look_for_keys=False, banner_timeout=30,
                )
            except (OSError, paramiko.SSHException) as e:
                client.close()
                if last:
                    raise HarnessError(f"cannot SSH into {self.name}: {e}") from e
                return False
            transport = client.get_transport()
            if transport is not None:
                transport.set_keepalive(15)
            self._client = client
            return True

        retry(attempt, timeout=timeout, interval=2, what=f"SSH to {self.name}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            self.connect()
        assert self._client is not None
        return self._client

    # --- commands ---------------------------------------------------------------------
    def execute(self, command: str, timeout: float = 120.0) -> CommandResult:
        """Run ``command`` as root in bash; never raises for a non-zero exit.

        >>> machine.execute("systemctl is-active foo.socket").stdout
        'active\\n'
        """
        wrapped = (
            f"sudo -n timeout --kill-after=5 {timeout:.0f} bash -c {shlex.quote(command)}"
        )
        start = time.monotonic()
        try:
            _stdin, stdout, stderr = self.client.exec_command(wrapped, timeout=timeout + 15)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            rc = stdout.channel.recv_exit_status()
        except OSError as e:  # socket.timeout is an OSError
            log.detail(f"$ {one_line(command)}  -> broke off after "
                       f"{time.monotonic() - start:.2f} s: {e}")
            raise HarnessError(f"SSH command on {self.name} broke off: {command!r}: {e}") from e
        duration = time.monotonic() - start
        # run.log only (a replayable line per command, as root in the guest): the terminal
        # would drown in them. rc 124 is the guest-side `timeout` expiring.
        log.detail(f"$ {one_line(command)}  -> rc {rc} in {duration:.2f} s")
        return CommandResult(command, rc, out, err, duration)

    def succeed(self, command: str, timeout: float = 120.0) -> str:
        """Run ``command``; return its stdout; raise GuestError if it exits non-zero."""
        __tracebackhide__ = True
        result = self.execute(command, timeout)
        if not result.succeeded:
            raise GuestError(f"command failed on {self.name}: {result.describe()}")
        return result.stdout

    def fail(self, command: str, timeout: float = 120.0) -> str:
        """Run ``command``; raise GuestError if it *succeeds* (a negative check)."""
        __tracebackhide__ = True
        result = self.execute(command, timeout)
        if result.succeeded:
            raise GuestError(f"command unexpectedly succeeded on {self.name}: {result.describe()}")
        return result.stdout

    def wait_until_succeeds(self, command: str, timeout: float = 60.0) -> str:
        """Repeat ``command`` until it exits 0; the timeout error shows its last output."""
        seen: list[CommandResult] = []

        def attempt(last: bool) -> bool:
            seen[:] = [self.execute(command, timeout=max(5.0, min(timeout, 30.0)))]
            if not seen[0].succeeded and last:
                raise GuestError(f"never succeeded in {timeout:.0f} s: {seen[0].describe()}")
            return seen[0].succeeded

        retry(attempt, timeout=timeout, interval=1, what=command)
        return seen[0].stdout

    def unit_state(self, unit: str) -> str:
        return self.execute(f"systemctl is-active {shlex.quote(unit)}", 30).stdout.strip()

    def unit_activity(self, unit: str) -> tuple[str, str]:
        """(ActiveState, Job) of ``unit`` in one guest round trip; Job is "" when none is queued.

        >>> machine.unit_activity("foo.socket")
        ('inactive', '')
        """
        out = self.execute(f"systemctl show -p ActiveState -p Job {shlex.quote(unit)}", 30).stdout
        values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        job = values.get("Job", "").strip()
        return values.get("ActiveState", "").strip(), "" if job == "0" else job

    def wait_for_unit(self, unit: str, timeout: float = 60.0) -> None:
        """Wait until ``unit`` is active. Stop at once when it is ``failed``, or ``inactive``
        with no job queued (as the NixOS driver does): nothing is going to start it."""

        def attempt(last: bool) -> bool:
            state, job = self.unit_activity(unit)
            if state == "active":
                return True
            stuck = state == "failed" or (state == "inactive" and not job)
            if stuck or last:
                why = f"{state!r}" + (", no job queued" if state == "inactive" and not job else "")
                status = self.execute(f"systemctl status --no-pager -n 20 {shlex.quote(unit)}")
                raise GuestError(f"unit {unit} is {why}, not active:\n{status.stdout}")
            return False

        retry(attempt, timeout=timeout, interval=1, what=f"unit {unit}")

    def wait_for_open_port(self, port: int, timeout: float = 60.0) -> None:
        self.wait_until_succeeds(f"ss -Htln 'sport = :{port}' | grep -q LISTEN", timeout)

    # --- files ------------------------------------------------------------------------
    def copy_from_host(self, source: Path, destination: str, mode: str = "0644",
                       once: bool = False) -> None:
        """Copy a host file into the guest at ``destination`` (owned by root).

        ``once``: skip the copy when this Machine already put the same bytes there (the load's
        guest scripts go to /run/pwt once per boot, not once per scenario)."""
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        if once and self.uploaded.get(destination) == digest:
            return
        staging = f"/tmp/pwt-upload-{source.name}"
        with self.client.open_sftp() as sftp:
            sftp.put(str(source), staging)
        self.succeed(
            f"install -D -m {mode} {shlex.quote(staging)} {shlex.quote(destination)}"
            f" && rm -f {shlex.quote(staging)}"
        )
        self.uploaded[destination] = digest

    # --- facts ------------------------------------------------------------------------
    def systemd_version(self) -> int:
        """The major version of systemd running in the guest (e.g. 252)."""
        first = self.succeed("systemctl --version").splitlines()[0]  # "systemd 252 (252.30-1)"
        return int(first.split()[1])

    def systemd_package_version(self) -> str:
        """The exact version of the guest's systemd package, as its package manager knows it
        (``dpkg-query`` on Debian, ``rpm`` on Fedora); "" when neither answers.

        A moving suite (Debian unstable) can bring another systemd with every box build while
        the major version stays the same: the report names the package so a verdict that
        changes with a rebuild is seen to change with the package.

        >>> machine.systemd_package_version()
        '262.1-1'
        """
        result = self.execute(PACKAGE_VERSION_COMMAND, 30)
        return package_version_of(result.stdout) if result.succeeded else ""


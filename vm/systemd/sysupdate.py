"""Automatic rollout with systemd-sysupdate: from "new version published" to "new version
running" without the test calling portablectl.

- A transfer (``/etc/sysupdate.d/50-<name>.transfer``, ``.conf`` before 257) takes
  ``<name>_@v.raw`` (the subject's portable prefix) from a source into ``/var/lib/portables``,
  keeps at most ``InstancesMax=`` versions and moves the ``<name>.raw`` symlink
  (``CurrentSymlink=``). Two sources: a local directory (``regular-file``) and an HTTP server on
  the guest's loopback (``url-file``, with the ``SHA256SUMS`` manifest sysupdate expects).
- ``pwt-rollout.service`` (oneshot): ``check-new`` as ExecCondition, ``update``, then
  ``portablectl reattach --now`` with the argument the systemd version needs (vm/systemd/quirks.py).
  ``pwt-pin@VERSION.service`` installs a given version (sysupdate's own pinning: ``update
  VERSION``) and reattaches: the rollback.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pytest_portable_upgrade.systemd.quirks import SYSUPDATE_NOTIFY_DIR

SYSUPDATE = "/usr/lib/systemd/systemd-sysupdate"
SOURCE_DIR = "/var/lib/pwt-source"
HTTP_PORT = 8090
HTTP_UNIT = "pwt-source-http.service"
TRANSFER_DIR = "/etc/sysupdate.d"  # 50-<name> + .transfer or .conf (quirks)
ROLLOUT_UNIT = "pwt-rollout.service"
PIN_UNIT = "pwt-pin@.service"
SOURCES = ("dir", "http")
PORTABLES_DIR = "/var/lib/portables"
# The notify listener: its socket and service units, the guest program the service runs and
# the log it keeps of every call (one JSON line each: what sysupdate sent, what the reattach did).
NOTIFY_SOCKET_UNIT = "pwt-notify-reattach.socket"
NOTIFY_SERVICE_UNIT = "pwt-notify-reattach@.service"
NOTIFY_SOCKET = f"{SYSUPDATE_NOTIFY_DIR}/io.pwt.PortableReattach"
NOTIFY_LOG = "/run/pwt-notify-reattach.jsonl"


@dataclass(frozen=True)
class SysupdateSetup:
    source: str  # "dir" or "http"
    reattach_arg: str  # image name or path, per vm/systemd/quirks.py
    transfer_suffix: str = ".transfer"  # ".conf" before 257, per vm/systemd/quirks.py
    instances_max: int = 2
    name: str = field(kw_only=True)  # the subject's portable prefix
    # Where the versions go: /var/lib/portables behind the CurrentSymlink= <name>.raw, or a
    # versioned directory <name>.v/ (no symlink: portabled picks the newest itself).
    target_dir: str = field(default=PORTABLES_DIR, kw_only=True)
    current_symlink: bool = field(default=True, kw_only=True)
    # The component the transfer belongs to (/etc/sysupdate.<component>.d/), or None: the
    # host's /etc/sysupdate.d/.
    component: str | None = field(default=None, kw_only=True)

    @property
    def transfer_path(self) -> str:
        return transfer_stem(self.name, self.component) + self.transfer_suffix

    @property
    def transfer_dir(self) -> str:
        return transfer_dir(self.component)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {self.source!r}")

    def transfer(self) -> str:
        if self.source == "dir":
            source = f"Type=regular-file\nPath={SOURCE_DIR}"
        else:
            source = f"Type=url-file\nPath=http://127.0.0.1:{HTTP_PORT}/"
        symlink = (f"CurrentSymlink={self.target_dir}/{self.name}.raw\n"
                   if self.current_symlink else "")
        return f"""\
# Rendered by vm/systemd/sysupdate.py: {self.name} images from {self.source} source.
[Transfer]
# The HTTP source publishes SHA256SUMS (checked) but no signature: no gpg verification.
Verify=no

[Source]
{source}
MatchPattern={self.name}_@v.raw

[Target]
Type=regular-file
Path={self.target_dir}
MatchPattern={self.name}_@v.raw
{symlink}InstancesMax={self.instances_max}
"""

    @property
    def component_path(self) -> str | None:
        """The component's description file (sysupdate.components(5)), or None: no component."""
        return None if self.component is None else component_path(self.component)

    def component_file(self) -> str:
        return f"""\
# Rendered by vm/systemd/sysupdate.py: {self.name}, updated apart from the OS.
[Component]
Description=The portable service {self.name}
"""

    def rollout_unit(self) -> str:
        return f"""\
[Unit]
Description=Roll out the newest {self.name}: sysupdate, then reattach

[Service]
Type=oneshot
# Exit status 0 only when a newer version is available: nothing to do otherwise.
ExecCondition={SYSUPDATE} check-new
ExecStart={SYSUPDATE} update
ExecStart=/usr/bin/portablectl reattach --now {self.reattach_arg}
"""

    def pin_unit(self) -> str:
        return f"""\
[Unit]
Description=Install {self.name} version %i with sysupdate and run it

[Service]
Type=oneshot
ExecStart={SYSUPDATE} update %i
ExecStart=/usr/bin/portablectl reattach --now {self.reattach_arg}
"""

    def notify_socket_unit(self) -> str:
        return f"""\
[Unit]
Description=Reattach {self.name} when systemd-sysupdate completes an update

[Socket]
ListenStream={NOTIFY_SOCKET}
# One service per call: sysupdate connects, calls OnCompletedUpdate once, waits for the reply.
Accept=yes
# No stale socket is left for sysupdate to call once the listener is gone.
RemoveOnStop=yes
"""

    def notify_service_unit(self, program: str) -> str:
        """The service of one notify call: ``program`` (notify_reattach.py) on the connection."""
        listener = shlex.join(["/usr/bin/python3", program, "--log", NOTIFY_LOG, "--",
                               "/usr/bin/portablectl", "reattach", "--now"])
        return f"""\
[Unit]
Description=Reattach {self.name} after sysupdate's OnCompletedUpdate call

[Service]
ExecStart={listener} {self.reattach_arg}
StandardInput=socket
StandardOutput=socket
StandardError=journal
"""


def transfer_dir(component: str | None = None) -> str:
    """/etc/sysupdate.d, or a component's /etc/sysupdate.<component>.d."""
    return TRANSFER_DIR if component is None else f"/etc/sysupdate.{component}.d"


def component_path(component: str) -> str:
    """A component's description file: /etc/sysupdate.<component>.component."""
    return f"/etc/sysupdate.{component}.component"


def transfer_stem(name: str, component: str | None = None) -> str:
    return f"{transfer_dir(component)}/50-{name}"


def reattach_arg(target: str, matches: list[str]) -> str:
    """``portablectl reattach``'s arguments for a layout's ``target`` and unit prefixes, as a
    unit's command line takes them."""
    return shlex.join([target, *matches])


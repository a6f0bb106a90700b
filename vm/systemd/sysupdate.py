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

from dataclasses import dataclass, field

SYSUPDATE = "/usr/lib/systemd/systemd-sysupdate"
SOURCE_DIR = "/var/lib/pwt-source"
HTTP_PORT = 8090
HTTP_UNIT = "pwt-source-http.service"
TRANSFER_DIR = "/etc/sysupdate.d"  # 50-<name> + .transfer or .conf (quirks)
ROLLOUT_UNIT = "pwt-rollout.service"
PIN_UNIT = "pwt-pin@.service"
SOURCES = ("dir", "http")


@dataclass(frozen=True)
class SysupdateSetup:
    source: str  # "dir" or "http"
    reattach_arg: str  # image name or path, per vm/systemd/quirks.py
    transfer_suffix: str = ".transfer"  # ".conf" before 257, per vm/systemd/quirks.py
    instances_max: int = 2
    name: str = field(kw_only=True)  # the subject's portable prefix

    @property
    def transfer_path(self) -> str:
        return transfer_stem(self.name) + self.transfer_suffix

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {self.source!r}")

    def transfer(self) -> str:
        if self.source == "dir":
            source = f"Type=regular-file\nPath={SOURCE_DIR}"
        else:
            source = f"Type=url-file\nPath=http://127.0.0.1:{HTTP_PORT}/"
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
Path=/var/lib/portables
MatchPattern={self.name}_@v.raw
CurrentSymlink=/var/lib/portables/{self.name}.raw
InstancesMax={self.instances_max}
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


def transfer_stem(name: str) -> str:
    return f"{TRANSFER_DIR}/50-{name}"


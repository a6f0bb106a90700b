"""Automatic rollout with systemd-sysupdate: from "new version published" to "new version
running" without the test calling portablectl.

- A transfer (``/etc/sysupdate.d/50-portable-walkthrough.transfer``, ``.conf`` before 257) takes
  ``portable-walkthrough_@v.raw`` from a source into ``/var/lib/portables``, keeps at most
  ``InstancesMax=`` versions and moves the ``portable-walkthrough.raw`` symlink
  (``CurrentSymlink=``). Two sources: a local directory (``regular-file``) and an HTTP server on
  the guest's loopback (``url-file``, with the ``SHA256SUMS`` manifest sysupdate expects).
- ``pwt-rollout.service`` (oneshot): ``check-new`` as ExecCondition, ``update``, then
  ``portablectl reattach --now`` with the argument the systemd version needs (vm/quirks.py).
  ``pwt-pin@VERSION.service`` installs a given version (sysupdate's own pinning: ``update
  VERSION``) and reattaches: the rollback.
"""

from __future__ import annotations

from dataclasses import dataclass

SYSUPDATE = "/usr/lib/systemd/systemd-sysupdate"
SOURCE_DIR = "/var/lib/pwt-source"
HTTP_PORT = 8090
HTTP_UNIT = "pwt-source-http.service"
TRANSFER_STEM = "/etc/sysupdate.d/50-portable-walkthrough"  # + .transfer or .conf (quirks)
ROLLOUT_UNIT = "pwt-rollout.service"
PIN_UNIT = "pwt-pin@.service"
SOURCES = ("dir", "http")


@dataclass(frozen=True)
class SysupdateSetup:
    source: str  # "dir" or "http"
    reattach_arg: str  # image name or path, per vm/quirks.py
    transfer_suffix: str = ".transfer"  # ".conf" before 257, per vm/quirks.py
    instances_max: int = 2

    @property
    def transfer_path(self) -> str:
        return TRANSFER_STEM + self.transfer_suffix

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {self.source!r}")

    def transfer(self) -> str:
        if self.source == "dir":
            source = f"Type=regular-file\nPath={SOURCE_DIR}"
        else:
            source = f"Type=url-file\nPath=http://127.0.0.1:{HTTP_PORT}/"
        return f"""\
# Rendered by vm/sysupdate.py: portable-walkthrough images from {self.source} source.
[Transfer]
# The HTTP source publishes SHA256SUMS (checked) but no signature: no gpg verification.
Verify=no

[Source]
{source}
MatchPattern=portable-walkthrough_@v.raw

[Target]
Type=regular-file
Path=/var/lib/portables
MatchPattern=portable-walkthrough_@v.raw
CurrentSymlink=/var/lib/portables/portable-walkthrough.raw
InstancesMax={self.instances_max}
"""

    def rollout_unit(self) -> str:
        return f"""\
[Unit]
Description=Roll out the newest portable-walkthrough: sysupdate, then reattach

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
Description=Install portable-walkthrough version %i with sysupdate and run it

[Service]
Type=oneshot
ExecStart={SYSUPDATE} update %i
ExecStart=/usr/bin/portablectl reattach --now {self.reattach_arg}
"""


def sha256sums_command(directory: str = SOURCE_DIR) -> str:
    """Shell: (re)write the SHA256SUMS manifest (sha256sum's own format) of the images."""
    return (f"cd {directory} && sha256sum portable-walkthrough_*.raw > SHA256SUMS.tmp"
            " && mv SHA256SUMS.tmp SHA256SUMS")

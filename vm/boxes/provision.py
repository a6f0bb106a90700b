"""What a downloaded box (Fedora) needs installed before the scenarios, by release and provider.

Locally built Debian boxes have everything baked in (see vm/boxes/recipes.py BASE_PACKAGES). A
Fedora box is provisioned once, in a VM whose network is open for that (see
vm/boxes/fedora_box.py), and the result is packaged as a derived box that every run then boots
restricted like a Debian box.

Where portabled lives: `portablectl` is in `systemd` on every Fedora; `systemd-portabled` is in
`systemd-udev` up to Fedora 44 (measured on 42, PLATFORM.md; not re-checked for 43/44 here) and
in `systemd-container` from Fedora 45 on (the split named in issue 13). ab is in `httpd-tools`.
"""

from __future__ import annotations

import shlex

from pytest_portable_upgrade.boxes.recipes import BoxRecipe

DNF_PACKAGES = ("httpd-tools", "haproxy", "python3", "procps-ng")
# The first release whose systemd-portabled is in systemd-container, not systemd-udev.
PORTABLED_IN_CONTAINER_FROM = 45

# VirtualBox's NAT has no equivalent of qemu's `restrict=on`: the derived box drops what the
# guest itself starts towards the outside (replies to SSH through the port forward, loopback
# and DHCP for its own address stay allowed). Loaded at boot, so the provisioning VM that
# writes it keeps its network until it is packaged.
NO_EGRESS_RULES = """\
table inet pwt_no_egress {
  chain output {
    type filter hook output priority 0; policy drop;
    oifname "lo" accept
    ct state established,related accept
    udp sport 68 udp dport 67 accept
  }
}
"""
NO_EGRESS_UNIT = """\
[Unit]
Description=pwt: no traffic started by the guest leaves it (VirtualBox NAT cannot restrict)
DefaultDependencies=no
Before=network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f /etc/pwt/no-egress.nft

[Install]
WantedBy=multi-user.target
"""


def portabled_package(release: int) -> str:
    """The Fedora package that ships systemd-portabled in ``release``."""
    return "systemd-container" if release >= PORTABLED_IN_CONTAINER_FROM else "systemd-udev"


def _write_file(path: str, text: str, mode: str = "0644") -> str:
    return (f"install -D -m {mode} /dev/null {path} && "
            f"printf '%s' {shlex.quote(text)} > {path}")


def provision_commands(recipe: BoxRecipe, provider: str = "libvirt") -> list[str]:
    """Shell commands (run as root in the guest, network open) that make a downloaded box
    ready for the scenarios; [] for boxes built here with everything baked in."""
    if recipe.buildable_offline:
        return []
    if recipe.package_manager != "dnf" or recipe.fedora_release is None:
        raise ValueError(f"box {recipe.name}: no provisioning known for "
                         f"{recipe.package_manager!r} boxes that are not Fedora")
    packages = [*DNF_PACKAGES, portabled_package(recipe.fedora_release)]
    if provider == "virtualbox":
        packages.append("nftables")
    commands = [
        f"dnf install -y --setopt=install_weak_deps=False {' '.join(packages)}",
        # portabled is socket/D-Bus activated; make its unit known after the install.
        "systemctl daemon-reload",
        # Fail the provisioning here, not the first scenario, if the split moved again.
        "command -v portablectl && test -x /usr/lib/systemd/systemd-portabled",
    ]
    if provider == "virtualbox":
        commands += [
            _write_file("/etc/pwt/no-egress.nft", NO_EGRESS_RULES),
            _write_file("/etc/systemd/system/pwt-no-egress.service", NO_EGRESS_UNIT),
            "nft -c -f /etc/pwt/no-egress.nft",  # the rules parse (checked, not applied)
            "systemctl enable pwt-no-egress.service",
        ]
    commands.append("dnf clean all")  # the derived box should not carry the package cache
    return commands

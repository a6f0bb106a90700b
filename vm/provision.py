"""What a guest needs installed before the scenarios, by package manager.

Locally built Debian boxes have everything baked in (see vm/boxes.py BASE_PACKAGES); downloaded
boxes (Fedora) are provisioned after boot. On Fedora `portablectl` is in `systemd` and
`systemd-portabled` in `systemd-udev`; ab is in `httpd-tools`.
"""

from __future__ import annotations

from vm.boxes import BoxRecipe

DNF_PACKAGES = ("httpd-tools", "haproxy", "python3", "systemd-udev", "procps-ng")
APT_PACKAGES = ("apache2-utils", "haproxy", "python3", "systemd-container", "procps")


def provision_commands(recipe: BoxRecipe) -> list[str]:
    """Shell commands (run as root in the guest) that install what the scenarios use."""
    if recipe.buildable_offline:
        return []  # baked into the box
    if recipe.package_manager == "dnf":
        return [
            f"dnf install -y --setopt=install_weak_deps=False {' '.join(DNF_PACKAGES)}",
            # portabled is socket/D-Bus activated; make sure its unit is known after install.
            "systemctl daemon-reload",
        ]
    if recipe.package_manager == "apt":
        return [
            "apt-get update -q",
            f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {' '.join(APT_PACKAGES)}",
        ]
    raise ValueError(f"box {recipe.name}: unknown package manager {recipe.package_manager!r}")

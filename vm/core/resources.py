"""Files shipped in the package (build scripts, guest programs, keys, the default subject),
found with importlib.resources: the same code reads them from a checkout and from an install."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from pytest_portable_upgrade.core.errors import HarnessError


def resource(package: str, name: str) -> Path:
    """The file ``name`` of ``package`` as a path on disk (scripts run it, rsync copies it)."""
    found = files(package).joinpath(name)
    if not isinstance(found, Path):  # e.g. imported from a zip: nothing to hand to bash
        raise HarnessError(f"{package}/{name} is not a file on disk ({found!r}); install the "
                           "package from a wheel or a directory, not a zip")
    return found

"""How the subject's versions are laid out for portabled in the guest, and what each layout
hands ``portablectl``.

- ``image``: a whole image per version behind the symlink ``<name>.raw`` (portable.py's own
  steps: the symlink flipped, then ``reattach --now``);
- ``extension``: one base image (the runtime) that stays, and one app extension per version:
  ``portablectl attach --extension <name>_1.raw <name>-base.raw <name>`` and
  ``reattach --now --extension <name>_2.raw …``; the unit runs RootImage= the base and
  ExtensionImages= the extension;
- ``versioned-dir``: a versioned directory ``<name>.v/`` holding every version up to the one
  that runs (vpick, systemd.v(7)): the upgrade drops the new version's file into it, the
  rollback removes the newest, and ``reattach --now <name>.v/`` picks the newest left.

Each is attached by path with the subject's name as the unit prefix: the images are not in
portabled's search path (the whole images of the other scenarios are, under the same name).
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_portable_upgrade.subject.spec import Subject

KINDS = ("image", "extension", "versioned-dir")
# The extension layout's base and extensions, apart from the whole images of the same names.
EXTENSION_DIR = "/var/lib/pwt-extensions"
# The versioned directory's parent: made anew for each scenario, removed by the reset.
VERSIONED_ROOT = "/var/lib/pwt-versioned"


@dataclass(frozen=True)
class Layout:
    kind: str
    subject: Subject

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"layout must be one of {', '.join(KINDS)}, not {self.kind!r}")

    @property
    def base(self) -> str:
        """The extension layout's base image in the guest."""
        return f"{EXTENSION_DIR}/{self.subject.base_name}"

    def extension(self, version: int) -> str:
        return f"{EXTENSION_DIR}/{self.subject.image_name(version)}"

    @property
    def versioned_dir(self) -> str:
        return f"{VERSIONED_ROOT}/{self.subject.name}.v"

    def versioned_file(self, version: int) -> str:
        return f"{self.versioned_dir}/{self.subject.image_name(version)}"

    @property
    def target(self) -> str:
        """The image ``portablectl`` attaches, reattaches and asks is-attached of (the
        base, or the versioned directory: a trailing slash, as systemd.v(7) writes it)."""
        if self.kind == "extension":
            return self.base
        if self.kind == "versioned-dir":
            return f"{self.versioned_dir}/"
        raise ValueError("the image layout attaches the symlink (PortableService.symlink)")

    def extensions(self, version: int) -> list[str]:
        """The extensions ``version`` runs with (none outside the extension layout)."""
        return [self.extension(version)] if self.kind == "extension" else []

    def extension_args(self, version: int) -> list[str]:
        return [arg for e in self.extensions(version) for arg in ("--extension", e)]

    @property
    def matches(self) -> list[str]:
        """The unit prefixes: the subject's name (an extension's own name, the base's, or
        the directory's would be the default otherwise)."""
        return [self.subject.name]

    def reattach_argv(self, portablectl: tuple[str, ...], flags: tuple[str, ...],
                      version: int) -> list[str]:
        return [*portablectl, "reattach", "--now", *flags, *self.extension_args(version),
                self.target, *self.matches]

    def expected_image(self, version: int) -> str:
        """What the unit's RootImage= names when ``version`` runs."""
        if self.kind == "extension":
            return self.base
        if self.kind == "versioned-dir":
            return self.versioned_file(version)
        raise ValueError("the image layout's image is the scope's (Scope.image_path)")

    def versions_at_attach(self, from_version: int) -> list[int]:
        """The versioned directory at the attach holds every version up to the one that runs:
        an upgrade adds a newer one, a rollback removes the newest."""
        return [v for v in sorted(self.subject.versions) if v <= from_version]

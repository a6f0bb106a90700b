"""Download Fedora's own Cloud Vagrant boxes and verify them before Vagrant sees them.

A box comes from a pinned URL on Fedora's download servers (never a Vagrant Cloud name, whose
resolution was unreliable). It is trusted only when

1. the release's ``CHECKSUM`` file (clear-signed) has a good signature by that release's key,
   kept in ``vm/boxes/keys/`` and pinned here by fingerprint (checked with ``gpgv``), and
2. the ``.box`` file's SHA-256 is the one that signed text lists for it.

The checksum is read from the text gpgv verified (its ``--output``), never from the file as
downloaded: the armour around a clear-signed message is not covered by the signature.

Names (see vm/boxes/keys/README.md for the keys): ``releases/43`` compose ``1.6`` and
``releases/44`` compose ``1.7`` were seen in many public Vagrantfiles and scripts pointing at
download.fedoraproject.org (``Fedora-Cloud-Base-Vagrant-libvirt-43-1.6.x86_64.vagrant.libvirt
.box``, ``Fedora-Cloud-43-1.6-x86_64-CHECKSUM``, ``...-44-1.7...``). The VirtualBox file name
follows the one public reference found for 43 (``Fedora-Cloud-Base-Vagrant-VirtualBox-43-1.6
.x86_64.vagrant.virtualbox.box``). **No compose of Fedora 45 could be confirmed**: its compose
is None, and the CHECKSUM file's name is read from the release's image directory listing (the
signature check still rests on the pinned 45 key). Pin it once known.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_portable_upgrade.core.cache import file_sha256
from pytest_portable_upgrade.core.errors import HarnessError, PrerequisiteMissing
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.core.resources import resource

KEY_DIR = resource("pytest_portable_upgrade.boxes", "keys")
MIRROR = "https://download.fedoraproject.org/pub/fedora/linux/releases"
# A read that stalls this long ends the download (a box is ~600-900 MB, so no total bound).
READ_TIMEOUT_S = 60.0
PROVIDER_FILE = {
    "libvirt": ("Vagrant-libvirt", "vagrant.libvirt.box"),
    "virtualbox": ("Vagrant-VirtualBox", "vagrant.virtualbox.box"),
}


@dataclass(frozen=True)
class FedoraRelease:
    """One supported Fedora release: its Cloud compose and the key that signs its CHECKSUM."""

    release: int
    compose: str | None  # e.g. "1.6"; None: not confirmed, read from the directory listing
    fingerprint: str  # of RPM-GPG-KEY-fedora-<release>-primary, 40 hex digits

    @property
    def images_url(self) -> str:
        return f"{MIRROR}/{self.release}/Cloud/x86_64/images/"

    @property
    def key_file(self) -> Path:
        return KEY_DIR / f"RPM-GPG-KEY-fedora-{self.release}-primary"


FEDORA_RELEASES: dict[int, FedoraRelease] = {
    r.release: r
    for r in (
        FedoraRelease(43, "1.6", "C6E7F081CF80E13146676E88829B606631645531"),
        FedoraRelease(44, "1.7", "36F612DCF27F7D1A48A835E4DBFCF71C6D9F90A6"),
        FedoraRelease(45, None, "4F50A6114CD5C6976A7F1179655A4B02F577861E"),
    )
}

# (url, destination) -> None; raises OSError (urllib's errors are OSErrors) on failure.
Downloader = Callable[[str, Path], None]


def get_release(release: int) -> FedoraRelease:
    try:
        return FEDORA_RELEASES[release]
    except KeyError:
        known = ", ".join(str(r) for r in sorted(FEDORA_RELEASES))
        raise ValueError(f"Fedora {release} is not supported; supported: {known}") from None


def checksum_name(release: int, compose: str) -> str:
    return f"Fedora-Cloud-{release}-{compose}-x86_64-CHECKSUM"


def box_name(release: int, compose: str, provider: str) -> str:
    """The published file name of the Cloud Vagrant box for ``provider``."""
    try:
        kind, suffix = PROVIDER_FILE[provider]
    except KeyError:
        raise ValueError(f"Fedora boxes exist for libvirt and virtualbox, not {provider!r}") \
            from None
    return f"Fedora-Cloud-Base-{kind}-{release}-{compose}.x86_64.{suffix}"


def compose_from_listing(html: str, release: int) -> str:
    """The one compose whose CHECKSUM file the image directory listing names."""
    found: set[str] = set(re.findall(rf"Fedora-Cloud-{release}-(\d+\.\d+)-x86_64-CHECKSUM", html))
    if len(found) != 1:
        seen = ", ".join(sorted(found)) or "none"
        raise HarnessError(
            f"cannot tell the Fedora {release} Cloud compose from its image directory "
            f"(CHECKSUM files seen: {seen}): pin it in FEDORA_RELEASES in vm/boxes/fedora.py"
        )
    return found.pop()


def parse_checksums(signed_text: str) -> dict[str, str]:
    """File name -> SHA-256 of a Fedora CHECKSUM text (BSD tag lines; ``#`` lines are sizes)."""
    sums: dict[str, str] = {}
    for line in signed_text.splitlines():
        match = re.fullmatch(r"SHA256 \((.+)\) = ([0-9a-fA-F]{64})", line.strip())
        if match:
            sums[match.group(1)] = match.group(2).lower()
    return sums


def dearmor(armored: str) -> bytes:
    """The binary key packets of an ASCII-armoured public key (gpgv reads binary keyrings)."""
    lines = [line.strip() for line in armored.splitlines()]
    try:
        start = lines.index("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        end = lines.index("-----END PGP PUBLIC KEY BLOCK-----", start)
        blank = lines.index("", start)  # armour headers end at the first empty line
    except ValueError:
        raise ValueError("not an ASCII-armoured OpenPGP public key block") from None
    body = [line for line in lines[blank + 1:end] if not line.startswith("=")]  # "=" CRC line
    return base64.b64decode("".join(body), validate=True)


def verify_signed_checksums(checksum_file: Path, fedora: FedoraRelease, work: Path,
                            gpgv: str = "gpgv") -> str:
    """The text of ``checksum_file`` that gpgv verified against the release's pinned key."""
    if shutil.which(gpgv) is None:
        raise PrerequisiteMissing(
            f"{gpgv} is missing (needed to check Fedora's signed CHECKSUM): run ./setup-host"
        )
    if not fedora.key_file.exists():
        raise HarnessError(
            f"the Fedora {fedora.release} release key {fedora.key_file} is missing: add it "
            "as described in vm/boxes/keys/README.md"
        )
    work.mkdir(parents=True, exist_ok=True)
    keyring = work / f"fedora-{fedora.release}.gpg"
    keyring.write_bytes(dearmor(fedora.key_file.read_text()))
    verified = work / f"{checksum_file.name}.verified"
    verified.unlink(missing_ok=True)
    result = subprocess.run(
        [gpgv, "--keyring", str(keyring), "--status-fd", "1", "--output", str(verified),
         str(checksum_file)],
        capture_output=True, text=True, check=False,
    )
    signers = [line.split()[-1] for line in result.stdout.splitlines()
               if line.startswith("[GNUPG:] VALIDSIG ")]
    if result.returncode != 0 or fedora.fingerprint not in signers:
        verified.unlink(missing_ok=True)
        why = (result.stderr.strip().splitlines() or ["no valid signature"])[-1]
        raise HarnessError(
            f"{checksum_file.name} is not signed by the Fedora {fedora.release} key "
            f"{fedora.fingerprint} ({why}): delete {checksum_file} to download it again"
        )
    return verified.read_text()


def urllib_download(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (through ``dest.part``, so a cut download is never used)."""
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as response, part.open("wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    part.replace(dest)


@dataclass(frozen=True)
class FetchedBox:
    """A Fedora ``.box`` on disk whose SHA-256 the release's signed CHECKSUM lists."""

    path: Path
    sha256: str
    release: int
    compose: str


def fetch_verified_box(release: int, provider: str, directory: Path,
                       download: Downloader = urllib_download, gpgv: str = "gpgv") -> FetchedBox:
    """Download (once) and verify the Cloud Vagrant box of ``release`` for ``provider``.

    Every failure is one HarnessError line; a file that fails verification is deleted."""
    fedora = get_release(release)
    directory.mkdir(parents=True, exist_ok=True)
    compose = fedora.compose
    try:
        if compose is None:
            listing = directory / f"fedora-{release}-images.html"
            download(fedora.images_url, listing)
            compose = compose_from_listing(listing.read_text(errors="replace"), release)
            log.info(f"Fedora {release}: compose {compose} (not pinned; read from "
                     f"{fedora.images_url})")
        sums_file = directory / checksum_name(release, compose)
        name = box_name(release, compose, provider)
        if not sums_file.exists():
            download(fedora.images_url + sums_file.name, sums_file)
        want = parse_checksums(verify_signed_checksums(sums_file, fedora, directory, gpgv))
        if name not in want:
            raise HarnessError(f"{sums_file.name} lists no {name}: is {provider} published for "
                               f"Fedora {release}? See {fedora.images_url}")
        box = directory / name
        if box.exists() and file_sha256(box) == want[name]:
            log.info(f"{name}: cached, SHA-256 matches the signed CHECKSUM")
            return FetchedBox(box, want[name], release, compose)
        with log.nested(f"downloading {fedora.images_url}{name}"):
            download(fedora.images_url + name, box)
    except OSError as e:
        raise HarnessError(
            f"cannot download Fedora {release} ({e}): is this host offline? Fedora boxes need "
            "internet; the debian-* boxes are built here without it"
        ) from None
    got = file_sha256(box)
    if got != want[name]:
        box.unlink()
        raise HarnessError(f"{name}: SHA-256 {got} is not {want[name]} from the signed "
                           f"{sums_file.name}; the file was deleted, run again to re-download")
    return FetchedBox(box, got, release, compose)

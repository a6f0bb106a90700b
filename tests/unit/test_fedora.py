"""vm/boxes/fedora.py: names, the signed CHECKSUM, the SHA-256 check and the download path (no
network: a fake downloader serves files from a dict)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support import DATA

from pytest_portable_upgrade.boxes import fedora
from pytest_portable_upgrade.boxes.fedora import (
    FEDORA_RELEASES,
    FedoraRelease,
    box_name,
    checksum_name,
    compose_from_listing,
    dearmor,
    fetch_verified_box,
    parse_checksums,
    verify_signed_checksums,
)
from pytest_portable_upgrade.core.errors import HarnessError, PrerequisiteMissing

SAMPLES = DATA / "fedora"
SIGNED = SAMPLES / "Fedora-Cloud-43-1.6-x86_64-CHECKSUM"
TEST_KEY_FPR = "205F6825CC706DD573B2A1B448F44A3DC083BD2A"
LIBVIRT_BOX = b"pwt test: fake libvirt box of Fedora 43\n"
VBOX_BOX = b"pwt test: fake virtualbox box of Fedora 43\n"
IMAGES = "https://download.fedoraproject.org/pub/fedora/linux/releases/43/Cloud/x86_64/images/"
LIBVIRT_NAME = "Fedora-Cloud-Base-Vagrant-libvirt-43-1.6.x86_64.vagrant.libvirt.box"
needs_gpgv = pytest.mark.skipif(shutil.which("gpgv") is None, reason="gpgv is not installed")


@pytest.fixture
def test_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FedoraRelease:
    """Fedora 43 as the tests see it: the sample CHECKSUM's throw-away key stands in for
    Fedora's (whose secret half nobody here has)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(SAMPLES / "test-signing-key.asc", keys / "RPM-GPG-KEY-fedora-43-primary")
    monkeypatch.setattr(fedora, "KEY_DIR", keys)
    release = FedoraRelease(43, "1.6", TEST_KEY_FPR)
    monkeypatch.setitem(FEDORA_RELEASES, 43, release)
    return release


class FakeMirror:
    """A Downloader over a dict url -> bytes; remembers what was asked; unknown urls fail the
    way urllib does when offline (an OSError)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.asked: list[str] = []

    def __call__(self, url: str, dest: Path) -> None:
        self.asked.append(url)
        if url not in self.files:
            raise OSError(f"<urlopen error [Errno -3] Temporary failure in name resolution: {url}>")
        dest.write_bytes(self.files[url])


def mirror(box: bytes = LIBVIRT_BOX) -> FakeMirror:
    return FakeMirror({IMAGES + SIGNED.name: SIGNED.read_bytes(), IMAGES + LIBVIRT_NAME: box})


# --- names ----------------------------------------------------------------------------------

def test_published_names_of_43() -> None:
    assert checksum_name(43, "1.6") == "Fedora-Cloud-43-1.6-x86_64-CHECKSUM"
    assert box_name(43, "1.6", "libvirt") == LIBVIRT_NAME
    assert box_name(43, "1.6", "virtualbox") == (
        "Fedora-Cloud-Base-Vagrant-VirtualBox-43-1.6.x86_64.vagrant.virtualbox.box")
    assert FEDORA_RELEASES[43].images_url == IMAGES
    with pytest.raises(ValueError, match="not 'hyperv'"):
        box_name(43, "1.6", "hyperv")


def test_supported_releases_and_their_pins() -> None:
    assert sorted(FEDORA_RELEASES) == [43, 44, 45]
    assert FEDORA_RELEASES[43].compose == "1.6" and FEDORA_RELEASES[44].compose == "1.7"
    assert FEDORA_RELEASES[45].compose is None  # not confirmed: read from the listing
    with pytest.raises(ValueError, match="Fedora 42 is not supported; supported: 43, 44, 45"):
        fedora.get_release(42)


def test_compose_is_read_from_the_directory_listing_when_not_pinned() -> None:
    html = ('<a href="Fedora-Cloud-45-1.3-x86_64-CHECKSUM">Fedora-Cloud-45-1.3-x86_64-CHECKSUM'
            '</a>\n<a href="Fedora-Cloud-Base-Generic-45-1.3.x86_64.qcow2">...</a>')
    assert compose_from_listing(html, 45) == "1.3"
    with pytest.raises(HarnessError, match=r"seen: 1.3, 1.4\): pin it in FEDORA_RELEASES"):
        compose_from_listing(html + "Fedora-Cloud-45-1.4-x86_64-CHECKSUM", 45)
    with pytest.raises(HarnessError, match="seen: none"):
        compose_from_listing("<html></html>", 45)


# --- the keys kept in the repository ----------------------------------------------------------

@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
@pytest.mark.parametrize("release", sorted(FEDORA_RELEASES))
def test_each_kept_key_is_exactly_the_pinned_fedora_key(release: int, tmp_path: Path) -> None:
    pinned = FEDORA_RELEASES[release]
    out = subprocess.run(
        ["gpg", "--homedir", str(tmp_path), "--with-colons", "--show-keys",
         str(pinned.key_file)],
        capture_output=True, text=True, check=True, env={**os.environ, "GNUPGHOME": str(tmp_path)},
    ).stdout
    primary = [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")][:1]
    uids = [line.split(":")[9] for line in out.splitlines() if line.startswith("uid:")]
    assert primary == [pinned.fingerprint]
    assert uids == [f"Fedora ({release}) <fedora-{release}-primary@fedoraproject.org>"]


def test_dearmor_gives_the_binary_key_gpgv_reads() -> None:
    binary = dearmor(FEDORA_RELEASES[43].key_file.read_text())
    assert binary[0] in (0x99, 0xC6)  # a public-key packet, old or new format
    with pytest.raises(ValueError, match="not an ASCII-armoured"):
        dearmor("hello")


# --- the CHECKSUM file ----------------------------------------------------------------------

def test_checksums_are_read_from_bsd_tag_lines_and_size_comments_ignored() -> None:
    sums = parse_checksums(SIGNED.read_text())
    assert len(sums) == 7
    assert sums[LIBVIRT_NAME] == (
        "bbb905822c61b16168ffc0d3a882a752e0f4a83858744b9fdf0202a40bd03712")
    assert not any(name.startswith("#") for name in sums)
    assert parse_checksums("SHA256 (x) = 123\n# x: 3 bytes\n") == {}  # not 64 hex digits


@needs_gpgv
def test_a_good_signature_gives_the_signed_text(test_key: FedoraRelease, tmp_path: Path) -> None:
    text = verify_signed_checksums(SIGNED, test_key, tmp_path / "work")
    assert "BEGIN PGP" not in text  # the armour is not part of what was verified
    assert parse_checksums(text) == parse_checksums(SIGNED.read_text())


@needs_gpgv
def test_a_changed_checksum_breaks_the_signature(test_key: FedoraRelease, tmp_path: Path) -> None:
    tampered = tmp_path / SIGNED.name
    tampered.write_text(SIGNED.read_text().replace("bbb905822c61", "0000000000ff"))
    with pytest.raises(HarnessError) as err:
        verify_signed_checksums(tampered, test_key, tmp_path / "work")
    assert f"is not signed by the Fedora 43 key {TEST_KEY_FPR}" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "work" / f"{SIGNED.name}.verified").exists()


@needs_gpgv
def test_text_slipped_into_the_armour_header_is_refused(test_key: FedoraRelease,
                                                        tmp_path: Path) -> None:
    """The lines between "Hash:" and the blank line are outside the signed text; gpgv 2.2
    calls such a file a BAD signature, and nothing of it is returned."""
    forged = tmp_path / SIGNED.name
    forged.write_text(SIGNED.read_text().replace(
        "Hash: SHA256\n", f"Hash: SHA256\nSHA256 ({LIBVIRT_NAME}) = {'0' * 64}\n"))
    with pytest.raises(HarnessError, match="BAD signature"):
        verify_signed_checksums(forged, test_key, tmp_path / "work")
    assert not (tmp_path / "work" / f"{SIGNED.name}.verified").exists()


@needs_gpgv
def test_a_signature_by_another_key_is_refused(tmp_path: Path) -> None:
    """The real Fedora 43 key did not sign the sample: refused, naming the pinned key."""
    with pytest.raises(HarnessError, match=r"not signed by the Fedora 43 key C6E7F081.*No public"):
        verify_signed_checksums(SIGNED, FEDORA_RELEASES[43], tmp_path)


@needs_gpgv
def test_a_valid_signature_by_a_key_other_than_the_pinned_one_is_refused(
        test_key: FedoraRelease, tmp_path: Path) -> None:
    """Someone swaps the key file: gpgv is happy, the fingerprint pin is not."""
    pinned_elsewhere = FedoraRelease(43, "1.6", FEDORA_RELEASES[44].fingerprint)
    with pytest.raises(HarnessError, match="not signed by the Fedora 43 key 36F612DC"):
        verify_signed_checksums(SIGNED, pinned_elsewhere, tmp_path)


def test_missing_gpgv_is_one_line_naming_setup_host(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteMissing) as err:
        verify_signed_checksums(SIGNED, FEDORA_RELEASES[43], tmp_path, gpgv="gpgv-not-here")
    assert str(err.value) == ("gpgv-not-here is missing (needed to check Fedora's signed "
                              "CHECKSUM): run ./setup-host")


@needs_gpgv
def test_missing_key_is_one_line_naming_the_fix(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setattr(fedora, "KEY_DIR", tmp_path / "no-keys")
    with pytest.raises(HarnessError) as err:
        verify_signed_checksums(SIGNED, FEDORA_RELEASES[43], tmp_path)
    assert "RPM-GPG-KEY-fedora-43-primary is missing: add it as described in " \
           "vm/boxes/keys/README.md" in str(err.value)
    assert "\n" not in str(err.value)


# --- the whole fetch, with a fake downloader -------------------------------------------------

@needs_gpgv
def test_fetch_downloads_checksum_then_box_and_verifies(test_key: FedoraRelease,
                                                        tmp_path: Path) -> None:
    fake = mirror()
    got = fetch_verified_box(43, "libvirt", tmp_path, download=fake)
    assert fake.asked == [IMAGES + SIGNED.name, IMAGES + LIBVIRT_NAME]
    assert got.path == tmp_path / LIBVIRT_NAME and got.path.read_bytes() == LIBVIRT_BOX
    assert (got.release, got.compose) == (43, "1.6")
    # Second time: both files are there and verified again, nothing is downloaded.
    fake.asked.clear()
    assert fetch_verified_box(43, "libvirt", tmp_path, download=fake) == got
    assert fake.asked == []


@needs_gpgv
def test_fetch_of_the_virtualbox_box(test_key: FedoraRelease, tmp_path: Path) -> None:
    name = box_name(43, "1.6", "virtualbox")
    fake = FakeMirror({IMAGES + SIGNED.name: SIGNED.read_bytes(), IMAGES + name: VBOX_BOX})
    assert fetch_verified_box(43, "virtualbox", tmp_path, download=fake).path.name == name


@needs_gpgv
def test_a_box_that_does_not_match_is_deleted_with_one_line(test_key: FedoraRelease,
                                                            tmp_path: Path) -> None:
    with pytest.raises(HarnessError) as err:
        fetch_verified_box(43, "libvirt", tmp_path, download=mirror(b"evil bytes\n"))
    message = str(err.value)
    assert message.startswith(f"{LIBVIRT_NAME}: SHA-256 ")
    assert "bbb905822c61b16168ffc0d3a882a752e0f4a83858744b9fdf0202a40bd03712" in message
    assert "the file was deleted" in message and "\n" not in message
    assert not (tmp_path / LIBVIRT_NAME).exists()


@needs_gpgv
def test_a_corrupt_cached_box_is_downloaded_again(test_key: FedoraRelease,
                                                  tmp_path: Path) -> None:
    (tmp_path / LIBVIRT_NAME).write_bytes(b"half a download")
    fake = mirror()
    assert fetch_verified_box(43, "libvirt", tmp_path, download=fake).path.read_bytes() \
        == LIBVIRT_BOX
    assert IMAGES + LIBVIRT_NAME in fake.asked


@needs_gpgv
def test_unpinned_compose_is_found_then_verified_the_same_way(
        monkeypatch: pytest.MonkeyPatch, test_key: FedoraRelease, tmp_path: Path) -> None:
    monkeypatch.setitem(FEDORA_RELEASES, 43, FedoraRelease(43, None, TEST_KEY_FPR))
    fake = mirror()
    fake.files[IMAGES] = f'<a href="{SIGNED.name}">{SIGNED.name}</a>'.encode()
    assert fetch_verified_box(43, "libvirt", tmp_path, download=fake).compose == "1.6"
    assert fake.asked[0] == IMAGES


def test_offline_is_one_line(test_key: FedoraRelease, tmp_path: Path) -> None:
    with pytest.raises(HarnessError) as err:
        fetch_verified_box(43, "libvirt", tmp_path, download=FakeMirror({}))
    message = str(err.value)
    assert message.startswith("cannot download Fedora 43 (<urlopen error")
    assert "is this host offline?" in message and "debian-*" in message
    assert "\n" not in message


@needs_gpgv
def test_a_provider_fedora_does_not_publish_is_named(
        monkeypatch: pytest.MonkeyPatch, test_key: FedoraRelease, tmp_path: Path) -> None:
    without_vbox = {k: v for k, v in parse_checksums(SIGNED.read_text()).items()
                    if "VirtualBox" not in k}
    monkeypatch.setattr(fedora, "parse_checksums", lambda _text: without_vbox)
    fake = FakeMirror({IMAGES + SIGNED.name: SIGNED.read_bytes()})
    with pytest.raises(HarnessError, match="lists no Fedora-Cloud-Base-Vagrant-VirtualBox-43"):
        fetch_verified_box(43, "virtualbox", tmp_path, download=fake)
    assert fake.asked == [IMAGES + SIGNED.name]  # the box itself was never downloaded

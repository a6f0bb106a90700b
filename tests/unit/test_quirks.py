"""vm/systemd/quirks.py: what portablectl reattach is handed, which systemd (kernel, polkit) is
too old for what, and the version-specific words the verdicts recognise."""

from __future__ import annotations

import pytest

from pytest_portable_upgrade.systemd.quirks import (
    fdstore_preserve_missing,
    leading_numbers,
    reattach_by_name_broken,
    reattach_target,
    sysupdate_missing,
    sysupdate_transfer_suffix,
    unsupported_reason,
    user_attach_refused,
    user_portables_kernel_too_old,
    user_portables_missing,
    user_portables_polkit_too_old,
)

NAME = "portable-walkthrough"
IMAGE = "/var/lib/portables/portable-walkthrough.raw"


@pytest.mark.parametrize("major", [246, 252, 254, 256])
def test_reattach_by_image_path_where_the_name_is_broken(major: int) -> None:
    assert reattach_by_name_broken(major)
    assert reattach_target(major, NAME, IMAGE) == IMAGE


@pytest.mark.parametrize("major", [257, 258])
def test_reattach_by_name_where_it_works(major: int) -> None:
    assert not reattach_by_name_broken(major)
    assert reattach_target(major, NAME, IMAGE) == NAME


def test_unsupported_reason() -> None:
    reason = unsupported_reason(245)
    assert reason is not None
    assert "systemd 245 is older than 246" in reason
    assert "portablectl reattach" in reason
    assert unsupported_reason(246) is None
    assert unsupported_reason(252) is None


@pytest.mark.parametrize(("major", "missing"), [(252, True), (253, True), (254, False),
                                                (257, False), (262, False)])
def test_fdstore_preserve_exists_from_254(major: int, missing: bool) -> None:
    reason = fdstore_preserve_missing(major)
    assert (reason is not None) == missing
    if reason is not None:
        assert f"systemd {major} has no FileDescriptorStorePreserve=" in reason


@pytest.mark.parametrize(("major", "missing"), [(252, True), (257, True), (259, True),
                                                (260, False), (262, False)])
def test_user_portables_exist_from_260(major: int, missing: bool) -> None:
    reason = user_portables_missing(major)
    assert (reason is not None) == missing
    if reason is not None:
        assert f"systemd {major} has no user portable services" in reason
        assert "portablectl --user" in reason


@pytest.mark.parametrize(("major", "suffix"), [(254, ".conf"), (256, ".conf"),
                                               (257, ".transfer"), (262, ".transfer")])
def test_sysupdate_transfer_suffix(major: int, suffix: str) -> None:
    assert sysupdate_transfer_suffix(major) == suffix


@pytest.mark.parametrize("major", [252, 257])
def test_a_guest_without_systemd_sysupdate_is_named_by_its_version(major: int) -> None:
    assert sysupdate_missing(major, installed=True) is None
    assert sysupdate_missing(major, installed=False) == (
        f"systemd {major} in this guest has no systemd-sysupdate")


@pytest.mark.parametrize(("version", "numbers"), [
    ("7.2.13+deb14-amd64", (7, 2, 13)), ("6.1.0-28-amd64", (6, 1, 0)), ("124", (124,)),
    ("6.12rc1", (6, 12)), ("", ()), ("unknown", ()),
])
def test_leading_numbers(version: str, numbers: tuple[int, ...]) -> None:
    assert leading_numbers(version) == numbers


@pytest.mark.parametrize(("kernel", "too_old"), [
    ("6.1.0-28-amd64", True), ("", True), ("6.4.9", True),
    ("6.5.0-1-amd64", False), ("6.12.48+deb13-amd64", False), ("7.2.13+deb14-amd64", False),
])
def test_user_portables_need_kernel_6_5(kernel: str, too_old: bool) -> None:
    reason = user_portables_kernel_too_old(kernel)
    assert (reason is not None) == too_old
    if reason is not None:
        assert reason.startswith("a kernel >= 6.5 (this one is ")


@pytest.mark.parametrize(("polkit", "too_old"), [
    ("122", True), ("", True), ("124", False), ("126", False),
])
def test_user_portables_need_polkit_124(polkit: str, too_old: bool) -> None:
    reason = user_portables_polkit_too_old(polkit)
    assert (reason is not None) == too_old
    if reason is not None:
        assert reason.startswith(f"polkit >= 124 (pkcheck says {polkit or 'nothing'}")


def test_a_refused_user_attach_is_characterised_with_portableds_own_words() -> None:
    """262.1-1's user portabled refused the suite's unsigned images: a characterisation (the
    scenario is skipped with the reason), not a failure of the run."""
    error = ("command failed: `runuser … portablectl --user attach …` exited 1\n--- stderr\n"
             "AttachImage failed: Access denied")
    journal = ("[  901.2] pwt-guest systemd-portabled[1179]: Failed to extract portable metadata "
               "from '/var/lib/pwt-user-portables/portable-walkthrough_1.raw': Permission denied\n")
    why = user_attach_refused(error, journal, 262)
    assert why is not None and why.startswith("characterised on systemd 262")
    assert "Failed to extract portable metadata from '/var/lib/pwt-user-portables" in why
    assert "signed (verity) as in systemd's TEST-29" in why
    # Any other failure of the user scope stays a failure.
    assert user_attach_refused("AttachImage failed: Connection timed out", journal,
                                           262) is None


def test_a_user_attach_refused_for_its_scope_names_the_missing_images() -> None:
    """262.1-1, signed image mounted: the user's portabled refuses a system-scope image."""
    error = ("command failed: `runuser … portablectl --user attach …` exited 1\n--- stderr\n"
             "AttachImage failed: Image /var/lib/pwt-user-portables/portable-walkthrough.raw "
             "portable scope 'system' incompatible with portabled runtime scope 'user'.")
    why = user_attach_refused(error, "", 262)
    assert why is not None and why.startswith("characterised on systemd 262")
    assert "portable scope 'system' incompatible with portabled runtime scope 'user'" in why
    assert "PORTABLE_SCOPE=user" in why


# --- the layouts: extensions (249) and versioned directories (256) ----------------------------
@pytest.mark.parametrize(("major", "missing"), [(248, True), (249, False), (252, False)])
def test_portable_extensions_need_249(major: int, missing: bool) -> None:
    from pytest_portable_upgrade.systemd.quirks import extensions_missing

    why = extensions_missing(major)
    assert (why is not None) == missing
    if why is not None:
        assert why == (f"systemd {major} has no portable extensions (portablectl --extension, "
                       "added in 249)")


@pytest.mark.parametrize(("major", "missing"), [(252, True), (255, True), (256, False),
                                                (257, False), (262, False)])
def test_versioned_directories_need_256(major: int, missing: bool) -> None:
    from pytest_portable_upgrade.systemd.quirks import versioned_dir_missing

    why = versioned_dir_missing(major)
    assert (why is not None) == missing
    if why is not None:
        assert why == (f"systemd {major} has no versioned directories (<name>.v/, vpick: "
                       "added in 256)")


def test_what_follows_a_sysupdate_pull_is_the_statement_of_the_version_looked_at() -> None:
    from pytest_portable_upgrade.systemd.quirks import after_sysupdate_pull

    assert after_sysupdate_pull(257).startswith("as seen on 257: systemd-sysupdate.service")
    assert after_sysupdate_pull(260).startswith("as seen on 257: ")  # the newest at or below
    assert "OnCompletedUpdate" in after_sysupdate_pull(262)
    assert "OnCompletedUpdate" not in after_sysupdate_pull(257)
    assert after_sysupdate_pull(254) == "systemd 254: not looked at (seen: [257, 262])"

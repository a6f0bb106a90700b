"""vm/systemd/quirks.py: what portablectl reattach is handed, and which systemd is too old."""

from __future__ import annotations

import pytest

from vm.systemd.quirks import (
    fdstore_preserve_missing,
    reattach_by_name_broken,
    reattach_target,
    sysupdate_transfer_suffix,
    unsupported_reason,
    user_portables_missing,
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

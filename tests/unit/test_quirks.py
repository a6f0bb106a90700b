"""vm/quirks.py: what portablectl reattach is handed, and which systemd is too old."""

from __future__ import annotations

import pytest

from vm.quirks import reattach_by_name_broken, reattach_target, unsupported_reason

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

"""vm/core/config.py (run settings and their validation) and vm/boxes/recipes.py (box recipes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_portable_upgrade.boxes.recipes import (
    BASE_PACKAGES,
    BOXES,
    DEBIAN_MIRROR,
    DEFAULT_BOX,
    BoxRecipe,
    get_box,
)
from pytest_portable_upgrade.core.config import (
    SETTINGS,
    LoadSettings,
    SettingError,
    Settings,
    options_markdown,
    settings_from,
)

OPTIONS_MD = Path(__file__).resolve().parents[2] / "docs" / "options.md"


def test_defaults_are_valid() -> None:
    LoadSettings().validate()
    settings = Settings()
    settings.validate()
    assert settings.box == DEFAULT_BOX
    assert settings.accel == "auto" and settings.keep_vm == "never"


def test_run_ids_differ_and_name_the_directories(tmp_path: Path) -> None:
    a, b = Settings(state_dir=tmp_path), Settings(state_dir=tmp_path)
    assert a.run_id != b.run_id
    assert a.run_dir == tmp_path / "runs" / a.run_id
    assert Settings(artifacts_root=Path("art"), run_id="r1").artifacts_dir == Path("art/r1")


def test_unknown_box_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown box 'debian-potato'") as info:
        Settings(box="debian-potato").validate()
    assert "known boxes: " in str(info.value)
    for name in BOXES:
        assert name in str(info.value)


@pytest.mark.parametrize("accel", ["xen", "KVM", ""])
def test_bad_accel(accel: str) -> None:
    with pytest.raises(ValueError, match="accel must be one of auto, kvm, tcg"):
        Settings(accel=accel).validate()


@pytest.mark.parametrize("accel", ["auto", "kvm", "tcg"])
def test_good_accel(accel: str) -> None:
    Settings(accel=accel).validate()


@pytest.mark.parametrize("keep", ["sometimes", "yes", ""])
def test_bad_keep_vm(keep: str) -> None:
    with pytest.raises(ValueError, match="keep-vm must be one of never, on-error, always"):
        Settings(keep_vm=keep).validate()


@pytest.mark.parametrize("keep", ["never", "on-error", "always"])
def test_good_keep_vm(keep: str) -> None:
    Settings(keep_vm=keep).validate()


@pytest.mark.parametrize(("memory", "cpus"), [(256, 2), (2048, 0)])
def test_too_small_vm(memory: int, cpus: int) -> None:
    with pytest.raises(ValueError, match="at least 512 MB and 1 CPU"):
        Settings(memory_mb=memory, cpus=cpus).validate()


@pytest.mark.parametrize("concurrency", [0, -3])
def test_concurrency_below_one(concurrency: int) -> None:
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        LoadSettings(concurrency=concurrency).validate()
    with pytest.raises(ValueError, match="concurrency"):  # Settings validates its load too
        Settings(load=LoadSettings(concurrency=concurrency)).validate()


@pytest.mark.parametrize(("switch_after", "post_switch"), [(-1.0, 10.0), (0.0, 10.0),
                                                           (5.0, -2.0), (5.0, 0.0)])
def test_durations_must_be_positive(switch_after: float, post_switch: float) -> None:
    with pytest.raises(ValueError, match="must be a positive number of seconds"):
        LoadSettings(switch_after_s=switch_after, post_switch_s=post_switch).validate()


@pytest.mark.parametrize("max_s", [15.0, 14.0, 0.0, -240.0])
def test_load_bound_must_exceed_switch_after_plus_post_switch(max_s: float) -> None:
    with pytest.raises(ValueError, match=r"load bound .* must exceed .* = 15 s"):
        LoadSettings(switch_after_s=5.0, post_switch_s=10.0, max_s=max_s).validate()


def test_load_bound_just_above_is_valid() -> None:
    LoadSettings(switch_after_s=5.0, post_switch_s=10.0, max_s=15.5).validate()


def test_min_complete_below_one() -> None:
    with pytest.raises(ValueError, match="min-complete"):
        LoadSettings(min_complete=0).validate()


def test_get_box() -> None:
    box = get_box("debian-bookworm")
    assert box.name == "debian-bookworm"
    assert box.systemd_major == 252
    assert box.suite == "bookworm"
    assert box.buildable_offline
    assert box.providers == ("libvirt",)
    assert get_box(DEFAULT_BOX) is BOXES[DEFAULT_BOX]


def test_get_box_unknown() -> None:
    with pytest.raises(ValueError, match=r"unknown box 'fedora-99'; known boxes: debian-bookworm"):
        get_box("fedora-99")


def test_build_env() -> None:
    env = get_box("debian-bookworm").build_env()
    assert env == {
        "SUITE": "bookworm",
        "MIRROR": DEBIAN_MIRROR,
        "PACKAGES": ",".join(BASE_PACKAGES),
        "EXTRA_SUITE": "",
        "EXTRA_PACKAGES": "",
    }
    packages = env["PACKAGES"].split(",")
    for needed in ("systemd-container", "apache2-utils", "hey", "python3", "qemu-guest-agent",
                   "openssh-server"):
        assert needed in packages
    assert all(isinstance(v, str) for v in env.values())


def test_build_env_with_extra_suite() -> None:
    box = BoxRecipe(name="debian-bookworm-bpo", description="backports", systemd_major=254,
                    suite="bookworm", extra_suite="bookworm-backports",
                    extra_packages=("systemd", "systemd-container"))
    env = box.build_env()
    assert env["EXTRA_SUITE"] == "bookworm-backports"
    assert env["EXTRA_PACKAGES"] == "systemd systemd-container"


def test_build_env_of_a_downloaded_box_raises() -> None:
    box = BoxRecipe(name="fedora-43", description="Fedora 43", systemd_major=258,
                    package_manager="dnf", fedora_release=43)
    assert not box.buildable_offline
    with pytest.raises(ValueError, match="fedora-43 is not built locally"):
        box.build_env()


@pytest.mark.parametrize("name", ["boot_timeout_s", "box_build_timeout_s", "reattach_timeout_s",
                                  "unit_timeout_s"])
@pytest.mark.parametrize("value", [0.0, -5.0, float("nan"), float("inf")])
def test_every_wait_bound_must_be_a_positive_number(name: str, value: float) -> None:
    option = name.removesuffix("_s").replace("_", "-")
    with pytest.raises(ValueError, match=f"{option} must be a positive number of seconds"):
        Settings(**{name: value}).validate()


@pytest.mark.parametrize("port", [-1, 22, 1023, 65536])
def test_ssh_port_out_of_range(port: int) -> None:
    with pytest.raises(ValueError, match="ssh-port must be 0"):
        Settings(ssh_port=port).validate()


@pytest.mark.parametrize("port", [0, 1024, 2222, 65535])
def test_ssh_port_in_range(port: int) -> None:
    Settings(ssh_port=port).validate()


@pytest.mark.parametrize("rate", [0.0, -5.0, 200.5, float("nan"), float("inf")])
def test_probe_rate_out_of_range(rate: float) -> None:
    with pytest.raises(ValueError, match=r"probe-rate must be a number of requests per second "
                                         r"in \(0, 200\]"):
        LoadSettings(probe_rate=rate).validate()


@pytest.mark.parametrize("rate", [0.5, 20.0, 200.0])
def test_probe_rate_in_range(rate: float) -> None:
    LoadSettings(probe_rate=rate).validate()


def test_probe_in_flight_bound_is_ten_seconds_of_sending_at_least_200() -> None:
    assert LoadSettings().probe_max_in_flight == 200
    assert LoadSettings(probe_rate=50.0).probe_max_in_flight == 500
    assert LoadSettings(probe_rate=20.5).probe_max_in_flight == 205


@pytest.mark.parametrize("stall", [0.0, -1.0, float("nan"), float("inf")])
def test_max_stall_must_be_positive_when_set(stall: float) -> None:
    with pytest.raises(ValueError, match="max-stall must be a positive number of seconds"):
        LoadSettings(max_stall_s=stall).validate()


def test_max_stall_is_off_by_default() -> None:
    assert LoadSettings().max_stall_s is None
    LoadSettings(max_stall_s=2.5).validate()


def test_docs_options_md_is_what_the_declarations_make() -> None:
    """docs/options.md is generated: `portable-upgrade options > docs/options.md`."""
    assert OPTIONS_MD.read_text() == options_markdown(), (
        "regenerate: portable-upgrade options > docs/options.md")


def test_every_setting_is_documented_once_with_its_variable_and_default() -> None:
    text = options_markdown()
    for s in SETTINGS:
        rows = [line for line in text.splitlines()
                if line.startswith((f"| `--{s.name} ", f"| `--{s.name}` "))]
        assert len(rows) == 1, s.name
        assert f"`{s.env}`" in rows[0] and s.help in rows[0]
    assert len({s.env for s in SETTINGS}) == len(SETTINGS)
    # a help text names no default by hand: the default column does
    assert [s.name for s in SETTINGS if "(default" in s.help or "default:" in s.help] == []


def test_one_artifacts_default_relative_to_where_the_run_started(tmp_path: Path) -> None:
    assert Settings().artifacts_root == Path("artifacts")
    assert settings_from({}, base=tmp_path).artifacts_root == tmp_path / "artifacts"


def test_settings_from_reads_the_command_line_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("PWT_CONCURRENCY", "7")
    monkeypatch.setenv("PWT_ARTIFACTS_ALWAYS", "yes")
    assert settings_from({}).load.concurrency == 7
    got = settings_from({"concurrency": "3", "service": "spec.toml"}, base=tmp_path)
    assert got.load.concurrency == 3 and got.artifacts_always is True
    assert got.service == tmp_path / "spec.toml"
    with pytest.raises(SettingError, match=r"--concurrency \(PWT_CONCURRENCY\) must be an integer"):
        settings_from({"concurrency": "many"})


def test_the_capacity_lists_parse_into_backlogs_delays_and_rates() -> None:
    from pytest_portable_upgrade.core.config import backlogs_of, delays_of, rates_of

    settings = Settings()
    assert backlogs_of(settings.capacity_backlogs) == (4, 16, 64, None)
    assert delays_of(settings.capacity_delays) == (0.0, 2.0, 5.0)
    assert rates_of(settings.capacity_rates) == ((20.0, 10), (50.0, 30))


@pytest.mark.parametrize(("name", "value", "why"), [
    ("capacity-backlogs", "0,4", "a backlog is a whole number >= 1 or default, not '0'"),
    ("capacity-backlogs", " , ", "the list is empty"),
    ("capacity-delays", "2,-1", "a start delay is 0 to 60 seconds, not '-1'"),
    ("capacity-delays", "soon", "a start delay is 0 to 60 seconds, not 'soon'"),
    ("capacity-rates", "20", "a rate is PROBE_RATE/CONCURRENCY"),
    ("capacity-rates", "500/10", "a rate is PROBE_RATE/CONCURRENCY"),
    ("capacity-rates", "20/0", "a rate is PROBE_RATE/CONCURRENCY"),
])
def test_a_bad_capacity_list_is_one_line_naming_the_option(name: str, value: str,
                                                           why: str) -> None:
    with pytest.raises(SettingError, match=f"^{name} is a comma-separated list: "
                                           + why.replace("(", r"\(").replace(")", r"\)")):
        settings_from({name: value})


def test_the_second_client_is_hey_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from({}).load.second_client == "hey"
    assert settings_from({"second-client": "none"}).load.second_client == "none"
    monkeypatch.setenv("PWT_SECOND_CLIENT", "wrk")
    with pytest.raises(ValueError, match=r"second-client must be one of hey, none, not 'wrk'"):
        settings_from({})

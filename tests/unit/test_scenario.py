"""vm/scenarios/: the scenario catalogue, its validation, and the verdict of a measured run.

Runs are built by hand from the ``support`` builders: nothing here touches a VM.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import replace
from typing import Any

import pytest
from support import (
    T0,
    ab_result,
    clean_records,
    failure,
    new_of,
    old_of,
    outcome,
    scenario_run,
)

from pytest_portable_upgrade.load.load import LoadOutcome
from pytest_portable_upgrade.scenarios.catalogue import (
    EXPECTATIONS,
    SCENARIOS,
    Scenario,
    get_scenario,
)
from pytest_portable_upgrade.scenarios.checks import SocketObservation
from pytest_portable_upgrade.scenarios.record import summary_row
from pytest_portable_upgrade.scenarios.run import ScenarioRun
from pytest_portable_upgrade.scenarios.verdict import loss_summary, verdict_of

ID_PATTERN = re.compile(r"[a-z]+(?:-[a-z]+)+")


def make_run(scenario: Scenario | None = None, out: LoadOutcome | None = None,
             socket: SocketObservation | None = None, final_count: int = 100_000,
             **changes: Any) -> ScenarioRun:
    scenario = scenario or get_scenario("host-socket-no-keepalive")
    if socket is not None:
        changes["socket"] = socket
    return scenario_run(scenario, out, final_count=final_count, **changes)


def lossy_outcome() -> LoadOutcome:
    records = clean_records()
    records.insert(31, failure(T0 + 6.1, "connect-refused"))
    return outcome(records, ab=ab_result(complete=6990, failed=7, connect=2, receive=5,
                                         non_2xx=1))


# --- the catalog -----------------------------------------------------------------------------
def test_scenario_ids_are_unique() -> None:
    ids = [s.id for s in SCENARIOS]
    assert len(ids) == len(set(ids)), ids


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_scenario_id_reads_like_a_name(scenario: Scenario) -> None:
    assert ID_PATTERN.fullmatch(scenario.id), scenario.id


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_scenario_id_names_its_shape(scenario: Scenario) -> None:
    """The id says where the socket is, keep-alive or not, the proxy, rollback, profile."""
    words = scenario.id.split("-")
    assert scenario.id.startswith(f"{scenario.socket_location}-socket-")
    if scenario.keepalive:
        assert "keepalive" in words and "no-keepalive" not in scenario.id
    else:
        assert "no-keepalive" in scenario.id or "keepalive" not in words
    assert ("haproxy" in words) == (scenario.proxy == "haproxy")
    assert ("rollback" in words) == (scenario.from_version > scenario.to_version)
    assert ("trusted" in words) == (scenario.profile == "trusted")
    assert scenario.description, "every scenario says in words what it shows"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_get_scenario_returns_that_scenario(scenario: Scenario) -> None:
    assert get_scenario(scenario.id) is scenario


@pytest.mark.parametrize("unknown", ["nosuch", "", "HOST-SOCKET-NO-KEEPALIVE",
                                     "host-socket-no-keepalive "])
def test_get_scenario_unknown_id(unknown: str) -> None:
    with pytest.raises(KeyError, match="no scenario"):
        get_scenario(unknown)


# The shapes the project promises (README): (expect, keepalive, proxy, socket, shutdown, profile,
# from, to), one scenario each.
PROMISED = {
    "host-socket-no-keepalive":
        ("zero-downtime", False, None, "host", "drain", "default", 1, 2),
    "host-socket-keepalive-drain":
        ("zero-downtime", True, None, "host", "drain", "default", 1, 2),
    "host-socket-keepalive-naive":
        ("characterise", True, None, "host", "immediate", "default", 1, 2),
    "host-socket-keepalive-haproxy":
        ("zero-downtime", True, "haproxy", "host", "immediate", "default", 1, 2),
    "image-socket-no-keepalive":
        ("downtime", False, None, "image", "drain", "default", 1, 2),
    "host-socket-rollback":
        ("zero-downtime", False, None, "host", "drain", "default", 2, 1),
    "host-socket-trusted-profile":
        ("zero-downtime", False, None, "host", "drain", "trusted", 1, 2),
}


def shape(s: Scenario) -> tuple[Any, ...]:
    return (s.expect, s.keepalive, s.proxy, s.socket_location, s.shutdown, s.profile,
            s.from_version, s.to_version, s.holders, s.rollout, s.corrupt, s.upgrade,
            s.fdstore_preserve, s.scope, s.layout, s.after_pull, s.method)


def test_catalog_has_the_seven_promised_shapes() -> None:
    catalog = {s.id: shape(s)[:8] for s in SCENARIOS}
    assert len(PROMISED) == 7
    for scenario_id, promised in PROMISED.items():
        assert catalog.get(scenario_id) == promised, scenario_id


def test_catalog_shapes_are_distinct() -> None:
    shapes = [shape(s) for s in SCENARIOS]
    assert len(set(shapes)) == len(shapes)


# POST beside GET: each keep-alive scenario of the issue has a POST twin with the same shape.
POST_TWINS = {
    "host-socket-keepalive-drain-post": ("host-socket-keepalive-drain", "zero-downtime"),
    "host-socket-keepalive-naive-post": ("host-socket-keepalive-naive", "characterise"),
    # HAProxy's retry-on replays a POST like a GET (its documentation names events, not
    # methods): the clients must lose nothing, as with GET.
    "host-socket-keepalive-haproxy-post": ("host-socket-keepalive-haproxy", "zero-downtime"),
}


@pytest.mark.parametrize("post_id", POST_TWINS)
def test_the_post_twins_have_their_get_scenarios_shape(post_id: str) -> None:
    get_id, expect = POST_TWINS[post_id]
    post, get = get_scenario(post_id), get_scenario(get_id)
    assert (post.method, get.method) == ("POST", None)
    assert post.expect == expect and post.keepalive
    assert shape(post)[1:-1] == shape(get)[1:-1]  # only the method (and maybe expect) differ
    assert "POST" in post.description


def test_a_scenario_sends_the_subjects_method_unless_it_names_one() -> None:
    assert Scenario("host-socket-x").method is None
    assert Scenario("host-socket-x", method="GET").method == "GET"


# --- validation ------------------------------------------------------------------------------
def test_defaults_are_a_valid_upgrade() -> None:
    s = Scenario("host-socket-x")
    assert (s.expect, s.from_version, s.to_version) == ("zero-downtime", 1, 2)


@pytest.mark.parametrize("expect", EXPECTATIONS)
def test_every_expectation_is_accepted(expect: str) -> None:
    assert Scenario("host-socket-x", expect=expect).expect == expect


@pytest.mark.parametrize("expect", ["pass", "Zero-downtime", "", "xfail"])
def test_bad_expectation(expect: str) -> None:
    with pytest.raises(ValueError, match="expect must be one of"):
        Scenario("host-socket-x", expect=expect)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("proxy", "HAProxy", "None, haproxy"),
        ("proxy", "", "None, haproxy"),
        ("shutdown", "imediate", "drain, immediate, fdstore"),
        ("shutdown", "fd-store", "drain, immediate, fdstore"),
        ("socket_location", "guest", "host, image"),
        ("profile", "trustd", "default, trusted"),
        ("rollout", "sysupdate", "portablectl, sysupdate-dir, sysupdate-http"),
        ("method", "PUT", "None, GET, POST"),
        ("method", "post", "None, GET, POST"),
    ],
)
def test_bad_field_names_the_field_and_the_choices(field: str, value: str, allowed: str) -> None:
    with pytest.raises(ValueError) as e:
        Scenario("host-socket-x", **{field: value})
    assert str(e.value) == f"{field} must be one of {allowed}, not {value!r}"


@pytest.mark.parametrize(("from_version", "to_version"),
                         [(1, 1), (2, 2), (0, 2), (2, -1)])
def test_bad_versions(from_version: int, to_version: int) -> None:
    """Which versions exist is the subject's business (Subject.cannot_run); a scenario only
    needs two different ones."""
    with pytest.raises(ValueError, match="two different versions"):
        Scenario("host-socket-x", from_version=from_version, to_version=to_version)


def test_replace_is_validated_too() -> None:
    with pytest.raises(ValueError):
        replace(get_scenario("host-socket-no-keepalive"), to_version=1)


def test_greetings_of_an_upgrade() -> None:
    s = get_scenario("host-socket-no-keepalive")
    assert (old_of(s), new_of(s)) == ("Hello", "Hola")


def test_greetings_of_the_rollback() -> None:
    s = get_scenario("host-socket-rollback")
    assert (old_of(s), new_of(s)) == ("Hola", "Hello")


# --- loss summary ------------------------------------------------------------------------
def test_loss_summary_has_the_counts() -> None:
    socket = SocketObservation("1", "2", "failed")
    text = loss_summary(make_run(out=lossy_outcome(), socket=socket))
    assert "ab 7 failed of 6990" in text
    for part in ("connect 2", "receive 5", "length 0", "exceptions 0", "non-2xx 1",
                 "'connect-refused': 1", "socket after: failed"):
        assert part in text, (part, text)


def test_loss_summary_of_a_clean_run() -> None:
    text = loss_summary(make_run())
    assert "ab 0 failed of 7000" in text
    assert "probe errors none" in text
    assert "socket after: active" in text


# --- summary row -----------------------------------------------------------------------------
SCHEMA = (
    "scenario", "box", "systemd_version", "keepalive", "proxy", "socket_location", "complete",
    "failed", "failed_connect", "failed_receive", "failed_length", "failed_exceptions",
    "non_2xx", "switched", "switch_at_s", "reattach_s", "max_latency_ms", "longest_gap_ms",
    "counter_ok", "verdict", "expect", "shutdown", "profile", "latency", "longest_gap_at_s",
    "probe_sent_per_s", "probe_not_sent", "listen_overflows", "listen_drops", "tcp_syn_retrans",
    "restart_gap_probe_s", "restart_gap_probe_at_s", "restart_gap_journal_s",
    "restart_gap_journal_at_s",
)


def test_summary_row_has_the_documented_schema() -> None:
    run = make_run(get_scenario("host-socket-keepalive-haproxy"))
    row = summary_row(run, "debian-bookworm", 252, verdict_of(run))
    missing = [key for key in SCHEMA if key not in row]
    assert not missing, missing
    assert row["scenario"] == "host-socket-keepalive-haproxy"
    assert (row["box"], row["systemd_version"], row["verdict"]) == ("debian-bookworm", 252, "pass")
    assert row["verdict_kind"] == "pass"
    assert (row["keepalive"], row["proxy"], row["socket_location"]) == (True, "haproxy", "host")
    assert (row["expect"], row["shutdown"], row["profile"]) == (
        "zero-downtime", "immediate", "default")
    assert (row["from_version"], row["to_version"]) == (1, 2)
    assert row["socket_state_after"] == "active"
    assert row["attached_image"] == "/var/lib/portables/portable-walkthrough_2.raw"
    assert row["complete"] == 7000 and row["failed"] == 0 and row["non_2xx"] == 0
    assert row["switched"] is True and row["switch_at_s"] == 6.2
    assert row["reattach_s"] == 1.5
    assert row["service_user"] == "portable-walkthrough" and row["dynamic_user"] is True
    assert row["problems"] == []
    json.dumps(row)  # summary.json holds it


def test_summary_row_counter_ok_follows_the_counter() -> None:
    good = make_run(final_count=100_000)
    assert summary_row(good, "b", 252, verdict_of(good))["counter_ok"] is True
    # Fewer visitors than answered requests: counts were lost.
    bad = make_run(final_count=10)
    row = summary_row(bad, "b", 252, verdict_of(bad))
    assert row["counter_ok"] is False
    assert row["verdict"] == "FAIL"
    assert any(p.startswith("the counter ends at 10") for p in row["problems"])


def test_summary_row_of_a_lossy_rollback() -> None:
    rollback = get_scenario("host-socket-rollback")
    run = make_run(rollback, out=lossy_outcome(),
                   socket=SocketObservation("1", "2", "failed"))
    row = summary_row(run, "debian-bookworm", 252, verdict_of(run))
    assert row["verdict"] == "FAIL"
    assert (row["from_version"], row["to_version"]) == (2, 1)
    assert row["failed"] == 7 and row["failed_connect"] == 2 and row["failed_receive"] == 5
    assert row["non_2xx"] == 1
    assert row["socket_state_after"] == "failed"
    assert row["problems"] == list(verdict_of(run).problems)
    assert any("the host socket was restarted" in p for p in row["problems"])
    assert any("the host socket is 'failed'" in p for p in row["problems"])
    assert any(p.startswith("ab saw failures") for p in row["problems"])


# --- a scenario the subject cannot run is a skip, before the guest is touched -----------------
def test_a_scenario_the_subject_does_not_list_is_skipped_with_the_reason() -> None:
    from support import ROOT, fake_host

    from pytest_portable_upgrade.core.config import Settings
    from pytest_portable_upgrade.scenarios.run import ScenarioUnsupported, run_scenario
    from pytest_portable_upgrade.subject.spec import load_subject
    from pytest_portable_upgrade.systemd.portable import PortableService

    gunicorn = load_subject(ROOT / "examples" / "gunicorn" / "spec.toml")
    machine, host, fake = fake_host({})
    build = lambda _loc: None  # noqa: E731  (never called: the skip comes first)
    service = PortableService(machine, 252, 240, build, gunicorn, host)  # type: ignore[arg-type]
    with pytest.raises(ScenarioUnsupported, match=r"gunicorn-demo .* does not list "
                                                  r"host-socket-keepalive-naive"):
        run_scenario(service, Settings(), get_scenario("host-socket-keepalive-naive"))
    assert fake.commands == []


def test_a_scenario_raises_the_load_to_its_min_concurrency_and_never_lowers_it() -> None:
    from pytest_portable_upgrade.core.config import LoadSettings
    from pytest_portable_upgrade.scenarios.run import scenario_load

    proxy = get_scenario("host-socket-keepalive-haproxy")
    assert proxy.min_concurrency == 50
    assert scenario_load(LoadSettings(concurrency=10), proxy).concurrency == 50
    assert scenario_load(LoadSettings(concurrency=60), proxy).concurrency == 60
    plain = get_scenario("host-socket-no-keepalive")
    assert scenario_load(LoadSettings(concurrency=10), plain).concurrency == 10


# --- the load a run builds: the scenario's method, hey where it runs ---------------------------
def test_a_post_keepalive_run_loads_with_ab_hey_and_the_probe_all_posting() -> None:
    from support import WALKTHROUGH

    from pytest_portable_upgrade.core.config import Settings
    from pytest_portable_upgrade.scenarios.run import load_for

    load, why = load_for(object(), Settings(), get_scenario("host-socket-keepalive-drain-post"),
                         WALKTHROUGH, 8080)  # type: ignore[arg-type]
    assert why is None and load.method == "POST" and load.body == "name=visitor"
    assert load.hey_command is not None and "-m POST -D /run/pwt/body" in load.hey_command
    assert "-p /run/pwt/body -T application/x-www-form-urlencoded" in load.command
    assert "--method POST --body name=visitor" in shlex.join(load.client_args)


def test_hey_stays_out_of_runs_without_keepalive_of_fedora_and_of_none() -> None:
    from support import WALKTHROUGH

    from pytest_portable_upgrade.core.config import LoadSettings, Settings
    from pytest_portable_upgrade.scenarios.run import load_for

    drain = get_scenario("host-socket-keepalive-drain")
    cases = {
        "no keep-alive": (Settings(), get_scenario("host-socket-no-keepalive"),
                          "keep-alive scenarios only"),
        "fedora": (Settings(box="fedora-43"), drain, "Fedora 43 packages no hey"),
        "none": (Settings(load=LoadSettings(second_client="none")), drain,
                 "--second-client none"),
    }
    for name, (settings, scenario, words) in cases.items():
        load, why = load_for(object(), settings, scenario, WALKTHROUGH, 8080)  # type: ignore[arg-type]
        assert load.hey_command is None and why is not None and words in why, name
        assert load.method == "GET" and "--method" not in load.client_args, name
    load, why = load_for(object(), Settings(), drain, WALKTHROUGH, 8080)  # type: ignore[arg-type]
    assert why is None and load.hey_command is not None and "-m POST" not in load.hey_command


def test_the_load_of_a_run_is_the_scenarios_load() -> None:
    from support import WALKTHROUGH

    from pytest_portable_upgrade.core.config import Settings
    from pytest_portable_upgrade.scenarios.run import load_for

    settings = Settings()
    proxy = get_scenario("host-socket-keepalive-haproxy")
    load, _ = load_for(object(), settings, proxy, WALKTHROUGH, 8081)  # type: ignore[arg-type]
    assert " -c 50 " in load.command
    plain = get_scenario("host-socket-no-keepalive")
    load, _ = load_for(object(), settings, plain, WALKTHROUGH, 8080)  # type: ignore[arg-type]
    assert f" -c {settings.load.concurrency} " in load.command

"""vm/load/hey.py: hey's argv and the parser of its report (real hey 0.1.4 reports in data/,
recorded on this host by data/record_hey.py; what each server did is in its .meta.json)."""

from __future__ import annotations

import json

import pytest
from support import DATA

from pytest_portable_upgrade.boxes.provision import provision_commands
from pytest_portable_upgrade.boxes.recipes import BOXES
from pytest_portable_upgrade.load.hey import (
    ErrorKind,
    HeyParseError,
    error_kind,
    hey_command,
    hey_plan,
    hey_problems,
    hey_unavailable,
    parse_hey_output,
)

NO_FAILURES = {kind.value: 0 for kind in ErrorKind}


def report(name: str) -> str:
    return (DATA / f"{name}.txt").read_text()


def meta(name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((DATA / f"{name}.meta.json").read_text())
    return data


# --- the recorded reports ----------------------------------------------------------------------


def test_clean_keepalive_get() -> None:
    text = report("hey_get_keepalive")
    assert "Error distribution:" not in text  # the fixture is what we claim
    result = parse_hey_output(text)
    assert result.status_counts == {200: 1001}
    assert result.failed_by_kind == NO_FAILURES and result.errors == {}
    assert (result.answered, result.successful, result.failed, result.requests) == \
        (1001, 1001, 0, 1001)
    assert result.total_s == pytest.approx(2.0125)
    assert result.requests_per_second == pytest.approx(497.3958)
    assert meta("hey_get_keepalive")["server_count"] == result.answered


def test_post_without_keepalive_is_counted_by_the_server() -> None:
    result = parse_hey_output(report("hey_post_no_keepalive"))
    assert (result.answered, result.failed) == (579, 0)
    assert "-m POST" in str(meta("hey_post_no_keepalive")["command"])
    assert meta("hey_post_no_keepalive")["server_count"] == 579


def test_naive_restart_under_get_loses_nothing_hey_can_see() -> None:
    # Go resends a GET whose reused connection the dying server closed.
    result = parse_hey_output(report("hey_naive_get"))
    assert (result.answered, result.failed) == (1812, 0)


def test_naive_restart_under_post_shows_resets_and_an_eof() -> None:
    result = parse_hey_output(report("hey_naive_post"))
    assert result.answered == 1448
    assert result.failed_by_kind == {**NO_FAILURES, "reset": 10, "eof": 1}
    assert result.failed == 11 and result.requests == 1459
    # Each reset names its own client port: ten lines of one kind.
    assert len([m for m in result.errors if "connection reset by peer" in m]) == 10
    assert meta("hey_naive_post")["server_count"] == 1449  # one done, never answered


def test_rude_server_get_errors_by_kind_and_503s() -> None:
    result = parse_hey_output(report("hey_rude_get"))
    assert result.status_counts == {200: 1000, 503: 99}
    assert (result.answered, result.successful, result.non_2xx) == (1099, 1000, 99)
    assert result.failed_by_kind == {**NO_FAILURES, "timeout": 12, "other": 19}
    server = meta("hey_rude_get")["server"]
    assert isinstance(server, dict)
    # The server reset 34 requests after reading them: hey shows none, it sent them again.
    assert server["reset"] == 34 and result.failed_by_kind["reset"] == 0
    assert server["requests_read"] == result.requests + server["reset"]


def test_rude_server_post_shows_every_kind_but_refused() -> None:
    result = parse_hey_output(report("hey_rude_post"))
    assert result.status_counts == {200: 996, 503: 100}
    assert result.failed_by_kind == {**NO_FAILURES, "reset": 64, "eof": 10, "timeout": 12,
                                     "other": 21}
    assert result.errors['Post "http://127.0.0.1:33455/": http: server closed idle connection'] \
        == 4
    text = result.describe()
    for part in ("1096 answered (100 non-2xx)", "107 failed", "reset 64", "eof 10",
                 "timeout 12", "other 21", "359.1 req/s", "3.3 s"):
        assert part in text


def test_nothing_listening_gives_refused_and_an_empty_status_distribution() -> None:
    text = report("hey_refused")
    assert "NaN" in text  # hey prints NaN averages when nothing was answered
    result = parse_hey_output(text)
    assert result.status_counts == {} and result.answered == 0
    assert result.failed_by_kind == {**NO_FAILURES, "refused": 2720}


def test_as_dict_keeps_the_counts_and_kinds() -> None:
    d = parse_hey_output(report("hey_rude_get")).as_dict()
    assert d["answered"] == 1099 and d["failed"] == 31 and d["requests"] == 1130
    assert d["status_counts"] == {"200": 1000, "503": 99}
    assert d["failed_by_kind"] == {**NO_FAILURES, "timeout": 12, "other": 19}
    json.dumps(d)  # goes into summary.json as it is


# --- error kinds -------------------------------------------------------------------------------


@pytest.mark.parametrize(("message", "kind"), [
    ('Post "http://h/": read tcp 127.0.0.1:1->127.0.0.1:2: read: connection reset by peer',
     ErrorKind.RESET),
    ('Get "http://h/": write tcp 127.0.0.1:1->127.0.0.1:2: write: connection reset by peer',
     ErrorKind.RESET),
    ('Post "http://h/": EOF', ErrorKind.EOF),
    ('Get "http://h/": unexpected EOF', ErrorKind.EOF),
    ('Post "http://h/": http: server closed idle connection', ErrorKind.EOF),
    ('Get "http://h/": dial tcp 127.0.0.1:9: connect: connection refused', ErrorKind.REFUSED),
    ('Get "http://h/": context deadline exceeded (Client.Timeout exceeded while awaiting '
     'headers)', ErrorKind.TIMEOUT),
    ('Get "http://h/": dial tcp 127.0.0.1:9: i/o timeout', ErrorKind.TIMEOUT),
    ('Get "http://h/": net/http: HTTP/1.x transport connection broken: malformed HTTP '
     'response "SPAM"', ErrorKind.OTHER),
    ('Post "http://h/": write tcp 127.0.0.1:1->127.0.0.1:2: write: broken pipe',
     ErrorKind.OTHER),
])
def test_error_kind(message: str, kind: ErrorKind) -> None:
    assert error_kind(message) is kind


def test_a_path_with_eof_in_it_is_not_an_eof() -> None:
    assert error_kind('Get "http://h/EOF": dial tcp: connect: no route to host') is \
        ErrorKind.OTHER


# --- broken output -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "",
    "Usage: hey [options...] <url>\n\nOptions:\n  -n  Number of requests to run.\n",
    "open /run/pwt/body: no such file or directory\n",
])
def test_no_report_is_one_line_naming_what_is_missing(text: str) -> None:
    with pytest.raises(HeyParseError, match="no 'Summary:' with 'Total: N secs'") as info:
        parse_hey_output(text)
    assert "\n" not in str(info.value)


def test_report_cut_before_the_status_distribution() -> None:
    text = report("hey_naive_post")
    cut = text[: text.index("Status code distribution:")]
    with pytest.raises(HeyParseError, match="no 'Status code distribution:'"):
        parse_hey_output(cut)


def test_garbled_status_line_is_named() -> None:
    text = report("hey_get_keepalive").replace("[200]\t1001 responses", "[200]\t1001 réponses")
    with pytest.raises(HeyParseError, match=r"status distribution.*réponses"):
        parse_hey_output(text)


def test_garbled_error_line_is_named() -> None:
    text = report("hey_naive_post").replace("  [1]\tPost", "  [x]\tPost", 1)
    with pytest.raises(HeyParseError, match=r"error distribution.*x"):
        parse_hey_output(text)


def test_hey_parse_error_is_a_value_error() -> None:
    # A LoadRun turns a ValueError from a parser into a GuestError with the output.
    assert issubclass(HeyParseError, ValueError)


# --- the command line --------------------------------------------------------------------------


def test_get_keepalive_command() -> None:
    cmd = hey_command("http://127.0.0.1:8080/", concurrency=10, max_seconds=240,
                      keepalive=True)
    assert cmd[0] == "hey" and cmd[-1] == "http://127.0.0.1:8080/"
    assert cmd[cmd.index("-c") + 1] == "10"
    assert cmd[cmd.index("-z") + 1] == "240s"
    assert cmd[cmd.index("-t") + 1] == "30"
    assert "-disable-keepalive" not in cmd
    assert "-m" not in cmd and "-D" not in cmd and "-n" not in cmd
    assert all(isinstance(a, str) for a in cmd)


def test_no_keepalive_and_host_header() -> None:
    cmd = hey_command("http://127.0.0.1:8080/", concurrency=3, max_seconds=30.4,
                      keepalive=False, host_header="probe", timeout_s=5)
    assert cmd.count("-disable-keepalive") == 1
    assert cmd[cmd.index("-z") + 1] == "30s"
    assert cmd[cmd.index("-host") + 1] == "probe"
    assert cmd[cmd.index("-t") + 1] == "5"


def test_post_sends_the_body_file_with_its_type() -> None:
    cmd = hey_command("http://127.0.0.1:8080/", concurrency=10, max_seconds=60,
                      keepalive=True, method="POST", body_file="/run/pwt/body",
                      content_type="application/x-www-form-urlencoded")
    assert cmd[cmd.index("-m") + 1] == "POST"
    assert cmd[cmd.index("-D") + 1] == "/run/pwt/body"
    assert cmd[cmd.index("-T") + 1] == "application/x-www-form-urlencoded"
    assert cmd[-1] == "http://127.0.0.1:8080/"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"method": "PUT"}, "GET or POST"),
    ({"method": "POST"}, "needs body_file"),
    ({"body_file": "/run/pwt/body"}, "needs body_file"),
    ({"concurrency": 0}, "at least 1"),
])
def test_bad_command_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"url": "http://127.0.0.1:8080/", "concurrency": 2,
                               "max_seconds": 10, "keepalive": True, **kwargs}
    with pytest.raises(ValueError, match=match):
        hey_command(**args)  # type: ignore[arg-type]


# --- where it runs -----------------------------------------------------------------------------


def test_debian_boxes_run_hey_and_fedora_skips_with_a_reason() -> None:
    assert hey_unavailable("apt") is None
    why = hey_unavailable("dnf", 43)
    assert why is not None and "Fedora 43" in why and "skipped" in why and "ab" in why


@pytest.mark.parametrize("name", sorted(BOXES))
def test_every_box_either_installs_hey_or_says_why_not(name: str) -> None:
    box = BOXES[name]
    why = hey_unavailable(box.package_manager, box.fedora_release)
    if box.buildable_offline:
        assert "hey" in box.packages and why is None
    else:
        assert not any("hey" in c.split() for c in provision_commands(box))
        assert why is not None and f"Fedora {box.fedora_release}" in why


def test_hey_runs_in_the_keepalive_scenarios_of_a_box_that_has_it() -> None:
    assert hey_plan("hey", keepalive=True, package_manager="apt") is None
    assert hey_plan("none", keepalive=True, package_manager="apt") == "--second-client none"
    no_reuse = hey_plan("hey", keepalive=False, package_manager="apt")
    assert no_reuse is not None and "keep-alive scenarios only" in no_reuse
    fedora = hey_plan("hey", keepalive=True, package_manager="dnf", fedora_release=43)
    assert fedora == hey_unavailable("dnf", 43)


# --- the verdict's lines -----------------------------------------------------------------------


def test_hey_problems() -> None:
    assert hey_problems(None) == []
    clean = parse_hey_output(report("hey_get_keepalive"))
    assert hey_problems(clean, min_answered=200) == []
    assert hey_problems(clean, min_answered=2000) == [
        "hey got only 1001 answers (at least 2000 make a load)"]
    lost = hey_problems(parse_hey_output(report("hey_naive_post")))
    assert lost == ["hey saw failures: 1448 answered (0 non-2xx), 11 failed (reset 10, eof 1), "
                    "409.0 req/s over 3.6 s"]
    assert hey_problems(parse_hey_output(report("hey_rude_get")))[0].startswith(
        "hey saw failures: 1099 answered (99 non-2xx), 31 failed")


def test_hey_problems_names_non_2xx_answers_alone() -> None:
    text = report("hey_get_keepalive").replace("  [200]\t1001 responses",
                                               "  [200]\t998 responses\n  [503]\t3 responses")
    assert hey_problems(parse_hey_output(text)) == [
        "hey saw failures: 1001 answered (3 non-2xx), 0 failed, 497.4 req/s over 2.0 s"]


def test_hey_problems_count_only_2xx_answers_as_load() -> None:
    rude = parse_hey_output(report("hey_rude_get"))  # 1000 answered 200, 99 answered 503
    assert "hey got only 1000 answers (at least 1050 make a load)" in hey_problems(rude, 1050)

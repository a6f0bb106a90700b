"""vm/load/ab.py: ab's argv and the parser of its report (real ab 2.3 reports in data/)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support import DATA, StartServer

from pytest_portable_upgrade.load.ab import (
    AbParseError,
    AbResult,
    ab_command,
    parse_ab_output,
)


def report(name: str) -> str:
    return (DATA / name).read_text()


def test_clean_run_has_no_failures_and_no_optional_lines() -> None:
    text = report("ab_clean.txt")
    assert "Non-2xx" not in text and "(Connect:" not in text  # the fixture is what we claim
    result = parse_ab_output(text)
    assert result == AbResult(
        complete=50, failed=0, failed_connect=0, failed_receive=0, failed_length=0,
        failed_exceptions=0, non_2xx=0, write_errors=0, keepalive_requests=0,
        requests_per_second=1986.41, time_taken_s=0.025,
    )
    assert result.successful == 50


def test_keepalive_run_counts_keepalive_requests() -> None:
    result = parse_ab_output(report("ab_keepalive.txt"))
    assert result.keepalive_requests == 50
    assert (result.complete, result.failed, result.non_2xx) == (50, 0, 0)
    assert result.requests_per_second == pytest.approx(3167.56)
    assert result.time_taken_s == pytest.approx(0.016)


def test_failed_run_reads_the_kinds_line_and_non_2xx() -> None:
    result = parse_ab_output(report("ab_failures.txt"))
    assert result.complete == 23110
    assert result.failed == 16
    assert (result.failed_connect, result.failed_receive, result.failed_length,
            result.failed_exceptions) == (0, 7, 0, 9)
    assert result.non_2xx == 3
    assert result.keepalive_requests == 23091
    assert result.write_errors == 0
    assert result.requests_per_second == pytest.approx(842.48)
    assert result.time_taken_s == pytest.approx(27.431)
    text = result.describe()
    for part in ("23110 complete", "16 failed", "receive 7", "exceptions 9", "3 non-2xx",
                 "842.5 req/s", "27.4 s"):
        assert part in text


def test_real_run_with_resets_and_503s() -> None:
    result = parse_ab_output(report("ab_resets_503.txt"))
    assert (result.complete, result.failed, result.non_2xx) == (50, 20, 6)
    assert (result.failed_connect, result.failed_receive, result.failed_length,
            result.failed_exceptions) == (0, 10, 0, 10)


def test_successful_counts_the_2xx_answers_of_a_run_with_resets() -> None:
    # data/README.md: the server recorded 34 answers 200, 6 answers 503 and 10 resets.
    assert parse_ab_output(report("ab_resets_503.txt")).successful == 34


def test_successful_subtracts_non_2xx_answers() -> None:
    text = report("ab_clean.txt").replace(
        "Failed requests:        0\n", "Failed requests:        0\nNon-2xx responses:      5\n")
    result = parse_ab_output(text)
    assert result.non_2xx == 5
    assert result.successful == 45


def test_write_errors_line_is_read() -> None:
    text = report("ab_failures.txt").replace(
        "Non-2xx responses:", "Write errors:           4\nNon-2xx responses:")
    assert parse_ab_output(text).write_errors == 4


@pytest.mark.parametrize("text", [
    "",
    "This is ApacheBench, Version 2.3 <$Revision$>\nBenchmarking 127.0.0.1 (be patient)\n",
    "apr_socket_recv: Connection reset by peer (104)\n",
])
def test_missing_report_raises(text: str) -> None:
    with pytest.raises(AbParseError):
        parse_ab_output(text)


def test_report_cut_before_failed_requests_raises() -> None:
    text = report("ab_clean.txt")
    truncated = text[: text.index("Failed requests:")]
    assert "Complete requests:" in truncated
    with pytest.raises(AbParseError, match="Failed requests"):
        parse_ab_output(truncated)


def test_failures_without_kinds_line_raise() -> None:
    text = report("ab_failures.txt")
    without_kinds = "\n".join(ln for ln in text.splitlines() if "(Connect:" not in ln)
    with pytest.raises(AbParseError, match="kinds"):
        parse_ab_output(without_kinds)


def test_ab_parse_error_is_a_value_error() -> None:
    # LoadRun.stop catches ValueError to turn a missing report into a GuestError.
    assert issubclass(AbParseError, ValueError)


def test_as_dict_has_every_field() -> None:
    d = parse_ab_output(report("ab_failures.txt")).as_dict()
    assert d["failed_exceptions"] == 9 and d["complete"] == 23110
    assert "successful" not in d and len(d) == 11


def test_ab_command_puts_n_after_t() -> None:
    cmd = ab_command("http://127.0.0.1:8080/", concurrency=10, max_seconds=240, keepalive=False)
    assert cmd[0] == "ab"
    assert cmd[-1] == "http://127.0.0.1:8080/"
    # ab resets -n to 50000 when it meets -t after it: -n must come later.
    assert cmd.index("-t") < cmd.index("-n")
    assert cmd[cmd.index("-t") + 1] == "240"
    assert cmd[cmd.index("-n") + 1] == "1200000"  # 5000 req/s for the whole bound
    assert cmd[cmd.index("-c") + 1] == "10"
    assert "-l" in cmd and "-r" in cmd
    assert "-k" not in cmd
    assert all(isinstance(a, str) for a in cmd)


def test_ab_command_keepalive_adds_k() -> None:
    cmd = ab_command("http://127.0.0.1:8080/", concurrency=3, max_seconds=30.4, keepalive=True)
    assert cmd.count("-k") == 1
    assert cmd[-1] == "http://127.0.0.1:8080/"
    assert cmd[cmd.index("-t") + 1] == "30"
    assert cmd.index("-t") < cmd.index("-n")


def test_ab_command_post_sends_the_body_file_with_its_type() -> None:
    cmd = ab_command("http://127.0.0.1:8080/", concurrency=10, max_seconds=60, keepalive=True,
                     method="POST", body_file="/run/pwt/body",
                     content_type="application/x-www-form-urlencoded")
    assert cmd[cmd.index("-p") + 1] == "/run/pwt/body"
    assert cmd[cmd.index("-T") + 1] == "application/x-www-form-urlencoded"
    assert "-k" in cmd and cmd[-1] == "http://127.0.0.1:8080/"
    assert "-p" not in ab_command("http://127.0.0.1:8080/", 10, 60, keepalive=True)


@pytest.mark.parametrize(("method", "body_file", "match"), [
    ("PUT", None, "GET or POST"), ("POST", None, "needs body_file"),
    ("GET", "/run/pwt/body", "needs body_file"),
])
def test_ab_command_refuses_a_body_that_does_not_fit(method: str, body_file: str | None,
                                                     match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ab_command("http://127.0.0.1:8080/", 2, 10, False, method=method, body_file=body_file)


@pytest.mark.skipif(shutil.which("ab") is None, reason="ab (apache2-utils) is not installed")
def test_real_ab_posts_and_the_server_counts_each(start_server: StartServer, state_dir: Path,
                                                  tmp_path: Path) -> None:
    """A JSON body (it has a space): a server that left it unread would take it for the start
    of the next request line on the keep-alive connection, and answer that with 400."""
    server = start_server(greeting="Hola")
    body = tmp_path / "body"
    body.write_text('{"name": "visitor"}')
    cmd = ab_command(f"http://127.0.0.1:{server.port}/", concurrency=2, max_seconds=5,
                     keepalive=True, method="POST", body_file=str(body),
                     content_type="application/json")
    cmd[cmd.index("-n") + 1] = "20"  # 20 requests, not the bound's worth
    result = parse_ab_output(subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                                            check=True).stdout)
    assert (result.complete, result.failed, result.successful) == (20, 0, 20)
    assert result.keepalive_requests == 20  # the bodies did not break the connections
    assert (state_dir / "visitors").read_text() == "20\n"

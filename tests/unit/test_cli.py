"""``portable-upgrade`` (vm/plugin/cli.py): its options are the settings, its ``run`` is pytest
on the suite the package ships, and the package registers the command and the plugin."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from pytest_portable_upgrade.core.config import SETTINGS, options_markdown
from pytest_portable_upgrade.plugin import cli
from pytest_portable_upgrade.report.matrix import SUITE


def run_args(*argv: str) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli._run_parser(sub)
    spec, rest = cli.split_spec(["run", *argv])
    args, rest = parser.parse_known_args(rest)
    args.spec = spec
    return args, rest


def test_run_is_pytest_on_the_shipped_suite_with_the_settings_as_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    args, rest = run_args("spec.toml", "--box", "debian-trixie", "--artifacts-always",
                          "-k", "rollback", "--concurrency=3")
    command = cli.pytest_command(args, rest)
    assert command[:3] == [sys.executable, "-m", "pytest"]
    assert command[3:5] == ["--pyargs", SUITE] and "--report-html" in command
    assert "--service=spec.toml" in command and "--box=debian-trixie" in command
    assert "--artifacts-always" in command and "--concurrency=3" in command
    assert command[-2:] == ["-k", "rollback"]  # pytest's own arguments, as given
    ini = Path(command[command.index("-c") + 1])
    assert ini.is_file() and f"--rootdir={tmp_path}" in command


def test_an_abbreviated_option_is_not_taken_for_a_setting() -> None:
    args, rest = run_args("--conc", "3")  # pytest's to judge, not a prefix of --concurrency
    assert args.concurrency is None and rest == ["--conc", "3"]


def test_the_value_of_a_pytest_option_is_not_taken_for_the_spec() -> None:
    args, rest = run_args("-k", "rollback")
    assert args.spec is None and rest == ["-k", "rollback"]
    args, rest = run_args("my.toml", "-k", "rollback")
    assert args.spec == Path("my.toml") and rest == ["-k", "rollback"]


def test_every_setting_is_an_option_of_run() -> None:
    text = subprocess.run([sys.executable, "-m", "pytest_portable_upgrade.plugin.cli", "run",
                           "--help"], capture_output=True, text=True, check=True).stdout
    assert [s.name for s in SETTINGS if f"--{s.name}" not in text] == []
    text = " ".join(text.split())  # argparse wraps the help
    assert "[default 1800; env PWT_BOX_BUILD_TIMEOUT]" in text


def test_options_prints_the_options_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["options"]) == 0
    assert capsys.readouterr().out == options_markdown()


def test_the_package_registers_the_command_and_the_plugin() -> None:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "portable-upgrade"]
    assert script.load() is cli.main
    (plugin,) = [e for e in entry_points(group="pytest11") if e.name == "portable_upgrade"]
    assert plugin.value == "pytest_portable_upgrade.plugin.plugin"


def test_capacity_is_pytest_on_the_capacity_map_with_the_same_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli._run_parser(sub, "capacity", "the map")
    spec, rest = cli.split_spec(["capacity", "spec.toml", "--capacity-delays", "0", "-x"])
    args, rest = parser.parse_known_args(rest)
    args.spec = spec
    command = cli.pytest_command(args, rest)
    assert command[3:5] == ["--pyargs", "pytest_portable_upgrade.plugin.capacity"]
    assert "--report-html" not in command and SUITE not in command
    assert "--service=spec.toml" in command and "--capacity-delays=0" in command
    assert command[-1] == "-x"

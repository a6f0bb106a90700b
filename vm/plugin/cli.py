"""``portable-upgrade``: the suite as a command, for a directory that holds only a spec.

    portable-upgrade setup-host            # once, as root: the repository's ./setup-host
    portable-upgrade run spec.toml         # the scenario suite against that spec
    portable-upgrade run spec.toml -k rollback --box debian-trixie
    portable-upgrade capacity              # the switch-capacity map (docs/capacity.md)
    portable-upgrade matrix --boxes debian-bookworm,debian-trixie -- --service spec.toml
    portable-upgrade options               # docs/options.md, from core/config.py

``run`` is pytest on the suite the package ships (``--pyargs pytest_portable_upgrade.plugin
.suite``) with the plugin's HTML report on; the report lands in ./artifacts/<run id>/ unless
``--artifacts`` says otherwise. Its options are the settings (docs/options.md); every other
argument goes to pytest as it is (``-k``, ``-x``, ``--junitxml=...``). ``capacity`` takes the
same and runs the capacity map's points (``--pyargs pytest_portable_upgrade.plugin.capacity``)
instead of the scenarios.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_portable_upgrade.core.config import SETTINGS, default_text, options_markdown
from pytest_portable_upgrade.core.resources import resource
from pytest_portable_upgrade.report.matrix import SUITE_ARGS

PROG = "portable-upgrade"
CAPACITY_ARGS = ("--pyargs", "pytest_portable_upgrade.plugin.capacity")


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str = "run",
                what: str = "the scenario suite") -> None:
    # SPEC is taken by hand (split_spec): as an argparse positional it would swallow the
    # value of a pytest option it does not know ("-k rollback").
    run = sub.add_parser(
        name, allow_abbrev=False, help=f"run {what} against a spec",
        usage=f"{PROG} {name} [SPEC] [options] [pytest arguments]",
        description=f"Run {what} against SPEC (the subject spec, TOML: the same "
                    "as --service); every argument that is not an option below goes to pytest.")
    for s in SETTINGS:
        if s.flag:
            run.add_argument(f"--{s.name}", action="store_true", default=None,
                             help=f"{s.help} [default {default_text(s)}; env {s.env}=1]")
        else:
            run.add_argument(f"--{s.name}", metavar=s.metavar, default=None,
                             help=f"{s.help} [default {default_text(s)}; env {s.env}]")


def split_spec(argv: Sequence[str]) -> tuple[Path | None, list[str]]:
    """``run SPEC ...``: the spec is the first argument after ``run`` if it is no option."""
    argv = list(argv)
    if len(argv) > 1 and argv[0] in ("run", "capacity") and not argv[1].startswith("-"):
        return Path(argv[1]), [argv[0], *argv[2:]]
    return None, argv


def pytest_command(args: argparse.Namespace, passthrough: Sequence[str]) -> list[str]:
    """The pytest command ``run`` stands for (the settings as the plugin's own options)."""
    suite = CAPACITY_ARGS if args.command == "capacity" else SUITE_ARGS
    command = [sys.executable, "-m", "pytest", *suite,
               # its own (empty) configuration: whatever pytest.ini the directory holds
               "-c", str(resource("pytest_portable_upgrade.plugin.suite", "pytest.ini")),
               f"--rootdir={Path.cwd()}", "-p", "no:cacheprovider"]
    if args.spec is not None:
        command.append(f"--service={args.spec}")
    for s in SETTINGS:
        value = getattr(args, s.name.replace("-", "_"))
        if value is None:
            continue
        command.append(f"--{s.name}" if s.flag else f"--{s.name}={value}")
    return [*command, *passthrough]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _run_parser(sub, "capacity", "the switch-capacity map (docs/capacity.md)")
    setup = sub.add_parser("setup-host", help="set up this host (root): packages, libvirt, "
                                              "the storage pool")
    setup.add_argument("--stop-daemons", action="store_true",
                       help="stop the daemons setup-host started")
    sub.add_parser("matrix", add_help=False,
                   help="the suite on several boxes, one joined report (matrix --help)")
    sub.add_parser("options", help="print docs/options.md (every option of a run)")
    spec, argv = split_spec(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(argv)
    args.spec = spec
    if args.command == "options":
        print(options_markdown(), end="")
        return 0
    if args.command == "setup-host":
        script = resource("pytest_portable_upgrade.plugin", "setup-host.sh")
        os.execvp("bash", ["bash", str(script), *(["--stop-daemons"] if args.stop_daemons
                                                  else [])])
    if args.command == "matrix":
        from pytest_portable_upgrade.report.matrix import main as matrix_main

        return matrix_main(rest)
    command = pytest_command(args, rest)
    print(f"[{PROG}] {' '.join(command[2:])}", file=sys.stderr, flush=True)
    # pytest takes this process over: a Ctrl-C reaches it alone, and its own clean-up
    # (destroying the VM) is not cut short by a parent that would kill it.
    os.execv(sys.executable, command)


if __name__ == "__main__":
    sys.exit(main())

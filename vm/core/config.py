"""Run settings, each declared once: a ``Setting`` on its field of ``Settings`` or
``LoadSettings`` holds the option's name, its ``PWT_*`` environment variable, its type, its
check and its help; the field holds the default.

The pytest options (pytest_portable_upgrade/plugin), the ``portable-upgrade`` command line and
docs/options.md (``portable-upgrade options > docs/options.md``) are all made from
``SETTINGS``; tests/unit/test_config.py keeps the document in step.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pytest_portable_upgrade.boxes.recipes import BOXES, DEFAULT_BOX, get_box
from pytest_portable_upgrade.subject.spec import DEFAULT_SPEC

KEEP_VM_CHOICES = ("never", "on-error", "always")
PROVIDER_CHOICES = ("libvirt", "virtualbox")
ACCEL_CHOICES = ("auto", "kvm", "tcg")
RESTORE_CHOICES = ("on", "off")
# The client beside ab in the keep-alive scenarios: hey (Go's net/http, which resends a GET
# whose reused connection died: vm/load/hey.py), or none (ab and the probe only).
SECOND_CLIENT_CHOICES = ("hey", "none")
# One thread per request in the guest: beyond this the probe, not ab, would be the load.
MAX_PROBE_RATE = 200.0
# How a PWT_* variable spells a yes or a no for a flag (its option takes no value).
TRUE_WORDS, FALSE_WORDS = ("1", "yes", "true", "on"), ("0", "no", "false", "off", "")
# A check returns the problem ("must be at least 1, not 0"), or None.
Check = Callable[[Any], "str | None"]


class SettingError(ValueError):
    """A setting the suite cannot use; the message is one line: option, variable, value."""


@dataclass(frozen=True)
class Setting:
    """One option: ``--NAME`` on the command line, ``PWT_NAME`` in the environment."""

    name: str
    help: str
    kind: type = str  # str, int, float, bool (a flag), Path
    choices: tuple[str, ...] = ()
    check: Check | None = None
    default_doc: str = ""  # the default in words, when the field's value is computed
    value_name: str = ""  # what the value is called in --help (default: by its kind)

    @property
    def env(self) -> str:
        return "PWT_" + self.name.upper().replace("-", "_")

    @property
    def flag(self) -> bool:
        return self.kind is bool

    @property
    def metavar(self) -> str:
        if self.choices:
            return "{" + ",".join(self.choices) + "}"
        return self.value_name or {int: "N", float: "SECONDS", Path: "PATH"}.get(self.kind, "NAME")

    def parse(self, raw: str) -> Any:
        """The value of ``raw`` (from the command line or the environment), or SettingError."""
        if self.flag:
            word = raw.strip().lower()
            if word in TRUE_WORDS + FALSE_WORDS:
                return word in TRUE_WORDS
            words = ", ".join(TRUE_WORDS + FALSE_WORDS[:-1])
            raise SettingError(f"--{self.name} ({self.env}) must be one of {words}, not {raw!r}")
        try:
            return self.kind(raw)
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(self.kind, self.kind.__name__)
            raise SettingError(f"--{self.name} ({self.env}) must be {what}, not {raw!r}") from None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` ("keep-vm must be one of ..."), or None."""
        if self.choices and value not in self.choices:
            return f"{self.name} must be one of {', '.join(self.choices)}, not {value!r}"
        if self.check is not None and value is not None and (why := self.check(value)):
            return f"{self.name} {why}"
        return None


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **setting: Any) -> Any:
    """A dataclass field that is also an option (``Setting(**setting)``)."""
    metadata = {"setting": Setting(**setting)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def positive_seconds(value: float) -> str | None:
    if math.isfinite(value) and value > 0:
        return None
    return f"must be a positive number of seconds, not {value:g}"


def at_least(low: int) -> Check:
    return lambda value: None if value >= low else f"must be at least {low}, not {value}"


def probe_rate_problem(value: float) -> str | None:
    if math.isfinite(value) and 0 < value <= MAX_PROBE_RATE:
        return None
    return (f"must be a number of requests per second in (0, {MAX_PROBE_RATE:g}], "
            f"not {value:g}")


def backlogs_of(text: str) -> tuple[int | None, ...]:
    """--capacity-backlogs: each a socket's Backlog= (>= 1) or ``default`` (None: no drop-in).

    >>> backlogs_of("4, 16,default")
    (4, 16, None)
    """
    values: list[int | None] = []
    for word in _words(text):
        if word == "default":
            values.append(None)
        elif not word.isdigit() or int(word) < 1:
            raise ValueError(f"a backlog is a whole number >= 1 or default, not {word!r}")
        else:
            values.append(int(word))
    return tuple(values)


def delays_of(text: str) -> tuple[float, ...]:
    """--capacity-delays: the new version's start delays, seconds >= 0."""
    values = []
    for word in _words(text):
        try:
            value = float(word)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 60:
            raise ValueError(f"a start delay is 0 to 60 seconds, not {word!r}")
        values.append(value)
    return tuple(values)


def rates_of(text: str) -> tuple[tuple[float, int], ...]:
    """--capacity-rates: each ``PROBE_RATE/CONCURRENCY``, the probe's open-loop rate (per s)
    and ab's concurrency.

    >>> rates_of("20/10,50/30")
    ((20.0, 10), (50.0, 30))
    """
    values = []
    for word in _words(text):
        rate, sep, clients = word.partition("/")
        try:
            value = (float(rate), int(clients))
        except ValueError:
            value = (0.0, 0)
        if not sep or probe_rate_problem(value[0]) is not None or value[1] < 1:
            raise ValueError(f"a rate is PROBE_RATE/CONCURRENCY (probe requests/s in "
                             f"(0, {MAX_PROBE_RATE:g}], ab clients >= 1), not {word!r}")
        values.append(value)
    return tuple(values)


def _words(text: str) -> list[str]:
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise ValueError("the list is empty")
    return words


def list_check(parse: Callable[[str], Any]) -> Check:
    """A check that ``parse`` accepts the comma-separated list (its problem, or None)."""
    def check(value: str) -> str | None:
        try:
            parse(value)
        except ValueError as e:
            return f"is a comma-separated list: {e}"
        return None

    return check


def ssh_port_problem(value: int) -> str | None:
    return None if value == 0 or 1024 <= value <= 65535 else (
        f"must be 0 (pick one) or 1024..65535, not {value}")


def finite_seconds(value: float) -> str | None:
    return None if math.isfinite(value) else f"must be a finite number of seconds, not {value:g}"


def default_state_dir() -> Path:
    # qemu runs as libvirt-qemu and must reach the boxes and console logs: not under /root.
    if os.geteuid() == 0:
        return Path("/var/lib/portable-walkthrough-tests")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pwt"


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class LoadSettings:
    """The load around the reattach: ab runs from ``switch_after_s`` before the reattach until
    v2 has answered for ``post_switch_s``, never longer than ``max_s`` (ab's own -t bound)."""

    concurrency: int = option(10, name="concurrency", kind=int, check=at_least(1),
                              help="ab's concurrency (-c)")
    switch_after_s: float = option(5.0, name="switch-after", kind=float,
                                   check=positive_seconds,
                                   help="seconds of load before the reattach")
    post_switch_s: float = option(10.0, name="post-switch", kind=float,
                                  check=positive_seconds,
                                  help="seconds v2 must answer under load before the load stops")
    max_s: float = option(240.0, name="load-max", kind=float, check=finite_seconds,
                          help="upper bound of one load run in seconds (ab -t); must exceed "
                               "switch-after + post-switch")
    min_complete: int = option(200, name="min-complete", kind=int, check=at_least(1),
                               help="fewest completed ab requests that count as load")
    # 20/s resolves the timeline in 50 ms steps and is a small share of what the server does
    # under TCG (134-167 req/s seen without keep-alive): an open-loop probe near the server's
    # capacity would queue behind itself.
    probe_rate: float = option(20.0, name="probe-rate", kind=float, check=probe_rate_problem,
                               value_name="RATE",
                               help="the probe's fixed arrival rate, requests/s")
    second_client: str = option("hey", name="second-client", choices=SECOND_CLIENT_CHOICES,
                                help="the client beside ab in the keep-alive scenarios: hey "
                                     "(Go's HTTP stack, which resends a GET; docs/clients.md)"
                                     " or none; a box without hey runs ab alone and says so")
    max_stall_s: float | None = option(None, name="max-stall", kind=float,
                                       check=positive_seconds, default_doc="off",
                                       help="fail a run whose longest gap without an answer "
                                            "exceeds this many seconds")

    def validate(self) -> None:
        check_fields(self)
        if self.max_s <= self.switch_after_s + self.post_switch_s:
            raise SettingError(
                f"load bound {self.max_s:g} s leaves no time for the reattach: it must exceed "
                f"switch-after + post-switch = {self.switch_after_s + self.post_switch_s:g} s"
            )

    @property
    def probe_max_in_flight(self) -> int:
        """The probe's bound on outstanding requests: 200, or 10 s of sending if more."""
        return max(200, math.ceil(self.probe_rate * 10))


@dataclass(frozen=True)
class Settings:
    service: Path = option(DEFAULT_SPEC, name="service", kind=Path,
                           default_doc="the walkthrough server (package data)",
                           help="subject spec (TOML) of the service under test "
                                "(docs/spec.md)")
    box: str = option(DEFAULT_BOX, name="box",
                      help=f"guest box to boot: {', '.join(BOXES)} (docs/boxes.md)")
    accel: str = option("auto", name="accel", choices=ACCEL_CHOICES,
                        help="accelerator (auto probes KVM with a real boot)")
    provider: str = option("libvirt", name="provider", choices=PROVIDER_CHOICES,
                           help="Vagrant provider")
    restore: str = option("on", name="restore", choices=RESTORE_CHOICES,
                          help="on: restore the box's saved booted guest (made by the first "
                               "cold boot); off: boot cold and save nothing")
    keep_vm: str = option("never", name="keep-vm", choices=KEEP_VM_CHOICES,
                          help="keep the VM after the run")
    state_dir: Path = option(default_factory=default_state_dir, name="state-dir", kind=Path,
                             default_doc="/var/lib/portable-walkthrough-tests as root, else "
                                         "~/.cache/pwt",
                             help="cache of boxes, images, keys and per-run VM dirs")
    artifacts_root: Path = option(Path("artifacts"), name="artifacts", kind=Path,
                                  help="where run reports and failure logs go (one directory "
                                       "per run, and a `last` link)")
    artifacts_always: bool = option(False, name="artifacts-always", kind=bool,
                                    help="save journals, probe log and ab.out for passing "
                                         "runs too")
    report_html: bool = option(False, name="report-html", kind=bool,
                               help="write report.html (pytest-html, self-contained) beside "
                                    "summary.md; `portable-upgrade run` and `tox -e "
                                    "integration` turn it on")
    pool: str = option("pwt", name="pool", help="libvirt storage pool (setup-host defines it)")
    repeat: int = option(1, name="repeat", kind=int, check=at_least(1),
                         help="run every scenario N times on the one VM (verdict stability)")
    run_timeout_s: float | None = option(None, name="run-timeout", kind=float,
                                         check=positive_seconds, default_doc="none",
                                         help="end the whole run (cleanly, VM destroyed) "
                                              "after this many seconds")
    boot_timeout_s: float = option(900.0, name="boot-timeout", kind=float,
                                   check=positive_seconds,
                                   help="seconds for vagrant up to reach SSH")
    box_build_timeout_s: float = option(1800.0, name="box-build-timeout", kind=float,
                                        check=positive_seconds, help="seconds for a box build")
    reattach_timeout_s: float = option(240.0, name="reattach-timeout", kind=float,
                                       check=positive_seconds,
                                       help="seconds one portablectl attach/reattach may take")
    unit_timeout_s: float = option(60.0, name="unit-timeout", kind=float,
                                   check=positive_seconds,
                                   help="seconds a unit may take to become active")
    ssh_port: int = option(0, name="ssh-port", kind=int, check=ssh_port_problem,
                           default_doc="0: a free one",
                           help="127.0.0.1 port for the VM's SSH")
    # The capacity map (portable-upgrade capacity, tox -e capacity): every combination of
    # the three lists is one reattach under load (docs/capacity.md).
    capacity_backlogs: str = option("4,16,64,default", name="capacity-backlogs",
                                    check=list_check(backlogs_of), value_name="LIST",
                                    help="capacity map: the host socket's Backlog= values; "
                                         "the word default runs the unit's own (no "
                                         "drop-in)")
    capacity_delays: str = option("0,2,5", name="capacity-delays",
                                  check=list_check(delays_of), value_name="LIST",
                                  help="capacity map: seconds the service waits at each start "
                                       "before it accepts (PW_START_DELAY in a service "
                                       "drop-in; the walkthrough server honours it)")
    capacity_rates: str = option("20/10,50/30", name="capacity-rates",
                                 check=list_check(rates_of), value_name="LIST",
                                 help="capacity map: offered loads, each PROBE_RATE/CONCURRENCY "
                                      "(the probe's open-loop rate per s, ab's -c)")
    load: LoadSettings = field(default_factory=LoadSettings)
    # Not options: fixed by the suite or made per run.
    run_id: str = field(default_factory=new_run_id)
    memory_mb: int = 2048
    cpus: int = 2
    libvirt_uri: str = "qemu:///system"

    def validate(self) -> None:
        check_fields(self)
        try:
            recipe = get_box(self.box)
        except ValueError as e:  # "unknown box 'x'; known boxes: ..."
            raise SettingError(str(e)) from None
        if self.provider not in recipe.providers:
            raise SettingError(f"box {self.box} has no {self.provider} version "
                               f"(it has: {', '.join(recipe.providers)})")
        if self.memory_mb < 512 or self.cpus < 1:
            raise SettingError("the VM needs at least 512 MB and 1 CPU")
        self.load.validate()

    @property
    def artifacts_dir(self) -> Path:
        return self.artifacts_root / self.run_id

    @property
    def run_dir(self) -> Path:
        """Per-run scratch on the host: Vagrantfile, .vagrant, console log."""
        return self.state_dir / "runs" / self.run_id


def _declared(cls: type) -> Iterator[tuple[Setting, tuple[str, ...], Any]]:
    """(setting, field path, default) of every option on ``cls`` and its nested settings."""
    for f in fields(cls):
        if "setting" in f.metadata:
            default = f.default if f.default is not MISSING else None
            yield f.metadata["setting"], (f.name,), default
        elif f.name == "load":
            for setting, path, default in _declared(LoadSettings):
                yield setting, (f.name, *path), default


SETTINGS: tuple[Setting, ...] = tuple(s for s, _, _ in _declared(Settings))
_PATHS = {s.name: path for s, path, _ in _declared(Settings)}
_DEFAULTS = {s.name: default for s, _, default in _declared(Settings)}


def get_setting(name: str) -> Setting:
    return next(s for s in SETTINGS if s.name == name)


def check_fields(obj: Settings | LoadSettings) -> None:
    """Every option's own check on the values of ``obj`` (the first problem, raised)."""
    for f in fields(obj):
        if "setting" in f.metadata and (why := f.metadata["setting"].problem(getattr(obj, f.name))):
            raise SettingError(why)


def raw_value(setting: Setting, given: Mapping[str, str | None]) -> str | None:
    """The text of ``setting``: the command line's (``given`` by name) wins over PWT_*."""
    raw = given.get(setting.name)
    return raw if raw is not None else os.environ.get(setting.env)


def value_of(setting: Setting, given: Mapping[str, str | None]) -> Any:
    """The parsed value of one setting, or its default when neither source names it."""
    raw = raw_value(setting, given)
    return _DEFAULTS[setting.name] if raw is None else setting.parse(raw)


def settings_from(given: Mapping[str, str | None], base: Path | None = None,
                  **fixed: Any) -> Settings:
    """Settings from option texts (by name; None: not given) and PWT_* variables, checked.

    Relative paths are taken from ``base`` (where the command ran). Raises SettingError with
    one line."""
    top: dict[str, Any] = dict(fixed)
    load: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = raw_value(setting, given)
        if raw is None:
            continue
        value = setting.parse(raw)
        if isinstance(value, Path) and base is not None:
            value = base / value
        path = _PATHS[setting.name]
        (load if path[0] == "load" else top)[path[-1]] = value
    settings = Settings(**top)
    if load:
        settings = replace(settings, load=LoadSettings(**load))
    if base is not None and not settings.artifacts_root.is_absolute():
        settings = replace(settings, artifacts_root=base / settings.artifacts_root)
    settings.validate()
    return settings


def default_text(setting: Setting) -> str:
    """The default of ``setting`` in words: what --help and docs/options.md show."""
    if setting.default_doc:
        return setting.default_doc
    value = _DEFAULTS[setting.name]
    if setting.flag:
        return "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def options_markdown() -> str:
    """docs/options.md: every option, its variable, its default and what it does."""

    def default(setting: Setting) -> str:
        text = default_text(setting)
        return text if setting.default_doc or setting.flag else f"`{text}`"

    lines = [
        "# Options",
        "",
        "Every option of a run, as `pytest` (with the plugin), `portable-upgrade run` and",
        "`tox -e integration -- ...` take it. Each has a `PWT_*` environment variable (tox passes",
        "them through); the command line wins. A flag's variable takes 1, yes, true, on or",
        "0, no, false, off. A bad value ends the run before anything boots, with one line.",
        "",
        "This file is generated from `pytest_portable_upgrade/core/config.py` (vm/core/config.py):",
        "`portable-upgrade options > docs/options.md`. tests/unit/test_config.py fails when",
        "they differ.",
        "",
        "| option | variable | default | what it does |",
        "|---|---|---|---|",
    ]
    for s in SETTINGS:
        name = f"`--{s.name}`" if s.flag else f"`--{s.name} {s.metavar}`"
        lines.append(f"| {name} | `{s.env}` | {default(s)} | {s.help} |")
    return "\n".join(lines) + "\n"

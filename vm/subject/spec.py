"""The service under test, read from a subject spec (TOML): everything the suite knows of it.

The suite proves one thing about any socket-activated portable service: that
``portablectl reattach --now`` swaps its versions behind a host socket without losing a
request. What it has to know about the service is here and nowhere else: its portable prefix,
its images, its host socket, its port and request, how an answer names its version (and,
optionally, a counter that must only go up), its profile, the host drop-ins it needs and which
scenarios apply. ``images/walkthrough.toml`` is the default subject; README "Test your own
service" documents every key.

A bad spec ends the run before anything boots with one line naming the file and the key
(``SpecError``).
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_portable_upgrade.core.errors import HarnessError
from pytest_portable_upgrade.core.resources import resource

if TYPE_CHECKING:
    from pytest_portable_upgrade.scenarios.catalogue import Scenario

PORTABLES = "/var/lib/portables"
DEFAULT_SPEC = resource("pytest_portable_upgrade.walkthrough", "walkthrough.toml")
PROFILES = ("default", "nonetwork", "strict", "trusted")
# Drop-ins the suite installs for the service are named 50-pwt-*.conf: reset removes them all.
DROPIN_PREFIX = "50-pwt-"
# A portable prefix: what portablectl accepts as an image name before _<version>.raw.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
UNIT_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._-]*\.socket$")
TOP_KEYS = frozenset({"name", "service", "port", "profile", "sockets", "scenarios",
                      "state_directories", "checks", "request", "answer", "dropins",
                      "shutdown", "build", "versions", "extension", "versioned_dir"})
REQUEST_KEYS = frozenset({"path", "host", "method", "body", "content_type"})
# The methods the clients send: GET, and POST with the spec's body (a POST is not resent by
# Go's client, so a lost one shows where a GET's loss hides: vm/load/hey.py).
METHODS = ("GET", "POST")
DEFAULT_CONTENT_TYPE = "text/plain"
ANSWER_KEYS = frozenset({"version_regex", "version_header", "counter_regex"})
BUILD_KEYS = frozenset({"suite", "packages", "files"})
VERSION_KEYS = frozenset({"answer", "image", "extension"})
EXTENSION_KEYS = frozenset({"base", "release"})
# What an extension may carry: the hierarchies systemd merges from it (its sysext default).
EXTENSION_HIERARCHIES = ("/usr/", "/opt/")
EXTENSION_RELEASE_DIR = "/usr/lib/extension-release.d"
# The os-release VERSION_ID of the Debian suites a built base comes from (sid has none): what a
# built extension's own extension-release is checked against before anything boots.
DEBIAN_VERSION_IDS: dict[str, str | None] = {"bookworm": "12", "trixie": "13", "forky": "14",
                                             "sid": None, "unstable": None}


class SpecError(HarnessError):
    """A subject spec the suite cannot use; the message is one line: file, key, what to fix."""


@dataclass(frozen=True)
class Version:
    number: int
    answer: str  # what the version regex (or header) reads from this version's answers
    image: Path | None = None  # a ready image; None: the suite builds it from [build]


@dataclass(frozen=True)
class Build:
    """A recipe for the suite's image builder (vm/subject/build-image.sh): a Debian minbase with
    ``packages``, plus ``files`` (path in the image -> file beside the spec)."""

    suite: str
    packages: tuple[str, ...]
    files: tuple[tuple[str, Path], ...]


@dataclass(frozen=True)
class Extension:
    """The subject as a base image (the runtime, attached as is) with one app extension image
    per version (``portablectl attach --extension``): ready files, or built from ``[build]``
    (the base: minbase + packages; each extension: ``[build.files]`` and its
    ``extension-release.<name>``)."""

    base: Path | None = None  # a ready base image; None: built
    images: dict[int, Path] = field(default_factory=dict)  # ready extension images by version
    release: Path | None = None  # built: the extension-release to ship (None: the base's IDs)

    @property
    def ready(self) -> bool:
        return self.base is not None


@dataclass(frozen=True)
class Subject:
    """One service under test; see the module docstring and README for the keys."""

    spec: Path
    name: str
    service: str
    port: int
    profile: str
    sockets: tuple[Path, ...]
    scenarios: tuple[str, ...]  # scenario ids or fnmatch patterns ("*": every scenario)
    versions: dict[int, Version]
    request_path: str = "/"
    request_host: str = "probe"
    request_method: str = "GET"  # what the scenarios send unless one asks for a method
    request_body: str | None = None  # a POST's body; None: the subject takes no POST
    request_content_type: str = DEFAULT_CONTENT_TYPE
    version_regex: str | None = None  # searched in the body; group 1 (or the match) names it
    version_header: str | None = None  # or: this response header's value names it
    counter_regex: str | None = None  # group 1: a number that must only go up
    state_directories: tuple[str, ...] = ()
    dropins: dict[str, str] = field(default_factory=dict)  # file name -> text, always
    shutdown: dict[str, str] = field(default_factory=dict)  # scenario shutdown mode -> text
    build: Build | None = None
    checks: Path | None = None  # a directory of the user's own pytest files
    extension: Extension | None = None  # how it splits into a base and extensions
    versioned_dir: Path | None = None  # a ready <name>.v/ its versions' images come from

    # --- names in the guest ---------------------------------------------------------------
    @property
    def socket_units(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.sockets)

    @property
    def socket(self) -> str:
        """The socket whose life the verdict watches (the first one named)."""
        return self.socket_units[0]

    @property
    def symlink(self) -> str:
        return f"{PORTABLES}/{self.name}.raw"

    def image_name(self, version: int) -> str:
        return f"{self.name}_{version}.raw"

    def image_path(self, version: int) -> str:
        return f"{PORTABLES}/{self.image_name(version)}"

    def image_paths(self) -> list[str]:
        return [self.image_path(v) for v in self.versions] + [self.symlink]

    @property
    def base_name(self) -> str:
        """The base image's file name in the extension layout."""
        return f"{self.name}-base.raw"

    @property
    def dropin_dir(self) -> str:
        return f"/etc/systemd/system/{self.service}.d"

    def answer(self, version: int) -> str:
        return self.versions[version].answer

    # --- how the guest clients read an answer --------------------------------------------
    def cannot_send(self, method: str) -> str | None:
        """Why this subject's clients cannot send ``method`` (a skip reason), or None."""
        if method not in METHODS:
            return (f"{self.name} ({self.spec}): the clients send {' or '.join(METHODS)},"
                    f" not {method}")
        if method == "POST" and self.request_body is None:
            return (f"{self.name} ({self.spec}) has no [request] body: a POST needs one "
                    "(body = \"...\")")
        return None

    def method_for(self, method: str | None) -> str:
        """The method a run sends: ``method`` when a scenario asks for one, else the spec's."""
        return self.request_method if method is None else method

    def client_args(self, method: str | None = None) -> list[str]:
        """The arguments vm/load/guest/probe.py and hold_connections.py take to send the
        subject's request and read its answers (they know nothing of any service by
        themselves). ``method``: a scenario's own (None: the spec's); a POST adds
        ``--method POST --body BODY --content-type TYPE``, a GET nothing."""
        sent = self.method_for(method)
        if (why := self.cannot_send(sent)) is not None:
            raise ValueError(why)
        args = ["--path", self.request_path, "--host-header", self.request_host]
        if sent == "POST":
            assert self.request_body is not None
            args += ["--method", "POST", "--body", self.request_body,
                     "--content-type", self.request_content_type]
        if self.version_header is not None:
            args += ["--version-header", self.version_header]
        else:
            assert self.version_regex is not None
            args += ["--version-regex", self.version_regex]
        if self.counter_regex is not None:
            args += ["--counter-regex", self.counter_regex]
        return args

    # --- scenarios ------------------------------------------------------------------------
    def lists(self, scenario_id: str) -> bool:
        return any(fnmatch.fnmatchcase(scenario_id, p) for p in self.scenarios)

    def cannot_run(self, scenario: Scenario) -> str | None:
        """Why this subject cannot run ``scenario`` (a skip reason), or None when it can."""
        where = f"{self.name} ({self.spec})"
        if not self.lists(scenario.id):
            return f"{where} does not list {scenario.id} in its scenarios"
        missing = {scenario.from_version, scenario.to_version} - set(self.versions)
        if missing:
            return f"{where} has no version {', '.join(map(str, sorted(missing)))}"
        if scenario.socket_location == "image" and self.build is None:
            return (f"{where}: a socket inside the image needs images built by the suite "
                    "([build]); ready images cannot be changed")
        if scenario.layout != "extension" and self.build is None and any(
                v.image is None for v in self.versions.values()):
            return (f"{where} has only extensions: a whole image per version "
                    "(versions.N.image or [build]) runs the other scenarios")
        if scenario.layout == "extension" and self.extension is None:
            return (f"{where} has no [extension]: the extension scenarios need the service "
                    "as a base image and an app extension per version")
        if (scenario.layout == "extension" and scenario.socket_location == "image"
                and self.extension is not None and self.extension.ready):
            return (f"{where}: a socket inside the extension needs extensions built by the "
                    "suite; ready ones cannot be changed")
        if scenario.shutdown != "drain" and scenario.shutdown not in self.shutdown:
            return (f"{where} has no way to shut down {scenario.shutdown!r} "
                    f"([shutdown] {scenario.shutdown} = drop-in text)")
        return self.cannot_send(self.method_for(scenario.method))

    def profile_for(self, scenario: Scenario) -> str:
        """The profile a scenario attaches with: its own unless it just says "default"."""
        return self.profile if scenario.profile == "default" else scenario.profile


# --- reading a spec ------------------------------------------------------------------------
def _fail(spec: Path, key: str, what: str) -> SpecError:
    return SpecError(f"{spec}: {key}: {what}")


def _table(spec: Path, raw: dict[str, Any], key: str, allowed: frozenset[str] | None,
           ) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise _fail(spec, key, "must be a table")
    if allowed is not None:
        for k in value:
            if k not in allowed:
                known = ", ".join(sorted(allowed))
                raise _fail(spec, f"{key}.{k}", f"unknown key (known: {known})")
    return value


def _str(spec: Path, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(spec, key, "must be a non-empty string")
    return value


def _strings(spec: Path, value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(spec, key, "must be a list of non-empty strings")
    return tuple(value)


def _file(spec: Path, value: Any, key: str, directory: bool = False) -> Path:
    path = (spec.parent / _str(spec, value, key)).resolve()
    if not (path.is_dir() if directory else path.is_file()):
        raise _fail(spec, key, f"no such {'directory' if directory else 'file'}: {path}")
    return path


def _regex(spec: Path, value: Any, key: str) -> str:
    text = _str(spec, value, key)
    try:
        compiled = re.compile(text)
    except re.error as e:
        raise _fail(spec, key, f"does not compile: {e}") from None
    if compiled.groups > 1:
        raise _fail(spec, key, f"has {compiled.groups} groups; at most one (what it reads)")
    return text


def _dropins(spec: Path, raw: dict[str, Any], key: str, names: bool) -> dict[str, str]:
    out = {}
    for name, text in _table(spec, raw, key, None).items():
        where = f"{key}.{name}"
        if names and not re.fullmatch(r"[A-Za-z0-9_.-]+\.conf", name):
            raise _fail(spec, where, "a drop-in file name ends in .conf (e.g. \"stop.conf\")")
        if not isinstance(text, str) or not re.search(r"(?m)^\[\w+\]", text):
            raise _fail(spec, where, "must be unit-file text with a section, "
                                     "e.g. \"[Service]\\nKillSignal=SIGQUIT\\n\"")
        out[name] = text if text.endswith("\n") else text + "\n"
    return out


def listen_stream_ports(unit_text: str) -> list[int]:
    """The TCP ports of a socket unit's ``ListenStream=`` lines, in its [Socket] section:
    ``443``, ``0.0.0.0:443`` and ``[::]:443`` all listen on 443; a path (``/run/x.sock``),
    an abstract name (``@x``) or a vsock address has no port. An empty ``ListenStream=``
    resets the list, as it does for systemd."""
    ports: list[int] = []
    section = ""
    for raw in unit_text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if section != "Socket" or not sep or key.strip() != "ListenStream":
            continue
        value = value.strip()
        if not value:
            ports = []
        elif not value.startswith(("/", "@", "vsock:")) and (
            match := re.fullmatch(r"(?:.*:)?(\d+)", value)
        ):
            ports.append(int(match.group(1)))
    return ports


def load_subject(spec: Path) -> Subject:
    """Read and check ``spec``; every fault is a SpecError naming the file and the key."""
    spec = spec.resolve()
    try:
        raw = tomllib.loads(spec.read_text())
    except FileNotFoundError:
        raise SpecError(f"{spec}: no such subject spec (--service / PWT_SERVICE)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{spec}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{spec}: not valid TOML: {e}") from None
    for key in raw:
        if key not in TOP_KEYS:
            raise _fail(spec, key, f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    for key in ("name", "port", "sockets", "scenarios", "answer", "versions"):
        if key not in raw:
            raise _fail(spec, key, "missing")

    name = _str(spec, raw["name"], "name")
    if not NAME_RE.match(name) or "_" in name:
        raise _fail(spec, "name", f"{name!r} is no portable prefix (letters, digits, '-', '.')")
    service = _str(spec, raw.get("service", f"{name}.service"), "service")
    if not (service.startswith(name) and service.endswith(".service")):
        raise _fail(spec, "service", f"portablectl only attaches units named {name}*.service")
    port = raw["port"]
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise _fail(spec, "port", f"must be a TCP port number, not {port!r}")
    profile = raw.get("profile", "default")
    if profile not in PROFILES:
        raise _fail(spec, "profile", f"must be one of {', '.join(PROFILES)}, not {profile!r}")

    sockets = tuple(_file(spec, s, "sockets") for s in _strings(spec, raw["sockets"], "sockets"))
    if not sockets:
        raise _fail(spec, "sockets", "name at least one host .socket unit file")
    for s in sockets:
        if not UNIT_FILE_RE.match(s.name) or not s.name.startswith(name):
            raise _fail(spec, "sockets", f"{s.name}: a host socket is named {name}*.socket")
        # The clients connect to the spec's port; the socket must be what listens there.
        ports = listen_stream_ports(s.read_text())
        if not ports:
            raise _fail(spec, "port", f"{port}, but {s.name} has no ListenStream= with a TCP "
                                      f"port: add ListenStream={port} to its [Socket] section")
        if port not in ports:
            said = ", ".join(f"ListenStream={p}" for p in ports)
            raise _fail(spec, "port", f"{port}, but {s.name} has {said}: set port = {ports[0]}"
                                      f" here, or ListenStream={port} in {s.name}")

    request = _table(spec, raw, "request", REQUEST_KEYS)
    path = _str(spec, request.get("path", "/"), "request.path")
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise _fail(spec, "request.path", f"an absolute path without spaces, not {path!r}")
    host = _str(spec, request.get("host", "probe"), "request.host")
    method = request.get("method", "GET")
    if method not in METHODS:
        raise _fail(spec, "request.method", f"must be {' or '.join(METHODS)}, not {method!r}")
    body = request.get("body")
    if body is not None and not isinstance(body, str):
        raise _fail(spec, "request.body", f"must be a string (what a POST sends), not {body!r}")
    if method == "POST" and body is None:
        raise _fail(spec, "request.body", 'missing: method = "POST" sends a body '
                                          '(body = "name=visitor"; "" for an empty one)')
    content_type = request.get("content_type", DEFAULT_CONTENT_TYPE)
    if not isinstance(content_type, str) or not re.fullmatch(
            r"[\w.+-]+/[\w.+-]+(?:\s*;\s*[\w.+-]+=[\w.+\"-]+)*", content_type):
        raise _fail(spec, "request.content_type",
                    f"{content_type!r} is no media type (e.g. \"application/json\")")

    answer = _table(spec, raw, "answer", ANSWER_KEYS)
    body_re = answer.get("version_regex")
    header = answer.get("version_header")
    if (body_re is None) == (header is None):
        raise _fail(spec, "answer", "give exactly one of version_regex (on the body) and "
                                    "version_header (a header's value)")
    if body_re is not None:
        body_re = _regex(spec, body_re, "answer.version_regex")
    if header is not None and not re.fullmatch(r"[A-Za-z0-9-]+", _str(spec, header,
                                                                       "answer.version_header")):
        raise _fail(spec, "answer.version_header", f"{header!r} is no header name")
    counter = answer.get("counter_regex")
    if counter is not None:
        counter = _regex(spec, counter, "answer.counter_regex")
        if re.compile(counter).groups != 1:
            raise _fail(spec, "answer.counter_regex", "needs one group around the number")

    versions = _versions(spec, _table(spec, raw, "versions", None))
    versioned_dir = None
    if "versioned_dir" in raw:
        versioned_dir, versions = _versioned_dir(spec, name, raw["versioned_dir"], versions)
    build = _build(spec, _table(spec, raw, "build", BUILD_KEYS)) if "build" in raw else None
    extension = (_extension(spec, name, raw, versions, build) if "extension" in raw else None)
    for v in versions.values():
        if v.image is None and build is None and (extension is None or not extension.ready):
            raise _fail(spec, f"versions.{v.number}.image",
                        "missing: give a ready image, or a [build] recipe for all versions")

    state_dirs = _strings(spec, raw.get("state_directories", []), "state_directories")
    for d in state_dirs:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", d):
            raise _fail(spec, "state_directories", f"{d!r}: a name under /var/lib, no slashes")
    checks = _file(spec, raw["checks"], "checks", directory=True) if "checks" in raw else None
    subject = Subject(
        spec=spec, name=name, service=service, port=port, profile=profile, sockets=sockets,
        scenarios=_strings(spec, raw["scenarios"], "scenarios"), versions=versions,
        request_path=path, request_host=host, request_method=method, request_body=body,
        request_content_type=content_type, version_regex=body_re, version_header=header,
        counter_regex=counter, state_directories=state_dirs,
        dropins=_dropins(spec, raw, "dropins", names=True),
        shutdown=_dropins(spec, raw, "shutdown", names=False), build=build, checks=checks,
        extension=extension, versioned_dir=versioned_dir,
    )
    _check_scenarios(subject)
    return subject


def _versions(spec: Path, table: dict[str, Any]) -> dict[int, Version]:
    versions: dict[int, Version] = {}
    for key, value in table.items():
        where = f"versions.{key}"
        if not key.isdigit() or int(key) < 1:
            raise _fail(spec, where, "versions are numbered 1, 2, ... ([versions.1])")
        if not isinstance(value, dict):
            raise _fail(spec, where, "must be a table")
        for k in value:
            if k not in VERSION_KEYS:
                raise _fail(spec, f"{where}.{k}", f"unknown key (known: "
                                                  f"{', '.join(sorted(VERSION_KEYS))})")
        if "answer" not in value:
            raise _fail(spec, f"{where}.answer", "missing: what the version's answers say")
        image = _file(spec, value["image"], f"{where}.image") if "image" in value else None
        if "extension" in value:
            _file(spec, value["extension"], f"{where}.extension")  # read by _extension
        versions[int(key)] = Version(int(key), _str(spec, value["answer"], f"{where}.answer"),
                                     image)
    if len(versions) < 2:
        raise _fail(spec, "versions", "an upgrade needs at least two versions")
    seen: dict[str, int] = {}
    images: dict[Path, int] = {}
    for v in sorted(versions.values(), key=lambda v: v.number):
        if v.answer in seen:
            raise _fail(spec, f"versions.{v.number}.answer",
                        f"{v.answer!r} is also version {seen[v.answer]}'s: the versions "
                        "cannot be told apart")
        seen[v.answer] = v.number
        if v.image is not None:
            if v.image in images:
                raise _fail(spec, f"versions.{v.number}.image", f"the same file as version "
                                                                f"{images[v.image]}'s")
            images[v.image] = v.number
    return versions


def _build(spec: Path, table: dict[str, Any]) -> Build:
    files = _table(spec, table, "files", None) if "files" in table else {}
    if not files:
        raise _fail(spec, "build.files", "missing: what to put in the image "
                                         "(\"/usr/lib/x/app.py\" = \"app.py\")")
    out = []
    for target, source in files.items():
        if not target.startswith("/") or ".." in target.split("/"):
            raise _fail(spec, f"build.files.{target}", "an absolute path inside the image")
        out.append((target, _file(spec, source, f"build.files.{target}")))
    packages = _strings(spec, table.get("packages", []), "build.packages")
    for p in packages:
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p):
            raise _fail(spec, "build.packages", f"{p!r} is no Debian package name")
    return Build(suite=_str(spec, table.get("suite", "bookworm"), "build.suite"),
                 packages=packages, files=tuple(out))


def release_fields(text: str) -> dict[str, str]:
    """The KEY=value pairs of an os-release or extension-release text (quotes removed)."""
    fields = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        fields[key.strip()] = value.strip().strip("\"'")
    return fields


def release_mismatch(base: dict[str, str], extension: dict[str, str]) -> str | None:
    """Why portabled refuses an extension with this extension-release on a base with this
    os-release, or None: systemd's extension_release_validate for the portable scope (scope,
    ID or ID_LIKE, then SYSEXT_LEVEL or VERSION_ID; no version on the base matches all)."""
    scope = extension.get("SYSEXT_SCOPE")
    if scope is not None and "portable" not in scope.split():
        return f"SYSEXT_SCOPE={scope} does not name portable"
    ext_id = extension.get("ID", "")
    if not ext_id:
        return "it has no ID="
    if ext_id == "_any":
        return None
    if ext_id != base.get("ID") and ext_id not in base.get("ID_LIKE", "").split():
        return f"ID={ext_id}, but the base says ID={base.get('ID', '')}"
    version, level = base.get("VERSION_ID", ""), base.get("SYSEXT_LEVEL", "")
    if not version and not level:
        return None
    if level and extension.get("SYSEXT_LEVEL"):
        if extension["SYSEXT_LEVEL"] != level:
            return f"SYSEXT_LEVEL={extension['SYSEXT_LEVEL']}, but the base says {level}"
        return None
    if version and extension.get("VERSION_ID", "") != version:
        said = extension.get("VERSION_ID")
        return (f"VERSION_ID={said}" if said else "no VERSION_ID=") + (
            f", but the base says VERSION_ID={version}")
    return None


def squashfs_file(image: Path, paths: list[str]) -> str | None:
    """The first of ``paths`` that a squashfs ``image`` holds, read with unsquashfs; None when
    the image is no squashfs (or holds none of them): portabled is then the judge."""
    for path in paths:
        try:
            result = subprocess.run(["unsquashfs", "-cat", str(image), path.lstrip("/")],
                                    capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout
    return None


def extension_release_paths(name: str, version: int) -> list[str]:
    """Where an extension of ``name`` keeps its extension-release (both names: quirks.py)."""
    return [f"{EXTENSION_RELEASE_DIR}/extension-release.{name}",
            f"{EXTENSION_RELEASE_DIR}/extension-release.{name}_{version}"]


def _extension(spec: Path, name: str, raw: dict[str, Any], versions: dict[int, Version],
               build: Build | None) -> Extension:
    table = _table(spec, raw, "extension", EXTENSION_KEYS)
    given = {n: raw["versions"][str(n)].get("extension") for n in versions}
    if "base" in table:
        base = _file(spec, table["base"], "extension.base")
        images = {}
        for n, value in given.items():
            if value is None:
                raise _fail(spec, f"versions.{n}.extension", "missing: a ready base needs a "
                                                             "ready extension for every version")
            images[n] = _file(spec, value, f"versions.{n}.extension")
        if "release" in table:
            raise _fail(spec, "extension.release", "only for built extensions: a ready one "
                                                   "carries its own")
        os_release = squashfs_file(base, ["/etc/os-release", "/usr/lib/os-release"])
        for n, image in images.items():
            ext = squashfs_file(image, extension_release_paths(name, n))
            if os_release is None or ext is None:
                continue  # not squashfs: portabled reads them (its refusal ends the run)
            why = release_mismatch(release_fields(os_release), release_fields(ext))
            if why is not None:
                raise _fail(spec, f"versions.{n}.extension",
                            f"{image.name}'s extension-release does not match the base "
                            f"{base.name}: {why}; make its ID= and VERSION_ID= the base's "
                            "os-release values (or ID=_any)")
        return Extension(base=base, images=images)
    if build is None:
        raise _fail(spec, "extension", "a built extension needs [build] (the base: suite and "
                                       "packages; the extension: [build.files]), or give "
                                       "extension.base and versions.N.extension")
    for n, value in given.items():
        if value is not None:
            raise _fail(spec, f"versions.{n}.extension", "a ready extension needs a ready "
                                                         "base: extension.base = \"...\"")
    for target, _ in build.files:
        if not target.startswith(EXTENSION_HIERARCHIES):
            raise _fail(spec, f"build.files.{target}",
                        "an extension carries /usr and /opt only (the hierarchies systemd "
                        "merges): move it under /usr")
    release = None
    if "release" in table:
        release = _file(spec, table["release"], "extension.release")
        if build.suite in DEBIAN_VERSION_IDS:
            version = DEBIAN_VERSION_IDS[build.suite]
            base_ids = {"ID": "debian", **({"VERSION_ID": version} if version else {})}
            why = release_mismatch(base_ids, release_fields(release.read_text()))
            if why is not None:
                wanted = " ".join(f"{k}={v}" for k, v in base_ids.items())
                raise _fail(spec, "extension.release",
                            f"{release}: {why} (a base of {build.suite}); write {wanted} in "
                            "it, or drop the key and the suite writes one")
    return Extension(release=release)


def _versioned_dir(spec: Path, name: str, value: Any, versions: dict[int, Version],
                   ) -> tuple[Path, dict[int, Version]]:
    """A ready ``<name>.v/`` directory: each ``<name>_<N>.raw`` in it is version N's image."""
    directory = _file(spec, value, "versioned_dir", directory=True)
    if directory.suffix != ".v":
        raise _fail(spec, "versioned_dir", f"{directory} is no versioned directory: name it "
                                           f"{name}.v")
    found = {}
    for path in directory.iterdir():
        match = re.fullmatch(rf"{re.escape(name)}_(\d+)\.raw", path.name)
        if match:
            found[int(match.group(1))] = path
    if not found:
        raise _fail(spec, "versioned_dir", f"{directory} holds no version: put the versions' "
                                           f"images in it as {name}_1.raw, {name}_2.raw, ...")
    missing = sorted(set(versions) - set(found))
    if missing:
        raise _fail(spec, "versioned_dir", f"{directory} has no {name}_{missing[0]}.raw for "
                                           f"versions.{missing[0]}: add it there")
    return directory, {n: Version(n, v.answer, v.image or found[n]) for n, v in versions.items()}


def _check_scenarios(subject: Subject) -> None:
    """Every pattern names a scenario; one named outright must be one the subject can run."""
    from pytest_portable_upgrade.scenarios.catalogue import SCENARIOS

    ids = [s.id for s in SCENARIOS]
    for pattern in subject.scenarios:
        if not fnmatch.filter(ids, pattern):
            raise _fail(subject.spec, "scenarios", f"{pattern!r} names no scenario "
                                                   f"(known: {', '.join(ids)})")
        if pattern in ids:
            scenario = next(s for s in SCENARIOS if s.id == pattern)
            if (why := subject.cannot_run(scenario)) is not None:
                raise _fail(subject.spec, "scenarios", why)

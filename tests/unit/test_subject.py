"""vm/subject/spec.py: the subject spec. The default one (the walkthrough) and the example one
load; every kind of bad input ends with one line naming the file and the key."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from support import ROOT, WALKTHROUGH

from pytest_portable_upgrade.scenarios.catalogue import SCENARIOS, get_scenario
from pytest_portable_upgrade.subject.spec import (
    DEFAULT_SPEC,
    SpecError,
    listen_stream_ports,
    load_subject,
)

GUNICORN = ROOT / "examples" / "gunicorn" / "spec.toml"


def test_the_walkthrough_is_the_default_subject_and_runs_every_scenario() -> None:
    assert WALKTHROUGH.spec == DEFAULT_SPEC
    assert (WALKTHROUGH.name, WALKTHROUGH.port, WALKTHROUGH.socket) == (
        "portable-walkthrough", 8080, "portable-walkthrough.socket")
    assert {v: WALKTHROUGH.answer(v) for v in WALKTHROUGH.versions} == {1: "Hello", 2: "Hola"}
    assert [s.id for s in SCENARIOS if WALKTHROUGH.cannot_run(s)] == []


def test_no_harness_module_knows_a_subject() -> None:
    """A subject's greetings and port live in its spec and its files only (issue 10): the
    service port is defined once, by the spec (checked against its socket's ListenStream=)."""
    ports = {WALKTHROUGH.port, load_subject(GUNICORN).port}
    assert ports == {8080, 8000}
    words = re.compile(r"Hello|Hola|" + "|".join(rf"\b{p}\b" for p in sorted(ports)))
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in (ROOT / "vm").rglob("*")
                 if p.is_file() and p.suffix in (".py", ".sh")
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if words.search(line)]
    assert offenders == []


def test_the_gunicorn_example_says_which_scenarios_apply() -> None:
    subject = load_subject(GUNICORN)
    runnable = [s.id for s in SCENARIOS if subject.cannot_run(s) is None]
    assert runnable == ["host-socket-no-keepalive", "host-socket-keepalive-haproxy",
                        "host-socket-rollback"]
    why = subject.cannot_run(get_scenario("host-socket-keepalive-longlived-fdstore"))
    assert why is not None and "does not list" in why
    assert subject.version_header == "X-App-Release" and subject.counter_regex is None
    assert subject.client_args() == ["--path", "/", "--host-header", "probe",
                                     "--version-header", "X-App-Release"]


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    """A copy of the gunicorn example to spoil."""
    target = tmp_path / "example"
    shutil.copytree(GUNICORN.parent, target)
    return target


def spoil(spec_dir: Path, old: str, new: str) -> Path:
    path = spec_dir / "spec.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(("old", "new", "key", "words"), [
    ('"gunicorn-demo.socket"]', '"nosuch.socket"]', "sockets", "no such file"),
    ('"app.py"', '"missing.py"', 'build.files./usr/lib/gunicorn-demo/app.py', "no such file"),
    ('checks = "checks"', 'checks = "nochecks"', "checks", "no such directory"),
    ("port = 8000", "port = 8000\ncolour = \"red\"", "colour", "unknown key"),
    ('[request]\npath = "/"', '[request]\npath = "/"\nverb = "POST"', "request.verb",
     "unknown key"),
    ('[request]\npath = "/"', '[request]\npath = "/"\nmethod = "PUT"', "request.method",
     "must be GET or POST, not 'PUT'"),
    ('[request]\npath = "/"', '[request]\npath = "/"\nmethod = "post"', "request.method",
     "must be GET or POST, not 'post'"),
    ('[request]\npath = "/"', '[request]\npath = "/"\nmethod = "POST"', "request.body",
     'missing: method = "POST" sends a body (body = "name=visitor"'),
    ('[request]\npath = "/"', '[request]\npath = "/"\nbody = 42', "request.body",
     "must be a string (what a POST sends), not 42"),
    ('[request]\npath = "/"', '[request]\npath = "/"\nbody = "x"\ncontent_type = "json"',
     "request.content_type", "'json' is no media type (e.g. \"application/json\")"),
    ('version_header = "X-App-Release"', "version_regex = '(unclosed'",
     "answer.version_regex", "does not compile"),
    ('version_header = "X-App-Release"',
     "version_header = \"X-App-Release\"\ncounter_regex = '#(\\d+'",
     "answer.counter_regex", "does not compile"),
    ('answer = "beta"', 'answer = "alpha"', "versions.2.answer", "cannot be told apart"),
    ('answer = "beta"', 'answer = "beta"\nimage = "x.raw"', "versions.2.image", "no such file"),
    ("port = 8000", "port = 80000", "port", "TCP port"),
    ('profile = "default"', 'profile = "wide-open"', "profile", "must be one of"),
    ('scenarios = ["host-socket-no-keepalive",', 'scenarios = ["no-such-scenario",',
     "scenarios", "names no scenario"),
    ('scenarios = ["host-socket-no-keepalive",',
     'scenarios = ["host-socket-keepalive-longlived-fdstore",', "scenarios",
     "no way to shut down 'fdstore'"),
    ('"graceful-stop.conf" = "[Service]', '"graceful-stop" = "[Service]', "dropins.graceful-stop",
     "ends in .conf"),
    ('name = "gunicorn-demo"', 'name = "gunicorn_demo"', "name", "no portable prefix"),
    ("port = 8000", "port = 9000", "port",
     "9000, but gunicorn-demo.socket has ListenStream=8000: set port = 8000 here, or "
     "ListenStream=9000 in gunicorn-demo.socket"),
])
def test_bad_spec_is_one_line_naming_file_and_key(spec_dir: Path, old: str, new: str, key: str,
                                                   words: str) -> None:
    path = spoil(spec_dir, old, new)
    with pytest.raises(SpecError) as e:
        load_subject(path)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert words in message, message


@pytest.mark.parametrize(("socket", "ports"), [
    ("ListenStream=8000", [8000]),
    ("ListenStream = 8000", [8000]),
    ("ListenStream=0.0.0.0:8000", [8000]),
    ("ListenStream=127.0.0.1:8000", [8000]),
    ("ListenStream=[::]:8000", [8000]),
    ("ListenStream=80000", [80000]),  # a number is read whole: 80000 is not 8000
    ("ListenStream=/run/gunicorn.sock", []),
    ("ListenStream=@gunicorn", []),
    ("# ListenStream=8000", []),
    ("ListenStream=8001\nListenStream=8000", [8001, 8000]),
    ("ListenStream=8001\nListenStream=\nListenStream=8000", [8000]),  # "" resets the list
])
def test_the_ports_a_socket_listens_on(socket: str, ports: list[int]) -> None:
    unit = f"[Unit]\nDescription=x\n\n[Socket]\n{socket}\n\n[Install]\nListenStream=9\n"
    assert listen_stream_ports(unit) == ports


@pytest.mark.parametrize(("listen", "good"), [
    ("ListenStream=127.0.0.1:8000", True),
    ("ListenStream=[::]:8000", True),
    ("ListenStream=80000", False),
    ("# ListenStream=8000\nListenStream=8001", False),
    ("ListenStream=/run/gunicorn.sock", False),
])
def test_the_spec_port_must_be_one_the_socket_listens_on(spec_dir: Path, listen: str,
                                                       good: bool) -> None:
    """The probe and ab connect to the spec's port: the host socket must listen there."""
    socket = spec_dir / "gunicorn-demo.socket"
    socket.write_text(socket.read_text().replace("ListenStream=8000", listen))
    if good:
        assert load_subject(spec_dir / "spec.toml").port == 8000
        return
    with pytest.raises(SpecError) as e:
        load_subject(spec_dir / "spec.toml")
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{spec_dir / 'spec.toml'}: port: 8000, ")
    assert "ListenStream=8000" in message, message  # the fix is named


def test_a_missing_spec_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"no such subject spec \(--service / PWT_SERVICE\)"):
        load_subject(tmp_path / "nope.toml")


def test_a_spec_that_is_not_toml_says_so(spec_dir: Path) -> None:
    path = spoil(spec_dir, "port = 8000", "port = = 8000")
    with pytest.raises(SpecError, match=r"spec\.toml: not valid TOML"):
        load_subject(path)


def test_a_missing_required_key(spec_dir: Path) -> None:
    path = spoil(spec_dir, "port = 8000\n", "")
    with pytest.raises(SpecError, match=r"spec\.toml: port: missing$"):
        load_subject(path)


def test_ready_images_cannot_carry_the_socket(spec_dir: Path) -> None:
    """A subject with ready images runs the host-socket scenarios; the socket-in-image control
    is skipped with the reason (its image would have to be rebuilt)."""
    (spec_dir / "a_1.raw").write_bytes(b"one")
    (spec_dir / "a_2.raw").write_bytes(b"two")
    spoil(spec_dir, 'answer = "alpha"', 'answer = "alpha"\nimage = "a_1.raw"')
    spoil(spec_dir, 'answer = "beta"', 'answer = "beta"\nimage = "a_2.raw"')
    path = spoil(spec_dir, 'scenarios = ["host-socket-no-keepalive",',
                 'scenarios = ["*-socket-no-keepalive", "host-socket-no-keepalive",')
    text = path.read_text()
    path.write_text(text[:text.index("[build]")] + text[text.index("[versions.1]"):])
    subject = load_subject(path)
    assert subject.build is None and subject.versions[2].image == spec_dir / "a_2.raw"
    why = subject.cannot_run(get_scenario("image-socket-no-keepalive"))
    assert why is not None and "[build]" in why


def test_profile_default_means_the_subjects_own(spec_dir: Path) -> None:
    subject = load_subject(spoil(spec_dir, 'profile = "default"', 'profile = "strict"'))
    assert subject.profile_for(get_scenario("host-socket-no-keepalive")) == "strict"
    assert subject.profile_for(get_scenario("host-socket-trusted-profile")) == "trusted"


# --- the request's method and body -------------------------------------------------------------


def test_the_walkthrough_takes_get_by_default_and_post_with_its_body() -> None:
    assert WALKTHROUGH.request_method == "GET"
    assert WALKTHROUGH.request_body == "name=visitor"
    assert WALKTHROUGH.request_content_type == "application/x-www-form-urlencoded"
    assert WALKTHROUGH.cannot_send("GET") is None and WALKTHROUGH.cannot_send("POST") is None
    assert "--method" not in WALKTHROUGH.client_args()
    assert WALKTHROUGH.client_args("POST") == [
        "--path", "/", "--host-header", "probe", "--method", "POST", "--body", "name=visitor",
        "--content-type", "application/x-www-form-urlencoded",
        "--version-regex", WALKTHROUGH.version_regex, "--counter-regex",
        WALKTHROUGH.counter_regex]


def test_a_subject_without_a_body_cannot_post(spec_dir: Path) -> None:
    subject = load_subject(spec_dir / "spec.toml")
    assert subject.request_body is None
    why = subject.cannot_send("POST")
    assert why is not None and "has no [request] body: a POST needs one" in why
    with pytest.raises(ValueError, match="has no \\[request\\] body"):
        subject.client_args("POST")
    assert subject.cannot_send("DELETE") is not None


def test_a_spec_that_posts_by_default(spec_dir: Path) -> None:
    path = spoil(spec_dir, '[request]\npath = "/"',
                 '[request]\npath = "/"\nmethod = "POST"\nbody = ""\n'
                 'content_type = "application/json; charset=utf-8"')
    subject = load_subject(path)
    assert (subject.request_method, subject.request_body) == ("POST", "")
    assert subject.method_for(None) == "POST" and subject.method_for("GET") == "GET"
    args = subject.client_args()
    assert args[args.index("--body") + 1] == ""
    assert args[args.index("--content-type") + 1] == "application/json; charset=utf-8"
    assert "--method" not in subject.client_args("GET")


def test_a_subject_without_a_body_skips_the_post_scenarios_with_the_reason(
        spec_dir: Path) -> None:
    path = spoil(spec_dir, 'scenarios = ["host-socket-no-keepalive"', 'scenarios = ["*"')
    subject = load_subject(path)
    why = subject.cannot_run(get_scenario("host-socket-keepalive-drain-post"))
    assert why is not None and "has no [request] body: a POST needs one" in why
    assert subject.cannot_run(get_scenario("host-socket-keepalive-drain")) is None
    # The walkthrough has a body: it runs every POST scenario.
    assert WALKTHROUGH.cannot_run(get_scenario("host-socket-keepalive-naive-post")) is None


def test_a_spec_that_names_a_post_scenario_without_a_body_is_refused(spec_dir: Path) -> None:
    path = spoil(spec_dir, 'scenarios = ["host-socket-no-keepalive"',
                 'scenarios = ["host-socket-keepalive-haproxy-post"')
    with pytest.raises(SpecError, match=r"scenarios: .* has no \[request\] body"):
        load_subject(path)

#!/usr/bin/python3
"""The portable service's steps, run inside the guest (stdlib only: plain python3).

Shipped once per boot beside probe.py and run as root by the harness, one SSH round trip per
call: ``python3 portable.py --json '[{"step": "attach", ...}, ...]'``. The steps run in order
and the first one that fails ends the call. The answer is one JSON line on stdout:
``{"ok": true, "answers": [one object per step]}``, or ``{"ok": false, "step": ...,
"error": "<the guest's own words>", "refused": <portablectl refused the image>, "answers":
[the steps before it]}`` with exit status 1. A person replays a call by pasting the same line
(run.log has it).

The program knows no service and no scope: every request names its units and paths, and
``scope`` says how to reach the service manager (``systemctl``/``portablectl`` argv prefixes,
and ``user``: run them as that user, with its runtime directory, bus and ``env``). Files are
written by the program from the request (``write-files``); no path goes through a shell.
Every wait goes through ``wait_until`` (bounded, says what it saw last), the guest's
counterpart of the harness's core/retry.py.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import importlib.util
import json
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

Request = dict[str, Any]
Answer = dict[str, Any]


class StepFailed(Exception):
    """A step could not do its work; ``refused``: portablectl refused the image."""

    def __init__(self, words: str, refused: bool = False) -> None:
        super().__init__(words)
        self.refused = refused


# --- commands ---------------------------------------------------------------------------------
def words_of(result: subprocess.CompletedProcess[str], lines: int = 3) -> str:
    """A command's own last words (stderr, else stdout), on one line."""
    text = (result.stderr or "").strip() or (result.stdout or "").strip()
    return " / ".join(text.splitlines()[-lines:]) or f"exit {result.returncode}"


def run(argv: list[str], check: bool = True, timeout: float = 300.0,
        merge: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell); StepFailed with its words when ``check`` and it fails."""
    try:
        result = subprocess.run(argv, capture_output=not merge, text=True, timeout=timeout,
                                stdout=subprocess.PIPE if merge else None,
                                stderr=subprocess.STDOUT if merge else None, check=False)
    except FileNotFoundError:
        raise StepFailed(f"`{shlex.join(argv)}`: {argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise StepFailed(f"`{shlex.join(argv)}` took more than {timeout:.0f} s") from None
    if check and result.returncode != 0:
        raise StepFailed(f"`{shlex.join(argv)}` exited {result.returncode}: {words_of(result)}")
    return result


def user_ids(user: str) -> tuple[int, int] | None:
    """(uid, gid) of ``user``, None when there is no such user."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def as_scope(scope: Request, argv: list[str]) -> list[str]:
    """``argv`` as the scope runs it: as is (system), or as its user with that user's runtime
    directory and bus (the way systemd's TEST-29-PORTABLE runs ``portablectl --user``)."""
    user = scope.get("user")
    if not user:
        return argv
    ids = user_ids(user)
    if ids is None:
        raise StepFailed(f"the scope's user {user} does not exist (setup-user makes it)")
    runtime = f"/run/user/{ids[0]}"
    env = [f"{k}={v}" for k, v in scope.get("env", {}).items()]
    return ["runuser", "-u", user, "--", "env", f"XDG_RUNTIME_DIR={runtime}",
            f"DBUS_SESSION_BUS_ADDRESS=unix:path={runtime}/bus", *env, *argv]


def systemctl(scope: Request, *args: str) -> list[str]:
    return as_scope(scope, [*scope["systemctl"], *args])


def portablectl(scope: Request, *args: str) -> list[str]:
    return as_scope(scope, [*scope["portablectl"], *args])


def show(scope: Request, prop: str, unit: str) -> str:
    """One property of ``unit`` ("" when the manager does not answer)."""
    result = run(systemctl(scope, "show", "-P", prop, unit), check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def show_units(scope: Request, units: list[str], props: list[str]) -> list[dict[str, str]] | None:
    """``props`` of each of ``units`` in one ``systemctl show`` (one block per unit, in order,
    each prop present: ``--all`` keeps the empty ones); None when the manager does not
    answer. One call instead of one per property: each systemctl is a process and a bus
    round trip, tenths of a second under TCG."""
    result = run(systemctl(scope, "show", "--all", *(f"--property={p}" for p in props),
                           *units), check=False)
    if result.returncode != 0:
        return None
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in result.stdout.strip("\n").split("\n\n")]
    if len(blocks) != len(units) or not all(blocks):
        return None  # a unit type lacks some (a socket has no MainPID): those are absent
    return blocks


def is_active(scope: Request, unit: str) -> str:
    return run(systemctl(scope, "is-active", unit), check=False).stdout.strip()


def extension_args(extensions: list[str]) -> list[str]:
    """``--extension E`` for each of ``extensions`` (the app images layered on a base)."""
    return [arg for e in extensions for arg in ("--extension", e)]


def is_attached(scope: Request, image: str, silent: str = "detached",
                extensions: list[str] | None = None) -> str:
    """What ``portablectl is-attached [--extension E]... IMAGE`` says; ``silent`` when it says
    nothing (no such image file yet: detached). Only the word counts: the exit status is 0
    even for "detached"."""
    result = run(portablectl(scope, "is-attached", *extension_args(extensions or []), image),
                 check=False)
    return result.stdout.strip() or silent


def extension_images(shown: str) -> list[str]:
    """The paths of a unit's ``ExtensionImages=`` as ``systemctl show`` prints them:
    ``[-]SOURCE[:PARTITION:OPTIONS]...``, one entry per image, separated by spaces."""
    return [entry.lstrip("-").split(":", 1)[0] for entry in shown.split()]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               seen: Callable[[], str], interval: float = 0.5) -> None:
    """Call ``predicate`` until it is true, at most ``timeout`` s; StepFailed names what was
    seen last otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() + interval > deadline:
            raise StepFailed(f"{what} not reached in {timeout:.0f} s; last seen: {seen()}")
        time.sleep(interval)


# --- files ------------------------------------------------------------------------------------
def chown(path: str, owner: str | None) -> None:
    if owner:
        ids = user_ids(owner)
        if ids is None:
            raise StepFailed(f"cannot give {path} to {owner}: no such user")
        os.chown(path, *ids)


def make_dirs(path: str, owner: str | None = None, mode: int = 0o755) -> None:
    """``path`` and its missing parents; the ones made here belong to ``owner``."""
    missing = []
    head = os.path.abspath(path)
    while not os.path.isdir(head):
        missing.append(head)
        head = os.path.dirname(head)
    for d in reversed(missing):
        os.mkdir(d, mode)
        chown(d, owner)


def write_file(path: str, text: str, owner: str | None = None, mode: int = 0o644) -> None:
    """``text`` (a final newline added) in ``path``, replaced atomically."""
    make_dirs(os.path.dirname(path), owner)
    tmp = f"{path}.pwt-tmp"
    with open(tmp, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    os.chmod(tmp, mode)
    chown(tmp, owner)
    os.replace(tmp, path)


def remove(pattern: str) -> None:
    """Every path matching ``pattern``, files and trees; nothing matching is fine."""
    for path in glob.glob(pattern) or ([pattern] if os.path.lexists(pattern) else []):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def replace_symlink(target: str, link: str) -> None:
    """Point ``link`` at ``target`` atomically: a new link renamed over the old one."""
    tmp = f"{link}.new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def place_file(source: str, directory: str) -> str:
    """``source`` copied into ``directory`` under its own name, written beside the directory
    and renamed in: a reader of the directory (vpick) never sees half a file."""
    make_dirs(directory)
    dest = os.path.join(directory, os.path.basename(source))
    tmp = os.path.join(os.path.dirname(directory.rstrip("/")),
                       f".{os.path.basename(source)}.pwt-tmp")
    run(["cp", "--sparse=always", source, tmp])
    os.replace(tmp, dest)
    return dest


def point_symlink(req: Request) -> None:
    """The image symlink (and each sidecar's: systemd looks for <name>.roothash etc. beside
    the path it is given) at one version: ``{"target": base, "link": base, "suffixes":
    [".raw", ...]}``, bases without the suffix."""
    for suffix in req["suffixes"]:
        replace_symlink(f"{req['target']}{suffix}", f"{req['link']}{suffix}")


# --- steps ------------------------------------------------------------------------------------
def step_write_files(req: Request) -> Answer:
    """``remove`` (glob patterns) first, then ``dirs`` made and ``files`` ({path: text})
    written, all owned by ``owner`` when given."""
    for pattern in req.get("remove", []):
        remove(pattern)
    owner = req.get("owner")
    for d in req.get("dirs", []):
        make_dirs(d, owner)
        chown(d, owner)
    for path, text in req.get("files", {}).items():
        write_file(path, text, owner)
    return {"written": sorted(req.get("files", {}))}


def step_preflight(req: Request) -> Answer:
    """Every fact the harness decides on before a scenario, "yes"/"no" or the value:
    systemd-sysupdate, and what a user portable service needs (TEST-29's checks)."""

    def yes(path: str) -> str:
        return "yes" if os.path.exists(path) else "no"

    def out(argv: list[str]) -> str:
        try:
            return run(argv, check=False, timeout=30).stdout
        except StepFailed:
            return ""

    try:
        with open("/sys/kernel/security/lsm") as f:
            lsm = f.read().strip()
    except OSError:
        lsm = ""
    libbpf = sorted(glob.glob("/usr/lib/*/libbpf.so.1") + glob.glob("/usr/lib64/libbpf.so.1"))
    polkit = out(["pkcheck", "--version"]).split()
    features = out(["systemctl", "--version"]).splitlines()
    signing = shutil.which("veritysetup") and shutil.which("openssl")
    return {"facts": {
        "sysupdate": yes(req.get("sysupdate", "/usr/lib/systemd/systemd-sysupdate")),
        "mountfsd": yes("/usr/lib/systemd/system/systemd-mountfsd.socket"),
        "nsresourced": yes("/usr/lib/systemd/system/systemd-nsresourced.socket"),
        "lsm": lsm, "libbpf": libbpf[0] if libbpf else "", "kernel": os.uname().release,
        "polkit": polkit[2] if len(polkit) > 2 else "",
        "features": features[1] if len(features) > 1 else "",
        "userbus": yes("/usr/lib/systemd/user/dbus.socket"),
        "signing": "yes" if signing else "no",
    }}


def step_setup_user(req: Request) -> Answer:
    """The scope's user with lingering and a running manager whose bus answers; the run's
    signing key and its certificate where systemd's dm-verity signature check looks
    (``signing``: ``{"dir", "cert"}``); ``environment`` set in the system manager before
    ``start`` (mountfsd's workers inherit it); then ``start`` (system units, one call each,
    in order) and the user's ``user_start`` units. Idempotent. Answers the user's uid."""
    scope = req["scope"]
    user = scope["user"]
    if user_ids(user) is None:
        run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", user])
    uid = user_ids(user)[0]  # type: ignore[index]
    run(["loginctl", "enable-linger", user])
    signing = req.get("signing")
    if signing:
        make_dirs(signing["dir"], mode=0o700)
        os.chmod(signing["dir"], 0o700)
        key, cert = f"{signing['dir']}/key.pem", f"{signing['dir']}/cert.pem"
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={signing.get('cn', 'pwt')}", "-keyout", key, "-out", cert])
        make_dirs(os.path.dirname(signing["cert"]))
        shutil.copyfile(cert, signing["cert"])
        os.chmod(signing["cert"], 0o644)
    for assignment in req.get("environment", []):
        run(["systemctl", "set-environment", assignment])
    for units in req.get("start", []):
        run(["systemctl", "start", *units], timeout=req.get("timeout", 120))
    run(["systemctl", "start", f"user@{uid}.service"], timeout=req.get("timeout", 120))
    bus = f"/run/user/{uid}/bus"
    wait_until(lambda: os.path.exists(bus), req.get("timeout", 60), f"the user's bus {bus}",
               lambda: "no socket")
    for unit in req.get("user_start", []):
        run(systemctl(scope, "start", unit), timeout=req.get("timeout", 120))
    return {"uid": uid}


def same_file_content(src: str, dest: str) -> bool:
    """True when ``dest`` is a regular file of ``src``'s size and modification time: the copy
    an earlier ``use-images`` made (it keeps the time). Nothing writes into an image in place,
    so the copy is skipped: two images are tens of MB, seconds under TCG, on every attach."""
    try:
        a, b = os.stat(src), os.lstat(dest)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(b.st_mode) and (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)


def step_use_images(req: Request) -> Answer:
    """The images of ``source`` (a directory of ``*.raw``) copied into ``target``: each
    written beside and renamed (``atomic``), or copied, signed (``sign``: the verity sidecars
    X.verity, X.roothash, X.roothash.p7s as TEST-29 makes them, with the key in
    ``sign["dir"]``) and given to ``owner`` (mountfsd opens them with the user's rights)."""
    target, owner = req["target"], req.get("owner")
    make_dirs(target, owner)
    if owner:
        chown(target, owner)
        os.chmod(target, 0o755)
    images = sorted(glob.glob(os.path.join(req["source"], "*.raw")))
    if not images:
        raise StepFailed(f"no images in {req['source']}")
    copied = []
    for src in images:
        dest = os.path.join(target, os.path.basename(src))
        if not same_file_content(src, dest):
            tmp = dest + ".new"
            run(["cp", "--sparse=always", "--preserve=timestamps", src, tmp])
            os.replace(tmp, dest)
        copied.append(dest)
    sign = req.get("sign") or {}
    for image in copied if sign else []:
        base = image.removesuffix(".raw")
        run(["veritysetup", "format", image, f"{base}.verity", "--root-hash-file",
             f"{base}.roothash"])
        run(["openssl", "smime", "-sign", "-nocerts", "-noattr", "-binary", "-in",
             f"{base}.roothash", "-inkey", f"{sign['dir']}/key.pem", "-signer",
             f"{sign['dir']}/cert.pem", "-outform", "der", "-out", f"{base}.roothash.p7s"])
    if owner:
        for path in glob.glob(os.path.join(target, "*")):
            if not os.path.islink(path):
                chown(path, owner)
                os.chmod(path, 0o644)
    return {"images": copied}


def step_inspect(req: Request) -> Answer:
    """``portablectl inspect`` each image: a broken image (no os-release, no unit of the
    subject's prefix) is refused with portablectl's words."""
    for image in req["images"]:
        result = run(portablectl(req["scope"], "inspect", image), check=False)
        if result.returncode != 0:
            raise StepFailed(f"portablectl inspect {image}: {words_of(result)}", refused=True)
    return {"inspected": req["images"]}


def step_remove(req: Request) -> Answer:
    for pattern in req["paths"]:
        remove(pattern)
    return {}


def step_publish(req: Request) -> Answer:
    """``image`` into ``source`` (written beside, renamed), then its SHA256SUMS rewritten
    (sha256sum's format, every ``pattern`` image); ``corrupt``: the image's bytes changed
    after its checksum was written (a tampered download)."""
    source = req["source"]
    make_dirs(source)
    dest = os.path.join(source, os.path.basename(req["image"]))
    shutil.copyfile(req["image"], dest + ".tmp")
    os.replace(dest + ".tmp", dest)
    lines = []
    for path in sorted(glob.glob(os.path.join(source, req["pattern"]))):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        lines.append(f"{digest.hexdigest()}  {os.path.basename(path)}\n")
    write_file(os.path.join(source, "SHA256SUMS"), "".join(lines))
    if req.get("corrupt"):
        with open(dest, "ab") as f:
            f.write(b"tampered")
    return {"published": dest}


def step_versioned_dir(req: Request) -> Answer:
    """``dir`` (a versioned directory, <name>.v/) made anew holding exactly ``images`` (each
    placed under its own name, ``place_file``)."""
    directory = req["dir"]
    remove(directory)
    placed = [place_file(image, directory) for image in req["images"]]
    if not placed:
        raise StepFailed(f"{directory}: no version to put in it")
    return {"placed": placed}


def step_reload(req: Request) -> Answer:
    """The manager reloaded, then each of ``start`` started (a socket written just before)."""
    run(systemctl(req["scope"], "daemon-reload"))
    for unit in req.get("start", []):
        run(systemctl(req["scope"], "start", unit))
    return {}


def step_serve(req: Request) -> Answer:
    """A transient unit ``unit`` running ``argv``, until ``port`` listens on 127.0.0.1;
    ``check`` (a command, optional) must succeed first: a config it refuses is named in its
    own words, not as a unit that never listened."""
    if req.get("check"):
        result = run(req["check"], check=False)
        if result.returncode != 0:
            raise StepFailed(f"`{shlex.join(req['check'])}` refused: {words_of(result)}")
    run(["systemd-run", "--quiet", "--collect", f"--unit={req['unit']}", *req["argv"]])
    port = req["port"]

    def listening() -> bool:
        out = run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout
        return "LISTEN" in out

    wait_until(listening, req.get("timeout", 30), f"a listener on port {port}",
               lambda: is_active({"systemctl": ["systemctl"]}, req["unit"]))
    return {}


def step_attach(req: Request) -> Answer:
    """The symlink at the version (when given), ``portablectl attach`` (``flags``,
    ``--profile``, each of ``extensions``) of ``image`` with ``matches`` (unit prefixes),
    is-attached asked, then each of ``sockets`` started (a socket refuses to start
    before its service exists) and waited for until active (``unit_timeout``). The manager
    reloads during the attach: it picks up unit files and drop-ins written before it. An
    image portablectl refuses is ``refused`` with its words."""
    scope = req["scope"]
    if req.get("symlink"):
        point_symlink(req["symlink"])
    if req.get("reload"):
        run(systemctl(scope, "daemon-reload"))
    image, extensions = req["image"], req.get("extensions", [])
    attach = portablectl(scope, "attach", *req.get("flags", []), "--profile",
                         req.get("profile", "default"), *extension_args(extensions), image,
                         *req.get("matches", []))
    result = run(attach, check=False, timeout=req.get("timeout", 240))
    if result.returncode != 0:
        raise StepFailed(words_of(result), refused=True)
    state = is_attached(scope, image, extensions=extensions)
    if state not in req["attached_states"]:
        raise StepFailed(f"after the attach, portablectl is-attached {image} says {state!r}")
    sockets = {}
    for unit in req.get("sockets", []):
        # A socket's start job ends when it is listening (or has failed).
        run(systemctl(scope, "start", unit), check=False, timeout=req.get("unit_timeout", 60))
        wait_until(lambda u=unit: unit_up(scope, u),  # type: ignore[misc]
                   req.get("unit_timeout", 60), f"{unit} active",
                   lambda u=unit: unit_report(scope, u))  # type: ignore[misc]
        sockets[unit] = "active"
    return {"attached": state, "sockets": sockets}


def unit_up(scope: Request, unit: str) -> bool:
    """True when ``unit`` is active; StepFailed at once when it has failed (nothing is going
    to start it: no point waiting out the bound, as the NixOS driver's wait_for_unit)."""
    state = is_active(scope, unit)
    if state == "failed":
        raise StepFailed(f"{unit} is {unit_report(scope, unit)}")
    return state == "active"


def unit_report(scope: Request, unit: str) -> str:
    """The unit's state and status (what a failed wait shows)."""
    status = run(systemctl(scope, "status", "--no-pager", "-n", "20", unit), check=False)
    return f"{is_active(scope, unit)!r}\n{status.stdout.strip()}"


def load_probe(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("pwt_probe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ask(req: Request) -> dict[str, Any]:
    """One request as probe.py sends it (``probe``: its path, ``args``: its client
    arguments, ``port``): the probe's record."""
    probe = load_probe(req["probe"])
    args = probe.argument_parser().parse_args(["--port", str(req["port"]), "--once",
                                               *req["args"]])
    record: dict[str, Any] = probe.one_request(
        "127.0.0.1", args.port, args.timeout,
        probe.build_request(args.path, args.host_header),
        probe.AnswerReader(args.version_regex, args.version_header, args.counter_regex))
    return record


def step_greet(req: Request) -> Answer:
    """Requests (one a second) until the answer names ``expect``; the last record."""
    seen: dict[str, Any] = {}

    def answered() -> bool:
        seen.clear()
        seen.update(ask(req))
        return bool(seen.get("greeting") == req["expect"])

    def said() -> str:
        return str(seen.get("greeting") or seen.get("error")
                   or f"status {seen.get('status')}, no version in the answer")

    wait_until(answered, req.get("timeout", 120), f"the answer {req['expect']!r}", said,
               interval=1.0)
    return {"record": seen}


def step_observe(req: Request) -> Answer:
    """The service's state: its main process's user, DynamicUser=, the socket's
    ActiveEnterTimestampMonotonic and state, is-attached of ``image`` (with ``extensions``),
    the unit's RootImage= and ExtensionImages=; ``count`` (probe.py's request arguments): one
    request's record, only through an active socket; ``journal``: the scope user's journal
    lines."""
    scope, service, socket = req["scope"], req["service"], req["socket"]
    props = ["MainPID", "DynamicUser", "RootImage", "ExtensionImages",
             "ActiveEnterTimestampMonotonic", "ActiveState"]
    shown = show_units(scope, [service, socket], props)
    svc, sock = shown if shown is not None else ({}, {})
    pid = svc.get("MainPID", "")
    user = ""
    if pid not in ("", "0"):
        result = run(["ps", "-o", "user=", "-p", pid], check=False)
        user = result.stdout.strip()
    facts: Answer = {
        "user": user,
        "dynamic": svc.get("DynamicUser") == "yes",
        "since": sock.get("ActiveEnterTimestampMonotonic", ""),
        # A manager that does not answer: what is-active says of it (as the clean check).
        "socket": sock["ActiveState"] if sock else is_active(scope, socket),
        "attached": is_attached(scope, req["image"], silent="",
                                extensions=req.get("extensions", [])),
        "image": svc.get("RootImage", ""),
        "extensions": extension_images(svc.get("ExtensionImages", "")),
    }
    if req.get("count") is not None:
        facts["record"] = ask(req["count"]) if facts["socket"] == "active" else None
    if req.get("journal") is not None:
        facts["journal"] = scope_journal(scope, req["journal"])
    return facts


def scope_journal(scope: Request, lines: int) -> str:
    """The scope user's manager and units this boot ("" for the system scope)."""
    ids = user_ids(scope["user"]) if scope.get("user") else None
    if ids is None:
        return ""
    return run(["journalctl", "-b", "--no-pager", "-o", "short-monotonic", "-n", str(lines),
                f"_UID={ids[0]}", "+", f"_SYSTEMD_UNIT=user@{ids[0]}.service"],
               check=False).stdout


def step_journal(req: Request) -> Answer:
    return {"journal": scope_journal(req["scope"], req.get("lines", 200))}


def step_upgrade(req: Request) -> Answer:
    """The symlink at the new version (``symlink``, optional), ``remove`` removed and
    ``place`` (``{"source", "dir"}``: the new version into a versioned directory) placed,
    then ``commands`` (argv lists, in order, stopping at the first that fails: ``&&``)
    between two readings of the guest clock; their output (stdout and stderr together), the
    ``journal`` lines of a unit after them, where ``read_link`` points afterwards, whether
    each of ``exists`` is there afterwards (a file sysupdate put into a versioned directory)
    and the text of each of ``read`` ("" when it is missing: the log of a notify listener).
    A failed command is an answer, not an error: ``rc`` says it (a refused rollout is a
    result)."""
    scope = req["scope"]
    if req.get("symlink"):
        point_symlink(req["symlink"])
    for pattern in req.get("remove", []):
        remove(pattern)
    if req.get("place"):
        place_file(req["place"]["source"], req["place"]["dir"])
    output, rc = "", 0
    started = time.time()
    for argv in req["commands"]:
        result = run(as_scope(scope, argv), check=False, merge=True,
                     timeout=req.get("timeout", 240))
        output += result.stdout
        rc = result.returncode
        if rc != 0:
            break
    ended = time.time()
    answer: Answer = {"started": started, "ended": ended, "rc": rc, "output": output}
    if req.get("read_link"):
        try:
            answer["link"] = os.readlink(req["read_link"])
        except OSError:
            answer["link"] = ""
    if req.get("exists"):
        answer["exists"] = {path: os.path.exists(path) for path in req["exists"]}
    if req.get("read"):
        answer["files"] = {path: read_text(path) for path in req["read"]}
    journal = req.get("journal")
    if journal:
        answer["output"] += run(["journalctl", "-q", "--no-pager", "-n", str(journal["lines"]),
                                 "-u", journal["unit"]], check=False).stdout
    return answer


def read_text(path: str) -> str:
    """The text of ``path``; "" when there is no such file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def step_clear_fdstore(req: Request) -> Answer:
    """Stop ``unit`` and drop what its fd store still holds."""
    scope, unit = req["scope"], req["unit"]
    run(systemctl(scope, "stop", unit), check=False)
    run(systemctl(scope, "clean", "--what=fdstore", unit), check=False)
    return {}


def clean_words(part: Request) -> dict[str, str]:
    """One scope's part of the clean check: each image's is-attached word and each unit's
    is-active word; {} when the scope's user has no manager running (nothing of the user's
    can run then)."""
    scope = part["scope"]
    if scope.get("user"):
        ids = user_ids(scope["user"])
        if ids is None or not os.path.exists(f"/run/user/{ids[0]}/bus"):
            return {}
    words = {image: is_attached(scope, image) for image in part["images"]}
    words.update({unit: is_active(scope, unit) for unit in part["units"]})
    return words


def step_clean(req: Request) -> Answer:
    """The words of every scope's images and units (``parts``); the harness judges them."""
    return {"words": [clean_words(part) for part in req["parts"]]}


def reset_scope(part: Request) -> None:
    """Units stopped one by one (one ``stop A B`` is refused whole on newer systemd when one
    of them is not loaded), the image detached by the path the unit really runs from
    (RootImage=: after a failed run the symlink may point at another version), ``remove``
    removed, the manager reloaded and ``reset_failed`` forgotten. The user scope then forgets
    its ``environment``, lingering and stops the user's manager (``forget_user``)."""
    scope = part["scope"]
    user = scope.get("user")
    manager = True
    if user:
        ids = user_ids(user)
        manager = ids is not None and os.path.exists(f"/run/user/{ids[0]}/bus")
    if manager:
        for unit in part["units"]:
            run(systemctl(scope, "stop", unit), check=False)
        image = show(scope, "RootImage", part["service"])
        if image:
            detach(scope, part, image, extension_images(
                show(scope, "ExtensionImages", part["service"])), check=not user)
    for pattern in part.get("remove", []):
        remove(pattern)
    if not user:
        run(systemctl(scope, "daemon-reload"))
        run(systemctl(scope, "reset-failed", *part.get("reset_failed", [])), check=False)
        return
    for name in part.get("unset_environment", []):
        run(["systemctl", "unset-environment", name], check=False)
    if user_ids(user) is not None:
        run(["loginctl", "disable-linger", user], check=False)
        run(["systemctl", "stop", f"user@{user_ids(user)[0]}.service"],  # type: ignore[index]
            check=False, timeout=120)


def detach(scope: Request, part: Request, image: str, extensions: list[str],
           check: bool) -> None:
    """``portablectl detach`` of what the unit runs: its base with each extension, or its
    image; an image picked from a versioned directory (<name>.v/) is detached by the
    directory when its own path is refused."""
    flags = [*part.get("detach_flags", []), *extension_args(extensions)]
    result = run(portablectl(scope, "detach", *flags, image), timeout=180, check=False)
    parent = os.path.dirname(image.rstrip("/"))
    if result.returncode != 0 and parent.endswith(".v"):
        result = run(portablectl(scope, "detach", *flags, parent), timeout=180, check=False)
    if check and result.returncode != 0:
        raise StepFailed(f"`portablectl detach {shlex.join([*flags, image])}` exited "
                         f"{result.returncode}: {words_of(result)}")


def step_reset(req: Request) -> Answer:
    """Each scope of ``parts`` back to clean (``reset_scope``), then the clean check's words
    of them all (``clean``)."""
    for part in req["parts"]:
        reset_scope(part)
    return step_clean(req)


STEPS: dict[str, Callable[[Request], Answer]] = {
    "preflight": step_preflight, "setup-user": step_setup_user,
    "write-files": step_write_files, "use-images": step_use_images, "inspect": step_inspect,
    "remove": step_remove, "publish": step_publish, "reload": step_reload,
    "versioned-dir": step_versioned_dir,
    "serve": step_serve, "attach": step_attach, "greet": step_greet,
    "observe": step_observe, "journal": step_journal, "upgrade": step_upgrade,
    "clear-fdstore": step_clear_fdstore, "clean": step_clean, "reset": step_reset,
}


def perform(requests: list[Request]) -> tuple[Answer, int]:
    """Run the steps in order; (the answer, the exit status)."""
    answers: list[Answer] = []
    # Each step's wall time, the failing one's included: where a round trip's time goes.
    seconds: list[float] = []

    def failed(name: object, error: str, refused: bool = False) -> tuple[Answer, int]:
        return {"ok": False, "step": name, "error": error, "refused": refused,
                "answers": answers, "seconds": seconds}, 1

    for req in requests:
        name = req.get("step")
        if name not in STEPS:
            return failed(name, f"no step {name!r}; steps: {', '.join(STEPS)}")
        started = time.monotonic()
        try:
            answer = STEPS[name](req)
        except StepFailed as e:
            seconds.append(round(time.monotonic() - started, 3))
            return failed(name, str(e), e.refused)
        except OSError as e:
            seconds.append(round(time.monotonic() - started, 3))
            return failed(name, f"{type(e).__name__}: {e}")
        seconds.append(round(time.monotonic() - started, 3))
        answers.append(answer)
    return {"ok": True, "answers": answers, "seconds": seconds}, 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="the steps: a JSON list of requests")
    args = parser.parse_args(argv)
    try:
        requests = json.loads(args.json)
    except ValueError as e:
        print(json.dumps({"ok": False, "step": None, "error": f"the request is no JSON: {e}",
                          "refused": False, "answers": []}))
        return 2
    answer, status = perform(requests if isinstance(requests, list) else [requests])
    print(json.dumps(answer))
    return status


if __name__ == "__main__":
    sys.exit(main())

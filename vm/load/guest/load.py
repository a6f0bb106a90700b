#!/usr/bin/python3
"""The load's steps, run inside the guest (stdlib only: plain python3).

Shipped once per boot beside probe.py and run as root by the harness (vm/load/load.py), one SSH
round trip per call, in the protocol of the guest programs (vm/machine/guest_program.py):
``python3 load.py --json '[{"step": "start", ...}]'``. The steps run in order and the first
one that fails ends the call. The answer is one JSON line on stdout: ``{"ok": true,
"answers": [one object per step], "seconds": [...]}``, or ``{"ok": false, "step": ...,
"error": "<the guest's own words>", "answers": [the steps before it]}`` with exit status 1.

The steps:

- ``start``: the clients' units stopped (one by one), their old files removed and ``files``
  written byte for byte (a POST's body), /proc/net/netstat read, then each client started
  as a transient unit bounded by ``RuntimeMaxSec``, the guest's clock read just before each;
- ``poll``: the clock, is-active of ``units`` and the whole lines the probe wrote since
  ``offset``;
- ``stop``: the clock, SIGINT to ``interrupt`` (ab and hey print their reports on it), each
  waited for, ``stop`` stopped, then netstat, the service's journal and the clients' files
  read;
- ``listeners``: ``ss``'s listening sockets on a port; ``netstat``: /proc/net/netstat.

No path or argument goes through a shell: every request names its units, files and argv.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Request = dict[str, Any]
Answer = dict[str, Any]
NETSTAT = "/proc/net/netstat"


# A unit's stop may take systemd's own stop timeout (DefaultTimeoutStopSec=90 s) before it
# kills: a probe with requests queued behind a slow new version is stopped that way under TCG.
STOP_TIMEOUT_S = 150.0


class StepFailed(Exception):
    """A step could not do its work; the message is the guest's own words."""


def run(argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell), never raising for its exit status."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except FileNotFoundError:
        raise StepFailed(f"`{shlex.join(argv)}`: {argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise StepFailed(f"`{shlex.join(argv)}` took more than {timeout:.0f} s") from None


def read_text(path: str) -> str | None:
    """The file's text; None when it is not there (a counter or a log not read)."""
    try:
        return Path(path).read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return None


def client_argv(client: Request) -> list[str]:
    """``systemd-run`` of one client: a transient unit the guest's systemd kills after
    ``bound`` s, its stdout into ``stdout`` when given (ab's and hey's reports)."""
    output = ["-p", f"StandardOutput=file:{client['stdout']}", "-p", "StandardError=journal"] \
        if client.get("stdout") else []
    return ["systemd-run", "--quiet", "--collect", f"--unit={client['unit']}",
            "-p", f"RuntimeMaxSec={client['bound']}", *output, *client["argv"]]


def step_start(req: Request) -> Answer:
    """``stop`` units stopped one by one (newer systemd refuses a whole ``stop A B`` when one
    is not loaded), ``remove`` removed, ``files`` ({path: text}) written as they are (no
    newline added), the kernel's counters read, then ``clients`` started in order. Answers
    the counters (None: no file) and each client's start on the guest's clock."""
    for unit in req.get("stop", []):
        run(["systemctl", "stop", unit], timeout=req.get("stop_timeout", STOP_TIMEOUT_S))
    for path in req.get("remove", []):
        Path(path).unlink(missing_ok=True)
    for path, text in req.get("files", {}).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(text.encode())
    netstat = read_text(req.get("netstat", NETSTAT))
    started = {}
    for client in req["clients"]:
        started[client["unit"]] = time.time()
        argv = client_argv(client)
        result = run(argv)
        if result.returncode != 0:
            words = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
            raise StepFailed(f"`{shlex.join(argv)}` exited {result.returncode}: {words}")
    return {"netstat": netstat, "started": started}


def step_poll(req: Request) -> Answer:
    """The guest's clock, then is-active of each of ``units`` and the whole lines of ``log``
    from byte ``offset`` on (the probe may be writing the last one right now); ``offset``
    answers where the next poll starts."""
    now = time.time()
    units = req["units"]
    words = run(["systemctl", "is-active", *units]).stdout.split()
    offset = req.get("offset", 0)
    try:
        with open(req["log"], "rb") as f:
            f.seek(offset)
            new = f.read()
    except FileNotFoundError:
        new = b""
    whole = new[: new.rfind(b"\n") + 1]
    return {"now": now, "states": dict(zip(units, words, strict=False)),
            "log": whole.decode(errors="replace"), "offset": offset + len(whole)}


def wait_inactive(unit: str, seconds: float, interval: float = 0.1) -> bool:
    """True once ``unit`` is no longer active, False when it still is after ``seconds``."""
    deadline = time.monotonic() + seconds
    while run(["systemctl", "is-active", "--quiet", unit]).returncode == 0:
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def step_stop(req: Request) -> Answer:
    """The guest's clock, SIGINT to each of ``interrupt``, each waited for (at most ``wait``
    s: ``still_running`` names the ones that did not end), ``stop`` units stopped, then the
    kernel's counters, the ``journal`` (an argv: the service manager's lines, None: not
    read) and each of ``read`` ({name: path}; None: no such file)."""
    stopped = time.time()
    for unit in req.get("interrupt", []):
        run(["systemctl", "kill", "--signal=SIGINT", unit])
    still = [u for u in req.get("interrupt", []) if not wait_inactive(u, req.get("wait", 60))]
    for unit in req.get("stop", []):
        run(["systemctl", "stop", unit], timeout=req.get("stop_timeout", STOP_TIMEOUT_S))
    answer: Answer = {"stopped": stopped, "still_running": still,
                      "netstat": read_text(req.get("netstat", NETSTAT))}
    if req.get("journal") is not None:
        answer["journal"] = run(req["journal"]).stdout
    answer["files"] = {name: read_text(path) for name, path in req.get("read", {}).items()}
    return answer


def step_listeners(req: Request) -> Answer:
    """``ss -Hltn`` of the listening sockets on ``port`` (Send-Q: the backlog the kernel
    holds)."""
    return {"listeners": run(["ss", "-Hltn", f"sport = :{req['port']}"]).stdout}


def step_netstat(req: Request) -> Answer:
    return {"netstat": read_text(req.get("path", NETSTAT))}


STEPS: dict[str, Callable[[Request], Answer]] = {
    "start": step_start, "poll": step_poll, "stop": step_stop, "listeners": step_listeners,
    "netstat": step_netstat,
}


def perform(requests: list[Request]) -> tuple[Answer, int]:
    """Run the steps in order; (the answer, the exit status)."""
    answers: list[Answer] = []
    seconds: list[float] = []

    def failed(name: object, error: str) -> tuple[Answer, int]:
        return {"ok": False, "step": name, "error": error, "answers": answers,
                "seconds": seconds}, 1

    for req in requests:
        name = req.get("step")
        if name not in STEPS:
            return failed(name, f"no step {name!r}; steps: {', '.join(STEPS)}")
        started = time.monotonic()
        try:
            answer = STEPS[name](req)
        except (StepFailed, OSError) as e:
            seconds.append(round(time.monotonic() - started, 3))
            words = str(e) if isinstance(e, StepFailed) else f"{type(e).__name__}: {e}"
            return failed(name, words)
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
                          "answers": []}))
        return 2
    answer, status = perform(requests if isinstance(requests, list) else [requests])
    print(json.dumps(answer))
    return status


if __name__ == "__main__":
    sys.exit(main())

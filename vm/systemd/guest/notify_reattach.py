#!/usr/bin/env python3
"""Answer systemd-sysupdate's notify callout by reattaching a portable service.

Runs as an Accept=yes service of a socket in /run/systemd/sysupdate/notify/, the connection on
stdin and stdout. systemd-sysupdate, after an update that installed a version, connects and
sends one Varlink call, a JSON object ending in a NUL byte:
``{"method": "io.systemd.SysUpdate.Notify.OnCompletedUpdate", "parameters": {...}}``, and waits
for the reply. This program runs the command after ``--`` (``portablectl reattach --now ...``)
and only then replies: ``{"parameters": {}}`` when it succeeded, a Varlink error naming its exit
status otherwise, and no reply to a call marked ``"oneway"``. Each call is appended to
``--log`` as one JSON line: the call, when it came, the command's exit status and output.
Python's standard library only (the guest has python3-minimal).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import IO, Any

METHOD = "io.systemd.SysUpdate.Notify.OnCompletedUpdate"
# The error a failed reattach is answered with (a Varlink error name is interface-qualified).
FAILED = "io.pwt.PortableReattach.Failed"
# The most a call may hold: sysupdate's own calls are a few hundred bytes.
MAX_CALL = 1 << 20


def read_call(stream: IO[bytes]) -> bytes | None:
    """The bytes of one call up to its NUL; None when the peer closed first."""
    data = bytearray()
    while len(data) < MAX_CALL:
        chunk = stream.read(1)
        if not chunk:
            return None
        if chunk == b"\0":
            return bytes(data)
        data += chunk
    raise ValueError(f"a call longer than {MAX_CALL} bytes without its NUL")


def reply_to(call: dict[str, Any], rc: int) -> bytes | None:
    """The reply to ``call`` after the command exited ``rc``; None for a oneway call."""
    if call.get("oneway"):
        return None
    if call.get("method") != METHOD:
        reply: dict[str, Any] = {"error": "org.varlink.service.MethodNotFound",
                                 "parameters": {"method": call.get("method")}}
    elif rc == 0:
        reply = {"parameters": {}}
    else:
        reply = {"error": FAILED, "parameters": {"exit": rc}}
    return json.dumps(reply).encode() + b"\0"


def serve(stdin: IO[bytes], stdout: IO[bytes], log: str, command: list[str],
          timeout: float = 600.0) -> int:
    """One call from ``stdin``, ``command`` run for it (only for OnCompletedUpdate), the reply
    to ``stdout``, the record in ``log``; the command's exit status (0 when none ran)."""
    raw = read_call(stdin)
    if raw is None:
        return 0
    received = time.time()
    call = json.loads(raw)
    rc, output = 0, ""
    if call.get("method") == METHOD:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=timeout,
                                check=False)
        rc, output = result.returncode, result.stdout
    ended = time.time()
    reply = reply_to(call, rc)
    if reply is not None:
        stdout.write(reply)
        stdout.flush()
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps({"call": call, "received": received, "ended": ended, "rc": rc,
                            "output": output[-2000:], "replied": reply is not None}) + "\n")
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True, help="where each call is recorded (JSON lines)")
    parser.add_argument("command", nargs="+", help="what to run for a call (after --)")
    args = parser.parse_args(argv)
    return serve(sys.stdin.buffer, sys.stdout.buffer, args.log, args.command)


if __name__ == "__main__":
    sys.exit(main())

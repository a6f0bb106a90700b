#!/usr/bin/python3
"""Per-request probe, run inside the guest beside ab (stdlib only).

Sends one non-keep-alive HTTP/1.0 request at a time, every ``--interval`` seconds, and writes
one JSON line per request: send time (epoch s), latency (ms), HTTP status or error kind,
greeting (Hello/Hola) and visitor number. Stops on SIGTERM/SIGINT or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import time

ANSWER = re.compile(rb"\r\n\r\n(\w+)! You are visitor #(\d+)!")
STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3})")


def one_request(host: str, port: int, timeout: float) -> dict[str, object]:
    sent = time.time()
    record: dict[str, object] = {"t": round(sent, 4)}
    data = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except ConnectionRefusedError:
        record["error"] = "connect-refused"
    except TimeoutError:
        record["error"] = "timeout"
    except ConnectionResetError:
        record["error"] = "reset"
    except OSError as e:
        record["error"] = f"oserror-{e.errno}"
    record["latency_ms"] = round((time.time() - sent) * 1000, 2)
    if "error" not in record:
        status = STATUS.match(data)
        answer = ANSWER.search(data)
        if status is None:
            record["error"] = "empty" if not data else "garbled"
        else:
            record["status"] = int(status.group(1))
            if answer is not None:
                record["greeting"] = answer.group(1).decode()
                record["visitor"] = int(answer.group(2))
    return record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    end = time.monotonic() + args.max_seconds
    with open(args.out, "a", encoding="utf-8") as out:
        while not stop and time.monotonic() < end:
            started = time.monotonic()
            out.write(json.dumps(one_request(args.host, args.port, args.timeout)) + "\n")
            out.flush()
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


if __name__ == "__main__":
    main()

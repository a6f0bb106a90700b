#!/usr/bin/python3
"""Long-lived keep-alive clients, run inside the guest (stdlib only).

N connections, each sending the request (``GET /``, or a POST: ``--method``) every
``--interval`` seconds on the same HTTP/1.1 connection, one JSON line per request: connection
id, its generation (how many times it had to reconnect), send time, latency, greeting and
visitor number, or what went wrong. A server that answers ``Connection: close`` makes the
client reconnect ("server-closed"); a connection that dies without an answer is "broken"
(reset, EOF, timeout) and is reconnected too.

Like probe.py it knows no service: the request path, Host header and how to read the version
and counter come as arguments (the same ones), and the answers are read by probe.py's
AnswerReader (copied beside this file in the guest).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe import (  # type: ignore[import-not-found]
    AnswerReader,
    add_request_arguments,
    request_from,
)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of one response; raises ConnectionError on EOF before its end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("eof-before-answer")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else 0
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("eof-in-body")
        body += chunk
    return head, body


def holder(index: int, args: argparse.Namespace, out: list[str], lock: threading.Lock,
           stop: threading.Event, reader: AnswerReader) -> None:
    generation = 0
    sock: socket.socket | None = None
    while not stop.is_set():
        if sock is None:
            try:
                sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
            except OSError as e:
                record(out, lock, {"conn": index, "gen": generation, "t": time.time(),
                                   "error": f"connect-{type(e).__name__}"})
                stop.wait(args.interval)
                continue
        sent = time.time()
        rec: dict[str, object] = {"conn": index, "gen": generation, "t": round(sent, 4)}
        try:
            sock.sendall(args.request)
            head, body = read_response(sock)
            rec["latency_ms"] = round((time.time() - sent) * 1000, 2)
            rec["status"] = int(head.split(b" ", 2)[1])
            version, visitor = reader.read(head, body)
            if version is not None:
                rec["greeting"] = version
            if visitor is not None:
                rec["visitor"] = visitor
            if re.search(rb"(?im)^connection:\s*close", head):
                rec["event"] = "server-closed"
        except (OSError, ConnectionError, ValueError) as e:
            rec["latency_ms"] = round((time.time() - sent) * 1000, 2)
            rec["error"] = "broken"
            rec["detail"] = str(e) or type(e).__name__
        record(out, lock, rec)
        if "error" in rec or "event" in rec:
            sock.close()
            sock = None
            generation += 1
        stop.wait(max(0.0, args.interval - (time.time() - sent)))
    if sock is not None:
        sock.close()


def record(out: list[str], lock: threading.Lock, rec: dict[str, object]) -> None:
    with lock:
        out.append(json.dumps(rec))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    add_request_arguments(parser, "holder")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version-regex")
    which.add_argument("--version-header")
    parser.add_argument("--counter-regex")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        args.request = request_from(args, "1.1")
    except ValueError as e:
        parser.error(str(e))
    reader = AnswerReader(args.version_regex, args.version_header, args.counter_regex)
    stop = threading.Event()
    lock = threading.Lock()
    lines: list[str] = []
    threads = [threading.Thread(target=holder, args=(i, args, lines, lock, stop, reader),
                                daemon=True)
               for i in range(args.connections)]
    for t in threads:
        t.start()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    end = time.monotonic() + args.max_seconds
    with open(args.out, "a", encoding="utf-8") as f:
        while not stop.is_set() and time.monotonic() < end:
            stop.wait(0.5)
            with lock:
                batch, lines[:] = lines[:], []
            f.writelines(line + "\n" for line in batch)
            f.flush()
        stop.set()
        for t in threads:
            t.join(timeout=args.timeout + 5)
        with lock:
            f.writelines(line + "\n" for line in lines)


if __name__ == "__main__":
    main()

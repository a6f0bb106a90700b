#!/usr/bin/python3
"""Per-request probe, run inside the guest beside ab (stdlib only: plain python3).

An open-loop client: it sends one non-keep-alive HTTP/1.0 request every ``1 / --rate``
seconds whatever happens to the earlier ones, each on its own thread, so a request that waits
in the host socket's queue shows up as latency instead of as a pause in sending (a closed-loop
probe stands in the queue and sends nothing meanwhile).

It writes one JSON line per request when the request ends:
``{"t": send time (epoch s), "latency_ms": ..., "status": 200, "greeting": "<version>",
"visitor": 17}``, or on failure ``"error"`` with its class: ``refused``, ``reset``, ``eof``
(the connection closed before any byte of a response), ``timeout``, ``garbled``,
``oserror-<errno>``; a non-2xx answer has its ``status`` and no greeting. Lines are written as
requests end, so the file is not in send order (readers sort by ``t``).

It knows no service: the harness passes the request (path, Host header, and ``--method POST
--body B --content-type T`` for a POST; GET by default), and how an answer
names its version (``--version-regex`` on the body, group 1 or the whole match, or
``--version-header``) and, optionally, its counter (``--counter-regex``, group 1). A 2xx
answer that names no version, or lacks the counter a subject promises, has no ``greeting``
(a failure of class ``other``). ``--once`` sends one request and prints its record.

At most ``--max-in-flight`` requests are outstanding. A send slot that finds the bound full is
not sent and is written as ``{"t": ..., "skipped": "in-flight-bound", "in_flight": N}``, so a
stall long enough to fill it is visible instead of silently thinning the load.

Bounded: sending stops on SIGTERM/SIGINT or after ``--max-seconds``; requests still in flight
then get ``--grace`` seconds to end, and whatever is left is written with
``"error": "abandoned"`` before the process exits.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import threading
import time
from typing import Any, TextIO

STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3})")
SKIPPED = "in-flight-bound"
# Each request thread only connects, sends and reads: a small stack keeps hundreds of queued
# requests cheap in a 2 GiB guest (the default reserves 8 MiB each).
THREAD_STACK = 512 * 1024


class AnswerReader:
    """Reads the version (and the counter, if the subject has one) from a response."""

    def __init__(self, version_regex: str | None, version_header: str | None,
                 counter_regex: str | None) -> None:
        self.version = re.compile(version_regex.encode()) if version_regex else None
        self.header = (re.compile(rb"(?im)^" + re.escape(version_header.encode())
                                  + rb":[ \t]*([^\r\n]*?)[ \t]*$")
                       if version_header else None)
        self.counter = re.compile(counter_regex.encode()) if counter_regex else None

    def read(self, head: bytes, body: bytes) -> tuple[str | None, int | None]:
        """(version, counter); version None when the answer names none, or lacks the
        counter the subject promises."""
        match = (self.header.search(head) if self.header is not None
                 else self.version.search(body) if self.version is not None else None)
        if match is None:
            return None, None
        version = (match.group(1) if match.re.groups else match.group(0)).decode(
            errors="replace")
        if self.counter is None:
            return version, None
        count = self.counter.search(body)
        if count is None:
            return None, None
        return version, int(count.group(1))


def build_request(path: str, host_header: str, version: str = "1.0", method: str = "GET",
                  body: str | None = None, content_type: str = "text/plain") -> bytes:
    """One request: a GET, or a POST of ``body`` (UTF-8) with its Content-Length and type."""
    if method not in ("GET", "POST") or (method == "POST") != (body is not None):
        raise ValueError(f"build_request: a GET takes no body and a POST one, not {method}"
                         f" with {body!r}")
    head = f"{method} {path} HTTP/{version}\r\nHost: {host_header}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    data = body.encode()
    return (f"{head}Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
            "\r\n").encode() + data


def add_request_arguments(parser: argparse.ArgumentParser, host_header: str) -> None:
    """The options that say what request to send (Subject.client_args gives them)."""
    parser.add_argument("--path", default="/")
    parser.add_argument("--host-header", default=host_header)
    parser.add_argument("--method", choices=("GET", "POST"), default="GET")
    parser.add_argument("--body", help="what a POST sends (required with --method POST)")
    parser.add_argument("--content-type", default="text/plain")


def request_from(args: argparse.Namespace, version: str = "1.0") -> bytes:
    """The request the parsed options ask for; a usage error is the caller's to report."""
    if (args.method == "POST") != (args.body is not None):
        raise ValueError("--body goes with --method POST, and a POST needs one")
    return build_request(args.path, args.host_header, version, args.method, args.body,
                         args.content_type)


def one_request(host: str, port: int, timeout: float, request: bytes,
                reader: AnswerReader) -> dict[str, object]:
    """One request on a fresh connection; ``timeout`` bounds the whole request, connect
    (including the kernel's SYN retransmits) to the last byte."""
    sent = time.time()
    deadline = time.monotonic() + timeout
    record: dict[str, object] = {"t": round(sent, 4)}
    data = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            s.sendall(request)
            while True:
                s.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except ConnectionRefusedError:
        record["error"] = "refused"
    except TimeoutError:
        record["error"] = "timeout"
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        # A peer that resets before we finished sending shows up as EPIPE on sendall.
        record["error"] = "reset"
    except OSError as e:
        record["error"] = f"oserror-{e.errno}"
    record["latency_ms"] = round((time.time() - sent) * 1000, 2)
    if "error" not in record:
        status = STATUS.match(data)
        if status is None:
            record["error"] = "eof" if not data else "garbled"
        else:
            record["status"] = int(status.group(1))
            head, _, body = data.partition(b"\r\n\r\n")
            version, visitor = reader.read(head, body)
            if version is not None:
                record["greeting"] = version
            if visitor is not None:
                record["visitor"] = visitor
    return record


class OpenLoopProbe:
    """Sends at a fixed rate on threads, writes each request's record as it ends."""

    def __init__(self, host: str, port: int, rate: float, timeout: float, max_in_flight: int,
                 out: TextIO, request: bytes, reader: AnswerReader) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.request, self.reader = request, reader
        self.interval = 1.0 / rate
        self.max_in_flight = max_in_flight
        self.out = out
        self.lock = threading.Lock()
        self.in_flight: dict[int, float] = {}  # request number -> send time (epoch s)
        self.sent = 0
        self.skipped = 0

    def _write(self, record: dict[str, Any]) -> None:
        # Callers hold self.lock: threads must not interleave their lines.
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def _request(self, number: int) -> None:
        record = one_request(self.host, self.port, self.timeout, self.request, self.reader)
        with self.lock:
            if self.in_flight.pop(number, None) is not None:  # else: written as abandoned
                self._write(record)

    def run(self, stop: threading.Event, max_seconds: float, grace: float) -> None:
        start = time.monotonic()
        end = start + max_seconds
        next_at, number = start, 0
        while next_at < end:
            delay = next_at - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            if stop.is_set():
                break
            with self.lock:
                full = len(self.in_flight) >= self.max_in_flight
                if full:
                    self.skipped += 1
                    self._write({"t": round(time.time(), 4), "skipped": SKIPPED,
                                 "in_flight": len(self.in_flight)})
                else:
                    self.in_flight[number] = time.time()
            if not full:
                threading.Thread(target=self._request, args=(number,), daemon=True).start()
                self.sent += 1
            number += 1
            next_at += self.interval
            # A probe starved of CPU (TCG) that wakes up late sends the next request now, not
            # a burst of the missed ones: a burst would be load the rate does not describe.
            now = time.monotonic()
            if now - next_at > self.interval:
                next_at = now
        self.drain(grace)

    def drain(self, grace: float) -> None:
        """Give requests in flight ``grace`` seconds, then write the rest as abandoned."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self.lock:
                if not self.in_flight:
                    return
            time.sleep(0.02)
        with self.lock:
            now = time.time()
            for sent in sorted(self.in_flight.values()):
                self._write({"t": round(sent, 4), "latency_ms": round((now - sent) * 1000, 2),
                             "error": "abandoned"})
            self.in_flight.clear()


def argument_parser() -> argparse.ArgumentParser:
    """The probe's options (the guest's portable.py asks one request with the same ones)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    add_request_arguments(parser, "probe")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version-regex", help="on the body; group 1 (or the match) names it")
    which.add_argument("--version-header", help="this response header's value names it")
    parser.add_argument("--counter-regex", help="on the body; group 1 must only go up")
    parser.add_argument("--once", action="store_true", help="one request, its record to stdout")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--timeout", type=float, default=30.0, help="bound of one request (s)")
    parser.add_argument("--max-in-flight", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds requests in flight get after sending stops")
    parser.add_argument("--out")
    return parser


def main() -> None:
    parser = argument_parser()
    args = parser.parse_args()
    reader = AnswerReader(args.version_regex, args.version_header, args.counter_regex)
    try:
        request = request_from(args)
    except ValueError as e:
        parser.error(str(e))
    if args.once:
        print(json.dumps(one_request(args.host, args.port, args.timeout, request, reader)))
        return
    if not args.out:
        parser.error("--out is required (unless --once)")
    if not args.rate > 0 or args.max_in_flight < 1:
        parser.error("--rate must be positive and --max-in-flight at least 1")
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.stack_size(THREAD_STACK)
    with open(args.out, "a", encoding="utf-8") as out:
        probe = OpenLoopProbe(args.host, args.port, args.rate, args.timeout, args.max_in_flight,
                              out, request, reader)
        probe.run(stop, args.max_seconds, args.grace)


if __name__ == "__main__":
    main()

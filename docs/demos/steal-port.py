#!/usr/bin/env python3
"""Demonstration helper: take the SSH port of the next run's VM before qemu binds it.

Waits for a new ``<state>/runs/<run>/Vagrantfile``, reads the 127.0.0.1 port it forwards to
the guest's SSH, listens on it and holds it for ``--hold`` seconds. The run must see qemu fail
("Could not set up host forwarding rule"), remove the half-made domain and boot again on
another port. Usage: steal-port.py [--state-dir DIR] [--hold 600] &  tox -e integration ...
"""

from __future__ import annotations

import argparse
import re
import socket
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", default="/var/lib/portable-walkthrough-tests")
    parser.add_argument("--hold", type=float, default=600)
    args = parser.parse_args()
    runs = Path(args.state_dir) / "runs"
    before = {p.name for p in runs.glob("*")}
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        for vagrantfile in runs.glob("*/Vagrantfile"):
            if vagrantfile.parent.name in before:
                continue
            match = re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22", vagrantfile.read_text())
            if not match:
                continue
            port = int(match.group(1))
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
                s.listen()
                print(f"steal-port: holding 127.0.0.1:{port} of run {vagrantfile.parent.name}",
                      flush=True)
                time.sleep(args.hold)
            return
        time.sleep(0.2)
    raise SystemExit("steal-port: no new run appeared in 15 min")


if __name__ == "__main__":
    main()

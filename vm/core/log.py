"""Step logging in the style of the NixOS test driver: nested, timed, and readable live.

``log.nested("booting machine")`` prints the step when it starts and
``(finished: booting machine, in 92.31 seconds)`` when it ends. pytest captures output, so the
plugin (plugin/plugin.py) installs an ``emit`` that writes past the capture to the terminal.

Two levels: ``info`` goes to the terminal and the run's log file; ``detail`` (every guest
command with its exit status and duration) only to the file, so the terminal stays readable
while run.log holds enough to replay a run by hand.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class StepLogger:
    def __init__(self) -> None:
        self.emit: Callable[[str], None] = _stderr
        self.depth = 0
        self._file: TextIO | None = None

    def log_to(self, path: Path) -> None:
        """Also append every line to ``path`` (the run's log in the artifacts)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def info(self, message: str) -> None:
        line = f"{'  ' * self.depth}{message}"
        self.emit(line)
        self._write(line)

    def detail(self, message: str) -> None:
        """Only to the log file (nothing when there is none): too much for the terminal."""
        self._write(f"{'  ' * self.depth}{message}")

    def _write(self, line: str) -> None:
        if self._file:
            self._file.write(f"{time.strftime('%H:%M:%S')} {line}\n")
            self._file.flush()

    @contextmanager
    def nested(self, message: str) -> Iterator[None]:
        """Log a step, indent what happens inside it, and report its duration.

        >>> with log.nested("building box debian-bookworm"):
        ...     build()
        """
        self.info(f"▶ {message}")
        self.depth += 1
        start = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.depth -= 1
            took = time.monotonic() - start
            state = "finished" if ok else "FAILED"
            self.info(f"({state}: {message}, in {took:.2f} seconds)")


log = StepLogger()

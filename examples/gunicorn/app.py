"""A tiny WSGI app served by Debian's gunicorn (python3-gunicorn) in the example subject.

It answers every request with its release, in the body and in the ``X-App-Release`` header;
the spec tells the versions apart by that header. The release comes from the unit
(``Environment=APP_RELEASE=...``, rendered per version by the suite's image builder).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

RELEASE = os.environ.get("APP_RELEASE", "unknown")


def application(environ: dict[str, Any],
                start_response: Callable[[str, list[tuple[str, str]]], Any]) -> Iterable[bytes]:
    body = f"hello from {RELEASE}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body))),
                              ("X-App-Release", RELEASE)])
    return [body]

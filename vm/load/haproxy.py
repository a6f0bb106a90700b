"""HAProxy in front of the service, for keep-alive clients.

Clients keep their connections to HAProxy; HAProxy's connections to the server may be closed
by a restarting server at any moment. What makes the difference:

- ``retries 3`` + ``retry-on all-retryable-errors``: a request whose server connection failed
  (refused, reset, closed before any answer) is sent again instead of answered with a 502/503.
- ``http-reuse safe``: an idle server connection is reused only for a request that is not the
  first of its client connection, and a reused connection that fails is retried.
- ``option http-server-close`` is NOT set: HAProxy keeps server connections alive too.
"""

from __future__ import annotations

from dataclasses import dataclass

PROXY_PORT = 8081
PROXY_PORT_ALTERNATIVE = 8082  # for a subject that itself listens on PROXY_PORT


def proxy_port_for(server_port: int) -> int:
    return PROXY_PORT if server_port != PROXY_PORT else PROXY_PORT_ALTERNATIVE


@dataclass(frozen=True)
class HaproxyConfig:
    server_port: int  # the subject's port
    listen_port: int = PROXY_PORT
    retries: int = 3
    timeout_connect_s: int = 5
    timeout_server_s: int = 30
    timeout_client_s: int = 30

    def render(self) -> str:
        return f"""\
# Rendered by vm/load/haproxy.py for one scenario.
global
    maxconn 2000
    log stdout format raw local0


defaults
    mode http
    log global
    option httplog
    timeout connect {self.timeout_connect_s}s
    timeout client {self.timeout_client_s}s
    timeout server {self.timeout_server_s}s
    timeout http-keep-alive 10s
    retries {self.retries}
    retry-on all-retryable-errors
    option redispatch
    http-reuse safe

frontend walkthrough
    bind 127.0.0.1:{self.listen_port}
    default_backend service

backend service
    server portable 127.0.0.1:{self.server_port}
"""

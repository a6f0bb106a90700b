"""What the guest kernel counted while the load ran: three TCP counters of /proc/net/netstat.

The file holds pairs of lines, a header of names and a line of values, each opening with the
same prefix (``TcpExt:``, ``IpExt:``, ``MPTcpExt:``). ``nstat`` names a counter by prefix and
name (``TcpExtListenOverflows``); so does this module, without depending on nstat.

The counters read (``COUNTERS``), all counted by the kernel for the guest's whole network
namespace (every listener and client in it, the suite's ssh included):

- ``TcpExtListenOverflows``: a connection that completed its handshake found the listener's
  accept queue full (the ``Backlog=`` of a socket unit);
- ``TcpExtListenDrops``: everything a listener dropped, overflows included;
- ``TcpExtTCPSynRetrans``: SYN and SYN-ACK segments sent again (the kernel counts both
  under this name): the clients' 1 s, 3 s, ... waits after a dropped SYN.

LoadRun reads the file before the load starts and after it stops, in the round trips it makes
anyway; the report gives after - before. A counter missing from either read (an older or
unusual kernel, a torn or garbled file, no file at all) is not read: None, never 0.
"""

from __future__ import annotations

NETSTAT = "/proc/net/netstat"
# summary.json key -> the kernel's counter (nstat's name)
COUNTERS = {
    "listen_overflows": "TcpExtListenOverflows",
    "listen_drops": "TcpExtListenDrops",
    "tcp_syn_retrans": "TcpExtTCPSynRetrans",
}

Counts = dict[str, int | None]


def parse_netstat(text: str) -> dict[str, int]:
    """Every counter of /proc/net/netstat's text, by nstat's name (prefix + name).

    A values line is paired with the header of its prefix read just before it. A pair whose
    lengths differ is left out whole: which value belongs to which name cannot be told. A value
    that is not a non-negative integer is left out alone."""
    counters: dict[str, int] = {}
    headers: dict[str, list[str]] = {}
    for line in text.splitlines():
        prefix, sep, rest = line.partition(":")
        words = rest.split()
        if not sep or not prefix or " " in prefix or not words:
            continue
        if not any(w.isdigit() for w in words):
            headers[prefix] = words  # names
            continue
        names = headers.pop(prefix, None)
        if names is None or len(names) != len(words):
            continue
        counters.update((f"{prefix}{name}", int(value))
                        for name, value in zip(names, words, strict=True) if value.isdigit())
    return counters


def tcp_counters(text: str | None) -> Counts:
    """The three counters of ``COUNTERS`` from one read of the file (None: no text at all)."""
    found = parse_netstat(text or "")
    return {key: found.get(name) for key, name in COUNTERS.items()}


def not_read() -> Counts:
    """Counts of a load whose counters were not read (an older run, a fake)."""
    return dict.fromkeys(COUNTERS)


def counter_delta(before: Counts, after: Counts) -> Counts:
    """after - before per counter; None when either read lacks it, or when it went down (the
    counters only grow within one network namespace: a smaller value is not the same count)."""
    delta: Counts = {}
    for key in COUNTERS:
        b, a = before.get(key), after.get(key)
        delta[key] = a - b if a is not None and b is not None and a >= b else None
    return delta


def parse_listen_backlog(text: str) -> int | None:
    """The largest backlog among the listeners of ``ss -Hltn 'sport = :PORT'`` output (State
    Recv-Q Send-Q Local Peer; for a listener, Send-Q is its backlog as the kernel holds it,
    after net.core.somaxconn's cap: the load's guest program's ``listeners`` step reads it);
    None when no line is a listener with a number there."""
    found = [int(words[2]) for line in text.splitlines()
             if len(words := line.split()) >= 4 and words[0] == "LISTEN" and words[2].isdigit()]
    return max(found, default=None)

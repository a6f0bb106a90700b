"""vm/load/kernel.py: the TCP counters of /proc/net/netstat and their change over a load.

netstat_host.txt is this host's own file (kernel 6.18, all three counters 0);
netstat_overflow.txt is the same file with the three counters raised by hand (see
tests/unit/data/README.md)."""

from __future__ import annotations

import pytest
from support import DATA

from pytest_portable_upgrade.load.kernel import (
    COUNTERS,
    counter_delta,
    not_read,
    parse_listen_backlog,
    parse_netstat,
    tcp_counters,
)

HOST = (DATA / "netstat_host.txt").read_text()
OVERFLOW = (DATA / "netstat_overflow.txt").read_text()


def test_the_recorded_file_gives_every_counter_by_nstats_name() -> None:
    counters = parse_netstat(HOST)
    assert len([k for k in counters if k.startswith("TcpExt")]) == len(HOST.split("\n")[0]
                                                                        .split()) - 1
    assert counters["IpExtInOctets"] > 0 and "MPTcpExtMPCapableSYNRX" in counters
    assert tcp_counters(HOST) == {"listen_overflows": 0, "listen_drops": 0,
                                  "tcp_syn_retrans": 0}


def test_the_delta_is_after_minus_before() -> None:
    delta = counter_delta(tcp_counters(HOST), tcp_counters(OVERFLOW))
    assert delta == {"listen_overflows": 37, "listen_drops": 37, "tcp_syn_retrans": 52}
    assert counter_delta(tcp_counters(HOST), tcp_counters(HOST)) == dict.fromkeys(COUNTERS, 0)


def test_the_counters_are_found_by_name_not_by_place() -> None:
    """A kernel with other counters in between (or in another order) gives the same values."""
    names, values = HOST.split("\n")[:2]
    head, words = names.split()[:1], names.split()[1:]
    nums = values.split()[1:]
    pairs = list(zip(words, nums, strict=True))[::-1]  # reversed
    shuffled = (" ".join(head + [n for n, _ in pairs]) + "\n"
                + " ".join(head + [v for _, v in pairs]) + "\n")
    assert parse_netstat(shuffled) == {k: v for k, v in parse_netstat(HOST).items()
                                       if k.startswith("TcpExt")}
    small = "TcpExt: TCPSynRetrans Foo ListenOverflows ListenDrops\nTcpExt: 5 1 7 9\n"
    assert tcp_counters(small) == {"listen_overflows": 7, "listen_drops": 9,
                                   "tcp_syn_retrans": 5}


@pytest.mark.parametrize(("text", "expected"), [
    ("", dict.fromkeys(COUNTERS)),  # no file (cat failed): nothing read
    ("IpExt: InOctets\nIpExt: 5\n", dict.fromkeys(COUNTERS)),  # no TcpExt pair
    # a kernel without TCPSynRetrans: that one is not read, the others are
    ("TcpExt: ListenOverflows ListenDrops\nTcpExt: 3 4\n",
     {"listen_overflows": 3, "listen_drops": 4, "tcp_syn_retrans": None}),
    # a torn read: fewer values than names; which is which cannot be told
    ("TcpExt: ListenOverflows ListenDrops TCPSynRetrans\nTcpExt: 3 4\n", dict.fromkeys(COUNTERS)),
    # a header without its values line, a values line without its header
    ("TcpExt: ListenOverflows ListenDrops TCPSynRetrans\n", dict.fromkeys(COUNTERS)),
    ("TcpExt: 3 4 5\n", dict.fromkeys(COUNTERS)),
    # a garbled value is not read; its neighbours are
    ("TcpExt: ListenOverflows ListenDrops TCPSynRetrans\nTcpExt: 3 x4 5\n",
     {"listen_overflows": 3, "listen_drops": None, "tcp_syn_retrans": 5}),
    ("TcpExt: ListenOverflows ListenDrops TCPSynRetrans\nTcpExt: -1 4 5\n",
     {"listen_overflows": None, "listen_drops": 4, "tcp_syn_retrans": 5}),
])
def test_a_missing_or_garbled_counter_is_not_read(text: str, expected: dict[str, int | None]
                                                  ) -> None:
    assert tcp_counters(text) == expected


def test_tcp_counters_of_no_text_at_all() -> None:
    assert tcp_counters(None) == not_read() == dict.fromkeys(COUNTERS)


def test_a_counter_not_read_on_either_side_has_no_delta_never_zero() -> None:
    full = tcp_counters(OVERFLOW)
    partial = {**full, "tcp_syn_retrans": None}
    assert counter_delta(partial, full)["tcp_syn_retrans"] is None
    assert counter_delta(full, partial)["tcp_syn_retrans"] is None
    assert counter_delta(not_read(), full) == dict.fromkeys(COUNTERS)
    assert counter_delta(partial, full)["listen_overflows"] == 0
    # Counters only grow: a smaller one afterwards is another count, not a negative one.
    assert counter_delta(full, tcp_counters(HOST)) == dict.fromkeys(COUNTERS)


def test_the_listen_backlog_is_send_q_of_the_listener() -> None:
    text = "LISTEN 0      4096               *:8080            *:*    \n"
    assert parse_listen_backlog(text) == 4096
    assert parse_listen_backlog("LISTEN 3 4 0.0.0.0:8080 0.0.0.0:*\n"
                                "LISTEN 0 16 [::]:8080 [::]:*\n") == 16
    assert parse_listen_backlog("") is None
    assert parse_listen_backlog("ESTAB 0 0 1.2.3.4:8080 5.6.7.8:1\nLISTEN x y z w\n") is None

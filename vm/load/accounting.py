"""Done but unanswered: requests the server processed whose answers never reached a client.

A server with a counter (the walkthrough's visitor number) says how many requests it did. The
clients say how many answers they got. The difference is the figure: requests the server did
beyond those answered, because a client resent them (Go resends a GET whose reused connection
died: the server did it twice, the client saw one answer) or because the answer went into a
connection that was already dead (a reset, a client that gave up at its timeout).

Where it is exact and where only bounded:

* Exact from visitor numbers, where every client that ran records the number of each answer
  (the probe does; ab and hey keep no bodies): every number the server handed out in the load
  should reach exactly one client, once. A number no client received is a request done and
  not answered; a number received twice is an answer the counter gave twice.
* Bounded otherwise: ``server_done - answered`` counts, besides the figure, the requests still
  in flight when a client was stopped (the server may have done them; no answer was awaited).
  So the figure lies in ``[server_done - answered - in_flight_at_stop, server_done -
  answered]``, with the reason in words. hey leaves none in flight (its workers finish the
  request they are in); ab ``-t`` or SIGINT leaves up to its concurrency; the probe writes
  each request it gave up on as ``abandoned``.

Counter readings (``vm/systemd/portable.py`` ``count_of``): a reading is one request whose
answer carries its own number; the suite keeps the count *before* it (number - 1). Between a
reading before the load (count ``before``) and one after it (count ``after``), the server did
``after - before - 1`` requests of the load: the first reading's own request is in the count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from pytest_portable_upgrade.load.ab import AbResult
from pytest_portable_upgrade.load.hey import HeyResult
from pytest_portable_upgrade.load.long_lived import HolderSummary
from pytest_portable_upgrade.load.timeline import ProbeRecord

# Why each client's requests in flight at stop are what they are (words for the report).
AB_IN_FLIGHT = "ab records no bodies; ab -t (or SIGINT) stops with up to C requests in flight"
HEY_IN_FLIGHT = ("hey records no bodies; a stopped hey finishes the request each worker is in:"
                 " none in flight")
PROBE_IN_FLIGHT = "the probe's requests still unanswered when it exited (written as abandoned)"
HOLDERS_IN_FLIGHT = "a long-lived client may be stopped with one request in flight"
KILLED_IN_FLIGHT = "killed, not stopped: up to C requests in flight"


@dataclass(frozen=True)
class ClientCount:
    """One client's side: the answers it got that the server counted (the 2xx ones for the
    walkthrough, whose errors are not visitors) and how many of its requests may have been in
    flight when it was stopped (a bound: a count the server may hold without an answer
    awaited)."""

    name: str
    answered: int
    in_flight_at_stop: int
    why: str = ""  # why in_flight_at_stop is what it is (AB_IN_FLIGHT, ...)

    def __post_init__(self) -> None:
        if self.answered < 0 or self.in_flight_at_stop < 0:
            raise ValueError(f"{self.name}: answered and in_flight_at_stop are counts (>= 0)")


def done_between(count_before: int, count_after: int) -> int:
    """Requests the server did between two counter readings (see the module docstring): the
    reading before the load is a request of its own, counted in ``count_after``."""
    if count_after < count_before:
        raise ValueError(f"the counter went back: {count_before} before, {count_after} after")
    return count_after - count_before - 1


@dataclass(frozen=True)
class VisitorFacts:
    """What the visitor numbers of a range say, read against every number in it."""

    first: int
    last: int
    missing: tuple[int, ...]  # handed out, received by no client
    duplicates: tuple[int, ...]  # received more than once
    outside: tuple[int, ...]  # received, but not in [first, last]


def visitor_facts(numbers: Iterable[int], first: int, last: int) -> VisitorFacts:
    """Exact facts about the numbers ``first..last`` (inclusive) the server handed out, from
    the numbers the clients received (``numbers``, each as often as it was received)."""
    seen = Counter(numbers)
    return VisitorFacts(
        first=first, last=last,
        missing=tuple(n for n in range(first, last + 1) if n not in seen),
        duplicates=tuple(sorted(n for n, c in seen.items() if c > 1)),
        outside=tuple(sorted(n for n in seen if not first <= n <= last)),
    )


@dataclass(frozen=True)
class Unanswered:
    """The done-but-unanswered figure: exact (``low == high``, ``exact``) or a bound, and why."""

    low: int
    high: int
    exact: bool
    server_done: int
    answered: int
    reason: str  # words: how the figure was found, or why it is only a bound

    def describe(self) -> str:
        figure = (f"{self.low}" if self.exact else f"{self.low}..{self.high}")
        kind = "exact" if self.exact else "bounded"
        return (f"done but unanswered: {figure} ({kind}; server did {self.server_done},"
                f" clients got {self.answered} answers; {self.reason})")

    def as_dict(self) -> dict[str, object]:
        return {"low": self.low, "high": self.high, "exact": self.exact,
                "server_done": self.server_done, "answered": self.answered,
                "reason": self.reason}


def bounded_unanswered(server_done: int, clients: Iterable[ClientCount]) -> Unanswered:
    """``server_done - answered - in_flight_at_stop .. server_done - answered`` over every
    client that ran; exact when no client can have had a request in flight at stop.

    The low end is not raised to 0: a negative bound says the clients got more answers than
    the server counted (counts lost), which ``unanswered_problems`` names."""
    clients = list(clients)
    answered = sum(c.answered for c in clients)
    in_flight = sum(c.in_flight_at_stop for c in clients)
    high = server_done - answered
    low = high - in_flight
    answers = " + ".join(f"{c.name} {c.answered}" for c in clients) or "none"
    if in_flight == 0:
        reason = f"server_done - answered ({answers}); no request in flight at stop"
    else:
        whys = "; ".join(f"{c.name}: {c.why or f'up to {c.in_flight_at_stop} in flight'}"
                         for c in clients if c.in_flight_at_stop)
        reason = (f"server_done - answered ({answers}), less up to {in_flight} in flight at "
                  f"stop ({whys})")
    return Unanswered(low=low, high=high, exact=in_flight == 0, server_done=server_done,
                      answered=answered, reason=reason)


def exact_unanswered(facts: VisitorFacts, in_flight_at_stop: int = 0) -> Unanswered:
    """The figure from visitor numbers, when every client that ran recorded the number of each
    of its answers: the numbers no client received. Requests in flight at stop still widen it
    (their numbers may be among the missing ones without being a loss)."""
    done = facts.last - facts.first + 1
    missing = len(facts.missing)
    answered = done - missing
    reason = f"visitor numbers {facts.first}..{facts.last}: {missing} received by no client"
    if facts.duplicates:
        reason += f", {len(facts.duplicates)} received twice: {list(facts.duplicates[:5])}"
    if in_flight_at_stop:
        reason += f"; up to {in_flight_at_stop} of them were in flight at stop"
    return Unanswered(low=max(0, missing - in_flight_at_stop), high=missing,
                      exact=in_flight_at_stop == 0, server_done=done, answered=answered,
                      reason=reason)


def expects_no_unanswered(socket_location: str, shutdown: str, proxy: str | None) -> bool:
    """Whether a scenario's done-but-unanswered figure must be 0: a host socket (it queues
    connections across the switch) and a draining server (it finishes every request it read,
    and closes a keep-alive connection only with ``Connection: close`` on an answer), no proxy
    in between (HAProxy's ``retry-on all-retryable-errors`` may resend a request the server
    already did). Elsewhere the figure is a characterisation, not a verdict."""
    return socket_location == "host" and shutdown == "drain" and proxy is None


def unanswered_problems(figure: Unanswered, expect_zero: bool) -> list[str]:
    """The problem line when ``expect_zero`` and the figure (or its bound) excludes 0; a
    figure below 0 at its high end is always one (more answers than the server counted)."""
    problems = []
    if figure.high < 0:
        problems.append(
            f"the clients got {figure.answered} answers but the server counted only "
            f"{figure.server_done} requests: {-figure.high} answers the counter never counted")
    elif expect_zero and figure.low > 0:
        at_least = "" if figure.exact else "at least "
        problems.append(
            f"the server did {at_least}{figure.low} requests whose answers no client got "
            f"(resent, or answered into a dead connection): expected 0 with a host socket and "
            f"a draining server; {figure.describe()}")
    return problems


# --- each client's side, from what the load collected ----------------------------------------
# The answers the counter counts are the 2xx ones: the walkthrough answers nothing else to a
# request it counts (a 400 is not a visitor).


def ab_count(ab: AbResult, concurrency: int) -> ClientCount:
    return ClientCount("ab", ab.successful, concurrency, AB_IN_FLIGHT)


def hey_count(hey: HeyResult, concurrency: int, stopped: bool = True) -> ClientCount:
    """``stopped``: hey ended by SIGINT or ``-z`` (each worker finished its request); False
    when it was killed (e.g. by the unit's RuntimeMaxSec): up to ``concurrency`` in flight."""
    if stopped:
        return ClientCount("hey", hey.successful, 0, HEY_IN_FLIGHT)
    return ClientCount("hey", hey.successful, concurrency, KILLED_IN_FLIGHT)


def probe_count(records: Iterable[ProbeRecord]) -> ClientCount:
    records = list(records)
    return ClientCount("probe", sum(1 for r in records if r.ok),
                       sum(1 for r in records if r.error == "abandoned"), PROBE_IN_FLIGHT)


def holders_count(summary: HolderSummary) -> ClientCount:
    return ClientCount("holders", summary.answered, summary.connections, HOLDERS_IN_FLIGHT)


def unanswered_figure(count_before: int, count_after: int, clients: Iterable[ClientCount],
                      numbers: Iterable[int] | None = None) -> Unanswered:
    """The figure of one load between two counter readings: exact from ``numbers`` (the
    visitor numbers received, given only when every client that ran records them: the probe
    and the long-lived clients do, ab and hey do not), else bounded by what was in flight."""
    clients = list(clients)
    if numbers is None:
        return bounded_unanswered(done_between(count_before, count_after), clients)
    # The reading before got count_before + 1; the load's numbers follow it.
    facts = visitor_facts(numbers, count_before + 2, count_after)
    return exact_unanswered(facts, sum(c.in_flight_at_stop for c in clients))

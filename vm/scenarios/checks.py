"""The checks a verdict is made of, as pure functions over what was measured.

Each check returns a sentence with the numbers when it fails, so a red test reads as a report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pytest_portable_upgrade.load.accounting import (
    Unanswered,
    ab_count,
    hey_count,
    holders_count,
    probe_count,
    unanswered_figure,
)
from pytest_portable_upgrade.load.hey import hey_problems
from pytest_portable_upgrade.load.load import LoadOutcome
from pytest_portable_upgrade.load.timeline import ProbeRecord
from pytest_portable_upgrade.systemd.portable import Upgrade


@dataclass(frozen=True)
class SocketObservation:
    active_since_before: str
    active_since_after: str
    state_after: str


def load_reached_old(outcome: LoadOutcome, upgrade: Upgrade) -> list[str]:
    """The load ran before the reattach and the old version answered it."""
    problems = []
    tl = outcome.timeline
    if outcome.started >= upgrade.started:
        problems.append("the load started only after the reattach began")
    before = [r for r in tl.answered if r.t < upgrade.started and r.greeting == tl.old]
    if not before:
        problems.append(f"the probe saw no {tl.old!r} answer under load before the reattach")
    return problems


def load_reached_new(
    outcome: LoadOutcome, upgrade: Upgrade, post_switch_s: float
) -> list[str]:
    """The load went on while the new version answered, ab included, for ``post_switch_s``."""
    problems = []
    tl = outcome.timeline
    if tl.switch_at is None:
        problems.append(
            f"the probe never saw {tl.new!r} while the load ran ({outcome.duration_s:.1f} s); "
            "the run tested nothing"
        )
    else:
        served = outcome.stopped - tl.switch_at
        if served < post_switch_s:
            problems.append(
                f"the new version answered only {served:.1f} s under load "
                f"(wanted {post_switch_s:g} s): the load ended too early"
            )
    ab_ended = outcome.ab_ended  # early, never late
    if ab_ended < outcome.stopped - 3:
        window = outcome.stopped - (ab_ended - outcome.ab.time_taken_s)
        problems.append(
            f"ab ran {outcome.ab.time_taken_s:.1f} s of the {window:.1f} s load "
            "window: it ended early"
        )
    if tl.switch_at is not None and ab_ended <= tl.switch_at:
        problems.append(
            f"ab ended at +{ab_ended - outcome.started:.1f} s, before the first {tl.new!r} "
            f"at +{tl.switch_at - outcome.started:.1f} s: its zero failures say nothing about v2"
        )
    return problems


def load_spanned_switch(
    outcome: LoadOutcome, upgrade: Upgrade, post_switch_s: float
) -> list[str]:
    """The load ran before the reattach and went on while the new version answered."""
    return [*load_reached_old(outcome, upgrade),
            *load_reached_new(outcome, upgrade, post_switch_s)]


def failed_requests(outcome: LoadOutcome) -> list[str]:
    """Requests that failed, by ab's, hey's (when it ran) and the probe's count: the loss
    itself."""
    ab = outcome.ab
    problems = []
    if ab.failed or ab.non_2xx:
        problems.append(f"ab saw failures: {ab.describe()}")
    problems += hey_problems(outcome.hey, min_answered=0)  # its failures only: no load bar here
    if outcome.timeline.errors:
        problems.append(f"the probe saw failed requests: {outcome.timeline.errors}")
    return problems


def _span(records: list[ProbeRecord], outcome: LoadOutcome, upgrade: Upgrade) -> str:
    first, last = (min(r.t for r in records) - outcome.started,
                   max(r.t for r in records) - outcome.started)
    start, end = upgrade.started - outcome.started, upgrade.ended - outcome.started
    return f"sent +{first:.1f} to +{last:.1f} s; the reattach ran +{start:.1f} to +{end:.1f} s"


def explain_losses(outcome: LoadOutcome, upgrade: Upgrade, keepalive: bool, proxy: bool,
                   socket_in_image: bool) -> list[str]:
    """Why requests were lost, in words, with what to check: the probe's failures by how they
    failed (and when), and ab's where the probe saw nothing. One sentence per cause, each
    starting with "why:"; empty when nothing was lost."""
    failed = [r for r in outcome.timeline.records if not r.ok]
    kinds: dict[str, list[ProbeRecord]] = {}
    for r in failed:
        # A request still unanswered when the load stopped waited as long as it could.
        key = "timeout" if r.error == "abandoned" else (r.failure_class or "other")
        kinds.setdefault(key, []).append(r)
    why = []
    if cut := kinds.get("reset", []) + kinds.get("eof", []):
        why.append(
            f"why: {len(cut)} requests were cut off without an answer "
            f"({_span(cut, outcome, upgrade)}): lost on the old process's connections at its "
            "stop: it closed connections it had accepted before answering them; check the "
            "service's graceful-stop signal (KillSignal=, a host drop-in) and TimeoutStopSec=")
    if refused := kinds.get("refused", []):
        where = ("it ships inside the image, so the reattach stops and restarts it"
                 if socket_in_image else
                 "check that the .socket unit is installed on the host, not in the image")
        why.append(f"why: {len(refused)} connections were refused "
                   f"({_span(refused, outcome, upgrade)}): nothing listened on the port while "
                   f"the socket was down; {where}")
    if timeouts := kinds.get("timeout", []):
        why.append(f"why: {len(timeouts)} requests got no answer in time "
                   f"({_span(timeouts, outcome, upgrade)}): the queued connections were not "
                   "served: the new version started too slowly or never took the socket over")
    if errors := kinds.get("non-2xx", []):
        statuses = Counter(r.status for r in errors)
        why.append(f"why: {len(errors)} answers had an error status {dict(statuses)} "
                   f"({_span(errors, outcome, upgrade)}): the service answered before it was "
                   "ready, or a proxy gave up; check its readiness (Type=notify) and retries")
    if other := kinds.get("other", []):
        why.append(f"why: {len(other)} requests failed otherwise "
                   f"({Counter(r.error or f'status {r.status}, no version' for r in other)}); "
                   "a 2xx that names no version means the spec's [answer] does not match what "
                   "the service sends")
    ab = outcome.ab
    broken = ab.failed_receive + ab.failed_exceptions + ab.failed_length
    if broken and keepalive and not proxy:
        why.append(f"why: ab lost {broken} requests on kept-alive connections: a host socket "
                   "only queues new connections; a kept-alive one belongs to the old process "
                   "and dies with it: drain keep-alive connections on stop, hand them to the "
                   "fd store, or put a proxy in front (the HAProxy scenario)")
    elif broken and not cut:
        why.append(f"why: ab saw {broken} requests broken after they were sent: lost on the old "
                   "process's connections at its stop; check the graceful-stop signal "
                   "(KillSignal=)")
    if ab.failed_connect and not refused:
        why.append(f"why: ab could not connect {ab.failed_connect} times: the port was closed "
                   "for a moment (the socket restarted?)")
    why += _hey_why(outcome, keepalive, proxy)
    return why


def _hey_why(outcome: LoadOutcome, keepalive: bool, proxy: bool) -> list[str]:
    """hey's failures in words: which of them Go's client would have resent, and why not."""
    hey = outcome.hey
    if hey is None or not hey.failed:
        return []
    kinds = hey.failed_by_kind
    cut = kinds.get("reset", 0) + kinds.get("eof", 0)
    why = []
    if cut and outcome.method == "POST":
        why.append(f"why: hey lost {cut} POSTs on connections that broke (reset "
                   f"{kinds.get('reset', 0)}, eof {kinds.get('eof', 0)}): Go's client never "
                   "resends a POST, so what a GET's resend hides shows here: the server closed "
                   "connections it had read requests on"
                   + ("; drain keep-alive connections on stop (Connection: close on an "
                      "answer), or put a proxy in front" if keepalive and not proxy else ""))
    elif cut:
        why.append(f"why: hey lost {cut} GETs on connections that broke (reset "
                   f"{kinds.get('reset', 0)}, eof {kinds.get('eof', 0)}) although Go resends a "
                   "GET whose reused connection died before its answer began: the connections "
                   "broke on new connections or halfway through an answer")
    if refused := kinds.get("refused", 0):
        why.append(f"why: hey could not connect {refused} times: nothing listened on the port "
                   "for a moment (the socket restarted?)")
    if timeouts := kinds.get("timeout", 0):
        why.append(f"why: {timeouts} of hey's requests got no answer within its -t: the queued "
                   "connections were not served in time")
    return why


def enough_load(outcome: LoadOutcome, min_complete: int) -> list[str]:
    """ab completed at least ``min_complete`` requests, and so did hey when it ran (its 2xx
    answers): the load was real load for every client."""
    problems = []
    if outcome.ab.complete < min_complete:
        problems.append(f"ab completed only {outcome.ab.complete} requests (< {min_complete})")
    if outcome.hey is not None and outcome.hey.successful < min_complete:
        problems += [p for p in hey_problems(outcome.hey, min_complete)
                     if not p.startswith("hey saw failures")]
    return problems


def zero_failures(outcome: LoadOutcome, min_complete: int) -> list[str]:
    return [*failed_requests(outcome), *enough_load(outcome, min_complete)]


def switched_cleanly(outcome: LoadOutcome) -> list[str]:
    tl = outcome.timeline
    if tl.switch_at is not None and not tl.switched_cleanly:
        last_old = tl.last(tl.old)
        return [f"{tl.old!r} answered again after the first {tl.new!r} "
                f"(last {tl.old!r} at +{(last_old.t if last_old else 0) - outcome.started:.1f} s)"]
    return []


def socket_restarted(obs: SocketObservation) -> list[str]:
    if obs.active_since_before != obs.active_since_after:
        return ["the host socket was restarted: ActiveEnterTimestampMonotonic "
                f"{obs.active_since_before} -> {obs.active_since_after}"]
    return []


def socket_dead(obs: SocketObservation) -> list[str]:
    if obs.state_after != "active":
        return [f"the host socket is {obs.state_after!r} after the reattach"]
    return []


def socket_untouched(obs: SocketObservation) -> list[str]:
    return [*socket_restarted(obs), *socket_dead(obs)]


def counter_consistent(outcome: LoadOutcome, final_count: int) -> list[str]:
    problems = []
    regressions = outcome.timeline.counter_regressions()
    if regressions:
        problems.append(f"the counter went back or repeated: {regressions[:5]}")
    hey = outcome.hey.successful if outcome.hey is not None else 0
    answered = outcome.ab.successful + hey + len(outcome.timeline.answered)
    if final_count < answered:
        hey_part = f" + hey {hey}" if outcome.hey is not None else ""
        problems.append(
            f"the counter ends at {final_count}, below the {answered} answered requests "
            f"(ab {outcome.ab.successful}{hey_part} + probe {len(outcome.timeline.answered)}):"
            " counts lost"
        )
    return problems


def counter_went_back(count_before: int | None, count_after: int | None) -> list[str]:
    """The counter read after the load is not below the one read before it."""
    if count_before is not None and count_after is not None and count_after < count_before:
        return [f"the counter went back over the load: {count_before} before it, "
                f"{count_after} after it (the state was not kept)"]
    return []


def done_but_unanswered(outcome: LoadOutcome, count_before: int | None,
                        count_after: int | None, concurrency: int) -> Unanswered | None:
    """What the server did during the load beyond what every client that ran got answered
    (vm/load/accounting.py): bounded, as ab records no visitor numbers. None without both
    counter readings, or when the counter went back (``counter_went_back`` says so)."""
    if count_before is None or count_after is None or count_after < count_before:
        return None
    clients = [ab_count(outcome.ab, concurrency), probe_count(outcome.timeline.records)]
    if outcome.hey is not None:
        # The load waits for hey's exit after SIGINT (or fails): every worker finished.
        clients.append(hey_count(outcome.hey, concurrency))
    if outcome.holders is not None:
        clients.append(holders_count(outcome.holders))
    return unanswered_figure(count_before, count_after, clients)


def zero_downtime_problems(
    outcome: LoadOutcome, upgrade: Upgrade, socket: SocketObservation, final_count: int,
    min_complete: int, post_switch_s: float,
) -> list[str]:
    """Every reason the run does not prove a zero-downtime upgrade; empty when it does."""
    return [
        *load_spanned_switch(outcome, upgrade, post_switch_s),
        *zero_failures(outcome, min_complete),
        *switched_cleanly(outcome),
        *socket_untouched(socket),
        *counter_consistent(outcome, final_count),
    ]


def refused_problems(outcome: LoadOutcome, rollout: Upgrade, socket: SocketObservation,
                     rollout_ok: bool, min_complete: int) -> list[str]:
    """A tampered update must be refused while the running version serves on, losing nothing."""
    tl = outcome.timeline
    problems = [*zero_failures(outcome, min_complete), *socket_untouched(socket)]
    if rollout_ok:
        problems.append("the rollout of a tampered image succeeded")
    if tl.first(tl.new) is not None:
        problems.append(f"{tl.new!r} answered: the tampered version went live")
    last_old = tl.last(tl.old)
    if last_old is None or last_old.t < rollout.ended:
        problems.append(f"{tl.old!r} did not go on answering after the refused update")
    return problems

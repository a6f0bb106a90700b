"""The zero-downtime verdict of one scenario, as pure functions over what was measured.

Each check returns a sentence with the numbers when it fails, so a red test reads as a report.
"""

from __future__ import annotations

from dataclasses import dataclass

from vm.load import LoadOutcome
from vm.portable import Reattach


@dataclass(frozen=True)
class SocketObservation:
    active_since_before: str
    active_since_after: str
    state_after: str


def load_reached_old(outcome: LoadOutcome, reattach: Reattach) -> list[str]:
    """The load ran before the reattach and the old version answered it."""
    problems = []
    tl = outcome.timeline
    if outcome.started >= reattach.started:
        problems.append("the load started only after the reattach began")
    before = [r for r in tl.answered if r.t < reattach.started and r.greeting == tl.old]
    if not before:
        problems.append(f"the probe saw no {tl.old!r} answer under load before the reattach")
    return problems


def load_reached_new(
    outcome: LoadOutcome, reattach: Reattach, post_switch_s: float
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
    outcome: LoadOutcome, reattach: Reattach, post_switch_s: float
) -> list[str]:
    """The load ran before the reattach and went on while the new version answered."""
    return [*load_reached_old(outcome, reattach),
            *load_reached_new(outcome, reattach, post_switch_s)]


def failed_requests(outcome: LoadOutcome) -> list[str]:
    """Requests that failed, by ab's and the probe's count: the loss itself."""
    ab = outcome.ab
    problems = []
    if ab.failed or ab.non_2xx:
        problems.append(f"ab saw failures: {ab.describe()}")
    if outcome.timeline.errors:
        problems.append(f"the probe saw failed requests: {outcome.timeline.errors}")
    return problems


def enough_load(outcome: LoadOutcome, min_complete: int) -> list[str]:
    """ab completed at least ``min_complete`` requests: the load was real load."""
    if outcome.ab.complete < min_complete:
        return [f"ab completed only {outcome.ab.complete} requests (< {min_complete})"]
    return []


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
        problems.append(f"the visitor count went back or repeated: {regressions[:5]}")
    answered = outcome.ab.successful + len(outcome.timeline.answered)
    if final_count < answered:
        problems.append(
            f"the counter ends at {final_count}, below the {answered} answered requests "
            f"(ab {outcome.ab.successful} + probe {len(outcome.timeline.answered)}): counts lost"
        )
    return problems


def zero_downtime_problems(
    outcome: LoadOutcome, reattach: Reattach, socket: SocketObservation, final_count: int,
    min_complete: int, post_switch_s: float,
) -> list[str]:
    """Every reason the run does not prove a zero-downtime upgrade; empty when it does."""
    return [
        *load_spanned_switch(outcome, reattach, post_switch_s),
        *zero_failures(outcome, min_complete),
        *switched_cleanly(outcome),
        *socket_untouched(socket),
        *counter_consistent(outcome, final_count),
    ]

"""What the restart did to latency: the probe's requests in three windows around the switch.

Pure functions over the probe's records (``pytest_portable_upgrade.load.timeline``), the moment the
reattach started and v2's first answer. A request belongs to the window its *send time* falls in:

- ``before``: from the load start to the reattach start;
- ``switch``: from the reattach start to v2's first answer + ``SWITCH_TAIL_S`` (2 s: the queue
  that built up while no version served drains in that time; without it the queued requests
  that v2 answers first would land in ``after`` and hide there). When v2 never answered, this
  window runs to the end and ``after`` is empty;
- ``after``: the rest.

For each window: p50, p99 and max latency of the *answered* requests (a failed request's
latency is the time to its failure, not a service time: failures are counted by class
instead), the failures by class and the slots the probe did not send (its in-flight bound was
full). Whether the kernel dropped SYNs is not guessed from latencies here (a queue draining
after a restart passes through 1 s and 3 s as well): the kernel's own counters say it
(``pytest_portable_upgrade.load.kernel``).

The restart gap as the probe saw it (``probe_restart_gap``): from the send time of the first
request that waited to v2's first answer. A request *waited* when it was sent at or after
the reattach started and before v2's first answer, was answered by v2, and took more than
``WAIT_MARGIN_MS`` (100 ms) longer than the p99 of v1's answers sent before the reattach: the
host socket held it while no process accepted. The gap begins at most one probe interval
(50 ms at 20/s) after the old process stopped accepting.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from pytest_portable_upgrade.load.timeline import FAILURE_CLASSES, ProbeRecord, Timeline

WINDOWS = ("before", "switch", "after")
SWITCH_TAIL_S = 2.0
WAIT_MARGIN_MS = 100.0


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (a value that was measured, never an interpolation).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.0
    """
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class WindowStats:
    """The probe's requests sent in [start, end) (guest epoch s; end None = open)."""

    name: str
    start: float | None
    end: float | None
    requests: int
    answered: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    failures: dict[str, int]
    not_sent: int

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def as_dict(self, t0: float) -> dict[str, Any]:
        """For summary.json: times in seconds after the load start ``t0``."""
        return {
            "from_s": None if self.start is None else round(self.start - t0, 2),
            "to_s": None if self.end is None else round(self.end - t0, 2),
            "requests": self.requests, "answered": self.answered,
            "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms,
            "failures": dict(self.failures), "not_sent": self.not_sent,
        }


def window_stats(name: str, start: float | None, end: float | None,
                 records: list[ProbeRecord], skipped: list[float]) -> WindowStats:
    def inside(t: float) -> bool:  # start None: a window that never began (no switch)
        return start is not None and t >= start and (end is None or t < end)

    mine = [r for r in records if inside(r.t)]
    latencies = sorted(r.latency_ms for r in mine if r.ok)
    failures = dict.fromkeys(FAILURE_CLASSES, 0)
    for r in mine:
        if (kind := r.failure_class) is not None:
            failures[kind] += 1
    return WindowStats(
        name=name, start=start, end=end, requests=len(mine), answered=len(latencies),
        p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
        max_ms=latencies[-1] if latencies else None, failures=failures,
        not_sent=sum(inside(t) for t in skipped),
    )


def longest_gap(records: list[ProbeRecord], until: float) -> tuple[float, float | None]:
    """(milliseconds, start) of the longest time without a completed answer: between two
    answers, or from the last answer to ``until`` (the load's end: a port that died and never
    came back is a gap too). Before the first answer is not counted (the probe starting up)."""
    ends = sorted(r.done_at for r in records if r.ok)
    if not ends:
        first = min((r.t for r in records), default=None)
        return (round(max(0.0, until - first) * 1000, 1), first) if first is not None \
            else (0.0, None)
    spans = [(b - a, a) for a, b in itertools.pairwise([*ends, max(until, ends[-1])])]
    gap, start = max(spans, default=(0.0, ends[0]))
    return round(gap * 1000, 1), start


@dataclass(frozen=True)
class LatencyReport:
    t0: float
    windows: tuple[WindowStats, ...]
    longest_gap_ms: float
    longest_gap_start: float | None  # guest epoch s
    sent_per_s: float | None
    restart_gap: tuple[float, float] | None = None  # (from, to) guest epoch s: probe_restart_gap

    def window(self, name: str) -> WindowStats:
        return next(w for w in self.windows if w.name == name)

    @property
    def not_sent(self) -> int:
        return sum(w.not_sent for w in self.windows)

    def summary_fields(self) -> dict[str, Any]:
        """The keys this report adds to a summary.json row (documented in the README)."""
        return {
            "longest_gap_ms": self.longest_gap_ms,
            "longest_gap_at_s": None if self.longest_gap_start is None
            else round(self.longest_gap_start - self.t0, 2),
            "restart_gap_probe_s": None if self.restart_gap is None
            else round(self.restart_gap[1] - self.restart_gap[0], 2),
            "restart_gap_probe_at_s": None if self.restart_gap is None
            else round(self.restart_gap[0] - self.t0, 2),
            "probe_sent_per_s": self.sent_per_s, "probe_not_sent": self.not_sent,
            "latency": {w.name: w.as_dict(self.t0) for w in self.windows},
        }


def latency_report(timeline: Timeline, reattach_started: float, until: float) -> LatencyReport:
    """The three windows of one run; ``until`` is when the load was stopped (guest epoch)."""
    records, skipped = timeline.records, timeline.skipped
    switch_at = timeline.switch_at
    switch_end = None if switch_at is None else max(switch_at + SWITCH_TAIL_S, reattach_started)
    bounds = (("before", timeline.t0, reattach_started),
              ("switch", reattach_started, switch_end),
              ("after", switch_end, None))
    windows = tuple(window_stats(name, start, end, records, skipped)
                    for name, start, end in bounds)
    gap_ms, gap_start = longest_gap(records, until)
    sends = sorted([r.t for r in records] + skipped)
    span = sends[-1] - sends[0] if len(sends) > 1 else 0.0
    rate = round((len(sends) - 1) / span, 1) if span > 0 else None
    return LatencyReport(timeline.t0, windows, gap_ms, gap_start, rate,
                         probe_restart_gap(timeline, reattach_started))


def probe_restart_gap(timeline: Timeline, reattach_started: float
                      ) -> tuple[float, float] | None:
    """(send time of the first request that waited, v2's first answer), guest epoch s; see
    the module's docstring. None: v2 never answered, no answer of v1 before the reattach to
    compare with, or no request waited."""
    switch_at = timeline.switch_at
    baseline = percentile(sorted(r.latency_ms for r in timeline.answered
                                 if r.t < reattach_started and r.greeting == timeline.old), 99)
    if switch_at is None or baseline is None:
        return None
    waited = [r for r in timeline.answered
              if reattach_started <= r.t < switch_at and r.greeting == timeline.new
              and r.latency_ms > baseline + WAIT_MARGIN_MS]
    if not waited:
        return None
    return min(r.t for r in waited), switch_at


def stall_problems(report: LatencyReport, max_stall_s: float | None) -> list[str]:
    """--max-stall: a separate bound from the zero-downtime verdict; off when None."""
    if max_stall_s is None or report.longest_gap_ms <= max_stall_s * 1000:
        return []
    where = ("" if report.longest_gap_start is None
             else f" (from +{report.longest_gap_start - report.t0:.1f} s)")
    return [f"longest gap {report.longest_gap_ms / 1000:.1f} s exceeds --max-stall "
            f"{max_stall_s:g} s{where}"]

"""The probe's per-request records and what they prove about a reattach."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# The failure classes of a probe request. Older probes wrote "connect-refused" and "empty";
# they read as the same classes, so an old probe.jsonl gives the same report.
FAILURE_CLASSES = ("refused", "reset", "eof", "timeout", "non-2xx", "other")
ERROR_CLASS = {"refused": "refused", "connect-refused": "refused", "reset": "reset",
               "eof": "eof", "empty": "eof", "timeout": "timeout"}


# Open-loop answers complete out of order by at most the time threads take to be scheduled
# (tens of ms under TCG, more under load): a second covers it with room to spare.
COUNTER_SLACK_S = 1.0


@dataclass(frozen=True)
class ProbeRecord:
    t: float  # send time, epoch seconds (guest clock)
    latency_ms: float
    status: int | None = None
    error: str | None = None
    greeting: str | None = None  # the version's answer (the subject's version regex/header)
    visitor: int | None = None  # the subject's counter, when it has one

    @property
    def ok(self) -> bool:
        # The probe records no greeting for an answer that names no version, or that lacks
        # the counter its subject promises: such a 200 is not an answer the verdict can use.
        return self.status == 200 and self.greeting is not None

    @property
    def done_at(self) -> float:
        return self.t + self.latency_ms / 1000

    @property
    def failure_class(self) -> str | None:
        """None for an answer; else refused, reset, eof, timeout, non-2xx or other (garbled
        bytes, an unexpected OS error, a request abandoned at the end, a 2xx without a
        greeting)."""
        if self.ok:
            return None
        if self.error is not None:
            return ERROR_CLASS.get(self.error, "other")
        if self.status is not None and not 200 <= self.status < 300:
            return "non-2xx"
        return "other"


RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(ProbeRecord))


def _probe_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a probe log; a torn last line (probe stopped mid-write) is dropped."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise
    return out


def parse_probe_log(text: str) -> list[ProbeRecord]:
    """One ProbeRecord per request line, sorted by send time. Lines of slots the probe did not
    send (``skipped``, see ``parse_probe_skips``) are not requests and are left out."""
    records = [
        # Only known fields: a field a newer probe adds must not make its log unreadable.
        ProbeRecord(**{k: v for k, v in raw.items() if k in RECORD_FIELDS})
        for raw in _probe_lines(text) if "skipped" not in raw
    ]
    return sorted(records, key=lambda r: r.t)


def parse_probe_skips(text: str) -> list[float]:
    """Send times (epoch s) of the slots the probe skipped because its in-flight bound was
    full: a stall long enough for that is evidence, not a gap in the data."""
    return sorted(float(raw["t"]) for raw in _probe_lines(text) if "skipped" in raw)


@dataclass(frozen=True)
class Timeline:
    """Facts from the probe, relative to the load start ``t0`` (seconds)."""

    records: list[ProbeRecord]
    t0: float
    old: str = ""  # the old version's answer
    new: str = ""
    errors: dict[str, int] = field(default_factory=dict)
    skipped: list[float] = field(default_factory=list)  # see parse_probe_skips

    @classmethod
    def build(cls, records: list[ProbeRecord], t0: float, old: str, new: str,
              skipped: list[float] | None = None) -> Timeline:
        errors = Counter(r.error or f"http-{r.status}" for r in records if not r.ok)
        return cls(records, t0, old, new, dict(errors), list(skipped or []))

    @property
    def answered(self) -> list[ProbeRecord]:
        return [r for r in self.records if r.ok]

    def first(self, greeting: str) -> ProbeRecord | None:
        """The answer of ``greeting`` that completed first (open loop: not the first sent)."""
        return min((r for r in self.answered if r.greeting == greeting),
                   key=lambda r: r.done_at, default=None)

    def last(self, greeting: str) -> ProbeRecord | None:
        """The answer of ``greeting`` that completed last."""
        return max((r for r in self.answered if r.greeting == greeting),
                   key=lambda r: r.done_at, default=None)

    @property
    def switch_at(self) -> float | None:
        """When the first answer of the new version completed (guest epoch seconds)."""
        first_new = self.first(self.new)
        return first_new.done_at if first_new else None

    @property
    def switched_cleanly(self) -> bool:
        """Old answers, then new ones, and no old answer after the first new one."""
        # By completion: the old process is gone before the new one answers, so every old
        # answer completes before the first new one, whatever order the requests were sent in
        # (a SYN retransmitted after a full accept queue can overtake a later request).
        first_new, last_old = self.first(self.new), self.last(self.old)
        return bool(first_new and last_old and last_old.done_at <= first_new.done_at)

    @property
    def longest_gap_ms(self) -> float:
        """Longest time without a completed answer, between the first and the last answer."""
        ends = sorted(r.done_at for r in self.answered)
        gaps = [b - a for a, b in itertools.pairwise(ends)]
        return round(max(gaps, default=0.0) * 1000, 1)

    @property
    def max_latency_ms(self) -> float:
        return max((r.latency_ms for r in self.records), default=0.0)

    def counter_regressions(self) -> list[tuple[int, int]]:
        """Pairs (earlier, later) of visitor numbers that show the count going back.

        The probe is open-loop: requests overlap, so two answers may complete in either order
        and a later-sent request may carry the smaller number. What cannot happen to a counter
        that loses nothing: the same number twice, or a number below one that was answered
        ``COUNTER_SLACK_S`` or more before it (a counter reset stays below for good).
        """
        answers = sorted((r for r in self.answered if r.visitor is not None),
                         key=lambda r: r.done_at)
        found: list[tuple[int, int]] = []
        seen: dict[int, int] = {}
        settled_max, settled = 0, 0  # the highest number answered SLACK or more earlier
        for record in answers:
            visitor = record.visitor
            assert visitor is not None
            while answers[settled].done_at <= record.done_at - COUNTER_SLACK_S:
                settled_max = max(settled_max, answers[settled].visitor or 0)
                settled += 1
            if visitor in seen:
                found.append((visitor, visitor))
            elif visitor < settled_max:
                found.append((settled_max, visitor))
            seen[visitor] = 1
        return found

    def answered_seconds_of(self, greeting: str) -> float:
        """How long answers of ``greeting`` have been seen: first to last, in seconds."""
        first, last = self.first(greeting), self.last(greeting)
        return last.done_at - first.done_at if first and last else 0.0

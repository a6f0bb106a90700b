"""The probe's per-request records and what they prove about a reattach."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProbeRecord:
    t: float  # send time, epoch seconds (guest clock)
    latency_ms: float
    status: int | None = None
    error: str | None = None
    greeting: str | None = None
    visitor: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.visitor is not None

    @property
    def done_at(self) -> float:
        return self.t + self.latency_ms / 1000


def parse_probe_log(text: str) -> list[ProbeRecord]:
    """One ProbeRecord per JSON line; a torn last line (probe stopped mid-write) is dropped."""
    records = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise
        records.append(ProbeRecord(**raw))
    return sorted(records, key=lambda r: r.t)


@dataclass(frozen=True)
class Timeline:
    """Facts from the probe, relative to the load start ``t0`` (seconds)."""

    records: list[ProbeRecord]
    t0: float
    old: str = "Hello"
    new: str = "Hola"
    errors: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, records: list[ProbeRecord], t0: float, old: str, new: str) -> Timeline:
        errors = Counter(r.error or f"http-{r.status}" for r in records if not r.ok)
        return cls(records, t0, old, new, dict(errors))

    @property
    def answered(self) -> list[ProbeRecord]:
        return [r for r in self.records if r.ok]

    def first(self, greeting: str) -> ProbeRecord | None:
        return next((r for r in self.answered if r.greeting == greeting), None)

    def last(self, greeting: str) -> ProbeRecord | None:
        return next((r for r in reversed(self.answered) if r.greeting == greeting), None)

    @property
    def switch_at(self) -> float | None:
        """When the first answer of the new version completed (guest epoch seconds)."""
        first_new = self.first(self.new)
        return first_new.done_at if first_new else None

    @property
    def switched_cleanly(self) -> bool:
        """Old answers, then new ones, and no old answer after the first new one."""
        first_new, last_old = self.first(self.new), self.last(self.old)
        return bool(first_new and last_old and last_old.t < first_new.t)

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
        """Pairs (earlier, later) of visitor numbers where the count did not go up."""
        visitors = [r.visitor for r in self.answered if r.visitor is not None]
        return [(a, b) for a, b in itertools.pairwise(visitors) if b <= a]

    def answered_seconds_of(self, greeting: str) -> float:
        """How long answers of ``greeting`` have been seen: first to last, in seconds."""
        first, last = self.first(greeting), self.last(greeting)
        return last.done_at - first.done_at if first and last else 0.0

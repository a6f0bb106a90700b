"""The switch-capacity map: its points, the prediction each is held to, the table, the words
and the picture (capacity.md, capacity.json, capacity.png). Pure functions over the points'
records (dicts, as capacity.json holds them), so a recorded map renders the same.

A point is one reattach under load (scenarios/capacity.py measures it): a host socket
``Backlog=``, a start delay of the new version, an offered load (the probe's open-loop rate and
ab's concurrency). The prediction it is held to:

- *arrivals* during the restart gap = the probe's rate x the gap + ab's clients. The probe is
  open loop: it sends whatever happens, so it adds rate x gap connections. ab is closed loop:
  each of its clients waits on its one connection, so it adds at most its concurrency,
  however long the gap. The gap is the probe's (``restart_gap_probe_s``: first request that
  waited -> the new version's first answer), measured in the same run.
- the *queue* is the listener's backlog as the kernel held it (``ss``' Send-Q) + 1: Linux
  refuses a connection only once the accept queue holds more than the backlog.
- arrivals > queue: the kernel drops SYNs (``TcpExtListenOverflows`` > 0) and those clients
  wait in SYN retransmits; arrivals <= queue: 0 overflows.

Where the measured overflows agree with that, the prediction holds; the report lists every
point where they do not. A point is *clear* when arrivals are at most half the queue or at
least twice it: there the map's test fails on a disagreement (``clear_problems``); between,
it only reports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_portable_upgrade.load.timeline import FAILURE_CLASSES

Point = dict[str, Any]
# How far from the line a point must be for a disagreement to fail the map's test.
CLEAR_FACTOR = 2.0
AB_FAILURES = ("failed_connect", "failed_receive", "failed_length", "failed_exceptions",
               "non_2xx")


def point_record(*, backlog: int | None, start_delay_s: float, probe_rate: float,
                 concurrency: int, row: dict[str, Any], backlog_effective: int | None,
                 wall_s: float) -> Point:
    """One point of the map from its summary row (scenarios/record.py's ``summary_row``):
    what capacity.json keeps. ``backlog`` None: the socket's own (no drop-in)."""
    latency = row.get("latency") or {}
    failures = dict.fromkeys(FAILURE_CLASSES, 0)
    for window in latency.values():
        for kind, n in (window.get("failures") or {}).items():
            failures[kind] = failures.get(kind, 0) + n
    switch = latency.get("switch") or {}
    before = latency.get("before") or {}
    return {
        "id": point_id(backlog, start_delay_s, probe_rate, concurrency),
        "backlog": backlog, "backlog_effective": backlog_effective,
        "start_delay_s": start_delay_s, "probe_rate": probe_rate, "concurrency": concurrency,
        "verdict": row.get("verdict"), "verdict_kind": row.get("verdict_kind"),
        "problems": list(row.get("problems") or []),
        "ab_complete": row.get("complete"), "ab_failed": row.get("failed"),
        **{f"ab_{k}": row.get(k) for k in AB_FAILURES},
        "ab_requests_per_second": row.get("requests_per_second"),
        "probe_requests": row.get("probe_requests"), "probe_failures": failures,
        "probe_errors": dict(row.get("probe_errors") or {}),
        "probe_sent_per_s": row.get("probe_sent_per_s"),
        "listen_overflows": row.get("listen_overflows"),
        "listen_drops": row.get("listen_drops"), "tcp_syn_retrans": row.get("tcp_syn_retrans"),
        "switch_p50_ms": switch.get("p50_ms"), "switch_p99_ms": switch.get("p99_ms"),
        "switch_max_ms": switch.get("max_ms"), "max_latency_ms": row.get("max_latency_ms"),
        "before_p50_ms": before.get("p50_ms"),
        "restart_gap_probe_s": row.get("restart_gap_probe_s"),
        "restart_gap_journal_s": row.get("restart_gap_journal_s"),
        "reattach_s": row.get("reattach_s"), "load_s": row.get("load_s"),
        "wall_s": round(wall_s, 1),
    }


def point_id(backlog: int | None, start_delay_s: float, probe_rate: float,
             concurrency: int) -> str:
    """``backlog16-delay2-rate20x10`` (``backlogdefault-...`` for the socket's own)."""
    return (f"backlog{'default' if backlog is None else backlog}-delay{start_delay_s:g}"
            f"-rate{probe_rate:g}x{concurrency}")


def failed_total(p: Point) -> int:
    """Every request lost at the point: ab's failed and non-2xx, the probe's failures."""
    probe = sum(int(n) for n in (p.get("probe_failures") or {}).values())
    return int(p.get("ab_failed") or 0) + int(p.get("ab_non_2xx") or 0) + probe


def prediction(p: Point) -> dict[str, Any] | None:
    """The prediction of one point from its recorded measurements (see the module's
    docstring): arrivals, queue, excess and whether it overflows; None when the gap or the
    backlog was not measured."""
    gap, rate = p.get("restart_gap_probe_s"), p.get("probe_sent_per_s") or p.get("probe_rate")
    backlog = p.get("backlog_effective") or p.get("backlog")
    if gap is None or rate is None or backlog is None:
        return None
    arrivals = rate * gap + p["concurrency"]
    queue = backlog + 1
    return {"arrivals": round(arrivals, 1), "queue": queue,
            "excess": round(arrivals - queue, 1), "overflows": arrivals > queue,
            "clear": arrivals * CLEAR_FACTOR <= queue or arrivals >= queue * CLEAR_FACTOR}


def agreement(p: Point) -> str:
    """agrees / disagrees / not judged (no prediction, or the counters not read)."""
    pred, seen = prediction(p), p.get("listen_overflows")
    if pred is None or seen is None:
        return "not judged"
    return "agrees" if pred["overflows"] == (seen > 0) else "disagrees"


def clear_problems(p: Point) -> list[str]:
    """Where a clear point contradicts the prediction, or a point the prediction says fits
    lost a request: one line each, with the numbers (the map's test fails on them)."""
    pred, seen = prediction(p), p.get("listen_overflows")
    if pred is None or seen is None:
        return []
    problems = []
    what = (f"{p['id']}: arrivals {pred['arrivals']:g} (probe {_rate(p)}/s x gap "
            f"{p['restart_gap_probe_s']:g} s + {p['concurrency']} ab clients) against a queue "
            f"of {pred['queue']}")
    if pred["clear"] and pred["overflows"] and seen == 0:
        problems.append(f"{what}: predicted overflows, the kernel counted none")
    if pred["clear"] and not pred["overflows"] and seen > 0:
        problems.append(f"{what}: predicted none, the kernel counted {seen} overflows")
    if pred["clear"] and not pred["overflows"] and p.get("verdict_kind") != "pass":
        problems.append(f"{what}: fits, yet the verdict is {p.get('verdict')}: "
                        + "; ".join(p.get("problems") or []))
    return problems


# --- the words ----------------------------------------------------------------------------
def _s(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f} s"


def _rate_value(p: Point) -> float:
    return float(p.get("probe_sent_per_s") or p["probe_rate"])


def _rate(p: Point) -> str:
    return f"{_rate_value(p):g}"


def _load(p: Point) -> str:
    return f"probe {p['probe_rate']:g}/s + ab -c {p['concurrency']}"


def _where(p: Point) -> str:
    backlog = "default" if p["backlog"] is None else str(p["backlog"])
    return f"Backlog={backlog}, start delay {p['start_delay_s']:g} s, {_load(p)}"


def guidance(points: Sequence[Point]) -> list[str]:
    """The guidance in words, every figure from the measured points."""
    judged = [(p, pred) for p in points if (pred := prediction(p)) is not None
              and p.get("listen_overflows") is not None]
    if not judged:
        return ["No point of this map measured both a restart gap and the kernel's counters: "
                "no guidance can be drawn from it."]
    words = []
    held = [(p, pred) for p, pred in judged if p["listen_overflows"] == 0]
    over = [(p, pred) for p, pred in judged if p["listen_overflows"] > 0]
    gaps = sorted(p["restart_gap_probe_s"] for p, _ in judged)
    by_delay: dict[float, list[float]] = {}
    for p, _ in judged:
        by_delay.setdefault(p["start_delay_s"], []).append(p["restart_gap_probe_s"])
    gap_words = "; ".join(f"start delay {d:g} s: {min(g):.1f}-{max(g):.1f} s"
                          for d, g in sorted(by_delay.items()))
    words.append(
        f"**The restart gap** (the probe's: first request that waited -> the new version's "
        f"first answer) measured {gaps[0]:.1f} to {gaps[-1]:.1f} s ({gap_words}). Connections "
        "that arrive in it wait in the host socket's accept queue: the probe's rate x the gap, "
        "plus one per closed-loop client (ab's concurrency).")
    most, most_pred = max(judged, key=lambda x: x[1]["arrivals"])
    rule = (f"**Give the host socket `Backlog=` >= R x T + C** for a restart gap of T s at R "
            f"new connections/s and C clients that each wait on one connection: this map's "
            f"largest, {_rate(most)}/s x {most['restart_gap_probe_s']:.1f} s + "
            f"{most['concurrency']} ({_where(most)}), needs `Backlog=` >= "
            f"{math.ceil(most_pred['arrivals'])}.")
    if held:
        big, big_pred = max(held, key=lambda x: x[1]["arrivals"])
        rule += (f" The kernel counted 0 listen overflows at {len(held)} of {len(judged)} "
                 f"points; the most arrivals held were {big_pred['arrivals']:g} "
                 f"({_rate(big)}/s x {big['restart_gap_probe_s']:.1f} s + "
                 f"{big['concurrency']}) in a queue of {big_pred['queue']} ({_where(big)}).")
    words.append(rule)
    if over:
        worst = max(over, key=lambda x: x[0].get("switch_max_ms") or 0)[0]
        least, least_pred = min(over, key=lambda x: x[1]["excess"])
        retrans = sorted(p.get("tcp_syn_retrans") or 0 for p, _ in over)
        clean_max = max((p.get("switch_max_ms") or 0 for p, _ in held), default=None)
        words.append(
            f"**Past it, clients wait in SYN retransmits** (the kernel drops their SYN; the "
            f"client sends it again after a wait that doubles each time): at {len(over)} "
            f"points the queue overflowed "
            f"({min(p['listen_overflows'] for p, _ in over)} to "
            f"{max(p['listen_overflows'] for p, _ in over)} overflows, {retrans[0]} to "
            f"{retrans[-1]} SYN/SYN-ACK retransmits), the smallest excess that overflowed was "
            f"{least_pred['excess']:g} connections ({_where(least)}), and the switch "
            f"window's longest wait reached {_s(worst.get('switch_max_ms'))} ({_where(worst)})"
            + (f", against {_s(clean_max)} where the queue held." if clean_max is not None
               else "."))
    words.extend(in_flight(points))
    lost = [p for p in points if failed_total(p) > 0]
    if lost:
        answered = max(p.get("switch_max_ms") or 0 for p in points)
        given_up = max(p.get("max_latency_ms") or 0 for p in lost)
        words.append(
            f"**Past a point, waits become losses**: at {len(lost)} of {len(points)} points "
            "requests got no answer while the load ran: "
            + "; ".join(f"{_lost(p)} at {_where(p)}" for p in lost)
            + f". The longest wait that was answered took {_s(answered)}; the longest a lost "
            f"request waited before it was given up, {_s(given_up)}.")
    elif over:
        longest = max(p.get("max_latency_ms") or 0 for p, _ in over)
        words.append(f"No request was lost in this map: the longest wait measured was "
                     f"{_s(longest)}.")
    return words


def _lost(p: Point) -> str:
    """What a point lost, by the probe's own error names when recorded (``abandoned``: still
    waiting when the load stopped), else by class; and ab's."""
    named = p.get("probe_errors") or {k: n for k, n in (p.get("probe_failures") or {}).items()
                                      if n}
    parts = [f"{n} {kind}" for kind, n in named.items()]
    if p.get("ab_failed"):
        parts.append(f"{p['ab_failed']} failed in ab")
    if p.get("ab_non_2xx"):
        parts.append(f"{p['ab_non_2xx']} non-2xx in ab")
    return ", ".join(parts) or "nothing"


def in_flight(points: Sequence[Point]) -> list[str]:
    """The probe's requests in flight at any instant before the switch, per offered load
    (Little's law: its rate x its median latency): what a server that drops its connections
    at its stop can lose of them."""
    by_load: dict[tuple[float, int], list[float]] = {}
    for p in points:
        if p.get("before_p50_ms") is not None:
            by_load.setdefault((p["probe_rate"], p["concurrency"]), []).append(
                _rate_value(p) * p["before_p50_ms"] / 1000)
    if not by_load:
        return []
    parts = [f"{min(v):.1f}-{max(v):.1f} at probe {rate:g}/s + ab -c {clients}"
             for (rate, clients), v in sorted(by_load.items())]
    return ["**Probe requests in flight** at any instant before the switch (its rate x its "
            "median latency, Little's law): " + "; ".join(parts) + ". A server that drops "
            "its connections at its stop loses what is in flight on them; the HAProxy "
            "scenario's load is chosen by this (docs/capacity.md)."]


def zero_downtime_end(points: Sequence[Point]) -> str:
    """Where zero-downtime ended: the point with the least predicted excess whose verdict is
    not a pass, or that it held at every point."""
    def excess(p: Point) -> float:
        pred = prediction(p)
        return pred["excess"] if pred is not None else float("inf")

    failed = sorted((p for p in points if p.get("verdict_kind") != "pass"), key=excess)
    if not failed:
        waited = [p for p in points if (p.get("listen_overflows") or 0) > 0]
        tail = (f"; at {len(waited)} of them clients waited in SYN retransmits (longest "
                f"{_s(max(p.get('switch_max_ms') or 0 for p in waited))})" if waited else "")
        return (f"Zero-downtime held at every one of the {len(points)} points (verdict pass: "
                f"no request failed){tail}.")
    first = failed[0]
    return (f"Zero-downtime ended at {_where(first)}: {first.get('verdict')}, "
            f"{failed_total(first)} requests lost ({'; '.join(first.get('problems') or [])}); "
            f"{len(failed)} of {len(points)} points failed.")


def disagreements(points: Sequence[Point]) -> list[str]:
    """One line per point whose overflows contradict the prediction."""
    lines = []
    for p in points:
        if agreement(p) != "disagrees":
            continue
        pred = prediction(p)
        assert pred is not None
        lines.append(f"{_where(p)}: arrivals {pred['arrivals']:g} against a queue of "
                     f"{pred['queue']} predicted {'overflows' if pred['overflows'] else 'none'},"
                     f" the kernel counted {p['listen_overflows']}")
    return lines


# --- the table, the files -----------------------------------------------------------------
COLUMNS = ("Backlog= (kernel)", "start delay s", "probe /s", "ab -c", "verdict", "lost",
           "probe failures", "listen overflows", "listen drops", "SYN/SYN-ACK retransmits",
           "p50 ms", "p99 ms", "max ms", "gap (probe) s", "gap (journal) s", "arrivals",
           "queue", "prediction", "agrees")


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def table(points: Sequence[Point]) -> str:
    """The measured map, one row per point. p50/p99/max: the probe's answered requests sent
    in the switch window (the reattach to the new version's first answer + 2 s)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for p in points:
        pred = prediction(p)
        backlog = "default" if p["backlog"] is None else str(p["backlog"])
        failures = ", ".join(f"{k} {n}" for k, n in (p.get("probe_failures") or {}).items()
                             if n) or "0"
        cells = [f"{backlog} ({_cell(p.get('backlog_effective'))})", p["start_delay_s"],
                 p.get("probe_sent_per_s") or p["probe_rate"], p["concurrency"],
                 p.get("verdict"), failed_total(p), failures, p.get("listen_overflows"),
                 p.get("listen_drops"), p.get("tcp_syn_retrans"), p.get("switch_p50_ms"),
                 p.get("switch_p99_ms"), p.get("switch_max_ms"), p.get("restart_gap_probe_s"),
                 p.get("restart_gap_journal_s"),
                 None if pred is None else pred["arrivals"],
                 None if pred is None else pred["queue"],
                 None if pred is None else ("overflows" if pred["overflows"] else "fits"),
                 agreement(p)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def markdown(points: Sequence[Point], meta: dict[str, Any]) -> str:
    """capacity.md: what was swept, the table, the words, where it disagreed."""
    disagree = disagreements(points)
    return "\n".join([
        "# Switch-capacity map",
        "",
        f"{len(points)} points on one VM ({meta.get('box')}, systemd "
        f"{meta.get('systemd_version')}), run {meta.get('run_id')}, "
        f"{meta.get('wall_s', 0) / 60:.1f} min. Each point: `{meta.get('scenario')}` with a "
        "host drop-in for the socket's `Backlog=` and one for the service's `PW_START_DELAY`, "
        "judged by `verdict_of` (zero-downtime). Counters: the guest kernel's, over the load.",
        "",
        table(points),
        "",
        "Prediction: arrivals = the probe's rate x the restart gap (probe) + ab's clients; "
        "queue = the kernel's backlog + 1; arrivals > queue: overflows.",
        "",
        "## Guidance",
        "",
        *(f"- {w}" for w in guidance(points)),
        f"- {zero_downtime_end(points)}",
        "",
        "## Where the measurements disagree with the prediction",
        "",
        *([f"- {line}" for line in disagree] or ["None: every judged point agrees."]),
        "",
    ])


def figure(points: Sequence[Point]) -> Any:
    """capacity.png: left, each point's arrivals against its queue, with the prediction's line
    (queue = arrivals: overflows below it); right, the switch window's longest wait against
    the predicted excess. Colour: what the point showed; shape: its offered load; a black
    ring: it disagrees with the prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.2), dpi=110)
    colors = {"held": ("#27ae60", "0 overflows, pass"),
              "waited": ("#e67e22", "overflows (clients in SYN retransmits), pass"),
              "failed": ("#c0392b", "verdict not pass")}
    loads = sorted({(p["probe_rate"], p["concurrency"]) for p in points})
    shapes = dict(zip(loads, "os^Dv<>p", strict=False))
    judged = [(p, pred) for p in points if (pred := prediction(p)) is not None]
    for p, pred in judged:
        kind = ("failed" if p.get("verdict_kind") != "pass"
                else "waited" if (p.get("listen_overflows") or 0) > 0 else "held")
        ring = agreement(p) == "disagrees"
        wait = max((p.get("switch_max_ms") or 1) / 1000, 0.001)
        for ax, x, y in ((left, pred["arrivals"], pred["queue"]), (right, pred["excess"], wait)):
            ax.scatter([x], [y], marker=shapes.get((p["probe_rate"], p["concurrency"]), "o"),
                       color=colors[kind][0], s=55, zorder=3, alpha=0.85,
                       edgecolors="black" if ring else "none", linewidths=1.5)
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=label)
               for c, label in colors.values()]
    handles += [Line2D([], [], marker=shapes[load], linestyle="", color="#777777",
                       label=f"probe {load[0]:g}/s + ab -c {load[1]}") for load in loads]
    if judged:
        values = [v for _, pred in judged for v in (pred["arrivals"], pred["queue"])]
        lo, hi = max(1.0, min(values) / 2), max(values) * 2
        left.plot([lo, hi], [lo, hi], color="#555555", linestyle="--")
        right.axvline(0, color="#555555", linestyle="--")
        left.set_xscale("log")
        left.set_yscale("log")
        right.set_xscale("symlog", linthresh=10)
        right.set_yscale("log")
    handles.append(Line2D([], [], color="#555555", linestyle="--",
                          label="prediction: queue = arrivals (left), excess 0 (right)"))
    left.set_xlabel("arrivals during the gap: probe rate x gap + ab clients")
    left.set_ylabel("queue: the kernel's backlog + 1")
    left.set_title("measured points against the prediction (overflows below the line)",
                   fontsize=10)
    right.set_xlabel("predicted excess: arrivals - queue")
    right.set_ylabel("longest wait in the switch window (s)")
    right.set_title("what an overflow costs: waits in SYN retransmits", fontsize=10)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def write_capacity(directory: Path, points: Sequence[Point], meta: dict[str, Any],
                   picture: bool = True) -> None:
    """capacity.json, capacity.md and (``picture``) capacity.png in ``directory``. The json
    holds each point's prediction and agreement beside its measurements, for a reader; the
    functions here recompute them from the measurements alone."""
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    enriched = [{**p, "prediction": prediction(p), "agreement": agreement(p)} for p in points]
    (directory / "capacity.json").write_text(
        json.dumps({"meta": meta, "points": enriched}, indent=2) + "\n")
    (directory / "capacity.md").write_text(markdown(points, meta))
    if not picture:
        return
    fig = figure(points)
    fig.savefig(directory / "capacity.png")
    plt.close(fig)

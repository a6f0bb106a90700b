"""The verdict of a run: ``verdict_of`` is the one judge.

The report (summary row: scenarios/record.py, stability table, matrix) writes its ``label``
and the integration test hands it to ``conclude`` (plugin/outcome.py), which turns it into
pytest's outcome. Nothing else decides whether a scenario passed. The checks it is made of are
pure functions in ``checks``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pytest_portable_upgrade.load.accounting import (
    Unanswered,
    expects_no_unanswered,
    unanswered_problems,
)
from pytest_portable_upgrade.load.latency import latency_report, stall_problems
from pytest_portable_upgrade.load.load import LoadOutcome
from pytest_portable_upgrade.scenarios.checks import (
    counter_consistent,
    counter_went_back,
    done_but_unanswered,
    enough_load,
    explain_losses,
    failed_requests,
    load_reached_new,
    load_reached_old,
    refused_problems,
    socket_dead,
    socket_untouched,
    switched_cleanly,
)
from pytest_portable_upgrade.scenarios.run import ScenarioRun
from pytest_portable_upgrade.systemd.portable import ATTACHED_STATES, Upgrade
from pytest_portable_upgrade.systemd.quirks import CHECKSUM_REFUSALS

# How a url-file download whose bytes do not match SHA256SUMS is refused: the exact words of
# systemd-pull, which differ between versions (vm/systemd/quirks.py CHECKSUM_REFUSALS).
# Anything else failing the rollout (an "Invalid argument", a 404) is not the refusal this
# scenario is about.
REFUSAL_REASON = re.compile("|".join(f"(?:{p})" for p in CHECKSUM_REFUSALS.values()))


PASS = "pass"
FAIL = "fail"
EXPECTED_LOSS = "expected-loss"  # a characterisation lost what it shows, in a valid run
DOWNTIME_SEEN = "downtime-seen"  # the negative control showed its downtime, in a valid run
REFUSED = "refused-as-expected"  # a tampered update was refused and the old version served on
VERDICT_KINDS = (PASS, FAIL, EXPECTED_LOSS, DOWNTIME_SEEN, REFUSED)
# What each kind of a valid run is called in the report.
LABELS = {PASS: "pass", EXPECTED_LOSS: "xfail: loss seen (expected)",
          DOWNTIME_SEEN: "downtime seen (expected)", REFUSED: "refused, old version served on"}


@dataclass(frozen=True)
class Verdict:
    """What a run showed, in its scenario's terms; the report and pytest both read only this.

    ``problems`` is every reason a FAIL failed (empty for every other kind); ``observed`` says
    in numbers what was lost (or refused) whatever the kind; ``short`` names a FAIL whose one
    reason is that the expected loss did not happen ("nothing lost", "no downtime").
    """

    kind: str
    problems: tuple[str, ...] = ()
    observed: str = ""
    short: str = ""

    def __post_init__(self) -> None:
        if self.kind not in VERDICT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(VERDICT_KINDS)}, not {self.kind!r}")
        if (self.kind == FAIL) != bool(self.problems):
            raise ValueError("a FAIL lists its problems, and only a FAIL has problems")

    @property
    def label(self) -> str:
        """The words of the report's verdict column; every FAIL starts with "FAIL"."""
        if self.kind == FAIL:
            return f"FAIL: {self.short}" if self.short else "FAIL"
        return LABELS[self.kind]

    def explain(self) -> str:
        lines = [self.label, *(f"- {p}" for p in self.problems)]
        if self.observed:
            lines.append(f"seen: {self.observed}")
        return "\n".join(lines)


def unanswered_of(run: ScenarioRun) -> Unanswered | None:
    """The done-but-unanswered figure of the run (None: the subject has no counter)."""
    return done_but_unanswered(run.outcome, run.count_before, run.final_count,
                               run.concurrency)


def expects_zero_unanswered(run: ScenarioRun) -> bool:
    """Whether the run's done-but-unanswered figure must be 0 (host socket, draining server,
    no proxy: ``expects_no_unanswered``); elsewhere it is a figure of the characterisation."""
    s = run.scenario
    return expects_no_unanswered(s.socket_location, s.shutdown, s.proxy)


def unanswered_check(run: ScenarioRun) -> list[str]:
    """The figure's problems: nonzero where 0 is expected, below 0 anywhere (the clients got
    answers the counter never counted), a counter that went back."""
    problems = counter_went_back(run.count_before, run.final_count)
    figure = unanswered_of(run)
    if figure is not None:
        problems += unanswered_problems(figure, expect_zero=expects_zero_unanswered(run))
    return problems


def losses_of(run: ScenarioRun) -> list[str]:
    """What the clients lost: failed requests (ab's, hey's, the probe's), broken long-lived
    connections, and (socket in the image) a port the reattach left dead. The loss a
    characterisation exists to show."""
    out = run.outcome
    losses = failed_requests(out)
    if run.scenario.socket_location == "image":
        losses += socket_dead(run.socket)
    h = out.holders
    if h is not None and (h.broken or h.server_closed or h.connect_errors):
        losses.append(f"long-lived connections were lost: {h.describe()}")
    if losses:
        # Not only how many: why, in words, with what to check (see explain_losses).
        losses += explain_losses(out, run.upgrade, keepalive=run.scenario.keepalive,
                                 proxy=run.scenario.proxy is not None,
                                 socket_in_image=run.scenario.socket_location == "image")
    return losses


def validity_problems(run: ScenarioRun) -> list[str]:
    """Every reason the run does not show what its scenario is about, apart from the loss.

    A run with any of these proves nothing either way, an expected loss included: a harness
    fault (the load never spanned the switch, too few requests, the counter went backwards,
    the wrong image attached) must not read as "loss seen (expected)".
    """
    s, out = run.scenario, run.outcome
    port_dead = s.socket_location == "image" and run.socket.state_after != "active"
    problems = [*load_reached_old(out, run.upgrade), *enough_load(out, run.min_complete)]
    if not (s.expect == "downtime" and port_dead):
        # A port the reattach left dead is the downtime the control shows: v2 cannot answer.
        problems += load_reached_new(out, run.upgrade, run.post_switch_s)
    problems += switched_cleanly(out)
    if s.socket_location == "host":
        # The host socket must outlive the reattach; one in the image is restarted by design.
        problems += socket_untouched(run.socket)
    if run.final_count is not None:  # only a subject with a counter has this check
        problems += counter_consistent(out, run.final_count)
    # Requests the server did whose answers no client got: 0 where the design allows none
    # (the whole run is then in doubt, not only a zero-downtime one); a figure elsewhere.
    problems += unanswered_check(run)
    if s.holders and (out.holders is None or out.holders.requests == 0):
        problems.append(f"the {s.holders} long-lived clients never sent a request")
    if not run.rollout_ok:
        problems.append(f"the rollout did not put v{s.to_version} in place: "
                        f"{run.upgrade.output[-600:]!r}")
    problems += attachment_problems(run, s.to_version)
    problems += profile_problems(run)
    problems += user_check_problems(run)
    return problems


def user_check_problems(run: ScenarioRun) -> list[str]:
    """The user's own checks (the spec's `checks`): each failure is a problem of the run."""
    return [f"user check failed: {line}" for line in run.user_check_failures]


def attachment_problems(run: ScenarioRun, version: int) -> list[str]:
    """Like systemd's TEST-29: the image is attached and the unit runs ``version``'s image
    (the path the run's scope gives it, or the layout's: the base, or the file picked from
    the versioned directory) with the extensions it should (the extension layout's)."""
    want = run.expected_image or run.scope.image_path(run.subject, version)
    problems = []
    if run.attached_state not in ATTACHED_STATES or run.attached_image != want:
        problems.append(f"afterwards portablectl says {run.attached_state!r} and the unit runs "
                        f"{run.attached_image!r}, not {want!r}")
    if run.attached_extensions != run.expected_extensions:
        problems.append(f"afterwards the unit runs the extensions "
                        f"{list(run.attached_extensions)}, not {list(run.expected_extensions)}")
    return problems


def profile_problems(run: ScenarioRun) -> list[str]:
    """The profile took effect: `trusted` runs as root, `default` as a dynamic user. A user's
    manager runs the service as that user (its profiles set no DynamicUser=)."""
    profile, user = run.profile, run.service_user
    if run.scope.user is not None:
        want = run.scope.user
        return [] if user == want else [f"{run.scope.name} scope: the service runs as {user!r}, "
                                        f"not {want!r}"]
    if profile == "trusted":
        return [] if user == "root" else [f"profile trusted: the service runs as {user!r}, "
                                          "not root"]
    problems = []
    if not run.dynamic_user:
        problems.append(f"profile {profile}: DynamicUser is not set")
    if user in ("", "root"):
        problems.append(f"profile {profile}: the service runs as {user!r}, not a dynamic user")
    return problems


def refusal_problems(run: ScenarioRun) -> list[str]:
    """A tampered update: refused for its checksum, the old version served on, nothing lost."""
    problems = [*load_reached_old(run.outcome, run.upgrade),
                *refused_problems(run.outcome, run.upgrade, run.socket, run.rollout_ok,
                                  run.min_complete)]
    if not run.rollout_ok and not REFUSAL_REASON.search(run.upgrade.output):
        problems.append("the rollout failed, but not with a checksum refusal: "
                        f"{run.upgrade.output[-600:]!r}")
    if run.final_count is not None:
        problems += counter_consistent(run.outcome, run.final_count)
    problems += unanswered_check(run)
    problems += attachment_problems(run, run.scenario.from_version)
    problems += profile_problems(run)
    problems += user_check_problems(run)
    return problems


def _stall(outcome: LoadOutcome, upgrade: Upgrade, max_stall_s: float | None) -> list[str]:
    """--max-stall, a bound of its own beside the verdict's checks (off when None)."""
    return stall_problems(latency_report(outcome.timeline, upgrade.started, outcome.stopped),
                          max_stall_s)


def verdict_of(run: ScenarioRun) -> Verdict:
    """The one judgement of a run: PASS, FAIL with every reason, or the expected result of a
    characterisation (loss seen), the negative control (downtime seen) or a tampered update
    (refused). An expected result needs a valid run: any other problem makes it a FAIL."""
    expect = run.scenario.expect
    observed = loss_summary(run)
    # --max-stall (off by default) bounds what a pass or a refusal may cost the clients; the
    # downtime control and the characterisations are about the loss, not the gap.
    stall = _stall(run.outcome, run.upgrade, run.max_stall_s)
    if expect == "refused":
        problems = refusal_problems(run) + stall
        if problems:
            return Verdict(FAIL, tuple(problems), observed)
        match = REFUSAL_REASON.search(run.upgrade.output)
        return Verdict(REFUSED, observed=f"{match.group(0) if match else ''} {observed}".strip())
    losses, problems = losses_of(run), validity_problems(run)
    if expect == "zero-downtime":
        problems += losses + stall
        h = run.outcome.holders
        if h is not None and h.switched_in_place != h.connections:
            # The fd store's promise: each connection is answered by v2 on the same socket.
            problems.append(f"only {h.switched_in_place} of {h.connections} long-lived "
                            f"connections switched versions in place: {h.describe()}")
        return Verdict(FAIL, tuple(problems), observed) if problems else Verdict(PASS,
                                                                                 observed=observed)
    if problems:
        return Verdict(FAIL, tuple(problems), observed)
    if not losses:
        short = "no downtime" if expect == "downtime" else "nothing lost"
        what = ("the negative control lost nothing: the suite's premise changed"
                if expect == "downtime" else "nothing was lost: the characterised loss is gone")
        return Verdict(FAIL, (what,), observed, short=short)
    return Verdict(DOWNTIME_SEEN if expect == "downtime" else EXPECTED_LOSS, observed=observed)


def loss_summary(run: ScenarioRun) -> str:
    ab, tl = run.outcome.ab, run.outcome.timeline
    holders = f"; holders: {run.outcome.holders.describe()}" if run.outcome.holders else ""
    hey = run.outcome.hey
    if hey is not None:
        second = f"; hey {hey.describe()}"
    elif run.scenario.keepalive and run.hey_not_run:
        second = f"; hey did not run: {run.hey_not_run}"
    else:
        second = ""
    figure = unanswered_of(run)
    unanswered = f"; {figure.describe()}" if figure is not None else ""
    method = f"; {run.outcome.method}" if run.outcome.method != "GET" else ""
    return (f"ab {ab.failed} failed of {ab.complete} (connect {ab.failed_connect}, receive "
            f"{ab.failed_receive}, length {ab.failed_length}, exceptions "
            f"{ab.failed_exceptions}), non-2xx {ab.non_2xx}{second}; probe errors "
            f"{tl.errors or 'none'}; socket after: {run.socket.state_after}{holders}{method}"
            f"{unanswered}")

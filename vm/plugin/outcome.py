"""A scenario test's outcome in pytest's terms: ``conclude`` turns the one judge's verdict
(scenarios/verdict.py ``verdict_of``) into pass, fail or xfail, ``VERDICT_KEY`` keeps it on the
test's item, and ``evidence_reason`` says whether the run's evidence is worth keeping."""

from __future__ import annotations

import pytest

from pytest_portable_upgrade.scenarios.verdict import EXPECTED_LOSS, FAIL, PASS, Verdict

# Where a scenario test's verdict is kept on its pytest item: the `clean_service` fixture
# reads it to save the evidence of every run that did not simply pass.
VERDICT_KEY = pytest.StashKey[Verdict]()


def evidence_reason(test_failed: bool, verdict: Verdict | None, always: bool) -> str | None:
    """Why a scenario test's journals, probe log and ab.out are worth keeping; None: they are
    not. Every run that did not simply pass keeps them: an expected loss is evidence too."""
    if verdict is not None and verdict.kind != PASS:
        return verdict.label
    if test_failed:  # a pass whose test broke later, or an error before any verdict
        return "test failed" if verdict is not None else "no verdict: the run broke off"
    if always:
        return "--artifacts-always"
    return None


def conclude(verdict: Verdict) -> None:
    """Turn a run's verdict into its test's outcome, the one way every scenario test does it:
    FAIL -> pytest.fail with every problem, an expected loss -> pytest.xfail with the numbers,
    anything else returns (the test passes)."""
    __tracebackhide__ = True
    if verdict.kind == FAIL:
        pytest.fail(verdict.explain(), pytrace=False)
    if verdict.kind == EXPECTED_LOSS:
        pytest.xfail(verdict.observed)

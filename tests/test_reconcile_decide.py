"""The at-most-once rule of ``decide()``, as a table: what any correct reconciler must answer.

A POST whose outcome is unknown may have created a paid job. From the job list, a unit
may adopt a job only when that job is the *only* unclaimed one in its window and no other
uncertain unit could own it; it may be sent again only when no unclaimed job could be
its own; anything else is ``unknown``. These tests hold the verdicts, not the mechanics
(how the window is computed or when the listing is taken), so that a rewrite of
:mod:`pipeline.engine.reconcile` keeps them or fails loudly.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.api.records import JobStatus, JobSummary
from pipeline.engine.reconcile import Decision, Uncertain, Verdict, decide, window_of

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SLACK = timedelta(seconds=60)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _job(job_id: str, created_s: float | None) -> JobSummary:
    created = None if created_s is None else _at(created_s)
    return JobSummary(job_id=job_id, status=JobStatus.QUEUED, created_at=created)


def _unit(key: str, intent_s: float) -> Uncertain:
    return Uncertain(key, _at(intent_s))


def _verdicts(decisions: list[Decision]) -> dict[str, tuple[Verdict, str | None]]:
    return {d.key: (d.verdict, d.job_id) for d in decisions}


def _check_invariants(uncertain: list[Uncertain], decisions: list[Decision], known: set[str]) -> None:
    """One decision per unit; a job is adopted at most once, never a claimed one; only ADOPT names a job."""
    assert sorted(d.key for d in decisions) == sorted(u.key for u in uncertain)
    adopted = Counter(d.job_id for d in decisions if d.verdict is Verdict.ADOPT)
    assert all(n == 1 for n in adopted.values()), adopted
    assert not set(adopted) & known
    assert all((d.job_id is not None) == (d.verdict is Verdict.ADOPT) for d in decisions)
    assert all(d.reason for d in decisions)


CASES = [
    pytest.param([_unit("a", 0)], [], set(), {"a": (Verdict.RESUBMIT, None)}, id="empty-list-resubmits"),
    pytest.param(
        [_unit("a", 0), _unit("b", 1)],
        [_job("mine-1", 0.5), _job("mine-2", 1.5)],
        {"mine-1", "mine-2"},
        {"a": (Verdict.RESUBMIT, None), "b": (Verdict.RESUBMIT, None)},
        id="only-claimed-jobs-resubmits-all",
    ),
    pytest.param(
        [_unit("a", 0)], [_job("j1", 0.4)], set(), {"a": (Verdict.ADOPT, "j1")}, id="one-unit-one-job-adopts"
    ),
    pytest.param(
        [_unit("a", 0)],
        [_job("mine", 0.2), _job("j1", 0.4)],
        {"mine"},
        {"a": (Verdict.ADOPT, "j1")},
        id="claimed-jobs-are-not-candidates",
    ),
    pytest.param(
        [_unit("a", 0)],
        [_job("j1", 0.4), _job("j2", 0.6)],
        set(),
        {"a": (Verdict.UNKNOWN, None)},
        id="two-candidates-unknown",
    ),
    pytest.param(
        [_unit("a", 0), _unit("b", 0.5)],
        [_job("j1", 0.4)],
        set(),
        {"a": (Verdict.UNKNOWN, None), "b": (Verdict.UNKNOWN, None)},
        id="two-units-near-one-job-unknown",
    ),
    pytest.param(
        [_unit("a", 0), _unit("b", 1000)],
        [_job("j1", 0.4), _job("j2", 1000.3)],
        set(),
        {"a": (Verdict.ADOPT, "j1"), "b": (Verdict.ADOPT, "j2")},
        id="isolated-units-adopt-their-own-job",
    ),
    pytest.param(
        [_unit("a", 0), _unit("b", 150)],
        [_job("j1", 0.4), _job("j2", 150.3)],
        set(),
        {"a": (Verdict.ADOPT, "j1"), "b": (Verdict.ADOPT, "j2")},
        id="units-whose-windows-do-not-meet-adopt-their-own-job",
    ),
    pytest.param(
        [_unit("a", 0), _unit("b", 1000)],
        [_job("j1", 0.4)],
        set(),
        {"a": (Verdict.ADOPT, "j1"), "b": (Verdict.RESUBMIT, None)},
        id="isolated-unit-without-a-job-resubmits",
    ),
    pytest.param(
        [_unit("a", 0), _unit("b", 1000)],
        [_job("j1", 0.4), _job("j2", 0.7), _job("j3", 1000.3)],
        set(),
        # Three unclaimed jobs for two POSTs: one is nobody's we know of (another client?), so the
        # matching cannot account for them and nothing is adopted (unknown is safe; adoption is not).
        {"a": (Verdict.UNKNOWN, None), "b": (Verdict.UNKNOWN, None)},
        id="more-jobs-than-posts-adopts-nothing",
    ),
    pytest.param(
        [_unit("a", 0), _unit("b", 0.5)],
        [_job("j1", None)],
        set(),
        {"a": (Verdict.UNKNOWN, None), "b": (Verdict.UNKNOWN, None)},
        id="job-without-createdAt-is-a-candidate-for-both",
    ),
]


@pytest.mark.parametrize(("uncertain", "listed", "known", "expected"), CASES)
def test_decide(
    uncertain: list[Uncertain],
    listed: list[JobSummary],
    known: set[str],
    expected: dict[str, tuple[Verdict, str | None]],
) -> None:
    decisions = decide(uncertain, listed, known, slack=SLACK)
    _check_invariants(uncertain, decisions, known)
    assert _verdicts(decisions) == expected


def test_a_job_without_created_at_is_never_a_reason_to_pay_again() -> None:
    """A listed job that cannot be placed in time could be ours: resubmitting could pay twice."""
    for uncertain in ([_unit("a", 0)], [_unit("a", 0), _unit("b", 30)]):
        decisions = decide(uncertain, [_job("j1", None)], set(), slack=SLACK)
        _check_invariants(uncertain, decisions, set())
        assert all(d.verdict is not Verdict.RESUBMIT for d in decisions)


def test_the_listing_window_covers_every_intent_and_now_with_slack() -> None:
    """Any job one of these POSTs created lies between the earliest intent (less clock skew) and now."""
    units = [_unit("b", 30), _unit("a", 0), _unit("c", 10)]
    start, end = window_of(units, _at(45), SLACK)
    assert start <= _at(0) - SLACK
    assert end >= _at(45)
    assert end - start <= timedelta(seconds=45) + 3 * SLACK  # and not the whole history
    late_start, late_end = window_of([_unit("a", 0)], _at(1), SLACK)
    assert late_start <= _at(0) - SLACK and late_end >= _at(1)
    _, stepped_back_end = window_of([_unit("a", 0)], _at(-30), SLACK)  # the wall clock stepped back
    assert stepped_back_end >= _at(0)


def test_a_lone_unit_does_not_adopt_a_job_far_outside_its_window() -> None:
    """A job created an hour after the intent is some other POST's, never this unit's."""
    decisions = decide([_unit("a", 0)], [_job("later", 3600)], set(), slack=SLACK)
    assert decisions[0].verdict is not Verdict.ADOPT


def test_a_job_without_created_at_is_not_adopted_twice() -> None:
    uncertain = [_unit("a", 0), _unit("b", 1000)]
    decisions = decide(uncertain, [_job("j1", None)], set(), slack=SLACK)
    _check_invariants(uncertain, decisions, set())

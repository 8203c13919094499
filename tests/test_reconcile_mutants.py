"""``decide()``'s edges, pinned where the mutation run found them loose: the exact reasons an operator
reads, the span boundaries, the learned-clock window, and matchings that need an augmenting path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.api.records import JobStatus, JobSummary
from pipeline.engine.reconcile import ROUNDING, Skew, Uncertain, Verdict, decide, window_of

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SLACK = timedelta(seconds=60)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _job(job_id: str, seconds: float) -> JobSummary:
    return JobSummary(job_id=job_id, status=JobStatus.QUEUED, created_at=_at(seconds))


def _post(key: str, seconds: float) -> Uncertain:
    return Uncertain(key, _at(seconds), _at(seconds))  # answered at once: span ±slack


def test_the_reasons_an_operator_reads() -> None:
    (nothing,) = decide([_post("a", 0)], [], set(), slack=SLACK)
    assert (nothing.verdict, nothing.reason) == (Verdict.RESUBMIT, "no job was created in its time span")
    two = [_job("j1", 1), _job("j2", 2)]
    unclear = decide([_post("a", 0), _post("b", 3)], two, set(), slack=SLACK)
    assert {d.reason for d in unclear} == {"2 unclaimed job(s) in its time span; cannot tell which is ours"}
    (too_many,) = decide([_post("a", 0)], two, set(), slack=SLACK)
    assert too_many.reason == "2 unclaimed job(s) in its time span; more than our submissions can account for"


def test_a_job_on_either_edge_of_the_span_is_inside() -> None:
    for edge in (-60, 60):
        (d,) = decide([_post("a", 0)], [_job("j", edge)], set(), slack=SLACK)
        assert (d.verdict, d.job_id) == (Verdict.ADOPT, "j"), edge


def test_the_window_narrows_to_the_learned_clock() -> None:
    skew = Skew(lo=timedelta(seconds=-2), hi=timedelta(seconds=3))
    start, end = window_of([Uncertain("a", _at(0), _at(10))], skew, SLACK)
    assert (start, end) == (_at(-2) - ROUNDING, _at(13) + ROUNDING)


def test_a_matching_that_needs_an_augmenting_path() -> None:
    """a may own j0 or j1, b only j0: the only way to explain both is a→j1, b→j0."""
    decisions = decide([_post("a", 0), _post("b", 100)], [_job("j0", 50), _job("j1", 0)], set(), slack=SLACK)
    assert {d.key: (d.verdict, d.job_id) for d in decisions} == {
        "a": (Verdict.ADOPT, "j1"),
        "b": (Verdict.ADOPT, "j0"),
    }


def test_a_chain_of_three_is_resolved_from_its_end() -> None:
    """a {j0, j1}, b {j1, j2}, c {j2}: c→j2 forces b→j1, which forces a→j0."""
    posts = [_post("a", 0), _post("b", 100), _post("c", 200)]
    jobs = [_job("j0", -30), _job("j1", 50), _job("j2", 150)]
    decisions = decide(posts, jobs, set(), slack=SLACK)
    assert {d.key: d.job_id for d in decisions} == {"a": "j0", "b": "j1", "c": "j2"}
    assert all(d.verdict is Verdict.ADOPT for d in decisions)


def test_the_matching_moves_a_job_along_an_augmenting_path() -> None:
    """Job 0 first goes to owner 0; job 1 only fits owner 0, so job 0 must move on to owner 1."""
    from pipeline.engine.reconcile import _explained

    assert _explained([[0, 1], [0]], 2, fixed=(99, None))
    assert not _explained([[0, 1], [0]], 3, fixed=(99, None))  # job 2 fits nobody

"""One-page sweeps: which slice of the job list a sweep reads, and when (pipeline/engine/sweep_plan.py).

Driven by hand on made-up clocks: the planner is a pure function of the watched jobs, what the list
showed and the durations learned. Whole runs on the list are in tests/test_sweep.py.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.api.records import JobStatus, JobSummary
from pipeline.engine.poller import DurationEstimator, PollPolicy
from pipeline.engine.sweep import JobSweep
from pipeline.engine.sweep_plan import PLAN_SAMPLES, PagePlanner, best_run
from tests.test_sweep import LIST_ALWAYS, _complete_run, _key, _sandbox  # noqa: F401 - _key: fixture

T0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
LOOK = {"image": 0.2}
POLICY = PollPolicy.fast()


def learned(low: float = 1.0, high: float = 3.0, n: int = 200) -> DurationEstimator:
    """An estimator that has seen ``n`` image jobs of durations spread evenly over [low, high]."""
    est = DurationEstimator(POLICY)
    for i in range(n):
        d = low + (high - low) * (i + 0.5) / n
        est.observe_between("image", d, d)
    return est


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def listed(sweep: JobSweep, jobs: dict[str, float], now: float, status: str = "running") -> None:
    """One listing, at monotonic ``now``, of ``jobs`` (id -> creation second) in ``status``."""
    window = sweep.page_window(list(jobs), pad_s=0.1) if all(j in sweep for j in jobs) else None
    assert window is not None
    page = [JobSummary(job_id=j, status=JobStatus.parse(status), created_at=at(c)) for j, c in jobs.items()]
    sweep.take(window, page, now, LOOK)


class TestBestRun:
    def test_the_heaviest_run_that_fits_a_page(self) -> None:
        assert best_run([0, 1, 0, 0, 5, 5, 0], 3) == (4, 6)
        assert best_run([3, 0, 0, 0, 1], 2) == (0, 1)  # trimmed of weightless ends
        i, j = best_run([0.0, 0.0], 5)
        assert i == j  # nothing worth reading

    def test_ties_go_to_the_oldest(self) -> None:
        assert best_run([1, 1, 1, 1], 2) == (0, 2)


class TestFinishedOdds:
    def test_odds_follow_the_learned_durations_given_the_job_was_seen_running(self) -> None:
        est = learned()
        assert est.finished_odds("image", 0.5, 1.0) == 0.0  # nothing is that quick
        assert est.finished_odds("image", 1.0, 2.0) == pytest.approx(0.5)
        assert est.finished_odds("image", 2.0, 2.5) == pytest.approx(0.5)  # half of what is left
        assert DurationEstimator(POLICY).finished_odds("image", 1.0, 2.0) is None  # nothing learned

    def test_a_job_older_than_all_but_a_few_seen_grows_by_a_sweep_interval(self) -> None:
        """Early in a run only the quickest jobs have finished: a job outliving them is not done."""
        est = learned(1.0, 1.2)
        interval = est.sweep_interval({"image"})
        assert est.finished_odds("image", 1.5, 1.5 + interval / 2) == pytest.approx(0.5)
        assert est.finished_odds("image", 1.5, 9.0) == 1.0


class TestPlanner:
    def test_no_plan_until_durations_and_a_page_size_are_known(self) -> None:
        sweep = JobSweep()
        sweep.add("j1", "k1", "image", sent=at(0), now=0.0, due=0.0)
        few = learned(n=PLAN_SAMPLES - 1)
        assert PagePlanner(sweep, few, PollPolicy.fast()).plan(2.0, 0.0, tail=False) is None
        unsized = PagePlanner(sweep, learned(), PollPolicy(list_page_size=None, min_interval_s=0.05))
        assert unsized.plan(2.0, 0.0, tail=False) is None
        assert PagePlanner(sweep, learned(), POLICY).plan(2.0, 0.0, tail=False) is not None

    def test_the_page_covers_the_jobs_likeliest_done_and_comes_when_enough_may_be(self) -> None:
        """Ten old jobs (2.5 s) and ten young ones (0.5 s), a page of ten: the old ones are read, as
        soon as the page is expected to show ``sweep_finds`` (3) of them finished."""
        sweep, est = JobSweep(), learned()
        old = {f"old{i}": i * 0.01 for i in range(10)}
        young = {f"young{i}": 2.0 + i * 0.01 for i in range(10)}
        for job_id, created in {**old, **young}.items():
            sweep.add(job_id, f"k-{job_id}", "image", sent=at(created), now=created, due=0.0)
        sweep.page_size = 10
        listed(sweep, old, 2.4)  # old ones seen running at 2.4 s (aged 2.4)
        listed(sweep, young, 2.4)
        planner = PagePlanner(sweep, est, dataclasses.replace(POLICY, sweep_finds=3.0))
        plan = planner.plan(2.4, 2.4, tail=False)
        assert plan is not None
        assert plan.window.expected == set(old) and plan.window.max_pages == 1
        # Job created at c: P(done at t | running at 2.4) = (t - 2.4) / (0.6 + c); 3 of ten at ~2.595.
        assert plan.at == pytest.approx(2.595, abs=0.005)
        later = PagePlanner(sweep, est, POLICY).plan(2.4, 2.4, tail=False)  # 3.75: at 2.61
        assert later is not None and later.at == pytest.approx(2.6, abs=0.001)  # a sweep interval on
        assert plan.window.end == at(0.09) + timedelta(milliseconds=1)  # tight: the list is newest first

    def test_the_tail_reads_the_last_jobs_at_its_own_pace(self) -> None:
        """One job left, nothing to submit: a page once a quarter of it may be done, not 3.75 jobs'
        worth (never), and not sooner than the tail's pace."""
        patient = dataclasses.replace(POLICY, sweep_fraction=0.5)  # whole-window sweeps 1 s apart
        sweep, est = JobSweep(), DurationEstimator(patient)
        for i in range(200):
            est.observe_between("image", 1 + (i + 0.5) / 100, 1 + (i + 0.5) / 100)
        sweep.add("last", "k", "image", sent=at(0), now=0.0, due=0.0)
        sweep.page_size = 10
        listed(sweep, {"last": 0.0}, 2.0)
        planner = PagePlanner(sweep, est, patient)
        plan = planner.plan(2.0, 2.0, tail=True)
        assert plan is not None
        assert plan.at == pytest.approx(2.25, abs=0.01)  # P(done by a | running at 2) = (a - 2) / 1
        plan = planner.plan(2.99, 2.99, tail=True)  # seen running at 2.0: long due, paced
        assert plan is not None
        assert plan.at == pytest.approx(2.99 + est.tail_interval({"image"}))


class TestTruncatedWindows:
    def test_a_slow_post_is_inside_its_page(self) -> None:
        """A job whose POST took longer than the pad (a busy machine) is inside the page planned for
        it: the window ends no sooner than the POST was answered, so a run's last job, which no
        later job's page brings in, is not left unseen until overdue."""
        sweep = JobSweep()
        sweep.add("quick", "k0", "image", sent=at(0), now=0.0, due=0.0, answered=at(0.01))
        listed(sweep, {"quick": 0.0}, 1.0)  # created as it was sent: the smallest skew is 0
        sweep.add("slow", "k1", "image", sent=at(1), now=1.0, due=0.0, answered=at(1.5))
        window = sweep.page_window(["slow"], pad_s=0.1)
        created = at(1.4)  # 0.4 s after it was sent, before its answer
        assert window.end is not None and window.start <= created <= window.end
        assert window.end <= at(1.5) + timedelta(milliseconds=1)  # and no later than that

    def test_jobs_a_one_page_window_did_not_reach_are_not_missed(self) -> None:
        sweep = JobSweep(max_misses=1, patience_s=0.0)
        for i in range(3):
            sweep.add(f"j{i}", f"k{i}", "image", sent=at(i), now=0.0, due=0.0)
        window = sweep.page_window(["j0", "j1", "j2"], pad_s=0.1)
        page = [JobSummary(job_id="j2", status=JobStatus.RUNNING, created_at=at(2))]
        sweep.take(window, page, 1.0, LOOK)
        window.floor = at(2)  # the page ended there, with a next one
        assert sweep.end(window, at(60), 1.0, LOOK) == []  # j0, j1 older: not reached
        assert "j0" in sweep and "j1" in sweep
        window.floor = None
        assert sorted(sweep.end(window, at(60), 1.0, LOOK)) == [("j0", "k0"), ("j1", "k1")]


def test_odds_predict_what_pages_show() -> None:
    """Jobs of U(1, 3) durations seen running at random ages: the odds summed over them match the
    number found finished a little later (the trigger is only as good as this)."""
    rng, est = random.Random(3), learned()
    predicted = found = 0.0
    for _ in range(8000):
        duration, seen = rng.uniform(1.0, 3.0), rng.uniform(0.0, 3.0)
        if duration <= seen:
            continue  # done before it was seen: not watched any more
        later = seen + 0.1
        predicted += est.finished_odds("image", seen, later) or 0.0
        found += duration <= later
    assert found == pytest.approx(predicted, rel=0.1)


class TestPageSizeAsked:
    async def test_a_refused_page_size_is_dropped_and_the_list_still_serves(self, tmp_path: Path) -> None:
        """``pageSize`` is inferred for the job list: a server refusing it (400) is asked without it."""
        async for sim in _sandbox():
            poll = dataclasses.replace(LIST_ALWAYS, list_page_size=5000)  # over the simulator's top
            got = await _complete_run(sim, tmp_path, 30, poll=poll)
            assert got["GET /api/jobs/{id}"] == 30  # the list did the waiting

    async def test_pages_smaller_than_the_jobs_in_flight(self, tmp_path: Path) -> None:
        """80 jobs, pages of 10 and no ``pageSize`` asked: the page size is learned, sweeps read one
        page each, and jobs a page did not reach are read later, never taken for missing."""
        poll = dataclasses.replace(LIST_ALWAYS, list_page_size=None)
        async for sim in _sandbox(job_list_page_size=10):
            got = await _complete_run(sim, tmp_path, 80, poll=poll)
            assert got["GET /api/jobs/{id}"] == 80


def test_the_odds_sum_a_plan_bisects_is_the_sum_of_each_jobs_odds() -> None:
    """odds_sum (worked out once per plan) gives what summing finished_odds job by job gives, and
    stopping at ``enough`` never changes whether the sum reaches it."""
    rng = random.Random(4)
    for _ in range(50):
        est = DurationEstimator(POLICY)
        for _ in range(rng.randint(5, 250)):
            est.observe_between("image", rng.uniform(0, 3), rng.uniform(1, 4))
        jobs = [(s, s + rng.uniform(0, 3)) for s in (rng.uniform(0, 100) for _ in range(rng.randint(1, 80)))]
        total = est.odds_sum("image", jobs)
        assert total is not None
        for _ in range(10):
            when, wanted = rng.uniform(0, 110), rng.uniform(0.5, 10)
            whole = sum(est.finished_odds("image", r - s, when - s) or 0.0 for s, r in jobs)
            assert total(when) == whole
            assert (total(when, wanted) >= wanted) == (whole >= wanted)
    assert DurationEstimator(POLICY).odds_sum("image", [(0.0, 1.0)]) is None  # nothing learned yet


def test_a_full_page_keeps_room_for_jobs_the_plan_cannot_count() -> None:
    """A window of exactly a page's worth of known jobs loses its oldest one, the likeliest to be
    waiting, when a job the plan cannot count (a POST in flight) is created inside it: the list pages
    newest first. The plan leaves room, and the oldest job stays on the page."""
    sweep, est = JobSweep(), learned()
    jobs = {f"j{i:03d}": i * 0.02 for i in range(120)}  # 2.4 s of submissions, oldest first
    for job_id, created in jobs.items():
        sweep.add(job_id, f"k-{job_id}", "image", sent=at(created), now=created, due=0.0)
    sweep.page_size = 100
    for chunk in (dict(list(jobs.items())[:60]), dict(list(jobs.items())[60:])):
        listed(sweep, chunk, 2.4)
    plan = PagePlanner(sweep, est, POLICY).plan(3.0, 2.4, tail=False)
    assert plan is not None and "j000" in plan.window.expected
    assert plan.window.end is not None
    inside = [j for j, c in jobs.items() if plan.window.start <= at(c) <= plan.window.end]
    assert len(inside) <= 100 - 4  # room for a few POSTs in flight: j000 stays on the page

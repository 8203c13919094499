"""Statuses from the job list: the sweep's bookkeeping, and whole runs that rely on it.

The unit tests drive :class:`~pipeline.engine.sweep.JobSweep` with listing pages by hand; the run
tests use the real client against the simulator on 127.0.0.1, including a list that is
missing, lags behind, or runs on a clock an hour off ours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.api.records import JobStatus, JobSummary
from pipeline.engine.poller import DurationEstimator, PollPolicy
from pipeline.engine.sweep import JobSweep
from pipeline.simulator import Sandbox, SimConfig
from tests.conftest import TEST_KEY
from tests.test_run import FAST, assert_outputs_verify, jobs_per_body, options, run, write_manifest
from tests.virtual_clock import VirtualClock

T0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
#: Sweep from the first job on, so that every job's status comes from the list.
LIST_ALWAYS = dataclasses.replace(FAST, sweep_min_jobs=1)


def item(job_id: str, status: str, created: datetime) -> JobSummary:
    return JobSummary(job_id=job_id, status=JobStatus.parse(status), created_at=created)


LOOK = {"image": 0.5, "upscale": 0.5, "video": 5.0}


def watch(
    sweep: JobSweep, job_id: str, *, sent: datetime = T0, kind: str = "image", due: float = 0.0
) -> None:
    sweep.add(job_id, f"k-{job_id}", kind, sent=sent, now=0.0, due=due)


class TestJobSweep:
    def test_window_starts_a_margin_before_the_first_send_until_the_server_clock_is_known(self) -> None:
        sweep = JobSweep(margin_s=30)
        assert sweep.windows(0.0) == []
        watch(sweep, "j1")
        (window,) = sweep.windows(0.0)
        assert (window.start, window.end, window.expected) == (T0 - timedelta(seconds=30), None, {"j1"})

    def test_server_skew_is_learned_from_the_listing(self) -> None:
        """The server runs an hour ahead: later jobs' windows sit an hour after our send time."""
        sweep = JobSweep(margin_s=30, settled_margin_s=2)
        watch(sweep, "j1")
        (w,) = sweep.windows(0.0)
        sweep.take(w, [item("j1", "running", T0 + timedelta(hours=1, seconds=0.2))], 1.0, LOOK)
        assert w.complete
        ms = timedelta(milliseconds=1)
        created = T0 + timedelta(hours=1, seconds=0.2)
        (w,) = sweep.windows(5.0)  # j1 is due again 0.5 s after it was seen running
        assert (w.start, w.end) == (created - ms, created + ms)  # its own creation time bounds it
        sweep.discard("j1")
        watch(sweep, "j2", sent=T0 + timedelta(seconds=5))
        (w,) = sweep.windows(5.0)
        guess = T0 + timedelta(hours=1, seconds=5.2)
        assert (w.start, w.end) == (guess - timedelta(seconds=2), guess + timedelta(seconds=2))

    def test_only_due_jobs_are_listed_and_far_apart_jobs_get_windows_of_their_own(self) -> None:
        """An old video among newer images: two small windows, not everything since the video."""
        sweep = JobSweep(gap_s=5)
        video, image = T0, T0 + timedelta(minutes=10)
        watch(sweep, "video", sent=video, kind="video")
        watch(sweep, "img1", sent=image)
        watch(sweep, "img2", sent=image + timedelta(seconds=1))
        watch(sweep, "img3", sent=image + timedelta(seconds=2), due=9.0)
        first = sweep.windows(0.0)
        page = [item("video", "running", video), item("img1", "running", image)]
        page.append(item("img2", "running", image + timedelta(seconds=1)))
        for w in first:
            sweep.take(w, page, 1.0, LOOK)
        windows = sweep.windows(2.0)  # the images are due again (0.5 s), the video not (5 s)
        assert [w.expected for w in windows] == [{"img1", "img2"}]
        windows = sweep.windows(9.0)
        assert [sorted(w.expected) for w in windows] == [["video"], ["img1", "img2", "img3"]]
        assert windows[0].end is not None and windows[0].end < windows[1].start
        assert sweep.next_due() == 1.5

    def test_finished_jobs_are_handed_back_once_with_when_they_were_last_running(self) -> None:
        sweep = JobSweep()
        watch(sweep, "j1")
        watch(sweep, "j2", kind="upscale")
        (w,) = sweep.windows(0.0)
        assert sweep.take(w, [item("j1", "queued", T0)], 1.0, LOOK) == []
        found = sweep.take(w, [item("j2", "success", T0), item("other", "success", T0)], 1.0, LOOK)
        assert [(f.job_id, f.key, f.kind, f.status) for f in found] == [
            ("j2", "k-j2", "upscale", JobStatus.SUCCESS)
        ]
        assert "j2" not in sweep and "j1" in sweep and len(sweep) == 1
        (w,) = sweep.windows(2.5)
        (failed,) = sweep.take(w, [item("j1", "FAILED", T0)], 2.5, LOOK)
        assert (failed.status, failed.running_at, failed.seen_at) == (JobStatus.FAILED, 1.0, 2.5)
        assert len(sweep) == 0

    def test_a_window_is_complete_only_when_every_expected_job_was_listed(self) -> None:
        sweep = JobSweep()
        for n in range(3):
            watch(sweep, f"j{n}")
        (w,) = sweep.windows(0.0)
        sweep.take(w, [item("j0", "running", T0), item("j2", "success", T0)], 1.0, LOOK)
        assert not w.complete
        sweep.take(w, [item("j1", "running", T0)], 1.0, LOOK)
        assert w.complete

    def test_a_job_the_list_overtook_twice_is_given_up_and_the_margin_widens(self) -> None:
        sweep = JobSweep(settled_margin_s=2, max_misses=2)
        watch(sweep, "old")
        watch(sweep, "new", sent=T0 + timedelta(seconds=1))
        for attempt in range(2):
            (w,) = sweep.windows(10.0 * (attempt + 1))
            sweep.take(w, [item("new", "running", T0 + timedelta(seconds=1))], 2.0, LOOK)
            given_up = sweep.end(w, T0 + timedelta(seconds=2), 2.0, LOOK)
            assert given_up == ([] if attempt == 0 else [("old", "k-old")])
        assert "old" not in sweep
        sweep.discard("new")
        watch(sweep, "later", sent=T0 + timedelta(seconds=10))
        (w,) = sweep.windows(float("inf"))
        assert w.start == T0 + timedelta(seconds=10 - 8)  # skew 0, margin 2 s -> 8 s

    def test_a_list_that_lags_a_little_is_not_a_miss(self) -> None:
        """Nothing later was listed and the job is young: wait for the list rather than give up."""
        sweep = JobSweep(max_misses=1, patience_s=10)
        watch(sweep, "j1")
        (w,) = sweep.windows(0.0)
        assert sweep.end(w, T0 + timedelta(seconds=3), 3.0, LOOK) == []
        assert sweep.next_due() == 3.5  # looked for again after the image interval
        (w,) = sweep.windows(4.0)
        assert sweep.end(w, T0 + timedelta(seconds=11), 11.0, LOOK) == [("j1", "k-j1")]

    def test_a_sweep_lists_one_page_per_window_oldest_jobs_first(self) -> None:
        """Pages of 3: of five running jobs (and a finished one among them, still listed), the two
        oldest go now, filling the page with the finished one; the rest within two sweeps."""
        sweep = JobSweep()
        at = [T0 + timedelta(seconds=n) for n in range(6)]
        for n in (0, 2, 3, 4, 5):
            watch(sweep, f"j{n}", sent=at[n])
        (w,) = sweep.windows(0.0)  # the server's clock is not known yet: no cut
        page = [item(f"j{n}", "running", at[n]) for n in (0, 2, 3, 4, 5)] + [item("gone", "success", at[1])]
        sweep.take(w, page, 1.0, LOOK)
        sweep.page_size = 3
        assert len(sweep.windows(2.0)[0].expected) == 5  # no age below which a job may wait
        (w,) = sweep.windows(2.0, {"image": 3.0})
        assert w.expected == {"j0", "j2"}  # j0, the finished job and j2 fill one page
        sweep.take(w, [item("j2", "running", at[2]), item("gone", "success", at[1])], 2.0, LOOK)
        sweep.take(w, [item("j0", "success", at[0])], 2.0, LOOK)
        (w,) = sweep.windows(2.1, {"image": 3.0})  # j3-j5 waited; now they fit a page of their own
        assert w.expected == {"j3", "j4", "j5"}
        (w,) = sweep.windows(3.0, {"image": 2.5})  # j2 is due again, but 3 s old: no longer young
        assert w.expected == {"j2", "j3", "j4", "j5"}

    def test_a_young_job_waits_at_most_two_sweeps_for_a_page(self) -> None:
        sweep = JobSweep()
        at = [T0 + timedelta(seconds=n) for n in range(3)]
        for n in range(3):
            watch(sweep, f"j{n}", sent=at[n])
        (w,) = sweep.windows(0.0)
        sweep.take(w, [item(f"j{n}", "running", at[n]) for n in range(3)], 0.0, {"image": 0.0})
        sweep.page_size = 2
        for _ in range(2):
            (w,) = sweep.windows(0.1, {"image": 3.0})
            assert w.expected == {"j0", "j1"}  # j2 would take a second page: it waits
        (w,) = sweep.windows(0.1, {"image": 3.0})
        assert w.expected == {"j0", "j1", "j2"}  # not a third time

    def test_drain_hands_back_every_job(self) -> None:
        sweep = JobSweep()
        watch(sweep, "j1")
        watch(sweep, "j2", kind="video")
        assert sorted(sweep.drain()) == [("j1", "k-j1"), ("j2", "k-j2")]
        assert len(sweep) == 0 and sweep.windows(float("inf")) == []


class TestSweepInterval:
    def test_interval_is_a_share_of_the_typical_duration_within_the_poll_bounds(self) -> None:
        est = DurationEstimator(PollPolicy(min_interval_s=1.0, max_interval_s=30.0, sweep_fraction=0.1))
        assert est.sweep_interval({"image"}) == pytest.approx(2.0)  # the 20 s guess for images
        assert est.sweep_interval({"video"}) == pytest.approx(6.0)
        assert est.sweep_interval({"image", "video"}) == pytest.approx(2.0)  # the quickest kind rules
        for seconds in (40.0, 50.0, 60.0, 70.0, 80.0):
            est.observe_between("image", seconds - 1, seconds)
        assert 5.5 <= est.sweep_interval({"image"}) <= 6.0
        assert 0.9 * 39 <= est.earliest("image") <= 0.9 * 40

    def test_overdue_is_patient_until_durations_are_known(self) -> None:
        est = DurationEstimator(PollPolicy(min_interval_s=1.0))
        assert est.overdue("image") == pytest.approx(200.0)  # 10x the 20 s guess
        for seconds in (40.0, 50.0, 60.0, 70.0, 80.0):
            est.observe_between("image", seconds, seconds)
        assert est.overdue("image") == pytest.approx(180.0)  # 3x the learned median

    def test_bounds_hold(self) -> None:
        est = DurationEstimator(PollPolicy(min_interval_s=1.0, max_interval_s=3.0))
        assert est.sweep_interval({"video"}) == 3.0
        with pytest.raises(ValueError, match="sweep_fraction"):
            PollPolicy(sweep_fraction=0)


# -- whole runs ----------------------------------------------------------------------------------


class SkewedClock(VirtualClock):
    """The simulator's wall clock, ``offset`` away from ours (``ours``: the run's clock)."""

    def __init__(self, offset: timedelta) -> None:
        super().__init__()
        self.offset = offset
        self.ours = _Unskewed(self)

    def now(self) -> datetime:
        return super().now() + self.offset


class _Unskewed:
    """The same virtual time as ``skewed``, its wall clock without the offset."""

    def __init__(self, skewed: SkewedClock) -> None:
        self._skewed = skewed

    def monotonic(self) -> float:
        return self._skewed.monotonic()

    def now(self) -> datetime:
        return self._skewed.now() - self._skewed.offset

    async def sleep(self, seconds: float) -> None:
        await self._skewed.sleep(seconds)

    async def wait_for(self, event: anyio.Event, seconds: float) -> bool:
        return await self._skewed.wait_for(event, seconds)


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTOGPT_API_KEY", TEST_KEY)
    monkeypatch.delenv("PHOTOGPT_API_KEY_FILE", raising=False)


async def _sandbox(clock: VirtualClock | None = None, **config: Any) -> AsyncIterator[Sandbox]:
    """A simulator on virtual time (:func:`tests.test_run.run` runs the pipeline on the same clock)."""
    cfg = SimConfig.profile("fast", keys=(TEST_KEY,), seed=5, image_s=(0.3, 0.9), **config)
    async with Sandbox(cfg, clock=clock or VirtualClock()) as sb:
        yield sb


def requests(sim: Sandbox) -> dict[str, int]:
    return dict(sim.stats()["requests"])


async def _complete_run(
    sim: Sandbox, tmp_path: Path, n: int, *, list_usable: bool = True, **opts: Any
) -> dict[str, int]:
    items = [{"id": f"sku-{i:03d}", "prompt": f"product photo {i}"} for i in range(n)]
    manifest = write_manifest(tmp_path, items)
    summary = await run(sim, manifest, tmp_path / "out", options=options(**{"poll": LIST_ALWAYS, **opts}))
    assert summary.exit_code == 0, summary.failures
    assert summary.counts["done"] == n
    assert len(assert_outputs_verify(tmp_path / "out")) == n
    assert sim.stats()["jobs_created"] == n and max(jobs_per_body(sim).values()) == 1
    if list_usable:
        assert summary.credits_spent == n  # 1 credit an image, as the job list reports it
    return requests(sim)


class TestRunsOnTheList:
    async def test_each_job_is_fetched_once_and_the_list_does_the_waiting(self, tmp_path: Path) -> None:
        async for sim in _sandbox():
            got = await _complete_run(sim, tmp_path, 60)
            assert got["GET /api/jobs/{id}"] == 60  # one read per job, for its outputs
            assert 1 <= got["GET /api/jobs"] < 60

    async def test_a_handful_of_jobs_is_polled_alone(self, tmp_path: Path) -> None:
        """Five jobs in flight (a cron run picking up a few new units): a sweep would cost more than
        the quantile schedule, so no job is looked for in the list."""
        async for sim in _sandbox():
            got = await _complete_run(sim, tmp_path, 5, poll=FAST)
            assert got.get("GET /api/jobs", 0) <= 1  # the closing pass that reads credits

    async def test_single_polls_when_asked(self, tmp_path: Path) -> None:
        async for sim in _sandbox():
            got = await _complete_run(sim, tmp_path, 20, poll_via="job")
            assert got.get("GET /api/jobs", 0) <= 1  # the closing pass that reads credits
            assert got["GET /api/jobs/{id}"] >= 20

    async def test_no_job_list_falls_back_to_single_polls(self, tmp_path: Path) -> None:
        """An API without ``GET /jobs`` (404): one failed listing, then every job is polled alone."""
        async for sim in _sandbox(job_list_available=False):
            got = await _complete_run(sim, tmp_path, 30, list_usable=False)
            assert got["GET /api/jobs"] <= 2
            assert got["GET /api/jobs/{id}"] >= 30

    async def test_a_list_that_lags_still_finishes_every_job(self, tmp_path: Path) -> None:
        async for sim in _sandbox(job_list_lag_s=0.5):
            got = await _complete_run(sim, tmp_path, 30)
            assert got["GET /api/jobs/{id}"] <= 45  # mostly one read per job: lag is not a miss

    @pytest.mark.parametrize("hours", [1, -1])
    async def test_a_server_clock_an_hour_off_ours(self, tmp_path: Path, hours: int) -> None:
        """Ahead: the skew is learned from the list. Behind: the window is refused, single polls."""
        async for sim in _sandbox(clock=SkewedClock(timedelta(hours=hours))):
            got = await _complete_run(sim, tmp_path, 30, list_usable=hours > 0)
            if hours > 0:
                assert got["GET /api/jobs/{id}"] == 30


class TestMixedDurations:
    async def test_a_long_job_among_many_quick_ones(self, tmp_path: Path) -> None:
        """One 5 s video started first, then 300 quick images: every job is read once, none twice paid."""
        config = {"video_s": (5.0, 5.0), "job_list_page_size": 5}
        async for sim in _sandbox(**config):
            items: list[dict[str, Any]] = [
                {"id": "film", "prompt": "a film", "video": {"prompt": "orbit"}},
                *({"id": f"sku-{i:03d}", "prompt": f"photo {i}"} for i in range(300)),
            ]
            opts = options(poll=LIST_ALWAYS)
            summary = await run(sim, write_manifest(tmp_path, items), tmp_path / "out", options=opts)
            assert summary.exit_code == 0, summary.failures
            got = requests(sim)
            assert got["GET /api/jobs/{id}"] == 302  # one read per job: the list did the waiting
            assert sim.stats()["jobs_created"] == 302 and max(jobs_per_body(sim).values()) == 1


class TestStaleList:
    async def test_a_list_that_never_shows_jobs_finished_is_noticed(self, tmp_path: Path) -> None:
        """The list shows every job running for 1,000 s after it finished: overdue jobs are asked about
        directly, three found finished mark the list stale, and the run finishes on single polls."""
        async for sim in _sandbox(job_list_status_lag_s=1000.0):
            with anyio.fail_after(60):
                got = await _complete_run(sim, tmp_path, 40, list_usable=False)
            assert got["GET /api/jobs/{id}"] >= 40

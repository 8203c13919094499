"""One page per sweep: which slice of the job list to read, and when.

A finished job holds its active-job slot until a listing shows it, so the next job waits about half
the time between two sweeps; a sweep costs one request per page. With 64 jobs in flight the window
over every job that may have finished spans more than one page (finished jobs stay listed), so a
sweep of the whole window costs two pages, and halving the time between sweeps doubles the
requests. Spending them better:

- **which page**: the list pages newest first, so a window ending at job *j* shows *j* and the
  jobs created just before it. Of every run of consecutive jobs one page holds, read the one where
  waiting slots are likeliest: each watched job weighs the chance that it has finished since it
  was last seen running (from the durations learned so far) times how long ago that was, so jobs
  left out grow heavier and are read soon after (none is left behind);
- **when**: as soon as that page is expected to show ``sweep_finds`` finished jobs. Each page then
  pays for about that many jobs, whatever the number in flight or their durations, and a finished
  job waits about ``sweep_finds`` / (2 × jobs finishing per second) to be seen;
- **the tail**: once no unit waits for a slot, the run's end waits on its last job alone: a page
  comes once a quarter of the jobs left may have finished, at most every ``tail_sweep_fraction``
  of the typical duration, so the last few are read at that pace.

Planning needs the page size (learned from a page that had a next one) and the durations of the
one kind of job in flight; until then, and for mixed kinds, the sweep lists whole windows
(:meth:`~pipeline.engine.sweep.JobSweep.windows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.engine.poller import DurationEstimator, OddsSum, PollPolicy
from pipeline.engine.sweep import JobSweep, Window

__all__ = ["PLAN_SAMPLES", "PagePlan", "PagePlanner", "best_run"]

#: How far after its guessed creation time a job not listed yet may have been created (our send
#: time plus the smallest skew seen: later jobs' requests may have taken a little longer).
_PAD_S = 0.1
#: In the tail, a page is worth reading once this share of the jobs left may have finished (never
#: more than ``sweep_finds``): only the last job's wait adds to the run, so while many are left a
#: page waits for several, and the last few are read at the tail's pace.
_TAIL_SHARE = 0.25
#: The share of a page a plan leaves to jobs it cannot count: POSTs still in flight, and jobs
#: created within the pad after the newest one chosen. The list pages newest first, so a plan that
#: filled the page would lose its oldest job, the likeliest to be waiting, off the page's end to
#: them: measured, a job unseen for 10.7 s, every full page of the window one job short of it.
_ROOM_SHARE = 1 / 12
#: Durations seen before a plan relies on them: the first to finish are the quickest of their
#: round, so a handful would place every job still running past "all seen" (as good as done).
PLAN_SAMPLES = 50


@dataclass(frozen=True, slots=True)
class PagePlan:
    """The page to read (``window``) and the monotonic time it is worth reading (``at``)."""

    window: Window
    at: float
    #: Finished jobs the page is expected to show now.
    finds: float


def best_run(weights: Sequence[float], size: int) -> tuple[int, int]:
    """``(i, j)``: the run ``weights[i:j]`` of at most ``size`` entries with the largest sum (the
    oldest on ties), trimmed of weightless entries at both ends."""
    best, best_i, best_j, total = -1.0, 0, 0, 0.0
    for j, weight in enumerate(weights):
        total += weight
        if j >= size:
            total -= weights[j - size]
        if total > best + 1e-12:
            best, best_i, best_j = total, max(0, j + 1 - size), j + 1
    i, j = best_i, best_j
    while i < j and weights[i] <= 0:
        i += 1
    while j > i and weights[j - 1] <= 0:
        j -= 1
    return i, j


class PagePlanner:
    """Plans one-page sweeps over a :class:`JobSweep` (see the module docstring)."""

    def __init__(self, sweep: JobSweep, estimator: DurationEstimator, policy: PollPolicy) -> None:
        self.sweep, self.estimator, self.policy = sweep, estimator, policy
        #: The page size the listings ask for (``pageSize``), if any: a page holds that many until
        #: a page with a next one shows otherwise.
        self.asked: int | None = policy.list_page_size

    def plan(self, now: float, last: float, *, tail: bool) -> PagePlan | None:
        """The next page to read, after a sweep at ``last``; ``None``: plan whole windows instead."""
        size, kinds = self.sweep.page_size or self.asked, self.sweep.kinds()
        if size is None or len(kinds) != 1:
            return None
        kind = next(iter(kinds))
        if self.estimator.learned(kind) < PLAN_SAMPLES:
            return None
        jobs: list[tuple[str, float, float] | None] = []  # (job id, submitted, last seen running)
        weights: list[float] = []
        # Weighed a little ahead: just after a sweep every job was seen running, and weighs nothing.
        slowest, soonest = self.estimator.sweep_interval(kinds), self.estimator.tail_interval(kinds)
        ahead = now + soonest
        for _, job_id in self.sweep.listed():
            watched = self.sweep.watched(job_id)
            if watched is None:
                jobs.append(None)
                weights.append(0.0)
                continue
            odds = self.estimator.finished_odds(kind, watched[2] - watched[1], ahead - watched[1])
            if odds is None:
                return None
            jobs.append((job_id, watched[1], watched[2]))
            weights.append(odds * (ahead - watched[2]))
        room = size - int(size * _ROOM_SHARE)
        i, j = best_run(weights, room)
        if j > i:
            # Younger jobs fill the rest of the page: seen running, their ends are learned right.
            j = min(len(weights), i + room)
        chosen = [job for job in jobs[i:j] if job is not None]
        if not chosen:
            return None
        window = self.sweep.page_window([job_id for job_id, _, _ in chosen], pad_s=_PAD_S)
        wanted = self.policy.sweep_finds
        if tail:
            wanted = min(wanted, _TAIL_SHARE * len(chosen))
        finds = self.estimator.odds_sum(kind, [(since, running) for _, since, running in chosen])
        if finds is None:
            return None
        # Never later than a whole-window sweep would come, nor sooner than the tail's pace.
        at = max(_when(finds, now, wanted, max(now, last + slowest)), last + soonest)
        return PagePlan(window, at, finds(now))


def _when(finds: OddsSum, now: float, wanted: float, latest: float) -> float:
    """The earliest time (to a few ms) the chosen jobs are expected to show ``wanted`` finished."""
    if finds(now, wanted) >= wanted:
        return now
    low, high = now, latest
    while high - low > 0.004:
        mid = (low + high) / 2
        if finds(mid, wanted) >= wanted:
            high = mid
        else:
            low = mid
    return high

"""One poller for many: the workers on one API key elect a sweeper, which lists the jobs in flight
of all of them and stores what it saw; the others read that instead of listing themselves.

Election is a leased row per key (:meth:`SharedLimits.lead_sweeps`): every worker runs
:class:`SharedSweeper`, which tries to take or renew the lease each tick and sweeps only while it
holds it. When the sweeper dies its lease lapses and the next worker to ask takes over; until then
:class:`SharedStatuses` answers None (no live sweeper) and each worker's watch lists its own jobs,
as a single run does. A job the sweeper cannot find in the list is given up on there (as in
:mod:`pipeline.engine.sweep`), and the worker that owns it polls it alone once it is overdue.

The sweeper learns durations from what it sees (running at one sweep, ended at the next), so it
lists as often as a single run's watch would: the requests stay those of one run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Mapping

import anyio
import structlog

from pipeline.api.client import ApiClient
from pipeline.api.records import JobPage, JobStatus, JobSummary
from pipeline.clock import Clock
from pipeline.engine.limits import RateLimiter
from pipeline.engine.options import RunOptions
from pipeline.engine.poller import DurationEstimator
from pipeline.engine.retry import retrying
from pipeline.engine.sweep import JobSweep, Window
from pipeline.errors import PipelineError
from pipeline.state.pglimits import SharedLimits, Swept

__all__ = ["SharedStatuses", "SharedSweeper"]

_log = structlog.get_logger("pipeline.engine.sharedsweep")


class SharedStatuses:
    """The status source of a cooperating worker: what the key's live sweeper stored."""

    shared = True

    def __init__(self, limits: SharedLimits, *, max_age_s: float) -> None:
        self._limits, self._max_age_s = limits, max_age_s
        self._wakes: list[Callable[[], None]] = []

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        self._wakes.append(wake)
        return lambda: self._wakes.remove(wake)

    def news(self) -> None:
        """The sweeper stored statuses (its NOTIFY): the watches read them now, not at their pace."""
        for wake in list(self._wakes):
            wake()

    async def seen(self, job_ids: Collection[str]) -> Mapping[str, JobSummary] | None:
        swept = await self._limits.swept(sorted(job_ids), max_age_s=self._max_age_s)
        if swept is None:
            return None
        return {
            j: JobSummary(
                job_id=j, status=JobStatus.parse(s.status), created_at=s.created_at, credits=s.credits
            )
            for j, s in swept.items()
        }


class SharedSweeper:
    """Sweeps the key's jobs in flight for every worker while this worker holds the sweeper lease."""

    def __init__(
        self, limits: SharedLimits, api: ApiClient, *, options: RunOptions, clock: Clock, lease_s: float
    ) -> None:
        self._limits, self._api, self._options, self._clock = limits, api, options, clock
        self.lease_s = lease_s
        self._limiter = RateLimiter(options.poll_rate, clock=clock)
        self._rng = random.Random(options.seed)
        self.estimator = DurationEstimator(options.poll)
        self._sweep = JobSweep()
        self._started: dict[str, float] = {}  # job id -> monotonic time it was submitted (about)
        self._ended: set[str] = set()  # seen ending, or given up on: not listed again
        self.leading = False
        self.sweeps = 0  #: listings this worker made as the sweeper

    async def loop(self) -> None:
        """Take or renew the lease each tick; sweep when a job falls due. Resigns when cancelled."""
        tick, last = min(0.5, self.lease_s / 4), -math.inf
        try:
            while True:
                leading = await self._limits.lead_sweeps(self.lease_s)
                if leading != self.leading:
                    _log.info("sweeper_elected" if leading else "sweeper_lost", holder=self._limits.holder)
                    self.leading = leading
                    self._forget()
                wait = tick
                if leading:
                    await self._refresh()
                    now = self._clock.monotonic()
                    interval = self.estimator.sweep_interval(self._sweep.kinds())
                    wake = max(self._sweep.next_due(), last + interval)
                    if wake <= now:
                        last = now
                        await self._sweep_once()
                    else:
                        wait = min(tick, wake - now)
                await self._clock.sleep(wait)
        finally:
            with anyio.CancelScope(shield=True):
                if self.leading:
                    await self._limits.resign_sweeps()

    def _forget(self) -> None:
        """A new term: what an earlier term watched may have changed hands meanwhile."""
        self._sweep = JobSweep()
        self._started.clear()
        self._ended.clear()

    async def _refresh(self) -> None:
        """Watch every job of the key in flight (any worker, any run); drop those that ended."""
        rows = await self._limits.in_flight()
        live = {r.job_id for r in rows}
        for job_id, _, _ in self._sweep.jobs():
            if job_id not in live:
                self._sweep.discard(job_id)
                self._started.pop(job_id, None)
        self._ended &= live
        wall, mono = self._clock.now(), self._clock.monotonic()
        for r in rows:
            if r.job_id in self._sweep or r.job_id in self._ended:
                continue
            sent = r.intent_at or wall
            at = mono - max(0.0, (wall - sent).total_seconds())
            self._started[r.job_id] = at
            due = at + self.estimator.earliest(r.step)
            self._sweep.add(r.job_id, r.job_id, r.step, sent=sent, now=mono, due=due)

    async def _sweep_once(self) -> None:
        """List the windows of the jobs due; store every watched job's status the list showed."""
        next_look = {k: self.estimator.sweep_interval({k}) for k in self._sweep.kinds()}
        soon = 0.5 * min(next_look.values(), default=0.0)
        seen: dict[str, Swept] = {}
        try:
            for window in self._sweep.windows(self._clock.monotonic() + soon):
                await self._list(window, next_look, seen)
                if not window.complete:
                    ends = self._sweep.end(window, self._clock.now(), self._clock.monotonic(), next_look)
                    self._ended.update(job_id for job_id, _ in ends)
                    if ends:  # their owners poll them alone once overdue
                        _log.info("shared_sweep_missed", jobs=len(ends))
        except PipelineError as exc:
            _log.warning("shared_sweep_failed", error=str(exc))  # the owners poll overdue jobs alone
        await self._limits.publish(seen)

    async def _list(self, window: Window, next_look: dict[str, float], seen: dict[str, Swept]) -> None:
        """Page through one window until every job expected in it was seen."""
        token, tokens = None, set[str]()
        while True:

            async def page_of(token: str | None = token) -> JobPage:
                await self._limiter.acquire()
                return await self._api.list_jobs(start=window.start, end=window.end, page_token=token)

            page = await retrying(page_of, policy=self._options.retry, clock=self._clock, rng=self._rng)
            self.sweeps += 1
            for job in page.jobs:
                if job.job_id in window.expected:
                    seen[job.job_id] = Swept(job.status.value, job.created_at, job.credits)
            for found in self._sweep.take(window, page.jobs, self._clock.monotonic(), next_look):
                self._ended.add(found.job_id)
                at = self._started.pop(found.job_id, found.running_at)
                self.estimator.observe_between(found.kind, found.running_at - at, found.seen_at - at)
            token = page.next_page_token
            if window.complete or token is None or token in tokens:
                return
            tokens.add(token)

"""The watch stage: learn when each running job ends, with as few requests as possible.

Two sources, one due-time per job:

- **sweeps**: pages of ``GET /jobs`` answer for dozens of running jobs at once
  (:mod:`pipeline.engine.sweep`); a job seen finished frees its active-job slot at once and is then
  read alone, once, for its outputs;
- **another worker's sweeps**: workers on one API key elect one to list for all
  (:mod:`pipeline.engine.statuses`); the others read what it saw instead of listing;
- **due-time polls**: ``GET /jobs/{id}`` for one job at the time its kind's learned durations say
  (:mod:`pipeline.engine.poller`): used for a handful of jobs, for jobs the list misses or shows
  stale, and for good once the list proves unusable.

Deadlines: a job running past its kind's deadline is left ``submitted`` for the next run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import anyio
import anyio.abc
import structlog

from pipeline.api.records import Job, JobPage, JobSummary
from pipeline.engine.budget import Budget
from pipeline.engine.context import RunContext, Started
from pipeline.engine.fetch import Fetch
from pipeline.engine.limits import RateLimiter
from pipeline.engine.poller import DueQueue, DurationEstimator
from pipeline.engine.reader import Reader
from pipeline.engine.retry import retrying
from pipeline.engine.sweep import JobSweep, Window
from pipeline.engine.sweep_plan import PagePlan, PagePlanner
from pipeline.engine.warmup import warm_gallery
from pipeline.errors import AuthError, PipelineError, RejectedError

__all__ = ["Watch"]

_log = structlog.get_logger("pipeline.engine.watch")


class Watch:
    """Owns the due-time queue and the sweep; its :class:`Reader` reads jobs, hands finished ones on."""

    def __init__(self, ctx: RunContext, fetch: Fetch, budget: Budget) -> None:
        self.ctx, self.fetch, self.budget = ctx, fetch, budget
        policy = ctx.options.poll
        self.limiter = RateLimiter(ctx.options.poll_rate, clock=ctx.clock)
        self.due: DueQueue[str] = DueQueue(ctx.clock)
        self.estimator = DurationEstimator(policy)
        self.sweep = JobSweep()
        self.planner = PagePlanner(self.sweep, self.estimator, policy)
        self.page_ask = self.planner.asked = policy.list_page_size  # pageSize sent with each listing
        self.sweeping = ctx.options.poll_via == "list"
        self.statuses = ctx.statuses
        self._added = anyio.Event()
        self._verifying: set[str] = set()  # overdue in the sweep: asked about directly once
        self._stale_seen = 0  # jobs the list showed running that had finished
        self._news = False  # a shared sweep stored statuses since the last read
        self.reader = Reader(
            ctx,
            fetch,
            limiter=self.limiter,
            due=self.due,
            estimator=self.estimator,
            checked=self._check_list_freshness,
        )

    # -- the inbox -------------------------------------------------------------------------------

    def track(self, key: str, job_id: str, sent: datetime) -> None:
        """A job this run just started: watch it from its kind's earliest likely end."""
        ctx, step = self.ctx, self.ctx.units[key].step
        now = ctx.clock.monotonic()
        ctx.started[key] = Started(now)
        if self.sweeping and (self.statuses.shared or ctx.active.in_use >= ctx.options.poll.sweep_min_jobs):
            due = now + self.estimator.earliest(step)
            self.sweep.add(job_id, key, step, sent=sent, now=now, due=due, answered=ctx.clock.now())
            self._added.set()
        else:
            self.due.push(key, now + self.estimator.first_delay(step))

    def look_now(self, key: str) -> None:
        """A job known from the state (resumed or adopted): ask about it at once."""
        now = self.ctx.clock.monotonic()
        self.ctx.started[key] = Started(now)
        self.due.push(key, now)

    # -- loops ------------------------------------------------------------------------------------

    async def poll_loop(self, tg: anyio.abc.TaskGroup) -> None:
        for _ in range(max(1, self.ctx.options.poll_concurrency)):
            tg.start_soon(self.reader.run)
        while not self.ctx.finished.is_set():
            for key in await self.due.pop_due(idle_s=0.5):
                self.reader.send(key)

    def close(self) -> None:
        self.reader.close()

    async def sweep_loop(self, tg: anyio.abc.TaskGroup) -> None:
        """List the jobs in flight as they fall due; read each one the list shows finished.

        Falls back to single polls for good when the list cannot be read three times running.
        News from a shared sweep (:mod:`pipeline.engine.statuses`) is read at once, for every job.
        """
        ctx, failures, last = self.ctx, 0, float("-inf")
        unsubscribe = self.statuses.subscribe(self._on_news)
        try:
            while not ctx.finished.is_set() and self.sweeping:
                now, news = ctx.clock.monotonic(), self._news
                wake, plan = self._next_sweep(now, last, news)
                if wake > now and not news:
                    self._added = anyio.Event()  # a new job may fall due sooner
                    await ctx.clock.wait_for(self._added, min(wake - now, 0.5))
                    continue
                last, self._news = now, False
                try:
                    await self._sweep_once(tg, everything=news, plan=plan)
                except AuthError:
                    raise
                except PipelineError as exc:
                    failures += 1
                    _log.warning("job_list_failed", error=str(exc), failures=failures)
                    if failures >= 3 or isinstance(exc, RejectedError):
                        self._stop_sweeping(str(exc))
                    continue
                failures = 0
                self._sweep_deadlines()
        finally:
            unsubscribe()

    def _next_sweep(self, now: float, last: float, news: bool) -> tuple[float, PagePlan | None]:
        """When to sweep next (the last one at ``last``), and the one page to read when planned."""
        if not self.ctx.queued:
            warm_gallery()  # only the last jobs are left to wait for: load the end's code now
        if not news and not self.statuses.shared:
            plan = self.planner.plan(now, last, tail=not self.ctx.queued)
            if plan is not None:
                return plan.at, plan  # one page, when it is worth reading (sweep_plan.py)
        # At most one sweep per interval of the quickest kind watched; each lists the jobs due.
        return max(self.sweep.next_due(), last + self.estimator.sweep_interval(self.sweep.kinds())), None

    def _on_news(self) -> None:
        self._news = True
        self._added.set()

    def _next_look(self) -> dict[str, float]:
        """Per kind: how long after seeing a job running to look at it again."""
        return {kind: self.estimator.sweep_interval({kind}) for kind in self.sweep.kinds()}

    async def _sweep_once(
        self, tg: anyio.abc.TaskGroup, *, everything: bool = False, plan: PagePlan | None = None
    ) -> None:
        ctx, next_look = self.ctx, self._next_look()
        if plan is not None:
            windows = [plan.window]
        else:
            # Jobs due within half an interval come along now rather than a whole interval late.
            soon = math.inf if everything else 0.5 * min(next_look.values(), default=0.0)
            young = {kind: self.estimator.typical(kind) for kind in next_look}
            windows = self.sweep.windows(ctx.clock.monotonic() + soon, young)
        shared = plan is None and await self._from_source(tg, windows, next_look)
        if everything and not shared:
            return  # news is a hint: with no sweeper left, the jobs due are listed in their time
        for window in windows:
            if not shared:
                await self._sweep_window(tg, window, next_look)
            if window.complete:
                continue
            # Missing twice from the list (or from what the sweeper saw), overtaken or sent long ago:
            # polled alone from now on.
            mono = ctx.clock.monotonic()
            for job_id, key in self.sweep.end(window, ctx.clock.now(), mono, next_look):
                _log.info("job_not_listed", unit=key, job_id=job_id)
                self.due.push(key, mono)

    async def _from_source(
        self, tg: anyio.abc.TaskGroup, windows: list[Window], next_look: dict[str, float]
    ) -> bool:
        """What another worker's sweep saw stands in for this sweep's listings (True), unless
        nobody sweeps for us now. Jobs it has not seen are missing, as from a listing."""
        expected = {job_id for window in windows for job_id in window.expected}
        if not expected or (seen := await self.statuses.seen(expected)) is None:
            return False
        for window in windows:
            self._take(tg, window, [seen[j] for j in sorted(window.expected) if j in seen], next_look)
        return True

    async def _sweep_window(
        self, tg: anyio.abc.TaskGroup, window: Window, next_look: dict[str, float]
    ) -> None:
        """Page through one window of the job list until every job expected in it was seen."""
        ctx, token, seen_tokens, pages = self.ctx, None, set[str](), 0
        while True:

            async def page_of(token: str | None = token) -> JobPage:
                await self.limiter.acquire()
                return await ctx.api.list_jobs(
                    start=window.start, end=window.end, page_token=token, page_size=self.page_ask
                )

            asked = ctx.clock.monotonic()
            try:
                page = await retrying(page_of, policy=ctx.options.retry, clock=ctx.clock, rng=ctx.rng)
            except RejectedError as exc:
                if self.page_ask is None or exc.status != 400:
                    raise
                _log.info("job_list_page_size_refused", page_size=self.page_ask)
                self.page_ask = self.planner.asked = None  # an inferred parameter: ask without it
                continue
            self._take(tg, window, page.jobs, next_look, asked)
            token, pages = page.next_page_token, pages + 1
            if token is not None and len(page.jobs) > (self.sweep.page_size or 0):
                self.sweep.page_size = len(page.jobs)  # a full page: how many one request shows
            if window.complete or token is None or token in seen_tokens:
                return
            if window.max_pages is not None and pages >= window.max_pages:
                listed = [job.created_at for job in page.jobs if job.created_at is not None]
                window.floor = min(listed) if listed else window.end
                return
            seen_tokens.add(token)

    def _take(
        self,
        tg: anyio.abc.TaskGroup,
        window: Window,
        jobs: Sequence[JobSummary],
        next_look: dict[str, float],
        asked: float | None = None,
    ) -> None:
        """Learn from listed jobs; read each finished one for its outputs."""
        ctx = self.ctx
        for job in jobs:
            ctx.posts.learn(job.job_id, job.created_at)  # the server's clock, for reconcile spans
        for found in self.sweep.take(window, jobs, ctx.clock.monotonic(), next_look, asked):
            ctx.drop_slot(found.key)  # finished on the server: its slot is free now
            self.budget.saw(found.job_id, found.credits)
            self.reader.send(found.key, found)

    def _sweep_deadlines(self) -> None:
        """Jobs past their deadline leave the sweep for one last poll, which settles them; jobs
        running far longer than their kind's typical duration are asked about directly (the
        list could be stale: :meth:`_check_list_freshness` counts it) and are polled alone from
        then on."""
        now = self.ctx.clock.monotonic()
        for job_id, key, kind in self.sweep.jobs():
            started = self.ctx.started.get(key)
            elapsed = now - (started.at if started else now)
            if elapsed > self.ctx.options.poll.deadline_s.get(kind, 900.0):
                self.sweep.discard(job_id)
                self.due.push(key, now)
            elif elapsed > self.estimator.overdue(kind):
                self.sweep.discard(job_id)
                self._verifying.add(key)
                self.due.push(key, now)

    def _check_list_freshness(self, key: str, job: Job) -> None:
        """An overdue job the list showed running, found finished: three of those and the list
        is taken for stale, and the run polls every job alone."""
        if key not in self._verifying:
            return
        self._verifying.discard(key)
        if self.statuses.shared:
            return  # what a shared sweep lags by is its pace, not the list's: poll such jobs alone
        if job.status.is_terminal and self.sweeping:
            self._stale_seen += 1
            _log.warning("job_list_stale", unit=key, job_id=job.job_id, seen=self._stale_seen)
            if self._stale_seen >= 3:
                self._stop_sweeping("the job list shows finished jobs as still running")

    def _stop_sweeping(self, reason: str) -> None:
        _log.warning("job_list_unusable", reason=reason, fallback="single polls")
        self.sweeping = False
        now = self.ctx.clock.monotonic()
        for _, key in self.sweep.drain():
            self.due.push(key, now)

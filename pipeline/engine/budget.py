"""``--budget``: what this run has committed to spend, so that no POST can take it past the limit.

Credits come from the job list (the API reports them per job) where it has answered, and from the
manifest's price table for jobs it has not priced yet and for POSTs under way (reservations), so
concurrent submit workers cannot overshoot together.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from pipeline.engine.context import RunContext
from pipeline.errors import ApiError
from pipeline.manifest.plan import price_of

__all__ = ["Budget"]

_log = structlog.get_logger("pipeline.engine.budget")


class Budget:
    """Credits seen, expected and reserved for one run; owns the loop that learns them."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.limit = ctx.options.budget
        self.credits_seen: dict[str, float] = {}  # job id -> credits the job list reports
        self.run_jobs: dict[str, str] = {}  # job id -> unit key, for jobs this run submitted
        self.reserved: set[str] = set()  # units past the budget check whose POST is under way

    def cost(self, key: str) -> float:
        """Estimated credits of a unit from the manifest's price table (0 when unpriced)."""
        unit = self.ctx.units[key]
        prices = self.ctx.options.prices
        price = price_of(unit, prices) if prices else None  # type: ignore[arg-type]
        return (price or 0.0) * max(1, unit.expected_outputs)

    def committed(self) -> float:
        """Credits the job list reports for this run's jobs, plus estimates for the rest and reservations."""
        unpriced = sum(self.cost(key) for job, key in self.run_jobs.items() if job not in self.credits_seen)
        reserved = sum(self.cost(key) for key in self.reserved)
        return sum(self.credits_seen.values()) + unpriced + reserved

    def allows(self, key: str) -> bool:
        """Whether sending ``key`` stays within ``--budget``."""
        return self.limit is None or self.committed() + self.cost(key) <= self.limit

    def reserve(self, key: str) -> None:
        self.reserved.add(key)

    def unreserve(self, key: str) -> None:
        self.reserved.discard(key)

    def job_started(self, job_id: str, key: str) -> None:
        self.run_jobs[job_id] = key
        self.reserved.discard(key)

    def saw(self, job_id: str, credits: float | None) -> None:
        """The job list reported ``credits`` for ``job_id``."""
        if credits is not None and job_id in self.run_jobs:
            self.credits_seen[job_id] = credits
            self.ctx.tally.credits_spent = sum(self.credits_seen.values())

    @property
    def spent(self) -> float | None:
        return sum(self.credits_seen.values()) if self.credits_seen else None

    async def loop(self, sweeping: Callable[[], bool]) -> None:
        """Learn what this run has spent from the job list, unless sweeps bring it along already."""
        ctx = self.ctx
        interval = max(1.0, ctx.options.poll.max_interval_s)
        since = ctx.clock.now() - timedelta(minutes=5)
        while not ctx.finished.is_set():
            await ctx.clock.sleep(interval)
            if not self.run_jobs or sweeping():
                continue  # sweeps of the job list bring each job's credits along
            await self._read_list(since)

    async def settle_up(self) -> None:
        """One pass over the job list at the end: what this run's jobs cost, as the API reports it."""
        if not self.run_jobs or self.credits_seen.keys() >= self.run_jobs.keys():
            return  # nothing run, or every job's cost came with a sweep
        ctx = self.ctx
        ran_s = ctx.clock.monotonic() - ctx.started_at
        await self._read_list(ctx.clock.now() - timedelta(seconds=ran_s + 300))

    async def _read_list(self, since: datetime) -> None:
        ctx = self.ctx
        try:
            async for job in ctx.api.iter_jobs(start=since, end=ctx.clock.now() + timedelta(minutes=5)):
                self.saw(job.job_id, job.credits)
        except ApiError as exc:
            _log.warning("credits_unknown", error=str(exc))

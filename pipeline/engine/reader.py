"""Single job reads for the watch stage: ``GET /jobs/{id}`` and what the answer means for its unit.

Reads, whether a due time or a sweep asked for them, queue on one memory stream for
``poll_concurrency`` reader tasks (the cap on reads in flight): cheaper than a task and a limiter
per read. A job still running goes back on the due-time queue; a finished one is recorded and, when
it succeeded, handed to :class:`~pipeline.engine.fetch.Fetch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio
import structlog

from pipeline.api.records import Job, JobStatus
from pipeline.engine.context import RunContext, Started
from pipeline.engine.fetch import Fetch
from pipeline.engine.limits import RateLimiter
from pipeline.engine.poller import DueQueue, DurationEstimator
from pipeline.engine.retry import retrying
from pipeline.engine.sweep import Found
from pipeline.errors import AuthError, NotFoundError, PipelineError
from pipeline.state.lifecycle import Ending, Event

__all__ = ["Reader"]

_log = structlog.get_logger("pipeline.engine.watch")  # reads are the watch stage's events

#: Units left (this one included) from which state changes are committed at once rather than
#: lingering for a commit to share (pipeline/state/sqlite_writer.py): none is coming any more.
_FEW_LEFT = 4


class Reader:
    """Reads queued jobs one at a time per reader task; ``checked`` sees each job read first."""

    def __init__(
        self,
        ctx: RunContext,
        fetch: Fetch,
        *,
        limiter: RateLimiter,
        due: DueQueue[str],
        estimator: DurationEstimator,
        checked: Callable[[str, Job], None],
    ) -> None:
        self.ctx, self.fetch, self.limiter = ctx, fetch, limiter
        self.due, self.estimator, self._checked = due, estimator, checked
        reads = anyio.create_memory_object_stream[tuple[str, Found | None]](max_buffer_size=math.inf)
        self._to_read, self._reads = reads

    def send(self, key: str, seen: Found | None = None) -> None:
        """Queue a read of ``key``'s job (``seen``: what a listing just showed of it)."""
        self._to_read.send_nowait((key, seen))

    async def run(self) -> None:
        """One reader task: reads queued jobs until :meth:`close`."""
        async for key, seen in self._reads:
            await self.poll_one(key, seen)

    def close(self) -> None:
        self._to_read.close()
        self._reads.close()

    async def poll_one(self, key: str, seen: Found | None = None) -> None:
        """Read one job and act on what it says (or look again later)."""
        ctx = self.ctx
        if seen is not None:
            job_id = seen.job_id  # the list just showed it: no state read for the id
        else:
            rec = ctx.store.get(key)
            if rec is None or not rec.job_id:
                return
            job_id = rec.job_id

        async def get() -> Job:
            await self.limiter.acquire()
            return await ctx.api.get_job(job_id)

        try:
            job = await retrying(get, policy=ctx.options.retry, clock=ctx.clock, rng=ctx.rng)
        except AuthError:
            raise
        except NotFoundError:
            ctx.drop_slot(key)
            await ctx.store.mark_unknown(key, f"job {job_id} is not found on the server")
            ctx.move(key, Event.VANISHED)
            ctx.settle(key, Ending.UNKNOWN)
            return
        except PipelineError as exc:
            _log.warning("poll_failed", unit=key, job_id=job_id, error=str(exc))
            self.due.push(key, ctx.clock.monotonic() + ctx.options.poll.max_interval_s)
            return
        ctx.posts.learn(job_id, job.created_at)  # the server's clock, for narrow reconcile spans
        started = ctx.started.setdefault(key, Started(ctx.clock.monotonic()))
        started.polls += 1
        self._checked(key, job)
        await self._on_job(key, job, started, seen)

    async def _on_job(self, key: str, job: Job, started: Started, seen: Found | None) -> None:
        ctx, unit = self.ctx, self.ctx.units[key]
        now = ctx.clock.monotonic()
        elapsed = now - started.at
        log = _log.bind(item=unit.item_id, unit=key, job_id=job.job_id)
        if job.status is JobStatus.SUCCESS:
            ctx.drop_slot(key)
            if seen is None:
                self.estimator.observe(unit.step, elapsed)
            else:
                self.estimator.observe_between(
                    unit.step, seen.running_at - started.at, seen.seen_at - started.at
                )
            outputs = [(o.id, o.url) for o in (*job.images, *job.videos)]
            if ctx.remaining <= _FEW_LEFT and (hurry := getattr(ctx.store, "hurry", None)) is not None:
                hurry()  # the run's end waits on these last units: their commits linger no more
            if not outputs:
                await self._failed(key, job.job_id, "the job succeeded without outputs")
                return
            await ctx.store.mark_succeeded(key, outputs)
            ctx.move(key, Event.JOB_SUCCEEDED)
            log.info("job_succeeded", outputs=len(outputs), polls=started.polls)
            # Just recorded, none downloaded yet: no state read for what to fetch.
            self.fetch.queue_outputs(key, set(range(1, len(outputs) + 1)))
        elif job.status is JobStatus.FAILED:
            ctx.drop_slot(key)
            await self._failed(key, job.job_id, job.error or "the job failed without a reason")
        elif elapsed > ctx.options.poll.deadline_s.get(unit.step, 900.0):
            ctx.drop_slot(key)
            ctx.settle(key, Ending.DEADLINE)
            log.warning("job_deadline", elapsed_s=round(elapsed, 1), status=job.status_raw)
        else:
            self.due.push(key, now + self.estimator.next_delay(unit.step, elapsed, started.polls))

    async def _failed(self, key: str, job_id: str, reason: str) -> None:
        await self.ctx.store.mark_failed(key, reason, "job_failed")
        self.ctx.move(key, Event.JOB_FAILED)
        self.ctx.settle(key, Ending.FAILED)
        _log.warning("job_failed", unit=key, item=self.ctx.units[key].item_id, job_id=job_id, reason=reason)

"""The submit stage: ready units → paid jobs, one durable step at a time.

For each unit a worker takes from the ready stream: build the request (uploads and trained models
filled in, the upstream's outputs for a chained step), check the budget, hold an active-job slot,
record the intent durably, POST, and record the job id durably before anything else. An answer that
proves nothing was created sends the unit back to ``pending``; one that cannot (timeout, reset, 5xx,
a garbled 2xx) leaves it ``submitting`` for the reconcile stage, which alone may decide it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import structlog

from pipeline.api.client import request_sent_at
from pipeline.crashpoints import crash_point
from pipeline.engine.budget import Budget
from pipeline.engine.context import RunContext, declared_model
from pipeline.engine.limits import RateLimiter
from pipeline.engine.outcome import SubmitOutcome, classify
from pipeline.engine.seeds import with_seed
from pipeline.errors import (
    ApiError,
    AuthError,
    ConfigError,
    PipelineError,
    RateLimitedError,
    RejectedError,
)
from pipeline.manifest.spec import thaw
from pipeline.state.lifecycle import Ending, Event
from pipeline.state.records import CAP_429_REASON

__all__ = ["Submit"]

_log = structlog.get_logger("pipeline.engine.submit")


class Submit:
    """Owns the submit workers, the submission rate limiter and the POSTs in flight."""

    def __init__(
        self,
        ctx: RunContext,
        budget: Budget,
        *,
        on_job: Callable[[str, str, datetime], None],
        on_uncertain: Callable[[str, datetime, datetime], None],
    ) -> None:
        self.ctx, self.budget = ctx, budget
        self.on_job, self.on_uncertain = on_job, on_uncertain
        # A store shared by several workers paces submissions for all of them (``--rate`` is a total).
        shared: RateLimiter | None = getattr(ctx.store, "submit_limiter", None)
        self.limiter = shared or RateLimiter(ctx.options.submit_rate, clock=ctx.clock)
        self.posts_in_flight = 0
        self._requeued: set[str] = set()
        #: Set when the preflight passed; ``None``: no check to wait for. No intent is written before.
        self.checked: anyio.Event | None = None

    async def worker(self) -> None:
        ctx = self.ctx
        async for key in ctx.ready_recv:
            try:
                if key in ctx.settled:
                    continue
                if ctx.stop_reason is not None:
                    ctx.settle(key, Ending.NOT_STARTED)
                    continue
                await self.submit_one(key)
            finally:
                if key in self._requeued:
                    self._requeued.discard(key)  # back in the stream: still queued
                else:
                    ctx.queued.discard(key)

    def _requeue(self, key: str) -> None:
        """Back into the ready stream from the worker that holds it (it leaves ``queued`` after)."""
        self.ctx.ready_send.send_nowait(key)
        self._requeued.add(key)

    async def submit_one(self, key: str) -> None:
        ctx, unit = self.ctx, self.ctx.units[key]
        try:
            body = await self.body(unit.key)
        except AuthError:
            raise
        except PipelineError as exc:
            await ctx.store.mark_failed(key, str(exc), "chain")
            ctx.move(key, Event.CHAIN_BROKEN)
            ctx.settle(key, Ending.FAILED)
            return
        await ctx.take_slot(key)
        job_id: str | None = None
        ticket: int | None = None
        intent_at = ctx.clock.now()
        try:
            if not await self._cleared(key):
                return
            intent_at = await self._intent(key, body)
            if ctx.stop.is_set():  # a signal came while the intent was written: nothing sent yet
                await self.back_to_pending(key, "the run stopped before sending it")
                ctx.settle(key, Ending.NOT_STARTED)
                return
            ticket = ctx.posts.begin(key, intent_at, ctx.clock.monotonic())
            job_id = await self._post(key, body)
            ctx.posts.answered(ticket, ctx.clock.now(), job_id, sent=request_sent_at())
            crash_point("after_post_before_record")
        except ApiError as exc:
            if ticket is not None:
                sent = request_sent_at()
                ctx.posts.answered(ticket, ctx.clock.now(), sent=sent)
                intent_at = sent if sent is not None and intent_at < sent else intent_at
            await self._not_accepted(key, exc, intent_at)
            return
        finally:
            if job_id is None:
                ctx.drop_slot(key)
                self.budget.unreserve(key)
                if ticket is not None:
                    ctx.posts.close(ticket, ctx.clock.monotonic())
        await self._accepted(key, job_id, intent_at, ticket)

    async def _cleared(self, key: str) -> bool:
        """Past the rate limiter: may ``key`` still go? (Not when stopping, over target or budget.)"""
        ctx = self.ctx
        if self.checked is not None:
            await self.checked.wait()
        await self.limiter.acquire()
        if ctx.stop_reason is not None:
            ctx.settle(key, Ending.NOT_STARTED)
            return False
        if ctx.active.release_if_over_target():
            # The target shrank while we waited: hand the slot back instead of earning a 429.
            ctx.holding.discard(key)
            self._requeue(key)
            return False
        if not self.budget.allows(key):
            ctx.stop_submitting("budget")
            ctx.settle(key, Ending.NOT_STARTED)
            return False
        self.budget.reserve(key)
        return True

    async def _intent(self, key: str, body: dict[str, Any]) -> datetime:
        """The intent to POST, durable before the request leaves (with the body, when the manifest's
        was filled in: uploads, trained models, upstream outputs; the sidecar records what was sent)."""
        if body != thaw(self.ctx.units[key].request):
            await self.ctx.store.put_resource("sent", key, body)
        await self.ctx.store.mark_submitting(key)
        self.ctx.move(key, Event.INTENT)
        crash_point("after_intent_commit")
        return self.ctx.clock.now()

    async def _post(self, key: str, body: dict[str, Any]) -> str:
        unit, api = self.ctx.units[key], self.ctx.api
        self.posts_in_flight += 1
        try:
            if unit.step == "upscale":
                ticket = await api.upscale_image(str(body["imageID"]))
            elif unit.step == "video":
                ticket = await api.generate_videos(body)
            else:
                ticket = await api.generate_images(body)
        finally:
            self.posts_in_flight -= 1
        return ticket.job_id

    async def _accepted(self, key: str, job_id: str, intent_at: datetime, ticket: int | None) -> None:
        """The job exists and costs money from here on: its id must be on disk whatever happens."""
        ctx = self.ctx
        with anyio.CancelScope(shield=True):
            await ctx.store.mark_submitted(key, job_id, ctx.clock.now())
        if ticket is not None:
            ctx.posts.close(ticket, ctx.clock.monotonic())
        ctx.move(key, Event.ACCEPTED)
        ctx.known_jobs.add(job_id)
        self.budget.job_started(job_id, key)
        ctx.active.on_accepted()
        self.on_job(key, job_id, intent_at)
        _log.info("job_submitted", item=ctx.units[key].item_id, unit=key, job_id=job_id)

    async def _not_accepted(self, key: str, exc: ApiError, intent_at: datetime) -> None:
        """Act on :func:`~pipeline.engine.outcome.classify`: resend only what provably created nothing."""
        ctx, log = self.ctx, _log.bind(item=self.ctx.units[key].item_id, unit=key)
        outcome = classify(exc)
        if outcome is SubmitOutcome.AUTH:
            raise exc
        if outcome is SubmitOutcome.RATE_LIMITED:
            await self._rate_limited(key, exc)
        elif outcome is SubmitOutcome.QUOTA:
            ctx.stop_submitting("quota")
            await self.back_to_pending(key, exc.message)
            ctx.settle(key, Ending.NOT_STARTED)
        elif outcome in (SubmitOutcome.CONFLICT, SubmitOutcome.NOT_SENT):
            await self.back_to_pending(key, exc.message if outcome is SubmitOutcome.CONFLICT else str(exc))
            self.limiter.defer(ctx.backoff(2 if outcome is SubmitOutcome.CONFLICT else 1))
            self._requeue(key)
        elif outcome is SubmitOutcome.REJECTED:
            log.warning("job_rejected", status=exc.status, reason=exc.message)
            await ctx.store.mark_failed(key, exc.message, "rejected")
            ctx.move(key, Event.INVALID)
            ctx.settle(key, Ending.FAILED)
        else:
            # The server may still create it after a silent failure: the span stays open a while.
            late = ctx.options.reconcile_slack_s if outcome is SubmitOutcome.UNCERTAIN_SILENT else 0.0
            log.warning("submission_uncertain", error=str(exc), answered=late == 0.0)
            ctx.move(key, Event.UNCERTAIN)
            self.on_uncertain(key, intent_at, ctx.clock.now() + timedelta(seconds=late))

    async def _rate_limited(self, key: str, exc: ApiError) -> None:
        """A 429 created nothing: slow down, learn the cap when the rate does not explain it, resend."""
        ctx = self.ctx
        retry_after = exc.retry_after_s if isinstance(exc, RateLimitedError) else None
        ctx.tally.rate_limited += 1
        cap_refused = not ctx.pacer.explains_429()  # the job cap's doing, not the request rate's
        if cap_refused:
            ctx.active.on_rate_limited()
        self.limiter.defer(retry_after if retry_after is not None else ctx.backoff(1))
        _log.info("rate_limited", unit=key, retry_after_s=retry_after, target=ctx.active.target)
        # A shared store learns the job cap from this reason and teaches it to every worker.
        await self.back_to_pending(key, CAP_429_REASON if cap_refused else "429 rate limited")
        self._requeue(key)

    async def back_to_pending(self, key: str, reason: str) -> None:
        """The answer proves nothing was created: ``key`` may be sent again."""
        with anyio.CancelScope(shield=True):
            await self.ctx.store.mark_pending(key, reason)
        self.ctx.move(key, Event.REFUSED)

    async def body(self, key: str) -> dict[str, Any]:
        """The request to send: the manifest's, with uploads and trained models filled in, plus
        what the upstream unit produced."""
        ctx, unit = self.ctx, self.ctx.units[key]
        body: dict[str, Any] = with_seed(thaw(unit.request), unit.step, ctx.options.seeds.get(unit.key))
        local_files = getattr(unit, "local_files", ())
        if local_files or declared_model(unit):
            if ctx.provisioner is None:
                raise ConfigError(f"{unit.item_id}: local files and declared models need provisioning")
            body = await ctx.provisioner.fill(body, local_files)
        if not unit.upstream:
            return body
        up = ctx.store.get(unit.upstream)
        if up is None or not up.outputs:
            raise RejectedError(f"upstream {unit.upstream} has no outputs", endpoint="(chain)")
        n = 1 if ctx.unit(unit.upstream).expected_outputs <= 1 else unit.index
        source = up.outputs[min(n, len(up.outputs)) - 1]
        if unit.step == "upscale":
            body["imageID"] = source.asset_id
        elif unit.step == "video":
            refs = [r for r in body.get("referenceImages", []) if r.get("role") != "first_frame"]
            body["referenceImages"] = [{"url": source.url, "role": "first_frame"}, *refs]
        return body

"""The reconcile stage: decide uncertain submissions from the job list, at most once.

A POST whose answer was lost (timeout, reset, 5xx) may or may not have created a paid job. This
stage reads the job list around its intent and applies :func:`pipeline.engine.reconcile.decide`:
nothing there → send again; exactly one unclaimed job → adopt it; anything else → ``unknown``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import anyio
import structlog

from pipeline.engine.context import RunContext
from pipeline.engine.reconcile import Uncertain, Verdict, decide, window_of
from pipeline.errors import ApiError
from pipeline.state.lifecycle import Ending, Event

__all__ = ["Reconciler"]

_log = structlog.get_logger("pipeline.engine.reconciler")


class Reconciler:
    """Owns the uncertain submissions and the loop that settles them."""

    def __init__(
        self,
        ctx: RunContext,
        *,
        posts_in_flight: Callable[[], int],
        adopt: Callable[[str], None],
    ) -> None:
        self.ctx = ctx
        self.posts_in_flight, self.adopt = posts_in_flight, adopt
        self.uncertain: list[Uncertain] = []
        self._jobs_loaded = False

    def add(self, key: str, intent_at: datetime) -> None:
        """The inbox: ``key``'s POST may or may not have created a job."""
        self.uncertain.append(Uncertain(key, intent_at))

    async def loop(self) -> None:
        """Reconcile uncertain submissions whenever no POST of ours is in flight."""
        ctx = self.ctx
        while not ctx.finished.is_set():
            await ctx.clock.sleep(0.5)
            if self.uncertain and self.posts_in_flight() == 0:
                batch, self.uncertain = self.uncertain, []
                await self.reconcile(batch, final=ctx.stop_reason is not None)

    async def reconcile(self, uncertain: list[Uncertain], *, final: bool) -> None:
        """Settle ``uncertain`` from the job list (see :mod:`pipeline.engine.reconcile`)."""
        if not uncertain:
            return
        ctx = self.ctx
        if not self._jobs_loaded:  # read when first needed: a million done units have a million ids
            ctx.known_jobs.update(ctx.store.job_ids())
            self._jobs_loaded = True
        slack = timedelta(seconds=ctx.options.reconcile_slack_s)
        start, end = window_of(uncertain, ctx.clock.now(), slack)
        if await self._others_posting(uncertain):
            self.uncertain.extend(uncertain)  # another worker's POST is in flight: decide when it is not
            return
        try:
            listed = [j async for j in ctx.api.iter_jobs(start=start, end=end + slack)]
            ctx.known_jobs.update(ctx.store.job_ids())  # jobs other workers recorded meanwhile
        except ApiError as exc:
            _log.warning("reconcile_failed", error=str(exc))
            for u in uncertain:
                await self._unknown(u.key, f"could not read the job list: {exc}")
            return
        for decision in decide(uncertain, listed, ctx.known_jobs, slack=slack):
            log = _log.bind(unit=decision.key, item=ctx.units[decision.key].item_id)
            if decision.verdict is Verdict.RESUBMIT:
                with anyio.CancelScope(shield=True):
                    await ctx.store.mark_pending(decision.key, decision.reason)
                ctx.move(decision.key, Event.NOTHING_CREATED)
                if final:
                    ctx.settle(decision.key, Ending.NOT_STARTED)
                else:
                    ctx.enqueue(decision.key)
                    log.info("submission_resent", reason=decision.reason)
            elif decision.verdict is Verdict.ADOPT and decision.job_id:
                with anyio.CancelScope(shield=True):
                    await ctx.store.mark_submitted(decision.key, decision.job_id, ctx.clock.now())
                ctx.move(decision.key, Event.ADOPTED)
                ctx.known_jobs.add(decision.job_id)
                self.adopt(decision.key)
                log.info("job_adopted", job_id=decision.job_id)
            else:
                await self._unknown(decision.key, decision.reason)
                log.warning("submission_unknown", reason=decision.reason)

    async def _others_posting(self, uncertain: list[Uncertain]) -> bool:
        """With workers sharing the run, a job another one created may be listed before its id is
        recorded: never decide while one of their POSTs is in flight (a shared store says)."""
        others = getattr(self.ctx.store, "others_submitting", None)
        return others is not None and bool(await others([u.key for u in uncertain]))

    async def _unknown(self, key: str, reason: str) -> None:
        await self.ctx.store.mark_unknown(key, reason)
        self.ctx.move(key, Event.AMBIGUOUS)
        self.ctx.settle(key, Ending.UNKNOWN)

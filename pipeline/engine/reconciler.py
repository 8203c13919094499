"""The reconcile stage: decide uncertain submissions from the job list, at most once.

A POST whose answer was lost (timeout, reset, 5xx) may or may not have created a paid job. This
stage lists the jobs created in its span (as narrow as the learned server clock allows) and, once
every POST begun before that listing ended is recorded (:class:`~pipeline.engine.inflight.PostLog`),
applies :func:`pipeline.engine.reconcile.decide`: nothing there → send again; a job that is the unit's
in every way the unclaimed jobs can be assigned → adopt it; anything else → ``unknown``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import anyio
import structlog

from pipeline.api.records import JobSummary
from pipeline.engine.context import RunContext
from pipeline.engine.reconcile import Decision, Skew, Uncertain, Verdict, decide, span_of, window_of
from pipeline.errors import ApiError
from pipeline.state.lifecycle import Ending, Event

__all__ = ["Reconciler"]

_log = structlog.get_logger("pipeline.engine.reconciler")


class Reconciler:
    """Owns the loop that settles uncertain submissions (they wait in the context's PostLog)."""

    def __init__(self, ctx: RunContext, *, adopt: Callable[[str], None]) -> None:
        self.ctx, self.adopt = ctx, adopt
        self.deciding = 0  # uncertain POSTs taken from the log and not decided yet
        self._jobs_loaded = False

    def add(self, key: str, intent_at: datetime, until: datetime) -> None:
        """The inbox: ``key``'s POST may have created a job between ``intent_at`` and ``until``."""
        self.ctx.posts.waiting.append(Uncertain(key, intent_at, until))

    async def loop(self) -> None:
        """Reconcile each uncertain submission as soon as its job would be listed."""
        ctx = self.ctx
        settle = timedelta(seconds=ctx.options.reconcile_settle_s)
        while not ctx.finished.is_set():
            await ctx.clock.sleep(0.25)
            patience = timedelta(0) if ctx.stopping() else timedelta(seconds=ctx.options.reconcile_slack_s)
            batch = ctx.posts.take_ready(ctx.clock.now(), settle, patience)
            if batch:
                self.deciding += len(batch)
                try:
                    await self.reconcile(batch, final=ctx.stop_reason is not None)
                finally:
                    self.deciding -= len(batch)

    async def reconcile(self, uncertain: list[Uncertain], *, final: bool) -> None:
        """Settle ``uncertain`` from the job list, read at once but decided on only when every POST
        begun before it ended is recorded (their jobs are then claimed)."""
        if not uncertain:
            return
        ctx = self.ctx
        if not self._jobs_loaded:  # read when first needed: a million done units have a million ids
            ctx.known_jobs.update(ctx.store.job_ids())
            self._jobs_loaded = True
        if await self._others_posting(uncertain):
            ctx.posts.waiting.extend(uncertain)  # another worker's POST is in flight: decide later
            return
        slack = timedelta(seconds=ctx.options.reconcile_slack_s)
        listed_with = ctx.posts.skew()
        dated_only = listed_with is not None and not ctx.posts.server.from_jobs
        try:
            listed = await self._list(uncertain, slack, wide=dated_only)
            ctx.known_jobs.update(ctx.store.job_ids())  # jobs other workers recorded meanwhile
        except ApiError as exc:
            _log.warning("reconcile_failed", error=str(exc))
            for u in uncertain:
                await self._unknown(u.key, f"could not read the job list: {exc}")
            ctx.posts.unknown.extend(uncertain)
            return
        listed_at, answered = ctx.clock.monotonic(), ctx.clock.now()
        for job in listed:
            ctx.posts.learn(job.job_id, job.created_at)
            if job.created_at is not None:  # anyone's job: created before the listing answered
                ctx.posts.server.job_listed(job.created_at, answered)
        if open_posts := ctx.posts.open_before(listed_at):
            _log.info("reconcile_waits", units=len(uncertain), posts=open_posts)
            await ctx.posts.wait_closed(listed_at)
        rivals = [*ctx.posts.waiting, *ctx.posts.unknown]
        skew = ctx.posts.skew()
        if dated_only and not _within(skew, listed_with):
            ctx.posts.waiting.extend(uncertain)  # the Date bound proved wrong: list again, by createdAt
            return
        decisions = decide(uncertain, listed, ctx.known_jobs, slack=slack, skew=skew, rivals=rivals)
        if dated_only and not ctx.posts.server.from_jobs:
            wide = decide(uncertain, listed, ctx.known_jobs, slack=slack, skew=None, rivals=rivals)
            decisions = [_resend_if_both(d, w) for d, w in zip(decisions, wide, strict=True)]
        now = ctx.clock.now()
        # Before our jobs show the server's clock, a resend's job lands in the ±slack span of every
        # POST not decided yet and may leave them all ambiguous (unknown) if its reply is lost too:
        # resend once they are decided, together (a job of ours among the resends shows the clock).
        hold = not final and not ctx.posts.server.from_jobs and ctx.posts.undecided()
        for u, decision in zip(uncertain, decisions, strict=True):
            if decision.verdict is Verdict.RESUBMIT and hold:
                ctx.posts.again(u, now + timedelta(seconds=0.25), ambiguous=False)
                continue
            if decision.verdict is Verdict.UNKNOWN:
                if self._ask_again(u, final=final, now=now, skew_known=ctx.posts.server.from_jobs):
                    continue
                ctx.posts.unknown.append(u)
            await self._apply(decision, final=final)

    def _ask_again(self, u: Uncertain, *, final: bool, now: datetime, skew_known: bool) -> bool:
        """An ambiguity found with ``±slack`` spans (or ``Date`` bounds) may clear once our jobs teach
        the server's clock (a poll of any job does): ask again a little later, for up to
        ``reconcile_slack_s``."""
        give_up = (u.until or u.intent_at) + timedelta(seconds=self.ctx.options.reconcile_slack_s)
        if final or skew_known or now >= give_up:
            return False
        self.ctx.posts.again(u, now + timedelta(seconds=1))
        return True

    async def _list(self, uncertain: list[Uncertain], slack: timedelta, *, wide: bool) -> list[JobSummary]:
        """The jobs in the batch's window; ``wide`` (the server's clock bounded by ``Date`` alone):
        also those of the ``±slack`` window, which a resend must find empty too (:func:`_resend_if_both`)."""
        skew = self.ctx.posts.skew()
        windows = [self._listing_window(uncertain, slack, skew)]
        if wide:
            (s1, e1), (s2, e2) = windows[0], self._listing_window(uncertain, slack, None)
            windows = [(min(s1, s2), max(e1, e2))] if s1 <= e2 and s2 <= e1 else [(s1, e1), (s2, e2)]
        jobs: dict[str, JobSummary] = {}
        for start, end in windows:
            async for job in self.ctx.api.iter_jobs(start=start, end=end):
                jobs[job.job_id] = job
        return list(jobs.values())

    def _listing_window(
        self, uncertain: list[Uncertain], slack: timedelta, skew: Skew | None
    ) -> tuple[datetime, datetime]:
        """The batch's spans, and those of the other uncertain POSTs that overlap them: their jobs,
        listed too, tell the matching which job is whose (:func:`~pipeline.engine.reconcile.decide`)."""
        posts = self.ctx.posts
        start, end = window_of(uncertain, skew, slack)
        rivals = [*posts.waiting, *posts.unknown]
        near = [r for r in rivals if (s := span_of(r, skew, slack))[0] <= end and s[1] >= start]
        return window_of([*uncertain, *near], skew, slack)

    async def _apply(self, decision: Decision, *, final: bool) -> None:
        ctx = self.ctx
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
        recorded: never decide while one of their POSTs is in flight (a shared store says), nor one
        of this worker's other batch (cooperate.py takes units over while a batch is working)."""
        others = getattr(self.ctx.store, "others_submitting", None)
        if others is None:
            return False
        return bool(await others([u.key for u in uncertain], batch=list(self.ctx.units)))

    async def _unknown(self, key: str, reason: str) -> None:
        await self.ctx.store.mark_unknown(key, reason)
        self.ctx.move(key, Event.AMBIGUOUS)
        self.ctx.settle(key, Ending.UNKNOWN)


def _resend_if_both(dated: Decision, wide: Decision) -> Decision:
    """While only ``Date`` headers bound the server's clock, "nothing was created" must hold in the
    ``±slack`` span too: a ``Date`` on another clock than ``createdAt`` must not make us pay twice.
    Otherwise the unit is ambiguous (asked again until our jobs show the clock)."""
    if dated.verdict is not Verdict.RESUBMIT or wide.verdict is Verdict.RESUBMIT:
        return dated
    why = f"no job in its span by the Date header, but its ±slack span is not empty ({wide.reason})"
    return Decision(dated.key, Verdict.UNKNOWN, reason=why)


def _within(skew: Skew | None, listed_with: Skew | None) -> bool:
    """Whether spans from ``skew`` lie inside those the listing was read for."""
    if skew is None or listed_with is None:
        return skew is listed_with
    return listed_with.lo <= skew.lo and skew.hi <= listed_with.hi

"""The run: every unit of the manifest through submit → watch → fetch, concurrently and resumably.

The stages, each owning its loop (one module each):

- :mod:`~pipeline.engine.submit`: ready units → intent → POST → job id, under the budget, the
  active-job cap and the submission rate;
- :mod:`~pipeline.engine.watch`: job-list sweeps and due-time polls until each job ends;
- :mod:`~pipeline.engine.reconciler`: uncertain POSTs decided from the job list, at most once;
- :mod:`~pipeline.engine.fetch`: outputs downloaded, verified, published and recorded.

They share a :class:`~pipeline.engine.context.RunContext`, which moves units only as
:mod:`pipeline.state.lifecycle` allows. This module starts them in one task group and owns the
shutdown order: when every unit has ended, the group is cancelled; state writes that record money
(intents, job ids) are shielded, and the store is flushed last.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import anyio
import structlog

from pipeline.api.client import ApiClient
from pipeline.clock import Clock
from pipeline.engine.budget import Budget
from pipeline.engine.context import RunContext
from pipeline.engine.delivery import Delivery, WorkUnit
from pipeline.engine.diff import sort_out
from pipeline.engine.fetch import Fetch
from pipeline.engine.limits import RateLimiter, RequestPacer
from pipeline.engine.options import Failure, RunOptions, RunSummary
from pipeline.engine.provision import Provisioner
from pipeline.engine.reconcile import Uncertain
from pipeline.engine.reconciler import Reconciler
from pipeline.engine.resume import resume_units
from pipeline.engine.statuses import StatusSource
from pipeline.engine.submit import Submit
from pipeline.engine.tally import Snapshot
from pipeline.engine.watch import Watch
from pipeline.errors import AuthError, ConfigError, PipelineError, unwrap_group
from pipeline.manifest.spec import thaw
from pipeline.output.downloader import Downloader
from pipeline.output.layout import OutputLayout
from pipeline.output.local import LocalOutputStore
from pipeline.output.store import OutputStore
from pipeline.state.lifecycle import Ending, Event, Phase
from pipeline.state.records import UnitRecord
from pipeline.state.store import StateStore

__all__ = ["RunOptions", "RunSummary", "run_pipeline"]

_log = structlog.get_logger("pipeline.engine.run")

_EXPLAIN = {
    Ending.UNKNOWN: "the submission's outcome is unknown; rerun with --resubmit-unknown to pay for it again",
    Ending.DEADLINE: "the job is still running on the server; rerun later to pick it up",
    Ending.FAILED: "failed; rerun with --retry-failed to try again",
    Ending.NOT_STARTED: "not submitted",
    Ending.BLOCKED: "its upstream step did not finish",
}


class _Run:
    """One run's stages, wired together. Private: :func:`run_pipeline` is the entry point."""

    def __init__(
        self,
        ctx: RunContext,
        *,
        layout: OutputLayout,
        downloader: Downloader,
        output: OutputStore,
        recorded: Mapping[str, Phase],
    ) -> None:
        self.ctx, self.layout, self.output, self.recorded = ctx, layout, output, recorded
        options = ctx.options
        self.budget = Budget(ctx)
        delivery = Delivery(
            api=ctx.api,
            store=ctx.store,
            layout=layout,
            output=self.output,
            downloader=downloader,
            limiter=RateLimiter(options.download_rate, clock=ctx.clock),
            connections=anyio.CapacityLimiter(max(1, options.download_workers)),
            retry=options.retry,
            poll=options.poll,
            clock=ctx.clock,
            rng=ctx.rng,
            sent_body=self._sent_body,
        )
        self.fetch = Fetch(ctx, delivery)
        self.watch = Watch(ctx, self.fetch, self.budget)
        self.reconciler = Reconciler(ctx, adopt=self.watch.look_now)
        self.submit = Submit(ctx, self.budget, on_job=self.watch.track, on_uncertain=self.reconciler.add)

    async def _sent_body(self, unit: WorkUnit) -> dict[str, Any]:
        """The request as it was sent: recorded with the intent when it differs from the manifest's.

        State files from before that record fall back to the body rebuilt from the upstream outputs."""
        sent = self.ctx.store.resource("sent", unit.key)
        if sent is not None:
            return sent
        try:
            return await self.submit.body(unit.key)
        except PipelineError:
            body: dict[str, Any] = thaw(unit.request)
            return body

    async def run(self, preflight: Callable[[], Awaitable[None]] | None) -> None:
        ctx = self.ctx
        leftovers = await resume_units(ctx, self.recorded, watch=self.watch, fetch=self.fetch)
        if ctx.finished.is_set():
            return  # everything is done: not a single request
        if preflight is not None and leftovers:
            await preflight()  # reconcile reads the job list first: the check cannot overlap it
            preflight = None
        if leftovers:
            await self.reconciler.reconcile([self._leftover(r) for r in leftovers], final=False)
        if ctx.finished.is_set() or ctx.stop.is_set():
            return
        try:
            async with anyio.create_task_group() as tg:
                if preflight is not None:  # overlapped with the start; no intent before it passes
                    self.submit.checked = anyio.Event()
                    tg.start_soon(self._check_api, preflight, self.submit.checked)
                self._start_stages(tg)
                await ctx.finished.wait()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if (error := unwrap_group(group)) is None:
                raise
            raise error from None

    @staticmethod
    async def _check_api(preflight: Callable[[], Awaitable[None]], checked: anyio.Event) -> None:
        """The preflight, run while the stages start: its round trip is not in front of the first
        POST's set-up, but the first intent (and so the first POST) waits for it to pass."""
        await preflight()
        checked.set()

    def _start_stages(self, tg: anyio.abc.TaskGroup) -> None:
        ctx, options = self.ctx, self.ctx.options
        tg.start_soon(self._stop_when_asked)
        for _ in range(max(1, options.submit_workers)):
            tg.start_soon(self.submit.worker)
        # Twice as many deliveries as connections: bookkeeping overlaps the next fetch.
        for _ in range(2 * max(1, options.download_workers)):
            tg.start_soon(self.fetch.worker)
        for name in list(ctx.waiting):
            tg.start_soon(self._provision_model, name)
        tg.start_soon(self.watch.poll_loop, tg)
        tg.start_soon(self.watch.sweep_loop, tg)
        tg.start_soon(self.reconciler.loop)
        if options.budget is not None:
            tg.start_soon(self.budget.loop, lambda: self.watch.sweeping)
        if options.max_runtime_s is not None:
            tg.start_soon(self._runtime_guard, options.max_runtime_s)

    async def _stop_when_asked(self) -> None:
        """A stop request (SIGINT/SIGTERM): no new POST from now on; POSTs already sent get up to
        ``stop_grace_s`` to answer and be recorded, and uncertain ones to be reconciled; then the
        run ends. Running jobs and downloads are picked up by the next run, never paid again."""
        ctx, posts = self.ctx, self.ctx.posts
        await ctx.stop.wait()
        ctx.stop_submitting("interrupted")
        _log.warning("stopping", in_flight=posts.in_flight, grace_s=ctx.options.stop_grace_s)
        deadline = ctx.clock.monotonic() + ctx.options.stop_grace_s
        while posts.in_flight or posts.waiting or self.reconciler.deciding:
            if ctx.clock.monotonic() >= deadline:
                _log.warning("stop_grace_over", in_flight=posts.in_flight, uncertain=len(posts.waiting))
                break
            await ctx.clock.sleep(0.05)
        ctx.finished.set()

    def _leftover(self, rec: UnitRecord) -> Uncertain:
        """A unit a previous run left ``submitting``: its intent time, or, when that cannot be read,
        a span back to the oldest the job list can show (logged: never silently "now")."""
        intent = _parse_time(rec.updated_at)
        if intent is not None:
            return Uncertain(rec.key, intent)
        now = self.ctx.clock.now()
        _log.warning("intent_time_unreadable", unit=rec.key, value=rec.updated_at, searched_days=6)
        return Uncertain(rec.key, now - timedelta(days=6), now)

    async def _provision_model(self, name: str) -> None:
        """Train (or find) declared model ``name``, then release the units that wait for it."""
        ctx = self.ctx
        try:
            if ctx.provisioner is None:
                raise ConfigError(f"model @{name} needs provisioning, which this run cannot do")
            await ctx.provisioner.ensure_model(name)
        except AuthError:
            raise
        except PipelineError as exc:
            _log.error("model_failed", model=name, error=str(exc))
            for key in ctx.waiting.pop(name, []):
                await ctx.store.mark_failed(key, str(exc), "model")
                ctx.move(key, Event.CHAIN_BROKEN)
                ctx.settle(key, Ending.FAILED)
            return
        for key in ctx.waiting.pop(name, []):
            ctx.enqueue(key)

    async def _runtime_guard(self, seconds: float) -> None:
        """``--max-runtime``: no new POSTs after ``seconds``; jobs in flight still finish.

        Units still in the ready stream end as not started when a worker reaches them; units whose
        upstream has not finished yet end when it does."""
        await self.ctx.clock.sleep(seconds)
        self.ctx.stop_submitting("max_runtime")

    def close(self) -> None:
        self.ctx.close()
        self.fetch.close()
        self.watch.close()

    def summary(self, elapsed_s: float, stale: int) -> RunSummary:
        ctx = self.ctx
        failures: list[Failure] = []
        left = 0
        for key in ctx.order:
            how = ctx.settled.get(key)
            if how in (Ending.DONE, Ending.REJECTED):
                continue
            if how is Ending.NOT_STARTED and ctx.stop_reason is not None:
                left += 1
                continue
            failures.append(self._failure(key, how))
        return RunSummary(
            counts={str(k): v for k, v in ctx.store.counts().items()},
            failures=tuple(failures),
            stopped=ctx.stop_reason,
            submitted=ctx.tally.submitted,
            rate_limited=ctx.tally.rate_limited,
            downloaded_bytes=ctx.tally.downloaded_bytes,
            elapsed_s=elapsed_s,
            stale=stale,
            left=left,
            requests=dict(ctx.api.stats),
            credits_spent=self.budget.spent,
            rate_limit_rps=ctx.pacer.estimate,
            active_cap=ctx.active.target if ctx.active.decreases else None,
        )

    def _failure(self, key: str, how: Ending | None) -> Failure:
        """A unit that did not finish, with the reason the state, the run or the rules give."""
        unit, rec = self.ctx.units[key], self.ctx.store.get(key)
        if how is Ending.BLOCKED:
            reason = _EXPLAIN[Ending.BLOCKED]
        else:
            reason = (
                self.ctx.reasons.get(key)
                or (rec.last_error if rec and rec.last_error else "")
                or (_EXPLAIN.get(how, str(how)) if how else "did not finish")
            )
        phase = str(rec.phase) if rec else str(how or "unfinished")
        return Failure(
            key=key, item_id=unit.item_id, step=unit.step, index=unit.index, phase=phase, reason=reason
        )


def _parse_time(text: str | None) -> datetime | None:
    """A recorded timestamp, or None when it is missing or unreadable (the caller widens its search)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else None


async def run_pipeline(
    units: Sequence[WorkUnit],
    *,
    api: ApiClient,
    store: StateStore,
    layout: OutputLayout,
    downloader: Downloader,
    options: RunOptions,
    clock: Clock,
    preflight: Callable[[], Awaitable[None]] | None = None,
    provisioner: Provisioner | None = None,
    monitor: Callable[[Callable[[], Snapshot]], None] | None = None,
    output: OutputStore | None = None,
    stop: anyio.Event | None = None,
    pacer: RequestPacer | None = None,
    statuses: StatusSource | None = None,
) -> RunSummary:
    """Run every unit to the end (or until stopped) and say what happened.

    Setting ``stop`` asks for a graceful stop: no new POST; those sent finish and are recorded.
    ``pacer`` and ``statuses``: what a cooperating worker shares over its batches (cooperate.py)."""
    started = clock.monotonic()
    output = output or LocalOutputStore(layout.root)
    diff = await sort_out(units, store, output.present)
    ctx = RunContext(
        diff.units,
        api=api,
        store=store,
        options=options,
        clock=clock,
        provisioner=provisioner,
        upstreams=diff.upstreams,
        stop=stop,
        pacer=pacer,
        statuses=statuses,
    )
    run = _Run(ctx, layout=layout, downloader=downloader, output=output, recorded=diff.phases)
    if monitor is not None:
        monitor(ctx.snapshot)
    try:
        await run.run(preflight)
        if not ctx.stop.is_set():
            await run.budget.settle_up()
    finally:
        run.close()
        # Whatever stopped us, the final state flush must not be cancelled half-way.
        with anyio.CancelScope(shield=True):
            await store.flush()
    return run.summary(clock.monotonic() - started, diff.stale)

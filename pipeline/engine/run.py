"""The run: every unit of the manifest through submit → poll → download, concurrently and resumably.

This is the only module that opens task groups. Its shape:

- **submit workers** take ready units from a stream, hold an active-job slot
  (the adaptive cap of :mod:`pipeline.engine.limits`), record the intent durably,
  POST, and record the job id durably before doing anything else;
- **one poll loop** takes due jobs from a single due-time queue
  (:mod:`pipeline.engine.poller`) and asks about each at most once per due time;
- **download workers** fetch every output as soon as its job succeeds (hosted
  URLs expire), verify it, publish it atomically, then write its sidecar and
  the state.

Money rules: a unit is POSTed only from ``pending``; an answer that proves
nothing was created (429, 4xx, connection refused) sends it back to ``pending``;
an answer that cannot (timeout, reset, 5xx, garbled 2xx) makes it *uncertain*,
resolved by :mod:`pipeline.engine.reconcile` from the job list, at most once. A job
that outlives its deadline stays ``submitted`` for the next run.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pipeline.api.client import ApiClient, request_sent_at
from pipeline.api.records import Job, JobPage, JobStatus
from pipeline.clock import Clock
from pipeline.crashpoints import crash_point
from pipeline.engine.delivery import Delivery, WorkUnit
from pipeline.engine.inflight import PostLog
from pipeline.engine.limits import ActiveJobLimit, RateLimiter, RequestPacer
from pipeline.engine.outcome import SubmitOutcome, classify
from pipeline.engine.poller import DueQueue, DurationEstimator, PollPolicy
from pipeline.engine.provision import Provisioner
from pipeline.engine.reconcile import Decision, Uncertain, Verdict, decide, span_of, window_of
from pipeline.engine.retry import RetryPolicy, retrying
from pipeline.engine.sweep import Found, JobSweep, Window
from pipeline.engine.tally import Snapshot, Tally
from pipeline.errors import (
    ApiError,
    AssetGoneError,
    AuthError,
    ConfigError,
    NotFoundError,
    PipelineError,
    RateLimitedError,
    RejectedError,
)
from pipeline.manifest.plan import price_of
from pipeline.manifest.spec import thaw
from pipeline.output.downloader import Downloader
from pipeline.output.layout import OutputLayout
from pipeline.state.sqlite import Phase, StateStore, UnitRecord

__all__ = ["RunOptions", "RunSummary", "run_pipeline"]

_log = structlog.get_logger("pipeline.engine.run")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Knobs of one run. Rates are requests per second (``None``: unlimited)."""

    max_active: int = 32
    submit_rate: float | None = None
    poll_rate: float | None = None
    download_rate: float | None = None
    submit_workers: int = 16
    #: Asset downloads in flight at once (connections to the asset host).
    download_workers: int = 8
    poll_concurrency: int = 32
    #: ``list``: learn running jobs' statuses from the job list, a page for dozens of jobs
    #: (:mod:`pipeline.engine.sweep`), falling back to single polls if the list cannot be read;
    #: ``job``: ask ``GET /jobs/{id}`` for each job on its own schedule.
    poll_via: str = "list"
    #: Learn the API's request-rate limit from 429s and keep every request under it
    #: (:class:`~pipeline.engine.limits.RequestPacer`).
    adaptive_rate: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll: PollPolicy = field(default_factory=PollPolicy)
    max_runtime_s: float | None = None
    #: Stop new submissions before credits spent (job list) + in flight (price table) would pass this.
    budget: float | None = None
    prices: Mapping[str, float] = field(default_factory=dict)
    #: How far a job's creation time may be from our send time while the server's clock is not
    #: learned yet, and how long after a POST got no answer the server may still create its job.
    reconcile_slack_s: float = 60.0
    #: An uncertain POST is looked for in the job list this long after its span ends (list lag).
    reconcile_settle_s: float = 0.5
    #: After a stop request (SIGINT/SIGTERM): how long POSTs already sent may take to answer, be
    #: recorded and reconciled before the run ends.
    stop_grace_s: float = 10.0
    seed: int | None = None


@dataclass(frozen=True, kw_only=True)
class Failure:
    """A unit that did not finish, with what to do about it."""

    key: str
    item_id: str
    step: str
    index: int
    phase: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """What a run did: counts per phase at the end, failures, and why it stopped early (if it did)."""

    counts: Mapping[str, int]
    failures: tuple[Failure, ...]
    stopped: str | None
    submitted: int
    rate_limited: int
    downloaded_bytes: int
    elapsed_s: float
    stale: int
    #: Units not started because the run stopped early (quota, budget, --max-runtime): a rerun does them.
    left: int = 0
    #: HTTP requests this run made to the API, per endpoint template.
    requests: Mapping[str, int] = field(default_factory=dict)
    #: Credits the job list reports for this run's jobs (None when it was not asked).
    credits_spent: float | None = None
    #: The API's request-rate limit as measured from its 429s (req/s; None: never hit).
    rate_limit_rps: float | None = None
    #: The active-job target at the end, when 429s on submissions lowered it below ``--max-active``.
    active_cap: int | None = None

    @property
    def exit_code(self) -> int:
        """0 all done; 5 out of credits or budget; 1 anything failed, unknown or left for a rerun."""
        if self.stopped in ("quota", "budget"):
            return 5
        if self.failures or self.left:
            return 1
        return 0


def _is_disk_problem(exc: BaseException) -> bool:
    """A full, read-only or forbidden output disk: every further download would fail too."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (
            errno.ENOSPC,
            errno.EROFS,
            errno.EACCES,
            errno.EDQUOT,
        ):
            return True
        seen = seen.__cause__
    return False


def _declared_model(unit: WorkUnit) -> str | None:
    """``name`` when the unit's model is ``@name`` (declared under ``models:``)."""
    model = unit.request.get("modelID")
    return model[1:] if isinstance(model, str) and model.startswith("@") else None


class _Run:
    """One run's moving parts. Private: :func:`run_pipeline` is the entry point."""

    def __init__(
        self,
        units: Sequence[WorkUnit],
        *,
        api: ApiClient,
        store: StateStore,
        layout: OutputLayout,
        downloader: Downloader,
        options: RunOptions,
        clock: Clock,
        provisioner: Provisioner | None = None,
        stop: anyio.Event | None = None,
    ) -> None:
        self.provisioner = provisioner
        self.stop = stop or anyio.Event()
        self.deciding = 0  # uncertain POSTs taken from the log and not decided yet
        self.waiting: dict[str, list[str]] = {}  # declared model name -> units waiting for it
        self.units = {u.key: u for u in units}
        self.order = [u.key for u in units]
        self.children: dict[str, list[str]] = {}
        for u in units:
            if u.upstream:
                self.children.setdefault(u.upstream, []).append(u.key)
        self.api, self.store, self.layout, self.downloader = api, store, layout, downloader
        self.options, self.clock = options, clock
        self.rng = random.Random(options.seed)
        self.active = ActiveJobLimit(options.max_active, clock=clock)
        # Every API request of the run goes through the pacer, which learns the rate limit.
        self.pacer = RequestPacer(clock=clock, on_rate_limit=self.active.forgive)
        if options.adaptive_rate:
            api.pacer = self.pacer
        self.submit_limiter = RateLimiter(options.submit_rate, clock=clock)
        self.poll_limiter = RateLimiter(options.poll_rate, clock=clock)
        self.download_limiter = RateLimiter(options.download_rate, clock=clock)
        self.due: DueQueue[str] = DueQueue(clock)
        self.estimator = DurationEstimator(options.poll)
        self.sweep = JobSweep()
        self.sweeping = options.poll_via == "list"
        self.sweep_added = anyio.Event()
        self.verifying: set[str] = set()  # overdue in the sweep: asked about directly once
        self.list_stale = 0  # jobs the list showed running that had finished
        self.started: dict[str, tuple[float, int]] = {}  # key -> (monotonic submit time, polls)
        self.known_jobs: set[str] = set()
        self.holding: set[str] = set()
        self.queued: set[str] = set()  # in the ready stream or being submitted: never twice
        self.eligible: set[str] = set()  # units whose recorded phase is pending: the only ones to POST
        self.requeued: set[str] = set()
        self.posts = PostLog()  # every paid POST from send to record, and the uncertain ones
        self.remaining = len(units)
        self.settled: dict[str, str] = {}
        self.reasons: dict[str, str] = {}  # in-memory reasons for ends the state does not record
        self.finished = anyio.Event()
        self.stop_reason: str | None = None
        self.tally = Tally((u.key, u.step) for u in units)
        self.delivery = Delivery(
            api=api,
            store=store,
            layout=layout,
            downloader=downloader,
            limiter=self.download_limiter,
            connections=anyio.CapacityLimiter(max(1, options.download_workers)),
            retry=options.retry,
            poll=options.poll,
            clock=clock,
            rng=self.rng,
            sent_body=self._sent_body,
        )
        self.credits_seen: dict[str, float] = {}  # job id -> credits the job list reports
        self.run_jobs: dict[str, str] = {}  # job id -> unit key, for jobs this run submitted
        self.reserved: set[str] = set()  # units past the budget check whose POST is under way
        self.started_at = clock.monotonic()
        self.outputs_left: dict[str, set[int]] = {}
        ready_send, ready_recv = anyio.create_memory_object_stream[str](max_buffer_size=len(units) + 1)
        dl_send, dl_recv = anyio.create_memory_object_stream[tuple[str, int]](max_buffer_size=10**9)
        self.ready_send: MemoryObjectSendStream[str] = ready_send
        self.ready_recv: MemoryObjectReceiveStream[str] = ready_recv
        self.dl_send: MemoryObjectSendStream[tuple[str, int]] = dl_send
        self.dl_recv: MemoryObjectReceiveStream[tuple[str, int]] = dl_recv

    # -- bookkeeping ---------------------------------------------------------------------------

    def settle(self, key: str, how: str) -> None:
        """Mark ``key`` finished for this run; children that can no longer run settle too."""
        if key in self.settled:
            return
        self.settled[key] = how
        self.remaining -= 1
        self._show(key, _DISPLAY.get(how, "failed"))
        if how not in ("done", "succeeded"):
            for child in self.children.get(key, ()):
                self.settle(child, "not_started" if how == "not_started" else "blocked")
        if self.remaining <= 0:
            self.finished.set()

    def _show(self, key: str, phase: str) -> None:
        self.tally.move(key, phase, self.clock.monotonic())

    def snapshot(self) -> Snapshot:
        """The run right now, for the progress display."""
        pacer = self.pacer
        return self.tally.snapshot(
            now=self.clock.monotonic(),
            started=self.started_at,
            target=self.active.target,
            in_use=self.active.in_use,
            paced_rps=pacer.rate if pacer.estimate is not None and not pacer.learning else None,
        )

    def stopping(self) -> bool:
        """No new POST may leave: the run stops submitting (quota, budget, time, a signal)."""
        return self.stop_reason is not None or self.stop.is_set()

    def stop_submitting(self, reason: str) -> None:
        """No new POSTs from now on; in-flight jobs are still polled and downloaded."""
        if self.stop_reason is None:
            self.stop_reason = reason
            _log.warning("submissions_stopped", reason=reason)

    def enqueue(self, key: str) -> None:
        """Put ``key`` in the ready stream unless it is there already or being submitted.

        A unit whose model is declared under ``models:`` waits until that model is ready.
        """
        if key in self.settled or key in self.queued or key not in self.eligible:
            return
        name = _declared_model(self.units[key])
        if name and (self.provisioner is None or self.provisioner.ready_model(name) is None):
            waiting = self.waiting.setdefault(name, [])
            if key not in waiting:
                waiting.append(key)
            return
        self.queued.add(key)
        self.ready_send.send_nowait(key)

    async def provision_model(self, name: str) -> None:
        """Train (or find) declared model ``name``, then release the units that wait for it."""
        try:
            if self.provisioner is None:
                raise ConfigError(f"model @{name} needs provisioning, which this run cannot do")
            await self.provisioner.ensure_model(name)
        except AuthError:
            raise
        except PipelineError as exc:
            _log.error("model_failed", model=name, error=str(exc))
            for key in self.waiting.pop(name, []):
                await self.store.mark_failed(key, str(exc), "model")
                self.settle(key, "failed")
            return
        for key in self.waiting.pop(name, []):
            self.enqueue(key)

    def _requeue(self, key: str) -> None:
        """Back into the ready stream from the worker that holds it (it leaves ``queued`` after)."""
        self.ready_send.send_nowait(key)
        self.requeued.add(key)

    def release_children(self, key: str) -> None:
        for child in self.children.get(key, ()):
            self.enqueue(child)

    # -- start-up --------------------------------------------------------------------------------

    async def prepare(self) -> list[UnitRecord]:
        """Sort every unit by its recorded phase into the right queue.

        Done units (all of them, on a no-op resume) cost one light row per output and one
        ``stat``; full records are read only for the few units that are mid-way.
        """
        phases = self.store.phases()
        self.known_jobs.update(self.store.job_ids())
        done_files = self.store.done_outputs()
        self.eligible = {k for k in self.order if phases.get(k, Phase.PENDING) == Phase.PENDING}
        leftovers: list[UnitRecord] = []
        now = self.clock.monotonic()
        for key in self.order:
            phase = phases.get(key, Phase.PENDING)
            if phase == Phase.DONE:
                files = done_files.get(key, [])
                missing = [n for n, path, size in files if not (path and self._output_present(path, size))]
                if files and not missing:
                    self.settle(key, "done")
                    continue
                await self.store.reopen(key, missing)
                phase = phases[key] = Phase.SUCCEEDED
            if phase in (Phase.SUCCEEDED, Phase.SUBMITTED, Phase.SUBMITTING):
                rec = self.store.get(key)
                if rec is None:
                    continue
                if phase == Phase.SUCCEEDED:
                    self._queue_downloads(rec)
                elif phase == Phase.SUBMITTED:
                    self._show(key, "running")
                    self.started[key] = (now, 0)
                    self.due.push(key, now)
                else:
                    leftovers.append(rec)
            elif phase == Phase.FAILED:
                self.settle(key, "failed")
            elif phase == Phase.UNKNOWN:
                self.settle(key, "unknown")
        for key in self.order:
            if key in self.settled or phases.get(key, Phase.PENDING) != Phase.PENDING:
                continue
            upstream = self.units[key].upstream
            up_phase = phases.get(upstream) if upstream else None
            if upstream is None or up_phase in (Phase.SUCCEEDED, Phase.DONE):
                self.enqueue(key)
            elif upstream in self.settled and self.settled[upstream] != "done":
                self.settle(key, "blocked")
        if self.remaining <= 0:
            self.finished.set()
        return leftovers

    def _queue_downloads(self, rec: UnitRecord) -> None:
        self._show(rec.key, "downloading")
        left = {o.n for o in rec.outputs if not o.downloaded}
        self.outputs_left[rec.key] = left
        self.release_children(rec.key)
        if not left:
            self.dl_send.send_nowait((rec.key, 0))  # 0: nothing to fetch, just finish the unit
        for n in sorted(left):
            self.dl_send.send_nowait((rec.key, n))

    def _output_present(self, rel: str, size: int | None) -> bool:
        try:
            return (self.layout.root / rel).stat().st_size == size
        except OSError:
            return False

    # -- submission --------------------------------------------------------------------------------

    async def _body(self, unit: WorkUnit) -> dict[str, Any]:
        """The request to send: the manifest's, with uploads and trained models filled in,
        plus what the upstream unit produced."""
        body: dict[str, Any] = thaw(unit.request)
        local_files = getattr(unit, "local_files", ())
        if local_files or _declared_model(unit):
            if self.provisioner is None:
                raise ConfigError(f"{unit.item_id}: local files and declared models need provisioning")
            body = await self.provisioner.fill(body, local_files)
        if not unit.upstream:
            return body
        up = self.store.get(unit.upstream)
        up_unit = self.units[unit.upstream]
        if up is None or not up.outputs:
            raise RejectedError(f"upstream {unit.upstream} has no outputs", endpoint="(chain)")
        n = 1 if up_unit.expected_outputs <= 1 else unit.index
        source = up.outputs[min(n, len(up.outputs)) - 1]
        if unit.step == "upscale":
            body["imageID"] = source.asset_id
        elif unit.step == "video":
            refs = [r for r in body.get("referenceImages", []) if r.get("role") != "first_frame"]
            body["referenceImages"] = [{"url": source.url, "role": "first_frame"}, *refs]
        return body

    async def _post(self, unit: WorkUnit, body: dict[str, Any]) -> str:
        if unit.step == "upscale":
            ticket = await self.api.upscale_image(str(body["imageID"]))
        elif unit.step == "video":
            ticket = await self.api.generate_videos(body)
        else:
            ticket = await self.api.generate_images(body)
        return ticket.job_id

    async def submit_worker(self) -> None:
        async for key in self.ready_recv:
            try:
                if key in self.settled:
                    continue
                if self.stop_reason is not None:
                    self.settle(key, "not_started")
                    continue
                await self.submit_one(key)
            finally:
                if key in self.requeued:
                    self.requeued.discard(key)  # back in the stream: still queued
                else:
                    self.queued.discard(key)

    async def submit_one(self, key: str) -> None:
        unit = self.units[key]
        log = _log.bind(item=unit.item_id, unit=key, step=unit.step, index=unit.index)
        try:
            body = await self._body(unit)
        except AuthError:
            raise
        except PipelineError as exc:
            await self.store.mark_failed(key, str(exc), "chain")
            self.settle(key, "failed")
            return
        await self._take_slot(key)
        job_id: str | None = None
        ticket: int | None = None
        intent_at = self.clock.now()
        try:
            await self.submit_limiter.acquire()
            if self.stop_reason is not None:
                self.settle(key, "not_started")
                return
            if self.active.release_if_over_target():
                # The target shrank while we waited: hand the slot back instead of earning a 429.
                self.holding.discard(key)
                self._requeue(key)
                return
            if self._over_budget(unit):
                self.stop_submitting("budget")
                self.settle(key, "not_started")
                return
            self.reserved.add(key)
            if body != thaw(unit.request):  # filled in (uploads, models, upstream outputs): keep it
                await self.store.put_resource("sent", key, body)
            await self.store.mark_submitting(key)
            self.eligible.discard(key)
            self._show(key, "submitting")
            crash_point("after_intent_commit")
            if self.stop.is_set():  # a signal came while the intent was written: nothing sent yet
                await self._back_to_pending(key, "the run stopped before sending it")
                self.settle(key, "not_started")
                return
            intent_at = self.clock.now()
            ticket = self.posts.begin(key, intent_at, self.clock.monotonic())
            job_id = await self._post(unit, body)
            self.posts.answered(ticket, self.clock.now(), job_id, sent=request_sent_at())
            crash_point("after_post_before_record")
        except ApiError as exc:
            if ticket is not None:
                sent = request_sent_at()
                self.posts.answered(ticket, self.clock.now(), sent=sent)
                intent_at = sent if sent is not None and intent_at < sent else intent_at
            await self._submit_failed(key, exc, intent_at)
            return
        finally:
            if job_id is None:
                self._drop_slot(key)
                self.reserved.discard(key)
                if ticket is not None:
                    self.posts.close(ticket, self.clock.monotonic())
        # The job exists and costs money from here on: its id must be on disk whatever happens.
        with anyio.CancelScope(shield=True):
            await self.store.mark_submitted(key, job_id, self.clock.now())
        self.known_jobs.add(job_id)
        if ticket is not None:
            self.posts.close(ticket, self.clock.monotonic())
        self.run_jobs[job_id] = key
        self.reserved.discard(key)
        self.active.on_accepted()
        self._show(key, "running")
        now = self.clock.monotonic()
        self.started[key] = (now, 0)
        if self.sweeping and self.active.in_use >= self.options.poll.sweep_min_jobs:
            due = now + self.estimator.earliest(unit.step)
            self.sweep.add(job_id, key, unit.step, sent=intent_at, now=now, due=due)
            self.sweep_added.set()
        else:
            self.due.push(key, now + self.estimator.first_delay(unit.step))
        log.info("job_submitted", job_id=job_id)

    async def _submit_failed(self, key: str, exc: ApiError, intent_at: datetime) -> None:
        """Act on :func:`~pipeline.engine.outcome.classify`: resend only what provably created nothing."""
        unit = self.units[key]
        log = _log.bind(item=unit.item_id, unit=key, step=unit.step, index=unit.index)
        outcome = classify(exc)
        if outcome is SubmitOutcome.AUTH:
            raise exc
        if outcome is SubmitOutcome.RATE_LIMITED:
            retry_after = exc.retry_after_s if isinstance(exc, RateLimitedError) else None
            self.tally.rate_limited += 1
            if not self.pacer.explains_429():  # the request rate's doing, not the job cap's
                self.active.on_rate_limited()
            self.submit_limiter.defer(retry_after if retry_after is not None else self._backoff(1))
            log.info("rate_limited", retry_after_s=retry_after, target=self.active.target)
            await self._back_to_pending(key, "429 rate limited")
            self._requeue(key)
        elif outcome is SubmitOutcome.QUOTA:
            self.stop_submitting("quota")
            await self._back_to_pending(key, exc.message)
            self.settle(key, "not_started")
        elif outcome in (SubmitOutcome.CONFLICT, SubmitOutcome.NOT_SENT):
            await self._back_to_pending(key, exc.message if outcome is SubmitOutcome.CONFLICT else str(exc))
            self.submit_limiter.defer(self._backoff(2 if outcome is SubmitOutcome.CONFLICT else 1))
            self._requeue(key)
        elif outcome is SubmitOutcome.REJECTED:
            log.warning("job_rejected", status=exc.status, reason=exc.message)
            await self.store.mark_failed(key, exc.message, "rejected")
            self.settle(key, "failed")
        else:
            # The server may still create it after a silent failure: the span stays open a while.
            late = self.options.reconcile_slack_s if outcome is SubmitOutcome.UNCERTAIN_SILENT else 0.0
            log.warning("submission_uncertain", error=str(exc), answered=late == 0.0)
            until = self.clock.now() + timedelta(seconds=late)
            self.posts.waiting.append(Uncertain(key, intent_at, until))

    def _cost(self, key: str) -> float:
        """Estimated credits of a unit from the manifest's price table (0 when unpriced)."""
        unit = self.units[key]
        price = price_of(unit, self.options.prices) if self.options.prices else None  # type: ignore[arg-type]
        return (price or 0.0) * max(1, unit.expected_outputs)

    def committed_credits(self) -> float:
        """Credits the job list reports for this run's jobs, plus estimates for jobs it has not priced yet."""
        pending = sum(self._cost(key) for job, key in self.run_jobs.items() if job not in self.credits_seen)
        reserved = sum(self._cost(key) for key in self.reserved)
        return sum(self.credits_seen.values()) + pending + reserved

    def _over_budget(self, unit: WorkUnit) -> bool:
        budget = self.options.budget
        return budget is not None and self.committed_credits() + self._cost(unit.key) > budget

    async def credits_loop(self) -> None:
        """Learn what this run has spent from the job list (the API reports credits per job)."""
        interval = max(1.0, self.options.poll.max_interval_s)
        since = self.clock.now() - timedelta(minutes=5)
        while not self.finished.is_set():
            await self.clock.sleep(interval)
            if not self.run_jobs or self.sweeping:
                continue  # sweeps of the job list bring each job's credits along
            try:
                async for job in self.api.iter_jobs(start=since, end=self.clock.now() + timedelta(minutes=5)):
                    if job.job_id in self.run_jobs and job.credits is not None:
                        self.credits_seen[job.job_id] = job.credits
            except ApiError as exc:
                _log.warning("credits_unknown", error=str(exc))
                continue
            self.tally.credits_spent = sum(self.credits_seen.values())

    async def _take_slot(self, key: str) -> None:
        await self.active.acquire()
        self.holding.add(key)

    def _drop_slot(self, key: str) -> None:
        """Give back ``key``'s active-job slot, if it holds one (resumed jobs do not)."""
        if key in self.holding:
            self.holding.discard(key)
            self.active.release()

    async def _back_to_pending(self, key: str, reason: str) -> None:
        with anyio.CancelScope(shield=True):
            await self.store.mark_pending(key, reason)
        self.eligible.add(key)
        self._show(key, "pending")

    def _backoff(self, attempt: int) -> float:
        policy = self.options.retry
        return self.rng.uniform(0, min(policy.cap_s, policy.base_s * 2**attempt))

    # -- reconciliation ------------------------------------------------------------------------------

    async def reconcile(self, uncertain: list[Uncertain], *, final: bool) -> None:
        """Settle uncertain submissions from the job list (see :mod:`pipeline.engine.reconcile`).

        The listing is read at once, but decided on only when every POST begun before it ended
        is recorded (:class:`~pipeline.engine.inflight.PostLog`): their jobs are then claimed.
        """
        if not uncertain:
            return
        slack = timedelta(seconds=self.options.reconcile_slack_s)
        start, end = self._listing_window(uncertain, slack)
        try:
            listed = [j async for j in self.api.iter_jobs(start=start, end=end)]
        except ApiError as exc:
            _log.warning("reconcile_failed", error=str(exc))
            for u in uncertain:
                await self.store.mark_unknown(u.key, f"could not read the job list: {exc}")
                self.settle(u.key, "unknown")
            self.posts.unknown.extend(uncertain)
            return
        listed_at = self.clock.monotonic()
        for job in listed:
            self.posts.learn(job.job_id, job.created_at)
        if self.posts.open_before(listed_at):
            _log.info("reconcile_waits", units=len(uncertain), posts=self.posts.open_before(listed_at))
            await self.posts.wait_closed(listed_at)
        rivals = [*self.posts.waiting, *self.posts.unknown]
        decisions = decide(
            uncertain, listed, self.known_jobs, slack=slack, skew=self.posts.skew(), rivals=rivals
        )
        now = self.clock.now()
        for u, decision in zip(uncertain, decisions, strict=True):
            if decision.verdict is Verdict.UNKNOWN:
                if self._ask_again(u, final=final, now=now, skew_known=self.posts.skew() is not None):
                    continue
                self.posts.unknown.append(u)
            await self._apply(decision, final=final)

    def _ask_again(self, u: Uncertain, *, final: bool, now: datetime, skew_known: bool) -> bool:
        """An ambiguity found with ``±slack`` spans may clear once the server's clock is learned (a
        poll of any job teaches it): ask again a little later, for up to ``reconcile_slack_s``."""
        give_up = (u.until or u.intent_at) + timedelta(seconds=self.options.reconcile_slack_s)
        if final or skew_known or now >= give_up:
            return False
        self.posts.again(u, now + timedelta(seconds=1))
        return True

    def _listing_window(self, uncertain: list[Uncertain], slack: timedelta) -> tuple[datetime, datetime]:
        """The batch's spans, and those of the other uncertain POSTs that overlap them: their jobs,
        listed too, tell the matching which job is whose (:func:`~pipeline.engine.reconcile.decide`)."""
        skew = self.posts.skew()
        start, end = window_of(uncertain, skew, slack)
        rivals = [*self.posts.waiting, *self.posts.unknown]
        near = [r for r in rivals if (s := span_of(r, skew, slack))[0] <= end and s[1] >= start]
        return window_of([*uncertain, *near], skew, slack)

    async def _apply(self, decision: Decision, *, final: bool) -> None:
        unit = self.units.get(decision.key)
        log = _log.bind(unit=decision.key, item=unit.item_id if unit else None)
        if decision.verdict is Verdict.RESUBMIT and not final:
            await self._back_to_pending(decision.key, decision.reason)
            self.enqueue(decision.key)
            log.info("submission_resent", reason=decision.reason)
        elif decision.verdict is Verdict.RESUBMIT:
            await self._back_to_pending(decision.key, decision.reason)
            self.settle(decision.key, "not_started")
        elif decision.verdict is Verdict.ADOPT and decision.job_id:
            with anyio.CancelScope(shield=True):
                await self.store.mark_submitted(decision.key, decision.job_id, self.clock.now())
            self.known_jobs.add(decision.job_id)
            now = self.clock.monotonic()
            self.started[decision.key] = (now, 0)
            self.due.push(decision.key, now)
            log.info("job_adopted", job_id=decision.job_id)
        else:
            await self.store.mark_unknown(decision.key, decision.reason)
            self.settle(decision.key, "unknown")
            log.warning("submission_unknown", reason=decision.reason)

    async def reconcile_loop(self) -> None:
        """Reconcile each uncertain submission as soon as its job would be listed."""
        settle = timedelta(seconds=self.options.reconcile_settle_s)
        while not self.finished.is_set():
            await self.clock.sleep(0.25)
            patience = timedelta(0) if self.stopping() else timedelta(seconds=self.options.reconcile_slack_s)
            batch = self.posts.take_ready(self.clock.now(), settle, patience)
            if batch:
                self.deciding += len(batch)
                try:
                    await self.reconcile(batch, final=self.stop_reason is not None)
                finally:
                    self.deciding -= len(batch)

    async def stop_when_asked(self) -> None:
        """A stop request (SIGINT/SIGTERM): no new POST from now on; POSTs already sent get up to
        ``stop_grace_s`` to answer and be recorded, and uncertain ones to be reconciled; then the
        run ends. Running jobs and downloads are picked up by the next run, never paid again."""
        await self.stop.wait()
        self.stop_submitting("interrupted")
        _log.warning("stopping", in_flight=self.posts.in_flight, grace_s=self.options.stop_grace_s)
        deadline = self.clock.monotonic() + self.options.stop_grace_s
        while self.posts.in_flight or self.posts.waiting or self.deciding:
            if self.clock.monotonic() >= deadline:
                _log.warning(
                    "stop_grace_over", in_flight=self.posts.in_flight, uncertain=len(self.posts.waiting)
                )
                break
            await self.clock.sleep(0.05)
        self.finished.set()

    # -- polling -----------------------------------------------------------------------------------

    async def poll_loop(self, tg: anyio.abc.TaskGroup, limiter: anyio.CapacityLimiter) -> None:
        while not self.finished.is_set():
            for key in await self.due.pop_due(idle_s=0.5):
                tg.start_soon(self._poll_guarded, key, limiter)

    async def _poll_guarded(
        self, key: str, limiter: anyio.CapacityLimiter, seen: Found | None = None
    ) -> None:
        async with limiter:
            await self.poll_one(key, seen)

    async def sweep_loop(self, tg: anyio.abc.TaskGroup, limiter: anyio.CapacityLimiter) -> None:
        """List the jobs in flight as they fall due; fetch each one the list shows finished.

        Falls back to single polls for good when the list cannot be read three times running.
        """
        failures, last = 0, float("-inf")
        while not self.finished.is_set() and self.sweeping:
            now = self.clock.monotonic()
            # At most one sweep per interval of the quickest kind watched; each lists the jobs due.
            wake = max(self.sweep.next_due(), last + self.estimator.sweep_interval(self.sweep.kinds()))
            if wake > now:
                self.sweep_added = anyio.Event()  # a new job may fall due sooner
                await self.clock.wait_for(self.sweep_added, min(wake - now, 0.5))
                continue
            last = now
            try:
                await self._sweep_once(tg, limiter)
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

    def _next_look(self) -> dict[str, float]:
        """Per kind: how long after seeing a job running to look at it again."""
        return {kind: self.estimator.sweep_interval({kind}) for kind in self.sweep.kinds()}

    async def _sweep_once(self, tg: anyio.abc.TaskGroup, limiter: anyio.CapacityLimiter) -> None:
        next_look = self._next_look()
        # Jobs due within half an interval come along now rather than a whole interval late.
        soon = 0.5 * min(next_look.values(), default=0.0)
        for window in self.sweep.windows(self.clock.monotonic() + soon):
            token: str | None = None
            seen_tokens: set[str] = set()
            while True:

                async def page_of(token: str | None = token, window: Window = window) -> JobPage:
                    await self.poll_limiter.acquire()
                    return await self.api.list_jobs(start=window.start, end=window.end, page_token=token)

                page = await retrying(page_of, policy=self.options.retry, clock=self.clock, rng=self.rng)
                for job in page.jobs:
                    self.posts.learn(job.job_id, job.created_at)
                for found in self.sweep.take(window, page.jobs, self.clock.monotonic(), next_look):
                    self._drop_slot(found.key)  # finished on the server: its slot is free now
                    if found.credits is not None:
                        self.credits_seen[found.job_id] = found.credits
                        self.tally.credits_spent = sum(self.credits_seen.values())
                    tg.start_soon(self._poll_guarded, found.key, limiter, found)
                token = page.next_page_token
                if window.complete or token is None or token in seen_tokens:
                    break
                seen_tokens.add(token)
            if window.complete:
                continue
            mono = self.clock.monotonic()
            for job_id, key in self.sweep.end(window, self.clock.now(), mono, next_look):
                _log.info("job_not_listed", unit=key, job_id=job_id)
                self.due.push(key, mono)

    def _sweep_deadlines(self) -> None:
        """Jobs past their deadline leave the sweep for one last poll, which settles them; jobs
        running far longer than their kind's typical duration are asked about directly (the
        list could be stale: :meth:`poll_one` counts it) and are polled alone from then on."""
        now = self.clock.monotonic()
        for job_id, key, kind in self.sweep.jobs():
            elapsed = now - self.started.get(key, (now, 0))[0]
            if elapsed > self.options.poll.deadline_s.get(kind, 900.0):
                self.sweep.discard(job_id)
                self.due.push(key, now)
            elif elapsed > self.estimator.overdue(kind):
                self.sweep.discard(job_id)
                self.verifying.add(key)
                self.due.push(key, now)

    def _check_list_freshness(self, key: str, job: Job) -> None:
        """An overdue job the list showed running, found finished: three of those and the list
        is taken for stale, and the run polls every job alone."""
        if key not in self.verifying:
            return
        self.verifying.discard(key)
        if job.status.is_terminal and self.sweeping:
            self.list_stale += 1
            _log.warning("job_list_stale", unit=key, job_id=job.job_id, seen=self.list_stale)
            if self.list_stale >= 3:
                self._stop_sweeping("the job list shows finished jobs as still running")

    def _stop_sweeping(self, reason: str) -> None:
        _log.warning("job_list_unusable", reason=reason, fallback="single polls")
        self.sweeping = False
        now = self.clock.monotonic()
        for _, key in self.sweep.drain():
            self.due.push(key, now)

    async def poll_one(self, key: str, seen: Found | None = None) -> None:
        unit = self.units[key]
        rec = self.store.get(key)
        if rec is None or not rec.job_id:
            return
        job_id = rec.job_id
        submitted_at, polls = self.started.get(key, (self.clock.monotonic(), 0))
        log = _log.bind(item=unit.item_id, unit=key, job_id=job_id)

        async def get() -> Job:
            await self.poll_limiter.acquire()
            return await self.api.get_job(job_id)

        try:
            job = await retrying(get, policy=self.options.retry, clock=self.clock, rng=self.rng)
        except AuthError:
            raise
        except NotFoundError:
            self._drop_slot(key)
            await self.store.mark_unknown(key, f"job {job_id} is not found on the server")
            self.settle(key, "unknown")
            return
        except PipelineError as exc:
            log.warning("poll_failed", error=str(exc))
            self.due.push(key, self.clock.monotonic() + self.options.poll.max_interval_s)
            return
        self.posts.learn(job_id, job.created_at)  # the server's clock, for narrow reconcile spans
        now = self.clock.monotonic()
        elapsed = now - submitted_at
        polls += 1
        self.started[key] = (submitted_at, polls)
        self._check_list_freshness(key, job)
        if job.status is JobStatus.SUCCESS:
            self._drop_slot(key)
            if seen is None:
                self.estimator.observe(unit.step, elapsed)
            else:
                self.estimator.observe_between(
                    unit.step, seen.running_at - submitted_at, seen.seen_at - submitted_at
                )
            outputs = [(o.id, o.url) for o in (*job.images, *job.videos)]
            if not outputs:
                await self.store.mark_failed(key, "the job succeeded without outputs", "job_failed")
                self.settle(key, "failed")
                return
            await self.store.mark_succeeded(key, outputs)
            log.info("job_succeeded", outputs=len(outputs), polls=polls)
            rec = self.store.get(key)
            if rec is not None:
                self._queue_downloads(rec)
        elif job.status is JobStatus.FAILED:
            self._drop_slot(key)
            reason = job.error or "the job failed without a reason"
            await self.store.mark_failed(key, reason, "job_failed")
            self.settle(key, "failed")
            log.warning("job_failed", reason=reason)
        elif elapsed > self.options.poll.deadline_s.get(unit.step, 900.0):
            self._drop_slot(key)
            self.settle(key, "deadline")
            log.warning("job_deadline", elapsed_s=round(elapsed, 1), status=job.status_raw)
        else:
            self.due.push(key, now + self.estimator.next_delay(unit.step, elapsed, polls))

    # -- downloads -----------------------------------------------------------------------------------

    async def download_worker(self) -> None:
        async for key, n in self.dl_recv:
            if key in self.settled:
                continue
            try:
                if n:
                    await self.download_one(key, n)
                    self.outputs_left.get(key, set()).discard(n)
            except AuthError:
                raise
            except AssetGoneError as exc:
                # Refreshing the job did not help: the outputs are gone for good. Reported, not looped on.
                _log.error("outputs_gone", unit=key, n=n, error=str(exc))
                await self.store.mark_failed(
                    key, f"output {n} is gone from the server: {exc}", "outputs_gone"
                )
                self.settle(key, "failed")
                continue
            except (PipelineError, OSError) as exc:
                # The job is paid for and its outputs are recorded: the unit stays `succeeded`, so a
                # rerun downloads again and never pays again.
                reason = f"output {n} could not be saved: {exc}"
                _log.error("download_failed", unit=key, n=n, error=str(exc))
                self.reasons[key] = reason + "; rerun to download it again (no new job)"
                if _is_disk_problem(exc):
                    self.stop_submitting("output_unwritable")
                self.settle(key, "download_failed")
                continue
            if not self.outputs_left.get(key) and key not in self.settled:
                await self.store.mark_done(key)
                self.settle(key, "done")

    async def download_one(self, key: str, n: int) -> None:
        self.tally.downloaded_bytes += await self.delivery.deliver(self.units[key], n)

    async def _sent_body(self, unit: WorkUnit) -> dict[str, Any]:
        """The request as it was sent: recorded with the intent when it differs from the manifest's.

        State files from before that record fall back to the body rebuilt from the upstream outputs."""
        sent = self.store.resource("sent", unit.key)
        if sent is not None:
            return sent
        try:
            return await self._body(unit)
        except PipelineError:
            body: dict[str, Any] = thaw(unit.request)
            return body

    # -- the whole run -------------------------------------------------------------------------------

    async def run(self, preflight: Callable[[], Awaitable[None]] | None) -> None:
        leftovers = await self.prepare()
        if self.finished.is_set():
            return  # everything is done: not a single request
        if preflight is not None:
            await preflight()
        if leftovers:
            await self.reconcile([self._leftover(r) for r in leftovers], final=False)
        if self.finished.is_set() or self.stop.is_set():
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.stop_when_asked)
            for _ in range(max(1, self.options.submit_workers)):
                tg.start_soon(self.submit_worker)
            # Twice as many deliveries as connections: bookkeeping overlaps the next fetch.
            for _ in range(2 * max(1, self.options.download_workers)):
                tg.start_soon(self.download_worker)
            for name in list(self.waiting):
                tg.start_soon(self.provision_model, name)
            # One cap on job reads in flight, whether a due time or a sweep asked for them.
            polls = anyio.CapacityLimiter(self.options.poll_concurrency)
            tg.start_soon(self.poll_loop, tg, polls)
            tg.start_soon(self.sweep_loop, tg, polls)
            tg.start_soon(self.reconcile_loop)
            if self.options.budget is not None:
                tg.start_soon(self.credits_loop)
            if self.options.max_runtime_s is not None:
                tg.start_soon(self._runtime_guard, self.options.max_runtime_s)
            await self.finished.wait()
            tg.cancel_scope.cancel()

    def _leftover(self, rec: UnitRecord) -> Uncertain:
        """A unit a previous run left ``submitting``: its intent time, or, when that cannot be read,
        a span back to the oldest the job list can show (logged: never silently "now")."""
        intent = _parse_time(rec.updated_at)
        if intent is not None:
            return Uncertain(rec.key, intent)
        now = self.clock.now()
        _log.warning("intent_time_unreadable", unit=rec.key, value=rec.updated_at, searched_days=6)
        return Uncertain(rec.key, now - timedelta(days=6), now)

    def close(self) -> None:
        if self.api.pacer is self.pacer:
            self.api.pacer = None
        for stream in (self.ready_send, self.ready_recv, self.dl_send, self.dl_recv):
            stream.close()

    async def _runtime_guard(self, seconds: float) -> None:
        await self.clock.sleep(seconds)
        self.stop_submitting("max_runtime")
        # Units still waiting in the ready stream settle as not started when a worker reaches them;
        # units whose upstream has not finished yet settle when it does.

    def summary(self, elapsed_s: float, stale: int) -> RunSummary:
        failures: list[Failure] = []
        left = 0
        for key in self.order:
            how = self.settled.get(key, "unfinished")
            if how in ("done",):
                continue
            if how == "not_started" and self.stop_reason is not None:
                left += 1
                continue
            unit = self.units[key]
            rec = self.store.get(key)
            reason = (
                self.reasons.get(key)
                or (rec.last_error if rec and rec.last_error else "")
                or _EXPLAIN.get(how, how)
            )
            failures.append(
                Failure(
                    key=key,
                    item_id=unit.item_id,
                    step=unit.step,
                    index=unit.index,
                    phase=str(rec.phase) if rec else how,
                    reason=reason if how != "blocked" else "its upstream step did not finish",
                )
            )
        return RunSummary(
            counts={str(k): v for k, v in self.store.counts().items()},
            failures=tuple(failures),
            stopped=self.stop_reason,
            submitted=self.tally.submitted,
            rate_limited=self.tally.rate_limited,
            downloaded_bytes=self.tally.downloaded_bytes,
            elapsed_s=elapsed_s,
            stale=stale,
            left=left,
            requests=dict(self.api.stats),
            credits_spent=sum(self.credits_seen.values()) if self.credits_seen else None,
            rate_limit_rps=self.pacer.estimate,
            active_cap=self.active.target if self.active.decreases else None,
        )

    async def final_credits(self) -> None:
        """One pass over the job list at the end: what this run's jobs cost, as the API reports it."""
        if not self.run_jobs or self.credits_seen.keys() >= self.run_jobs.keys():
            return  # nothing run, or every job's cost came with a sweep
        since = self.clock.now() - timedelta(seconds=self.clock.monotonic() - self.started_at + 300)
        try:
            async for job in self.api.iter_jobs(start=since, end=self.clock.now() + timedelta(minutes=5)):
                if job.job_id in self.run_jobs and job.credits is not None:
                    self.credits_seen[job.job_id] = job.credits
        except ApiError as exc:
            _log.warning("credits_unknown", error=str(exc))


#: How a unit's end in this run shows on the progress display.
_DISPLAY = {
    "done": "done",
    "succeeded": "downloading",
    "failed": "failed",
    "blocked": "failed",
    "unknown": "unknown",
    "deadline": "running",
    "not_started": "pending",
    "unfinished": "pending",
    "download_failed": "failed",
}

_EXPLAIN = {
    "unknown": "the submission's outcome is unknown; rerun with --resubmit-unknown to pay for it again",
    "deadline": "the job is still running on the server; rerun later to pick it up",
    "failed": "failed; rerun with --retry-failed to try again",
    "not_started": "not submitted",
    "unfinished": "did not finish",
}


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
    stop: anyio.Event | None = None,
) -> RunSummary:
    """Run every unit to the end (or until stopped) and say what happened.

    Setting ``stop`` asks for a graceful stop (see :meth:`_Run.stop_when_asked`).
    """
    started = clock.monotonic()
    await store.sync_units(units)
    stale = len(store.stale_keys({u.key for u in units}))
    run = _Run(
        units,
        api=api,
        store=store,
        layout=layout,
        downloader=downloader,
        options=options,
        clock=clock,
        provisioner=provisioner,
        stop=stop,
    )
    if monitor is not None:
        monitor(run.snapshot)
    try:
        await run.run(preflight)
        if not run.stop.is_set():
            await run.final_credits()
    finally:
        run.close()
        # Whatever stopped us, the final state flush must not be cancelled half-way.
        with anyio.CancelScope(shield=True):
            await store.flush()
    return run.summary(clock.monotonic() - started, stale)

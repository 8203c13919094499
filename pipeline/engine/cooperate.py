"""Several workers, one run: the same manifest and ``--state postgresql://…`` on N processes or hosts.

Each worker loops: claim a batch of units under a lease (:meth:`PostgresStore.claim`), run them
through the ordinary engine (:func:`~pipeline.engine.run.run_pipeline` on that batch), let go of
what is left, claim again. A heartbeat renews the leases meanwhile. A unit whose holder died is
claimable once its lease ran out: polling, downloading and publishing resume in the worker that
claims it, and a unit that was ``submitting`` is reconciled from the job list before any POST (the
store refuses a new intent for it until then). A worker exits when every unit of the manifest is
settled (done, failed, unknown, or blocked behind one of those); while others hold units it waits,
and takes them over when their leases run out.

Shared limits: intents are written under the key's active-job cap, counted in the database
(:meth:`SharedStore.mark_submitting`), and a submission refused for the cap teaches every worker the
cap (:data:`~pipeline.state.records.CAP_429_REASON`). ``--max-active`` is the total for the key, and
so is ``--rate`` (submissions charged to the key's GCRA row in the database, :class:`SharedRate`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import structlog

from pipeline.api.client import ApiClient
from pipeline.clock import Clock
from pipeline.engine.delivery import WorkUnit
from pipeline.engine.limits import RateLimiter
from pipeline.engine.options import Failure, RunOptions, RunSummary
from pipeline.engine.provision import Provisioner
from pipeline.engine.recheck import Recheck
from pipeline.engine.regenerate import recorded_seeds
from pipeline.engine.run import run_pipeline
from pipeline.engine.sharedpace import SharedPacer
from pipeline.engine.sharedsweep import SharedStatuses, SharedSweeper
from pipeline.engine.tally import Snapshot
from pipeline.errors import LeaseLostError
from pipeline.output.downloader import Downloader
from pipeline.output.layout import OutputLayout
from pipeline.output.local import LocalOutputStore
from pipeline.output.store import OutputStore
from pipeline.state.pgclaims import Claimed
from pipeline.state.pglimits import SharedLimits
from pipeline.state.postgres import PostgresStore
from pipeline.state.records import CAP_429_REASON, SETTLED, Phase, UnitRecord

__all__ = ["SharedRate", "SharedStore", "run_shared"]

_log = structlog.get_logger("pipeline.engine.cooperate")
_GIVE_UP = 3  # batches a unit may come back unfinished from, in one worker, before it stops trying
_STOPS = ("quota", "budget", "max_runtime", "output_unwritable")


class SharedRate(RateLimiter):
    """``--rate`` as a total for the API key: every worker's submission is charged to the key's one
    GCRA row in the database and waits the time it is given. Pauses after a 429 (``defer``) stay
    local, as they are in a single run."""

    def __init__(self, limits: SharedLimits, *, clock: Clock) -> None:
        super().__init__(None, clock=clock)
        self._limits = limits

    async def acquire(self) -> None:
        """Wait out a local pause, then take the key's next slot."""
        await super().acquire()
        if (wait := await self._limits.reserve()) > 0:
            await self._clock.sleep(wait)


class SharedStore(PostgresStore):
    """The PostgreSQL store as a cooperating worker uses it: intents under the key's shared cap,
    and (with ``--rate``) submissions paced for all workers together (``submit_limiter``)."""

    key_hash: str = ""
    cap: int = 32
    submit_limiter: RateLimiter | None = None

    #: Every key of the manifest: a batch's stale units are the run's, not "all but this batch".
    manifest_keys: frozenset[str] | None = None

    def stale_keys(self, current_keys: Set[str]) -> list[UnitRecord]:
        """Units of the run the manifest no longer has (each batch asks with its own keys only)."""
        return super().stale_keys(self.manifest_keys if self.manifest_keys is not None else current_keys)

    async def share_limits(self, key_hash: str, *, cap: int, rate_per_s: float | None) -> None:
        """Join the key's shared limits: the active-job cap, and the submission rate when given."""
        self.key_hash, self.cap = key_hash, cap
        if rate_per_s is not None:
            limits = self.limits(key_hash)
            await limits.configure(rate_per_s=rate_per_s)
            self.submit_limiter = SharedRate(limits, clock=self._clock)

    async def mark_submitting(self, key: str) -> int:
        """The intent, once the key has fewer than its cap of jobs submitting or running (all workers,
        all runs): waits for a slot rather than earning a 429."""
        while (attempts := await self.start_submission(key, key_hash=self.key_hash, cap=self.cap)) is None:
            await self._clock.sleep(0.05)
        return attempts

    async def mark_pending(self, key: str, reason: str) -> None:
        """Back to pending; a submission refused for the cap teaches every worker the cap: the jobs
        the key had running when the server said no."""
        if reason == CAP_429_REASON:
            limits = self.limits(self.key_hash)
            running = await limits.active(created_only=True)  # never below the server's count
            if running >= 1:
                await limits.learn(cap=running)
                _log.info("active_cap_learned", cap=running)
        await super().mark_pending(key, reason)


@dataclass(slots=True)
class _Totals:
    """What this worker did over all its batches."""

    submitted: int = 0
    rate_limited: int = 0
    downloaded_bytes: int = 0
    batches: int = 0
    stopped: str | None = None
    tries: Counter[str] = field(default_factory=Counter)

    def add(self, summary: RunSummary) -> None:
        self.submitted += summary.submitted
        self.rate_limited += summary.rate_limited
        self.downloaded_bytes += summary.downloaded_bytes
        self.batches += 1
        if summary.stopped in _STOPS:
            self.stopped = summary.stopped


async def _heartbeat(store: SharedStore, lease_s: float, clock: Clock) -> None:
    """Renew this worker's leases three times a lease; say when one was lost."""
    held: set[str] = set()
    while True:
        await clock.sleep(max(0.05, lease_s / 3))
        now = await store.renew()
        if lost := held - now - {k for k, p in store.phases().items() if p in SETTLED}:
            _log.warning("leases_lost", units=len(lost), holder=store.holder)
        held = now


def _start_sweeper(
    tg: anyio.abc.TaskGroup,
    store: SharedStore,
    api: ApiClient,
    options: RunOptions,
    clock: Clock,
    lease_s: float,
) -> SharedStatuses | None:
    """One poller for many (sharedsweep.py): this worker joins the key's sweeper election, and its
    batches read what the elected sweeper saw. None: statuses come from this worker's own polls."""
    if not store.key_hash or options.poll_via != "list":
        return None
    limits = store.limits(store.key_hash)
    sweeper = SharedSweeper(limits, api, options=options, clock=clock, lease_s=min(lease_s, 10.0))
    tg.start_soon(sweeper.loop)
    statuses = SharedStatuses(limits, max_age_s=2 * options.poll.max_interval_s)
    tg.start_soon(limits.listen, statuses.news)  # LISTEN/NOTIFY: a wake-up hint on top of reads
    return statuses


def _open_keys(units: Sequence[WorkUnit], phases: dict[str, Phase], given_up: set[str]) -> list[str]:
    """Units still to do: not settled, not behind a failed or unknown upstream, not given up on."""
    by_key = {u.key: u for u in units}
    blocked: dict[str, bool] = {}

    def is_blocked(key: str) -> bool:
        if key not in blocked:
            up = by_key[key].upstream
            phase = phases.get(up) if up else None
            blocked[key] = up is not None and (
                phase in (Phase.FAILED, Phase.UNKNOWN) or (up in by_key and is_blocked(up))
            )
        return blocked[key]

    return [
        u.key
        for u in units
        if phases.get(u.key, Phase.PENDING) not in SETTLED and not is_blocked(u.key) and u.key not in given_up
    ]


class _Worker:
    """This worker's batches: claimed units through the ordinary engine, until the run is settled.

    Two loops claim: the main one between its batches, and a takeover loop that looks for units
    whose holder's lease ran out every quarter lease, while the main batch is still working, so a
    dead worker's units resume within about one lease rather than after a survivor's batch."""

    def __init__(
        self,
        units: Sequence[WorkUnit],
        store: SharedStore,
        run_batch: Callable[..., Awaitable[RunSummary]],
        *,
        batch: int,
        clock: Clock,
        stop: anyio.Event | None,
        settled: Callable[[], Awaitable[bool]],
    ) -> None:
        self.units, self.store, self.run_batch = units, store, run_batch
        self.settled = settled  # the start-up check of done units' files has ended (recheck.py)
        self.by_key = {u.key: u for u in units}
        self.batch, self.clock, self.stop = batch, clock, stop
        self.lease_s = float(store.lease_s or 60.0)
        self.totals = _Totals()
        self.done = anyio.Event()
        self._first = True

    def stopping(self) -> bool:
        return self.totals.stopped is not None or (self.stop is not None and self.stop.is_set())

    async def work(self, first: Mapping[str, Any]) -> None:
        """Claim and work until every unit is settled (or a stop); ``first``: the first batch's
        extra arguments (the preflight and the progress monitor)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._takeovers)
            while not self.stopping():
                given_up = {k for k, n in self.totals.tries.items() if n >= _GIVE_UP}
                if await self._run(await self.store.claim(self.batch), first):
                    continue
                if not self._open(given_up) and await self.settled() and not self._open(given_up):
                    break  # read again after the check: a check that ended meanwhile may have reopened units
                await self.clock.sleep(min(1.0, self.lease_s / 4))  # others hold the rest: wait, or take over
            self.done.set()

    def _open(self, given_up: set[str]) -> list[str]:
        return _open_keys(self.units, self.store.phases(), given_up)

    async def _takeovers(self) -> None:
        """Take over a dead worker's units as soon as their leases run out, even mid-batch."""
        while not await self.clock.wait_for(self.done, max(0.05, min(1.0, self.lease_s / 4))):
            if self.stopping():
                return
            if claimed := await self.store.claim(self.batch, expired_only=True):
                _log.info("taken_over", units=len(claimed), holder=self.store.holder)
                await self._run(claimed, {})

    async def _run(self, claimed: Sequence[Claimed], first: Mapping[str, Any]) -> bool:
        """One batch of claimed units; False when none of them was this worker's to work on."""
        given_up = {k for k, n in self.totals.tries.items() if n >= _GIVE_UP}
        keys = [c.key for c in claimed]
        mine = [k for k in keys if k in self.by_key and k not in given_up]
        if len(mine) < len(keys):
            await self.store.release(set(keys) - set(mine))  # stale, or given up: leave to others
        if not mine:
            return False
        self.totals.tries.update(mine)
        # The claimed units, and the (done) upstream units their requests are built from.
        wanted = set(mine) | {self.by_key[k].upstream for k in mine if self.by_key[k].upstream in self.by_key}
        extra, self._first = (first if self._first else {}), False
        try:
            summary = await self.run_batch([u for u in self.units if u.key in wanted], **extra)
        except* LeaseLostError as group:
            _log.warning("batch_lost", error=str(group.exceptions[0]), units=len(mine))
        else:
            self.totals.add(summary)
        phases = self.store.phases()
        await self.store.release(k for k in mine if phases.get(k) not in SETTLED)
        return True


async def run_shared(
    units: Sequence[WorkUnit],
    *,
    store: SharedStore,
    api: ApiClient,
    layout: OutputLayout,
    downloader: Downloader,
    options: RunOptions,
    clock: Clock,
    batch: int,
    preflight: Callable[[], Awaitable[None]] | None = None,
    provisioner: Provisioner | None = None,
    monitor: Callable[[Callable[[], Snapshot]], None] | None = None,
    output: OutputStore | None = None,
    stop: anyio.Event | None = None,
) -> RunSummary:
    """Work on the run with the other workers until every unit is settled; say what happened.

    ``stop`` (a signal) ends the current batch gracefully and claims no other."""
    started = clock.monotonic()
    lease_s = float(store.lease_s or 60.0)
    await store.sync_units(units)
    store.manifest_keys = frozenset(u.key for u in units)
    stale = len(store.stale_keys(set(store.manifest_keys)))
    # Done units whose files are gone are reopened (one worker checks): see recheck.py.
    recheck = Recheck(store, set(store.manifest_keys), output or LocalOutputStore(layout.root), clock, stop)
    await recheck.start()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_heartbeat, store, lease_s, clock)
        # One request pacer for all batches, its rate learned from 429s shared by the key.
        pacer = SharedPacer(store.limits(store.key_hash), clock=clock) if store.key_hash else None
        paced = api.paced(pacer) if pacer is not None and options.adaptive_rate else api
        statuses = _start_sweeper(tg, store, paced, options, clock, lease_s)

        async def run_batch(subset: Sequence[WorkUnit], **first: Any) -> RunSummary:
            seeds = recorded_seeds(store)  # a regeneration (by any worker) may have drawn new ones
            return await run_pipeline(
                subset, api=api, store=store, layout=layout, downloader=downloader,
                options=dataclasses.replace(options, seeds=seeds), clock=clock, provisioner=provisioner,
                output=output, stop=stop, statuses=statuses, pacer=pacer, **first,
            )  # fmt: skip

        worker = _Worker(
            units, store, run_batch, batch=batch, clock=clock, stop=stop, settled=recheck.settled
        )
        await worker.work({"preflight": preflight, "monitor": monitor})
        tg.cancel_scope.cancel()
    summary = _summary(units, store, worker.totals, api, clock.monotonic() - started, stale)
    return dataclasses.replace(summary, rate_limit_rps=pacer.estimate if pacer is not None else None)


def _summary(
    units: Sequence[WorkUnit], store: SharedStore, totals: _Totals, api: ApiClient, elapsed: float, stale: int
) -> RunSummary:
    """The run as the shared state shows it (every worker reports the same failures), with this
    worker's own counts of submissions, 429s and bytes."""
    records = {r.key: r for r in store.units()}
    phases = {k: r.phase for k, r in records.items()}
    open_keys = set(_open_keys(units, phases, set()))
    failures, left = [], 0
    for u in units:
        rec = records.get(u.key)
        phase = rec.phase if rec else Phase.PENDING
        if phase is Phase.DONE:
            continue
        if totals.stopped is not None and phase is Phase.PENDING:
            left += 1
            continue
        if phase in (Phase.FAILED, Phase.UNKNOWN):
            reason = (rec.last_error if rec else None) or str(phase)
        elif u.key in open_keys:
            reason = "did not finish; rerun to continue"
        else:
            reason = "its upstream step did not finish"
        failures.append(Failure(key=u.key, item_id=u.item_id, step=u.step, index=u.index,
                                phase=str(phase), reason=reason))  # fmt: skip
    return RunSummary(
        counts={str(k): v for k, v in store.counts().items()},
        failures=tuple(failures),
        stopped=totals.stopped,
        submitted=totals.submitted,
        rate_limited=totals.rate_limited,
        downloaded_bytes=totals.downloaded_bytes,
        elapsed_s=elapsed,
        stale=stale,
        left=left,
        requests=dict(api.stats),
    )

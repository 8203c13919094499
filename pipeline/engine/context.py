"""What the stages of one run share: the units, their phases in this run, and how each one ended.

Every stage (submit, watch, reconcile, fetch) holds the same :class:`RunContext`. The context owns
a unit's in-memory phase and moves it only through :mod:`pipeline.state.lifecycle`, so no stage can
invent a state in a set of its own; it also owns the one inbox every stage may feed: the stream of
units ready to submit.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pipeline.api.client import ApiClient
from pipeline.clock import Clock
from pipeline.engine.delivery import WorkUnit
from pipeline.engine.inflight import PostLog
from pipeline.engine.limits import ActiveJobLimit, RequestPacer
from pipeline.engine.provision import Provisioner
from pipeline.engine.statuses import OwnSweeps, StatusSource
from pipeline.engine.tally import Snapshot, Tally
from pipeline.state.lifecycle import Ending, Event, Phase, advance
from pipeline.state.store import StateStore

if TYPE_CHECKING:
    from pipeline.engine.options import RunOptions

__all__ = ["RunContext", "Started", "declared_model"]

_log = structlog.get_logger("pipeline.engine.context")

#: What the progress display shows for a unit in each phase.
_SHOWN = {
    Phase.PENDING: "pending",
    Phase.SUBMITTING: "submitting",
    Phase.SUBMITTED: "running",
    Phase.SUCCEEDED: "downloading",
    Phase.DOWNLOADING: "downloading",
    Phase.DONE: "done",
    Phase.FAILED: "failed",
    Phase.UNKNOWN: "unknown",
    Phase.REJECTED: "done",
    Phase.SUPERSEDED: "pending",
}


def declared_model(unit: WorkUnit) -> str | None:
    """``name`` when the unit's model is ``@name`` (declared under ``models:``)."""
    model = unit.request.get("modelID")
    return model[1:] if isinstance(model, str) and model.startswith("@") else None


@dataclass(slots=True)
class Started:
    """When this run learned a unit's job was running (monotonic), and how often it asked since."""

    at: float
    polls: int = 0


class RunContext:
    """The units of one run and their life in it. Stages read it and move units through it."""

    def __init__(
        self,
        units: Sequence[WorkUnit],
        *,
        api: ApiClient,
        store: StateStore,
        options: RunOptions,
        clock: Clock,
        provisioner: Provisioner | None = None,
        upstreams: Mapping[str, WorkUnit] | None = None,
        stop: anyio.Event | None = None,
        pacer: RequestPacer | None = None,
        statuses: StatusSource | None = None,
    ) -> None:
        self.units: Mapping[str, WorkUnit] = {u.key: u for u in units}
        #: Done upstream units outside this run's set, which chained requests are built from.
        self.upstreams: Mapping[str, WorkUnit] = upstreams or {}
        self.order = [u.key for u in units]
        self.children: dict[str, list[str]] = {}
        for u in units:
            if u.upstream:
                self.children.setdefault(u.upstream, []).append(u.key)
        self.store, self.options, self.clock = store, options, clock
        self.rng = random.Random(options.seed)
        self.active = ActiveJobLimit(options.max_active, clock=clock)
        # Every API request of the run goes through the pacer, which learns the API's rate limit;
        # a proven rate limit also undoes recent job-cap cuts (those 429s were the rate's doing).
        self.pacer = pacer or RequestPacer(clock=clock)
        self.pacer.on_rate_limit = self.active.forgive
        #: Every paid POST from send to record, and the uncertain ones (submit, watch, reconcile);
        #: every answer's ``Date`` bounds the server's clock for their spans.
        self.posts = PostLog(date_window=options.server_date_window_s)
        self.api = api.paced(self.pacer if options.adaptive_rate else None, dates=self.posts.dated)
        self.tally = Tally((u.key, u.step) for u in units)
        self.phase: dict[str, Phase] = {}
        self.settled: dict[str, Ending] = {}
        self.reasons: dict[str, str] = {}  # why a unit ended, where the state records no reason
        self.started: dict[str, Started] = {}
        self.known_jobs: set[str] = set()  # every job id the state holds: never adopted twice
        self.queued: set[str] = set()  # in the ready stream or being submitted: never twice at once
        self.waiting: dict[str, list[str]] = {}  # declared model name -> units waiting for it
        self.remaining = len(units)
        self.finished = anyio.Event()
        self.stop_reason: str | None = None
        self.started_at = clock.monotonic()
        send, recv = anyio.create_memory_object_stream[str](max_buffer_size=len(units) + 1)
        self.ready_send: MemoryObjectSendStream[str] = send
        self.ready_recv: MemoryObjectReceiveStream[str] = recv
        self.provisioner = provisioner
        self.holding: set[str] = set()  # units holding an active-job slot (jobs this run started)
        #: Set by a signal: no new POST; those sent finish and are recorded (see run.py).
        self.stop = stop or anyio.Event()
        #: Job statuses another worker's sweep learned (workers on a shared state; see statuses.py).
        self.statuses: StatusSource = statuses or OwnSweeps()

    # -- phases --------------------------------------------------------------------------------

    def move(self, key: str, event: Event) -> Phase:
        """Apply ``event`` to ``key``'s phase in this run (the lifecycle refuses what it forbids)."""
        phase = advance(self.phase.get(key, Phase.PENDING), event, key=key)
        self.phase[key] = phase
        self.tally.move(key, _SHOWN[phase], self.clock.monotonic())
        return phase

    def resume(self, key: str, phase: Phase) -> None:
        """Start ``key`` in this run from its recorded ``phase``."""
        self.phase[key] = phase
        self.tally.move(key, _SHOWN[phase], self.clock.monotonic())

    def unit(self, key: str) -> WorkUnit:
        """A unit of this run, or a done upstream one."""
        return self.units.get(key) or self.upstreams[key]

    def is_pending(self, key: str) -> bool:
        """Only a pending unit may be sent (see the lifecycle)."""
        return self.phase.get(key, Phase.PENDING) is Phase.PENDING

    def settle(self, key: str, how: Ending) -> None:
        """``key``'s part in this run is over; children that can no longer run end too."""
        if key in self.settled:
            return
        self.settled[key] = how
        self.remaining -= 1
        self.tally.move(key, how.display, self.clock.monotonic())
        if how is not Ending.DONE:
            for child in self.children.get(key, ()):
                self.settle(child, Ending.NOT_STARTED if how is Ending.NOT_STARTED else Ending.BLOCKED)
        if self.remaining <= 0:
            self.finished.set()

    # -- the ready stream ------------------------------------------------------------------------

    def enqueue(self, key: str) -> None:
        """Put ``key`` in the ready stream unless it is there already, being sent, or not pending.

        A unit whose model is declared under ``models:`` waits until that model is ready.
        """
        if key in self.settled or key in self.queued or not self.is_pending(key):
            return
        name = declared_model(self.units[key])
        if name and (self.provisioner is None or self.provisioner.ready_model(name) is None):
            waiting = self.waiting.setdefault(name, [])
            if key not in waiting:
                waiting.append(key)
            return
        self.queued.add(key)
        self.ready_send.send_nowait(key)

    def release_children(self, key: str) -> None:
        """``key`` has outputs: the steps made from them may go."""
        for child in self.children.get(key, ()):
            self.enqueue(child)

    async def take_slot(self, key: str) -> None:
        """Wait for an active-job slot for ``key`` (the adaptive cap of the API's running jobs)."""
        await self.active.acquire()
        self.holding.add(key)

    def drop_slot(self, key: str) -> None:
        """Give back ``key``'s slot, if it holds one (jobs resumed from an earlier run do not)."""
        if key in self.holding:
            self.holding.discard(key)
            self.active.release()

    def stopping(self) -> bool:
        """No new POST may leave: the run stops submitting (quota, budget, time, a signal)."""
        return self.stop_reason is not None or self.stop.is_set()

    def stop_submitting(self, reason: str) -> None:
        """No new POSTs from now on; in-flight jobs are still polled and downloaded."""
        if self.stop_reason is None:
            self.stop_reason = reason
            _log.warning("submissions_stopped", reason=reason)

    def backoff(self, attempt: int) -> float:
        """A full-jitter pause (the retry policy's) before trying ``attempt`` again."""
        return self.options.retry.backoff(attempt, self.rng)

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

    def close(self) -> None:
        self.ready_send.close()
        self.ready_recv.close()

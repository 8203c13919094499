"""A shared run's start-up file check: what engine/diff.py does for a single run, done once for all.

On a single run every done unit's recorded outputs are checked in the output store (size
included) and a missing or resized file is fetched again from its job, never paid again. Workers
of a shared run claim only unfinished units, so without this a done unit whose file was deleted,
lost with a pod's empty volume, or rolled back by a restored backup would stay missing. One
worker at a time checks (:class:`~pipeline.state.pgchecks.OutputChecks`: why one and not a split,
and when a check counts for a worker that joins later); it reopens what is missing (``done`` →
``succeeded`` through the lifecycle's ``files_missing``), and any worker claims those units and
downloads their outputs again from the job.

Each worker tries at start: the first to get the turn checks, the others go straight to work.
Before a worker exits it asks again: it waits while a check is running (the check may reopen
units) and does the check itself if the one that started never finished (its worker died, or
was stopped by a signal, which ends a check between two pages).
"""

from __future__ import annotations

from collections.abc import Set

import anyio
import structlog

from pipeline.clock import Clock
from pipeline.output.local import LocalOutputStore
from pipeline.output.store import OutputStore
from pipeline.state.pgchecks import CheckTurn, DoneOutput, Turn
from pipeline.state.postgres import PostgresStore
from pipeline.state.records import rfc3339

__all__ = ["Recheck"]

_log = structlog.get_logger("pipeline.engine.recheck")
_PAGE = 2000  # done units per query and per reopening transaction
_LOOKS = 16  # stats (HEAD requests on a bucket) confirming misses at once


class Recheck:
    """The file check of one worker of a shared run over the manifest's ``keys``."""

    def __init__(
        self, store: PostgresStore, keys: Set[str], output: OutputStore, clock: Clock,
        stop: anyio.Event | None = None,
    ) -> None:  # fmt: skip
        self._checks = store.output_checks()
        self._keys, self._output, self._clock, self._stop = keys, output, clock, stop
        self._looks = anyio.CapacityLimiter(_LOOKS)

    async def start(self) -> Turn:
        """Check now if it is this worker's turn; otherwise leave it to the one checking."""
        async with self._checks.turn() as turn:
            if turn.turn is Turn.MINE:
                await self._check(turn)
        return turn.turn

    async def settled(self) -> bool:
        """Whether this worker may exit as far as the check goes: no check running, one counted,
        and nothing reopened by a check this call ran (reopened units are work to claim)."""
        async with self._checks.turn() as turn:
            if turn.turn is Turn.MINE:
                await self._check(turn)
        return turn.turn is Turn.COUNTED or (turn.turn is Turn.MINE and turn.reopened == 0)

    async def _check(self, turn: CheckTurn) -> None:
        """Every done unit's outputs against the output store, a page at a time; reopen the missing."""
        after = ""
        while page := await self._checks.page(after, _PAGE):
            if self._stop is not None and self._stop.is_set():
                turn.complete = False  # a signal: stop here; the next worker checks it all
                return
            after = page[-1].key
            missing = await self._missing(page)
            turn.checked += len({o.key for o in page})
            if missing:
                moved = await self._checks.reopen(missing, now=rfc3339(self._clock.now()))
                turn.reopened += len(moved)
        if turn.reopened:
            _log.warning("outputs_missing", reopened=turn.reopened, checked=turn.checked,
                         where=self._output.location)  # fmt: skip
        else:
            _log.info("outputs_checked", checked=turn.checked)

    async def _missing(self, page: list[DoneOutput]) -> dict[str, list[int]]:
        """Units of the manifest with an output not in the store at its recorded size, with those
        outputs' numbers (a done unit with no output recorded at all too, as diff.py does).

        ``present`` is the cheap look: a stat for a folder (final), for a bucket the listing made
        at open, which does not see what other workers published since, so a miss there is
        confirmed with a HEAD (several at once)."""
        missing: dict[str, list[int]] = {}
        doubtful: list[DoneOutput] = []
        for out in page:
            if out.key not in self._keys:
                continue  # stale: not this manifest's, kept as it is
            if out.n is None or out.path is None:
                missing.setdefault(out.key, []).extend([] if out.n is None else [out.n])
            elif not self._output.present(out.path, out.bytes):
                doubtful.append(out)
        gone: list[DoneOutput] = []
        if isinstance(self._output, LocalOutputStore):
            gone = doubtful  # a folder's stat is final
        else:
            async with anyio.create_task_group() as tg:
                for out in doubtful:
                    tg.start_soon(self._confirm, out, gone)
        for out in sorted(gone, key=lambda o: (o.key, o.n or 0)):
            missing.setdefault(out.key, []).append(out.n or 0)
        return missing

    async def _confirm(self, out: DoneOutput, gone: list[DoneOutput]) -> None:
        assert out.path is not None
        async with self._looks:
            found = await self._output.stat(out.path)
        if found is None or found.bytes != out.bytes:
            gone.append(out)

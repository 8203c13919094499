"""When a worker of a shared run may exit (engine/cooperate.py, ``_Worker.work``).

A worker exits once nothing is left to claim and the start-up file check is settled. Another
worker's check can reopen done units (their files are gone) while this one waits for its turn;
the exit must see those units, or the worker reports them as "did not finish" and exits 1 while
they are being fetched again (seen in CI, tests/test_shared_resume.py). No database here: a fake
store whose phases the check changes, as the real one's commit does before the turn is counted."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.clock import FakeClock
from pipeline.engine.cooperate import _Worker
from pipeline.engine.options import RunSummary
from pipeline.state.pgclaims import Claimed
from pipeline.state.records import Phase


@dataclass(frozen=True)
class _Unit:
    key: str
    upstream: str | None = None


class _Store:
    """Claims nothing while another worker holds the reopened units; they finish after a while."""

    lease_s = 4.0
    holder = "me"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.phase = {"a": Phase.DONE, "b": Phase.DONE}
        self.done_at: float | None = None

    async def claim(self, limit: int, *, expired_only: bool = False) -> list[Claimed]:
        return []

    def phases(self) -> dict[str, Phase]:
        if self.done_at is not None and self.clock.monotonic() >= self.done_at:
            self.phase["b"] = Phase.DONE  # the other worker fetched it again
        return dict(self.phase)

    async def release(self, keys: Iterable[str]) -> None:
        return None


async def test_a_unit_reopened_while_waiting_for_the_check_keeps_the_worker() -> None:
    """This worker read every unit done, then waited for the check's turn; the check (another
    worker's) reopened ``b`` and finished. The worker stays until ``b`` is done again."""
    clock = FakeClock()
    store = _Store(clock)
    asked: list[float] = []

    async def settled() -> bool:
        asked.append(clock.monotonic())
        if len(asked) == 1:  # the other worker's check: reopens b, counted by the time we ask
            store.phase["b"] = Phase.SUCCEEDED
            store.done_at = clock.monotonic() + 10.0
        return True

    async def run_batch(subset: Sequence[Any], **first: Any) -> RunSummary:
        raise AssertionError("nothing was claimed")

    units = [_Unit("a"), _Unit("b")]
    worker = _Worker(units, store, run_batch, batch=10, clock=clock, stop=None, settled=settled)  # type: ignore[arg-type]
    await worker.work({})
    assert store.phase["b"] is Phase.DONE, "the worker left while a reopened unit was still open"
    assert clock.monotonic() >= 10.0
    assert len(asked) >= 2, "the check is asked again once the reopened unit is done"

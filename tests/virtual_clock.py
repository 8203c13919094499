"""A virtual-time clock for tests with many concurrent sleepers.

``FakeClock.sleep(s)`` moves time forward by ``s`` at once, which is right for
one sleeper and wrong for many: two tasks that each sleep 1 s end at t=2, not
t=1. :class:`VirtualClock` keeps a queue of sleepers instead and, inside
:meth:`VirtualClock.autojump`, jumps to the earliest wake-up only when every
task is blocked (trio's ``MockClock(autojump_threshold=0)``). It lives with the
tests, not in ``pipeline.clock``, because it reads asyncio's private ready queue.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncIterator, Sized
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from pipeline.lane import Lane

__all__ = ["VirtualClock"]


@dataclass(order=True)
class _Sleeper:
    due: float
    seq: int
    wake: anyio.Event = field(compare=False)
    abandoned: bool = field(default=False, compare=False)


class VirtualClock:
    """Virtual time that passes only when asked to, or when every task is waiting on it.

    ``sleep`` blocks until the clock reaches its due time. Time moves by
    :meth:`advance` (by hand) or automatically inside ``async with clock.autojump():``.
    Sleepers due at the same instant wake in the order they started sleeping.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._elapsed = 0.0
        self._sleepers: list[_Sleeper] = []
        self._seq = 0
        self._new_sleeper = anyio.Event()

    def monotonic(self) -> float:
        return self._elapsed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        sleeper = self._register(seconds)
        try:
            await sleeper.wake.wait()
        finally:
            sleeper.abandoned = True  # cancelled sleepers must not drag time forward

    async def wait_for(self, event: anyio.Event, seconds: float) -> bool:
        if event.is_set() or seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return event.is_set()
        sleeper = self._register(seconds)

        async def watch() -> None:
            await event.wait()
            sleeper.wake.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            try:
                await sleeper.wake.wait()
            finally:
                sleeper.abandoned = True
                tg.cancel_scope.cancel()
        return event.is_set()

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper now due."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._jump_to(self._elapsed + seconds)

    @asynccontextmanager
    async def autojump(self) -> AsyncIterator[None]:
        """Within the block, jump to the next wake-up whenever all tasks are blocked.

        Tasks may also wait on ``anyio.to_thread.run_sync`` or a :class:`~pipeline.lane.Lane`
        (wrapped here to count as busy)
        and on loopback sockets
        (answered within the same turn of the loop); any other pending real I/O does not
        count as "busy", so time would jump past it.
        """
        threads = _Threads(anyio.to_thread.run_sync)
        anyio.to_thread.run_sync = threads.run_sync  # every call site looks it up on the module
        lane_wait = Lane._wait  # the lanes' hops (state commits, publications) are busy too

        async def tracked_lane_wait(lane: Lane, job: Any) -> Any:
            return await threads.track(lane_wait, lane, job)

        Lane._wait = tracked_lane_wait  # type: ignore[method-assign,assignment]
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._drive, threads)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            anyio.to_thread.run_sync = threads.real
            Lane._wait = lane_wait  # type: ignore[method-assign]

    def _register(self, seconds: float) -> _Sleeper:
        self._seq += 1
        sleeper = _Sleeper(self._elapsed + seconds, self._seq, anyio.Event())
        heapq.heappush(self._sleepers, sleeper)
        self._new_sleeper.set()
        return sleeper

    def _jump_to(self, when: float) -> None:
        self._elapsed = max(self._elapsed, when)
        while self._sleepers and self._sleepers[0].due <= self._elapsed:
            heapq.heappop(self._sleepers).wake.set()

    def _next_due(self) -> float | None:
        while self._sleepers and self._sleepers[0].abandoned:
            heapq.heappop(self._sleepers)
        return self._sleepers[0].due if self._sleepers else None

    async def _drive(self, threads: _Threads) -> None:
        while True:
            await _wait_until_idle(threads)
            due = self._next_due()
            if due is None:
                self._new_sleeper = anyio.Event()
                await self._new_sleeper.wait()
            else:
                self._jump_to(due)


class _Threads:
    """``anyio.to_thread.run_sync`` counting the calls in progress, with an event set when none is."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.busy = 0
        self.idle = anyio.Event()
        self.idle.set()

    async def run_sync(self, *args: Any, **kwargs: Any) -> Any:
        return await self.track(self.real, *args, **kwargs)

    async def track(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """``await call(*args, **kwargs)``, counted as busy while it runs."""
        if not self.busy:
            self.idle = anyio.Event()
        self.busy += 1
        try:
            return await call(*args, **kwargs)
        finally:
            self.busy -= 1
            if not self.busy:
                self.idle.set()


async def _wait_until_idle(threads: _Threads) -> None:
    """Yield until no other callback is ready to run and no worker thread is busy.

    asyncio exposes no public "all tasks blocked" test; the loop's ready queue
    is the exact answer, so it is read when present (CPython's loop); a fixed
    number of yields stands in elsewhere (uvloop). A task waiting on a worker
    thread (file writes, fsync, SQLite commits) is busy, not waiting on the
    clock: while any is, time stands still.
    """
    while True:
        await anyio.lowlevel.checkpoint()
        ready: Sized | None = getattr(asyncio.get_running_loop(), "_ready", None)
        if ready is None:
            for _ in range(100):
                await anyio.lowlevel.checkpoint()
        else:
            while len(ready):  # noqa: ASYNC110 - no event says "the loop is idle"
                await asyncio.sleep(0)
        if not threads.busy:
            return
        await threads.idle.wait()

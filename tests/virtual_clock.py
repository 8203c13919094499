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

import anyio
import anyio.lowlevel

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

        Only for tests whose tasks wait on nothing but this clock and each other:
        pending real I/O does not count as "busy", so time would jump past it.
        """
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._drive)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

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

    async def _drive(self) -> None:
        while True:
            await _wait_until_idle()
            due = self._next_due()
            if due is None:
                self._new_sleeper = anyio.Event()
                await self._new_sleeper.wait()
            else:
                self._jump_to(due)


async def _wait_until_idle() -> None:
    """Yield until no other callback is ready to run.

    asyncio exposes no public "all tasks blocked" test; the loop's ready queue
    is the exact answer, so it is read when present (CPython's loop); a fixed
    number of yields stands in elsewhere (uvloop).
    """
    await anyio.lowlevel.checkpoint()
    ready: Sized | None = getattr(asyncio.get_running_loop(), "_ready", None)
    if ready is None:
        for _ in range(100):
            await anyio.lowlevel.checkpoint()
        return
    while len(ready):
        await anyio.lowlevel.checkpoint()

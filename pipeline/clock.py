"""Time as a dependency: every module that waits or timestamps takes a ``Clock``.

Tests pass a :class:`FakeClock` and advance it by hand, so no test sleeps for
real and no test depends on the machine being fast (aiolimiter patches
``loop.time``; we inject instead).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio
import anyio.lowlevel

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Monotonic time for intervals, wall time for timestamps, and a way to wait."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def now(self) -> datetime:
        """The current UTC time (aware)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...

    async def wait_for(self, event: anyio.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` pass; return whether it is set."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    async def wait_for(self, event: anyio.Event, seconds: float) -> bool:
        with anyio.move_on_after(max(0.0, seconds)):
            await event.wait()
        return event.is_set()


class FakeClock:
    """A clock that only moves when told to.

    ``sleep`` advances the clock by the requested amount and yields once to the
    event loop, so code that sleeps runs instantly yet sees time pass in order.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._elapsed = 0.0

    def monotonic(self) -> float:
        return self._elapsed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._elapsed += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await anyio.lowlevel.checkpoint()

    async def wait_for(self, event: anyio.Event, seconds: float) -> bool:
        """Let other tasks run once; if the event is still unset, the whole wait passes."""
        await anyio.lowlevel.checkpoint()
        if not event.is_set():
            self.advance(max(0.0, seconds))
        return event.is_set()

"""When to poll which job: one due-time queue for every job, and a policy that learns durations.

A sleeping loop per job (fal, Replicate) wakes thousands of coroutines to ask
"done yet?" at a fixed interval. Instead every submitted job sits in one heap
ordered by the time it is next worth asking about. The first poll of a job comes
after the typical duration of its kind (learned from the jobs this run has seen
finish, seeded by a configured guess), later polls back off geometrically, and a
job past its deadline is handed back to the caller, never resubmitted.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

import anyio

from pipeline.clock import Clock

__all__ = ["DueQueue", "DurationEstimator", "PollPolicy"]

T = TypeVar("T")


def _frozen(d: dict[str, float]) -> Mapping[str, float]:
    return MappingProxyType(d)


@dataclass(frozen=True, kw_only=True)
class PollPolicy:
    """How patiently to poll, per job kind (``image``, ``upscale``, ``video``).

    ``first_s`` is the guess for a kind's typical duration until real durations are
    known; ``min_interval_s``/``max_interval_s`` bound the gap between polls;
    ``deadline_s`` is how long a job may run before this run stops waiting for it.
    The defaults follow the reference: images take ~30–90 s, videos minutes.
    """

    first_s: Mapping[str, float] = field(
        default_factory=lambda: _frozen({"image": 20.0, "upscale": 15.0, "video": 60.0})
    )
    min_interval_s: float = 1.0
    max_interval_s: float = 30.0
    backoff: float = 1.5
    deadline_s: Mapping[str, float] = field(
        default_factory=lambda: _frozen({"image": 900.0, "upscale": 900.0, "video": 2700.0})
    )
    #: Which quantile of observed durations to aim the first poll at: high enough that
    #: most jobs are finished when first asked, so the average stays near one poll per job.
    quantile: float = 0.85

    def __post_init__(self) -> None:
        if not 0 < self.min_interval_s <= self.max_interval_s:
            raise ValueError("poll intervals need 0 < min_interval_s <= max_interval_s")
        if self.backoff < 1:
            raise ValueError("poll backoff must be >= 1")

    @classmethod
    def fast(cls) -> PollPolicy:
        """For the sandbox's fast profile: sub-second jobs, short deadlines."""
        return cls(
            first_s=_frozen({"image": 0.3, "upscale": 0.3, "video": 0.5}),
            min_interval_s=0.05,
            max_interval_s=1.0,
            deadline_s=_frozen({"image": 120.0, "upscale": 120.0, "video": 300.0}),
        )


class DurationEstimator:
    """Learns how long jobs of each kind take, to aim the first poll just after most finish."""

    def __init__(self, policy: PollPolicy, *, window: int = 200) -> None:
        self._policy = policy
        self._seen: dict[str, deque[float]] = {}
        self._window = window

    def observe(self, kind: str, seconds: float) -> None:
        """Record that a job of ``kind`` was seen finished ``seconds`` after submission."""
        self._seen.setdefault(kind, deque(maxlen=self._window)).append(max(0.0, seconds))

    def first_delay(self, kind: str) -> float:
        """Seconds from submission to the first poll."""
        seen = self._seen.get(kind)
        if not seen or len(seen) < 5:
            return self._policy.first_s.get(kind, self._policy.first_s.get("image", 10.0))
        ordered = sorted(seen)
        pick = ordered[min(len(ordered) - 1, int(self._policy.quantile * len(ordered)))]
        return max(self._policy.min_interval_s, pick)

    def next_delay(self, kind: str, elapsed: float, polls: int) -> float:
        """Seconds until the next poll of a job that was still running after ``polls`` polls."""
        base = max(self._policy.min_interval_s, 0.25 * self.first_delay(kind))
        return float(min(self._policy.max_interval_s, base * self._policy.backoff ** max(0, polls - 1)))


class DueQueue(Generic[T]):
    """A heap of items keyed by the clock time at which they fall due.

    ``pop_due`` waits, on the injected clock, until the earliest item is due or
    an earlier one is pushed, then returns every item that is due.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._changed = anyio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, item: T, due: float) -> None:
        """Schedule ``item`` at monotonic clock time ``due``."""
        heapq.heappush(self._heap, (due, next(self._seq), item))
        self._changed.set()

    async def pop_due(self, idle_s: float = 1.0) -> list[T]:
        """Every item due now; waits for one (at most ``idle_s`` when the queue is empty)."""
        while True:
            now = self._clock.monotonic()
            if self._heap and self._heap[0][0] <= now:
                due: list[T] = []
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
                return due
            wait = self._heap[0][0] - now if self._heap else idle_s
            self._changed = anyio.Event()
            if not await self._clock.wait_for(self._changed, wait) and not self._heap:
                return []

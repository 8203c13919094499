"""When to poll which job: one due-time queue for every job, and a policy that learns durations.

A sleeping loop per job (fal, Replicate) wakes thousands of coroutines to ask
"done yet?" at a fixed interval. Instead every submitted job sits in one heap
ordered by the time it is next worth asking about. A job is polled at a few
quantiles of the durations of its kind (learned from the jobs this run has seen
finish, seeded by a configured guess): most jobs are done at the first, nearly all
by the last; past the longest seen, polls back off geometrically, and a job past
its deadline is handed back to the caller, never resubmitted.

Learning from our own polls has a trap: a job seen done at its first poll only
proves it took *at most* that long, so the quantiles of "time seen done" can only
grow, and a first poll once too late stays too late (every job is then seen done at
it). The estimator therefore records, for a job seen done at poll k, a duration
drawn uniformly between polls k-1 and k of the schedule: the learned distribution
then matches the true one at every poll time, wherever the schedule starts.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Mapping, Sequence
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
    #: Which quantile of learned durations to aim the first poll at: most jobs are done
    #: when first asked. A job still running is asked again at each of ``later_quantiles``,
    #: then with geometric backoff. (0.75, 0.95, 1.0) costs about 1.4 polls per job and
    #: holds a finished job's slot about a quarter of the duration spread; the single
    #: poll at 0.85 this replaces held it about two thirds of the spread.
    quantile: float = 0.75
    later_quantiles: tuple[float, ...] = (0.95, 1.0)
    #: When statuses come from the job list (:mod:`pipeline.engine.sweep`), how often to list, as a
    #: share of a kind's typical duration: 0.1 holds a finished job's slot about 5 % longer
    #: than the job ran, for a page or two per sweep.
    sweep_fraction: float = 0.1
    #: Fewer jobs than this in flight: each is polled alone. A sweep costs a request however
    #: few jobs it covers, so for a handful (a cron run picking up a few new units) the
    #: quantile schedule is cheaper; the list pays off once many jobs share each page.
    sweep_min_jobs: int = 8
    #: Once durations and the list's page size are known, a sweep reads one page, of the jobs most
    #: likely to have finished, as soon as it is expected to show this many finished (see
    #: :mod:`pipeline.engine.sweep_plan`): requests per job ~ 1/sweep_finds in list pages, and a
    #: finished job waits about sweep_finds / (2 × jobs finishing per second) to be seen.
    sweep_finds: float = 3.75
    #: With nothing left waiting for a slot, only the run's end waits on the last job: list the few
    #: left at most this often (a share of the typical duration).
    tail_sweep_fraction: float = 0.025
    #: Jobs a job-list page is asked to hold (``pageSize``; None: the server's default). The
    #: reference documents ``pageSize`` for model images only: for ``GET /jobs`` it is inferred. A
    #: server that ignores it still works (the page size is learned from the pages), one that
    #: refuses it (400) is asked without it from then on. One page over every job likely to have
    #: finished (64 in flight, as many finished still listed) halves what a sweep costs.
    list_page_size: int | None = 100

    def __post_init__(self) -> None:
        if not 0 < self.min_interval_s <= self.max_interval_s:
            raise ValueError("poll intervals need 0 < min_interval_s <= max_interval_s")
        if self.backoff < 1:
            raise ValueError("poll backoff must be >= 1")
        points = (self.quantile, *self.later_quantiles)
        if not all(0 < q <= 1 for q in points) or list(points) != sorted(set(points)):
            raise ValueError("poll quantiles must increase strictly within (0, 1]")
        if not 0 < self.sweep_fraction <= 1:
            raise ValueError("sweep_fraction must be within (0, 1]")
        if self.sweep_min_jobs < 1:
            raise ValueError("sweep_min_jobs must be at least 1")
        if self.list_page_size is not None and self.list_page_size < 1:
            raise ValueError("list_page_size must be at least 1")
        if self.sweep_finds <= 0 or not 0 < self.tail_sweep_fraction <= self.sweep_fraction:
            raise ValueError("need sweep_finds > 0 and 0 < tail_sweep_fraction <= sweep_fraction")

    @classmethod
    def fast(cls) -> PollPolicy:
        """For the sandbox's fast profile: sub-second jobs, short deadlines."""
        return cls(
            first_s=_frozen({"image": 0.3, "upscale": 0.3, "video": 0.5}),
            min_interval_s=0.05,
            max_interval_s=1.0,
            deadline_s=_frozen({"image": 120.0, "upscale": 120.0, "video": 300.0}),
        )


#: ``(at, enough=inf)`` → the finished odds of some jobs summed at ``at`` (see ``odds_sum``).
OddsSum = Callable[..., float]


class DurationEstimator:
    """Learns how long jobs of each kind take, and when to poll a job so that it is seen done soon
    after it finishes at a bounded number of polls (see the module docstring)."""

    #: Observations needed before the learned schedule replaces the configured guess.
    MIN_SAMPLES = 5

    def __init__(self, policy: PollPolicy, *, window: int = 200, seed: int | None = 0) -> None:
        self._policy = policy
        self._seen: dict[str, deque[float]] = {}
        self._window = window
        self._rng = random.Random(seed)
        self._points_cache: dict[str, list[float]] = {}
        self._sorted_cache: dict[str, list[float]] = {}

    def observe(self, kind: str, seconds: float) -> None:
        """Record that a job of ``kind`` was seen finished ``seconds`` after submission."""
        seconds = max(0.0, seconds)
        polls = [p for p in self._schedule(kind, seconds) if p <= seconds]
        lower = polls[-2] if len(polls) >= 2 else 0.0  # it was still running then
        drawn = self._rng.uniform(lower, seconds) if lower < seconds else seconds
        self._seen.setdefault(kind, deque(maxlen=self._window)).append(drawn)
        self._points_cache.pop(kind, None)
        self._sorted_cache.pop(kind, None)

    def observe_between(self, kind: str, low: float, high: float) -> None:
        """Record a job of ``kind`` that was running ``low`` s after submission and done at ``high``."""
        low, high = max(0.0, low), max(0.0, high)
        drawn = self._rng.uniform(low, high) if low < high else high
        self._seen.setdefault(kind, deque(maxlen=self._window)).append(drawn)
        self._points_cache.pop(kind, None)
        self._sorted_cache.pop(kind, None)

    def finished_odds(self, kind: str, running: float, now: float) -> float | None:
        """How likely a job of ``kind`` seen running ``running`` s after submission is done ``now`` s
        after it (by the learned durations; ``None`` until enough are seen).

        A job that outlived all but a few of the durations seen says little about when it ends
        (early in a run only the quick jobs have finished): its odds grow by a sweep interval."""
        ordered = self._ordered(kind)
        if ordered is None:
            return None
        n, low = len(ordered), bisect_right(ordered, running)
        if n - low < 3:
            return min(1.0, max(0.0, now - running) / self.sweep_interval({kind}))
        return max(0, bisect_right(ordered, now) - low) / (n - low)

    def odds_sum(self, kind: str, jobs: Sequence[tuple[float, float]]) -> OddsSum | None:
        """``at`` → Σ :meth:`finished_odds` of ``jobs`` (``(submitted, seen running)`` monotonic times)
        at ``at``, the same sum term for term; what depends on the jobs alone is worked out once,
        because a page plan evaluates it a dozen times (``None`` until enough are seen). With
        ``enough``, the sum stops once it reaches that (every term is ≥ 0: the same verdict)."""
        ordered = self._ordered(kind)
        if ordered is None:
            return None
        n, interval = len(ordered), self.sweep_interval({kind})
        terms = [(since, running - since, bisect_right(ordered, running - since)) for since, running in jobs]

        def total(at: float, enough: float = math.inf) -> float:
            odds = 0.0
            for since, running, low in terms:
                now = at - since
                if n - low < 3:
                    odds += min(1.0, max(0.0, now - running) / interval)
                else:
                    odds += max(0, bisect_right(ordered, now) - low) / (n - low)
                if odds >= enough:
                    break
            return odds

        return total

    def _ordered(self, kind: str) -> list[float] | None:
        """The durations seen, sorted (cached until the next one), or ``None`` while too few."""
        ordered = self._sorted_cache.get(kind)
        if ordered is None:
            seen = self._seen.get(kind)
            if not seen or len(seen) < self.MIN_SAMPLES:
                return None
            ordered = self._sorted_cache[kind] = sorted(seen)
        return ordered

    def learned(self, kind: str) -> int:
        """How many durations of ``kind`` the estimator holds."""
        return len(self._seen.get(kind, ()))

    def typical(self, kind: str) -> float:
        """The median duration of ``kind`` (the configured guess until enough are seen)."""
        ordered = self._ordered(kind)
        return ordered[len(ordered) // 2] if ordered is not None else self._guess(kind)

    def earliest(self, kind: str) -> float:
        """Seconds after submission before which a job of ``kind`` is unlikely to be done."""
        seen = self._seen.get(kind)
        if seen and len(seen) >= self.MIN_SAMPLES:
            return 0.9 * min(seen)
        return 0.5 * self._guess(kind)

    def overdue(self, kind: str) -> float:
        """Seconds after which a job the job list still shows running is asked about directly
        (a list served from a stale cache must not hold a finished job until its deadline)."""
        seen = self._seen.get(kind)
        learned = seen is not None and len(seen) >= self.MIN_SAMPLES
        typical = self.typical(kind) if learned else 10.0 * self._guess(kind) / 3.0  # a guess: be patient
        return max(3.0 * typical, 10 * self._policy.min_interval_s)

    def sweep_interval(self, kinds: set[str]) -> float:
        """Seconds between two listings of the jobs of ``kinds`` (see :mod:`pipeline.engine.sweep`)."""
        policy = self._policy
        typical = min((self.typical(k) for k in kinds), default=policy.max_interval_s)
        return min(policy.max_interval_s, max(policy.min_interval_s, policy.sweep_fraction * typical))

    def tail_interval(self, kinds: set[str]) -> float:
        """Seconds between two listings once no unit waits for a slot (see ``tail_sweep_fraction``)."""
        typical = min((self.typical(k) for k in kinds), default=self._policy.max_interval_s)
        return min(self.sweep_interval(kinds), self._policy.tail_sweep_fraction * typical)

    def _guess(self, kind: str) -> float:
        return self._policy.first_s.get(kind, self._policy.first_s.get("image", 10.0))

    def first_delay(self, kind: str) -> float:
        """Seconds from submission to the first poll."""
        points = self._points(kind)
        return points[0] if points else self._guess(kind)

    def next_delay(self, kind: str, elapsed: float, polls: int) -> float:
        """Seconds until the next poll of a job that was still running after ``polls`` polls."""
        points = self._points(kind)
        policy = self._policy
        for point in points:
            if point > elapsed + policy.min_interval_s / 2:
                return max(policy.min_interval_s, point - elapsed)
        beyond = polls - len(points) if points else polls - 1
        base = max(policy.min_interval_s, 0.25 * self.first_delay(kind))
        return float(min(policy.max_interval_s, base * policy.backoff ** max(0, beyond)))

    def _points(self, kind: str) -> list[float]:
        """The learned poll times (seconds after submission), or [] while still guessing."""
        cached = self._points_cache.get(kind)
        if cached is not None:
            return cached
        seen = self._seen.get(kind)
        points: list[float] = []
        if seen and len(seen) >= self.MIN_SAMPLES:
            ordered, floor = sorted(seen), self._policy.min_interval_s
            for q in (self._policy.quantile, *self._policy.later_quantiles):
                value = max(floor, ordered[min(len(ordered) - 1, int(q * len(ordered)))])
                if not points or value >= points[-1] + floor:
                    points.append(value)
        self._points_cache[kind] = points
        return points

    def _schedule(self, kind: str, until: float) -> list[float]:
        """The poll times the current schedule gives a job, up to the first at or after ``until``."""
        at, polls = self.first_delay(kind), 1
        times = [at]
        while at < until and polls < 1000:
            at += self.next_delay(kind, at, polls)
            polls += 1
            times.append(at)
        return times


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

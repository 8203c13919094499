"""Retry edges that mutation testing (``scripts/mutation``) found unguarded.

Each test pins a boundary a user relies on: a policy that is allowed, a backoff that
grows, a deadline that is met exactly, a short Retry-After that is still honoured.
A clock that never sleeps for real, and an RNG that always jitters to the ceiling, make
every wait exact.
"""

from __future__ import annotations

import random

import pytest

from pipeline.clock import FakeClock
from pipeline.engine.retry import RetryPolicy, retrying
from pipeline.errors import RateLimitedError, ServerError


class CeilingRng(random.Random):
    """Full jitter always at its upper bound, so a backoff is exactly its ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class RecordingClock(FakeClock):
    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


class Failing:
    """An operation that fails with a fresh 503 ``times`` times, then returns ``"ok"``."""

    def __init__(self, times: int) -> None:
        self.left = times
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            raise ServerError("boom", status=503)
        return "ok"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"deadline_s": 0.5},
        {"deadline_s": 1.0},
        {"retry_after_cap_s": 0.0},
        {"retry_after_cap_s": 0.5},
        {"base_s": 0.0, "cap_s": 0.0},
        {"max_attempts": 1},
    ],
)
def test_small_but_valid_policies_are_accepted(kwargs: dict[str, float]) -> None:
    """A sub-second deadline, a zero Retry-After cap (ignore the hint), one attempt: all legal."""
    policy = RetryPolicy(**kwargs)  # type: ignore[arg-type]
    for key, value in kwargs.items():
        assert getattr(policy, key) == value


def test_the_backoff_ceiling_doubles_up_to_the_cap() -> None:
    """Ceilings base·2^n: 0.5, 1, 2, 4, 8, then the cap of 10 for good."""
    policy = RetryPolicy(base_s=0.5, cap_s=10.0, max_attempts=8)
    assert list(policy.delays(CeilingRng())) == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


async def test_the_deadline_counts_from_the_first_attempt_not_from_clock_zero() -> None:
    """On a clock that has been running for an hour, a 10 s deadline still allows its retries."""
    clock = RecordingClock()
    clock.advance(3600.0)
    op = Failing(2)
    policy = RetryPolicy(base_s=1.0, cap_s=1.0, deadline_s=10.0)
    assert await retrying(op, policy=policy, clock=clock, rng=CeilingRng()) == "ok"
    assert (op.calls, clock.sleeps) == (3, [1.0, 1.0])


async def test_a_backoff_ending_exactly_at_the_deadline_is_still_taken() -> None:
    """Deadline 3 s, 1 s backoffs, instant attempts at t=0, 1, 2, 3: the retry at t=3 happens."""
    clock = RecordingClock()
    op = Failing(10)
    policy = RetryPolicy(base_s=1.0, cap_s=1.0, max_attempts=100, deadline_s=3.0)
    with pytest.raises(ServerError, match="boom") as caught:
        await retrying(op, policy=policy, clock=clock, rng=CeilingRng())
    assert op.calls == 4
    assert clock.monotonic() == 3.0
    assert "gave up after 4 attempt(s)" in caught.value.__notes__[0]


async def test_a_sub_second_retry_after_longer_than_the_backoff_is_honoured() -> None:
    """Retry-After 0.5 s against a 0.1 s backoff: the server's half second is waited."""
    clock = RecordingClock()

    async def op() -> str:
        if not clock.sleeps:
            raise RateLimitedError("slow down", status=429, retry_after_s=0.5)
        return "ok"

    policy = RetryPolicy(base_s=0.1, cap_s=0.1)
    assert await retrying(op, policy=policy, clock=clock, rng=CeilingRng()) == "ok"
    assert clock.sleeps == [0.5]

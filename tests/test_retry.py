"""Retry schedule maths and the retry loop, on a FakeClock: exact sleeps, no real waiting."""

from __future__ import annotations

import asyncio
import math
import random
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.clock import FakeClock
from pipeline.engine.retry import RetryPolicy, outcome_is_known, retrying
from pipeline.errors import (
    ApiError,
    AuthError,
    ConnectTimeoutError,
    IntegrityError,
    NotFoundError,
    ProtocolError,
    QuotaExhaustedError,
    RateLimitedError,
    RejectedError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)


class RecordingClock(FakeClock):
    """A FakeClock that remembers every sleep."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


class Flaky:
    """An operation that raises the given errors in turn, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _server_error() -> ServerError:
    return ServerError("boom", status=503)


def _caused(outer: ApiError, cause: BaseException) -> ApiError:
    outer.__cause__ = cause
    return outer


class TestDelays:
    @given(
        base=st.floats(0.0, 10.0),
        extra=st.floats(0.0, 100.0),
        attempts=st.integers(1, 80),
        seed=st.integers(0, 2**32),
    )
    def test_full_jitter_stays_within_the_capped_exponential(
        self, base: float, extra: float, attempts: int, seed: int
    ) -> None:
        """Delay n lies in [0, min(cap, base·2^n)], and there is one per retry."""
        policy = RetryPolicy(base_s=base, cap_s=base + extra, max_attempts=attempts)
        delays = list(policy.delays(random.Random(seed)))
        assert len(delays) == attempts - 1
        for n, delay in enumerate(delays):
            assert 0.0 <= delay <= min(policy.cap_s, base * 2.0**n)

    def test_jitter_uses_the_whole_range(self) -> None:
        """Full jitter: over many seeds the first delays spread across [0, base], mean about base/2."""
        policy = RetryPolicy(base_s=1.0, cap_s=1.0, max_attempts=2)
        firsts = [next(policy.delays(random.Random(seed))) for seed in range(2000)]
        assert min(firsts) < 0.01 and max(firsts) > 0.99
        assert sum(firsts) / len(firsts) == pytest.approx(0.5, abs=0.03)

    def test_huge_attempt_counts_do_not_overflow(self) -> None:
        """Past 2^1023 the ceiling is simply the cap."""
        policy = RetryPolicy(base_s=1.0, cap_s=5.0, max_attempts=2000)
        assert max(policy.delays(random.Random(1))) <= 5.0

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"base_s": -1.0},
            {"base_s": 10.0, "cap_s": 5.0},
            {"max_attempts": 0},
            {"deadline_s": 0.0},
            {"retry_after_cap_s": -1.0},
        ],
    )
    def test_impossible_policies_are_refused(self, kwargs: dict[str, float]) -> None:
        """Negative or inverted bounds and zero attempts are a ValueError."""
        with pytest.raises(ValueError, match=r"must|need"):
            RetryPolicy(**kwargs)  # type: ignore[arg-type]


class TestRetrying:
    async def test_retries_transient_errors_with_the_policy_delays(self) -> None:
        """Two 503s then success: two sleeps, exactly the policy's first two jittered delays."""
        clock = RecordingClock()
        policy = RetryPolicy()
        op = Flaky(_server_error(), _server_error())
        assert await retrying(op, policy=policy, clock=clock, rng=random.Random(5)) == "ok"
        expected = list(policy.delays(random.Random(5)))[:2]
        assert clock.sleeps == expected
        assert op.calls == 3

    async def test_on_retry_sees_each_error_attempt_and_delay(self) -> None:
        """The hook gets (error, failed attempt number, the delay about to be slept)."""
        clock = RecordingClock()
        first, second = _server_error(), IntegrityError("short read")
        seen: list[tuple[BaseException, int, float]] = []
        await retrying(
            Flaky(first, second),
            policy=RetryPolicy(),
            clock=clock,
            rng=random.Random(1),
            on_retry=lambda exc, attempt, delay: seen.append((exc, attempt, delay)),
        )
        assert seen == [(first, 1, clock.sleeps[0]), (second, 2, clock.sleeps[1])]

    @pytest.mark.parametrize(
        ("retry_after_s", "slept"),
        [(7.0, 7.0), (10_000.0, 600.0), (math.inf, 600.0)],
    )
    async def test_retry_after_is_honoured_and_capped(self, retry_after_s: float, slept: float) -> None:
        """A 429's Retry-After wins over a shorter backoff, up to retry_after_cap_s."""
        clock = RecordingClock()
        op = Flaky(RateLimitedError("slow down", status=429, retry_after_s=retry_after_s))
        policy = RetryPolicy(base_s=0.5, deadline_s=None)
        await retrying(op, policy=policy, clock=clock, rng=random.Random(2))
        assert clock.sleeps == [slept]

    @pytest.mark.parametrize("retry_after_s", [None, 0.0, -5.0, math.nan])
    async def test_missing_or_bogus_retry_after_falls_back_to_backoff(
        self, retry_after_s: float | None
    ) -> None:
        """No hint, a zero, a negative or a NaN: the jittered backoff alone."""
        clock = RecordingClock()
        op = Flaky(RateLimitedError("slow down", status=429, retry_after_s=retry_after_s))
        policy = RetryPolicy(base_s=0.5)
        await retrying(op, policy=policy, clock=clock, rng=random.Random(2))
        assert clock.sleeps == [next(policy.delays(random.Random(2)))]

    async def test_a_short_retry_after_does_not_cut_the_backoff(self) -> None:
        """Retry-After is a floor: a longer jittered backoff is kept."""
        clock = RecordingClock()
        policy = RetryPolicy(base_s=30.0, cap_s=30.0)
        backoff = next(policy.delays(random.Random(9)))
        assert backoff > 0.01
        op = Flaky(RateLimitedError("slow down", status=429, retry_after_s=0.01))
        await retrying(op, policy=policy, clock=clock, rng=random.Random(9))
        assert clock.sleeps == [backoff]

    @pytest.mark.parametrize(
        "error",
        [
            RejectedError("bad prompt", status=400),
            NotFoundError("no such job", status=404),
            AuthError("bad key", status=401),
            ProtocolError("not the envelope", status=200),
            ValueError("a bug"),
        ],
    )
    async def test_non_retryable_errors_propagate_at_once(self, error: Exception) -> None:
        """Permanent failures and foreign exceptions: one call, no sleep, the same exception."""
        clock = RecordingClock()
        op = Flaky(error)
        with pytest.raises(type(error)) as caught:
            await retrying(op, policy=RetryPolicy(), clock=clock, rng=random.Random(0))
        assert caught.value is error
        assert (op.calls, clock.sleeps) == (1, [])

    async def test_quota_exhaustion_is_never_retried(self) -> None:
        """Even a predicate that retries everything does not retry an empty account."""
        clock = RecordingClock()
        op = Flaky(QuotaExhaustedError("insufficient credits", status=402))
        with pytest.raises(QuotaExhaustedError):
            await retrying(
                op, policy=RetryPolicy(), clock=clock, rng=random.Random(0), is_retryable=lambda e: True
            )
        assert (op.calls, clock.sleeps) == (1, [])

    async def test_a_custom_predicate_decides(self) -> None:
        """``is_retryable=outcome_is_known`` keeps a POST timeout from being resent."""
        clock = RecordingClock()
        op = Flaky(RequestTimeoutError("timed out"))
        with pytest.raises(RequestTimeoutError):
            await retrying(
                op, policy=RetryPolicy(), clock=clock, rng=random.Random(0), is_retryable=outcome_is_known
            )
        assert op.calls == 1

    async def test_max_attempts_then_the_last_error(self) -> None:
        """With max_attempts=4: four calls, three sleeps, and the fourth error is raised with a note."""
        clock = RecordingClock()
        errors = [_server_error() for _ in range(10)]
        op = Flaky(*errors)
        with pytest.raises(ServerError) as caught:
            await retrying(op, policy=RetryPolicy(max_attempts=4), clock=clock, rng=random.Random(3))
        assert caught.value is errors[3]
        assert (op.calls, len(clock.sleeps)) == (4, 3)
        assert "gave up after 4 attempt(s)" in caught.value.__notes__[0]

    @pytest.mark.parametrize("seed", range(20))
    async def test_the_deadline_bounds_the_whole_operation(self, seed: int) -> None:
        """Instant attempts under a 10 s deadline: all the backing off ends by t=10."""
        clock = RecordingClock()
        op = Flaky(*[_server_error() for _ in range(1000)])
        policy = RetryPolicy(base_s=1.0, cap_s=4.0, max_attempts=1000, deadline_s=10.0)
        with pytest.raises(ServerError) as caught:
            await retrying(op, policy=policy, clock=clock, rng=random.Random(seed))
        assert clock.monotonic() <= 10.0
        assert op.calls >= 3
        assert "gave up" in caught.value.__notes__[0]

    @pytest.mark.parametrize("seed", range(20))
    async def test_no_attempt_starts_after_the_deadline(self, seed: int) -> None:
        """Attempts of 1 s each: every one starts by t=10, and none is cut short."""
        clock = RecordingClock()
        starts: list[float] = []

        async def slow_failure() -> str:
            starts.append(clock.monotonic())
            clock.advance(1.0)
            raise _server_error()

        policy = RetryPolicy(base_s=1.0, cap_s=4.0, max_attempts=1000, deadline_s=10.0)
        with pytest.raises(ServerError):
            await retrying(slow_failure, policy=policy, clock=clock, rng=random.Random(seed))
        assert len(starts) >= 2
        assert max(starts) <= 10.0
        assert clock.monotonic() == pytest.approx(starts[-1] + 1.0)

    async def test_a_retry_after_beyond_the_deadline_gives_up_now(self) -> None:
        """Waiting past the deadline is pointless: the 429 is raised without sleeping."""
        clock = RecordingClock()
        op = Flaky(RateLimitedError("slow down", status=429, retry_after_s=120.0))
        with pytest.raises(RateLimitedError):
            await retrying(op, policy=RetryPolicy(deadline_s=60.0), clock=clock, rng=random.Random(0))
        assert (op.calls, clock.sleeps) == (1, [])

    async def test_no_deadline_means_only_attempts_count(self) -> None:
        """deadline_s=None: an hour of Retry-After is slept through."""
        clock = RecordingClock()
        op = Flaky(*[RateLimitedError("slow", status=429, retry_after_s=600.0) for _ in range(6)])
        policy = RetryPolicy(deadline_s=None, max_attempts=7)
        assert await retrying(op, policy=policy, clock=clock, rng=random.Random(0)) == "ok"
        assert clock.monotonic() == pytest.approx(3600.0)

    async def test_cancellation_raised_by_the_operation_propagates(self) -> None:
        """A CancelledError out of the operation is not an error to retry."""
        clock = RecordingClock()
        op = Flaky(asyncio.CancelledError())
        with pytest.raises(asyncio.CancelledError):
            await retrying(op, policy=RetryPolicy(), clock=clock, rng=random.Random(0))
        assert (op.calls, clock.sleeps) == (1, [])

    async def test_cancellation_during_the_backoff_stops_retrying(self) -> None:
        """A scope cancelled while the loop backs off ends it; the operation is not called again."""
        clock = RecordingClock()
        calls = 0

        def make(scope: anyio.CancelScope) -> Callable[[], Awaitable[str]]:
            async def op() -> str:
                nonlocal calls
                calls += 1
                scope.cancel()
                raise _server_error()

            return op

        with anyio.CancelScope() as scope:
            await retrying(make(scope), policy=RetryPolicy(), clock=clock, rng=random.Random(0))
        assert scope.cancelled_caught
        assert calls == 1


def _connector_error(os_error: OSError) -> aiohttp.ClientConnectorError:
    return aiohttp.ClientConnectorError(None, os_error)  # type: ignore[arg-type]


class TestOutcomeIsKnown:
    @pytest.mark.parametrize(
        ("error", "known"),
        [
            pytest.param(RateLimitedError("slow down", status=429), True, id="429"),
            pytest.param(RejectedError("bad", status=400), True, id="400"),
            pytest.param(AuthError("no", status=401), True, id="401"),
            pytest.param(ServerError("oops", status=500), False, id="500-may-have-created-it"),
            pytest.param(ServerError("bad gateway", status=502), False, id="502-lost-reply"),
            pytest.param(ConnectTimeoutError("no connection in time"), True, id="connect-timeout"),
            pytest.param(ProtocolError("not JSON", status=200), False, id="2xx-unreadable"),
            pytest.param(ProtocolError("malformed HTTP"), False, id="no-status-protocol"),
            pytest.param(RequestTimeoutError("timed out"), False, id="timeout"),
            pytest.param(
                _caused(RequestTimeoutError("timed out"), ConnectionRefusedError()),
                False,
                id="timeout-even-if-refused-inside",
            ),
            pytest.param(_caused(TransportError("refused"), ConnectionRefusedError()), True, id="refused"),
            pytest.param(_caused(TransportError("dns"), socket.gaierror(-2, "unknown")), True, id="dns"),
            pytest.param(
                _caused(TransportError("connect"), _connector_error(ConnectionRefusedError(111, "no"))),
                True,
                id="aiohttp-connector",
            ),
            pytest.param(
                _caused(TransportError("tls"), _connector_error(OSError("handshake failed"))),
                True,
                id="aiohttp-connector-any-cause",
            ),
            pytest.param(
                _caused(
                    TransportError("dns"),
                    aiohttp.ClientConnectorDNSError(None, socket.gaierror(-2, "x")),  # type: ignore[arg-type]
                ),
                True,
                id="aiohttp-dns",
            ),
            pytest.param(_caused(TransportError("reset"), ConnectionResetError()), False, id="reset"),
            pytest.param(
                _caused(TransportError("gone"), aiohttp.ServerDisconnectedError()), False, id="disconnected"
            ),
            pytest.param(_caused(TransportError("os"), aiohttp.ClientOSError()), False, id="client-os"),
            pytest.param(TransportError("no cause"), False, id="bare-transport"),
            pytest.param(ValueError("a bug"), False, id="foreign"),
        ],
    )
    def test_classification(self, error: BaseException, known: bool) -> None:
        """Only an error status or a connect-phase failure proves nothing was created."""
        assert outcome_is_known(error) is known

    def test_the_cause_chain_is_followed_but_not_the_context(self) -> None:
        """A refusal deep in ``__cause__`` counts; one merely being handled (``__context__``) does not."""
        inner = OSError("wrapped")
        inner.__cause__ = ConnectionRefusedError()
        assert outcome_is_known(_caused(TransportError("deep"), inner))
        implicit = TransportError("reset while handling a refusal")
        implicit.__context__ = ConnectionRefusedError()
        assert not outcome_is_known(implicit)

    def test_a_cause_cycle_terminates(self) -> None:
        """Cycles in ``__cause__`` do not hang the walk."""
        a, b = TransportError("a"), ConnectionResetError()
        a.__cause__, b.__cause__ = b, a
        assert outcome_is_known(a) is False

"""Retrying transient failures: capped exponential backoff with full jitter, Retry-After, a deadline.

**Never pay twice.** :func:`retrying` is for requests that create nothing paid (reads,
pings). A paid POST is never retried here: its failures go through
:func:`pipeline.engine.outcome.classify`, which sends it again only when the failure
proves nothing was created, and to reconciliation otherwise. :func:`outcome_is_known`
is the low-level test it uses: the server answered with a status below 500, or the
connection failed before anything was sent.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from pipeline.clock import Clock
from pipeline.errors import (
    ApiError,
    ConnectTimeoutError,
    PipelineError,
    QuotaExhaustedError,
    RateLimitedError,
    RequestTimeoutError,
)

__all__ = [
    "RetryPolicy",
    "is_transient",
    "outcome_is_known",
    "retrying",
]

T = TypeVar("T")

# aiohttp's connect-phase failures (DNS, refused, TLS handshake), matched by name
# so this module does not import aiohttp: they all happen before the request is sent.
_NOT_SENT_CLASS_NAMES = frozenset({"ClientConnectorError"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how long to retry one operation.

    Usage::

        policy = RetryPolicy(base_s=1.0, cap_s=60.0, deadline_s=600.0)
    """

    #: first backoff ceiling; the n-th retry waits up to ``base_s·2^n``
    base_s: float = 0.5
    #: the backoff ceiling never grows past this
    cap_s: float = 30.0
    #: attempts in all, the first one included
    max_attempts: int = 8
    #: no retry starts (and no backoff ends) later than this after the first attempt
    #: (None: no limit); an attempt in flight is never cut, as cutting a POST makes
    #: its outcome unknown: single attempts are bounded by the client's timeouts
    deadline_s: float | None = 300.0
    #: a server's Retry-After is honoured up to this many seconds
    retry_after_cap_s: float = 600.0

    def __post_init__(self) -> None:
        if not (0 <= self.base_s <= self.cap_s):
            raise ValueError(f"need 0 <= base_s <= cap_s, not {self.base_s}, {self.cap_s}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(f"deadline_s must be positive or None, not {self.deadline_s}")
        if self.retry_after_cap_s < 0:
            raise ValueError(f"retry_after_cap_s must be >= 0, not {self.retry_after_cap_s}")

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The sleeps before retries 1, 2, …: ``uniform(0, min(cap, base·2^n))``, n from 0.

        Full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter")
        spreads clients that failed together, so they do not retry together.
        Yields ``max_attempts - 1`` values.
        """
        for n in range(self.max_attempts - 1):
            yield self.backoff(n, rng)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """One full-jitter sleep before retry ``attempt`` (from 0): ``uniform(0, min(cap, base·2^n))``."""
        # 2.0**1024 raises OverflowError; base·2^1023 is already inf or past any cap.
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2.0 ** min(max(attempt, 0), 1023)))


def is_transient(exc: BaseException) -> bool:
    """The default retry test: a :class:`PipelineError` whose class says ``retryable``."""
    return isinstance(exc, PipelineError) and exc.retryable


def outcome_is_known(exc: BaseException) -> bool:
    """True when the failure proves the request created nothing on the server.

    Known: the server answered with a 4xx (``ApiError.status``), the connection timed
    out before anything was sent (:class:`ConnectTimeoutError`), or the cause chain holds
    a connect-phase failure (``ConnectionRefusedError``, ``socket.gaierror``, aiohttp's
    ``ClientConnectorError``). Unknown: a 5xx (the server may have created it first),
    read timeouts, resets and other transport errors, and a 2xx we could not read.
    """
    if isinstance(exc, ConnectTimeoutError):
        return True
    if isinstance(exc, RequestTimeoutError):
        return False
    if isinstance(exc, ApiError) and exc.status is not None:
        return 400 <= exc.status < 500
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, ConnectionRefusedError | socket.gaierror):
            return True
        if any(cls.__name__ in _NOT_SENT_CLASS_NAMES for cls in type(link).__mro__):
            return True
        link = link.__cause__  # not __context__: an error met while handling another proves nothing
    return False


async def retrying(
    op: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    clock: Clock,
    rng: random.Random,
    is_retryable: Callable[[BaseException], bool] = is_transient,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
) -> T:
    """Run ``op`` until it succeeds, retrying transient failures per ``policy``.

    The wait before a retry is the jittered backoff, or a 429's ``retry_after_s``
    if longer (capped at ``policy.retry_after_cap_s``). The last error is raised
    when it is not retryable, is a :class:`QuotaExhaustedError` (waiting will not
    refill credits), attempts run out, or the wait would end past the deadline.
    Cancellation and other ``BaseException``\\ s propagate at once.
    ``on_retry(exc, attempt, delay)`` runs before each sleep (log it; push a
    shared :meth:`RateLimiter.defer <pipeline.engine.limits.RateLimiter.defer>`).
    """
    started = clock.monotonic()
    delays = policy.delays(rng)
    attempt = 0
    while True:
        attempt += 1
        try:
            return await op()
        except Exception as exc:
            if isinstance(exc, QuotaExhaustedError) or not is_retryable(exc):
                raise
            delay = _next_delay(exc, delays, policy)
            elapsed = clock.monotonic() - started
            if delay is None or (policy.deadline_s is not None and elapsed + delay > policy.deadline_s):
                exc.add_note(f"gave up after {attempt} attempt(s) in {elapsed:.1f}s")
                raise
            if on_retry is not None:
                on_retry(exc, attempt, delay)
        await clock.sleep(delay)


def _next_delay(exc: Exception, delays: Iterator[float], policy: RetryPolicy) -> float | None:
    """The wait before the next attempt, or None when attempts have run out."""
    delay = next(delays, None)
    hint = exc.retry_after_s if isinstance(exc, RateLimitedError) else None
    if delay is not None and hint is not None and hint > 0:  # NaN and negatives: plain backoff
        delay = max(delay, min(hint, policy.retry_after_cap_s))
    return delay

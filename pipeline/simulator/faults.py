"""Seeded fault injection and the per-key request-rate limiter.

Every random decision comes from one ``random.Random`` seeded by the config, so
a failing chaos run can be replayed exactly with the same seed and request order.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime

from pipeline.simulator.config import SimConfig, Span

__all__ = ["Faults", "in_scope", "retry_after_headers"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Faults:
    """Decides which requests fail, are slowed or are refused for rate, and counts forced errors."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"{seed}:faults")
        #: Lost replies draw from their own stream: the n-th job-creating POST loses its reply or not
        #: whatever other draws the timing of concurrent requests put before it (a seed fixes the count).
        self._lost_rng = random.Random(f"{seed}:lost")
        self.next_n_429 = 0
        self.next_n_5xx = 0
        #: The next n job-creating POSTs in scope create their job, then answer 502.
        self.next_n_lost = 0
        self._buckets: dict[str, _Bucket] = {}

    def chance(self, rate: float) -> bool:
        """True with probability ``rate`` (no draw when the rate is 0, to keep sequences stable)."""
        return rate > 0 and self.rng.random() < rate

    def between(self, span: Span) -> float:
        """A duration drawn uniformly from ``span``."""
        return self.rng.uniform(*span)

    def forced(self) -> int | None:
        """429 or 503 while a ``next_n_*`` control is counting down, else ``None``."""
        if self.next_n_429 > 0:
            self.next_n_429 -= 1
            return 429
        if self.next_n_5xx > 0:
            self.next_n_5xx -= 1
            return 503
        return None

    def lost_reply(self, config: SimConfig) -> bool:
        """Whether this job-creating POST loses its reply (after its job was created)."""
        if self.next_n_lost > 0:
            self.next_n_lost -= 1
            return True
        rate = config.lost_reply_rate
        return rate > 0 and self._lost_rng.random() < rate

    def server_error(self) -> int:
        """Which 5xx a random server failure uses."""
        return self.rng.choice((500, 502, 503))

    def admit(self, config: SimConfig, who: str, now: float) -> float | None:
        """Token bucket per key: ``None`` when admitted, else the seconds until a token is free."""
        rate = config.rps_limit
        if rate is None:
            return None
        size = max(1.0, rate)
        bucket = self._buckets.setdefault(who, _Bucket(size, now))
        bucket.tokens = min(size, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / rate


def in_scope(config: SimConfig, route: str) -> bool:
    """Whether injected faults apply to ``route`` (``"POST /api/images/generation"``)."""
    return not config.fault_routes or route in config.fault_routes


def retry_after_headers(config: SimConfig, seconds: float, now: datetime) -> dict[str, str]:
    """A ``Retry-After`` header when the switch is on: whole delta-seconds or an HTTP-date."""
    wait = max(1, math.ceil(seconds))
    if config.retry_after == "seconds":
        return {"Retry-After": str(wait)}
    if config.retry_after == "date":
        return {"Retry-After": format_datetime(now + timedelta(seconds=wait), usegmt=True)}
    return {}

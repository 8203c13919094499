"""What one worker learns from a 429 about the API's request rate, every worker on the key knows.

A single run's :class:`~pipeline.engine.limits.RequestPacer` measures the server's rate from the
requests it got through between two refused ``GET``\\ s. Workers sharing a key share the server's
bucket, so one worker's measure is its *share* of the key's rate. :class:`SharedPacer` scales it
by the share of the key's requests this worker sent meanwhile (every request is counted in the
key's row), stores the result as the key's learned rate, and charges every request of every
worker to one GCRA at that rate on the database clock. A worker that never saw a 429 picks the
rate up from the answer to its next charge.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from pipeline.clock import Clock
from pipeline.engine.limits import RequestPacer
from pipeline.state.pglimits import SharedLimits

__all__ = ["SharedPacer"]

_log = structlog.get_logger("pipeline.engine.sharedpace")


class SharedPacer(RequestPacer):
    """A cooperating worker's request pacer: one for all its batches, the rate shared by the key."""

    def __init__(
        self, limits: SharedLimits, *, clock: Clock, on_rate_limit: Callable[[], None] | None = None
    ) -> None:
        super().__init__(clock=clock, on_rate_limit=on_rate_limit)
        self._limits = limits
        self.sent = 0  #: requests this worker charged to the key
        self._marked: tuple[int, int] | None = None  # (mine, key's) requests when learning began
        self._mark_due = False  # learning began: take the mark at the next charge
        self._calibrated = 0  # calibrations already shared
        self.shared_rate: float | None = None  #: the key's learned request rate, as last read

    def on_answer(self, method: str, status: int | None) -> None:
        learning = self.learning
        super().on_answer(method, status)
        if self.learning and not learning:
            self._mark_due, self._marked = True, None

    async def acquire(self) -> None:
        """The local pace, then the key's: charge the request to the key's GCRA and wait its turn."""
        await super().acquire()
        charged = await self._limits.charge_request()
        self.sent += 1
        if self._mark_due:
            self._mark_due, self._marked = False, (self.sent, charged.requests)
        if self.calibrations > self._calibrated:
            self._calibrated = self.calibrations
            await self._share(charged.requests)
        elif charged.learned_rate is not None and charged.learned_rate != self.shared_rate:
            self._adopt(charged.learned_rate)
        if charged.wait_s > 0:
            await self._clock.sleep(charged.wait_s)

    async def _share(self, key_requests: int) -> None:
        """This worker measured its share of the server's rate: store the key's."""
        rate = self.rate
        if rate is None or self._marked is None:
            return
        mine, key = self.sent - self._marked[0], key_requests - self._marked[1]
        share = mine / key if key > 0 and mine > 0 else 1.0
        total = rate / share
        await self._limits.learn(rate_per_s=total)
        _log.info("request_rate_shared", rate=round(total, 2), share=round(share, 2))
        self._adopt(total)

    def _adopt(self, rate: float) -> None:
        """Pace at the key's rate here too (the GCRA keeps the total). A measure of this worker's
        own is dropped: it would only cost the second 429 that ends it, to learn the same."""
        self.shared_rate = rate
        self._learning_since, self._marked, self._mark_due = None, None, False
        self.estimate = rate / self.margin
        self._set(rate)

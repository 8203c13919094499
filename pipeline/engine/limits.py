"""Throttling primitives: request-rate limiters and an adaptive cap on server-side active jobs.

Three concerns, one class each, all on an injected :class:`~pipeline.clock.Clock`:

* :class:`RateLimiter` spaces *requests* at a given rate (one instance each for
  user-set submit, poll and download rates); its :meth:`~RateLimiter.defer` is
  also the pause a 429 triggers, so there is no separate ``Pause`` type.
* :class:`RequestPacer` finds the API's undocumented *request-rate* limit from
  429s and keeps every API request just under it.
* :class:`ActiveJobLimit` caps *jobs alive on the server* (submitted, not yet
  terminal) and finds the server's real cap by AIMD, since the API documents none.

The API answers both limits with the same 429, so they are told apart by what was
refused: a ``GET`` cannot be refused for the job cap, so a refused ``GET`` is proof of
a request-rate limit; while that proof is fresh, refused submissions are blamed on the
rate, not the cap.

A submission, in order (slot first, so the rate limiter spaces the real POSTs)::

    await active.acquire()                 # released when the job is terminal or never created
    await submits.acquire()
    if active.release_if_over_target():    # a 429 cut the target meanwhile: requeue the item
        ...
    POST → active.on_accepted()  |  429 → active.on_rate_limited(); submits.defer(wait)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from types import TracebackType

import anyio

from pipeline.clock import Clock

__all__ = ["ActiveJobLimit", "RateLimiter", "RequestPacer"]

# Waits shorter than this are float noise from summing 1/rate, not real waits.
_EPSILON_S = 1e-9


class RateLimiter:
    """At most ``rate_per_s`` acquisitions per second, ``burst`` of them back to back.

    GCRA in its virtual-scheduling form (ITU-T I.371; the same algorithm as
    aiometer's ``HardLimitMeter``): the limiter keeps one *theoretical arrival
    time* ``tat``; a request at time ``t`` conforms when ``t >= tat - tau`` with
    emission interval ``T = 1/rate`` and tolerance ``tau = (burst - 1)·T``, and
    then sets ``tat = max(tat, t) + T``. The limiter starts empty, so the first
    second lets through ``burst`` requests, then one every ``T`` (aiolimiter
    starts full and overshoots strict quotas: aiolimiter#304).

    Waiters are served first come, first served (a FIFO lock: only the head of
    the queue sleeps, and it re-checks after waking, so :meth:`defer` reaches
    it). ``rate_per_s=None`` never spaces requests, but :meth:`defer` still pauses.
    A cancelled waiter takes no slot. ``async with limiter:`` is ``acquire()``.
    """

    __slots__ = ("_clock", "_emission_s", "_lock", "_tat", "_tau_s", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float | None, *, burst: int = 1, clock: Clock) -> None:
        if rate_per_s is not None and not (rate_per_s > 0 and math.isfinite(rate_per_s)):
            raise ValueError(f"rate_per_s must be a positive number or None, not {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._emission_s = 0.0 if rate_per_s is None else 1.0 / rate_per_s
        self._tau_s = self._emission_s * (burst - 1)
        self._tat = -math.inf  # empty: the first request conforms at once
        self._lock = anyio.Lock()

    def delay(self) -> float:
        """Seconds the next request would wait if nobody else were queued (0 when it may go now)."""
        return max(0.0, self._tat - self._tau_s - self._clock.monotonic())

    async def acquire(self) -> None:
        """Wait, in arrival order, until a request may be sent."""
        if not self._emission_s and not self._lock.locked() and self.delay() <= _EPSILON_S:
            return  # no rate, no pause, nobody queued: the lock's two checkpoints cost 10 % of a poll's CPU
        async with self._lock:
            while (wait := self.delay()) > _EPSILON_S:
                await self._clock.sleep(wait)
            self._tat = max(self._tat, self._clock.monotonic()) + self._emission_s

    def set_rate(self, rate_per_s: float | None) -> None:
        """Change the rate from the next request on (``None``: unlimited)."""
        if rate_per_s is not None and not (rate_per_s > 0 and math.isfinite(rate_per_s)):
            raise ValueError(f"rate_per_s must be a positive number or None, not {rate_per_s!r}")
        self.rate_per_s = rate_per_s
        self._emission_s = 0.0 if rate_per_s is None else 1.0 / rate_per_s
        self._tau_s = self._emission_s * (self.burst - 1)

    def defer(self, seconds: float) -> None:
        """Let no request through for ``seconds`` from now (a 429's Retry-After or backoff).

        Moves ``tat`` so the first request after the pause is alone and the rest
        follow at the configured rate: a pause never ends in a burst. Calls never
        shorten an earlier, longer pause.
        """
        if seconds > 0:
            resume = self._clock.monotonic() + seconds
            self._tat = max(self._tat, resume + self._tau_s)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class RequestPacer:
    """Keeps every API request under the server's request-rate limit, which it learns.

    The limit is a token bucket somewhere on the server (the API documents none), so
    while we send faster than it refills, the server admits exactly its rate. Hence:

    * **Unlimited** until a ``GET`` is refused with 429 (see the module docstring for
      why only a ``GET`` proves a rate limit).
    * **Learning**: send at ``overdrive`` × the rate admitted in the last second (so the
      bucket stays empty) and count what is admitted until a ``GET`` is refused again,
      at least ``learn_s`` later: both ends find the bucket empty, so admitted / elapsed
      is the server's rate. No second refusal within ``give_up_s``, or fewer than
      ``min_admitted`` admitted in between (an outage is no bucket): nothing learned.
    * **Paced** at ``margin`` × that rate, a request every ``1/rate`` with no bursts,
      so the bucket refills and nothing is refused. Every ``probe_s`` without a 429
      while requests were waiting here, the rate rises by ``probe_step`` (the limit
      may have risen); a ``GET`` refused again starts learning again.

    ``on_rate_limit`` is called at each ``GET`` 429 (the scheduler undoes job-cap cuts
    that the rate, not the cap, caused).
    """

    def __init__(
        self,
        *,
        clock: Clock,
        margin: float = 0.97,
        overdrive: float = 1.5,
        learn_s: float = 2.0,
        give_up_s: float = 5.0,
        probe_s: float = 30.0,
        probe_step: float = 0.02,
        evidence_s: float = 2.0,
        min_admitted: int = 3,
        on_rate_limit: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self._limiter = RateLimiter(None, clock=clock)
        self.margin, self.overdrive, self.learn_s, self.give_up_s = margin, overdrive, learn_s, give_up_s
        self.probe_s, self.probe_step, self.evidence_s = probe_s, probe_step, evidence_s
        self.min_admitted = min_admitted
        self.on_rate_limit = on_rate_limit
        self._admitted: deque[float] = deque()  # answer times of admitted requests, last second
        self._learning_since: float | None = None
        self._learning_admitted = 0
        self._evidence_at = -math.inf  # the last GET 429
        self._last_429 = -math.inf
        self._since_change = 0.0
        self._held_back = False  # a request waited here since the last rate change
        self.estimate: float | None = None  #: the server's rate as last measured (req/s)
        self.calibrations = 0  #: how many times the rate was measured

    @property
    def rate(self) -> float | None:
        """Requests per second let through now (``None``: unlimited)."""
        return self._limiter.rate_per_s

    @property
    def learning(self) -> bool:
        return self._learning_since is not None

    def explains_429(self) -> bool:
        """Whether a request-rate limit is known to be biting now (a recent ``GET`` 429 or learning)."""
        return self.learning or self._clock.monotonic() - self._evidence_at <= self.evidence_s

    async def acquire(self) -> None:
        """Wait until the next request may leave."""
        if self._limiter.delay() > 0:
            self._held_back = True
        self._maybe_probe()
        await self._limiter.acquire()

    def on_answer(self, method: str, status: int | None) -> None:
        """Record how the server answered a request that ``acquire`` let through."""
        now = self._clock.monotonic()
        if status == 429:
            self._last_429 = now
            if method == "GET":
                self._on_get_refused(now)
            return
        if status is None:
            return  # no answer: says nothing about the bucket
        self._admitted.append(now)
        while self._admitted and self._admitted[0] < now - 1.0:
            self._admitted.popleft()
        if self._learning_since is not None:
            self._learning_admitted += 1
            if now - self._learning_since > self.give_up_s:
                self._learning_since = None  # demand fell below the limit, or there is none
                self._set(None if self.estimate is None else self.margin * self.estimate)

    def _on_get_refused(self, now: float) -> None:
        self._evidence_at = now
        if self.on_rate_limit is not None:
            self.on_rate_limit()
        if self._learning_since is None:
            recent = len(self._admitted)
            if recent < 2:
                return  # nothing got through lately: an outage or a 429 storm, not a bucket to measure
            self._learning_since, self._learning_admitted = now, 0
            self._set(self.overdrive * max(recent, self.rate or 0.0))
        elif now - self._learning_since >= self.learn_s:
            admitted, elapsed = self._learning_admitted, now - self._learning_since
            self._learning_since = None
            if admitted < self.min_admitted:
                # Refusals with next to nothing admitted (an outage, a storm of 429s) are no
                # bucket to measure: leave them to each request's backoff, keep the old pace.
                self._set(None if self.estimate is None else self.margin * self.estimate)
                return
            self.estimate = admitted / elapsed
            self.calibrations += 1
            self._set(self.margin * self.estimate)

    def _maybe_probe(self) -> None:
        rate, now = self.rate, self._clock.monotonic()
        if rate is None or self.learning or now - self._since_change < self.probe_s:
            return
        if self._held_back and now - self._last_429 >= self.probe_s:
            self._set(rate * (1 + self.probe_step))
        else:
            self._since_change, self._held_back = now, False

    def _set(self, rate: float | None) -> None:
        self._limiter.set_rate(rate)
        self._since_change, self._held_back = self._clock.monotonic(), False


class ActiveJobLimit:
    """An adaptive cap on jobs alive on the server, found by AIMD (as TCP finds a window).

    A slot is taken just before a submission and given back when the job is
    terminal or the submission failed: :meth:`acquire` / :meth:`release`, not a
    scope (``async with`` exists for one-block holders). Waiters are served FIFO.

    Policy (the API documents no cap; a 429 on submit is the only signal):

    * **Decrease** (:meth:`on_rate_limited`): ``target = max(min_active,
      floor(beta·(held + 1)))`` if lower, ``held`` being the slots whose submission
      was accepted (an upper estimate of what the server holds). It aims at the
      server's count instead of cutting ``target`` again and again, so 429s for
      slots taken before a cut do not compound it; and it acts at most once per
      ``cooldown_s``, so a burst of 429s from one moment counts once.
    * **Increase** (:meth:`on_accepted`): ``+1`` after ``target`` accepted
      submissions, counted only while saturated (``in_use >= target``) so an idle
      pool never inflates it. At or above ``held`` at the last 429 (the level the
      server refused), probing is slower: ``4·max(target, 8)`` accepts per step.
    * ``min_active <= target <= max_active``. Against a server allowing ``C`` (32),
      the target saw-tooths in ``[0.9·(C+1), C+1]``: about one 429 per 200 jobs.

    A cut does not revoke slots already taken: a holder that has not submitted
    yet calls :meth:`release_if_over_target` right before its POST, so surplus
    slots go back without a 429 each.

    A 429 that was the request *rate*'s doing (see :class:`RequestPacer`) says nothing
    about the cap: :meth:`forgive` undoes the cuts of the last ``forgive_s``.
    """

    __slots__ = (
        "_before_cuts",
        "_ceiling",
        "_clock",
        "_held_accepted",
        "_last_decrease",
        "_probe_count",
        "_waiters",
        "beta",
        "cooldown_s",
        "decreases",
        "forgive_s",
        "in_use",
        "max_active",
        "min_active",
        "peak_in_use",
        "target",
    )

    def __init__(
        self,
        max_active: int,
        *,
        min_active: int = 1,
        initial: int | None = None,
        beta: float = 0.9,
        cooldown_s: float = 1.0,
        forgive_s: float = 10.0,
        clock: Clock,
    ) -> None:
        start = max_active if initial is None else initial
        if not 1 <= min_active <= start <= max_active:
            raise ValueError(f"need 1 <= min_active <= initial <= max_active, not {min_active}, {start}")
        if not 0 < beta < 1:
            raise ValueError(f"beta must lie in (0, 1), not {beta}")
        self.max_active, self.min_active = max_active, min_active
        self.beta, self.cooldown_s, self.forgive_s = beta, cooldown_s, forgive_s
        self._before_cuts: int | None = None  # the target before the latest run of cuts
        self._clock = clock
        self.target = start  #: the cap on slots now; moves by AIMD
        self.in_use = 0  #: slots held (submitting, or job not yet terminal)
        self.peak_in_use = 0  #: the most slots ever held at once
        self.decreases = 0  #: how many 429s lowered the target
        self._held_accepted = 0  # slots whose submission was accepted (an upper estimate)
        self._ceiling = math.inf  # held_accepted at the last counted 429
        self._probe_count = 0  # accepted while saturated, since the last change
        self._last_decrease = -math.inf
        self._waiters: deque[anyio.Event] = deque()

    async def acquire(self) -> None:
        """Wait (FIFO) for a slot. The slot is handed over, so no later caller can barge in."""
        if not self._waiters and self.in_use < self.target:
            self._take()
            return
        granted = anyio.Event()
        self._waiters.append(granted)
        try:
            await granted.wait()
        except BaseException:
            if granted.is_set():  # handed over just as we were cancelled: pass it on
                self.release()
            else:
                self._waiters.remove(granted)
            raise

    def release(self) -> None:
        """Give a slot back; the next waiter, if the target allows, gets it."""
        if self.in_use <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self.in_use -= 1
        # Which kind of slot left is unknown; clamping keeps the estimate an upper bound
        # that is exact whenever every held slot has been accepted.
        self._held_accepted = min(self._held_accepted, self.in_use)
        self._grant()

    def release_if_over_target(self) -> bool:
        """Give the caller's not-yet-submitted slot back if a cut left it surplus.

        Call right before the POST (after the rate limiter); ``True`` means the
        slot is gone: queue the item again instead of submitting.
        """
        if self.in_use <= self.target:
            return False
        self.release()
        return True

    def on_rate_limited(self) -> bool:
        """A submission got 429: lower the target (once per cooldown). True if it did."""
        now = self._clock.monotonic()
        if now - self._last_decrease < self.cooldown_s:
            return False
        if now - self._last_decrease > self.forgive_s:
            self._before_cuts = self.target
        self._last_decrease = now
        self._probe_count = 0
        self._ceiling = self._held_accepted
        lowered = max(self.min_active, math.floor(self.beta * (self._held_accepted + 1)))
        if lowered >= self.target:
            return False
        self.target = lowered
        self.decreases += 1
        return True

    def forgive(self) -> None:
        """The recent 429s were the request rate's doing: undo the cuts of the last ``forgive_s``."""
        if self._before_cuts is None or self._clock.monotonic() - self._last_decrease > self.forgive_s:
            return
        self.target = max(self.target, self._before_cuts)
        self._before_cuts = None
        self._ceiling = math.inf
        self._last_decrease = -math.inf
        self._grant()

    def on_accepted(self) -> None:
        """A submission was accepted: count it, and probe one slot higher when it is time.

        Within ``cooldown_s`` of a cut, an accept that arrives late (its POST raced the 429,
        and its answer was recorded after the refusal was counted) raises the cut to what it
        would have been had that accept been known: ``floor(beta·(held + 1))``. Without this,
        a burst whose 429s are handled before its accepts are recorded cuts to ``min_active``.
        """
        self._held_accepted = min(self._held_accepted + 1, self.in_use)
        if self._clock.monotonic() - self._last_decrease < self.cooldown_s:
            estimate = min(self.max_active, math.floor(self.beta * (self._held_accepted + 1)))
            if estimate > self.target:
                self.target = estimate
                self._ceiling = max(self._ceiling, self._held_accepted)
                self._grant()
                return
        if self.in_use < self.target or self.target >= self.max_active:
            return
        self._probe_count += 1
        patience = self.target if self.target < self._ceiling else 4 * max(self.target, 8)
        if self._probe_count >= patience:
            self._probe_count = 0
            self.target += 1
            self._grant()

    def _take(self) -> None:
        self.in_use += 1
        self.peak_in_use = max(self.peak_in_use, self.in_use)

    def _grant(self) -> None:
        while self._waiters and self.in_use < self.target:
            self._take()
            self._waiters.popleft().set()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

"""How far the server's clock is from ours, as an interval: what reconcile spans are built from.

Two sources, both honest bounds, never a point guess:

- **our own jobs' ``createdAt``**: a job created by a POST sent at ``s`` and answered at ``a`` (our
  clock) has ``createdAt - a <= skew <= createdAt - s``. Exact, but only once a job of ours is read:
  an outage at the start of a run (every first POST lost) has none.
- **any listed job** (ours or not) was created before the listing answered at ``a``:
  ``createdAt - a <= skew``. One-sided, but it checks the ``Date`` bound from above.
- **the ``Date`` header of every answer** (RFC 9110), there from the first request: the server made
  the answer between our ``s`` and ``a``, at a moment its ``createdAt`` clock read within
  ``[Date + lo, Date + hi]`` (``date_window``: ``(0, 1)`` for a header truncated to the second on the
  same clock; widened for a header stamped by another machine, a proxy). That the header is there
  and shares ``createdAt``'s clock is not documented (an inference): the window is an option, and
  ``None`` ignores the header. Each answer bounds the skew to about a second; answers at different
  fractions of a second narrow the intersection toward the window's excess over one second.

Where both are known their intersection is used; if they contradict, the header is wrong about the
server (another clock, or cached): it is dropped for the run, with a warning, and ``createdAt`` alone
rules. A source that contradicts itself (our wall clock stepped) gives no bound at all.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from pipeline.engine.reconcile import Skew

__all__ = ["ServerClock"]

_log = structlog.get_logger("pipeline.engine.serverclock")
#: Contradictions smaller than this are rounding (createdAt is listed to the millisecond).
_FUZZ = timedelta(milliseconds=2)


class _Bound:
    """The intersection of intervals ``lo <= skew <= hi`` seen so far."""

    __slots__ = ("hi", "lo")

    def __init__(self) -> None:
        self.lo: timedelta | None = None
        self.hi: timedelta | None = None

    def add(self, lo: timedelta, hi: timedelta | None) -> None:
        self.lo = lo if self.lo is None else max(self.lo, lo)
        if hi is not None:
            self.hi = hi if self.hi is None else min(self.hi, hi)

    def get(self) -> Skew | None:
        if self.lo is None or self.hi is None or self.lo > self.hi + _FUZZ:
            return None
        return Skew(self.lo, self.hi)


class ServerClock:
    """Bounds on the server's clock minus ours, from our jobs' ``createdAt`` and answers' ``Date``."""

    def __init__(self, date_window: tuple[float, float] | None = None) -> None:
        if date_window is not None and not date_window[0] <= date_window[1]:
            raise ValueError(f"date_window must be (lo, hi) with lo <= hi, not {date_window}")
        self._window = date_window
        self._created = _Bound()
        self._dated = _Bound()

    def job_created(self, created_at: datetime, sent: datetime, answered: datetime) -> None:
        """A job of ours, created by a POST sent at ``sent`` and answered at ``answered``."""
        self._created.add(created_at - answered, created_at - sent)

    def job_listed(self, created_at: datetime, answered: datetime) -> None:
        """A job (anyone's) was in a listing we had read by ``answered``: it was created before."""
        self._created.add(created_at - answered, None)

    def answer_dated(self, sent: datetime, answered: datetime, date: datetime) -> None:
        """An answer carrying ``Date: date`` came to a request sent at ``sent``, at ``answered``."""
        if self._window is None or answered < sent:
            return
        lo, hi = (timedelta(seconds=w) for w in self._window)
        self._dated.add(date + lo - answered, date + hi - sent)

    @property
    def from_jobs(self) -> bool:
        """Whether our own jobs bound the skew (the ``Date`` bound alone may still narrow)."""
        return self._created.get() is not None

    def skew(self) -> Skew | None:
        """The narrowest honest bound, or ``None`` while nothing (consistent) is known."""
        created, dated = self._created.get(), self._dated.get()
        if dated is None:
            return created
        c_lo, c_hi = self._created.lo, self._created.hi  # a listing may have given only ``lo``
        lo = dated.lo if c_lo is None else max(c_lo, dated.lo)
        hi = dated.hi if c_hi is None else min(c_hi, dated.hi)
        if lo <= hi + _FUZZ:
            return Skew(lo, hi)
        if created is None and c_hi is not None:
            return None  # createdAt contradicts itself (our wall clock stepped): no bound at all
        _log.warning(
            "server_date_disagrees",
            created_s=[b.total_seconds() if b is not None else None for b in (c_lo, c_hi)],
            date_s=[dated.lo.total_seconds(), dated.hi.total_seconds()],
            hint="Date headers are ignored for the rest of the run; see server_date_window_s",
        )
        self._window, self._dated = None, _Bound()
        return created

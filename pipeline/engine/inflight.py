"""Every paid POST of a run, from send to record: what reconciliation needs to decide safely and soon.

An uncertain POST is settled from the job list (:mod:`pipeline.engine.reconcile`).
A job in that list is evidence only if every *other* POST that could have put a
job there has been answered and recorded: until then, another unit's job whose
reply is still on its way looks unclaimed. Waiting for a moment with no POST in
flight would be safe, but a busy run may have none until its end. So the log
keeps each POST's send time and whether it is still open, and a listing is read
as soon as every POST begun before it ended is closed (:meth:`PostLog.wait_closed`):
POSTs begun later cannot be in it.

The log also learns how far the server's clock is from ours, with bounds
(:class:`~pipeline.engine.serverclock.ServerClock`), from jobs whose ``createdAt``
it sees: a job created by a POST sent at ``s`` and answered at ``a`` (our clock) has
``createdAt - a <= skew <= createdAt - s``; and, before any job of ours is read,
from every answer's ``Date`` header. The tighter those bounds, the narrower each
uncertain POST's span, and the more often an isolated lost reply has exactly one
candidate job.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio

from pipeline.engine.reconcile import Skew, Uncertain
from pipeline.engine.serverclock import ServerClock

__all__ = ["PostLog"]


@dataclass(slots=True)
class _Post:
    key: str
    sent: datetime  # our wall clock just before the POST left
    begun: float  # monotonic, same moment
    answered: datetime | None = None
    job_id: str | None = None
    open: bool = True


class PostLog:
    """The run's POSTs (see the module docstring) and its uncertain ones, waiting to be reconciled."""

    def __init__(self, *, keep_s: float = 600.0, date_window: tuple[float, float] | None = None) -> None:
        self._posts: OrderedDict[int, _Post] = OrderedDict()  # in send order: old ones leave first
        self._open = 0
        self._by_job: dict[str, _Post] = {}
        self._next = 0
        self._changed = anyio.Event()
        #: The server's clock, learned from our jobs and from answers' ``Date`` (:meth:`dated`).
        self.server = ServerClock(date_window)
        self._keep_s = keep_s
        #: Uncertain POSTs not reconciled yet, in the order they became uncertain.
        self.waiting: list[Uncertain] = []
        #: Uncertain POSTs left ``unknown``: their jobs may exist, unclaimed, for the rest of the run.
        self.unknown: list[Uncertain] = []
        self._not_before: dict[str, datetime] = {}
        self._ambiguous: set[str] = set()  # waiting after an ambiguity, for the server's clock

    @property
    def in_flight(self) -> int:
        return self._open

    def begin(self, key: str, sent: datetime, now: float) -> int:
        """A POST for ``key`` is about to leave: its ticket."""
        self._next += 1
        self._posts[self._next] = _Post(key, sent, now)
        self._open += 1
        return self._next

    def answered(
        self, ticket: int, at: datetime, job_id: str | None = None, sent: datetime | None = None
    ) -> None:
        """The POST's answer (or failure) came back at ``at``; ``job_id`` if it created one; ``sent``
        when it is known that the request left later than :meth:`begin` was told (a narrower span)."""
        post = self._posts[ticket]
        post.answered, post.job_id = at, job_id
        if sent is not None and post.sent < sent <= at:
            post.sent = sent
        if job_id is not None:
            self._by_job[job_id] = post

    def close(self, ticket: int, now: float) -> None:
        """The POST's outcome is recorded: its job id is known, or it is in :attr:`waiting`, or
        it proved nothing was created. Old closed POSTs are forgotten (their skew stays learned)."""
        post = self._posts.get(ticket)
        if post is None or not post.open:
            return
        post.open = False
        self._open -= 1
        self._changed.set()
        self._changed = anyio.Event()
        while self._posts:
            oldest = self._posts[next(iter(self._posts))]
            if oldest.open or oldest.begun > now - self._keep_s:
                break
            self._posts.popitem(last=False)
            if oldest.job_id is not None:
                self._by_job.pop(oldest.job_id, None)

    def open_before(self, when: float) -> int:
        """POSTs begun at or before monotonic ``when`` and not closed yet."""
        return sum(p.open and p.begun <= when for p in self._posts.values())

    async def wait_closed(self, when: float) -> None:
        """Until every POST begun at or before monotonic ``when`` is closed."""
        while self.open_before(when):
            await self._changed.wait()

    # -- the server's clock ----------------------------------------------------------------------

    def learn(self, job_id: str, created_at: datetime | None) -> None:
        """``job_id`` was created at server time ``created_at``: narrow the skew bounds."""
        post = self._by_job.get(job_id)
        if post is None or created_at is None or post.answered is None:
            return
        self.server.job_created(created_at, post.sent, post.answered)

    def dated(self, sent: datetime, answered: datetime, date: datetime) -> None:
        """Any answer of the run, with its ``Date`` header: bounds the server's clock from the start."""
        self.server.answer_dated(sent, answered, date)

    def skew(self) -> Skew | None:
        """Bounds on server minus our clock; ``None`` until learned (or when they contradict, as
        after our wall clock jumped): then spans fall back to the slack."""
        return self.server.skew()

    # -- uncertain POSTs ---------------------------------------------------------------------------

    def take_ready(
        self, now: datetime, settle: timedelta, patience: timedelta = timedelta(0)
    ) -> list[Uncertain]:
        """The waiting POSTs whose job, if any, would be listed by now (``settle`` after their span).

        While our jobs have not shown the server's clock but soon will (a job of ours exists, or,
        with nothing known of the clock, a POST is in flight), each waits up to ``patience`` more
        for it: a span of ``±slack`` holds every job of a busy minute, so deciding early leaves it
        ``unknown``. With only ``Date`` bounds and POSTs in flight it does not wait: they may all be
        lost (an outage as the run starts), and ``Date`` spans often tell the jobs apart.
        """
        if not self.server.from_jobs and (self._by_job or (self.in_flight and self.skew() is None)):
            settle += patience  # a job of ours will show the clock: better than ``Date`` or ``±slack``
        ready = [
            u
            for u in self.waiting
            if (u.until or u.intent_at) + settle <= now and self._not_before.get(u.key, now) <= now
        ]
        self.waiting = [u for u in self.waiting if u not in ready]
        for u in ready:
            self._not_before.pop(u.key, None)
            self._ambiguous.discard(u.key)
        return ready

    def undecided(self) -> bool:
        """Whether a POST may still turn out uncertain (one in flight) or waits to be decided (one
        asked again after an ambiguity does not count: it waits for the server's clock)."""
        return self.in_flight > 0 or any(u.key not in self._ambiguous for u in self.waiting)

    def again(self, u: Uncertain, at: datetime, *, ambiguous: bool = True) -> None:
        """Decide ``u`` again from ``at`` on: an ambiguity while the server's clock was unknown, or
        (``ambiguous=False``) a resend held back until the other uncertain POSTs are decided."""
        self._not_before[u.key] = at
        if ambiguous:
            self._ambiguous.add(u.key)
        self.waiting.append(u)

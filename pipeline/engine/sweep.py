"""Learning many jobs' statuses from the job list instead of asking about each job.

``GET /jobs/{id}`` answers for one job; ``GET /jobs`` lists every job created in a
time window, a page of them per request, each with its status. With dozens of jobs
in flight, one listing page tells what dozens of single polls would, so a job can be
looked at every few tenths of a second without spending a request on it each time.
That matters twice: a job's active-job slot is held until it is *seen* done (the
sooner, the sooner the next job starts), and every request counts against the
API's rate limit.

Each watched job has a time it is next worth looking at (set by the caller from
what it learned of durations: a video is looked at less often than an image). A
sweep lists only windows around the jobs that are due, one window per cluster of
creation times, so an old video among thousands of newer images costs one small
window, not a listing of everything since it started. Paging stops as soon as each
expected job was found, so the order the API lists in does not matter. A job found
finished is handed back for one ``GET /jobs/{id}``, which carries its outputs; the
list does not.

Windows are in the server's clock, which may not be ours: a job's ``createdAt``
is learned the first time it is listed, and until then its place is guessed from
when we sent it, the skew seen on earlier jobs and a margin. A job that a complete
listing did not show, though it showed jobs sent later, ``max_misses`` times, is
given up on (the caller polls it alone) and the margin widens: a skewed clock or a
list that lags costs a few requests, never a job.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pipeline.api.records import JobStatus, JobSummary

__all__ = ["Found", "JobSweep", "Window"]

_ROUNDING = timedelta(milliseconds=1)  # listed times may be rounded to the millisecond
#: Sweeps in a row a young job may be left out of to keep a window to one page. One makes every
#: other sweep take two pages (the jobs left out, plus the older ones due again); two, every third.
_MAX_DEFERRALS = 2


@dataclass(slots=True)
class _Watched:
    key: str
    kind: str
    sent: datetime  # our wall clock when the POST went out
    due: float  # monotonic time it is next worth looking at
    created: datetime | None = None  # the server's createdAt, once listed
    running_at: float = 0.0  # monotonic time it was last known to be running
    misses: int = 0
    deferred: int = 0  # sweeps in a row it was left out of to save a page (at most _MAX_DEFERRALS)
    since: float = 0.0  # monotonic time it was submitted
    #: Our wall clock once the POST was answered: the job existed by then (None: not known).
    answered: datetime | None = None


@dataclass(frozen=True, slots=True)
class Found:
    """A watched job a sweep saw finished: look at it with ``GET /jobs/{id}``.

    It finished between ``running_at`` and ``seen_at`` (monotonic seconds).
    """

    job_id: str
    key: str
    kind: str
    status: JobStatus
    running_at: float
    seen_at: float
    #: What the list says the job cost, when it says.
    credits: float | None = None


@dataclass(slots=True)
class Window:
    """One listing to make: jobs created in ``[start, end]`` (server time; ``end`` None: until now)."""

    start: datetime
    end: datetime | None
    expected: set[str]
    found: set[str] = field(default_factory=set)
    #: The latest send time among the jobs found: the list has caught up to at least there.
    caught_up: datetime | None = None
    #: Read at most this many pages (``None``: until every expected job was listed).
    max_pages: int | None = None
    #: Set when paging stopped before the window's end: the oldest creation time read. Jobs placed
    #: before it were not reached, which is no miss.
    floor: datetime | None = None

    @property
    def complete(self) -> bool:
        """Every job this window looks for has been listed: no need for more pages."""
        return not (self.expected - self.found)


class JobSweep:
    """The jobs whose status is learned from the job list (see the module docstring)."""

    def __init__(
        self,
        *,
        margin_s: float = 30.0,
        settled_margin_s: float = 2.0,
        max_misses: int = 2,
        patience_s: float = 10.0,
        gap_s: float = 5.0,
    ) -> None:
        self._watched: dict[str, _Watched] = {}
        self._margin = timedelta(seconds=margin_s)
        self._settled_margin = timedelta(seconds=settled_margin_s)
        self._max_misses = max_misses
        self._patience = timedelta(seconds=patience_s)
        self._gap = timedelta(seconds=gap_s)
        self._skew: timedelta | None = None  # smallest (server createdAt - our send time) seen
        #: Every recent job the list showed or we sent, watched or not: its creation time (server
        #: clock; a guess until listed). Finished jobs stay listed, so they fill pages too.
        self._created: dict[str, datetime] = {}
        #: The same, as sorted ``(creation time, job id)``: a plan reads the jobs from the oldest
        #: watched one on many times a second (a bisection, not a sort of every time kept).
        self._by_time: list[tuple[datetime, str]] = []
        self._prune_at = 0  # pruning rebuilds both: only once they doubled since the last time
        #: Jobs per page, learned from the first page that had a next one (``None``: not known yet).
        self.page_size: int | None = None

    def __len__(self) -> int:
        return len(self._watched)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._watched

    def add(
        self,
        job_id: str,
        key: str,
        kind: str,
        *,
        sent: datetime,
        now: float,
        due: float,
        answered: datetime | None = None,
    ) -> None:
        """Watch ``job_id`` (unit ``key``), submitted at our wall time ``sent`` (its POST answered at
        ``answered``, when known); first look at ``due``."""
        self._watched[job_id] = _Watched(key, kind, sent, due, running_at=now, since=now, answered=answered)
        if job_id not in self._created:
            self._set_created(job_id, sent if self._skew is None else sent + self._skew)

    def discard(self, job_id: str) -> None:
        self._watched.pop(job_id, None)

    def kinds(self) -> set[str]:
        return {w.kind for w in self._watched.values()}

    def jobs(self) -> list[tuple[str, str, str]]:
        """``(job id, key, kind)`` of every watched job."""
        return [(job_id, w.key, w.kind) for job_id, w in self._watched.items()]

    def next_due(self) -> float:
        """The earliest monotonic time a watched job is worth looking at (inf: none watched)."""
        return min((w.due for w in self._watched.values()), default=math.inf)

    def listed(self) -> list[tuple[datetime, str]]:
        """Every job the list shows from the oldest watched one on, oldest first: ``(creation time,
        job id)``, finished ones included (server clock; a guess for jobs not listed yet)."""
        if not self._watched:
            return []
        oldest = min(self._created[job_id] for job_id in self._watched)
        self._forget_before(oldest)
        return self._by_time[bisect_left(self._by_time, (oldest, "")) :]

    def watched(self, job_id: str) -> tuple[str, float, float] | None:
        """``(kind, submitted, last seen running)`` of a watched job (monotonic seconds), or None."""
        w = self._watched.get(job_id)
        return None if w is None else (w.kind, w.since, w.running_at)

    def page_window(self, job_ids: Sequence[str], *, pad_s: float) -> Window:
        """One page over watched ``job_ids``, consecutive by creation time (see
        :mod:`pipeline.engine.sweep_plan`). Its end is tight, since the list pages newest first: a
        job not listed yet is placed ``pad_s`` after its guessed creation time, and never before
        the latest it can have been created (its POST's answer, on the server's clock as far as the
        skew says); its start is loose, since older jobs only come after the ones asked for.

        The guess alone (send time plus the smallest delay seen) can fall short of a POST that took
        longer than ``pad_s`` (a busy machine): every page would then end just before the job, and
        with no later job to bring it into a page (a run's last ones), it would be seen only when
        overdue, seconds late."""
        placed = [(self._watched[j], j) for j in job_ids]
        start = min(self._start_of(w) for w, _ in placed)
        newest = max(self._created[j] for _, j in placed)
        known = all(w.created is not None for w, j in placed if self._created[j] == newest)
        end = newest + (_ROUNDING if known else timedelta(seconds=pad_s))
        for w, _ in placed:
            if w.created is None and w.answered is not None and self._skew is not None:
                end = max(end, w.answered + self._skew + _ROUNDING)
        return Window(start, end, set(job_ids), max_pages=1)

    def windows(self, now: float, young_s: Mapping[str, float] | None = None) -> list[Window]:
        """The listings that cover every job due at ``now``: one per cluster of creation times.

        With ``young_s`` (per kind: an age below which a job has likely not finished, such as the
        typical duration), such young jobs may wait one sweep when listing them would take a page
        more (:meth:`_one_page_each`)."""
        due = sorted(
            (
                (self._start_of(w), self._end_of(w), job_id)
                for job_id, w in self._watched.items()
                if w.due <= now
            ),
            key=lambda t: t[0],
        )
        windows: list[Window] = []
        for start, end, job_id in self._one_page_each(due, now, young_s or {}):
            last = windows[-1] if windows else None
            if last is not None and (last.end is None or start <= last.end + self._gap):
                last.end = None if last.end is None or end is None else max(last.end, end)
                last.expected.add(job_id)
            else:
                windows.append(Window(start, end, {job_id}))
        return windows

    def _one_page_each(
        self, due: list[tuple[datetime, datetime | None, str]], now: float, young_s: Mapping[str, float]
    ) -> list[tuple[datetime, datetime | None, str]]:
        """The due jobs (oldest first) that one page per cluster can cover; young ones beyond it
        wait a sweep or two.

        The list pages newest first through every job created in a window, finished ones
        included, so a window over all 64 running jobs costs two pages each sweep. Cut at
        :attr:`page_size` known jobs, it costs one: the older jobs go now, and jobs younger than
        ``young_s`` of their kind (unlikely to have finished) at one of the next two sweeps. A
        job past that age, or a window whose end is not known (the server's clock not learned
        yet), is never cut."""
        if self.page_size is None or not due or not young_s:
            return due
        self._forget_before(due[0][0])
        times = [t for t, _ in self._by_time]
        kept: list[tuple[datetime, datetime | None, str]] = []
        first: datetime | None = None
        for start, end, job_id in due:
            w = self._watched[job_id]
            if first is None or (kept[-1][1] is not None and start > kept[-1][1] + self._gap):
                first = start  # a new cluster: a window of its own
            elif (
                end is not None
                and w.deferred < _MAX_DEFERRALS
                and now - w.since < young_s.get(w.kind, 0.0)
                and _count(times, first, end) > self.page_size
            ):
                w.deferred += 1  # beyond this cluster's first page: a later sweep, soon
                continue
            w.deferred = 0
            kept.append((start, end, job_id))
        return kept

    def _forget_before(self, oldest: datetime) -> None:
        """Creation times older than every window to come count no more."""
        if len(self._created) > max(4 * max(len(self._watched), 16), self._prune_at):
            cut = oldest - self._margin
            self._by_time = [(t, j) for t, j in self._by_time if t >= cut or j in self._watched]
            self._created = {j: t for t, j in self._by_time}
            self._prune_at = 2 * len(self._created)

    def _set_created(self, job_id: str, at: datetime) -> None:
        """Learn (or correct) when ``job_id`` was created, in both records of creation times."""
        old = self._created.get(job_id)
        if old == at:
            return
        if old is not None:
            del self._by_time[bisect_left(self._by_time, (old, job_id))]
        self._created[job_id] = at
        insort(self._by_time, (at, job_id))

    def _start_of(self, w: _Watched) -> datetime:
        if w.created is not None:
            return w.created - _ROUNDING
        if self._skew is None:
            return w.sent - self._margin
        return w.sent + self._skew - self._settled_margin

    def _end_of(self, w: _Watched) -> datetime | None:
        if w.created is not None:
            return w.created + _ROUNDING
        if self._skew is None:
            return None  # the server's own "now"
        return w.sent + self._skew + self._settled_margin

    def take(
        self,
        window: Window,
        jobs: Sequence[JobSummary],
        now: float,
        next_look: dict[str, float],
        asked: float | None = None,
    ) -> list[Found]:
        """Read one listing page: learn creation times, and return the watched jobs that finished.

        ``asked``: when the page was asked for (monotonic; default ``now``): a job it shows running
        was running then, not necessarily when the answer is read.

        A job still running is next due ``next_look[kind]`` seconds from ``now``. Finished
        jobs stop being watched; the caller owns them from here.
        """
        finished: list[Found] = []
        asked = now if asked is None else asked
        for item in jobs:
            if item.created_at is not None:
                self._set_created(item.job_id, item.created_at)
            w = self._watched.get(item.job_id)
            if w is None:
                continue
            window.found.add(item.job_id)
            w.misses = 0
            if window.caught_up is None or w.sent > window.caught_up:
                window.caught_up = w.sent
            if w.created is None and item.created_at is not None:
                w.created = item.created_at
                skew = item.created_at - w.sent
                self._skew = skew if self._skew is None else min(self._skew, skew)
            if item.status.is_terminal:
                del self._watched[item.job_id]
                finished.append(
                    Found(item.job_id, w.key, w.kind, item.status, w.running_at, now, item.credits)
                )
            else:
                w.running_at = asked
                w.due = now + next_look.get(w.kind, 1.0)
        return finished

    def end(
        self, window: Window, now: datetime, mono: float, next_look: dict[str, float]
    ) -> list[tuple[str, str]]:
        """After a window whose every page was read: ``(job id, key)`` of jobs given up on.

        A job counts as missing when a job we sent after it was listed, or when we sent
        it more than ``patience`` ago (a list that lags a little is not a miss); missing
        ``max_misses`` times, it is polled alone, and the margin widens for the rest.
        Jobs missing but kept are looked for again ``next_look[kind]`` from ``mono``.
        """
        given_up: list[tuple[str, str]] = []
        for job_id in window.expected - window.found:
            w = self._watched.get(job_id)
            if w is None:
                continue
            w.due = mono + next_look.get(w.kind, 1.0)
            if window.floor is not None and self._created.get(job_id, window.floor) < window.floor:
                continue  # older than the last job the pages read: not reached, not missed
            overtaken = window.caught_up is not None and w.sent < window.caught_up
            if not overtaken and now - w.sent <= self._patience:
                continue
            w.misses += 1
            if w.misses >= self._max_misses:
                del self._watched[job_id]
                given_up.append((job_id, w.key))
        if given_up:
            self._settled_margin = min(self._settled_margin * 4, timedelta(days=1))
            self._margin = max(self._margin, self._settled_margin)
        return given_up

    def drain(self) -> list[tuple[str, str]]:
        """Stop watching everything (the list cannot be read): ``(job id, key)`` of each job."""
        jobs = [(job_id, w.key) for job_id, w in self._watched.items()]
        self._watched.clear()
        return jobs


def _count(times: list[datetime], start: datetime, end: datetime) -> int:
    """How many of the sorted ``times`` fall within ``[start, end]``."""
    return bisect_right(times, end) - bisect_left(times, start)

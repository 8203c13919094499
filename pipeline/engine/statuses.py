"""Where the watch learns running jobs' statuses from, before it lists the jobs itself.

A single run lists its own jobs (:mod:`pipeline.engine.sweep`): :class:`OwnSweeps` says so by
knowing nothing. Workers cooperating on one API key elect one of them to list the jobs of all
(:mod:`pipeline.engine.sharedsweep`); the others read what it stored instead of listing, so the
list requests do not multiply by the number of workers. A source that has nothing fresh (no
sweeper alive) answers None and the watch lists for itself, as a single run does.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from pipeline.api.records import JobSummary

__all__ = ["OwnSweeps", "StatusSource"]


class StatusSource(Protocol):
    """Job statuses another sweep learned; the watch asks before each of its own listings."""

    #: Every job is watched through the source, however few are in flight (a shared sweep lists
    #: them anyway); False: a handful of jobs is cheaper polled alone.
    shared: bool

    async def seen(self, job_ids: Collection[str]) -> Mapping[str, JobSummary] | None:
        """What a live sweeper saw lately of these jobs (those it has not seen are missing);
        None: nobody sweeps for this worker now, list them yourself."""
        ...

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` when there is news to read (a hint); returns the call that unsubscribes."""
        ...


class OwnSweeps:
    """A single run: nobody else sweeps, the watch lists its own jobs."""

    shared = False

    async def seen(self, job_ids: Collection[str]) -> Mapping[str, JobSummary] | None:
        return None

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        return lambda: None

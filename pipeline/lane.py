"""A worker thread of its own for one kind of blocking work: a cheaper hop than ``anyio.to_thread``.

Why: ``anyio.to_thread.run_sync`` costs about 100 µs of CPU per call (a capacity limiter, run
variables, a pool whose Python-level ``queue.Queue`` wakes an idle thread through a
``Condition``); a 400-unit run's profile had those hops at 14 % of the client's CPU, with a few
of them per file (state commits, publications). A lane is one long-lived thread fed through the
C ``queue.SimpleQueue``; what it finishes goes back to the loop with one ``call_soon_threadsafe``.
Work queued while the thread is busy is taken in the same pass, and :meth:`Lane.run_grouped`
hands every queued item of one group function to a single call, so they can share their fsyncs
(the output folder's publications, see :mod:`pipeline.output.local`).

Like ``anyio.to_thread.run_sync`` a call is shielded: once queued, the caller waits for the work to
finish even if cancelled, and the cancellation lands after. Runs on the asyncio backend (the run's).
One lane runs its work in order, one item at a time: give each kind of work its own lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, cast

import anyio

__all__ = ["Lane"]

T = TypeVar("T")
A = TypeVar("A")

#: A group function: the items in queue order in, one result (or the exception it raised) per item out.
Group = Callable[[list[A]], Sequence[T | BaseException]]


class _Job(Generic[T]):
    __slots__ = ("args", "fn", "future", "group", "loop")

    def __init__(
        self, fn: Callable[..., T] | None, args: tuple[Any, ...], group: Group[Any, T] | None
    ) -> None:
        self.fn, self.args, self.group = fn, args, group
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[T] = self.loop.create_future()


_STOP: Any = object()
_IDLE_S = 10.0  # a thread with nothing to do for this long ends


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """On the loop: hand each result (or exception) to its waiter."""
    for future, result, error in outcomes:
        if future.done():  # cancelled by a plain asyncio cancel: nobody is waiting any more
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class Lane:
    """One daemon thread that runs blocking calls for the event loop, in the order they came."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[_Job[Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the lane's thread; its result, or its exception raised here."""
        return await self._wait(_Job(fn, args, None))

    async def run_grouped(self, group: Group[A, T], item: A) -> T:
        """``item``'s result from ``group(items)``, called once for every item of ``group`` queued
        together (this one included), in queue order."""
        return await self._wait(_Job(None, (item,), group))

    def close(self) -> None:
        """Let the thread end once the work queued before is done (a later call starts a new one)."""
        with self._start_lock:
            if self._thread is not None:
                self._queue.put(_STOP)
                self._queue, self._thread = queue.SimpleQueue(), None

    async def _wait(self, job: _Job[T]) -> T:
        with self._start_lock:  # against the thread's idle exit: a job never lands on a leaving thread
            self._queue.put(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=_work, args=(self, self._queue), name=self._name, daemon=True
                )
                self._thread.start()
        with anyio.CancelScope(shield=True):
            result = await job.future
        return result


def _work(lane: Lane, jobs_in: queue.SimpleQueue[_Job[Any]]) -> None:
    """The lane's thread: run what comes, in order, until the stop mark or ``_IDLE_S`` without work
    (a store that is never closed leaves no thread behind; the next call starts one)."""
    get, get_nowait = jobs_in.get, jobs_in.get_nowait
    while True:
        try:
            jobs = [get(timeout=_IDLE_S)]
        except queue.Empty:
            with lane._start_lock:
                if jobs_in.empty():
                    if lane._queue is jobs_in:
                        lane._thread = None
                    return
            continue
        while True:  # everything queued meanwhile goes in this pass
            try:
                jobs.append(get_nowait())
            except queue.Empty:
                break
        while jobs:
            job = jobs.pop(0)
            if job is _STOP:
                return
            if job.group is None:
                batch = [job]
                outcomes = [_call(job)]
            else:
                batch = [job] + [j for j in jobs if j is not _STOP and j.group == job.group]
                jobs = [j for j in jobs if j is _STOP or j.group != job.group]
                outcomes = _call_group(job.group, batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
            for j, (result, error) in zip(batch, outcomes, strict=True):
                by_loop.setdefault(j.loop, []).append((j.future, result, error))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                    loop.call_soon_threadsafe(_settle, settled)


def _call(job: _Job[Any]) -> tuple[Any, BaseException | None]:
    try:
        return cast(Callable[..., Any], job.fn)(*job.args), None
    except BaseException as exc:  # handed to the waiter, raised there
        return None, exc


def _call_group(group: Group[Any, Any], batch: list[_Job[Any]]) -> list[tuple[Any, BaseException | None]]:
    try:
        results = list(group([j.args[0] for j in batch]))
        if len(results) != len(batch):
            raise RuntimeError(f"group {group!r} returned {len(results)} results for {len(batch)} items")
    except BaseException as exc:  # every item of the group fails with it
        return [(None, exc)] * len(batch)
    return [(None, r) if isinstance(r, BaseException) else (r, None) for r in results]

"""The lane: blocking calls on a thread of their own, results and errors back in the caller, in order."""

from __future__ import annotations

import threading

import anyio
import pytest

from pipeline.lane import Lane


async def test_a_call_runs_on_the_lane_thread_and_its_error_is_raised_to_the_caller() -> None:
    lane = Lane("test")
    try:
        assert await lane.run(threading.current_thread) is not threading.current_thread()
        with pytest.raises(ZeroDivisionError):
            await lane.run(lambda: 1 / 0)
        assert await lane.run(lambda a, b: a + b, 2, 3) == 5
    finally:
        lane.close()


async def test_items_queued_together_reach_one_group_call_and_fail_alone() -> None:
    lane, gate, calls = Lane("test"), threading.Event(), []

    def group(items: list[int]) -> list[int | BaseException]:
        calls.append(list(items))
        return [ValueError(i) if i == 2 else i * 10 for i in items]

    results: dict[int, object] = {}

    async def one(i: int) -> None:
        try:
            results[i] = await lane.run_grouped(group, i)
        except ValueError as exc:
            results[i] = exc

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lane.run, gate.wait)  # holds the thread while the others queue up
            for i in (1, 2, 3):
                tg.start_soon(one, i)
            await anyio.sleep(0.05)
            gate.set()
    finally:
        lane.close()
    assert calls == [[1, 2, 3]]
    assert results[1] == 10 and results[3] == 30
    assert isinstance(results[2], ValueError)


async def test_a_cancelled_caller_still_waits_for_its_work_to_finish() -> None:
    lane, gate, finished = Lane("test"), threading.Event(), threading.Event()

    def slow() -> None:
        gate.wait()
        finished.set()

    try:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lane.run, slow)
                await anyio.sleep(0.02)
                threading.Timer(0.1, gate.set).start()
                scope.cancel()
        assert finished.is_set()  # the task group ended only after the work did
    finally:
        lane.close()


async def test_an_idle_thread_ends_and_the_next_call_starts_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.lane._IDLE_S", 0.05)
    lane = Lane("test")
    first = await lane.run(threading.current_thread)
    for _ in range(100):
        if not first.is_alive():
            break
        await anyio.sleep(0.02)
    assert not first.is_alive()
    second = await lane.run(threading.current_thread)
    assert second is not first
    lane.close()

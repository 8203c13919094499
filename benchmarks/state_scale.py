"""How the state store scales: sync 100,000 units, read them back, and group-commit intents.

Run: ``.venv/bin/python benchmarks/state_scale.py [--units N] [--callers N] [--rounds N] [--dir PATH]``.
Prints one line per figure. Uses a real file (fsync included) in a temporary directory.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from pipeline.clock import SystemClock
from pipeline.state.sqlite import StateStore


@dataclass(frozen=True, slots=True)
class _Unit:
    key: str
    item_id: str
    step: str
    index: int
    upstream: str | None
    expected_outputs: int
    request: dict[str, Any] = field(default_factory=dict)


def _units(count: int) -> list[_Unit]:
    return [
        _Unit(
            key=f"{i:032x}",
            item_id=f"sku-{i // 2:06d}",
            step="image",
            index=i % 2 + 1,
            upstream=None,
            expected_outputs=1,
            request={"prompt": f"studio photo of product {i // 2}, white background", "n": 1},
        )
        for i in range(count)
    ]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def _run(directory: Path, count: int, callers: int, rounds: int) -> None:
    units = _units(count)
    async with StateStore.open(directory / "state.db", clock=SystemClock()) as store:
        started = time.perf_counter()
        added = await store.sync_units(units)
        took = time.perf_counter() - started
        print(f"state_scale: sync {added} units {took:.2f} s; peak RSS {_rss_mib():.0f} MiB")
        started = time.perf_counter()
        again = await store.sync_units(units)
        print(f"state_scale: re-sync {count} units (added {again}) {time.perf_counter() - started:.2f} s")

        for name, read in (("phases()", store.phases), ("counts()", store.counts), ("units()", store.units)):
            started = time.perf_counter()
            read()
            print(f"state_scale: {name} {time.perf_counter() - started:.2f} s; peak RSS {_rss_mib():.0f} MiB")

        rounds = max(1, min(rounds, (count - 200) // callers))  # leave 200 pending units for the last figure
        commits_before, calls = store.commits, callers * rounds
        started = time.perf_counter()
        for r in range(rounds):
            async with anyio.create_task_group() as tg:
                for u in units[r * callers : (r + 1) * callers]:
                    tg.start_soon(store.mark_submitting, u.key)
        took = time.perf_counter() - started
        commits = store.commits - commits_before
        print(
            f"state_scale: mark_submitting {calls} calls ({callers} concurrent x {rounds}) "
            f"in {commits} commits, {took:.2f} s: {commits / took:.0f} commits/s, {calls / took:.0f} calls/s"
        )
        started = time.perf_counter()
        for u in units[calls : calls + 200]:
            await store.mark_submitting(u.key)
        took = time.perf_counter() - started
        print(f"state_scale: mark_submitting 200 sequential calls {took:.2f} s: {200 / took:.0f} calls/s")


def main() -> None:
    """Parse the figures' sizes and run them against a fresh state file."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--callers", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--dir", type=Path, default=None, help="state file directory (default: a temp dir)")
    args = parser.parse_args()
    if args.units < args.callers + 200:
        parser.error("--units must be at least --callers + 200")
    if args.dir is not None:
        anyio.run(_run, args.dir, args.units, args.callers, args.rounds)
        return
    with tempfile.TemporaryDirectory(prefix="state_scale-") as tmp:
        anyio.run(_run, Path(tmp), args.units, args.callers, args.rounds)


if __name__ == "__main__":
    main()

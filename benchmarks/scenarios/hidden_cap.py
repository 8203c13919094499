"""Hidden cap: the throughput workload, but the client is told ``--max-active 256`` while the
simulator allows 32 active jobs per key. The client must find the cap from 429s (AIMD).

The lower bound is computed on the simulator's 32 slots.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.harness import (
    Context,
    Figure,
    Requests,
    at_most,
    durations_in_order,
    failed_run,
    info,
    list_schedule,
    run_pipeline,
    write_manifest,
)
from benchmarks.scenarios.throughput import Outcome


@dataclass(frozen=True)
class Size:
    units: int = 2000
    told: int = 256
    server_cap: int = 32
    durations: tuple[float, float] = (1.0, 3.0)
    timeout_s: float = 400.0


def run(ctx: Context, size: Size) -> list[Figure]:
    folder = ctx.folder("hidden_cap")
    manifest = write_manifest(folder, size.units)
    ctx.sim.configure(image_s=list(size.durations), max_active_jobs=size.server_cap)
    result = run_pipeline(
        manifest, folder / "out", ctx.sim, max_active=size.told, timeout_s=size.timeout_s, name="client"
    )
    if result.returncode != 0:
        return [failed_run("hidden_cap", result)]
    stats = ctx.sim.stats()
    reqs = Requests.of(stats)
    lower = list_schedule(durations_in_order(ctx.sim.ledger()), size.server_cap)
    ctx.results["hidden_cap"] = Outcome(size.units, result, lower, reqs)
    n = size.units
    peak = max(stats["peak_active_jobs"].values(), default=0)
    return [
        info("hidden_cap.units", n, "units", f"client told {size.told}, simulator allows {size.server_cap}"),
        info("hidden_cap.wall", result.wall_s, "s"),
        info("hidden_cap.lower_bound", lower, "s", f"on {size.server_cap} slots"),
        at_most("hidden_cap.wall/lower_bound", result.wall_s / lower, 1.25, "x"),
        at_most("hidden_cap.429s_per_unit", reqs.sent_429 / n, 0.1, "resp/unit", f"{reqs.sent_429} in all"),
        info("hidden_cap.polls_per_unit", reqs.polls / n, "req/unit"),
        info("hidden_cap.peak_server_active", peak, "jobs"),
    ]

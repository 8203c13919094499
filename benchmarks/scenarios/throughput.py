"""Throughput: N image units, seeded job durations, an active-job cap of C per key, no rate limit.

The simulator enforces the cap (``max_active_jobs = C``) and the client is told the same
(``--max-active C``). Wall time is the client process's, from spawn to exit (start-up,
manifest load and state sync included). The lower bound is the makespan of a perfect
client: the simulator's ledger durations, in creation order, list-scheduled on C slots
with zero overhead (:func:`~benchmarks.harness.list_schedule`).
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.harness import (
    Context,
    Figure,
    ProcessResult,
    Requests,
    at_most,
    durations_in_order,
    failed_run,
    info,
    list_schedule,
    run_pipeline,
    write_manifest,
)


@dataclass(frozen=True)
class Size:
    units: int = 2000
    cap: int = 64
    durations: tuple[float, float] = (1.0, 3.0)
    timeout_s: float = 300.0
    target: float = 1.05  # wall / greedy limit


@dataclass(frozen=True)
class Outcome:
    """What this run measured, kept for the client-cost and baseline scenarios."""

    units: int
    result: ProcessResult
    lower_bound_s: float
    requests: Requests


def run(ctx: Context, size: Size) -> list[Figure]:
    folder = ctx.folder("throughput")
    manifest = write_manifest(folder, size.units)
    ctx.sim.configure(image_s=list(size.durations), max_active_jobs=size.cap)
    result = run_pipeline(
        manifest, folder / "out", ctx.sim, max_active=size.cap, timeout_s=size.timeout_s, name="client"
    )
    if result.returncode != 0:
        return [failed_run("throughput", result)]
    reqs = Requests.of(ctx.sim.stats())
    durations = durations_in_order(ctx.sim.ledger())
    lower = list_schedule(durations, size.cap)
    ctx.results["throughput"] = Outcome(size.units, result, lower, reqs)
    ctx.results["throughput.size"] = size
    n = size.units
    lo, hi = size.durations
    ideal = sum(durations) / size.cap
    return [
        info("throughput.units", n, "units", f"durations U({lo:g}, {hi:g}) s, cap {size.cap}, no rate limit"),
        info("throughput.wall", result.wall_s, "s", "client process, spawn to exit"),
        info(
            "throughput.greedy_limit",
            lower,
            "s",
            f"ledger durations in submission order, each started the moment one of {size.cap} slots frees",
        ),
        info("throughput.sum_d/C", ideal, "s", "all work spread evenly over the slots (unreachable)"),
        at_most("throughput.wall/greedy_limit", result.wall_s / lower, size.target, "x", "start-up included"),
        at_most(
            "throughput.requests_per_unit",
            (reqs.submissions + reqs.polls) / n,
            2.3,
            "req/unit",
            "submissions + polls + job-list pages, downloads apart",
        ),
        info("throughput.submissions_per_unit", reqs.submissions / n, "req/unit"),
        at_most("throughput.polls_per_unit", reqs.polls / n, 1.5, "req/unit", "GET /jobs/{id} + GET /jobs"),
        info("throughput.downloads_per_unit", reqs.downloads / n, "req/unit"),
        info("throughput.other_requests", reqs.other, "req", "ping and the like"),
        info("throughput.429s", reqs.sent_429, "resp"),
    ]

"""The two baselines on the throughput, hidden-cap and rate-limited workloads, and our ratio to each.

Both poll every 5 s, so running them at full size would take hours (sequential: ~5 s per unit,
2,000 units ≈ 2 h 45 min). They run on a sample instead, a whole number of their concurrency
windows, and their wall time is projected linearly to the scenario's size (both are
throughput-bound: each unit holds one slot for one poll interval). ``--full-baselines`` runs
them at full size. The sequential client holds one job at a time and sends under one request a
second, so the cap and the rate limit never bind it: its throughput sample stands for all three.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from benchmarks.harness import (
    PYTHON,
    Context,
    Figure,
    Requests,
    StatsSampler,
    clean_env,
    failed_run,
    info,
    run_process,
    write_bodies,
    write_manifest,
)
from benchmarks.scenarios.rate_limited import window


@dataclass(frozen=True)
class Size:
    units: int = 2000  # the throughput and hidden-cap scenarios' size, for the projections
    durations: tuple[float, float] = (1.0, 3.0)
    poll_s: float = 5.0
    cap: int = 64
    hidden_told: int = 256
    hidden_cap: int = 32
    sequential_sample: int = 6
    gather_sample: int = 256  # 4 windows of 64
    hidden_sample: int = 128  # 4 windows of 32
    rate_sample: int = 192  # 3 windows of 64
    rate_limit: float = 20.0
    full: bool = False
    timeout_s: float = 600.0


@dataclass(frozen=True)
class Measured:
    units: int
    seconds: float
    requests: Requests
    output: dict[str, Any]


def _baseline(ctx: Context, script: str, units: int, size: Size, name: str, *extra: str) -> Measured | Figure:
    folder = ctx.folder(f"baselines/{name}")
    bodies = write_bodies(write_manifest(folder, units), folder / "bodies.jsonl")
    argv = [PYTHON, "-m", f"benchmarks.baselines.{script}", str(bodies), str(folder / "out")]
    argv += ["--base-url", ctx.sim.base_url, "--poll-s", str(size.poll_s), *extra]
    result = run_process(argv, env=clean_env(), timeout_s=size.timeout_s, workdir=folder, name=script)
    if result.returncode != 0:
        return failed_run(f"baselines.{name}", result)
    output = json.loads(result.stdout.strip().splitlines()[-1])
    return Measured(units, float(output["seconds"]), Requests.of(ctx.sim.stats()), output)


def _ratio(name: str, ours: float | None, projected: float) -> Figure:
    if ours is None:
        return info(name, None, "x", "our scenario did not run")
    return info(name, ours / projected, "x", f"ours {ours:.1f} s / baseline {projected:.1f} s")


def _ours_wall(ctx: Context, scenario: str) -> float | None:
    outcome = ctx.results.get(scenario)
    return None if outcome is None else float(outcome.result.wall_s)


def run(ctx: Context, size: Size) -> list[Figure]:
    figures: list[Figure] = []
    n = size.units
    spans = list(size.durations)

    # (a) sequential, throughput workload (and, as explained above, the other two).
    k = n if size.full else size.sequential_sample
    ctx.sim.configure(image_s=spans, max_active_jobs=size.cap)
    seq = _baseline(ctx, "sequential", k, size, "sequential")
    if isinstance(seq, Figure):
        return [seq]
    seq_wall = seq.seconds * n / k
    seq_rate = seq.requests.api / seq.seconds
    figures += [
        info(
            "baselines.sequential.wall",
            seq_wall,
            "s",
            f"projected to {n} units from {k}: {seq.seconds:.1f} s",
        ),
        info("baselines.sequential.polls_per_unit", seq.requests.polls / k, "req/unit"),
        _ratio("baselines.sequential.throughput ours/baseline", _ours_wall(ctx, "throughput"), seq_wall),
        _ratio("baselines.sequential.hidden_cap ours/baseline", _ours_wall(ctx, "hidden_cap"), seq_wall),
        info(
            "baselines.sequential.rate_limited.rate/limit",
            seq_rate / size.rate_limit,
            "x",
            f"{seq_rate:.2f} req/s",
        ),
    ]

    # (b) gather under a semaphore: throughput.
    k = n if size.full else size.gather_sample
    ctx.sim.configure(image_s=spans, max_active_jobs=size.cap)
    got = _baseline(ctx, "gather", k, size, "gather", "--concurrency", str(size.cap))
    if isinstance(got, Figure):
        return [*figures, got]
    wall = got.seconds * n / k
    figures += [
        info("baselines.gather.wall", wall, "s", f"projected to {n} units from {k}: {got.seconds:.1f} s"),
        info("baselines.gather.polls_per_unit", got.requests.polls / k, "req/unit"),
        _ratio("baselines.gather.throughput ours/baseline", _ours_wall(ctx, "throughput"), wall),
    ]

    # (b) hidden cap: told 256, the simulator allows 32.
    k = n if size.full else size.hidden_sample
    ctx.sim.configure(image_s=spans, max_active_jobs=size.hidden_cap)
    got = _baseline(ctx, "gather", k, size, "gather-hidden", "--concurrency", str(size.hidden_told))
    if isinstance(got, Figure):
        return [*figures, got]
    wall = got.seconds * n / k
    figures += [
        info("baselines.gather.hidden_cap.wall", wall, "s", f"projected from {k} units: {got.seconds:.1f} s"),
        info("baselines.gather.hidden_cap.429s_per_unit", got.requests.sent_429 / k, "resp/unit"),
        _ratio("baselines.gather.hidden_cap ours/baseline", _ours_wall(ctx, "hidden_cap"), wall),
    ]

    # (b) rate-limited: the achieved admitted rate, measured as in the rate-limited scenario.
    k = size.rate_sample
    ctx.sim.configure(image_s=spans, rps_limit=size.rate_limit, retry_after="seconds")
    sampler = StatsSampler(ctx.sim, every_s=0.25)
    with sampler.running():
        got = _baseline(ctx, "gather", k, size, "gather-rate", "--concurrency", str(size.cap))
    if isinstance(got, Figure):
        return [*figures, got]
    sampler.samples.append((sampler.samples[-1][0] + 0.25, got.requests))
    win = window(sampler.samples, k)
    rate = None if win is None else win.rate / size.rate_limit
    ours = ctx.results.get("rate_limited")
    ours_note = "" if ours is None else f"ours {ours[1].rate / size.rate_limit:.3f}"
    figures += [
        info("baselines.gather.rate_limited.rate/limit", rate, "x", ours_note),
        info("baselines.gather.rate_limited.429s", got.requests.sent_429, "resp", f"{k} units"),
    ]
    return figures

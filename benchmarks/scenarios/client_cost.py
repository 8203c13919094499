"""Client cost: CPU seconds of the client process (user + system, from ``wait4``) per unit, ours
beside the plain ``asyncio.gather`` script's (``baselines/gather.py``) on the same units.

Ours is taken from the throughput run (tiny files, so download bytes cost next to nothing). The
gather script then does the same units against the same simulator settings: POST, a poll every
1 s, download, write the file; no durability, no state, no retry logic beyond a 429. Both figures
include the process's fixed start-up (interpreter, imports; for ours the manifest and state too);
a no-op run of a one-unit manifest measures ours, reported apart. Target: ours ≤ 2× gather's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from benchmarks.harness import (
    PYTHON,
    Context,
    Figure,
    at_most,
    clean_env,
    failed_run,
    info,
    run_pipeline,
    run_process,
    write_bodies,
    write_manifest,
)
from benchmarks.scenarios import throughput


@dataclass(frozen=True)
class Size:
    #: What to run when the throughput scenario did not (``--only client_cost``).
    fallback: throughput.Size = field(default_factory=lambda: throughput.Size(units=200))
    gather_poll_s: float = 1.0
    ratio: float = 2.0


def _gather_cpu(ctx: Context, size: Size, spec: throughput.Size) -> float | Figure:
    """CPU seconds of the gather script doing ``spec``'s units at ``spec``'s cap."""
    folder = ctx.folder("client_cost/gather")
    bodies = write_bodies(write_manifest(folder, spec.units), folder / "bodies.jsonl")
    ctx.sim.configure(image_s=list(spec.durations), max_active_jobs=spec.cap)
    argv = [PYTHON, "-m", "benchmarks.baselines.gather", str(bodies), str(folder / "out")]
    argv += ["--base-url", ctx.sim.base_url, "--poll-s", str(size.gather_poll_s)]
    argv += ["--concurrency", str(spec.cap)]
    result = run_process(argv, env=clean_env(), timeout_s=spec.timeout_s, workdir=folder, name="gather")
    if result.returncode != 0:
        return failed_run("client_cost.gather", result)
    done = json.loads(result.stdout.strip().splitlines()[-1])
    if done.get("done") != spec.units:
        return info("client_cost.gather", None, "", f"the gather script finished {done}")
    return result.cpu_s


def run(ctx: Context, size: Size) -> list[Figure]:
    if "throughput" not in ctx.results:
        figures = throughput.run(ctx, size.fallback)
        if "throughput" not in ctx.results:
            return figures
    outcome: throughput.Outcome = ctx.results["throughput"]
    spec: throughput.Size = ctx.results.get("throughput.size", size.fallback)
    folder = ctx.folder("client_cost")
    ctx.sim.configure(image_s=[0.0, 0.0])
    manifest = write_manifest(folder, 1)
    first = run_pipeline(manifest, folder / "out", ctx.sim, max_active=1, timeout_s=60, name="one")
    again = run_pipeline(manifest, folder / "out", ctx.sim, max_active=1, timeout_s=60, name="noop")
    if first.returncode != 0 or again.returncode != 0:
        return [failed_run("client_cost.noop", again if first.returncode == 0 else first)]
    gather = _gather_cpu(ctx, size, spec)
    if isinstance(gather, Figure):
        return [gather]
    n, cpu = outcome.units, outcome.result.cpu_s
    ours_ms, gather_ms = cpu / n * 1000, gather / n * 1000
    return [
        info("client_cost.cpu", cpu, "s", f"throughput run, {n} units"),
        info("client_cost.cpu_per_unit", ours_ms, "ms/unit", "start-up included"),
        info(
            "client_cost.gather_cpu_per_unit",
            gather_ms,
            "ms/unit",
            f"baselines/gather.py, same {n} units, {size.gather_poll_s:g} s polls, start-up included",
        ),
        at_most(
            "client_cost.ours/gather",
            ours_ms / gather_ms,
            size.ratio,
            "x",
            "CPU per unit, both start-ups included",
        ),
        info("client_cost.startup_cpu", again.cpu_s, "s", "no-op run of a 1-unit manifest"),
        info("client_cost.cpu_per_unit_after_startup", (cpu - again.cpu_s) / n * 1000, "ms/unit"),
        info("client_cost.peak_rss", outcome.result.peak_rss_mib, "MiB"),
    ]

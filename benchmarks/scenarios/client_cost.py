"""Client cost: CPU seconds of the client process (user + system, from ``wait4``) per unit.

Taken from the throughput run (tiny files, so download bytes cost next to nothing). The
figure includes the process's fixed start-up (interpreter, imports, manifest, state); a
no-op run of a one-unit manifest measures that part, reported apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.harness import Context, Figure, at_most, failed_run, info, run_pipeline, write_manifest
from benchmarks.scenarios import throughput


@dataclass(frozen=True)
class Size:
    #: What to run when the throughput scenario did not (``--only client_cost``).
    fallback: throughput.Size = field(default_factory=lambda: throughput.Size(units=200))


def run(ctx: Context, size: Size) -> list[Figure]:
    if "throughput" not in ctx.results:
        figures = throughput.run(ctx, size.fallback)
        if "throughput" not in ctx.results:
            return figures
    outcome: throughput.Outcome = ctx.results["throughput"]
    folder = ctx.folder("client_cost")
    ctx.sim.configure(image_s=[0.0, 0.0])
    manifest = write_manifest(folder, 1)
    first = run_pipeline(manifest, folder / "out", ctx.sim, max_active=1, timeout_s=60, name="one")
    again = run_pipeline(manifest, folder / "out", ctx.sim, max_active=1, timeout_s=60, name="noop")
    if first.returncode != 0 or again.returncode != 0:
        return [failed_run("client_cost.noop", again if first.returncode == 0 else first)]
    n, cpu = outcome.units, outcome.result.cpu_s
    return [
        info("client_cost.cpu", cpu, "s", f"throughput run, {n} units"),
        at_most("client_cost.cpu_per_unit", cpu / n * 1000, 1.0, "ms/unit", "start-up included"),
        info("client_cost.startup_cpu", again.cpu_s, "s", "no-op run of a 1-unit manifest"),
        info("client_cost.cpu_per_unit_after_startup", (cpu - again.cpu_s) / n * 1000, "ms/unit"),
        info("client_cost.peak_rss", outcome.result.peak_rss_mib, "MiB"),
    ]

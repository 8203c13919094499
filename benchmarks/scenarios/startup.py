"""Start-up: from spawning ``photogpt-pipeline run`` to its first POST, on a 4-unit manifest.

The simulator records when it created each job on the machine's monotonic clock, the one this
process reads just before spawning the client, so the difference is the client's start-up:
interpreter, imports, manifest, lock, state, preflight and the first request. The median of a
few fresh runs is judged (target 0.3 s); a second run of the same manifest (all done, no
request) shows the no-op resume's wall time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from benchmarks.harness import Context, Figure, at_most, failed_run, info, run_pipeline, write_manifest


@dataclass(frozen=True)
class Size:
    units: int = 4
    runs: int = 5
    target_s: float = 0.3
    timeout_s: float = 60.0


def run(ctx: Context, size: Size) -> list[Figure]:
    firsts: list[float] = []
    cpus: list[float] = []
    for attempt in range(size.runs + 1):  # the first warms the bytecode caches, like a user's install
        folder = ctx.folder(f"startup-{attempt}")
        manifest = write_manifest(folder, size.units, name="startup")
        ctx.sim.configure(image_s=[0.05, 0.1])
        spawned = time.monotonic()
        result = run_pipeline(
            manifest, folder / "out", ctx.sim, max_active=8, timeout_s=size.timeout_s, name="run"
        )
        if result.returncode != 0:
            return [failed_run("startup.run", result)]
        created = [float(j["created"]) for j in ctx.sim.ledger()]
        if not created:
            return [info("startup.first_post", None, "s", "no job was created")]
        if attempt > 0:
            firsts.append(min(created) - spawned)
            cpus.append(result.cpu_s)
    again = run_pipeline(
        manifest, folder / "out", ctx.sim, max_active=8, timeout_s=size.timeout_s, name="noop"
    )
    median = statistics.median(firsts)
    return [
        at_most(
            "startup.first_post",
            median,
            size.target_s,
            "s",
            f"median of {len(firsts)}: {', '.join(f'{f:.2f}' for f in firsts)}",
        ),
        info("startup.run_cpu", statistics.median(cpus), "s", f"whole run of {size.units} units"),
        info("startup.noop_resume", again.wall_s, "s", "the same manifest again: nothing to do"),
    ]

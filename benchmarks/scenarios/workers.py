"""Several workers, one run: the same manifest on 1, 2 and 3 ``photogpt-pipeline run`` processes
sharing a throwaway PostgreSQL (``--state postgresql://…``), under a server cap of 32 with each
worker told ``--max-active 64`` (a total for the key). Figures per worker count: wall time,
requests per unit, 429s, and the peak of active jobs the simulator saw. One sweeper lists the jobs
for all workers, so requests per unit stay flat as workers are added. Then the largest count again
under a request-rate limit the workers are not told (``rps_limit``): what one learns from a 429
paces them all, so the 429s stay few.

Needs the PostgreSQL server binaries (tests/pg.py starts the server); without them the scenario
prints one figure saying so.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

from benchmarks.harness import PYTHON, Context, Figure, Requests, at_most, clean_env, info, write_manifest


@dataclass(frozen=True)
class Size:
    units: int = 600
    workers: tuple[int, ...] = (1, 2, 3)
    told: int = 64
    server_cap: int = 32
    durations: tuple[float, float] = (1.0, 3.0)
    timeout_s: float = 400.0
    limited_rps: float | None = 15.0


def run(ctx: Context, size: Size) -> list[Figure]:
    from tests.pg import find_bin, throwaway_postgres

    if find_bin() is None:
        return [info("workers.skipped", "no PostgreSQL", "", "apt-get install postgresql")]
    figures: list[Figure] = []
    with throwaway_postgres() as pg:
        for n in size.workers:
            figures += _one(ctx, size, n, pg.url())
        if size.limited_rps is not None:
            figures += _one(ctx, size, max(size.workers), pg.url(), size.limited_rps)
    return figures


def _one(ctx: Context, size: Size, n: int, url: str, rps: float | None = None) -> list[Figure]:
    label = f"{n}" if rps is None else f"{n}.rps{rps:g}"
    folder = ctx.folder(f"workers_{label}")
    manifest = write_manifest(folder, size.units, name=f"workers{label.replace('.', '_')}")
    ctx.sim.configure(image_s=list(size.durations), max_active_jobs=size.server_cap, rps_limit=rps)
    argv = [PYTHON, "-m", "pipeline", "run", str(manifest), "--base-url", ctx.sim.base_url,
            "--out", str(folder / "out"), "--max-active", str(size.told), "--state", url,
            "--log-format", "json", "--log-level", "warning"]  # fmt: skip
    started = time.perf_counter()
    procs = [
        subprocess.Popen(argv, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=folder)  # noqa: S603
        for _ in range(n)
    ]
    codes = []
    for proc in procs:
        try:
            proc.communicate(timeout=size.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        codes.append(proc.returncode)
    wall = time.perf_counter() - started
    if any(codes):
        return [Figure(f"workers.{label}.run", f"exit {codes}", "", "exit 0", False, "a worker failed")]
    stats = ctx.sim.stats()
    reqs = Requests.of(stats)
    peak = max(stats["peak_active_jobs"].values(), default=0)
    units = size.units
    return [
        info(
            f"workers.{label}.wall", wall, "s", f"{units} units, {n} worker(s), server cap {size.server_cap}"
        ),
        info(f"workers.{label}.requests_per_unit", reqs.api / units, "req/unit"),
        at_most(
            f"workers.{label}.429s_per_unit",
            reqs.sent_429 / units,
            0.05,
            "resp/unit",
            f"{reqs.sent_429} in all",
        ),
        at_most(f"workers.{label}.peak_server_active", peak, size.server_cap, "jobs"),
    ]

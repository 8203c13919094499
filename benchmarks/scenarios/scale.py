"""Scale: a 100,000-unit manifest (50,000 CSV rows, each an image and its upscale: the catalog of
``benchmarks/manifest_scale.py``). Nothing is submitted: 100k paid jobs are not needed to measure
what scales with the manifest.

1. ``photogpt-pipeline plan`` on it (no state yet): wall time and peak RSS of that process.
2. An "all done" state is built through the public :class:`~pipeline.state.sqlite.StateStore` API
   (intent, job id, outputs, download, done for every unit, 2,000 units at once so group commit
   batches them), and every recorded output file exists with its recorded size (the resume
   checks each file with one ``stat``). Not judged: it stands in for 100k paid jobs.
3. ``photogpt-pipeline run`` resumes against the simulator: wall time, peak RSS, and the
   requests the simulator saw (all routes, files included): it must be zero.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from benchmarks.harness import (
    PYTHON,
    Context,
    Figure,
    Requests,
    at_most,
    clean_env,
    failed_run,
    info,
    run_pipeline,
    run_process,
)
from benchmarks.manifest_scale import write_catalog

if TYPE_CHECKING:
    from pipeline.manifest.spec import Unit
    from pipeline.state.sqlite import StateStore

#: What every fake output file holds: a JPEG start, so it is what its name says.
_CONTENT = b"\xff\xd8\xff\xe0 benchmark placeholder"
_SHA256 = hashlib.sha256(_CONTENT).hexdigest()
_CONCURRENCY = 2000
_LINKS_PER_SOURCE = 20_000


@dataclass(frozen=True)
class Size:
    units: int = 100_000  # even: one image and one upscale per row
    timeout_s: float = 120.0


def _output_path(unit: Unit, n: int, seq: int) -> str:
    """Where the fake output file of ``unit`` lives: the state records it, the resume only stats it.
    Spread over 256 folders, as 50,000 item folders would cost more to make than the rest."""
    return f"{seq % 256:03d}/{unit.item_id}-{unit.step}-{n}.jpeg"


async def _finish_unit(store: StateStore, unit: Unit, seq: int) -> None:
    await store.mark_submitting(unit.key)
    await store.mark_submitted(unit.key, f"bench-job-{seq:07d}")
    numbers = list(unit.output_numbers())
    await store.mark_succeeded(
        unit.key,
        [(f"bench-asset-{seq:07d}-{n}", f"http://127.0.0.1:9/files/{seq}-{n}.jpeg") for n in numbers],
    )
    for i, number in enumerate(numbers, 1):
        path = _output_path(unit, number, seq)
        await store.record_download(unit.key, i, path=path, bytes=len(_CONTENT), sha256=_SHA256)
    await store.mark_done(unit.key)


async def build_done_state(manifest: Path, out: Path) -> int:
    """Every unit of ``manifest`` done in ``out``'s state, with its files on disk. Returns the count.

    The files are hard links to one small file: the resume only compares each one's size
    with the recorded size, and a link costs a fraction of a file create on ext4.
    """
    from pipeline.clock import SystemClock
    from pipeline.engine.settled import none_settled
    from pipeline.engine.wiring import default_state
    from pipeline.manifest.load import load_manifest
    from pipeline.state.sqlite import StateStore

    loaded = load_manifest(manifest, settle=none_settled)  # fingerprinted, as a run loads it
    units = list(loaded.units)
    async with StateStore.open(default_state(out), clock=SystemClock()) as store:
        await store.sync_units(units)
        await store.record_prints(loaded.prints)  # the row index a run leaves behind
        for start in range(0, len(units), _CONCURRENCY):
            async with anyio.create_task_group() as tg:
                for seq, unit in enumerate(units[start : start + _CONCURRENCY], start):
                    tg.start_soon(_finish_unit, store, unit, seq)
        made: set[Path] = set()
        for linked, rec in enumerate(store.units()):
            if linked % _LINKS_PER_SOURCE == 0:  # ext4 allows 65,000 links to one inode
                source = out / ".state" / f"placeholder-{linked}.jpeg"
                source.write_bytes(_CONTENT)
            for o in rec.outputs:
                assert o.path is not None
                path = out / o.path
                if path.parent not in made:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    made.add(path.parent)
                os.link(source, path)
        counts = {str(k): v for k, v in store.counts().items() if v}
    if set(counts) != {"done"}:
        raise RuntimeError(f"the built state is not all done: {counts}")
    return counts["done"]


def run(ctx: Context, size: Size) -> list[Figure]:
    folder = ctx.folder("scale")
    manifest = write_catalog(folder, size.units // 2)
    out = folder / "out"
    plan = run_process(
        [PYTHON, "-m", "pipeline", "plan", str(manifest), "--out", str(out)],
        env=clean_env(),
        timeout_s=size.timeout_s,
        workdir=folder,
        name="plan",
    )
    if plan.returncode != 0:
        return [failed_run("scale.plan", plan)]
    started = time.perf_counter()
    done = anyio.run(build_done_state, manifest, out)
    built_s = time.perf_counter() - started
    ctx.sim.configure()
    resume = run_pipeline(manifest, out, ctx.sim, max_active=32, timeout_s=size.timeout_s, name="resume")
    if resume.returncode != 0:
        return [failed_run("scale.resume", resume)]
    reqs = Requests.of(ctx.sim.stats())
    peak = max(plan.peak_rss_mib, resume.peak_rss_mib)
    return [
        info("scale.units", done, "units", f"{size.units // 2} rows x (image + upscale)"),
        at_most("scale.plan_time", plan.wall_s, 5.0, "s", "photogpt-pipeline plan, spawn to exit"),
        info("scale.build_done_state", built_s, "s", "setup, not judged: StateStore API + files"),
        at_most("scale.noop_resume_time", resume.wall_s, 5.0, "s", "photogpt-pipeline run, all done"),
        at_most("scale.noop_resume_requests", reqs.total, 0, "req"),
        at_most(
            "scale.peak_rss",
            peak,
            300.0,
            "MiB",
            f"plan {plan.peak_rss_mib:.0f}, resume {resume.peak_rss_mib:.0f}",
        ),
    ]

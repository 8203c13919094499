"""Cron on a big catalog: a 1,000,000-unit manifest that is all done, plus 100 new rows.

1. ``photogpt-pipeline plan`` on a 1,000,000-row catalog (2,000,000 units, no state): wall time
   and peak RSS (target: 15 s).
2. An "all done" state for a 500,000-row catalog (each row an image and its upscale: 1,000,000
   units) is written straight into SQLite in bulk, with every recorded output file on disk (hard
   links, spread over 256 folders, as in the scale scenario). Setup, not judged.
3. 100 rows are appended to the CSV and ``photogpt-pipeline run`` runs against the simulator, as
   the nightly cron job would: time from spawn to its first POST (the simulator's first job,
   on the same monotonic clock), peak RSS, and the requests that concern the million done units
   (submissions and downloads beyond the new units' own): 0.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import orjson

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

_CONTENT = b"\xff\xd8\xff\xe0 benchmark placeholder"
_LINKS_PER_SOURCE = 20_000
_STAMP = "2026-01-01T00:00:00.000Z"


@dataclass(frozen=True)
class Size:
    rows: int = 500_000  # done rows: an image and an upscale each
    new_rows: int = 100
    plan_rows: int = 1_000_000
    timeout_s: float = 300.0
    first_post_s: float = 10.0
    peak_rss_mib: float = 1024.0
    plan_s: float = 15.0


def _append_rows(csv_path: Path, start: int, count: int) -> None:
    colors = ("red", "navy", "white", "black", "sand", "olive")
    with csv_path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for i in range(start, start + count):
            writer.writerow([f"sku-{i:06d}", f"Product {i}", colors[i % len(colors)]])


async def _create_schema(path: Path) -> None:
    from pipeline.clock import SystemClock
    from pipeline.state.sqlite import StateStore

    async with StateStore.open(path, clock=SystemClock()):
        pass


def build_done_state(manifest: Path, out: Path) -> int:
    """Every unit of ``manifest`` done in ``out``'s state (bulk SQL), files on disk. Returns the count."""
    from pipeline.engine.settled import none_settled
    from pipeline.engine.wiring import default_state
    from pipeline.manifest.load import load_manifest
    from pipeline.state.sqlite_prints import write_prints

    loaded = load_manifest(manifest, settle=none_settled)  # fingerprinted, as a run loads it
    units = loaded.units
    state = default_state(out)
    anyio.run(_create_schema, state)
    conn = sqlite3.connect(state, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    unit_rows = []
    output_rows = []
    for seq, u in enumerate(units):
        unit_rows.append(
            (u.key, u.item_id, u.step.value, u.index, u.upstream, orjson.dumps(u.request).decode(),
             u.expected_outputs, "done", f"bench-job-{seq:07d}", 1, _STAMP, _STAMP, _STAMP, "bench")
        )  # fmt: skip
        for n in range(1, u.expected_outputs + 1):
            path = f"{seq % 256:03d}/{u.item_id}-{u.step.value}-{n}.jpeg"
            output_rows.append(
                (u.key, n, f"bench-asset-{seq:07d}-{n}", f"http://127.0.0.1:9/files/{seq}-{n}.jpeg", path,
                 len(_CONTENT), "0" * 64, _STAMP)
            )  # fmt: skip
    conn.executemany(
        "INSERT INTO units (key, item_id, step, idx, upstream, request_json, expected_outputs, phase,"
        " job_id, attempts, submitted_at, finished_at, updated_at, run_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        unit_rows,
    )
    conn.executemany(
        "INSERT INTO outputs (unit_key, n, asset_id, url, path, bytes, sha256, downloaded_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        output_rows,
    )
    write_prints(conn, loaded.prints)  # the row index a run leaves behind
    conn.execute("COMMIT")
    conn.close()
    for folder in range(256):
        (out / f"{folder:03d}").mkdir(parents=True, exist_ok=True)
    source = out
    for linked, row in enumerate(output_rows):
        if linked % _LINKS_PER_SOURCE == 0:  # ext4 allows 65,000 links to one inode
            source = out / ".state" / f"placeholder-{linked}.jpeg"
            source.write_bytes(_CONTENT)
        os.link(source, out / row[4])
    return len(units)


def _plan(ctx: Context, size: Size) -> list[Figure]:
    folder = ctx.folder("cron-plan")
    manifest = write_catalog(folder, size.plan_rows)
    plan = run_process(
        [PYTHON, "-m", "pipeline", "plan", str(manifest), "--out", str(folder / "out")],
        env=clean_env(),
        timeout_s=size.timeout_s,
        workdir=folder,
        name="plan",
    )
    if plan.returncode != 0:
        return [failed_run("cron.plan", plan)]
    return [
        at_most(
            "cron.plan_time",
            plan.wall_s,
            size.plan_s,
            "s",
            f"plan of {size.plan_rows:,} rows ({2 * size.plan_rows:,} units), spawn to exit",
        ),
        info("cron.plan_peak_rss", plan.peak_rss_mib, "MiB"),
    ]


def run(ctx: Context, size: Size) -> list[Figure]:
    figures = _plan(ctx, size)
    folder = ctx.folder("cron")
    manifest = write_catalog(folder, size.rows)
    out = folder / "out"
    started = time.perf_counter()
    done = build_done_state(manifest, out)
    built_s = time.perf_counter() - started
    _append_rows(folder / "products.csv", size.rows, size.new_rows)
    ctx.sim.configure(image_s=[0.2, 0.6], upscale_s=[0.1, 0.3])
    spawned = time.monotonic()
    result = run_pipeline(manifest, out, ctx.sim, max_active=64, timeout_s=size.timeout_s, name="cron")
    if result.returncode != 0:
        return [*figures, failed_run("cron.run", result)]
    ledger = ctx.sim.ledger()
    first = min((float(j["created"]) for j in ledger), default=None)
    reqs = Requests.of(ctx.sim.stats())
    new_units = 2 * size.new_rows
    for_done = max(0, reqs.submissions - new_units) + max(0, reqs.downloads - new_units)
    record = max((out / "runs").glob("*.json"), default=None)
    submitted = json.loads(record.read_text())["submitted"] if record else None
    return [
        *figures,
        info(
            "cron.done_units",
            done,
            "units",
            f"{size.rows:,} rows x (image + upscale), built in {built_s:.0f} s",
        ),
        at_most(
            "cron.first_post",
            None if first is None else first - spawned,
            size.first_post_s,
            "s",
            f"spawn to the first job; {size.new_rows} new rows",
        ),
        at_most(
            "cron.peak_rss",
            result.peak_rss_mib,
            size.peak_rss_mib,
            "MiB",
            f"whole run, {result.wall_s:.1f} s",
        ),
        at_most(
            "cron.requests_for_done_units",
            for_done,
            0,
            "req",
            f"{reqs.submissions} POSTs, {reqs.downloads} downloads for {new_units} new units;"
            f" the run submitted {submitted}",
        ),
    ]

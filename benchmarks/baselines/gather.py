"""Baseline (b): the usual hand-written asyncio script. ``asyncio.gather`` over every request under
a semaphore; each task submits, polls every 5 s until the job is terminal, downloads.

``python -m benchmarks.baselines.gather BODIES OUT --base-url URL [--units N] [--concurrency 64]
[--poll-s 5]`` with the key in ``PHOTOGPT_API_KEY``. A 429 (submit or poll) waits one poll
interval and tries again. Prints one JSON line with what it did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

MAX_ATTEMPTS = 100  # per request: a baseline must not loop forever either
MAX_POLLS = 1000


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with session.request(method, url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def run(
    bodies: list[dict[str, Any]], out: Path, base: str, poll_s: float, concurrency: int
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {os.environ['PHOTOGPT_API_KEY']}", "API-Version": "1"}
    counts = {"done": 0, "failed": 0, "429s": 0}
    semaphore = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, i: int, body: dict[str, Any]) -> None:
        async with semaphore:
            for _ in range(MAX_ATTEMPTS):
                status, envelope = await call(session, "POST", f"{base}/images/generation", body)
                if status != 429:
                    break
                counts["429s"] += 1
                await asyncio.sleep(poll_s)
            if status != 200:
                counts["failed"] += 1
                return
            job_id = envelope["result"]["jobId"]
            job: dict[str, Any] = {}
            for _ in range(MAX_POLLS):
                await asyncio.sleep(poll_s)
                status, envelope = await call(session, "GET", f"{base}/jobs/{job_id}")
                if status == 429:
                    counts["429s"] += 1
                    continue
                job = envelope["result"]
                if job["status"] in ("success", "failed"):
                    break
            if job.get("status") != "success":
                counts["failed"] += 1
                return
            for n, image in enumerate(job["images"], 1):
                async with session.get(image["url"]) as resp:
                    (out / f"{i:06d}-{n}.jpeg").write_bytes(await resp.read())
            counts["done"] += 1

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        await asyncio.gather(*(one(session, i, body) for i, body in enumerate(bodies)))
    return {"units": len(bodies), **counts, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bodies", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--units", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--poll-s", type=float, default=5.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bodies = [json.loads(line) for line in args.bodies.read_text().splitlines() if line.strip()]
    bodies = bodies[: args.units] if args.units else bodies
    result = asyncio.run(run(bodies, args.out, args.base_url.rstrip("/"), args.poll_s, args.concurrency))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

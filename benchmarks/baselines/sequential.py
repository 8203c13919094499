"""Baseline (a): the docs' recipe done sequentially. For each request: submit, poll every 5 s
until the job is terminal, download its outputs, next.

``python -m benchmarks.baselines.sequential BODIES OUT --base-url URL [--units N] [--poll-s 5]``
with the key in ``PHOTOGPT_API_KEY``; BODIES holds one JSON request body a line. A 429 on submit
waits one poll interval and tries again. Prints one JSON line with what it did.
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


async def run(bodies: list[dict[str, Any]], out: Path, base: str, poll_s: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {os.environ['PHOTOGPT_API_KEY']}", "API-Version": "1"}
    done = failed = rate_limited = 0
    started = time.perf_counter()
    async with aiohttp.ClientSession(headers=headers) as session:
        for i, body in enumerate(bodies):
            for _ in range(MAX_ATTEMPTS):
                status, envelope = await call(session, "POST", f"{base}/images/generation", body)
                if status != 429:
                    break
                rate_limited += 1
                await asyncio.sleep(poll_s)
            if status != 200:
                failed += 1
                continue
            job_id = envelope["result"]["jobId"]
            job: dict[str, Any] = {}
            for _ in range(MAX_POLLS):
                await asyncio.sleep(poll_s)
                status, envelope = await call(session, "GET", f"{base}/jobs/{job_id}")
                if status == 429:
                    rate_limited += 1
                    continue
                job = envelope["result"]
                if job["status"] in ("success", "failed"):
                    break
            if job.get("status") != "success":
                failed += 1
                continue
            for n, image in enumerate(job["images"], 1):
                async with session.get(image["url"]) as resp:
                    (out / f"{i:06d}-{n}.jpeg").write_bytes(await resp.read())
            done += 1
    return {"units": len(bodies), "done": done, "failed": failed, "429s": rate_limited,
            "seconds": time.perf_counter() - started}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bodies", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--units", type=int, default=None)
    parser.add_argument("--poll-s", type=float, default=5.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bodies = [json.loads(line) for line in args.bodies.read_text().splitlines() if line.strip()]
    bodies = bodies[: args.units] if args.units else bodies
    print(json.dumps(asyncio.run(run(bodies, args.out, args.base_url.rstrip("/"), args.poll_s))))


if __name__ == "__main__":
    main()

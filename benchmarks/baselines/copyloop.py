"""The plain aiohttp copy loop the downloads scenario compares against.

``python -m benchmarks.baselines.copyloop URLS_FILE OUT_DIR [-w/--workers N]``: N workers take URLs
from a queue, stream each body to a file in 256 KiB chunks, and nothing else (no hashing, no
checks, no fsync). Prints one JSON line: files, bytes, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp

CHUNK = 256 * 1024


async def _worker(session: aiohttp.ClientSession, queue: asyncio.Queue[tuple[int, str]], out: Path) -> int:
    total = 0
    while True:
        try:
            i, url = queue.get_nowait()
        except asyncio.QueueEmpty:
            return total
        async with session.get(url) as resp:
            resp.raise_for_status()
            with (out / f"{i:06d}.bin").open("wb") as handle:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    handle.write(chunk)
                    total += len(chunk)


async def copy_all(urls: list[str], out: Path, workers: int) -> dict[str, float]:
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for item in enumerate(urls):
        queue.put_nowait(item)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        sizes = await asyncio.gather(*(_worker(session, queue, out) for _ in range(workers)))
    return {"files": len(urls), "bytes": sum(sizes), "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("urls", type=Path, help="a file with one URL a line")
    parser.add_argument("out", type=Path)
    parser.add_argument("-w", "--workers", type=int, default=8)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    urls = [u for u in args.urls.read_text().split() if u]
    print(json.dumps(asyncio.run(copy_all(urls, args.out, args.workers))))


if __name__ == "__main__":
    main()

"""The plain upload the uploads scenario compares against: ``aws s3 cp``-style aiobotocore put_object.

``python -m benchmarks.baselines.s3put FOLDER s3://BUCKET/PREFIX [-w N]``: N workers read each file
under FOLDER whole and ``put_object`` it: no checksum header, no create-only condition, no sha256
of our own, no sidecar. Prints one JSON line: files, bytes, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from aiobotocore.session import get_session


async def upload_all(
    files: list[Path], root: Path, bucket: str, prefix: str, workers: int
) -> dict[str, float]:
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for path in files:
        queue.put_nowait(path)
    started = time.perf_counter()
    async with get_session().create_client("s3") as client:

        async def worker() -> int:
            total = 0
            while True:
                try:
                    path = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return total
                data = path.read_bytes()
                key = f"{prefix}/{path.relative_to(root).as_posix()}"
                await client.put_object(Bucket=bucket, Key=key, Body=data)
                total += len(data)

        sizes = await asyncio.gather(*(worker() for _ in range(workers)))
    return {"files": len(files), "bytes": sum(sizes), "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("dest")
    parser.add_argument("-w", "--workers", type=int, default=4)
    args = parser.parse_args()
    bucket, _, prefix = args.dest.removeprefix("s3://").partition("/")
    files = sorted(p for p in args.folder.rglob("*.jpeg") if p.is_file())
    print(json.dumps(asyncio.run(upload_all(files, args.folder, bucket, prefix.strip("/"), args.workers))))


if __name__ == "__main__":
    main()

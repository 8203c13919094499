"""One output of a finished job onto disk: fetched, verified, published, described, recorded.

The order protects both money and files: the part is verified before it is
renamed into place; the sidecar is written before the rename (so a published
file always has its description); the index line and the state record follow.
A crash anywhere in between leaves either nothing under the final name, or a
file whose sidecar lets the next run adopt it without downloading it again.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
import structlog

from pipeline.api.client import ApiClient
from pipeline.clock import Clock
from pipeline.crashpoints import crash_point
from pipeline.engine.limits import RateLimiter
from pipeline.engine.poller import PollPolicy
from pipeline.engine.retry import RetryPolicy, retrying
from pipeline.errors import AssetGoneError, DownloadError
from pipeline.output import sidecar
from pipeline.output.downloader import Downloader, Fetched
from pipeline.output.layout import OutputLayout
from pipeline.state.sqlite import StateStore, UnitLike, UnitRecord

__all__ = ["Delivery", "WorkUnit", "file_number"]

_log = structlog.get_logger("pipeline.engine.delivery")


class WorkUnit(UnitLike, Protocol):
    """What the engine reads from a manifest unit (see :class:`pipeline.manifest.spec.Unit`)."""

    @property
    def model_id(self) -> str | None: ...


def file_number(unit: WorkUnit, n: int) -> int:
    """Number files per item and step: unit ``index`` i of a step with k outputs owns (i-1)·k+1 … i·k."""
    return (unit.index - 1) * max(1, unit.expected_outputs) + n


def _is_hls(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(".m3u8")


class Delivery:
    """Gets outputs of finished jobs onto disk; see the module docstring for the order of steps."""

    def __init__(
        self,
        *,
        api: ApiClient,
        store: StateStore,
        layout: OutputLayout,
        downloader: Downloader,
        limiter: RateLimiter,
        connections: anyio.CapacityLimiter,
        retry: RetryPolicy,
        poll: PollPolicy,
        clock: Clock,
        rng: random.Random,
        sent_body: Callable[[WorkUnit], Awaitable[dict[str, Any]]],
    ) -> None:
        self.api, self.store, self.layout, self.downloader = api, store, layout, downloader
        self.limiter, self.retry, self.poll, self.clock, self.rng = limiter, retry, poll, clock, rng
        self.sent_body = sent_body
        #: Fetches in flight at once. More deliveries than connections run, so that one
        #: file's verify/publish/record steps overlap the next file's fetch.
        self.connections = connections

    async def deliver(self, unit: WorkUnit, n: int) -> int:
        """Output ``n`` of ``unit`` on disk and recorded; returns the bytes downloaded (0 if adopted)."""
        key = unit.key
        rec = self.store.get(key)
        if rec is None:
            return 0
        out = next(o for o in rec.outputs if o.n == n)
        number = file_number(unit, n)
        # Paths are checked on the file system (lstat walks): worker threads, never the event loop.
        found = await anyio.to_thread.run_sync(self._adopt_or_part, unit, n)
        if not isinstance(found, Path):
            path, size, digest = found
            await self.store.record_download(
                key, n, path=path, bytes=size, sha256=digest, at=self.clock.now()
            )
            _log.info("asset_adopted", item=unit.item_id, unit=key, n=n, path=path)
            return 0
        fetched = await self._fetch_fresh(key, rec, n, out.url, out.asset_id, found)
        record = await self._record(unit, rec, n, out.asset_id, out.url, fetched)
        rel = await anyio.to_thread.run_sync(self._put_in_place, unit, number, fetched, record)
        await self.store.record_download(
            key, n, path=rel, bytes=fetched.bytes, sha256=fetched.sha256, at=self.clock.now()
        )
        _log.info("asset_downloaded", item=unit.item_id, unit=key, n=n, path=rel, bytes=fetched.bytes)
        return fetched.bytes

    async def _fetch_fresh(
        self, key: str, rec: UnitRecord, n: int, url: str, asset_id: str, part: Path
    ) -> Fetched:
        """Fetch with retries; an expired URL is refreshed once from the job (never paid again)."""
        if _is_hls(url):
            url = await self._prepare_video(asset_id)
        refreshed = False
        while True:
            try:
                return await retrying(
                    lambda u=url: self._fetch(u, part),  # type: ignore[misc]
                    policy=self.retry,
                    clock=self.clock,
                    rng=self.rng,
                )
            except AssetGoneError:
                if refreshed or not rec.job_id:
                    raise
                refreshed = True
                url = await self._refresh_url(key, rec.job_id, n)
                if _is_hls(url):
                    url = await self._prepare_video(asset_id)

    async def _fetch(self, url: str, part: Path) -> Fetched:
        async with self.connections:
            await self.limiter.acquire()
            return await self.downloader.fetch(url, part)

    async def _refresh_url(self, key: str, job_id: str, n: int) -> str:
        """An expired asset URL: read the job again for fresh URLs."""
        job = await self.api.get_job(job_id)
        outputs = [(o.id, o.url) for o in (*job.images, *job.videos)]
        if len(outputs) < n:
            raise AssetGoneError(f"job {job_id} no longer lists output {n}")
        await self.store.update_urls(key, outputs)
        return outputs[n - 1][1]

    async def _prepare_video(self, video_id: str) -> str:
        """A playlist URL: ask the API for a downloadable MP4 and wait until it is ready."""
        await self.api.create_video_download(video_id)
        delay = self.poll.min_interval_s
        for _ in range(600):
            state = await self.api.get_video_download(video_id)
            if state.is_ready and state.url:
                return state.url
            await self.clock.sleep(delay)
            delay = min(self.poll.max_interval_s, delay * 1.5)
        raise DownloadError(f"video {video_id}: the download was never ready")

    async def _record(
        self, unit: WorkUnit, rec: UnitRecord, n: int, asset_id: str, url: str, fetched: Fetched
    ) -> dict[str, Any]:
        """The sidecar: everything needed to know what this file is and where it came from."""
        return {
            "item": unit.item_id,
            "key": unit.key,
            "step": unit.step,
            "index": unit.index,
            "n": n,
            "request": await self.sent_body(unit),
            "model": unit.model_id,
            "jobId": rec.job_id,
            "assetId": asset_id,
            "url": sidecar.strip_query(url),
            "bytes": fetched.bytes,
            "sha256": fetched.sha256,
            "submittedAt": rec.submitted_at,
            "downloadedAt": self.clock.now().isoformat().replace("+00:00", "Z"),
        }

    def _adopt_or_part(self, unit: WorkUnit, n: int) -> tuple[str, int, str] | Path:
        """What :meth:`_adopt_published` kept (path, bytes, sha256), or else the part to fetch into."""
        adopted = self._adopt_published(unit, n)
        if adopted is not None:
            return adopted
        return self.layout.part_path(unit.item_id, unit.step, file_number(unit, n), key=unit.key)

    def _adopt_published(self, unit: WorkUnit, n: int) -> tuple[str, int, str] | None:
        """A file published before a crash but never recorded: verify it, index it once, keep it."""
        number, model = file_number(unit, n), unit.model_id or ""
        first = self.layout.asset_path(unit.item_id, unit.step, number, "jpeg", key=unit.key, model=model)
        side = self.layout.sidecar_path(first)  # one sidecar name for every extension
        if not side.exists():
            return None  # the usual case: nothing was published
        for ext in ("jpeg", "png", "webp", "mp4"):
            final = self.layout.asset_path(unit.item_id, unit.step, number, ext, key=unit.key, model=model)
            if not final.exists():
                continue
            data = sidecar.read_sidecar(side)
            if not data or data.get("key") != unit.key or data.get("n", n) != n:
                continue
            if not sidecar.verify_asset(final, data):
                continue
            rel = final.relative_to(self.layout.root).as_posix()
            indexed = any(
                r.get("path") == rel and r.get("sha256") == data["sha256"]
                for r in sidecar.read_index(self.layout.index_path)
            )
            if not indexed:
                sidecar.append_index(self.layout.index_path, data)
            return rel, int(data["bytes"]), str(data["sha256"])
        return None

    def _put_in_place(self, unit: WorkUnit, number: int, fetched: Fetched, record: dict[str, Any]) -> str:
        """Older work aside, sidecar, rename, index line, in one worker-thread hop; returns the path.

        The sidecar's rename is not fsynced on its own: the asset lands in the same directory
        and :meth:`Downloader.publish_blocking` fsyncs it after its rename, which makes both
        names durable before the index line and the state record. Until then nothing says the
        file is done; a power cut that kept the asset but not its sidecar leaves a file the
        next run sets aside (no sidecar, no key) and fetches again.
        """
        final = self.layout.asset_path(
            unit.item_id, unit.step, number, fetched.ext, key=unit.key, model=unit.model_id or ""
        )
        side = self.layout.sidecar_path(final)
        self._set_aside_stale(final, side, unit.key)
        rel = final.relative_to(self.layout.root).as_posix()
        record["path"] = rel
        sidecar.write_sidecar(side, record, sync_dir=False)
        self.downloader.publish_blocking(fetched, final)
        crash_point("after_replace_before_record")
        sidecar.append_index(self.layout.index_path, record)
        return rel

    def _set_aside_stale(self, final: Path, side: Path, key: str) -> None:
        """A file of older work (another unit key) is in the way: move it aside, never overwrite it."""
        if not final.exists():
            return
        try:
            old_key = str(json.loads(side.read_text(encoding="utf-8")).get("key", "unknown"))
        except (OSError, ValueError):
            old_key = "unknown"
        if old_key == key:
            return
        stale_dir = self.layout.root / ".stale" / final.parent.relative_to(self.layout.root)
        stale_dir.mkdir(parents=True, exist_ok=True)
        os.replace(final, stale_dir / f"{final.stem}.{old_key[:12]}{final.suffix}")
        if side.exists():
            os.replace(side, stale_dir / f"{side.stem}.{old_key[:12]}{side.suffix}")
        _log.warning("stale_output_moved", path=str(final), old_key=old_key, to=str(stale_dir))

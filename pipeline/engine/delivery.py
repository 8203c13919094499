"""One output of a finished job into the output store: fetched, verified, published, described, recorded.

The order protects both money and files: the part is verified before it is
published create-only under its final key; the sidecar (the commit marker)
follows; the index and the state record come last. A crash anywhere in between
leaves either nothing trusted under the final key, or an asset whose sidecar
lets the next run adopt it without downloading it again. Where the bytes go (a
folder, a bucket) is the :class:`~pipeline.output.store.OutputStore`'s business.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
import structlog

from pipeline.api.client import ApiClient
from pipeline.clock import Clock
from pipeline.engine.limits import RateLimiter
from pipeline.engine.poller import PollPolicy
from pipeline.engine.retry import RetryPolicy, retrying
from pipeline.errors import AssetGoneError, DownloadError
from pipeline.output import sidecar
from pipeline.output.downloader import Downloader, Fetched
from pipeline.output.layout import OutputLayout
from pipeline.output.store import ASSET_EXTS, OutputStore, Publication, sidecar_key
from pipeline.state.records import UnitLike, UnitRecord
from pipeline.state.store import StateStore

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
        output: OutputStore,
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
        self.output = output
        #: Fetches in flight at once. More deliveries than connections run, so that one
        #: file's verify/publish/record steps overlap the next file's fetch.
        self.connections = connections

    async def deliver(self, unit: WorkUnit, n: int, *, done: bool = False) -> int:
        """Output ``n`` of ``unit`` on disk and recorded; returns the bytes downloaded (0 if adopted).

        ``done``: it is the unit's last output, closed in the same state change as its record."""
        key = unit.key
        rec = self.store.get(key)
        if rec is None:
            if done:
                await self.store.mark_done(key)  # refused: the unit is gone from the state
            return 0
        out = next(o for o in rec.outputs if o.n == n)
        number, model = file_number(unit, n), unit.model_id or ""
        keys = self.layout.asset_keys(unit.item_id, unit.step, number, ASSET_EXTS, key=key, model=model)
        adopted = await self.output.adopt(keys, sidecar_key(keys[0]), owner=key, n=n)
        if adopted is not None:
            await self.store.record_download(
                key,
                n,
                path=adopted.key,
                bytes=adopted.bytes,
                sha256=adopted.sha256,
                at=self.clock.now(),
                done=done,
            )
            _log.info("asset_adopted", item=unit.item_id, unit=key, n=n, path=adopted.key)
            return 0
        part = self.output.staging / self.layout.part_key(unit.item_id, unit.step, number, key=key)
        fetched = await self._fetch_fresh(key, rec, n, out.url, out.asset_id, part)
        record = await self._record(unit, rec, n, out.asset_id, out.url, fetched)
        rel = keys[ASSET_EXTS.index(fetched.ext)]
        await self.output.publish(
            Publication(
                key=rel,
                part=fetched.part_path,
                bytes=fetched.bytes,
                sha256=fetched.sha256,
                owner=key,
                sidecar=record,
            )
        )
        await self.store.record_download(
            key, n, path=rel, bytes=fetched.bytes, sha256=fetched.sha256, at=self.clock.now(), done=done
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

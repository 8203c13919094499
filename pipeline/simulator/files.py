"""Asset bytes over HTTP: no auth, exact Content-Length, byte ranges, and injected truncation.

Downloaders must survive partial content and cut-off bodies, so both are served
here exactly as a CDN would: 206 with Content-Range, or fewer bytes than promised.
"""

from __future__ import annotations

import re

from aiohttp import web

from pipeline.simulator.envelope import ApiFailure
from pipeline.simulator.media import CONTENT_TYPES, hls_playlist, render
from pipeline.simulator.runtime import simulator

__all__ = ["serve_file"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _span(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive byte span a single ``Range`` asks for; ``None`` to ignore it; 416 if unsatisfiable."""
    match = _RANGE.fullmatch(header.strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:
        start, end = max(0, size - int(last)), size - 1
        if int(last) == 0:
            start = size
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
    if start >= size or start > end:
        raise ApiFailure(
            416, "range not satisfiable", "range_not_satisfiable", {"Content-Range": f"bytes */{size}"}
        )
    return start, end


async def serve_file(request: web.Request) -> web.StreamResponse:
    """Asset bytes without auth, with Content-Length, Range and (when drawn) a truncated body."""
    sim = simulator(request)
    store, config = sim.store, sim.config
    asset_id, _, ext = request.match_info["name"].rpartition(".")
    asset = store.assets.get(asset_id)
    allowed = {"mp4", "m3u8", "ts"} if asset and asset.kind == "video" else {asset.fmt if asset else ""}
    if asset is None or ext not in allowed:
        raise ApiFailure(404, "file not found", "not_found")
    if not store.url_valid(request.query.get("sig")):
        raise ApiFailure(403, "this URL has expired", "url_expired")
    if asset.data is not None:
        data = asset.data
    elif ext == "m3u8":
        data = hls_playlist(asset.id)
    else:
        data = render(ext, asset.id, config.file_size, asset.look)
    headers = {
        "Content-Type": CONTENT_TYPES[ext],
        "Accept-Ranges": "bytes" if config.range_requests else "none",
    }
    status, span = 200, None
    if config.range_requests and "Range" in request.headers:
        span = _span(request.headers["Range"], len(data))
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{len(data)}"
        data = data[span[0] : span[1] + 1]
    if request.method == "GET" and sim.faults.chance(config.truncated_download_rate):
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(data)
        response.force_close()
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        store.counts["truncated"] += 1
        store.counts["bytes"] += len(data) // 2
        return response
    if request.method == "GET":
        store.counts["bytes"] += len(data)
    return web.Response(body=data, status=status, headers=headers)

"""The video endpoints: generate, list, get, delete, and the two-step download (prepare, then poll)."""

from __future__ import annotations

from aiohttp import web

from pipeline.simulator.envelope import ApiFailure, ok
from pipeline.simulator.inputs import find_asset, json_body, origin_of, owner_of, paged
from pipeline.simulator.records import Download
from pipeline.simulator.routes_jobs import start_job
from pipeline.simulator.rules import check_video
from pipeline.simulator.runtime import simulator

__all__ = [
    "create_download",
    "delete_video",
    "generate_videos",
    "get_download",
    "get_video",
    "list_videos",
]


async def generate_videos(request: web.Request) -> web.Response:
    body = await json_body(request)
    return await start_job(request, body, "video", check_video(body))


async def list_videos(request: web.Request) -> web.Response:
    store, owner, origin = simulator(request).store, owner_of(request), origin_of(request)
    return paged(
        request, [a.record(origin) for a in store.assets.values() if a.kind == "video" and a.owner == owner]
    )


async def get_video(request: web.Request) -> web.Response:
    asset = find_asset(simulator(request).store, owner_of(request), request.match_info["videoID"], "video")
    return ok(asset.record(origin_of(request), simulator(request).store.url_query()))


async def delete_video(request: web.Request) -> web.Response:
    store = simulator(request).store
    asset = find_asset(store, owner_of(request), request.match_info["videoID"], "video")
    del store.assets[asset.id]
    store.downloads.pop(asset.id, None)
    return ok({"id": asset.id, "deleted": True})


async def create_download(request: web.Request) -> web.Response:
    store = simulator(request).store
    asset = find_asset(store, owner_of(request), request.match_info["videoID"], "video")
    store.downloads.setdefault(asset.id, Download(started=store.clock.monotonic()))
    return ok("download preparation started")


async def get_download(request: web.Request) -> web.Response:
    sim = simulator(request)
    store, config = sim.store, sim.config
    asset = find_asset(store, owner_of(request), request.match_info["videoID"], "video")
    prep = store.downloads.get(asset.id)
    if prep is None:
        raise ApiFailure(
            config.download_before_create_status, "call create-download first", "download_not_created"
        )
    prep.calls += 1
    elapsed = store.clock.monotonic() - prep.started
    done = max(
        prep.calls / config.download_prepare_polls,
        elapsed / config.download_prepare_s if config.download_prepare_s > 0 else 1.0,
    )
    if done >= 1.0:
        return ok(
            {"percentComplete": 100, "status": "ready", "url": f"{origin_of(request)}/files/{asset.id}.mp4"}
        )
    return ok({"percentComplete": min(99, int(done * 100)), "status": "processing", "url": ""})

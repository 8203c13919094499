"""The simulator's HTTP surface: the route table of the API and the ``/_sim`` ledger.

Middleware (:mod:`~pipeline.simulator.middleware`) does what every ``/api``
request shares (key, version, faults, the NOK envelope); the ``routes_*``
modules apply the reference's per-endpoint rules on the store.
"""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime

from aiohttp import web

from pipeline.catalog import MAX_UPLOAD_BYTES
from pipeline.clock import Clock, SystemClock
from pipeline.simulator.config import SimConfig
from pipeline.simulator.controls import sim_control, sim_ledger, sim_stats
from pipeline.simulator.envelope import ok
from pipeline.simulator.files import serve_file
from pipeline.simulator.middleware import count_requests, guard_api
from pipeline.simulator.routes_images import (
    delete_image,
    generate_images,
    get_image,
    upload_image,
    upscale_image,
)
from pipeline.simulator.routes_jobs import get_job, list_jobs
from pipeline.simulator.routes_models import (
    delete_model,
    get_model,
    list_models,
    model_images,
    save_model,
    train_model,
)
from pipeline.simulator.routes_videos import (
    create_download,
    delete_video,
    generate_videos,
    get_download,
    get_video,
    list_videos,
)
from pipeline.simulator.rules import PRESETS
from pipeline.simulator.runtime import SIMULATOR, Simulator

__all__ = ["create_app"]


async def ping(request: web.Request) -> web.Response:
    return web.json_response({"message": "pong!", "status": "OK"})


async def presets(request: web.Request) -> web.Response:
    return ok([dict(p) for p in PRESETS])


async def _dated(request: web.Request, response: web.StreamResponse) -> None:
    """``Date`` from the simulator's clock (aiohttp would write the machine's): the second it is in."""
    sim = request.app[SIMULATOR]
    now = (sim.clock.now() + timedelta(seconds=sim.config.date_offset_s)).replace(microsecond=0)
    response.headers["Date"] = format_datetime(now, usegmt=True)


def create_app(config: SimConfig, *, clock: Clock | None = None) -> web.Application:
    """The simulator as an aiohttp application (state lives in ``app[SIMULATOR]``)."""
    app = web.Application(
        middlewares=[count_requests, guard_api], client_max_size=MAX_UPLOAD_BYTES + (1 << 20)
    )
    app[SIMULATOR] = Simulator(config, clock or SystemClock())
    app.on_response_prepare.append(_dated)
    api = "/api"
    app.router.add_routes(
        [
            web.get(f"{api}/ping", ping),
            web.get(f"{api}/models", list_models),
            web.post(f"{api}/models", save_model),
            web.get(f"{api}/models/{{modelID}}", get_model),
            web.delete(f"{api}/models/{{modelID}}", delete_model),
            web.get(f"{api}/models/{{modelID}}/train", train_model),
            web.get(f"{api}/models/{{modelID}}/images", model_images),
            web.post(f"{api}/images/upload", upload_image),
            web.post(f"{api}/images/generation", generate_images),
            web.post(f"{api}/images/upscaling", upscale_image),
            web.get(f"{api}/images/{{imageID}}", get_image),
            web.delete(f"{api}/images/{{imageID}}", delete_image),
            web.post(f"{api}/videos/generation", generate_videos),
            web.get(f"{api}/videos", list_videos),
            web.get(f"{api}/videos/{{videoID}}", get_video),
            web.delete(f"{api}/videos/{{videoID}}", delete_video),
            web.get(f"{api}/videos/{{videoID}}/create-download", create_download),
            web.get(f"{api}/videos/{{videoID}}/download", get_download),
            web.get(f"{api}/jobs", list_jobs),
            web.get(f"{api}/jobs/{{id}}", get_job),
            web.get(f"{api}/presets", presets),
            web.get("/files/{name}", serve_file),
            web.get("/_sim/stats", sim_stats),
            web.get("/_sim/ledger", sim_ledger),
            web.post("/_sim/control", sim_control),
        ]
    )
    return app

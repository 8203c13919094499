"""The simulator's HTTP surface: the API routes and the ``/_sim`` ledger.

Middleware does what every ``/api`` request shares (key, version, faults, the
NOK envelope); handlers apply the reference's per-endpoint rules on the store.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import BodyPartReader, web

from pipeline.catalog import (
    MAX_UPLOAD_BYTES,
    MAX_UPLOADS_PER_TYPE,
    MIN_TRAINING_IMAGES,
    UPLOAD_FORMATS,
    UPLOAD_TYPES,
)
from pipeline.clock import Clock, SystemClock
from pipeline.simulator.config import SimConfig
from pipeline.simulator.envelope import ApiFailure, nok, ok
from pipeline.simulator.faults import in_scope, retry_after_headers
from pipeline.simulator.files import serve_file
from pipeline.simulator.rules import PRESETS, Trigger, check_image, check_upscale, check_video
from pipeline.simulator.runtime import OWNER, SIMULATOR, Simulator, simulator
from pipeline.simulator.store import Asset, Download, Model, Store, fingerprint

__all__ = ["create_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_WINDOW = timedelta(days=7)
IMAGE_TYPES = {"all": None, "input": "modelInput", "output": "output", "auxiliaryType": "auxiliaryType"}
MIME_FORMATS = {f"image/{fmt}": fmt for fmt in ("jpeg", "jpg", "png", "webp", "heic")}


def _owner(request: web.Request) -> str:
    return request[OWNER]


def _route(request: web.Request) -> str:
    """``"METHOD /path/{template}"``: how stats, fault scopes and holds name a request."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource else '(unmatched)'}"


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


# Middleware ---------------------------------------------------------------------------------


@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: count requests per route template and the 429s and 5xx sent."""
    store = simulator(request).store
    route = _route(request)
    store.requests[route] += 1
    if request.method == "POST" and request.path.startswith("/api/"):
        store.posts.append((route, store.clock.now().timestamp()))
    response = await handler(request)
    store = simulator(request).store  # a reset may have replaced it
    if response.status == 429:
        store.counts["429"] += 1
    elif response.status >= 500:
        store.counts["5xx"] += 1
    return response


@web.middleware
async def _api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Key, version and injected faults for ``/api``; every failure leaves as a NOK envelope."""
    sim = simulator(request)
    try:
        if request.path.startswith("/api/"):
            await _gate(request, sim)
        return await handler(request)
    except ApiFailure as failure:
        return nok(failure, drop_message=sim.config.drop_message, drop_err=sim.config.drop_err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        mapped = ApiFailure(exc.status, exc.reason, exc.reason.lower().replace(" ", "_"))
        return nok(mapped, drop_message=sim.config.drop_message, drop_err=sim.config.drop_err)


async def _gate(request: web.Request, sim: Simulator) -> None:
    config = sim.config
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or token not in config.keys:
        raise ApiFailure(401, "missing or invalid API key", "unauthorized")
    request[OWNER] = fingerprint(token)
    if request.headers.get("API-Version", "").strip() != "1":
        raise ApiFailure(
            config.version_error_status,
            "missing or unsupported API-Version; send API-Version: 1",
            "bad_api_version",
        )
    route = _route(request)
    if in_scope(config, route):
        await _inject(request, sim)
    if not _creates_job(route):
        await sim.held(route)


async def _inject(request: web.Request, sim: Simulator) -> None:
    """The faults that hit a request before it is handled: forced 429/5xx, rate, random 5xx, slowness."""
    config, faults = sim.config, sim.faults
    forced = faults.forced()
    if forced == 429:
        raise ApiFailure(429, "too many requests", "rate_limited", _retry(sim, 1.0))
    if forced is not None:
        raise ApiFailure(forced, "internal server error (simulated)", "server_error")
    wait = faults.admit(config, _owner(request), sim.clock.monotonic())
    if wait is not None:
        raise ApiFailure(429, "too many requests", "rate_limited", _retry(sim, wait))
    if faults.chance(config.server_error_rate):
        raise ApiFailure(faults.server_error(), "internal server error (simulated)", "server_error")
    if faults.chance(config.slow_response_rate):
        await sim.clock.sleep(faults.between(config.slow_response_s))


_JOB_ROUTES = frozenset(
    {"POST /api/images/generation", "POST /api/images/upscaling", "POST /api/videos/generation"}
)


def _creates_job(route: str) -> bool:
    return route in _JOB_ROUTES


def _retry(sim: Simulator, seconds: float) -> dict[str, str]:
    return retry_after_headers(sim.config, seconds, sim.clock.now())


# Helpers ------------------------------------------------------------------------------------


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise ApiFailure(400, "the body must be a JSON object", "bad_json")
    return body


def _model(store: Store, owner: str, model_id: str) -> Model:
    model = store.models.get(model_id)
    if model is None or model.owner != owner or model.status == "deleted":
        raise ApiFailure(404, f"model {model_id} not found", "not_found")
    store.refresh_model(model)
    return model


def _asset(store: Store, owner: str, asset_id: str, kind: str) -> Asset:
    asset = store.assets.get(asset_id)
    if asset is None or asset.owner != owner or asset.kind != kind:
        raise ApiFailure(404, f"{kind} {asset_id} not found", "not_found")
    return asset


def _int(request: web.Request, name: str, default: int, top: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= top:
        raise ApiFailure(400, f"{name} must be an integer from 1 to {top}", "validation_error")
    return int(raw)


def _paged(request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    page, size = _int(request, "pageNum", 1, 10**6), _int(request, "pageSize", 20, 100)
    return ok(items[(page - 1) * size : page * size], page=page, pageSize=size)


async def _start_job(
    request: web.Request, body: dict[str, Any], kind: str, trigger: Trigger, source_id: str = ""
) -> web.Response:
    """Capacity and credits, then the job: a refused trigger creates nothing."""
    sim, owner = simulator(request), _owner(request)
    store, config = sim.store, sim.config
    if config.max_active_jobs is not None and store.active(owner) >= config.max_active_jobs:
        raise ApiFailure(
            429, f"too many active jobs (limit {config.max_active_jobs})", "too_many_jobs", _retry(sim, 1.0)
        )
    price = {"image": config.image_credits, "upscale": config.upscale_credits, "video": config.video_credits}
    cost = price[kind] * trigger.count
    if store.credits is not None and cost > store.credits:
        raise ApiFailure(config.insufficient_credits_status, "insufficient credits", "insufficient_credits")
    job = store.create_job(kind, owner, body, trigger, cost, source_id)
    await _after_creating(request, sim, job.id)
    return ok({"jobId": job.id, "status": "queued"})


async def _after_creating(request: web.Request, sim: Simulator, job_id: str) -> None:
    """The reply of a job-creating POST, once its job exists: delayed, held, or lost (502)."""
    route, config = _route(request), sim.config
    await sim.held(route)
    if not in_scope(config, route):
        return
    if config.reply_delay_s[1] > 0:
        await sim.clock.sleep(sim.faults.between(config.reply_delay_s))
    if sim.faults.lost_reply(config):
        sim.store.lost_replies.append(job_id)
        raise ApiFailure(502, "bad gateway (simulated: the job was created)", "server_error")


# API handlers -------------------------------------------------------------------------------


async def ping(request: web.Request) -> web.Response:
    return web.json_response({"message": "pong!", "status": "OK"})


async def list_models(request: web.Request) -> web.Response:
    store, owner = simulator(request).store, _owner(request)
    mine = [m for m in store.models.values() if m.owner == owner and m.status != "deleted"]
    for model in mine:
        store.refresh_model(model)
    return ok([m.record() for m in mine])


async def save_model(request: web.Request) -> web.Response:
    store, owner, body = simulator(request).store, _owner(request), await _body(request)
    names = ("name", "age", "gender", "ethnicity", "eyeColor", "modelType")
    fields: dict[str, Any] = {k: body[k] for k in names if k in body}
    if "age" in fields and (isinstance(fields["age"], bool) or not isinstance(fields["age"], int | float)):
        raise ApiFailure(400, "age must be a number", "validation_error")
    now = store.clock.now()
    if "id" in body:
        model = _model(store, owner, str(body["id"]))
        model.fields.update(fields)
        model.updated_at = now
    else:
        model = Model(id=store.new_id(), owner=owner, fields=fields, created_at=now, updated_at=now)
        store.models[model.id] = model
    return ok(model.record())


async def get_model(request: web.Request) -> web.Response:
    return ok(_model(simulator(request).store, _owner(request), request.match_info["modelID"]).record())


async def delete_model(request: web.Request) -> web.Response:
    store = simulator(request).store
    model = _model(store, _owner(request), request.match_info["modelID"])
    model.status, model.updated_at = "deleted", store.clock.now()
    return ok(model.record())


async def train_model(request: web.Request) -> web.Response:
    sim, owner = simulator(request), _owner(request)
    store = sim.store
    model = _model(store, owner, request.match_info["modelID"])
    photos = sum(1 for a in store.assets.values() if a.model_id == model.id and a.type == "modelInput")
    if photos < MIN_TRAINING_IMAGES:
        raise ApiFailure(
            400,
            f"training needs at least {MIN_TRAINING_IMAGES} modelInput images, got {photos}",
            "not_enough_images",
        )
    if store.trainings(owner) >= sim.config.max_trainings:
        raise ApiFailure(
            429,
            f"too many trainings running (limit {sim.config.max_trainings})",
            "too_many_trainings",
            _retry(sim, 60.0),
        )
    if model.status == "training":
        raise ApiFailure(409, f"model {model.id} is already training", "conflict")
    model.status, model.updated_at = "training", store.clock.now()
    model.training_ends = store.clock.monotonic() + sim.config.training_s
    return ok("Training triggered")


async def model_images(request: web.Request) -> web.Response:
    store, owner = simulator(request).store, _owner(request)
    model = _model(store, owner, request.match_info["modelID"])
    wanted = request.query.get("imageType", "all")
    if wanted not in IMAGE_TYPES:
        raise ApiFailure(400, f"imageType must be one of {', '.join(IMAGE_TYPES)}", "validation_error")
    kind = IMAGE_TYPES[wanted]
    found = [
        a.record(_origin(request), simulator(request).store.url_query())
        for a in store.assets.values()
        if a.kind == "image" and a.owner == owner and a.model_id == model.id and kind in (None, a.type)
    ]
    return _paged(request, found)


async def upload_image(request: web.Request) -> web.Response:
    store, owner = simulator(request).store, _owner(request)
    if not request.content_type.startswith("multipart/"):
        raise ApiFailure(400, "send multipart/form-data with parts file and data", "bad_multipart")
    content: bytes | None = None
    filename, mime, too_big, data = "", "", False, None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "file":
            filename, mime = part.filename or "", part.headers.get("Content-Type", "").lower()
            chunks, size = [], 0
            while chunk := await part.read_chunk(1 << 16):
                size += len(chunk)
                if size <= MAX_UPLOAD_BYTES:
                    chunks.append(chunk)
            too_big, content = size > MAX_UPLOAD_BYTES, b"".join(chunks)
        elif part.name == "data":
            try:
                data = json.loads(await part.text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                data = None
    if content is None:
        raise ApiFailure(400, "the file part is required", "validation_error")
    if not isinstance(data, dict):
        raise ApiFailure(400, "the data part must be a JSON object string", "validation_error")
    if too_big:
        raise ApiFailure(400, "the file exceeds the 20 MB limit", "file_too_large")
    image_type = data.get("type")
    if image_type not in UPLOAD_TYPES:
        raise ApiFailure(400, f"type must be one of {', '.join(sorted(UPLOAD_TYPES))}", "validation_error")
    ext = filename.rpartition(".")[2].lower() if "." in filename else ""
    fmt = ext if ext in UPLOAD_FORMATS else MIME_FORMATS.get(mime.split(";")[0].strip())
    if fmt is None:
        raise ApiFailure(
            400, f"unsupported image format; use {', '.join(sorted(UPLOAD_FORMATS))}", "unsupported_format"
        )
    model_id = data.get("modelID")
    if model_id is None and image_type == "modelInput":
        raise ApiFailure(400, "modelID is required for modelInput images", "validation_error")
    if model_id is not None:
        model_id = _model(store, owner, str(model_id)).id
        same = sum(1 for a in store.assets.values() if a.model_id == model_id and a.type == image_type)
        if same >= MAX_UPLOADS_PER_TYPE:
            raise ApiFailure(
                400, f"a model holds at most {MAX_UPLOADS_PER_TYPE} {image_type} images", "too_many_images"
            )
    asset = Asset(
        id=store.new_id(),
        owner=owner,
        kind="image",
        fmt=fmt,
        type=str(image_type),
        model_id=model_id,
        created_at=store.clock.now(),
        data=content,
    )
    store.assets[asset.id] = asset
    return ok(asset.record(_origin(request), simulator(request).store.url_query()))


async def generate_images(request: web.Request) -> web.Response:
    sim, owner, body = simulator(request), _owner(request), await _body(request)
    store, config = sim.store, sim.config
    trained = {m.id for m in store.models.values() if m.owner == owner and m.status != "deleted"}
    trigger = check_image(body, trained.__contains__)
    if trigger.trained:
        model = _model(store, owner, trigger.model_id)
        if model.status != "ready":
            raise ApiFailure(
                config.not_ready_status,
                f"model {model.id} is not ready (status {model.status})",
                "model_not_ready",
            )
    preset = body.get("preset")
    if preset is not None and preset not in {p["tag"] for p in PRESETS}:
        raise ApiFailure(config.unknown_preset_status, f"unknown preset {preset}", "unknown_preset")
    if "inputImageId" in body:
        _asset(store, owner, str(body["inputImageId"]), "image")
    return await _start_job(request, body, "image", trigger)


async def upscale_image(request: web.Request) -> web.Response:
    body = await _body(request)
    source = _asset(simulator(request).store, _owner(request), check_upscale(body), "image")
    fmt = source.fmt if source.fmt in ("jpeg", "png", "webp") else "jpeg"
    return await _start_job(request, body, "upscale", Trigger("", "", 1, fmt), source.id)


async def generate_videos(request: web.Request) -> web.Response:
    body = await _body(request)
    return await _start_job(request, body, "video", check_video(body))


async def get_job(request: web.Request) -> web.Response:
    store = simulator(request).store
    job = store.jobs.get(request.match_info["id"])
    if job is None or job.owner != _owner(request):
        raise ApiFailure(404, f"job {request.match_info['id']} not found", "not_found")
    job.polls += 1
    store.advance(job, poll=True)
    return ok(store.job_record(job, _origin(request)))


def _when(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ApiFailure(400, f"{name} must be an RFC3339 timestamp", "validation_error") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def list_jobs(request: web.Request) -> web.Response:
    sim, owner = simulator(request), _owner(request)
    if not sim.config.job_list_available:
        raise ApiFailure(404, "not found", "not_found")
    store, token = sim.store, request.query.get("pageToken")
    after: int | None = None
    if token:
        try:
            saved = json.loads(base64.urlsafe_b64decode(token.encode()))
            start, end = datetime.fromisoformat(saved["s"]), datetime.fromisoformat(saved["e"])
            after = int(saved["a"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise ApiFailure(400, "invalid pageToken", "validation_error") from None
    else:
        end = _when(request, "end") or sim.clock.now()
        start = _when(request, "start") or end - timedelta(days=1)
    if end < start:
        raise ApiFailure(400, "end must not be before start", "validation_error")
    if end - start > MAX_WINDOW:
        raise ApiFailure(400, "the time range may not exceed 7 days", "validation_error")
    size = _int(request, "pageSize", sim.config.job_list_page_size, max(100, sim.config.job_list_page_size))
    listed_before = sim.clock.monotonic() - sim.config.job_list_lag_s
    hits = [
        j
        for j in reversed(store.jobs.values())
        if j.owner == owner
        and start <= j.created_at <= end
        and (after is None or j.seq < after)
        and j.created <= listed_before
    ]
    page = hits[:size]
    for job in page:
        store.advance(job)
    nxt = None
    if len(hits) > size:
        raw = json.dumps({"s": start.isoformat(), "e": end.isoformat(), "a": page[-1].seq})
        nxt = base64.urlsafe_b64encode(raw.encode()).decode()
    items = [store.job_item(j) for j in page]
    lag = sim.config.job_list_status_lag_s
    if lag > 0:
        stale_after = sim.clock.monotonic() - lag
        for job, item in zip(page, items, strict=True):
            if job.finished is not None and job.finished > stale_after:
                item["status"] = "running"
                item.pop("errorMessage", None)
    return ok({"jobs": items, "nextPageToken": nxt})


async def get_image(request: web.Request) -> web.Response:
    asset = _asset(simulator(request).store, _owner(request), request.match_info["imageID"], "image")
    return ok(asset.record(_origin(request), simulator(request).store.url_query()))


async def delete_image(request: web.Request) -> web.Response:
    store = simulator(request).store
    asset = _asset(store, _owner(request), request.match_info["imageID"], "image")
    del store.assets[asset.id]
    return ok({"id": asset.id, "deleted": True})


async def list_videos(request: web.Request) -> web.Response:
    store, owner, origin = simulator(request).store, _owner(request), _origin(request)
    return _paged(
        request, [a.record(origin) for a in store.assets.values() if a.kind == "video" and a.owner == owner]
    )


async def get_video(request: web.Request) -> web.Response:
    asset = _asset(simulator(request).store, _owner(request), request.match_info["videoID"], "video")
    return ok(asset.record(_origin(request), simulator(request).store.url_query()))


async def delete_video(request: web.Request) -> web.Response:
    store = simulator(request).store
    asset = _asset(store, _owner(request), request.match_info["videoID"], "video")
    del store.assets[asset.id]
    store.downloads.pop(asset.id, None)
    return ok({"id": asset.id, "deleted": True})


async def create_download(request: web.Request) -> web.Response:
    store = simulator(request).store
    asset = _asset(store, _owner(request), request.match_info["videoID"], "video")
    store.downloads.setdefault(asset.id, Download(started=store.clock.monotonic()))
    return ok("download preparation started")


async def get_download(request: web.Request) -> web.Response:
    sim = simulator(request)
    store, config = sim.store, sim.config
    asset = _asset(store, _owner(request), request.match_info["videoID"], "video")
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
            {"percentComplete": 100, "status": "ready", "url": f"{_origin(request)}/files/{asset.id}.mp4"}
        )
    return ok({"percentComplete": min(99, int(done * 100)), "status": "processing", "url": ""})


async def presets(request: web.Request) -> web.Response:
    return ok([dict(p) for p in PRESETS])


# The ledger ---------------------------------------------------------------------------------


async def sim_stats(request: web.Request) -> web.Response:
    return web.json_response(simulator(request).stats())


async def sim_ledger(request: web.Request) -> web.Response:
    return web.json_response(simulator(request).ledger())


async def sim_control(request: web.Request) -> web.Response:
    body = await _body(request)
    try:
        return web.json_response(simulator(request).control(**body))
    except (ValueError, TypeError) as exc:
        raise ApiFailure(400, str(exc), "bad_control") from None


def create_app(config: SimConfig, *, clock: Clock | None = None) -> web.Application:
    """The simulator as an aiohttp application (state lives in ``app[SIMULATOR]``)."""
    app = web.Application(middlewares=[_count, _api], client_max_size=MAX_UPLOAD_BYTES + (1 << 20))
    app[SIMULATOR] = Simulator(config, clock or SystemClock())
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

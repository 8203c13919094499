"""The image endpoints: upload, generate, upscale, get and delete.

Generation and upscaling check their request here, then start a job through
:func:`~pipeline.simulator.routes_jobs.start_job`.
"""

from __future__ import annotations

import json

from aiohttp import BodyPartReader, web

from pipeline.catalog import MAX_UPLOAD_BYTES, MAX_UPLOADS_PER_TYPE, UPLOAD_FORMATS, UPLOAD_TYPES
from pipeline.simulator.envelope import ApiFailure, ok
from pipeline.simulator.inputs import find_asset, find_model, json_body, origin_of, owner_of
from pipeline.simulator.records import Asset
from pipeline.simulator.routes_jobs import start_job
from pipeline.simulator.rules import PRESETS, Trigger, check_image, check_upscale
from pipeline.simulator.runtime import simulator

__all__ = [
    "MIME_FORMATS",
    "delete_image",
    "generate_images",
    "get_image",
    "upload_image",
    "upscale_image",
]

MIME_FORMATS = {f"image/{fmt}": fmt for fmt in ("jpeg", "jpg", "png", "webp", "heic")}


async def _file(part: BodyPartReader) -> tuple[bytes, bool]:
    """The file part's bytes (read to the end, kept up to the limit), and whether it was over."""
    chunks, size = [], 0
    while chunk := await part.read_chunk(1 << 16):
        size += len(chunk)
        if size <= MAX_UPLOAD_BYTES:
            chunks.append(chunk)
    return b"".join(chunks), size > MAX_UPLOAD_BYTES


def _format(filename: str, mime: str) -> str:
    """The image format from the file name's extension, else from its Content-Type."""
    ext = filename.rpartition(".")[2].lower() if "." in filename else ""
    fmt = ext if ext in UPLOAD_FORMATS else MIME_FORMATS.get(mime.split(";")[0].strip())
    if fmt is None:
        raise ApiFailure(
            400, f"unsupported image format; use {', '.join(sorted(UPLOAD_FORMATS))}", "unsupported_format"
        )
    return fmt


async def upload_image(request: web.Request) -> web.Response:
    store, owner = simulator(request).store, owner_of(request)
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
            content, too_big = await _file(part)
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
    fmt = _format(filename, mime)
    model_id = data.get("modelID")
    if model_id is None and image_type == "modelInput":
        raise ApiFailure(400, "modelID is required for modelInput images", "validation_error")
    if model_id is not None:
        model_id = find_model(store, owner, str(model_id)).id
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
    return ok(asset.record(origin_of(request), simulator(request).store.url_query()))


async def generate_images(request: web.Request) -> web.Response:
    sim, owner, body = simulator(request), owner_of(request), await json_body(request)
    store, config = sim.store, sim.config
    trained = {m.id for m in store.models.values() if m.owner == owner and m.status != "deleted"}
    trigger = check_image(body, trained.__contains__)
    if trigger.trained:
        model = find_model(store, owner, trigger.model_id)
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
        find_asset(store, owner, str(body["inputImageId"]), "image")
    return await start_job(request, body, "image", trigger)


async def upscale_image(request: web.Request) -> web.Response:
    body = await json_body(request)
    source = find_asset(simulator(request).store, owner_of(request), check_upscale(body), "image")
    fmt = source.fmt if source.fmt in ("jpeg", "png", "webp") else "jpeg"
    return await start_job(request, body, "upscale", Trigger("", "", 1, fmt), source.id)


async def get_image(request: web.Request) -> web.Response:
    asset = find_asset(simulator(request).store, owner_of(request), request.match_info["imageID"], "image")
    return ok(asset.record(origin_of(request), simulator(request).store.url_query()))


async def delete_image(request: web.Request) -> web.Response:
    store = simulator(request).store
    asset = find_asset(store, owner_of(request), request.match_info["imageID"], "image")
    del store.assets[asset.id]
    return ok({"id": asset.id, "deleted": True})

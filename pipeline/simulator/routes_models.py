"""The model endpoints: list, save (create or update), get, delete, train, and a model's images."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pipeline.catalog import MIN_TRAINING_IMAGES
from pipeline.simulator.envelope import ApiFailure, ok
from pipeline.simulator.inputs import find_model, json_body, origin_of, owner_of, paged, retry_headers
from pipeline.simulator.records import Model
from pipeline.simulator.runtime import simulator

__all__ = [
    "IMAGE_TYPES",
    "delete_model",
    "get_model",
    "list_models",
    "model_images",
    "save_model",
    "train_model",
]

IMAGE_TYPES = {"all": None, "input": "modelInput", "output": "output", "auxiliaryType": "auxiliaryType"}


async def list_models(request: web.Request) -> web.Response:
    store, owner = simulator(request).store, owner_of(request)
    mine = [m for m in store.models.values() if m.owner == owner and m.status != "deleted"]
    for model in mine:
        store.refresh_model(model)
    return ok([m.record() for m in mine])


async def save_model(request: web.Request) -> web.Response:
    store, owner, body = simulator(request).store, owner_of(request), await json_body(request)
    names = ("name", "age", "gender", "ethnicity", "eyeColor", "modelType")
    fields: dict[str, Any] = {k: body[k] for k in names if k in body}
    if "age" in fields and (isinstance(fields["age"], bool) or not isinstance(fields["age"], int | float)):
        raise ApiFailure(400, "age must be a number", "validation_error")
    now = store.clock.now()
    if "id" in body:
        model = find_model(store, owner, str(body["id"]))
        model.fields.update(fields)
        model.updated_at = now
    else:
        model = Model(id=store.new_id(), owner=owner, fields=fields, created_at=now, updated_at=now)
        store.models[model.id] = model
    return ok(model.record())


async def get_model(request: web.Request) -> web.Response:
    return ok(find_model(simulator(request).store, owner_of(request), request.match_info["modelID"]).record())


async def delete_model(request: web.Request) -> web.Response:
    store = simulator(request).store
    model = find_model(store, owner_of(request), request.match_info["modelID"])
    model.status, model.updated_at = "deleted", store.clock.now()
    return ok(model.record())


async def train_model(request: web.Request) -> web.Response:
    sim, owner = simulator(request), owner_of(request)
    store = sim.store
    model = find_model(store, owner, request.match_info["modelID"])
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
            retry_headers(sim, 60.0),
        )
    if model.status == "training":
        raise ApiFailure(409, f"model {model.id} is already training", "conflict")
    model.status, model.updated_at = "training", store.clock.now()
    model.training_ends = store.clock.monotonic() + sim.config.training_s
    return ok("Training triggered")


async def model_images(request: web.Request) -> web.Response:
    store, owner = simulator(request).store, owner_of(request)
    model = find_model(store, owner, request.match_info["modelID"])
    wanted = request.query.get("imageType", "all")
    if wanted not in IMAGE_TYPES:
        raise ApiFailure(400, f"imageType must be one of {', '.join(IMAGE_TYPES)}", "validation_error")
    kind = IMAGE_TYPES[wanted]
    found = [
        a.record(origin_of(request), simulator(request).store.url_query())
        for a in store.assets.values()
        if a.kind == "image" and a.owner == owner and a.model_id == model.id and kind in (None, a.type)
    ]
    return paged(request, found)

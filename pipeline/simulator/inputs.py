"""What every handler reads from a request: who asks, which route, its body and query, what it names.

Shared by the middleware and the route modules, so an unknown id or a bad
parameter fails the same way (a NOK envelope) on every endpoint.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from pipeline.simulator.envelope import ApiFailure, ok
from pipeline.simulator.faults import retry_after_headers
from pipeline.simulator.records import Asset, Model
from pipeline.simulator.runtime import OWNER, Simulator
from pipeline.simulator.store import Store

__all__ = [
    "find_asset",
    "find_model",
    "int_query",
    "json_body",
    "origin_of",
    "owner_of",
    "paged",
    "retry_headers",
    "route_of",
]


def owner_of(request: web.Request) -> str:
    return request[OWNER]


def route_of(request: web.Request) -> str:
    """``"METHOD /path/{template}"``: how stats, fault scopes and holds name a request."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource else '(unmatched)'}"


def origin_of(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def retry_headers(sim: Simulator, seconds: float) -> dict[str, str]:
    return retry_after_headers(sim.config, seconds, sim.clock.now())


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise ApiFailure(400, "the body must be a JSON object", "bad_json")
    return body


def find_model(store: Store, owner: str, model_id: str) -> Model:
    model = store.models.get(model_id)
    if model is None or model.owner != owner or model.status == "deleted":
        raise ApiFailure(404, f"model {model_id} not found", "not_found")
    store.refresh_model(model)
    return model


def find_asset(store: Store, owner: str, asset_id: str, kind: str) -> Asset:
    asset = store.assets.get(asset_id)
    if asset is None or asset.owner != owner or asset.kind != kind:
        raise ApiFailure(404, f"{kind} {asset_id} not found", "not_found")
    return asset


def int_query(request: web.Request, name: str, default: int, top: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= top:
        raise ApiFailure(400, f"{name} must be an integer from 1 to {top}", "validation_error")
    return int(raw)


def paged(request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    page, size = int_query(request, "pageNum", 1, 10**6), int_query(request, "pageSize", 20, 100)
    return ok(items[(page - 1) * size : page * size], page=page, pageSize=size)

"""What every request shares: counting for ``/_sim/stats``, and the ``/api`` gate.

The gate checks the key and version, injects the configured faults and holds
routes; any failure leaves as the reference's NOK envelope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from pipeline.simulator.envelope import ApiFailure, nok
from pipeline.simulator.faults import in_scope
from pipeline.simulator.inputs import owner_of, retry_headers, route_of
from pipeline.simulator.runtime import OWNER, Simulator, simulator
from pipeline.simulator.store import fingerprint

__all__ = ["count_requests", "guard_api"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: count requests per route template and the 429s and 5xx sent."""
    store = simulator(request).store
    route = route_of(request)
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
async def guard_api(request: web.Request, handler: Handler) -> web.StreamResponse:
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
    route = route_of(request)
    if in_scope(config, route):
        await _inject(request, sim)
    if not _creates_job(route):
        await sim.held(route)


async def _inject(request: web.Request, sim: Simulator) -> None:
    """The faults that hit a request before it is handled: forced 429/5xx, rate, random 5xx, slowness."""
    config, faults = sim.config, sim.faults
    forced = faults.forced()
    if forced == 429:
        raise ApiFailure(429, "too many requests", "rate_limited", retry_headers(sim, 1.0))
    if forced is not None:
        raise ApiFailure(forced, "internal server error (simulated)", "server_error")
    wait = faults.admit(config, owner_of(request), sim.clock.monotonic())
    if wait is not None:
        raise ApiFailure(429, "too many requests", "rate_limited", retry_headers(sim, wait))
    if faults.chance(config.server_error_rate):
        raise ApiFailure(faults.server_error(), "internal server error (simulated)", "server_error")
    if faults.chance(config.slow_response_rate):
        await sim.clock.sleep(faults.between(config.slow_response_s))


_JOB_ROUTES = frozenset(
    {"POST /api/images/generation", "POST /api/images/upscaling", "POST /api/videos/generation"}
)


def _creates_job(route: str) -> bool:
    return route in _JOB_ROUTES

"""The ``/_sim`` endpoints: the stats and ledger tests read, and the runtime control they post.

Outside ``/api``: no key, version or faults, so a test can always inspect and steer.
"""

from __future__ import annotations

from aiohttp import web

from pipeline.simulator.envelope import ApiFailure
from pipeline.simulator.inputs import json_body
from pipeline.simulator.runtime import simulator

__all__ = ["sim_control", "sim_ledger", "sim_stats"]


async def sim_stats(request: web.Request) -> web.Response:
    return web.json_response(simulator(request).stats())


async def sim_ledger(request: web.Request) -> web.Response:
    return web.json_response(simulator(request).ledger())


async def sim_control(request: web.Request) -> web.Response:
    body = await json_body(request)
    try:
        return web.json_response(simulator(request).control(**body))
    except (ValueError, TypeError) as exc:
        raise ApiFailure(400, str(exc), "bad_control") from None

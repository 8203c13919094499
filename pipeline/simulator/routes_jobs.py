"""The job endpoints: starting a job (shared by the image, upscale and video POSTs), polling, listing.

Starting checks capacity and credits before anything exists, so a refused POST
creates nothing; a lost reply (502) is sent only after the job exists.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from pipeline.simulator.envelope import ApiFailure, ok
from pipeline.simulator.faults import in_scope
from pipeline.simulator.inputs import int_query, origin_of, owner_of, retry_headers, route_of
from pipeline.simulator.rules import Trigger
from pipeline.simulator.runtime import Simulator, simulator

__all__ = ["MAX_WINDOW", "get_job", "list_jobs", "start_job"]

MAX_WINDOW = timedelta(days=7)


async def start_job(
    request: web.Request, body: dict[str, Any], kind: str, trigger: Trigger, source_id: str = ""
) -> web.Response:
    """Capacity and credits, then the job: a refused trigger creates nothing."""
    sim, owner = simulator(request), owner_of(request)
    store, config = sim.store, sim.config
    if config.max_active_jobs is not None and store.active(owner) >= config.max_active_jobs:
        raise ApiFailure(
            429,
            f"too many active jobs (limit {config.max_active_jobs})",
            "too_many_jobs",
            retry_headers(sim, 1.0),
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
    route, config = route_of(request), sim.config
    await sim.held(route)
    if not in_scope(config, route):
        return
    if config.reply_delay_s[1] > 0:
        await sim.clock.sleep(sim.faults.between(config.reply_delay_s))
    if sim.faults.lost_reply(config):
        sim.store.lost_replies.append(job_id)
        raise ApiFailure(502, "bad gateway (simulated: the job was created)", "server_error")


async def get_job(request: web.Request) -> web.Response:
    store = simulator(request).store
    job = store.jobs.get(request.match_info["id"])
    if job is None or job.owner != owner_of(request):
        raise ApiFailure(404, f"job {request.match_info['id']} not found", "not_found")
    job.polls += 1
    store.advance(job, poll=True)
    return ok(store.job_record(job, origin_of(request)))


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
    sim, owner = simulator(request), owner_of(request)
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
    size = int_query(
        request, "pageSize", sim.config.job_list_page_size, max(100, sim.config.job_list_page_size)
    )
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

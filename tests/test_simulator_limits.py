"""The simulator's capacity limits, injected faults, credits, ledger and configuration."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest

from pipeline.clock import FakeClock
from pipeline.simulator import Sandbox, SimConfig
from tests.test_simulator import KEY, OTHER, SEED, Raw


@pytest.fixture(name="raw")
async def _raw() -> AsyncIterator[Raw]:
    clock = FakeClock()
    config = SimConfig.profile("fast", keys=(KEY, OTHER), seed=5)
    async with Sandbox(config, clock=clock) as sb, aiohttp.ClientSession() as http:
        yield Raw(sb, http, clock)


async def test_active_job_cap_refuses_without_creating(raw: Raw) -> None:
    """Over the per-key cap: 429 NOK and no job; other keys and finished jobs free capacity."""
    raw.sb.control(max_active_jobs=2, image_s=(10.0, 10.0))
    await raw.trigger(SEED)
    await raw.trigger(SEED)
    status, body, headers = await raw.call("POST", "/images/generation", json=SEED)
    assert status == 429 and body["status"] == "NOK" and "Retry-After" not in headers
    assert len(raw.sb.ledger()) == 2
    await raw.trigger(SEED, key=OTHER)
    raw.clock.advance(10.0)
    await raw.trigger(SEED)
    stats = raw.sb.stats()
    assert stats["jobs_created"] == 4 and stats["sent_429"] == 1
    assert sorted(stats["peak_active_jobs"].values()) == [1, 2]
    assert KEY not in json.dumps(stats) + json.dumps(raw.sb.ledger())


async def test_requests_per_second_limit_and_retry_after(raw: Raw) -> None:
    """A per-key rate: 429 past it, Retry-After only when switched on, admitted again later."""
    raw.sb.control(rps_limit=2.0)
    assert [(await raw.call("GET", "/presets"))[0] for _ in range(3)] == [200, 200, 429]
    assert "Retry-After" not in (await raw.call("GET", "/presets"))[2]
    assert (await raw.call("GET", "/presets", key=OTHER))[0] == 200
    raw.sb.control(retry_after="seconds")
    status, _, headers = await raw.call("GET", "/presets")
    assert status == 429 and int(headers["Retry-After"]) >= 1
    raw.sb.control(retry_after="date")
    status, _, headers = await raw.call("GET", "/presets")
    assert status == 429 and parsedate_to_datetime(headers["Retry-After"]) > raw.clock.now()
    raw.clock.advance(1.0)
    assert (await raw.call("GET", "/presets"))[0] == 200


async def test_next_n_controls_over_http(raw: Raw) -> None:
    """POST /_sim/control: the next N requests get 429, then 5xx, then normal answers."""
    async with raw.http.post(
        raw.sb.origin + "/_sim/control", json={"next_n_429": 2, "next_n_5xx": 1}
    ) as resp:
        assert resp.status == 200 and (await resp.json())["next_n_429"] == 2
    statuses = [(await raw.call("POST", "/images/generation", json=SEED))[0] for _ in range(4)]
    assert statuses == [429, 429, 503, 200]
    stats = raw.sb.stats()
    assert stats["sent_429"] == 2 and stats["sent_5xx"] == 1 and stats["jobs_created"] == 1
    async with raw.http.post(raw.sb.origin + "/_sim/control", json={"no_such_knob": 1}) as resp:
        assert resp.status == 400


async def test_random_5xx_and_slow_responses_use_the_clock(raw: Raw) -> None:
    """server_error_rate 1 fails every API call; slow responses wait on the injected clock."""
    raw.sb.control(server_error_rate=1.0)
    status, body, _ = await raw.call("GET", "/models")
    assert status in (500, 502, 503) and body["status"] == "NOK"
    raw.sb.control(server_error_rate=0.0, slow_response_rate=1.0, slow_response_s=(3.0, 3.0))
    before = raw.clock.monotonic()
    await raw.ok("GET", "/models")
    assert raw.clock.monotonic() - before == pytest.approx(3.0)


async def test_insufficient_credits(raw: Raw) -> None:
    """A trigger that would exceed the balance is refused with the documented text; failures refund."""
    raw.sb.control(credits=3)
    await raw.trigger({**SEED, "numImages": 2})
    body = await raw.nok("POST", "/images/generation", 402, json={**SEED, "numImages": 2})
    assert body["message"] == "insufficient credits"
    failed = await raw.trigger({**SEED, "prompt": "x [[fail]]"})
    assert raw.sb.stats()["credits"] == 0
    await raw.finish(failed)
    assert raw.sb.stats()["credits"] == 1
    raw.sb.control(credits=0, insufficient_credits_status=429)
    await raw.nok("POST", "/videos/generation", 429, json={"modelID": "veo-3.1", "prompt": "x"})
    items = {i["jobId"]: i["credits"] for i in (await raw.ok("GET", "/jobs"))["jobs"]}
    assert sorted(items.values()) == [0, 2]


async def test_ledger_counts_bodies_polls_and_routes(raw: Raw) -> None:
    """Equal bodies share a hash; polls, routes and key fingerprints are recorded; HTTP matches in-process."""
    first, second = await raw.trigger(SEED), await raw.trigger(SEED)
    await raw.finish(first)
    canonical = json.dumps(SEED, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    stats = raw.sb.stats()
    assert stats["jobs_by_body"] == {digest: 2} and stats["polls_by_job"][second] == 0
    assert stats["polls"] == stats["polls_by_job"][first] >= 1
    assert stats["requests"]["POST /api/images/generation"] == 2
    assert stats["requests"]["GET /api/jobs/{id}"] == stats["polls"]
    entry = next(e for e in raw.sb.ledger() if e["jobId"] == first)
    assert entry["bodyHash"] == digest and entry["kind"] == "image" and entry["status"] == "success"
    assert entry["key"] == hashlib.sha256(KEY.encode()).hexdigest()[:8]
    async with raw.http.get(raw.sb.origin + "/_sim/ledger") as resp:
        assert await resp.json() == raw.sb.ledger()
    async with raw.http.get(raw.sb.origin + "/_sim/stats") as resp:
        assert (await resp.json())["jobs_created"] == 2


async def test_reset_clears_state(raw: Raw) -> None:
    """control(reset=True) forgets jobs and counters, keeping the current config."""
    job_id = await raw.trigger(SEED)
    raw.sb.control(reset=True, max_active_jobs=5)
    assert raw.sb.stats()["jobs_created"] == 0 and raw.sb.ledger() == []
    await raw.nok("GET", f"/jobs/{job_id}", 404)
    assert raw.sb.control()["config"]["max_active_jobs"] == 5


async def test_same_seed_same_draws() -> None:
    """Two runs with one seed draw the same durations and ids."""
    runs = []
    for _ in range(2):
        clock = FakeClock()
        async with (
            Sandbox(SimConfig(keys=(KEY,), seed=42), clock=clock) as sb,
            aiohttp.ClientSession() as http,
        ):
            raw = Raw(sb, http, clock)
            for _ in range(3):
                await raw.trigger(SEED)
            runs.append([(e["jobId"], e["duration"]) for e in sb.ledger()])
    assert runs[0] == runs[1]


def test_profiles_overrides_and_validation() -> None:
    """Profiles carry the documented timings; overrides apply; bad values are refused."""
    fast, real, chaos = (SimConfig.profile(n) for n in ("fast", "realistic", "chaos"))
    assert fast.image_s[1] <= 1.0 and fast.server_error_rate == 0 and fast.max_active_jobs is None
    assert real.image_s == (5.0, 20.0) and real.upscale_s == (5.0, 10.0) and real.video_s == (30.0, 90.0)
    assert real.max_active_jobs == 32
    assert chaos.server_error_rate == chaos.failed_job_rate == 0.05 and chaos.truncated_download_rate == 0.02
    assert chaos.rps_limit and chaos.retry_after != "off" and chaos.slow_response_rate > 0
    assert SimConfig.profile("chaos", seed=3, keys=("a", "b")).keys == ("a", "b")
    assert KEY not in repr(SimConfig(keys=(KEY,))), "the config's repr must not show API keys"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.seed = 1  # type: ignore[misc]
    bad: list[dict[str, Any]] = [
        {"image_s": (2.0, 1.0)},
        {"failed_job_rate": 2.0},
        {"keys": ()},
        {"not_ready_status": 200},
    ]
    for fields in bad:
        with pytest.raises(ValueError, match="invalid SimConfig"):
            SimConfig(**fields)
    with pytest.raises(ValueError, match="unknown simulator profile"):
        SimConfig.profile("turbo")
    with pytest.raises(TypeError):
        SimConfig(KEY)  # type: ignore[call-arg, arg-type]

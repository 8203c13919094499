"""The simulator's resources: models and training, uploads, listings, deletes and ownership."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from pipeline.clock import FakeClock
from pipeline.simulator import Sandbox, SimConfig
from tests.test_simulator import KEY, OTHER, PNG, SEED, Raw


@pytest.fixture(name="raw")
async def _raw() -> AsyncIterator[Raw]:
    clock = FakeClock()
    config = SimConfig.profile("fast", keys=(KEY, OTHER), seed=9, training_s=600.0)
    async with Sandbox(config, clock=clock) as sb, aiohttp.ClientSession() as http:
        yield Raw(sb, http, clock)


def _form(
    data: Any, content: bytes = PNG, filename: str = "p.png", mime: str = "image/png"
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(content), filename=filename, content_type=mime)
    if data is not None:
        form.add_field("data", json.dumps(data), content_type="application/json")
    return form


async def _upload(raw: Raw, model_id: str | None, kind: str = "modelInput", key: str = KEY, **kw: Any) -> Any:
    data = {"type": kind} | ({"modelID": model_id} if model_id else {})
    return await raw.ok("POST", "/images/upload", data=_form(data, **kw), key=key)


async def _model(raw: Raw, key: str = KEY, photos: int = 0) -> str:
    model = await raw.ok("POST", "/models", json={"name": "Ava", "age": 30, "gender": "Female"}, key=key)
    for _ in range(photos):
        await _upload(raw, model["id"], key=key)
    return str(model["id"])


async def test_model_create_update_get_list_delete(raw: Raw) -> None:
    """POST creates (status new) or updates by id; DELETE marks deleted and GET is then 404."""
    created = await raw.ok("POST", "/models", json={"name": "Ava", "eyeColor": "brown"})
    assert created["status"] == "new" and created["modelType"] and created["createdAt"].endswith("Z")
    assert len(created["id"]) == 36 and created["id"][14] == "7"
    raw.clock.advance(5)
    updated = await raw.ok("POST", "/models", json={"id": created["id"], "name": "Ava B"})
    assert updated["id"] == created["id"] and updated["name"] == "Ava B" and updated["eyeColor"] == "brown"
    assert updated["updatedAt"] > updated["createdAt"]
    await raw.nok("POST", "/models", 404, json={"id": "no-such-model"})
    await raw.nok("POST", "/models", 400, json={"age": "old"})
    assert [m["id"] for m in await raw.ok("GET", "/models")] == [created["id"]]
    deleted = await raw.ok("DELETE", f"/models/{created['id']}")
    assert deleted["status"] == "deleted"
    await raw.nok("GET", f"/models/{created['id']}", 404)
    assert await raw.ok("GET", "/models") == []


async def test_training_needs_twelve_photos_and_becomes_ready(raw: Raw) -> None:
    """<12 photos: 400; a second concurrent training: 429; ready after training_s; then generation works."""
    first = await _model(raw, photos=11)
    assert "12" in (await raw.nok("GET", f"/models/{first}/train", 400))["message"]
    await _upload(raw, first)
    assert await raw.ok("GET", f"/models/{first}/train") == "Training triggered"
    assert (await raw.ok("GET", f"/models/{first}"))["status"] == "training"
    second = await _model(raw, photos=12)
    await raw.nok("GET", f"/models/{second}/train", 429)
    await raw.nok("POST", "/images/generation", 409, json={"modelID": first})
    raw.sb.control(not_ready_status=400)
    await raw.nok("POST", "/images/generation", 400, json={"modelID": first})
    raw.clock.advance(600)
    assert (await raw.ok("GET", f"/models/{first}"))["status"] == "ready"
    job = await raw.finish(await raw.trigger({"modelID": first, "prompt": "portrait", "preset": "studio"}))
    assert job["status"] == "success" and job["modelId"] == first
    outputs = await raw.ok("GET", f"/models/{first}/images?imageType=output")
    assert [i["id"] for i in outputs] == [job["images"][0]["id"]]
    raw.sb.control(training_fails=True)
    assert await raw.ok("GET", f"/models/{second}/train") == "Training triggered"
    raw.clock.advance(600)
    assert (await raw.ok("GET", f"/models/{second}"))["status"] == "failed"


async def test_upload_rules(raw: Raw) -> None:
    """Type, format (extension or MIME), both parts, owner's model, 20 MB and 20 per type per model."""
    model = await _model(raw)
    image = await _upload(raw, model, filename="face.JPG", mime="application/octet-stream")
    assert image["modelID"] == model and image["type"] == "modelInput" and image["url"].endswith(".jpg")
    aux = await _upload(raw, None, "auxiliaryType", filename="blob", mime="image/webp")
    assert aux["url"].endswith(".webp") and aux["modelID"] is None
    status, data, headers = await raw.fetch(image["url"])
    assert status == 200 and data == PNG and headers["Content-Type"] == "image/jpeg"
    bad: list[tuple[Any, dict[str, Any], int]] = [
        ({"type": "bogus", "modelID": model}, {}, 400),
        ({"type": "modelInput", "modelID": model}, {"filename": "a.txt", "mime": "text/plain"}, 400),
        ({"type": "modelInput"}, {}, 400),
        (None, {}, 400),
        ({"type": "modelInput", "modelID": "someone-elses"}, {}, 404),
        ({"type": "modelInput", "modelID": model}, {"content": bytes(20 * 1024 * 1024 + 1)}, 400),
    ]
    for data_part, kw, status in bad:
        await raw.nok("POST", "/images/upload", status, data=_form(data_part, **kw))
    await raw.nok("POST", "/images/upload", 400, json={"type": "modelInput"})
    for _ in range(19):
        await _upload(raw, model)
    full = await raw.nok("POST", "/images/upload", 400, data=_form({"type": "modelInput", "modelID": model}))
    assert "20" in full["message"]
    await _upload(raw, model, "auxiliaryType")


async def test_model_images_filter_and_pages(raw: Raw) -> None:
    """imageType all/input/output/auxiliaryType, pageNum/pageSize, with top-level page and pageSize."""
    model = await _model(raw, photos=5)
    await _upload(raw, model, "auxiliaryType")
    status, body, _ = await raw.call("GET", f"/models/{model}/images?imageType=input&pageNum=2&pageSize=2")
    assert status == 200 and body["page"] == 2 and body["pageSize"] == 2 and len(body["result"]) == 2
    assert len(await raw.ok("GET", f"/models/{model}/images")) == 6
    assert len(await raw.ok("GET", f"/models/{model}/images?imageType=auxiliaryType")) == 1
    assert await raw.ok("GET", f"/models/{model}/images?imageType=output") == []
    await raw.nok("GET", f"/models/{model}/images?imageType=modelInput", 400)
    await raw.nok("GET", f"/models/{model}/images?pageSize=0", 400)


async def test_ownership_is_404_across_keys(raw: Raw) -> None:
    """Another key's job, image, video and model are 404, for reads and deletes alike."""
    image = await raw.image(key=OTHER)
    video_job = await raw.finish(
        await raw.trigger({"modelID": "grok-imagine-1.5", "prompt": "x"}, "/videos/generation", key=OTHER),
        OTHER,
    )
    model = await _model(raw, key=OTHER)
    for method, path in [
        ("GET", f"/jobs/{video_job['jobId']}"),
        ("GET", f"/images/{image['id']}"),
        ("DELETE", f"/images/{image['id']}"),
        ("GET", f"/videos/{video_job['videos'][0]['id']}"),
        ("GET", f"/videos/{video_job['videos'][0]['id']}/create-download"),
        ("GET", f"/models/{model}"),
        ("GET", f"/models/{model}/train"),
        ("DELETE", f"/models/{model}"),
    ]:
        await raw.nok(method, path, 404)
    assert await raw.ok("GET", "/videos") == []
    assert await raw.ok("GET", "/jobs") == {"jobs": [], "nextPageToken": None}


async def test_job_list_window_limit_and_pages(raw: Raw) -> None:
    """Default window is the last 24 h; spans over 7 days are 400; tokens page through every job once."""
    old = await raw.trigger(SEED)
    raw.clock.advance(25 * 3600)
    made = [await raw.trigger(SEED) for _ in range(5)]
    listed = (await raw.ok("GET", "/jobs"))["jobs"]
    assert {j["jobId"] for j in listed} == set(made)
    assert set(listed[0]) >= {"jobId", "status", "createdAt", "updatedAt", "credits"}
    now = raw.clock.now()
    params = {"start": (now - timedelta(days=2)).isoformat(), "end": now.isoformat(), "pageSize": "2"}
    seen, pages = [], 0
    while True:
        page = await raw.ok("GET", "/jobs", params=params)
        seen += [j["jobId"] for j in page["jobs"]]
        pages += 1
        if not page["nextPageToken"]:
            break
        params = {"pageToken": page["nextPageToken"], "pageSize": "2"}
    assert pages == 3 and sorted(seen) == sorted([old, *made]) and len(seen) == len(set(seen))
    week = {"start": (now - timedelta(days=7, seconds=1)).isoformat(), "end": now.isoformat()}
    assert "7 days" in (await raw.nok("GET", "/jobs", 400, params=week))["message"]
    await raw.nok(
        "GET", "/jobs", 400, params={"start": now.isoformat(), "end": (now - timedelta(1)).isoformat()}
    )
    await raw.nok("GET", "/jobs", 400, params={"pageToken": "garbage!"})
    await raw.nok("GET", "/jobs", 400, params={"start": "yesterday"})


async def test_videos_list_and_deletes(raw: Raw) -> None:
    """GET /videos pages video records; deleted images and videos are 404 afterwards, files too."""
    job = await raw.finish(
        await raw.trigger({"modelID": "kling-video-pro", "prompt": "x", "numVideos": 3}, "/videos/generation")
    )
    status, body, _ = await raw.call("GET", "/videos?pageSize=2")
    assert status == 200 and body["page"] == 1 and body["pageSize"] == 2 and len(body["result"]) == 2
    assert all(v["jobId"] == job["jobId"] and v["modelID"] == "kling-video-pro" for v in body["result"])
    video = job["videos"][0]
    assert await raw.ok("DELETE", f"/videos/{video['id']}") == {"id": video["id"], "deleted": True}
    await raw.nok("GET", f"/videos/{video['id']}", 404)
    assert (await raw.fetch(video["url"]))[0] == 404
    image = await raw.image()
    assert await raw.ok("DELETE", f"/images/{image['id']}") == {"id": image["id"], "deleted": True}
    await raw.nok("GET", f"/images/{image['id']}", 404)


async def test_presets_list(raw: Raw) -> None:
    """GET /presets: tag, name and description, including the documented ``editorial``."""
    presets = await raw.ok("GET", "/presets")
    assert "editorial" in {p["tag"] for p in presets}
    assert all(set(p) == {"tag", "name", "description"} for p in presets)

"""The simulator on the raw wire: auth, envelopes, trigger rules, job lifecycle and asset files.

Plain aiohttp requests against a Sandbox on 127.0.0.1, time driven by a FakeClock,
so nothing sleeps and nothing depends on the machine's speed. The helpers here are
shared by the other ``test_simulator_*`` files.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from pipeline.clock import FakeClock
from pipeline.simulator import Sandbox, SimConfig

KEY = "sk-sim-alpha-0123456789"
OTHER = "sk-sim-bravo-9876543210"
SEED = {
    "modelID": "gpt-image-2",
    "prompt": "A cinematic product photo of a silver perfume bottle",
    "aspectRatio": "1:1",
    "numImages": 1,
    "options": {"openai": {"imageSize": "1K", "outputFormat": "jpeg", "quality": "high"}},
}
JPEG, PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"


@dataclass
class Raw:
    """Raw HTTP against the sandbox: returns status, parsed JSON and headers; no client logic."""

    sb: Sandbox
    http: aiohttp.ClientSession
    clock: FakeClock

    async def call(
        self, method: str, path: str, *, key: str | None = KEY, version: str | None = "1", **kw: Any
    ) -> tuple[int, Any, Any]:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if version is not None:
            headers["API-Version"] = version
        async with self.http.request(method, self.sb.base_url + path, headers=headers, **kw) as resp:
            return resp.status, await resp.json(), resp.headers

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        status, body, _ = await self.call(method, path, **kw)
        assert status == 200 and body["status"] == "OK", body
        return body["result"]

    async def nok(self, method: str, path: str, status: int, **kw: Any) -> dict[str, Any]:
        got, body, _ = await self.call(method, path, **kw)
        assert got == status, body
        assert body["status"] == "NOK" and body["result"] is None and body["message"] and body["err"]
        return dict(body)

    async def trigger(self, body: dict[str, Any], path: str = "/images/generation", key: str = KEY) -> str:
        result = await self.ok("POST", path, json=body, key=key)
        assert result["status"] == "queued"
        return str(result["jobId"])

    async def finish(self, job_id: str, key: str = KEY, step: float = 1.0) -> dict[str, Any]:
        for _ in range(500):
            job = await self.ok("GET", f"/jobs/{job_id}", key=key)
            if job["status"] in ("success", "failed"):
                return dict(job)
            self.clock.advance(step)
        raise AssertionError("job never finished")

    async def fetch(self, url: str, **headers: str) -> tuple[int, bytes, Any]:
        async with self.http.get(url, headers=headers) as resp:
            return resp.status, await resp.read(), resp.headers

    async def image(self, fmt: str = "jpeg", key: str = KEY) -> dict[str, str]:
        """One finished image output of format ``fmt``: its ``{id, url}``."""
        body = {**SEED, "options": {"openai": {"outputFormat": fmt}}}
        job = await self.finish(await self.trigger(body, key=key), key=key)
        return dict(job["images"][0])


@pytest.fixture(name="raw")
async def _raw() -> AsyncIterator[Raw]:
    clock = FakeClock()
    config = SimConfig.profile("fast", keys=(KEY, OTHER), seed=11)
    async with Sandbox(config, clock=clock) as sb, aiohttp.ClientSession() as http:
        yield Raw(sb, http, clock)


# Transport, auth and envelope -------------------------------------------------------------


async def test_acceptance_seed_request_reaches_a_real_jpeg(raw: Raw) -> None:
    """The issue's seed: queued ticket, success after polls, JPEG bytes behind images[0].url."""
    job_id = await raw.trigger(SEED)
    first = await raw.ok("GET", f"/jobs/{job_id}")
    assert first["status"] in ("created", "queued", "running")
    assert first["createdAt"].endswith("Z") and first["modelId"] == "gpt-image-2"
    job = await raw.finish(job_id)
    assert job["status"] == "success" and len(job["images"]) == 1
    status, data, headers = await raw.fetch(job["images"][0]["url"])
    assert status == 200 and data.startswith(JPEG) and data.endswith(b"\xff\xd9")
    assert headers["Content-Type"] == "image/jpeg" and int(headers["Content-Length"]) == len(data)
    record = await raw.ok("GET", f"/images/{job['images'][0]['id']}")
    assert record["url"] == job["images"][0]["url"] and record["type"] == "output"
    assert raw.sb.ledger()[0]["polls"] >= 2


async def test_auth_and_version_failures_are_nok_envelopes(raw: Raw) -> None:
    """No key or an unknown key: 401; no or another API-Version: 400 (configurable)."""
    await raw.nok("POST", "/images/generation", 401, json=SEED, key=None)
    await raw.nok("GET", "/ping", 401, key="sk-not-a-key")
    body = await raw.nok("GET", "/ping", 400, version=None)
    assert "API-Version" in body["message"]
    await raw.nok("GET", "/ping", 400, version="2")
    raw.sb.control(version_error_status=412)
    await raw.nok("GET", "/ping", 412, version=None)
    assert raw.sb.stats()["jobs_created"] == 0


async def test_ping_unknown_route_and_dropped_envelope_keys(raw: Raw) -> None:
    """Ping has no result; unknown routes are NOK 404; switches drop message or err."""
    status, body, headers = await raw.call("GET", "/ping")
    assert status == 200 and body == {"message": "pong!", "status": "OK"}
    assert headers["Content-Type"].startswith("application/json")
    await raw.nok("GET", "/nowhere", 404)
    raw.sb.control(drop_message=True, drop_err=True)
    _, body, _ = await raw.call("GET", "/jobs/none")
    assert body == {"status": "NOK", "result": None}


# Trigger validation ------------------------------------------------------------------------

VEO_REF = [{"url": "https://x/a.jpg", "role": "reference_image"}]


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/images/generation", {"prompt": "x"}, "modelID"),
        ("/images/generation", {"modelID": "gpt-image-2"}, "prompt"),
        ("/images/generation", {"modelID": "gpt-image-3", "prompt": "x"}, "gpt-image-3"),
        ("/images/generation", {"modelID": "veo-3.1", "prompt": "x"}, "video model"),
        (
            "/images/generation",
            {"modelID": "gpt-image-2", "prompt": "x", "options": {"gemini": {}}},
            "gemini",
        ),
        ("/images/generation", {"modelID": "seedream", "prompt": "x", "options": {"a": {}, "b": {}}}, "one"),
        (
            "/images/generation",
            {"modelID": "nanobanana", "prompt": "x", "referenceImageURLs": ["u"] * 4},
            "3",
        ),
        ("/images/generation", {"modelID": "gpt-image-2", "prompt": "x", "numImages": 5}, "numImages"),
        ("/images/generation", {"modelID": "gpt-image-2", "prompt": "x", "numImages": 0}, "numImages"),
        ("/images/generation", {"modelID": "gpt-image-2", "prompt": "x", "numImages": True}, "numImages"),
        ("/images/generation", {**SEED, "options": {"openai": {"outputFormat": "gif"}}}, "outputFormat"),
        ("/images/generation", {**SEED, "preset": "no-such-preset"}, "no-such-preset"),
        (
            "/videos/generation",
            {"modelID": "veo-3.1", "prompt": "x", "options": {"veo": {"duration": 5}}},
            "duration",
        ),
        (
            "/videos/generation",
            {
                "modelID": "veo-3.1",
                "prompt": "x",
                "referenceImages": VEO_REF,
                "options": {"veo": {"duration": 4}},
            },
            "8",
        ),
        (
            "/videos/generation",
            {
                "modelID": "seedance-2.0",
                "prompt": "x",
                "referenceImages": [{"url": "u", "role": "middle_frame"}],
            },
            "role",
        ),
        (
            "/videos/generation",
            {"modelID": "kling-video-pro", "prompt": "x", "options": {"veo": {}}},
            "kling",
        ),
        ("/videos/generation", {"modelID": "grok-imagine-1.5", "prompt": "x", "numVideos": 9}, "numVideos"),
        ("/videos/generation", {"modelID": "gpt-image-2", "prompt": "x"}, "image model"),
        ("/images/upscaling", {}, "imageID"),
        ("/images/generation", [1, 2], "JSON object"),
    ],
)
async def test_bad_triggers_are_400_and_create_nothing(raw: Raw, path: str, body: Any, fragment: str) -> None:
    """Each rule of the reference rejects with a message naming the problem; no job is made."""
    result = await raw.nok("POST", path, 400, json=body)
    assert fragment in result["message"]
    assert raw.sb.stats()["jobs_created"] == 0 and raw.sb.ledger() == []


async def test_valid_variants_are_accepted(raw: Raw) -> None:
    """Seedream takes any single group, Veo 8 s with a reference image, and a known preset."""
    await raw.trigger({"modelID": "seedream", "prompt": "x", "options": {"anything": {"k": 1}}})
    await raw.trigger(
        {"modelID": "veo-3.1", "prompt": "x", "referenceImages": VEO_REF, "options": {"veo": {}}},
        "/videos/generation",
    )
    await raw.trigger({**SEED, "preset": "editorial"})
    assert raw.sb.stats()["jobs_created"] == 3


async def test_unknown_preset_and_upscale_ids(raw: Raw) -> None:
    """Unknown preset status is configurable; upscaling an unknown or foreign image is 404."""
    raw.sb.control(unknown_preset_status=422)
    await raw.nok("POST", "/images/generation", 422, json={**SEED, "preset": "nope"})
    await raw.nok("POST", "/images/upscaling", 404, json={"imageID": "img-unknown"})
    foreign = await raw.image(key=OTHER)
    await raw.nok("POST", "/images/upscaling", 404, json={"imageID": foreign["id"]})


# Job lifecycle -----------------------------------------------------------------------------


async def test_time_mode_moves_through_every_status(raw: Raw) -> None:
    """created (when drawn) → queued → running → success, by the injected clock alone."""
    raw.sb.control(created_probability=1.0, image_s=(10.0, 10.0))
    job_id = await raw.trigger(SEED)
    seen = []
    for _ in range(12):
        seen.append((await raw.ok("GET", f"/jobs/{job_id}"))["status"])
        raw.clock.advance(1.0)
    assert seen[0] == "created" and "queued" in seen and "running" in seen and seen[-1] == "success"
    entry = raw.sb.ledger()[0]
    assert entry["finished"] - entry["created"] == pytest.approx(entry["duration"]) == 10.0
    assert entry["created"] < entry["started"] < entry["finished"] and entry["polls"] == 12


async def test_poll_mode_needs_the_configured_polls(raw: Raw) -> None:
    """In poll mode the clock never moves, yet the third poll finishes the job."""
    raw.sb.control(progress="polls", polls_to_finish=3, created_probability=0.0)
    job_id = await raw.trigger({**SEED, "numImages": 3})
    statuses = [(await raw.ok("GET", f"/jobs/{job_id}"))["status"] for _ in range(3)]
    assert statuses == ["queued", "running", "success"]
    job = await raw.ok("GET", f"/jobs/{job_id}")
    assert len(job["images"]) == 3 and len({i["id"] for i in job["images"]}) == 3


async def test_failure_marker_and_failure_rate_give_failed_jobs(raw: Raw) -> None:
    """Failed jobs are HTTP 200 with status failed and an error string; list items use errorMessage."""
    job = await raw.finish(await raw.trigger({**SEED, "prompt": "bottle [[fail]]"}))
    assert job["status"] == "failed" and job["error"] and "images" not in job
    raw.sb.control(failed_job_rate=1.0)
    assert (await raw.finish(await raw.trigger(SEED)))["status"] == "failed"
    listed = (await raw.ok("GET", "/jobs"))["jobs"]
    assert all(item["errorMessage"] and item["credits"] == 0 for item in listed)


async def test_upscale_gives_one_image_and_links_the_source(raw: Raw) -> None:
    """Upscale: exactly one output, same format as the source, linked from the source record."""
    source = await raw.image("png")
    job = await raw.finish(await raw.trigger({"imageID": source["id"]}, "/images/upscaling"))
    assert job["status"] == "success" and len(job["images"]) == 1 and "modelId" not in job
    upscaled = job["images"][0]
    assert upscaled["url"].endswith(".png")
    record = await raw.ok("GET", f"/images/{source['id']}")
    assert record["upscaledImageID"] == upscaled["id"] and record["upscaledImageURL"] == upscaled["url"]


# Asset files -------------------------------------------------------------------------------


def _png_chunks(data: bytes) -> dict[bytes, bytes]:
    assert data.startswith(PNG)
    chunks, at = {}, 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, payload = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        chunks[kind] = payload
        at += 12 + length
    assert at == len(data)
    return chunks


def _mp4_boxes(data: bytes) -> list[bytes]:
    boxes, at = [], 0
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        assert size >= 8
        boxes.append(kind)
        at += size
    assert at == len(data)
    return boxes


async def test_png_is_valid_and_unique(raw: Raw) -> None:
    """PNG chunks carry correct CRCs, the pixels inflate, and the asset id is in a tEXt chunk."""
    out = await raw.image("png")
    status, data, headers = await raw.fetch(out["url"])
    assert status == 200 and headers["Content-Type"] == "image/png"
    chunks = _png_chunks(data)
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)
    assert out["id"].encode() in chunks[b"tEXt"] and b"IEND" in chunks


async def test_webp_and_jpeg_are_valid_and_unique(raw: Raw) -> None:
    """WebP: RIFF size right, VP8X then VP8; JPEG: SOI, a COM with the id, EOI; bytes differ per asset."""
    first, second = await raw.image("webp"), await raw.image("webp")
    _, a, headers = await raw.fetch(first["url"])
    _, b, _ = await raw.fetch(second["url"])
    assert headers["Content-Type"] == "image/webp" and a != b
    assert a[:4] == b"RIFF" and a[8:16] == b"WEBPVP8X" and struct.unpack("<I", a[4:8])[0] == len(a) - 8
    assert b"VP8 " in a and first["id"].encode() in a
    jpeg = await raw.image("jpeg")
    _, data, _ = await raw.fetch(jpeg["url"])
    assert data.startswith(JPEG) and b"\xff\xfe" in data and jpeg["id"].encode() in data


async def test_padding_keeps_files_valid(raw: Raw) -> None:
    """file_size pads every format to the size asked, still structurally valid."""
    raw.sb.control(file_size=300_000)
    png = (await raw.fetch((await raw.image("png"))["url"]))[1]
    assert len(png) == 300_000
    _png_chunks(png)
    jpeg = (await raw.fetch((await raw.image("jpeg"))["url"]))[1]
    assert len(jpeg) == 300_000 and jpeg.endswith(b"\xff\xd9")
    webp = (await raw.fetch((await raw.image("webp"))["url"]))[1]
    assert len(webp) >= 300_000 and struct.unpack("<I", webp[4:8])[0] == len(webp) - 8


async def test_video_is_an_mp4_with_a_record(raw: Raw) -> None:
    """Video jobs: numVideos outputs, MP4 boxes ftyp…free, records carry jobId and modelID."""
    job_id = await raw.trigger(
        {"modelID": "veo-3.1", "prompt": "waves", "numVideos": 2}, "/videos/generation"
    )
    job = await raw.finish(job_id)
    assert job["status"] == "success" and len(job["videos"]) == 2
    video = job["videos"][0]
    status, data, headers = await raw.fetch(video["url"])
    assert status == 200 and headers["Content-Type"] == "video/mp4" and data[4:8] == b"ftyp"
    boxes = _mp4_boxes(data)
    assert boxes[0] == b"ftyp" and b"moov" in boxes and b"mdat" in boxes and boxes[-1] == b"free"
    assert video["id"].encode() in data
    record = await raw.ok("GET", f"/videos/{video['id']}")
    assert record["jobId"] == job_id and record["modelID"] == "veo-3.1" and record["url"] == video["url"]


async def test_range_requests_and_their_switch(raw: Raw) -> None:
    """206 with Content-Range for a range, suffix ranges, 416 past the end; switch off gives 200."""
    url = (await raw.image("png"))["url"]
    _, full, headers = await raw.fetch(url)
    assert headers["Accept-Ranges"] == "bytes"
    status, part, headers = await raw.fetch(url, Range="bytes=10-19")
    assert status == 206 and part == full[10:20] and headers["Content-Range"] == f"bytes 10-19/{len(full)}"
    status, tail, _ = await raw.fetch(url, Range="bytes=-5")
    assert status == 206 and tail == full[-5:]
    status, rest, _ = await raw.fetch(url, Range="bytes=100-")
    assert status == 206 and rest == full[100:]
    status, _, headers = await raw.fetch(url, Range=f"bytes={len(full)}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(full)}"
    raw.sb.control(range_requests=False)
    status, again, headers = await raw.fetch(url, Range="bytes=10-19")
    assert status == 200 and again == full and headers["Accept-Ranges"] == "none"


async def test_truncated_download_is_cut_short(raw: Raw) -> None:
    """A drawn truncation promises the full length, sends less and closes; the ledger counts it."""
    url = (await raw.image("jpeg"))["url"]
    raw.sb.control(truncated_download_rate=1.0)
    with pytest.raises(aiohttp.ClientPayloadError):
        await raw.fetch(url)
    stats = raw.sb.stats()
    assert stats["truncated_downloads"] == 1 and stats["bytes_served"] > 0
    raw.sb.control(truncated_download_rate=0.0)
    assert (await raw.fetch(url))[1].startswith(JPEG)


async def test_hls_video_and_the_download_flow(raw: Raw) -> None:
    """HLS on: playlist URL; download before create-download is 409; progress rises to ready with an MP4."""
    raw.sb.control(video_hls=True, download_prepare_polls=4, download_prepare_s=100.0)
    job = await raw.finish(
        await raw.trigger({"modelID": "seedance-2.0", "prompt": "orbit"}, "/videos/generation")
    )
    video = job["videos"][0]
    assert video["url"].endswith(".m3u8")
    status, playlist, headers = await raw.fetch(video["url"])
    assert status == 200 and headers["Content-Type"] == "application/vnd.apple.mpegurl"
    assert playlist.startswith(b"#EXTM3U")
    segment = playlist.decode().splitlines()[-2]
    assert (await raw.fetch(video["url"].rsplit("/", 1)[0] + "/" + segment))[0] == 200
    await raw.nok("GET", f"/videos/{video['id']}/download", 409)
    raw.sb.control(download_before_create_status=404)
    await raw.nok("GET", f"/videos/{video['id']}/download", 404)
    assert isinstance(await raw.ok("GET", f"/videos/{video['id']}/create-download"), str)
    progress = [await raw.ok("GET", f"/videos/{video['id']}/download") for _ in range(4)]
    percents = [p["percentComplete"] for p in progress]
    assert percents == sorted(percents) and percents[-1] == 100 and percents[0] < 100
    assert [p["status"] for p in progress[:-1]] == ["processing"] * 3 and progress[-1]["status"] == "ready"
    data = (await raw.fetch(progress[-1]["url"]))[1]
    assert data[4:8] == b"ftyp"

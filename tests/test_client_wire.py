"""Every client method against the simulator on 127.0.0.1: the wire contract, end to end.

The simulator never imports the client, so these tests fail if either side drifts
from the reference. Time is a FakeClock shared by both: jobs move when a test says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from pipeline.api.client import ApiClient, request_sent_at
from pipeline.api.config import ApiConfig, ApiKey
from pipeline.api.records import JobStatus
from pipeline.clock import FakeClock
from pipeline.errors import (
    AuthError,
    ConflictError,
    NotFoundError,
    QuotaExhaustedError,
    RateLimitedError,
    RejectedError,
    ServerError,
)
from pipeline.simulator import Sandbox
from tests.conftest import OTHER_KEY, TEST_KEY

SEED_BODY = {
    "modelID": "gpt-image-2",
    "prompt": "A cinematic product photo of a silver perfume bottle",
    "aspectRatio": "1:1",
    "numImages": 1,
    "options": {"openai": {"imageSize": "1K", "outputFormat": "jpeg", "quality": "high"}},
}
JPEG = b"\xff\xd8\xff"
PNG = b"\x89PNG\r\n\x1a\n"


def _config(sandbox: Sandbox, key: str = TEST_KEY) -> ApiConfig:
    return ApiConfig(base_url=sandbox.base_url, api_key=ApiKey(key))


@pytest.fixture(name="api")
async def _api(sandbox: Sandbox, clock: FakeClock) -> AsyncIterator[ApiClient]:
    async with ApiClient(_config(sandbox), clock=clock) as client:
        yield client


async def _finish(api: ApiClient, clock: FakeClock, job_id: str, *, step_s: float = 5.0, polls: int = 200):
    """Poll the way a user would, letting simulated time pass between polls."""
    for _ in range(polls):
        job = await api.get_job(job_id)
        if job.is_terminal:
            return job
        clock.advance(step_s)
    raise AssertionError(f"job {job_id} never finished")


async def _fetch(api: ApiClient, url: str) -> bytes:
    """Asset URLs need no key: fetch them with a bare session."""
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        assert resp.status == 200
        return await resp.read()


class TestJobs:
    async def test_seed_generation_reaches_success_with_a_jpeg(
        self, api: ApiClient, clock: FakeClock
    ) -> None:
        """The issue's seed request: queued ticket, success after polls, a real JPEG behind the URL."""
        ticket = await api.generate_images(SEED_BODY)
        assert ticket.job_id
        job = await _finish(api, clock, ticket.job_id)
        assert job.status is JobStatus.SUCCESS
        assert len(job.images) == 1
        assert (await _fetch(api, job.images[0].url)).startswith(JPEG)
        image = await api.get_image(job.images[0].id)
        assert image.id == job.images[0].id

    async def test_png_output_format_is_served_as_png(self, api: ApiClient, clock: FakeClock) -> None:
        """outputFormat png gives PNG bytes, numImages gives that many outputs."""
        body = {**SEED_BODY, "numImages": 2, "options": {"openai": {"outputFormat": "png"}}}
        job = await _finish(api, clock, (await api.generate_images(body)).job_id)
        assert len(job.images) == 2
        for out in job.images:
            assert (await _fetch(api, out.url)).startswith(PNG)

    async def test_upscale_links_the_source_image(self, api: ApiClient, clock: FakeClock) -> None:
        """Upscaling an output yields one image and links it from the source record."""
        job = await _finish(api, clock, (await api.generate_images(SEED_BODY)).job_id)
        up = await _finish(api, clock, (await api.upscale_image(job.images[0].id)).job_id)
        assert up.status is JobStatus.SUCCESS and len(up.images) == 1
        source = await api.get_image(job.images[0].id)
        assert source.upscaled_image_id == up.images[0].id

    async def test_failed_job_is_not_an_http_error(self, api: ApiClient, clock: FakeClock) -> None:
        """A failed job comes back as data with its reason, not as an exception."""
        body = {**SEED_BODY, "prompt": "this one breaks [[fail]]"}
        job = await _finish(api, clock, (await api.generate_images(body)).job_id)
        assert job.status is JobStatus.FAILED
        assert job.error

    async def test_video_job_serves_an_mp4_and_a_video_record(self, api: ApiClient, clock: FakeClock) -> None:
        """Video generation: a video output whose bytes are an MP4 and whose record names the job."""
        ticket = await api.generate_videos(
            {"modelID": "veo-3.1", "prompt": "waves at dusk", "options": {"veo": {"duration": 4}}}
        )
        job = await _finish(api, clock, ticket.job_id, step_s=30)
        assert job.status is JobStatus.SUCCESS and len(job.videos) == 1
        data = await _fetch(api, job.videos[0].url)
        assert data[4:8] == b"ftyp"
        video = await api.get_video(job.videos[0].id)
        assert video.job_id == ticket.job_id
        page = await api.list_videos()
        assert video.id in {v.id for v in page.videos}

    async def test_hls_video_goes_through_create_download(self, sandbox: Sandbox, clock: FakeClock) -> None:
        """With HLS on, the job gives a playlist; create-download then download gives the MP4."""
        sandbox.control(video_hls=True)
        async with ApiClient(_config(sandbox), clock=clock) as api:
            ticket = await api.generate_videos({"modelID": "seedance-2.0", "prompt": "orbit"})
            job = await _finish(api, clock, ticket.job_id, step_s=30)
            assert job.videos[0].url.endswith(".m3u8")
            vid = job.videos[0].id
            with pytest.raises((ConflictError, NotFoundError)):
                await api.get_video_download(vid)
            assert isinstance(await api.create_video_download(vid), str)
            for _ in range(100):
                dl = await api.get_video_download(vid)
                if dl.is_ready:
                    break
                clock.advance(2)
            assert dl.is_ready and dl.url
            assert (await _fetch(api, dl.url))[4:8] == b"ftyp"

    async def test_job_list_pages_through_every_job(self, api: ApiClient, clock: FakeClock) -> None:
        """list_jobs pages with tokens; iter_jobs sees every job made in the window exactly once."""
        made = {(await api.generate_images(SEED_BODY)).job_id for _ in range(5)}
        for job_id in made:
            await _finish(api, clock, job_id)
        seen = [
            j.job_id async for j in api.iter_jobs(start=clock.now() - timedelta(hours=1), end=clock.now())
        ]
        assert made <= set(seen) and len(seen) == len(set(seen))
        page = await api.list_jobs()
        assert page.jobs


class TestModelsAndImages:
    async def test_model_lifecycle_upload_train_ready_delete(self, api: ApiClient, clock: FakeClock) -> None:
        """Create, upload 12 photos, train, wait for ready, list images, delete."""
        model = await api.save_model(name="Ava", age=30, gender="Female", eye_color="brown")
        assert model.status == "new"
        assert (await api.save_model(id=model.id, name="Ava B")).id == model.id
        with pytest.raises(RejectedError):
            await api.train_model(model.id)  # fewer than 12 photos
        for i in range(12):
            image = await api.upload_image(
                model_id=model.id, image_type="modelInput", data=PNG + bytes(64), filename=f"p{i}.png"
            )
            assert image.model_id == model.id
        assert await api.train_model(model.id)
        for _ in range(200):
            if (await api.get_model(model.id)).status == "ready":
                break
            clock.advance(60)
        assert (await api.get_model(model.id)).status == "ready"
        page = await api.list_model_images(model.id, image_type="input", page_size=5)
        assert page.page == 1 and page.page_size == 5 and len(page.images) == 5
        assert model.id in {m.id for m in await api.list_models()}
        await api.delete_model(model.id)
        with pytest.raises(NotFoundError):
            await api.get_model(model.id)

    async def test_upload_limits_are_enforced(self, api: ApiClient) -> None:
        """Unknown type or a non-image extension is rejected with the server's reason."""
        model = await api.save_model(name="Bo")
        with pytest.raises(RejectedError) as info:
            await api.upload_image(model_id=model.id, image_type="bogus", data=PNG, filename="a.png")
        assert info.value.status == 400 and info.value.message
        with pytest.raises(RejectedError):
            await api.upload_image(model_id=model.id, image_type="auxiliaryType", data=b"x", filename="a.txt")

    async def test_delete_image_then_get_is_404(self, api: ApiClient) -> None:
        """Deleted assets are gone."""
        model = await api.save_model(name="Cy")
        image = await api.upload_image(
            model_id=model.id, image_type="auxiliaryType", data=PNG, filename="r.png"
        )
        await api.delete_image(image.id)
        with pytest.raises(NotFoundError):
            await api.get_image(image.id)

    async def test_presets_and_ping(self, api: ApiClient) -> None:
        """Ping answers; presets include the documented example tag."""
        await api.ping()
        assert "editorial" in {p.tag for p in await api.list_presets()}


class TestErrors:
    async def test_wrong_key_is_an_auth_error_that_hides_the_key(self, sandbox: Sandbox) -> None:
        """401 becomes AuthError (exit 3) and the bad key shows nowhere in it."""
        async with ApiClient(_config(sandbox, "sk-wrong-123456789")) as api:
            with pytest.raises(AuthError) as info:
                await api.list_models()
        assert info.value.status == 401 and info.value.exit_code == 3
        assert "sk-wrong-123456789" not in repr(info.value) + str(info.value)

    async def test_foreign_ids_are_not_found(
        self, sandbox: Sandbox, api: ApiClient, clock: FakeClock
    ) -> None:
        """Another key's job is a 404 for us, like the real API's ownership rule."""
        async with ApiClient(_config(sandbox, OTHER_KEY), clock=clock) as other:
            ticket = await other.generate_images(SEED_BODY)
        with pytest.raises(NotFoundError) as info:
            await api.get_job(ticket.job_id)
        assert info.value.endpoint.startswith("GET /jobs/")

    @pytest.mark.parametrize(
        ("body", "fragment"),
        [
            ({"prompt": "x"}, "modelID"),
            ({"modelID": "gpt-image-3", "prompt": "x"}, "gpt-image-3"),
            ({"modelID": "gpt-image-2", "prompt": "x", "options": {"gemini": {}}}, "gemini"),
            ({"modelID": "nanobanana", "prompt": "x", "referenceImageURLs": ["https://a/1"] * 4}, "3"),
        ],
    )
    async def test_bad_generation_requests_are_rejected(
        self, api: ApiClient, body: dict, fragment: str
    ) -> None:
        """Validation failures are RejectedError carrying the server's message and the endpoint."""
        with pytest.raises(RejectedError) as info:
            await api.generate_images(body)
        assert info.value.status == 400
        assert fragment in info.value.message
        assert info.value.endpoint == "POST /images/generation"
        assert not info.value.retryable

    async def test_veo_duration_rules(self, api: ApiClient) -> None:
        """Veo: duration must be 4/6/8, and 8 with a reference_image."""
        with pytest.raises(RejectedError):
            await api.generate_videos(
                {"modelID": "veo-3.1", "prompt": "x", "options": {"veo": {"duration": 5}}}
            )
        with pytest.raises(RejectedError):
            await api.generate_videos(
                {
                    "modelID": "veo-3.1",
                    "prompt": "x",
                    "referenceImages": [{"url": "https://a/b.jpg", "role": "reference_image"}],
                    "options": {"veo": {"duration": 4}},
                }
            )

    async def test_rate_limit_is_retryable_with_the_servers_hint(
        self, sandbox: Sandbox, api: ApiClient
    ) -> None:
        """A 429 is RateLimitedError, retryable, and creates no job."""
        sandbox.control(next_n_429=1)
        before = sandbox.stats()["jobs_created"]
        with pytest.raises(RateLimitedError) as info:
            await api.generate_images(SEED_BODY)
        assert info.value.retryable and info.value.status == 429
        assert sandbox.stats()["jobs_created"] == before

    async def test_server_error_is_retryable(self, sandbox: Sandbox, api: ApiClient) -> None:
        """A 5xx is ServerError, retryable."""
        sandbox.control(next_n_5xx=1)
        with pytest.raises(ServerError) as info:
            await api.list_presets()
        assert info.value.retryable and info.value.status is not None and info.value.status >= 500

    async def test_insufficient_credits_stops_instead_of_retrying(
        self, sandbox: Sandbox, api: ApiClient
    ) -> None:
        """An empty account is QuotaExhaustedError (exit 5), not a rate limit."""
        sandbox.control(credits=0)
        with pytest.raises(QuotaExhaustedError) as info:
            await api.generate_images(SEED_BODY)
        assert info.value.exit_code == 5 and not info.value.retryable


async def test_a_post_records_when_it_actually_left(
    api: ApiClient, sandbox: Sandbox, clock: FakeClock
) -> None:
    """The send time a reconcile span starts from is the moment the headers left, read right after
    the call, answered or failed."""
    clock.advance(5)
    await api.generate_images({"prompt": "p", "modelID": "gpt-image-2"})
    assert request_sent_at() == clock.now()
    sandbox.control(next_n_5xx=1)
    with pytest.raises(ServerError):
        await api.generate_images({"prompt": "p", "modelID": "gpt-image-2"})
    assert request_sent_at() == clock.now()

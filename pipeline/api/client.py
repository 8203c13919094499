"""``ApiClient``: one typed method per PhotoGPT endpoint over one aiohttp session.

Each method is one request through :class:`~pipeline.api.connection.Connection` (the session, the
pacing, and the one boundary where failures become :mod:`pipeline.errors` classes); this module
holds the endpoints: their paths, bodies, and the records their answers parse into.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from pathlib import PurePath
from typing import Any

import aiohttp

from pipeline.api import wire
from pipeline.api.connection import Connection, request_sent_at
from pipeline.api.records import (
    Image,
    ImagePage,
    Job,
    JobPage,
    JobSummary,
    JobTicket,
    Model,
    Preset,
    Video,
    VideoDownload,
    VideoPage,
)

__all__ = ["ApiClient", "request_sent_at"]


class ApiClient(Connection):
    """Typed access to the PhotoGPT Developer API; use as ``async with ApiClient(cfg) as api``.

    Construction, ``stats``, ``session``, ``pacer`` and :meth:`paced`: see :class:`Connection`.
    """

    # ---- endpoints --------------------------------------------------------------------------

    async def ping(self) -> None:
        """Check the base URL, key and version header (``{"message": "pong!"}``)."""
        await self._call("GET", "/ping", parse=wire.ignore)

    async def list_models(self) -> list[Model]:
        """The caller's trained models."""
        return await self._call("GET", "/models", parse=lambda e: wire.items(e, wire.mapped(Model.from_wire)))

    async def save_model(
        self,
        *,
        id: str | None = None,
        name: str | None = None,
        age: float | None = None,
        gender: str | None = None,
        ethnicity: str | None = None,
        eye_color: str | None = None,
        **extra: Any,
    ) -> Model:
        """Create a model, or update the one with ``id``. ``None`` fields are not sent."""
        fields = {"id": id, "name": name, "age": age, "gender": gender, "ethnicity": ethnicity}
        body = {k: v for k, v in {**fields, "eyeColor": eye_color}.items() if v is not None} | extra
        return await self._call("POST", "/models", json_body=body, parse=wire.record(Model.from_wire))

    async def get_model(self, model_id: str) -> Model:
        """One model; poll it (every few minutes) until ``status == "ready"``."""
        return await self._call(
            "GET", "/models/{model_id}", model_id=model_id, parse=wire.record(Model.from_wire)
        )

    async def train_model(self, model_id: str) -> str:
        """Start training (a GET, per the docs). Returns the server's message; there is no job id."""
        return await self._call("GET", "/models/{model_id}/train", model_id=model_id, parse=wire.text)

    async def delete_model(self, model_id: str) -> Model | None:
        """Delete a model; returns its final record when the server sends one."""

        def parse(envelope: Mapping[str, Any]) -> Model | None:
            result = envelope.get("result")
            return Model.from_wire(result) if isinstance(result, Mapping) else None

        return await self._call("DELETE", "/models/{model_id}", model_id=model_id, parse=parse)

    async def list_model_images(
        self, model_id: str, *, image_type: str = "all", page: int = 1, page_size: int = 20
    ) -> ImagePage:
        """A model's images; ``image_type`` is ``all``, ``input``, ``output`` or ``auxiliaryType``."""
        return await self._call(
            "GET",
            "/models/{model_id}/images",
            model_id=model_id,
            params={"imageType": image_type, "pageNum": page, "pageSize": page_size},
            parse=lambda e: ImagePage.from_wire(wire.paged(e, page, page_size)),
        )

    async def upload_image(
        self,
        *,
        model_id: str | None,
        image_type: str,
        data: bytes,
        filename: str,
        content_type: str | None = None,
    ) -> Image:
        """Upload a training (``modelInput``) or reference (``auxiliaryType``) image.

        ``model_id`` may be ``None`` for a reference image that belongs to no model.
        aiohttp writes the multipart boundary; setting Content-Type by hand would break it.
        """
        name = PurePath(filename).name or "upload"
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name, content_type=content_type or wire.guess_type(name))
        form.add_field(
            "data",
            json.dumps(
                {"type": image_type} if model_id is None else {"modelID": model_id, "type": image_type}
            ),
            content_type="application/json",
        )
        return await self._call("POST", "/images/upload", form=form, parse=wire.record(Image.from_wire))

    async def get_image(self, image_id: str) -> Image:
        """An image asset's record."""
        return await self._call(
            "GET", "/images/{image_id}", image_id=image_id, parse=wire.record(Image.from_wire)
        )

    async def delete_image(self, image_id: str) -> None:
        """Delete an image asset."""
        await self._call("DELETE", "/images/{image_id}", image_id=image_id, parse=wire.ignore)

    async def generate_images(self, body: Mapping[str, Any]) -> JobTicket:
        """Start a paid image job; ``body`` is sent as is. Never retry this blindly."""
        return await self._call(
            "POST", "/images/generation", json_body=dict(body), parse=wire.record(JobTicket.from_wire)
        )

    async def upscale_image(self, image_id: str) -> JobTicket:
        """Start a paid upscale job for an image asset."""
        return await self._call(
            "POST",
            "/images/upscaling",
            json_body={"imageID": image_id},
            parse=wire.record(JobTicket.from_wire),
        )

    async def generate_videos(self, body: Mapping[str, Any]) -> JobTicket:
        """Start a paid video job; ``body`` is sent as is. Never retry this blindly."""
        return await self._call(
            "POST", "/videos/generation", json_body=dict(body), parse=wire.record(JobTicket.from_wire)
        )

    async def get_job(self, job_id: str) -> Job:
        """A job's status and outputs. A failed job is a normal answer, not an exception."""
        return await self._call("GET", "/jobs/{job_id}", job_id=job_id, parse=wire.record(Job.from_wire))

    async def list_jobs(
        self, *, start: datetime | None = None, end: datetime | None = None, page_token: str | None = None,
        page_size: int | None = None,
    ) -> JobPage:  # fmt: skip
        """One page of API-created jobs in ``[start, end]`` (server default: the last 24 h). ``pageSize``
        is documented for other lists, not this one (inferred: a server may ignore or refuse it)."""
        given = {"start": wire.rfc3339(start), "end": wire.rfc3339(end), "pageToken": page_token}
        params: dict[str, str | int] = {k: v for k, v in given.items() if v is not None}
        if page_size is not None:
            params["pageSize"] = page_size
        return await self._call("GET", "/jobs", params=params, parse=wire.record(JobPage.from_wire))

    async def iter_jobs(
        self, *, start: datetime | None = None, end: datetime | None = None
    ) -> AsyncIterator[JobSummary]:
        """Every job in the window, following ``nextPageToken``; stops if a token repeats."""
        seen: set[str] = set()
        token: str | None = None
        while True:
            page = await self.list_jobs(start=start, end=end, page_token=token)
            for job in page.jobs:
                yield job
            token = page.next_page_token
            if token is None or token in seen:
                return
            seen.add(token)

    async def list_videos(self, *, page: int = 1, page_size: int = 20) -> VideoPage:
        """Generated videos, one page."""
        return await self._call(
            "GET",
            "/videos",
            params={"pageNum": page, "pageSize": page_size},
            parse=lambda e: VideoPage.from_wire(wire.paged(e, page, page_size)),
        )

    async def get_video(self, video_id: str) -> Video:
        """A video asset's record."""
        return await self._call(
            "GET", "/videos/{video_id}", video_id=video_id, parse=wire.record(Video.from_wire)
        )

    async def delete_video(self, video_id: str) -> None:
        """Delete a video asset."""
        await self._call("DELETE", "/videos/{video_id}", video_id=video_id, parse=wire.ignore)

    async def create_video_download(self, video_id: str) -> str:
        """Ask the server to prepare an MP4; then poll :meth:`get_video_download`."""
        return await self._call(
            "GET", "/videos/{video_id}/create-download", video_id=video_id, parse=wire.text
        )

    async def get_video_download(self, video_id: str) -> VideoDownload:
        """Progress of a prepared download; fetch ``url`` once ``is_ready``."""
        return await self._call(
            "GET",
            "/videos/{video_id}/download",
            video_id=video_id,
            parse=wire.record(VideoDownload.from_wire),
        )

    async def list_presets(self) -> list[Preset]:
        """Preset tags for ``preset`` in image generation."""

        def preset(item: Any) -> Preset:
            # The real shape is undocumented: accept a bare tag string as well as an object.
            return Preset(tag=item) if isinstance(item, str) and item else wire.mapped(Preset.from_wire)(item)

        return await self._call("GET", "/presets", parse=lambda e: wire.items(e, preset))

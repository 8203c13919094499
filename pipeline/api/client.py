"""``ApiClient``: one typed method per PhotoGPT endpoint over one aiohttp session.

Each call makes exactly one HTTP attempt (retries belong to the engine: a blindly
retried POST pays twice) and every failure leaves through :meth:`ApiClient._call`,
where :func:`pipeline.api.answers.map_error` turns it into the most specific class
of :mod:`pipeline.errors`. The key goes only to the
base URL's origin: URLs are the base plus a fixed path with quoted ids, and
redirects are never followed.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextvars import ContextVar
from datetime import datetime
from pathlib import PurePath
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import aiohttp
import structlog
from yarl import URL

from pipeline.api import wire
from pipeline.api.answers import HttpFailure, map_error, read_envelope, server_date
from pipeline.api.config import ApiConfig
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
from pipeline.clock import Clock, SystemClock

__all__ = ["ApiClient", "request_sent_at"]

#: When the current task's last request was handed to aiohttp (our wall clock, after pacing), or None
#: when it never was. Read right after the call returns/raises.
_SENT_AT: ContextVar[datetime | None] = ContextVar("photogpt_request_sent_at", default=None)


def request_sent_at() -> datetime | None:
    """When this task's last request was handed over to be sent: a paid POST's job was created no
    earlier. (Stamped just before the hand-over rather than from an aiohttp trace of the headers
    leaving: the trace cost a few signal dispatches per request on every request, for a bound
    tighter only by the wait for a pooled connection.)"""
    return _SENT_AT.get()


log = structlog.get_logger("pipeline.api.client")

T = TypeVar("T")


class Pacer(Protocol):
    """Spaces API requests (see :class:`pipeline.engine.limits.RequestPacer`)."""

    async def acquire(self) -> None: ...

    def on_answer(self, method: str, status: int | None) -> None: ...


class ApiClient:
    """Typed access to the PhotoGPT Developer API; use as ``async with ApiClient(cfg) as api``.

    ``stats`` counts requests per endpoint template (``"GET /jobs/{job_id}"``). A
    ``session`` passed in is used as is and left open on :meth:`aclose`. ``pacer``
    is asked before every request and told every answer's status: the run's
    :class:`~pipeline.engine.limits.RequestPacer` keeps requests under the API's rate
    (:meth:`paced` gives a run its own paced view without changing the client it was handed).
    """

    def __init__(
        self,
        config: ApiConfig,
        *,
        clock: Clock | None = None,
        session: aiohttp.ClientSession | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self._config = config
        self.pacer = pacer
        self._clock: Clock = clock or SystemClock()
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._base = URL(config.base_url)
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s, connect=config.connect_timeout_s)
        self.stats: Counter[str] = Counter()
        self._dates: Callable[[datetime, datetime, datetime], None] | None = None

    async def __aenter__(self) -> Self:
        self._open()
        return self

    def paced(
        self, pacer: Pacer | None, *, dates: Callable[[datetime, datetime, datetime], None] | None = None
    ) -> ApiClient:
        """A view of this client whose requests go through ``pacer``, and whose answers' ``Date``
        headers are told to ``dates`` (sent, answered, date; our clock but the date): same session,
        same ``stats``."""
        self._open()
        view = copy.copy(self)
        view.pacer, view._dates = pacer, dates
        view._owns_session = False  # the original closes the session it opened
        return view

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session if this client created it. Idempotent."""
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("ApiClient is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._config.max_connections),
                timeout=self._timeout,
            )
        return self._session

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

    # ---- the one request path ---------------------------------------------------------------

    async def _call(
        self,
        method: str,
        template: str,
        *,
        parse: Callable[[Mapping[str, Any]], T],
        params: Mapping[str, str | int] | None = None,
        json_body: Mapping[str, Any] | None = None,
        form: aiohttp.FormData | None = None,
        **ids: str,
    ) -> T:
        """Send one request and parse its envelope; every failure leaves as an ApiError."""
        endpoint = f"{method} {template}"
        url = self._url(template, ids)
        session = self._open()
        pacer = self.pacer
        if pacer is not None:
            await pacer.acquire()
        self.stats[endpoint] += 1
        sent = self._clock.now()
        _SENT_AT.set(sent)
        started = self._clock.monotonic()
        status: int | None = None
        try:
            async with session.request(
                method,
                url,
                params=params,
                json=json_body,
                data=form,
                headers=self._headers(),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                if self._dates is not None and (date := server_date(resp.headers)) is not None:
                    self._dates(sent, self._clock.now(), date)
                envelope = await read_envelope(resp, self._config.max_response_bytes)
            return parse(envelope)
        except Exception as exc:
            # The boundary: any failure of one call -> the most specific ApiError (None: a bug).
            secrets = (self._config.api_key.reveal(),)
            error = map_error(endpoint, exc, status, secrets=secrets, now=self._clock.now())
            if error is None:
                raise
            log.debug("api_error", endpoint=endpoint, status=error.status, error=type(error).__name__,
                      message=error.message, err=error.err)  # fmt: skip
            # Internal signals carry nothing worth chaining; foreign exceptions do.
            raise error from (None if isinstance(exc, HttpFailure) else exc)
        finally:
            if pacer is not None:
                pacer.on_answer(method, status)
            elapsed_ms = round((self._clock.monotonic() - started) * 1000, 1)
            log.debug("api_request", method=method, endpoint=endpoint, status=status, elapsed_ms=elapsed_ms)

    def _url(self, template: str, ids: Mapping[str, str]) -> URL:
        """Base URL plus a fixed path; ids are quoted whole so none can leave the base path."""
        quoted = {name: wire.quote_id(name, value) for name, value in ids.items()}
        return URL(str(self._base) + template.format(**quoted), encoded=True)

    def _headers(self) -> dict[str, str]:
        # Built per request so the revealed key is not kept around in a plain attribute.
        return {
            "Authorization": f"Bearer {self._config.api_key.reveal()}",
            "API-Version": self._config.api_version,
            "Accept": "application/json",
            "User-Agent": self._config.user_agent,
        }

"""``ApiClient``: one typed method per PhotoGPT endpoint over one aiohttp session.

The only module that imports aiohttp's client side. Each call makes exactly one
HTTP attempt (retries belong to the scheduler: a blindly retried POST pays twice)
and every failure leaves through :meth:`ApiClient._call`, where ``_map_error`` turns
it into the most specific class of :mod:`pipeline.errors`. The key goes only to the
base URL's origin: URLs are the base plus a fixed path with quoted ids, and
redirects are never followed.
"""

from __future__ import annotations

import json
import math
import mimetypes
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import PurePath
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar
from urllib.parse import quote

import aiohttp
import structlog
from yarl import URL

from pipeline import logs
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
    WireFormatError,
)
from pipeline.clock import Clock, SystemClock
from pipeline.errors import (
    ApiError,
    AuthError,
    ConflictError,
    ConnectTimeoutError,
    NotFoundError,
    ProtocolError,
    QuotaExhaustedError,
    RateLimitedError,
    RejectedError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)

__all__ = ["ApiClient", "request_sent_at"]

#: When the current task's last request had its headers written (our wall clock), or None when not
#: known (not sent, or a session the client does not own). Read right after the call returns/raises.
_SENT_AT: ContextVar[datetime | None] = ContextVar("photogpt_request_sent_at", default=None)


def request_sent_at() -> datetime | None:
    """When this task's last request actually left: a paid POST's job was created no earlier."""
    return _SENT_AT.get()


log = structlog.get_logger("pipeline.api.client")

T = TypeVar("T")

_EXCERPT_CHARS = 200
_EXCERPT_SCAN_CHARS = 64 * 1024
_MAX_RETRY_AFTER_S = 600.0
_CHUNK_BYTES = 64 * 1024
_QUOTA = re.compile(r"(?i)quota|credit")  # also INSUFFICIENT_CREDITS-style codes in ``err``
_RATE = re.compile(r"(?i)rate.?limit|too many")
_TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]*>", re.S | re.I)
_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")
_UPLOAD_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "heic": "image/heic",
}


def _redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` without the key's literal value or any ``Bearer <token>``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, logs.MASK)
    return logs.redact(text)


@dataclass(frozen=True, slots=True)
class _Reply:
    """A non-2xx answer, carried from the request to ``_map_error``."""

    status: int
    reason: str
    retry_after: str | None
    body: bytes


class _HttpFailure(Exception):
    """Internal signal: the server answered with an error status or a NOK envelope."""

    def __init__(self, reply: _Reply) -> None:
        super().__init__(f"HTTP {reply.status}")
        self.reply = reply


class _BadBody(Exception):
    """Internal signal: a 2xx whose body is not the documented envelope."""

    def __init__(self, problem: str, body: bytes = b"") -> None:
        super().__init__(problem)
        self.problem = problem
        self.body = body


class Pacer(Protocol):
    """Spaces API requests (see :class:`pipeline.engine.limits.RequestPacer`)."""

    async def acquire(self) -> None: ...

    def on_answer(self, method: str, status: int | None) -> None: ...


class ApiClient:
    """Typed access to the PhotoGPT Developer API; use as ``async with ApiClient(cfg) as api``.

    ``stats`` counts requests per endpoint template (``"GET /jobs/{job_id}"``). A
    ``session`` passed in is used as is and left open on :meth:`aclose`. ``pacer``
    (settable) is asked before every request and told every answer's status: the
    run's :class:`~pipeline.engine.limits.RequestPacer` keeps requests under the API's rate.
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

    async def __aenter__(self) -> Self:
        self._open()
        return self

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

    async def _on_headers_sent(self, _session: Any, _ctx: Any, _params: Any) -> None:
        _SENT_AT.set(self._clock.now())

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("ApiClient is closed")
        if self._session is None:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(self._on_headers_sent)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._config.max_connections),
                timeout=self._timeout,
                trace_configs=[trace],
            )
        return self._session

    # ---- endpoints --------------------------------------------------------------------------

    async def ping(self) -> None:
        """Check the base URL, key and version header (``{"message": "pong!"}``)."""
        await self._call("GET", "/ping", parse=_ignore)

    async def list_models(self) -> list[Model]:
        """The caller's trained models."""
        return await self._call("GET", "/models", parse=lambda e: _items(e, _mapped(Model.from_wire)))

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
        return await self._call("POST", "/models", json_body=body, parse=_record(Model.from_wire))

    async def get_model(self, model_id: str) -> Model:
        """One model; poll it (every few minutes) until ``status == "ready"``."""
        return await self._call(
            "GET", "/models/{model_id}", model_id=model_id, parse=_record(Model.from_wire)
        )

    async def train_model(self, model_id: str) -> str:
        """Start training (a GET, per the docs). Returns the server's message; there is no job id."""
        return await self._call("GET", "/models/{model_id}/train", model_id=model_id, parse=_text)

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
            parse=lambda e: ImagePage.from_wire(_paged(e, page, page_size)),
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
        form.add_field("file", data, filename=name, content_type=content_type or _guess_type(name))
        form.add_field(
            "data",
            json.dumps(
                {"type": image_type} if model_id is None else {"modelID": model_id, "type": image_type}
            ),
            content_type="application/json",
        )
        return await self._call("POST", "/images/upload", form=form, parse=_record(Image.from_wire))

    async def get_image(self, image_id: str) -> Image:
        """An image asset's record."""
        return await self._call(
            "GET", "/images/{image_id}", image_id=image_id, parse=_record(Image.from_wire)
        )

    async def delete_image(self, image_id: str) -> None:
        """Delete an image asset."""
        await self._call("DELETE", "/images/{image_id}", image_id=image_id, parse=_ignore)

    async def generate_images(self, body: Mapping[str, Any]) -> JobTicket:
        """Start a paid image job; ``body`` is sent as is. Never retry this blindly."""
        return await self._call(
            "POST", "/images/generation", json_body=dict(body), parse=_record(JobTicket.from_wire)
        )

    async def upscale_image(self, image_id: str) -> JobTicket:
        """Start a paid upscale job for an image asset."""
        return await self._call(
            "POST", "/images/upscaling", json_body={"imageID": image_id}, parse=_record(JobTicket.from_wire)
        )

    async def generate_videos(self, body: Mapping[str, Any]) -> JobTicket:
        """Start a paid video job; ``body`` is sent as is. Never retry this blindly."""
        return await self._call(
            "POST", "/videos/generation", json_body=dict(body), parse=_record(JobTicket.from_wire)
        )

    async def get_job(self, job_id: str) -> Job:
        """A job's status and outputs. A failed job is a normal answer, not an exception."""
        return await self._call("GET", "/jobs/{job_id}", job_id=job_id, parse=_record(Job.from_wire))

    async def list_jobs(
        self, *, start: datetime | None = None, end: datetime | None = None, page_token: str | None = None
    ) -> JobPage:
        """One page of API-created jobs in ``[start, end]`` (server default: the last 24 h)."""
        given = {"start": _rfc3339(start), "end": _rfc3339(end), "pageToken": page_token}
        params: dict[str, str | int] = {k: v for k, v in given.items() if v is not None}
        return await self._call("GET", "/jobs", params=params, parse=_record(JobPage.from_wire))

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
            parse=lambda e: VideoPage.from_wire(_paged(e, page, page_size)),
        )

    async def get_video(self, video_id: str) -> Video:
        """A video asset's record."""
        return await self._call(
            "GET", "/videos/{video_id}", video_id=video_id, parse=_record(Video.from_wire)
        )

    async def delete_video(self, video_id: str) -> None:
        """Delete a video asset."""
        await self._call("DELETE", "/videos/{video_id}", video_id=video_id, parse=_ignore)

    async def create_video_download(self, video_id: str) -> str:
        """Ask the server to prepare an MP4; then poll :meth:`get_video_download`."""
        return await self._call("GET", "/videos/{video_id}/create-download", video_id=video_id, parse=_text)

    async def get_video_download(self, video_id: str) -> VideoDownload:
        """Progress of a prepared download; fetch ``url`` once ``is_ready``."""
        return await self._call(
            "GET", "/videos/{video_id}/download", video_id=video_id, parse=_record(VideoDownload.from_wire)
        )

    async def list_presets(self) -> list[Preset]:
        """Preset tags for ``preset`` in image generation."""

        def preset(item: Any) -> Preset:
            # The real shape is undocumented: accept a bare tag string as well as an object.
            return Preset(tag=item) if isinstance(item, str) and item else _mapped(Preset.from_wire)(item)

        return await self._call("GET", "/presets", parse=lambda e: _items(e, preset))

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
        _SENT_AT.set(None)
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
                envelope = await self._read_envelope(resp)
            return parse(envelope)
        except Exception as exc:
            error = self._map_error(endpoint, exc, status)
            if error is None:
                raise
            log.debug(
                "api_error",
                method=method,
                endpoint=endpoint,
                status=error.status,
                error=type(error).__name__,
                message=error.message,
                err=error.err,
            )
            # Internal signals carry nothing worth chaining; foreign exceptions do.
            raise error from (None if isinstance(exc, _HttpFailure) else exc)
        finally:
            if pacer is not None:
                pacer.on_answer(method, status)
            elapsed_ms = round((self._clock.monotonic() - started) * 1000, 1)
            log.debug("api_request", method=method, endpoint=endpoint, status=status, elapsed_ms=elapsed_ms)

    def _url(self, template: str, ids: Mapping[str, str]) -> URL:
        """Base URL plus a fixed path; ids are quoted whole so none can leave the base path."""
        quoted = {name: _quote_id(name, value) for name, value in ids.items()}
        return URL(str(self._base) + template.format(**quoted), encoded=True)

    def _headers(self) -> dict[str, str]:
        # Built per request so the revealed key is not kept around in a plain attribute.
        return {
            "Authorization": f"Bearer {self._config.api_key.reveal()}",
            "API-Version": self._config.api_version,
            "Accept": "application/json",
            "User-Agent": self._config.user_agent,
        }

    async def _read_envelope(self, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        """Read at most ``max_response_bytes`` and return the OK envelope, or raise a signal."""
        cap = self._config.max_response_bytes
        body, overflow = await _read_capped(resp, cap)
        if not 200 <= resp.status < 300:
            raise _HttpFailure(_Reply(resp.status, resp.reason or "", resp.headers.get("Retry-After"), body))
        if overflow:
            raise _BadBody(f"response exceeds the {cap}-byte limit", body)
        if resp.status == 204 and not body.strip():
            return {"status": "OK", "result": None}
        try:
            envelope = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _BadBody("response is not JSON (or was cut short)", body) from None
        if not isinstance(envelope, dict):
            raise _BadBody("response is not a JSON object", body)
        if str(envelope.get("status", "")).upper() == "NOK":
            raise _HttpFailure(_Reply(resp.status, resp.reason or "", resp.headers.get("Retry-After"), body))
        if str(envelope.get("status", "")).upper() != "OK":
            raise _BadBody('envelope status is not "OK"', body)
        return envelope

    def _map_error(self, endpoint: str, exc: Exception, status: int | None) -> ApiError | None:
        """The boundary: any failure of one call → the most specific ApiError (``None``: a bug)."""
        secrets = (self._config.api_key.reveal(),)
        if isinstance(exc, _HttpFailure):
            return _error_for_reply(endpoint, exc.reply, secrets, self._clock.now())
        if isinstance(exc, _BadBody | WireFormatError):
            body = exc.body if isinstance(exc, _BadBody) else b""
            detail = exc.problem if isinstance(exc, _BadBody) else f"result has the wrong shape: {exc}"
            excerpt = _excerpt(body, secrets)
            message = f"{detail}: {excerpt}" if excerpt else detail
            return ProtocolError(_redact(message, secrets), status=status, endpoint=endpoint)
        if isinstance(exc, aiohttp.ConnectionTimeoutError):  # before TimeoutError: nothing was sent
            return ConnectTimeoutError(f"could not connect in time ({type(exc).__name__})", endpoint=endpoint)
        if isinstance(exc, TimeoutError):  # asyncio.TimeoutError, aiohttp's read and total timeouts
            return RequestTimeoutError(f"request timed out ({type(exc).__name__})", endpoint=endpoint)
        if isinstance(exc, aiohttp.ClientResponseError):  # an HTTP reply aiohttp could not parse
            return ProtocolError(
                _redact(f"malformed HTTP response: {exc.message}", secrets), endpoint=endpoint
            )
        if isinstance(exc, aiohttp.ClientError | OSError):
            text = _redact(str(exc) or type(exc).__name__, secrets)
            return TransportError(f"{type(exc).__name__}: {text}", endpoint=endpoint)
        return None


# ---- response helpers -----------------------------------------------------------------------


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """The body up to ``cap`` bytes, and whether there was more (counted per chunk, since a
    chunked or compressed body has no trustworthy Content-Length)."""
    if resp.content_length is not None and resp.content_length > cap:
        return b"", True
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
        buf += chunk
        if len(buf) > cap:
            return bytes(buf[:cap]), True
    return bytes(buf), False


def _error_for_reply(endpoint: str, reply: _Reply, secrets: tuple[str, ...], now: datetime) -> ApiError:
    """Classify an error answer by its NOK text first (quota), then by status code."""
    envelope = _json_object(reply.body)
    message, err = _nok_texts(envelope)
    text = f"{message or ''} {err or ''}"
    shown = _redact(
        message or _excerpt(reply.body, secrets) or reply.reason or f"HTTP {reply.status}", secrets
    )
    kwargs: dict[str, Any] = {
        "status": reply.status,
        "endpoint": endpoint,
        "err": _redact(err, secrets) if err else None,
    }
    status = reply.status
    if _QUOTA.search(text) and not (status == 429 and _RATE.search(text)):
        return QuotaExhaustedError(shown, **kwargs)
    if status == 429:
        hint = _retry_after_s(reply.retry_after, envelope.get("retry_after"), now)
        return RateLimitedError(shown, retry_after_s=hint, **kwargs)
    if status in (401, 403):
        return AuthError(shown, **kwargs)
    if 300 <= status < 400:
        return ProtocolError(f"unexpected redirect (not followed): {shown}", **kwargs)
    if status == 404:
        return NotFoundError(shown, **kwargs)
    if status == 409:
        return ConflictError(shown, **kwargs)
    if status >= 500:
        return ServerError(shown, **kwargs)
    return RejectedError(shown, **kwargs)  # other 4xx, or a NOK envelope under a 2xx


def _nok_texts(envelope: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``message`` and ``err`` of a NOK envelope, also reading ``reason`` and ``error.message``."""
    nested = envelope.get("error")
    candidates = (
        envelope.get("message"),
        envelope.get("reason"),
        nested.get("message") if isinstance(nested, Mapping) else nested,
    )
    message = next((c.strip() for c in candidates if isinstance(c, str) and c.strip()), None)
    err = envelope.get("err")
    return message, (err.strip() or None) if isinstance(err, str) else None


def _retry_after_s(header: str | None, body_value: Any, now: datetime) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or HTTP-date) or a body
    ``retry_after``; clamped to [0, 600]; ``None`` when absent or unreadable."""
    seconds = _header_seconds(header.strip(), now) if header is not None else None
    if seconds is None and isinstance(body_value, int | float) and not isinstance(body_value, bool):
        seconds = float(body_value) if body_value >= 0 else None
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(seconds, _MAX_RETRY_AFTER_S)


def _header_seconds(value: str, now: datetime) -> float | None:
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())  # a date in the past means "no wait"


def _json_object(body: bytes) -> Mapping[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _excerpt(body: bytes, secrets: Iterable[str]) -> str:
    """A short, single-line, redacted view of a body for error messages (HTML tags dropped)."""
    # Redact the whole text first, so that no cut below can leave half a key behind.
    text = _redact(body.decode("utf-8", errors="replace"), secrets)[:_EXCERPT_SCAN_CHARS]
    text = " ".join(_TAGS.sub(" ", text).split())
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 1] + "…"


# ---- result parsers -------------------------------------------------------------------------


def _ignore(envelope: Mapping[str, Any]) -> None:
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise WireFormatError(f"expected an object, got {type(value).__name__}")
    return value


def _mapped(from_wire: Callable[[Mapping[str, Any]], T]) -> Callable[[Any], T]:
    """``from_wire`` guarded so that a non-object item is a WireFormatError, not an AttributeError."""
    return lambda value: from_wire(_mapping(value))


def _record(from_wire: Callable[[Mapping[str, Any]], T]) -> Callable[[Mapping[str, Any]], T]:
    """A parser for envelopes whose ``result`` is one object."""
    return lambda envelope: _mapped(from_wire)(envelope.get("result"))


def _items(envelope: Mapping[str, Any], parse: Callable[[Any], T]) -> list[T]:
    result = envelope.get("result")
    if result is None:
        return []
    if not isinstance(result, list):
        raise WireFormatError(f"expected a list, got {type(result).__name__}")
    return [parse(item) for item in result]


def _paged(envelope: Mapping[str, Any], page: int, page_size: int) -> dict[str, Any]:
    """The envelope with the requested ``page``/``pageSize`` filled in where the server left them out."""
    given = {k: v for k, v in envelope.items() if v is not None}
    return {"page": page, "pageSize": page_size, **given}


def _text(envelope: Mapping[str, Any]) -> str:
    result = envelope.get("result")
    if not isinstance(result, str):
        raise WireFormatError(f"expected a string result, got {type(result).__name__}")
    return result


# ---- request helpers ------------------------------------------------------------------------


def _quote_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    quoted = quote(value, safe="")
    # "." and ".." are dot-segments that URL normalisation would collapse.
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _guess_type(filename: str) -> str:
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return _UPLOAD_TYPES.get(ext) or mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _rfc3339(moment: datetime | None) -> str | None:
    """UTC with a ``Z`` suffix, as the API's examples write it."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError("list_jobs needs timezone-aware datetimes")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")

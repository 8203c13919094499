"""Reading an answer: the OK envelope, or the most specific :mod:`pipeline.errors` class for it.

This is the client's one boundary for foreign failures. Whatever a single request meets (an error
status, a NOK envelope, a body cut short, HTML from a proxy, a timeout, a reset) leaves
:func:`map_error` as an :class:`~pipeline.errors.ApiError`, with the key redacted from every text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any

import aiohttp
import orjson

from pipeline import logs
from pipeline.api.fields import WireFormatError
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

__all__ = ["BadBody", "HttpFailure", "Reply", "map_error", "read_envelope", "redact", "server_date"]

_EXCERPT_CHARS = 200
_EXCERPT_SCAN_CHARS = 64 * 1024
_MAX_RETRY_AFTER_S = 600.0
_CHUNK_BYTES = 64 * 1024
_QUOTA = re.compile(r"(?i)quota|credit")  # also INSUFFICIENT_CREDITS-style codes in ``err``
_RATE = re.compile(r"(?i)rate.?limit|too many")
_TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]*>", re.S | re.I)
_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` without the key's literal value or any ``Bearer <token>``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, logs.MASK)
    return logs.redact(text)


@dataclass(frozen=True, slots=True)
class Reply:
    """A non-2xx answer, carried from the request to ``_map_error``."""

    status: int
    reason: str
    retry_after: str | None
    body: bytes


class HttpFailure(Exception):
    """Internal signal: the server answered with an error status or a NOK envelope."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"HTTP {reply.status}")
        self.reply = reply


class BadBody(Exception):
    """Internal signal: a 2xx whose body is not the documented envelope."""

    def __init__(self, problem: str, body: bytes = b"") -> None:
        super().__init__(problem)
        self.problem = problem
        self.body = body


def _loads(body: bytes) -> Any:
    """orjson parses a job-list page several times faster than the stdlib; what it refuses and the
    stdlib reads (NaN, integers beyond 64 bits) still goes to the stdlib, so nothing parses differently."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


async def read_envelope(resp: aiohttp.ClientResponse, cap: int) -> dict[str, Any]:
    """Read at most ``max_response_bytes`` and return the OK envelope, or raise a signal."""
    body, overflow = await _read_capped(resp, cap)
    if not 200 <= resp.status < 300:
        raise HttpFailure(Reply(resp.status, resp.reason or "", resp.headers.get("Retry-After"), body))
    if overflow:
        raise BadBody(f"response exceeds the {cap}-byte limit", body)
    if resp.status == 204 and not body.strip():
        return {"status": "OK", "result": None}
    try:
        envelope = _loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadBody("response is not JSON (or was cut short)", body) from None
    if not isinstance(envelope, dict):
        raise BadBody("response is not a JSON object", body)
    if str(envelope.get("status", "")).upper() == "NOK":
        raise HttpFailure(Reply(resp.status, resp.reason or "", resp.headers.get("Retry-After"), body))
    if str(envelope.get("status", "")).upper() != "OK":
        raise BadBody('envelope status is not "OK"', body)
    return envelope


def server_date(headers: Mapping[str, str]) -> datetime | None:
    """The answer's ``Date`` header (an HTTP-date, to the second), or ``None`` if absent or unreadable."""
    value = headers.get("Date")
    return _parse_date(value) if value else None


@lru_cache(maxsize=8)
def _parse_date(value: str) -> datetime | None:
    """One parse per distinct header: it changes once a second, and every answer carries one
    (email.utils' parser was 7 % of a request's CPU)."""
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return None if when is None else when if when.tzinfo else when.replace(tzinfo=UTC)


def map_error(
    endpoint: str, exc: Exception, status: int | None, *, secrets: tuple[str, ...], now: datetime
) -> ApiError | None:
    """The boundary: any failure of one call → the most specific ApiError (``None``: a bug)."""
    if isinstance(exc, HttpFailure):
        return _error_for_reply(endpoint, exc.reply, secrets, now)
    if isinstance(exc, BadBody | WireFormatError):
        body = exc.body if isinstance(exc, BadBody) else b""
        detail = exc.problem if isinstance(exc, BadBody) else f"result has the wrong shape: {exc}"
        excerpt = _excerpt(body, secrets)
        message = f"{detail}: {excerpt}" if excerpt else detail
        return ProtocolError(redact(message, secrets), status=status, endpoint=endpoint)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # before TimeoutError: nothing was sent
        return ConnectTimeoutError(f"could not connect in time ({type(exc).__name__})", endpoint=endpoint)
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError, aiohttp's read and total timeouts
        return RequestTimeoutError(f"request timed out ({type(exc).__name__})", endpoint=endpoint)
    if isinstance(exc, aiohttp.ClientResponseError):  # an HTTP reply aiohttp could not parse
        return ProtocolError(redact(f"malformed HTTP response: {exc.message}", secrets), endpoint=endpoint)
    if isinstance(exc, aiohttp.ClientError | OSError):
        text = redact(str(exc) or type(exc).__name__, secrets)
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


def _error_for_reply(endpoint: str, reply: Reply, secrets: tuple[str, ...], now: datetime) -> ApiError:
    """Classify an error answer by its NOK text first (quota), then by status code."""
    envelope = _json_object(reply.body)
    message, err = _nok_texts(envelope)
    text = f"{message or ''} {err or ''}"
    shown = redact(
        message or _excerpt(reply.body, secrets) or reply.reason or f"HTTP {reply.status}", secrets
    )
    kwargs: dict[str, Any] = {
        "status": reply.status,
        "endpoint": endpoint,
        "err": redact(err, secrets) if err else None,
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
    text = redact(body.decode("utf-8", errors="replace"), secrets)[:_EXCERPT_SCAN_CHARS]
    text = " ".join(_TAGS.sub(" ", text).split())
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 1] + "…"

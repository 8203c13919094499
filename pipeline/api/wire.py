"""Small pure helpers for the wire: result parsers for envelopes, id quoting, upload types, times."""

from __future__ import annotations

import mimetypes
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

from pipeline.api.fields import WireFormatError

__all__ = ["guess_type", "ignore", "items", "mapped", "paged", "quote_id", "record", "rfc3339", "text"]

T = TypeVar("T")

_UPLOAD_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "heic": "image/heic",
}


# ---- result parsers -------------------------------------------------------------------------


def ignore(envelope: Mapping[str, Any]) -> None:
    return None


def mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise WireFormatError(f"expected an object, got {type(value).__name__}")
    return value


def mapped(from_wire: Callable[[Mapping[str, Any]], T]) -> Callable[[Any], T]:
    """``from_wire`` guarded so that a non-object item is a WireFormatError, not an AttributeError."""
    return lambda value: from_wire(mapping(value))


def record(from_wire: Callable[[Mapping[str, Any]], T]) -> Callable[[Mapping[str, Any]], T]:
    """A parser for envelopes whose ``result`` is one object."""
    return lambda envelope: mapped(from_wire)(envelope.get("result"))


def items(envelope: Mapping[str, Any], parse: Callable[[Any], T]) -> list[T]:
    result = envelope.get("result")
    if result is None:
        return []
    if not isinstance(result, list):
        raise WireFormatError(f"expected a list, got {type(result).__name__}")
    return [parse(item) for item in result]


def paged(envelope: Mapping[str, Any], page: int, page_size: int) -> dict[str, Any]:
    """The envelope with the requested ``page``/``pageSize`` filled in where the server left them out."""
    given = {k: v for k, v in envelope.items() if v is not None}
    return {"page": page, "pageSize": page_size, **given}


def text(envelope: Mapping[str, Any]) -> str:
    result = envelope.get("result")
    if not isinstance(result, str):
        raise WireFormatError(f"expected a string result, got {type(result).__name__}")
    return result


# ---- request helpers ------------------------------------------------------------------------


def quote_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    quoted = quote(value, safe="")
    # "." and ".." are dot-segments that URL normalisation would collapse.
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def guess_type(filename: str) -> str:
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return _UPLOAD_TYPES.get(ext) or mimetypes.guess_type(filename)[0] or "application/octet-stream"


def rfc3339(moment: datetime | None) -> str | None:
    """UTC with a ``Z`` suffix, as the API's examples write it."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError("list_jobs needs timezone-aware datetimes")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")

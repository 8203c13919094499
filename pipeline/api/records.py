"""Typed, immutable views of what the API returns, parsed from its JSON.

Each record's ``from_wire`` ignores fields it does not know and tolerates missing
optional ones (absent, ``null`` and ``""`` all become ``None``; a ``null`` list is
empty, as a Go backend sends it). A required field that is missing, or any field
of the wrong JSON type, raises :class:`WireFormatError`, which the client turns
into a :class:`~pipeline.errors.ProtocolError` naming the endpoint. The field readers
are in :mod:`pipeline.api.fields`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, Self, cast

from pipeline.api.fields import (
    WireFormatError,
    objects,
    opt_number,
    opt_str,
    opt_time,
    parse_timestamp,
    req_int,
    req_str,
    status_text,
)
from pipeline.catalog import JOB_STATUSES_TERMINAL

__all__ = [
    "Image",
    "ImagePage",
    "Job",
    "JobPage",
    "JobStatus",
    "JobSummary",
    "JobTicket",
    "Model",
    "Output",
    "Preset",
    "Video",
    "VideoDownload",
    "VideoPage",
    "WireFormatError",
    "parse_timestamp",
]


class JobStatus(StrEnum):
    """A job's status, normalised. Anything the docs do not list becomes ``UNKNOWN``."""

    CREATED = "created"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    #: Not a documented value (e.g. ``"completed"``): the raw text stays on the record.
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, raw: str) -> JobStatus:
        """Case- and space-insensitive; never raises."""
        try:
            return cls(raw.strip().lower())
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_terminal(self) -> bool:
        """True only for ``success`` and ``failed``, the two statuses that end a job."""
        return self.value in JOB_STATUSES_TERMINAL

    @property
    def is_active(self) -> bool:
        """Keep polling. Unlike the docs' helper, ``UNKNOWN`` counts as active: a status we
        cannot read is not a result, so the poller waits until its deadline rather than
        declaring a paid job finished (or failed) on a guess."""
        return not self.is_terminal


@dataclass(frozen=True, slots=True, kw_only=True)
class Output:
    """One file a job produced: an asset id (for ``/images/{id}``, upscaling) and its URL."""

    id: str
    url: str

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(id=req_str(data, "id"), url=req_str(data, "url"))


@dataclass(frozen=True, slots=True, kw_only=True)
class JobTicket:
    """What a trigger endpoint returns: the new job's id (record it before anything else)."""

    job_id: str
    status: JobStatus

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        raw = opt_str(data, "status")
        return cls(job_id=req_str(data, "jobId"), status=JobStatus.parse(raw or "queued"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """``GET /jobs/{id}``: status and, once done, outputs or the failure reason."""

    job_id: str
    status: JobStatus
    #: The status exactly as sent, for logs when ``status`` is ``UNKNOWN``.
    status_raw: str
    created_at: datetime | None = None
    images: tuple[Output, ...] = ()
    videos: tuple[Output, ...] = ()
    error: str | None = None
    model_id: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def is_active(self) -> bool:
        return self.status.is_active

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        raw = status_text(data)
        return cls(
            job_id=req_str(data, "jobId"),
            status=JobStatus.parse(raw),
            status_raw=raw,
            created_at=opt_time(data, "createdAt"),
            images=tuple(Output.from_wire(o) for o in objects(data, "images")),
            videos=tuple(Output.from_wire(o) for o in objects(data, "videos")),
            error=_error_text(data.get("error")),
            model_id=opt_str(data, "modelId", "modelID"),
        )


def _error_text(value: Any) -> str | None:
    """A failed job's reason, kept whatever its type: losing it is worse than a rough rendering."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("message"), str):
        return str(value["message"])
    return json.dumps(value, default=str)[:500]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSummary:
    """One item of ``GET /jobs``; note ``errorMessage`` here versus ``error`` on a job."""

    job_id: str
    status: JobStatus
    created_at: datetime | None = None
    updated_at: datetime | None = None
    credits: float | None = None
    error_message: str | None = None

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        """Parsed once per distinct item (pages show a job many times over); the credits' type is
        part of the key, since 1, 1.0 and True are equal. An unhashable field is parsed uncached."""
        raw = (*(data.get(key) for key in _SUMMARY_KEYS), type(data.get("credits")).__name__)
        try:
            return cast(Self, _summary(raw))
        except TypeError:
            return cast(Self, _summary.__wrapped__(raw))


_SUMMARY_KEYS = ("jobId", "status", "createdAt", "updatedAt", "credits", "errorMessage")


@lru_cache(maxsize=4096)
def _summary(raw: tuple[Any, ...]) -> JobSummary:
    data = dict(zip(_SUMMARY_KEYS, raw[:-1], strict=True))
    return JobSummary(
        job_id=req_str(data, "jobId"),
        status=JobStatus.parse(status_text(data)),
        created_at=opt_time(data, "createdAt"),
        updated_at=opt_time(data, "updatedAt"),
        credits=opt_number(data, "credits"),
        error_message=opt_str(data, "errorMessage"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobPage:
    """One page of ``GET /jobs``; ``next_page_token`` is ``None`` on the last page."""

    jobs: tuple[JobSummary, ...]
    next_page_token: str | None = None

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            jobs=tuple(JobSummary.from_wire(j) for j in objects(data, "jobs")),
            next_page_token=opt_str(data, "nextPageToken"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Model:
    """A trained model: ``new`` → ``training`` → ``ready`` (or ``deleted``); status lowercased."""

    id: str
    status: str
    model_type: str | None = None
    name: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        status = opt_str(data, "status")
        return cls(
            id=req_str(data, "id"),
            status=(status or "unknown").strip().lower(),
            model_type=opt_str(data, "modelType"),
            name=opt_str(data, "name"),
            created_at=opt_time(data, "createdAt"),
            updated_at=opt_time(data, "updatedAt"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    """An image asset: an upload (``modelInput``/``auxiliaryType``) or a generated output."""

    id: str
    url: str | None = None
    model_id: str | None = None
    type: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    upscaled_image_id: str | None = None
    upscaled_image_url: str | None = None
    public_media_id: str | None = None

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            id=req_str(data, "id"),
            url=opt_str(data, "url"),
            model_id=opt_str(data, "modelID", "modelId"),
            type=opt_str(data, "type"),
            created_at=opt_time(data, "createdAt"),
            updated_at=opt_time(data, "updatedAt"),
            upscaled_image_id=opt_str(data, "upscaledImageID", "upscaledImageId"),
            upscaled_image_url=opt_str(data, "upscaledImageURL", "upscaledImageUrl"),
            public_media_id=opt_str(data, "publicMediaID", "publicMediaId"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagePage:
    """``GET /models/{id}/images``. ``from_wire`` takes the whole envelope: the API puts
    ``page`` and ``pageSize`` beside ``result``, not inside it."""

    page: int
    page_size: int
    images: tuple[Image, ...]

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            page=req_int(data, "page"),
            page_size=req_int(data, "pageSize"),
            images=tuple(Image.from_wire(i) for i in objects(data, "result")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Video:
    """A video asset; ``job_id`` links it to the job that made it."""

    id: str
    url: str | None = None
    job_id: str | None = None
    model_id: str | None = None
    type: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    public_media_id: str | None = None

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            id=req_str(data, "id"),
            url=opt_str(data, "url"),
            job_id=opt_str(data, "jobId", "jobID"),
            model_id=opt_str(data, "modelID", "modelId"),
            type=opt_str(data, "type"),
            created_at=opt_time(data, "createdAt"),
            updated_at=opt_time(data, "updatedAt"),
            public_media_id=opt_str(data, "publicMediaID", "publicMediaId"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoPage:
    """``GET /videos``; like :class:`ImagePage`, ``from_wire`` takes the whole envelope."""

    page: int
    page_size: int
    videos: tuple[Video, ...]

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            page=req_int(data, "page"),
            page_size=req_int(data, "pageSize"),
            videos=tuple(Video.from_wire(v) for v in objects(data, "result")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoDownload:
    """``GET /videos/{id}/download``: progress of a prepared MP4 (status lowercased)."""

    percent_complete: float
    status: str
    url: str | None = None

    @property
    def is_ready(self) -> bool:
        """Ready and fetchable: ``status == "ready"`` or 100 %, and a URL to fetch."""
        return self.url is not None and (self.status == "ready" or self.percent_complete >= 100)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            percent_complete=opt_number(data, "percentComplete") or 0.0,
            status=status_text(data).strip().lower(),
            url=opt_str(data, "url"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    """A style tag usable as ``preset`` in image generation."""

    tag: str
    name: str | None = None
    description: str | None = None

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            tag=req_str(data, "tag"),
            name=opt_str(data, "name"),
            description=opt_str(data, "description"),
        )

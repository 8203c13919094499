"""The simulator's records: models, assets, jobs and downloads as the store holds them, each able
to render itself as the API's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pipeline.catalog import JOB_STATUSES_TERMINAL
from pipeline.simulator.pictures import Look

__all__ = ["Asset", "Download", "Job", "Model", "rfc3339"]


def rfc3339(moment: datetime) -> str:
    """UTC timestamp with a ``Z``, millisecond precision."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Model:
    """A trained-model record; ``training_ends`` is the monotonic time training completes."""

    id: str
    owner: str
    fields: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    status: str = "new"
    training_ends: float | None = None

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "modelType": self.fields.get("modelType", "person"),
            **{k: v for k, v in self.fields.items() if k != "modelType"},
            "createdAt": rfc3339(self.created_at),
            "updatedAt": rfc3339(self.updated_at),
        }


@dataclass(slots=True)
class Asset:
    """An image or video: uploaded (``data`` holds its bytes) or a job output (bytes rendered on demand)."""

    id: str
    owner: str
    kind: str  # "image" | "video"
    fmt: str  # jpeg, png, webp, heic, mp4
    type: str  # modelInput, auxiliaryType, output
    model_id: str | None
    created_at: datetime
    job_id: str | None = None
    data: bytes | None = None
    hls: bool = False
    upscaled_id: str | None = None
    upscaled_path: str | None = None
    look: Look | None = None  # what a job output shows: its request

    def path(self) -> str:
        """The file path (under the origin) the job and records hand out."""
        return f"/files/{self.id}.{'m3u8' if self.hls else self.fmt}"

    def record(self, origin: str, query: str = "") -> dict[str, Any]:
        base: dict[str, Any] = {
            "id": self.id,
            "url": origin + self.path() + query,
            "modelID": self.model_id,
            "type": self.type,
            "createdAt": rfc3339(self.created_at),
            "updatedAt": rfc3339(self.created_at),
            "folderID": None,
            "liked": False,
            "publicMediaID": None,
            "data": {},
        }
        if self.kind == "video":
            return {**base, "jobId": self.job_id}
        url = origin + self.upscaled_path if self.upscaled_path else None
        return {**base, "upscaledImageID": self.upscaled_id, "upscaledImageURL": url}


@dataclass(slots=True)
class Download:
    """A video download being prepared: ready after enough calls or enough time."""

    started: float
    calls: int = 0


@dataclass(slots=True)
class Job:
    """One generation or upscale job and the draws that decide its fate."""

    id: str
    kind: str  # "image" | "upscale" | "video"
    owner: str
    body_hash: str
    model_id: str | None
    count: int
    fmt: str
    created: float
    created_at: datetime
    duration: float
    shows_created: bool
    failure: str | None
    credits: int
    seq: int
    source_id: str | None = None
    look: Look | None = None
    status: str = "queued"
    updated: float = 0.0
    started: float | None = None
    finished: float | None = None
    polls: int = 0
    outputs: list[str] = field(default_factory=list)

    def wall(self, moment: float) -> datetime:
        return self.created_at + timedelta(seconds=moment - self.created)

    @property
    def terminal(self) -> bool:
        return self.status in JOB_STATUSES_TERMINAL

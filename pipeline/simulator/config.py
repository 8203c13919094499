"""The simulator's knobs as one frozen value, with named profiles.

Every timing, limit and fault rate lives here so a test, a demo and a benchmark
differ only by configuration; the seed makes each run reproducible.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["PROFILES", "SimConfig"]

Span = tuple[float, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """How the simulator behaves. Times are seconds of the injected clock; rates are 0..1."""

    keys: tuple[str, ...] = dataclasses.field(default=("sandbox",), repr=False)  # secrets: never shown
    seed: int = 0
    # Transport and envelope.
    version_error_status: int = 400
    drop_message: bool = False
    drop_err: bool = False
    # Job lifecycle: "time" moves jobs by the clock, "polls" by GET /jobs/{id} count.
    progress: Literal["time", "polls"] = "time"
    polls_to_finish: int = 2
    image_s: Span = (0.2, 1.0)
    upscale_s: Span = (0.2, 0.6)
    video_s: Span = (0.4, 1.0)
    created_probability: float = 0.2
    failure_marker: str = "[[fail]]"
    failed_job_rate: float = 0.0
    # Credits: price per output; balance None means unlimited.
    image_credits: int = 1
    upscale_credits: int = 1
    video_credits: int = 10
    credits: int | None = None
    insufficient_credits_status: int = 402
    # Capacity.
    max_active_jobs: int | None = None
    rps_limit: float | None = None
    retry_after: Literal["off", "seconds", "date"] = "off"
    # Faults.
    server_error_rate: float = 0.0
    truncated_download_rate: float = 0.0
    slow_response_rate: float = 0.0
    slow_response_s: Span = (0.5, 2.0)
    #: Routes the faults above (and ``next_n_429``/``next_n_5xx``) hit, as ``"METHOD /api/path"``
    #: templates, e.g. ``("POST /api/images/generation",)``; empty: every ``/api`` route.
    fault_routes: tuple[str, ...] = ()
    #: Job-creating POSTs (in ``fault_routes``) that create their job, then answer 502: a lost reply.
    lost_reply_rate: float = 0.0
    #: Job-creating POSTs (in ``fault_routes``) hold their answer this long after creating the job.
    reply_delay_s: Span = (0.0, 0.0)
    #: The ``Date`` header's clock runs this far from the one ``createdAt`` is on (a proxy's clock).
    date_offset_s: float = 0.0
    # Files.
    range_requests: bool = True
    #: Asset URLs carry a signature (``?sig=``) that ``expire_urls`` invalidates: old URLs then get 403,
    #: and reading the job or asset again hands out fresh ones (hosted URLs that expire, [I]).
    signed_urls: bool = False
    file_size: int = 0
    video_hls: bool = False
    download_prepare_polls: int = 3
    download_prepare_s: float = 2.0
    download_before_create_status: int = 409
    # Models, training and generation rules.
    unknown_preset_status: int = 400
    not_ready_status: int = 409
    max_trainings: int = 1
    training_s: float = 1.0
    training_fails: bool = False
    job_list_page_size: int = 50
    #: ``False``: ``GET /jobs`` answers 404, as an API without the list would ([I]: its paging,
    #: order and freshness are inferred, so clients must cope without it).
    job_list_available: bool = True
    #: A job shows in ``GET /jobs`` only this long after it was created (an eventually consistent list).
    job_list_lag_s: float = 0.0
    #: ``GET /jobs`` shows a job as it was this long ago: a finished job still reads ``running``
    #: there for a while (a list served from a stale cache; its freshness is [I]).
    job_list_status_lag_s: float = 0.0

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError("invalid SimConfig: " + "; ".join(problems))

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> SimConfig:
        """A named profile (``fast``, ``realistic``, ``chaos``) with some fields replaced."""
        if name not in PROFILES:
            raise ValueError(f"unknown simulator profile {name!r}; choose from {sorted(PROFILES)}")
        return cls(**{**PROFILES[name], **overrides})

    def replace(self, **changes: Any) -> SimConfig:
        """A copy with ``changes`` applied (JSON lists become tuples), validated again."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(f"unknown SimConfig fields: {unknown}")
        fixed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        return dataclasses.replace(self, **fixed)


_SPANS = ("image_s", "upscale_s", "video_s", "slow_response_s", "reply_delay_s")
_RATES = (
    "created_probability",
    "failed_job_rate",
    "server_error_rate",
    "truncated_download_rate",
    "slow_response_rate",
    "lost_reply_rate",
)
_STATUSES = (
    "version_error_status",
    "insufficient_credits_status",
    "download_before_create_status",
    "unknown_preset_status",
    "not_ready_status",
)
_POSITIVE = ("polls_to_finish", "download_prepare_polls", "max_trainings", "job_list_page_size")
_NON_NEGATIVE = (
    "image_credits",
    "upscale_credits",
    "video_credits",
    "file_size",
    "training_s",
    "download_prepare_s",
    "job_list_lag_s",
    "job_list_status_lag_s",
)
_CHOICES = {"progress": ("time", "polls"), "retry_after": ("off", "seconds", "date")}


def _problems(c: SimConfig) -> list[str]:
    out = [
        f"{n} must be (min, max) with 0 <= min <= max"
        for n in _SPANS
        if not 0 <= getattr(c, n)[0] <= getattr(c, n)[1]
    ]
    out += [f"{n} must be within 0..1" for n in _RATES if not 0 <= getattr(c, n) <= 1]
    out += [f"{n} must be an HTTP error status" for n in _STATUSES if not 400 <= getattr(c, n) <= 599]
    out += [f"{n} must be >= 1" for n in _POSITIVE if getattr(c, n) < 1]
    out += [f"{n} must be >= 0" for n in _NON_NEGATIVE if getattr(c, n) < 0]
    out += [f"{n} must be one of {v}" for n, v in _CHOICES.items() if getattr(c, n) not in v]
    if not c.keys or any(not k or k != k.strip() or " " in k for k in c.keys):
        out.append("keys must be non-empty strings without spaces")
    for name, floor in (("credits", 0), ("max_active_jobs", 1), ("rps_limit", 0.001)):
        if getattr(c, name) is not None and getattr(c, name) < floor:
            out.append(f"{name} must be >= {floor} or None")
    bad_routes = [r for r in c.fault_routes if r.partition(" ")[0] not in ("GET", "POST", "DELETE")]
    if bad_routes:
        out.append(f"fault_routes must look like 'POST /api/images/generation', not {bad_routes}")
    if not c.failure_marker:
        out.append("failure_marker must not be empty")
    return out


#: Named starting points; ``SimConfig.profile(name, **overrides)`` builds from them.
PROFILES: dict[str, dict[str, Any]] = {
    "fast": {},
    "realistic": {
        "image_s": (5.0, 20.0),
        "upscale_s": (5.0, 10.0),
        "video_s": (30.0, 90.0),
        "max_active_jobs": 32,
        "training_s": 22 * 60.0,
        "download_prepare_s": 10.0,
    },
    "chaos": {
        "server_error_rate": 0.05,
        "failed_job_rate": 0.05,
        "truncated_download_rate": 0.02,
        "slow_response_rate": 0.05,
        "slow_response_s": (0.5, 2.0),
        "rps_limit": 20.0,
        "retry_after": "seconds",
    },
}

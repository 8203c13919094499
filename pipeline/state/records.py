"""The values every state store shares: a unit's phases, its record, its outputs and history.

Both stores (SQLite, PostgreSQL) return these, so the engine, ``status`` and the report never
know which one they read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from pipeline.state.lifecycle import Event, Phase, allowed_from

__all__ = ["EventRecord", "OutputRecord", "Phase", "UnitLike", "UnitRecord", "rfc3339"]


def rfc3339(moment: datetime) -> str:
    """The one timestamp format of the state: RFC 3339, UTC, milliseconds, ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


PHASES = {p.value: p for p in Phase}
# Which phases each write starts from: the lifecycle's table, shared by every store, so no store can
# open a path the table lacks (a second intent needs the unit back in pending first).
CAN_SUBMIT = allowed_from(Event.INTENT)
CAN_RECORD_JOB = allowed_from(Event.ACCEPTED, Event.ADOPTED)
CAN_SUCCEED = allowed_from(Event.JOB_SUCCEEDED)
CAN_FINISH = allowed_from(Event.FETCHED)
CAN_REOPEN = allowed_from(Event.FILES_MISSING)
CAN_FAIL = allowed_from(Event.CHAIN_BROKEN, Event.INVALID, Event.JOB_FAILED, Event.OUTPUTS_GONE)
CAN_PARK = allowed_from(Event.AMBIGUOUS, Event.VANISHED)
CAN_UNSEND = allowed_from(Event.REFUSED, Event.NOTHING_CREATED)
#: A regeneration retires a rejected output (done) or what was made from one; pending ones stay.
CAN_REGENERATE = allowed_from(Event.REJECT, Event.REGENERATE, Event.UPSTREAM_REGENERATED) | {Phase.PENDING}
#: The reason the engine gives ``mark_pending`` when a submission was refused for the active-job
#: cap (a 429 the request rate does not explain): a shared store learns the cap from it.
CAP_429_REASON = "429 too many active jobs"
#: Nothing more will happen to these without the operator: a worker may stop once all are here.
SETTLED = frozenset({Phase.DONE, Phase.FAILED, Phase.UNKNOWN})


class UnitLike(Protocol):
    """One paid request as the manifest plans it (read-only attributes are enough)."""

    @property
    def key(self) -> str: ...
    @property
    def item_id(self) -> str: ...
    @property
    def step(self) -> str: ...
    @property
    def index(self) -> int: ...
    @property
    def request(self) -> Mapping[str, Any]: ...
    @property
    def upstream(self) -> str | None: ...
    @property
    def expected_outputs(self) -> int: ...


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One output of a unit (``n`` is 1-based); the download fields are ``None`` until it is on disk."""

    unit_key: str
    n: int
    asset_id: str
    url: str
    path: str | None
    bytes: int | None
    sha256: str | None
    downloaded_at: str | None

    @property
    def downloaded(self) -> bool:
        """True once the file was verified and recorded."""
        return self.downloaded_at is not None


@dataclass(frozen=True, slots=True)
class UnitRecord:
    """A unit's row, as stored. Timestamps are RFC 3339 UTC strings."""

    key: str
    item_id: str
    step: str
    index: int
    upstream: str | None
    request_json: str
    expected_outputs: int
    phase: Phase
    job_id: str | None
    attempts: int  #: POSTs sent (intents recorded), never reset
    submitted_at: str | None
    finished_at: str | None
    last_error: str | None
    error_kind: str | None
    updated_at: str
    run_id: str | None
    outputs: tuple[OutputRecord, ...] = ()
    holder: str | None = None  #: the worker whose lease covers it (shared stores only)
    lease_until: str | None = None  #: when that lease ends, on the database's clock

    @property
    def request(self) -> dict[str, Any]:
        """The request body exactly as synced (kept as JSON text so the record stays hashable)."""
        return cast(dict[str, Any], json.loads(self.request_json))


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One phase change in a unit's history."""

    unit_key: str
    at: str
    phase: Phase
    detail: str

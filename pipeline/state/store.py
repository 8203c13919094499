"""The ``StateStore`` seam: what the engine, ``status`` and the report need from the state.

Two implementations: :class:`~pipeline.state.sqlite.SqliteStore` (one file, one run at a time, the
embedded default) and :class:`~pipeline.state.postgres.PostgresStore` (one database shared by several
runs and by several workers of one run). The contract both keep is tested once, in
tests/test_state_contract.py; the review's (decisions, regeneration: review_store.py) in
tests/test_review_contract.py.

Reads are synchronous on purpose: the engine asks them in the middle of its bookkeeping, SQLite
answers them in microseconds, and a loopback PostgreSQL in a fraction of a millisecond. Mutators
are async and durable on return: the money rule (intent before the POST, job id as soon as it is
known) rests on that.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from pipeline.state.records import EventRecord, Phase, UnitLike, UnitRecord

__all__ = ["STATE_URL_ENV", "SharedState", "StateReader", "StateStore", "is_database_url"]

#: The environment variable that names a shared state database when ``--state`` is not given.
STATE_URL_ENV = "PHOTOGPT_STATE_URL"


def is_database_url(where: str | os.PathLike[str]) -> bool:
    """True for a PostgreSQL URL (``postgresql://`` or ``postgres://``), False for a file path."""
    text = os.fspath(where)
    return text.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True, slots=True)
class SharedState:
    """One run of a shared state database: what the gallery and ``export`` read instead of a file."""

    url: str = field(repr=False)  #: may hold the password: never shown (see ``__repr__``)
    run: str

    def __repr__(self) -> str:
        from pipeline.state.pgconn import redact_url

        return f"SharedState({redact_url(self.url)!r}, run={self.run!r})"

    __str__ = __repr__


@runtime_checkable
class StateReader(Protocol):
    """What ``status``, ``plan`` and the report read; every read sees committed changes only."""

    def get(self, key: str) -> UnitRecord | None:
        """The unit with this key, with its outputs, or ``None``."""
        ...

    def phases(self) -> dict[str, Phase]:
        """Every unit's phase by key."""
        ...

    def iter_phases(self) -> Iterator[tuple[str, Phase]]:
        """Every unit's key and phase, streamed where the store can (the resume diff of a big catalog)."""
        ...

    def iter_outputs(self) -> Iterator[tuple[str, int, str | None, int | None]]:
        """``(unit_key, n, path, bytes)`` of every recorded output, streamed where the store can."""
        ...

    def counts(self) -> dict[Phase, int]:
        """How many units are in each phase (every phase present, zeros included)."""
        ...

    def job_ids(self) -> set[str]:
        """Every job id recorded: jobs that are ours (reconciliation must not adopt them)."""
        ...

    def done_outputs(self) -> dict[str, list[tuple[int, str | None, int | None]]]:
        """``(n, path, bytes)`` of every output of every done unit."""
        ...

    def resource(self, kind: str, key: str) -> dict[str, Any] | None:
        """What was recorded for a shared resource (an upload by content hash, a trained model)."""
        ...

    def units(self, phase: Phase | None = None) -> list[UnitRecord]:
        """All units (or those in ``phase``) ordered by item, step and index."""
        ...

    def stale_keys(self, current_keys: Set[str]) -> list[UnitRecord]:
        """Units stored that the manifest no longer has: reported, never deleted (they may be paid)."""
        ...

    def history(self, key: str) -> list[EventRecord]:
        """A unit's phase changes, oldest first."""
        ...


@runtime_checkable
class StateStore(StateReader, Protocol):
    """The engine's state: reads plus durable mutators that refuse any transition that could pay twice."""

    run_id: str

    async def sync_units(self, units: Iterable[UnitLike]) -> int:
        """Insert new units as pending; existing rows stay untouched. Returns how many were new."""
        ...

    async def mark_submitting(self, key: str) -> int:
        """Record the intent to POST (durable on return; call it before sending). Returns attempts."""
        ...

    async def mark_submitted(self, key: str, job_id: str, at: datetime | None = None) -> None:
        """Record the job id (durable on return); the same id again is a no-op, another is refused."""
        ...

    async def mark_succeeded(self, key: str, outputs: Sequence[tuple[str, str]]) -> None:
        """The job finished: its outputs as ``(asset_id, url)``, numbered from 1."""
        ...

    async def record_download(
        self,
        key: str,
        n: int,
        *,
        path: str,
        bytes: int,
        sha256: str,
        at: datetime | None = None,
        done: bool = False,
    ) -> None:
        """Output ``n`` is published and verified; with ``done``, the unit is closed in the same
        transaction, as :meth:`mark_done` would (refused, record included, if an output is missing)."""
        ...

    async def mark_done(self, key: str) -> None:
        """Close the unit; refused while an output is not downloaded."""
        ...

    async def put_resource(self, kind: str, key: str, value: Mapping[str, Any]) -> None:
        """Record a shared resource durably."""
        ...

    async def reopen(self, key: str, missing: Iterable[int]) -> None:
        """A done unit whose files are gone: back to succeeded with those outputs to fetch again."""
        ...

    async def mark_failed(self, key: str, error: str, kind: str) -> None:
        """A permanent failure with its reason."""
        ...

    async def mark_unknown(self, key: str, reason: str) -> None:
        """Park a unit whose outcome cannot be learned."""
        ...

    async def mark_pending(self, key: str, reason: str) -> None:
        """Back to pending when the API certainly created nothing (e.g. a 429)."""
        ...

    async def update_urls(self, key: str, outputs: Sequence[tuple[str, str]]) -> None:
        """Replace expired URLs with fresh ones; asset ids must match."""
        ...

    async def reset(self, phase: Phase, keys: Iterable[str] | None = None) -> int:
        """Failed or unknown units (all, or ``keys``) back to pending, job id and outputs forgotten."""
        ...

    async def flush(self) -> None:
        """Commit anything still queued."""
        ...

    async def aclose(self) -> None:
        """Commit anything queued and close; idempotent."""
        ...

"""The review seam: reviewers' verdicts and regenerations, the same over the SQLite file and the
shared PostgreSQL database (tests/test_review_contract.py runs one suite over both).

Why a Protocol of its own and not more of ``StateStore``: the engine's stages never judge files;
``review``, ``export --only approved``, the gallery, the run record and ``--regenerate-rejected``
do. Verdicts are keyed by the asset's sha256 (a regenerated file starts fresh) and append-only:
the newest per sha256 is the current one, ``undo`` clears it and keeps the history.

A regeneration is three steps, so that no file is moved from under a worker: ``hold`` the units
(a shared database gives each a short lease for this process; a unit another worker holds under
a live lease is left out), move their files aside, then ``regenerate`` them (refused for a unit
no longer held) and let go. On the SQLite file the run lock already keeps every other writer out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from pipeline.errors import StateError
from pipeline.state.store import StateReader

__all__ = [
    "HOLD_S",
    "VERDICTS",
    "DecisionRecord",
    "RetiredRecord",
    "ReviewReader",
    "ReviewStore",
    "ReviewView",
    "ReviewedState",
    "checked_decision",
    "count_review",
]

#: Verdicts a decision row may hold; ``undo`` clears the current verdict and keeps the history.
VERDICTS = frozenset({"approve", "reject", "undo"})
#: How long a regeneration keeps other workers off its units while it moves their files.
HOLD_S = 120.0


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A reviewer's verdict on one asset, keyed by its sha256 (so a regenerated file starts fresh)."""

    sha256: str
    verdict: str  #: ``approve`` or ``reject`` (``undo`` rows are history, never returned as current)
    note: str | None
    path: str | None  #: where the file was when judged (a hint for people; the key is the hash)
    item_id: str | None
    at: str


@dataclass(frozen=True, slots=True)
class RetiredRecord:
    """An output set aside by ``--regenerate-rejected``: ``phase`` is ``rejected`` (judged so) or
    ``superseded`` (a chain child, or a sibling output, of a rejected one)."""

    unit_key: str
    n: int
    phase: str
    path: str | None  #: where it now lives (under ``.rejected/``), or ``None`` if it was not on disk
    sha256: str | None
    job_id: str | None
    at: str


def checked_decision(
    sha256: str, verdict: str, note: str | None, path: str | None, item_id: str | None, at: str
) -> DecisionRecord:
    """The decision to store, or a StateError naming what is wrong (both stores check alike)."""
    if verdict not in VERDICTS:
        raise StateError(f"a decision is approve, reject or undo, not {verdict!r}")
    sha = sha256.strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise StateError(f"a decision needs the asset's sha256 (64 hex digits), not {sha256!r}")
    return DecisionRecord(sha, verdict, note or None, path, item_id, at)


def count_review(
    decisions: Mapping[str, DecisionRecord], outputs: Iterable[tuple[str, str]], regenerated: int
) -> dict[str, int]:
    """Units with a current output judged ``rejected`` / ``approved`` (all judged outputs approved),
    and units ``regenerated`` so far; ``outputs`` is ``(unit_key, sha256)`` of every recorded file."""
    per_unit: dict[str, set[str]] = {}
    for key, sha in outputs:
        if (found := decisions.get(sha)) is not None:
            per_unit.setdefault(key, set()).add(found.verdict)
    return {
        "approved": sum(1 for v in per_unit.values() if v == {"approve"}),
        "rejected": sum(1 for v in per_unit.values() if "reject" in v),
        "regenerated": int(regenerated),
    }


@runtime_checkable
class ReviewReader(Protocol):
    """What ``review --json``, ``export --only approved``, the gallery and ``status`` read."""

    def decisions(self) -> dict[str, DecisionRecord]:
        """The current verdict per sha256: the newest by time wins (equal times: the later row);
        an ``undo`` leaves none."""
        ...

    def retired(self) -> list[RetiredRecord]:
        """Every output set aside by a regeneration, oldest first."""
        ...

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every resource of ``kind`` by key (e.g. the seeds regenerations drew, by unit key)."""
        ...

    def review_counts(self) -> dict[str, int]:
        """``approved``, ``rejected`` (not yet regenerated) and ``regenerated`` unit counts."""
        ...


class ReviewView(StateReader, ReviewReader, Protocol):
    """A read-only view of either store with the review's reads (``close`` it when done)."""

    def close(self) -> None:
        """Close the view's connection."""
        ...


@runtime_checkable
class ReviewStore(ReviewReader, Protocol):
    """The review's writes: a verdict, and a regeneration (hold, move files, regenerate)."""

    async def record_decision(
        self,
        sha256: str,
        verdict: str,
        *,
        note: str | None = None,
        path: str | None = None,
        item_id: str | None = None,
        at: datetime | None = None,
    ) -> DecisionRecord:
        """Append a verdict (``approve``, ``reject`` or ``undo``) for the asset with this sha256.
        Touches no unit: safe while workers run."""
        ...

    async def hold(self, keys: Iterable[str], *, seconds: float = HOLD_S) -> set[str]:
        """Keep other workers off these units for ``seconds``; returns the keys now held (a unit
        another worker holds under a live lease is left out, never taken from it)."""
        ...

    async def release(self, keys: Iterable[str]) -> int:
        """Let go of held units (those a regeneration will not touch after all)."""
        ...

    async def regenerate(
        self, units: Mapping[str, str], retired: Sequence[RetiredRecord], seeds: Mapping[str, int]
    ) -> int:
        """Send held units back to ``pending`` for a paid regeneration, in one transaction, and let
        go of them. ``units`` maps a key to why (``rejected`` or ``superseded``); their outputs are
        forgotten (``retired`` says where the old files went) and ``seeds`` records each new
        request's seed (resource kind ``seed``). Only the phases the lifecycle lets a regeneration
        start from qualify. Returns how many units changed phase."""
        ...


class ReviewedState(StateReader, ReviewStore, Protocol):
    """A store with the review, as ``review`` and ``--regenerate-rejected`` use it (both stores)."""

    async def aclose(self) -> None:
        """Commit anything queued and close; idempotent."""
        ...

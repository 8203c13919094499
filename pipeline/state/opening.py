"""Choosing the state store: a path is the embedded SQLite file, a ``postgresql://`` URL the shared
database (also given as ``PHOTOGPT_STATE_URL``)."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.clock import Clock
from pipeline.state.review_store import ReviewView
from pipeline.state.store import STATE_URL_ENV, SharedState, StateStore, is_database_url

__all__ = ["SharedState", "default_run_name", "open_store", "open_view", "resolve_state", "state_location"]


def state_location(store: object) -> Path | SharedState | None:
    """Where an open store's state is, for the gallery (which opens its own read-only view)."""
    found = getattr(store, "path", None) or getattr(store, "shared", None)
    return found if isinstance(found, Path | SharedState) else None


def resolve_state(given: str | os.PathLike[str] | None, default: Path) -> str | Path:
    """What ``--state`` means: the value given, else ``$PHOTOGPT_STATE_URL``, else ``default``."""
    if given is not None and str(given):
        text = os.fspath(given)
        return text if is_database_url(text) else Path(text)
    if env := os.environ.get(STATE_URL_ENV, "").strip():
        return env
    return default


def default_run_name(manifest_name: str) -> str:
    """Runs sharing one database are told apart by name: the manifest's ``name`` by default."""
    return manifest_name


async def open_store(
    where: str | os.PathLike[str],
    *,
    clock: Clock,
    run_id: str | None = None,
    run_name: str = "default",
    lease_s: float | None = None,
    linger_s: float | None = None,
) -> StateStore:
    """Open the store at ``where``; close it with ``await store.aclose()``.

    ``run_name`` and ``lease_s`` concern the shared database only (which run of it, and whether
    this worker cooperates through claims); ``linger_s`` the SQLite file only."""
    if is_database_url(where):
        from pipeline.state.postgres import PostgresStore

        return await PostgresStore.open(
            os.fspath(where), clock=clock, run=run_name, run_id=run_id, lease_s=lease_s
        )
    from pipeline.state.sqlite import SqliteStore

    if linger_s is None:
        return await SqliteStore.open(where, clock=clock, run_id=run_id)
    return await SqliteStore.open(where, clock=clock, run_id=run_id, linger_s=linger_s)


def open_view(where: str | os.PathLike[str] | SharedState, *, run_name: str = "default") -> ReviewView:
    """A read-only view for ``status``, ``plan``, ``export`` and the report: takes no lock, writes
    nothing; ``close()`` it when done."""
    if isinstance(where, SharedState):
        run_name, where = where.run, where.url
    if is_database_url(where):
        from pipeline.state.pgreads import open_pg_view

        return open_pg_view(os.fspath(where), run_name)
    from pipeline.state.sqlite import open_readonly

    return open_readonly(where)

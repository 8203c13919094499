"""The resumable state: what the engine needs from it (the ``StateStore`` seam, store.py), the SQLite
store that is the embedded default (sqlite.py) with its one-run-per-state lock, and the PostgreSQL
store shared by several runs and workers (postgres.py: claims, leases and shared API limits)."""

__all__: list[str] = []

"""The resumable state: what the engine needs from it (the ``StateStore`` seam), the SQLite store
that is the embedded default, and the one-run-per-state lock."""

__all__: list[str] = []

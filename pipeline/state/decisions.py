"""Review decisions as the export needs them: the sha256 of every approved asset.

The decisions table (one row per asset sha256, verdict ``approve`` or ``reject``) is written by
``review``. This reader is its only contract with ``export --only approved``: a state without the
table yet (an older state, or no review done) approves nothing, so nothing unreviewed leaves.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pipeline.errors import StateError

__all__ = ["approved_sha256s"]


def approved_sha256s(state_path: Path) -> frozenset[str]:
    """The sha256 (hex, lower case) of every asset whose latest verdict is ``approve``."""
    if not state_path.is_file():
        return frozenset()
    try:
        db = sqlite3.connect(f"{state_path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StateError(f"{state_path}: cannot open the state read-only: {exc}") from exc
    try:
        found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'decisions'")
        if found.fetchone() is None:
            return frozenset()
        rows = db.execute("SELECT sha256 FROM decisions WHERE verdict = 'approve'").fetchall()
    except sqlite3.Error as exc:
        raise StateError(f"{state_path}: cannot read the review decisions: {exc}") from exc
    finally:
        db.close()
    return frozenset(str(sha).lower() for (sha,) in rows)

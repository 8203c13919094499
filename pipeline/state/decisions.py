"""Review decisions as the export needs them: the sha256 of every asset whose verdict is ``approve``.

``review`` writes the decisions (keyed by asset sha256; the newest by time wins, ``undo`` clears).
This reader is the one contract with ``export --only approved``: no state file, or no decision yet,
approves nothing, so nothing unreviewed leaves. A shared database's decisions are its run's.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.state.opening import SharedState, open_view

__all__ = ["approved_sha256s"]


def approved_sha256s(state: Path | SharedState) -> frozenset[str]:
    """The sha256 (hex, lower case) of every asset whose current verdict is ``approve``."""
    if isinstance(state, Path) and not state.is_file():
        return frozenset()
    view = open_view(state)
    try:
        return frozenset(sha.lower() for sha, d in view.decisions().items() if d.verdict == "approve")
    finally:
        view.close()

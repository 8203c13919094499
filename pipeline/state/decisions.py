"""Review decisions as the export needs them: the sha256 of every asset whose verdict is ``approve``.

``review`` writes the decisions (keyed by asset sha256; the newest by time wins, ``undo`` clears).
This reader is the one contract with ``export --only approved``: no state file, or no decision yet,
approves nothing, so nothing unreviewed leaves.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.state.sqlite import open_readonly

__all__ = ["approved_sha256s"]


def approved_sha256s(state_path: Path) -> frozenset[str]:
    """The sha256 (hex, lower case) of every asset whose current verdict is ``approve``."""
    if not state_path.is_file():
        return frozenset()
    with open_readonly(state_path) as view:
        return frozenset(sha.lower() for sha, d in view.decisions().items() if d.verdict == "approve")

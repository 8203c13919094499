"""Named places where the crash tests make the process die, as an OOM killer or a power cut would.

``PHOTOGPT_PIPELINE_CRASH_AT=<name>`` makes :func:`crash_point` with that name SIGKILL its own
process (reliability plan S1–S4). Unset in normal use, where a call costs one string compare.
"""

from __future__ import annotations

import os
import signal

__all__ = ["crash_point"]

_CRASH_AT = os.environ.get("PHOTOGPT_PIPELINE_CRASH_AT", "")


def crash_point(name: str) -> None:
    """Die here if the crash tests asked for it."""
    if name == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)

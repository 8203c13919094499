"""Import the HTTP client on a thread while ``run`` imports the engine and loads its manifest.

aiohttp's import builds its two default SSL contexts, loading the system's CA certificates twice
(~55 ms, a fifth of the start-up budget), in OpenSSL code that releases the GIL. Started first
thing in ``run``, that load overlaps the main thread's imports and manifest expansion, which do
not need aiohttp (the engine imports the session only after the load). The engine then imports
aiohttp as always; Python's per-module import lock makes it wait for this import if it is still
under way. Nothing about TLS changes: aiohttp builds its contexts exactly as it always does.
"""

from __future__ import annotations

import contextlib
import importlib
import threading

__all__ = ["import_in_background"]


def import_in_background(module: str) -> threading.Thread:
    """Start importing ``module`` on a daemon thread; an error is left to the main thread's own
    import of it, which raises it where the module is used (a failed import leaves no module)."""

    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    thread = threading.Thread(target=load, name=f"import {module}", daemon=True)
    thread.start()
    return thread

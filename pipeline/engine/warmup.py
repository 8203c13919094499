"""Loading the gallery's code while a run waits on its last jobs, not after them.

The gallery (``report.html``) is built when a run ends, and its modules (Jinja2, the template
compiled) are imported lazily so they cost nothing on the way to the first POST. Imported at the
end, they add a tenth of a second or more to every run's wall time. Once nothing waits to be
submitted, the run only waits on its last jobs: a thread loads them then, while the event loop idles.
"""

from __future__ import annotations

import threading

__all__ = ["warm_gallery"]

_started = threading.Event()


def warm_gallery() -> None:
    """Import the gallery's modules and compile its template in a daemon thread (once a process)."""
    if _started.is_set():
        return
    _started.set()
    threading.Thread(target=_load, name="warm-gallery", daemon=True).start()


def _load() -> None:
    try:
        import pipeline.output.publish_report  # noqa: F401 - loaded for later, on purpose
        from pipeline.output.report import warm

        warm()
    except Exception:  # noqa: S110 - a warm-up only: the gallery is built (and fails) later
        pass

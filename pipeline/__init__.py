"""photogpt-pipeline: turn a YAML manifest into PhotoGPT images and videos, resumably."""

import sys

__all__ = ["__version__"]

#: The one place the version is written: pyproject.toml reads it from here ([tool.hatch.version]),
#: so a run's User-Agent needs no importlib.metadata (~10 ms of every start-up).
__version__ = "0.1.0"


def _import_structlog_without_rich() -> None:
    """structlog imports rich at its own import (~0.1 s of every start-up, a third of the target)
    only to offer rich tracebacks, which the run's JSON or plain log lines never use
    (:func:`pipeline.logs.configure` sets plain ones), and greenlet (~3 ms, where installed) only
    for its deprecated greenlet-local context, which nothing here uses. So it is imported with
    both hidden; they stay importable (rich for the live progress display, which imports it when
    it starts)."""
    if "structlog" in sys.modules:
        return
    hidden = [name for name in ("rich", "greenlet") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import <name>` raise ImportError
    try:
        import structlog  # noqa: F401
    except ImportError:  # pragma: no cover - a broken install says so where structlog is used
        pass
    finally:
        for name in hidden:
            del sys.modules[name]


_import_structlog_without_rich()

"""photogpt-pipeline: turn a YAML manifest into PhotoGPT images and videos, resumably."""

import sys
from typing import Any

__all__ = ["__version__"]


def _import_structlog_without_rich() -> None:
    """structlog imports rich at its own import (~0.1 s of every start-up, a third of the target)
    only to offer rich tracebacks, which the run's JSON or plain log lines never use
    (:func:`pipeline.logs.configure` sets plain ones). So it is imported with rich hidden; rich
    itself stays importable for the live progress display, which imports it when it starts."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` raise ImportError
    try:
        import structlog  # noqa: F401
    except ImportError:  # pragma: no cover - a broken install says so where structlog is used
        pass
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()


def __getattr__(name: str) -> Any:
    """``__version__`` on first use: importlib.metadata costs more at start-up than a run's first POST."""
    if name != "__version__":
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("photogpt-pipeline")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0.0.0"
    globals()["__version__"] = found
    return found

"""photogpt-pipeline: turn a YAML manifest into PhotoGPT images and videos, resumably."""

from typing import Any

__all__ = ["__version__"]


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

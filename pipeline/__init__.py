"""photogpt-pipeline: turn a YAML manifest into PhotoGPT images and videos, resumably."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("photogpt-pipeline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]

"""Which :class:`~pipeline.output.store.OutputStore` an ``--out`` names: a folder or ``s3://bucket/prefix``."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.output.store import OutputStore

__all__ = ["is_s3_url", "open_output"]


def is_s3_url(text: str | Path | None) -> bool:
    return isinstance(text, str) and text.startswith("s3://")


def open_output(out: str | Path, *, staging: Path | None = None) -> OutputStore:
    """The store for ``--out``: ``s3://bucket/prefix`` or a local folder.

    ``staging`` is where an S3 store keeps ``.part`` files (next to its local state).
    """
    if is_s3_url(out):
        from pipeline.output.s3 import S3OutputStore
        from pipeline.output.s3url import parse_s3_url

        bucket, prefix = parse_s3_url(str(out))
        if staging is None:
            raise ConfigError(f"{out}: an s3:// output needs a local staging folder")
        return S3OutputStore(bucket, prefix, staging=staging)
    from pipeline.output.local import LocalOutputStore

    return LocalOutputStore(Path(out))

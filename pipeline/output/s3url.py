"""``s3://BUCKET/PREFIX`` parsed and checked (kept apart from :mod:`pipeline.output.s3` so that
reading a URL does not import aiobotocore)."""

from __future__ import annotations

from pipeline.errors import ConfigError

__all__ = ["parse_s3_url"]


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix")``; a clear error for anything else."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not bucket or not all(c.isalnum() or c in "-._" for c in bucket) or len(bucket) < 3:
        raise ConfigError(f"{url}: not s3://BUCKET/PREFIX (bucket names are 3+ letters, digits, '-', '.')")
    if any(seg in ("", ".", "..") for seg in prefix.split("/")) and prefix:
        raise ConfigError(f"{url}: the prefix may not hold empty, '.' or '..' segments")
    return bucket, prefix

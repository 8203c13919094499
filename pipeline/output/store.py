"""The output seam: where finished assets and their sidecars are published, whatever holds them.

An :class:`OutputStore` holds objects under ``/``-separated keys that mirror the local tree
(``<item>/<step>-<n>.<ext>`` plus ``<item>/<step>-<n>.json``). Two rules make it safe to
share and to crash in:

- **Create-only assets.** :meth:`OutputStore.put_file` / :meth:`OutputStore.put_stream` never
  replace an object: the same key with the same sha256 is :attr:`PutOutcome.ALREADY` (already
  published, nothing sent), a different sha256 is an :class:`~pipeline.errors.OutputConflictError`.
- **The sidecar is the commit marker.** It is written after its asset; a reader trusts (lists
  as done, adopts) only an asset whose sidecar exists and whose size and sha256 match it.

Work of an older manifest entry in the way is moved aside (``.stale/``), never overwritten.
Implementations: :mod:`pipeline.output.local` (a folder) and :mod:`pipeline.output.s3`
(any S3-compatible bucket). :func:`pipeline.output.open.open_output` picks one from the ``--out`` text.
"""

from __future__ import annotations

import enum
import posixpath
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ASSET_EXTS",
    "Adopted",
    "OutputStore",
    "Publication",
    "PutOutcome",
    "StoredObject",
    "aside_key",
    "sidecar_key",
]

#: Extensions an asset can be published under (the downloader's magic-byte kinds).
ASSET_EXTS = ("jpeg", "png", "webp", "mp4")


class PutOutcome(enum.Enum):
    """What a create-only put did."""

    CREATED = "created"
    #: The key already held these exact bytes (same sha256): nothing was written.
    ALREADY = "already"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object: its key, size, and sha256 when the store knows it without reading the bytes."""

    key: str
    bytes: int
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Adopted:
    """An asset published before a crash but never recorded, verified against its sidecar."""

    key: str
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Publication:
    """One verified download to publish: the asset from its local part file, then its sidecar."""

    key: str
    part: Path
    bytes: int
    sha256: str
    #: The unit key that owns it: a file of another unit key in the way is older work (moved aside).
    owner: str
    sidecar: Mapping[str, Any] = field(default_factory=dict)


class OutputStore(Protocol):
    """Where assets, sidecars, run records and the report live; see the module docstring."""

    @property
    def location(self) -> str:
        """The root as the user wrote it (a folder, or ``s3://bucket/prefix``), for messages."""
        ...

    @property
    def staging(self) -> Path:
        """A local folder for ``.part`` files (the output root itself for a local store)."""
        ...

    async def open(self) -> None:
        """Check the store is usable before anything is paid for; clean up what a kill left."""
        ...

    async def close(self) -> None: ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists; cheap (a stat, or the listing made by :meth:`open`)."""
        ...

    def present(self, key: str, size: int | None) -> bool:
        """Whether ``key`` holds ``size`` bytes; cheap (a stat, or the listing made by :meth:`open`)."""
        ...

    async def publish(self, pub: Publication) -> PutOutcome:
        """Older work aside, the asset create-only, the sidecar last, the index: the delivery path."""
        ...

    async def adopt(self, candidates: Sequence[str], sidecar: str, *, owner: str, n: int) -> Adopted | None:
        """The first of ``candidates`` that its sidecar (``owner``'s, output ``n``) vouches for."""
        ...

    async def put_file(self, key: str, path: Path, *, sha256: str) -> PutOutcome:
        """Publish the local file ``path`` under ``key``, create-only; the file is consumed."""
        ...

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, sha256: str) -> PutOutcome:
        """Publish a byte stream create-only; its sha256 must equal ``sha256`` or nothing is kept."""
        ...

    async def put_sidecar(self, key: str, data: Mapping[str, Any]) -> None:
        """Write the sidecar (the commit marker) after its asset is in place."""
        ...

    async def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        """Replace a small object that is not an asset (run record, report)."""
        ...

    async def stat(self, key: str) -> StoredObject | None: ...

    async def verify(self, key: str, size: int, sha256: str) -> bool:
        """Whether ``key`` holds exactly ``size`` bytes with this sha256."""
        ...

    async def list_objects(self, prefix: str = "") -> list[StoredObject]:
        """Every object under ``prefix`` (parts, temps and the state folder excluded), sorted by key."""
        ...

    async def read_bytes(self, key: str) -> bytes | None: ...

    def read_stream(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks (memory stays flat)."""
        ...

    async def move_aside(self, key: str, *, area: str = ".stale", tag: str = "") -> str | None:
        """Move ``key`` (and nothing else) under ``area/``; returns the new key, ``None`` if absent."""
        ...

    async def index_records(self) -> list[dict[str, Any]]:
        """The published assets' records (index lines, or sidecars where there is no index)."""
        ...


def sidecar_key(asset_key: str) -> str:
    """The sidecar of an asset: the same stem, ``.json`` (the same for every extension)."""
    stem, _ext = posixpath.splitext(asset_key)
    return stem + ".json"


def aside_key(key: str, area: str, tag: str) -> str:
    """``<area>/<dir>/<stem>.<tag><ext>``: where an object moved aside goes."""
    directory, name = posixpath.split(key)
    stem, ext = posixpath.splitext(name)
    name = f"{stem}.{tag}{ext}" if tag else name
    return posixpath.join(area, directory, name) if directory else posixpath.join(area, name)

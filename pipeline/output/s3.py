"""The output store as an S3-compatible bucket (AWS, R2, GCS's S3 API, MinIO, SeaweedFS) on aiobotocore.

Object storage has no rename, so the local recipe (``.part``, fsync, rename) becomes:

- the download lands in a local ``.part`` (resumable with ``Range``, its sha256 computed while
  streaming), then streams to the bucket in ``part_size`` blocks: one ``PutObject`` for a small
  file, a multipart upload otherwise. Memory stays at most one block per upload in flight.
- Every block carries ``x-amz-checksum-sha256`` (the server refuses bytes that do not match),
  the whole file's sha256 is recomputed while reading and must equal the download's before the
  upload completes, and it is stored as ``x-amz-meta-sha256`` and in the sidecar.
- Writes are create-only (``If-None-Match: *`` on ``PutObject`` and ``CompleteMultipartUpload``).
  On 412 the existing object's sha256 decides: the same is "already published", another is
  an :class:`~pipeline.errors.OutputConflictError`, never an overwrite.
- The sidecar is written after its asset: the commit marker. Older work in the way moves under
  ``.stale/`` by copy-then-delete. The index is the set of sidecars (objects are not appendable).
- A failed upload is aborted; :meth:`S3OutputStore.open` aborts what a killed run left (one
  writer per prefix, as the run lock gives one run per state file), so no temporary object
  survives a kill.

Credentials, region, endpoint and profile come from the standard AWS configuration. botocore
exceptions become :mod:`pipeline.errors` in :func:`_mapped`, the one boundary; the messages
name the bucket and the operation, never a credential.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import structlog
from aiobotocore.config import AioConfig

from pipeline.crashpoints import crash_point
from pipeline.errors import (
    IntegrityError,
    OutputConflictError,
)
from pipeline.output import s3wire as wire
from pipeline.output.store import Adopted, Publication, PutOutcome, StoredObject, aside_key, sidecar_key

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ["S3OutputStore"]

_log = structlog.get_logger("pipeline.output.s3")
_MiB = 1024 * 1024
_HIDDEN_TOP = (".stale/", ".rejected/")


class S3OutputStore:
    """:class:`~pipeline.output.store.OutputStore` on ``s3://bucket/prefix``; use between open/close."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        staging: Path,
        part_size: int = 8 * _MiB,
        uploads: int = 4,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.bucket, self.prefix, self._staging = bucket, prefix.strip("/"), Path(staging)
        self.part_size = part_size
        #: Uploads in flight at once: each holds at most one block in memory.
        self._uploads = anyio.CapacityLimiter(uploads)
        self._client_options = dict(client_options or {})
        self._stack: AsyncExitStack | None = None
        self._client: S3Client | None = None
        #: Keys (under the prefix) and sizes found by :meth:`open`: what is published already.
        self._listing: dict[str, int] = {}

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def staging(self) -> Path:
        return self._staging

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3OutputStore used before open()")
        return self._client

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _mapped(self, operation: str, key: str = "", *, unavailable: bool = False) -> Any:
        where = f"s3://{self.bucket}/{self._full(key)}" if key else f"bucket {self.bucket!r}"
        return wire.mapped(where, operation, unavailable=unavailable)

    def _short(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    # -- lifetime ------------------------------------------------------------------------------------

    async def open(self) -> None:
        """HeadBucket (missing bucket or refused credentials: exit 2 before anything is paid),
        abort multipart uploads a killed run left, list what is published."""
        self._stack = AsyncExitStack()
        config = AioConfig(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32)
        session = wire.session()
        with self._mapped("connect", unavailable=True):
            self._client = await self._stack.enter_async_context(
                session.create_client("s3", config=config, **self._client_options)
            )
        with self._mapped("HeadBucket", unavailable=True):
            await self.client.head_bucket(Bucket=self.bucket)
        await anyio.to_thread.run_sync(lambda: self._staging.mkdir(parents=True, exist_ok=True))
        await self.abort_stale_uploads()
        self._listing = {o.key: o.bytes for o in await self.list_objects(include_hidden=True)}

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._client = None

    async def abort_stale_uploads(self) -> int:
        """Abort every multipart upload under the prefix (a run killed mid-upload left them)."""
        aborted = 0
        with self._mapped("ListMultipartUploads"):
            pages = self.client.get_paginator("list_multipart_uploads")
            async for page in pages.paginate(Bucket=self.bucket, Prefix=self._full("")):
                for upload in page.get("Uploads", []):
                    await self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        if aborted:
            _log.warning("stale_uploads_aborted", count=aborted, where=self.location)
        return aborted

    def exists(self, key: str) -> bool:
        return key in self._listing

    def present(self, key: str, size: int | None) -> bool:
        return self._listing.get(key) == size

    # -- the delivery path ---------------------------------------------------------------------------

    async def publish(self, pub: Publication) -> PutOutcome:
        """Older work aside, the asset create-only from its part, the sidecar last."""
        if pub.key in self._listing:
            await self._set_aside_stale(pub)
        outcome = await self.put_file(pub.key, pub.part, sha256=pub.sha256)
        await self.put_sidecar(sidecar_key(pub.key), {**pub.sidecar, "path": pub.key})
        crash_point("after_replace_before_record")
        return outcome

    async def _set_aside_stale(self, pub: Publication) -> None:
        side = await self.read_bytes(sidecar_key(pub.key))
        data = wire.json_object(side)
        old_key = str(data.get("key", "unknown"))
        if old_key == pub.owner and data.get("sha256") == pub.sha256:
            found = await self.stat(pub.key)  # its sidecar vouches for it, but was it cut or replaced?
            if found is None or (found.bytes == pub.bytes and found.sha256 in (None, pub.sha256)):
                return  # this very asset: the create-only put answers "already"
        if not data and (found := await self.stat(pub.key)) is not None and found.sha256 == pub.sha256:
            return  # a kill between the asset and its sidecar: the same bytes, kept
        for key in (pub.key, sidecar_key(pub.key)):
            await self.move_aside(key, area=".stale", tag=old_key[:12])
        _log.warning("stale_output_moved", path=self._full(pub.key), old_key=old_key)

    async def adopt(self, candidates: Sequence[str], sidecar: str, *, owner: str, n: int) -> Adopted | None:
        if sidecar not in self._listing:
            return None  # the usual case, known from the listing: no request
        data = wire.json_object(await self.read_bytes(sidecar))
        if data.get("key") != owner or data.get("n", n) != n:
            return None
        try:
            size, digest = int(data["bytes"]), str(data["sha256"])
        except (KeyError, TypeError, ValueError):
            return None
        for key in candidates:
            if key in self._listing and await self.verify(key, size, digest):
                return Adopted(key, size, digest)
        return None

    # -- create-only puts ----------------------------------------------------------------------------

    async def put_file(self, key: str, path: Path, *, sha256: str) -> PutOutcome:
        """Stream the local file to ``key`` (create-only), then remove it: it is published."""
        fd = await anyio.to_thread.run_sync(lambda: os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW))
        try:
            outcome = await self._upload(key, wire.file_blocks(fd, self.part_size), sha256)
        finally:
            os.close(fd)
        await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
        return outcome

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, sha256: str) -> PutOutcome:
        return await self._upload(key, wire.reblock(chunks, self.part_size), sha256)

    async def _upload(self, key: str, blocks: AsyncIterator[bytes], sha256: str) -> PutOutcome:
        async with self._uploads:
            hasher = hashlib.sha256()
            first = await anext(blocks, b"")
            await anyio.to_thread.run_sync(hasher.update, first)
            second = await anext(blocks, None) if len(first) >= self.part_size else None
            if second is None:
                if hasher.hexdigest() != sha256:
                    raise IntegrityError(f"{self._full(key)}: the bytes do not match sha256 {sha256[:12]}…")
                try:
                    with self._mapped("PutObject", key):
                        await self.client.put_object(
                            Bucket=self.bucket,
                            Key=self._full(key),
                            Body=first,
                            ChecksumSHA256=wire.b64(sha256),
                            Metadata={"sha256": sha256},
                            ContentType=wire.content_type(key),
                            IfNoneMatch="*",
                        )
                except wire.Precondition:
                    return await self._existing(key, sha256)
                self._listing[key] = len(first)
                return PutOutcome.CREATED
            try:
                size = await wire.multipart_upload(
                    self.client, self.bucket, self._full(key), (first, second, blocks), hasher, sha256
                )
            except wire.Precondition:
                return await self._existing(key, sha256)
            self._listing[key] = size
            return PutOutcome.CREATED

    async def _existing(self, key: str, sha256: str) -> PutOutcome:
        """412: someone published ``key`` first. The same bytes are fine; others are a conflict."""
        found = await self.stat(key)
        if found is not None and found.sha256 == sha256:
            self._listing[key] = found.bytes
            return PutOutcome.ALREADY
        raise OutputConflictError(
            f"{self._full(key)} in bucket {self.bucket} already holds other bytes "
            f"(sha256 {(found.sha256 if found else None) or 'unknown'}); not overwritten"
        )

    # -- plain objects -------------------------------------------------------------------------------

    async def put_sidecar(self, key: str, data: Mapping[str, Any]) -> None:
        text = json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        await self.put_bytes(key, text.encode(), content_type="application/json")

    async def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        with self._mapped("PutObject", key):
            await self.client.put_object(
                Bucket=self.bucket,
                Key=self._full(key),
                Body=data,
                ChecksumSHA256=wire.checksum(data),
                **extra,  # type: ignore[arg-type]
            )
        self._listing[key] = len(data)

    async def stat(self, key: str) -> StoredObject | None:
        try:
            with self._mapped("HeadObject", key):
                head = await self.client.head_object(
                    Bucket=self.bucket, Key=self._full(key), ChecksumMode="ENABLED"
                )
        except wire.NotFound:
            return None
        digest = head.get("Metadata", {}).get("sha256")
        if digest is None and (checksum := head.get("ChecksumSHA256")) and "-" not in checksum:
            digest = base64.b64decode(checksum).hex()
        return StoredObject(key, int(head["ContentLength"]), digest)

    async def verify(self, key: str, size: int, sha256: str) -> bool:
        """Size and sha256 as stored with the object (the server checked every block's checksum)."""
        found = await self.stat(key)
        return found is not None and found.bytes == size and found.sha256 == sha256

    async def list_objects(self, prefix: str = "", *, include_hidden: bool = False) -> list[StoredObject]:
        found: list[StoredObject] = []
        with self._mapped("ListObjectsV2"):
            pages = self.client.get_paginator("list_objects_v2")
            async for page in pages.paginate(Bucket=self.bucket, Prefix=self._full(prefix)):
                for obj in page.get("Contents", []):
                    key = self._short(obj["Key"])
                    if include_hidden or prefix.startswith(_HIDDEN_TOP) or not key.startswith(_HIDDEN_TOP):
                        found.append(StoredObject(key, int(obj["Size"])))
        return sorted(found, key=lambda o: o.key)

    async def read_bytes(self, key: str) -> bytes | None:
        try:
            with self._mapped("GetObject", key):
                answer = await self.client.get_object(Bucket=self.bucket, Key=self._full(key))
                async with answer["Body"] as body:
                    data: bytes = await body.read()
                    return data
        except wire.NotFound:
            return None

    async def read_stream(self, key: str) -> AsyncIterator[bytes]:
        with self._mapped("GetObject", key):
            answer = await self.client.get_object(Bucket=self.bucket, Key=self._full(key))
            async with answer["Body"] as body:
                async for chunk in body.iter_chunks(_MiB):
                    yield chunk

    async def move_aside(self, key: str, *, area: str = ".stale", tag: str = "") -> str | None:
        """Copy then delete: object storage has no rename."""
        target = aside_key(key, area, tag)
        try:
            with self._mapped("CopyObject", key):
                await self.client.copy_object(
                    Bucket=self.bucket,
                    Key=self._full(target),
                    CopySource={"Bucket": self.bucket, "Key": self._full(key)},
                )
        except wire.NotFound:
            return None
        with self._mapped("DeleteObject", key):
            await self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        self._listing[target] = self._listing.pop(key, 0)
        return target

    async def index_records(self) -> list[dict[str, Any]]:
        """The sidecars whose asset is present: the bucket's index (one GET per sidecar, 16 at once)."""
        objects = await self.list_objects()
        present = {o.key for o in objects}
        sidecars = [o.key for o in objects if o.key.endswith(".json") and not o.key.startswith("runs/")]
        records: dict[str, dict[str, Any]] = {}
        limit = anyio.CapacityLimiter(16)

        async def read(key: str) -> None:
            async with limit:
                data = wire.json_object(await self.read_bytes(key))
            if isinstance(data.get("path"), str) and "key" in data and data["path"] in present:
                records[key] = data

        async with anyio.create_task_group() as tg:
            for key in sidecars:
                tg.start_soon(read, key)
        return [records[k] for k in sorted(records)]

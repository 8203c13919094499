"""The S3 store's wire side: the one botocore error boundary, the multipart upload, and byte plumbing.

Kept apart from :mod:`pipeline.output.s3` (the store's logic) so each stays readable.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import mimetypes
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import anyio.to_thread
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from pipeline.crashpoints import crash_point
from pipeline.errors import IntegrityError, OutputError, OutputUnavailableError

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = [
    "NotFound",
    "Precondition",
    "b64",
    "checksum",
    "content_type",
    "file_blocks",
    "json_object",
    "mapped",
    "multipart_upload",
    "reblock",
    "session",
]

_REFUSED = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)
_MISSING_BUCKET = frozenset({"404", "NoSuchBucket"})
_BAD_DIGEST = frozenset({"BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"})


def b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def code_of(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def multipart_upload(
    client: S3Client,
    bucket: str,
    full: str,
    blocks: tuple[bytes, bytes, AsyncIterator[bytes]],
    hasher: Any,
    sha256: str,
) -> int:
    """A multipart upload of ``blocks`` (the first hashed already), completed create-only.

    Every part carries its sha256; the whole must hash to ``sha256`` before the upload completes.
    Any failure, cancellation included, aborts it. Returns the size; :class:`Precondition` on 412.
    """
    where = f"s3://{bucket}/{full}"
    with mapped(where, "CreateMultipartUpload"):
        created = await client.create_multipart_upload(
            Bucket=bucket,
            Key=full,
            ChecksumAlgorithm="SHA256",
            Metadata={"sha256": sha256},
            ContentType=content_type(full),
        )
    upload_id = created["UploadId"]
    try:
        parts, size = await _upload_parts(client, bucket, full, upload_id, blocks, hasher)
        if hasher.hexdigest() != sha256:
            raise IntegrityError(f"{full}: the bytes do not match sha256 {sha256[:12]}…; upload aborted")
        with mapped(where, "CompleteMultipartUpload"):
            await client.complete_multipart_upload(
                Bucket=bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                IfNoneMatch="*",
            )
    except BaseException:
        with anyio.CancelScope(shield=True), contextlib.suppress(ClientError, BotoCoreError):
            await client.abort_multipart_upload(Bucket=bucket, Key=full, UploadId=upload_id)
        raise
    return size


async def _upload_parts(
    client: S3Client,
    bucket: str,
    full: str,
    upload_id: str,
    blocks: tuple[bytes, bytes, AsyncIterator[bytes]],
    hasher: Any,
) -> tuple[list[dict[str, Any]], int]:
    """Upload every block as a part with its sha256 (hashing all but the first into ``hasher``);
    returns the parts to complete with and the size."""
    first, second, rest = blocks
    where = f"s3://{bucket}/{full}"
    parts: list[dict[str, Any]] = []
    size = 0
    block: bytes | None = first
    while block is not None:
        if parts:
            await anyio.to_thread.run_sync(hasher.update, block)
        part_sum = await anyio.to_thread.run_sync(checksum, block)
        with mapped(where, "UploadPart"):
            answer = await client.upload_part(
                Bucket=bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=len(parts) + 1,
                Body=block,
                ChecksumSHA256=part_sum,
            )
        parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"], "ChecksumSHA256": part_sum})
        size += len(block)
        crash_point("mid_upload")  # a part stored, the upload not complete
        block = second if len(parts) == 1 else await anext(rest, None)
    return parts, size


_LOADER: list[Any] = []


def session() -> Any:
    """A fresh session (it reads the environment and profiles now) sharing one loaded service model.

    Loading botocore's S3 model costs ~0.5 s; a command that opens two stores pays it once.
    """
    session = get_session()
    if _LOADER:
        session.register_component("data_loader", _LOADER[0])
    else:
        _LOADER.append(session.get_component("data_loader"))
    return session


class Precondition(Exception):
    """412 on a create-only write (internal: the caller reads the existing object)."""


class NotFound(Exception):
    """404 on an object (internal: the caller treats it as absent)."""


@contextlib.contextmanager
def mapped(where: str, operation: str, *, unavailable: bool = False) -> Iterator[None]:
    """The one boundary where botocore exceptions become the project's errors (messages hold no secret).

    ``where`` names the bucket or the object (never a credential); 412 and 404 become the internal
    :class:`Precondition` and :class:`NotFound` that the store turns into outcomes.
    """
    try:
        yield
    except ClientError as exc:
        code = code_of(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "412") or status == 412:
            raise Precondition from None
        if (code in _MISSING_BUCKET and operation == "HeadBucket") or code == "NoSuchBucket":
            raise OutputUnavailableError(
                f"{where} does not exist (or these credentials cannot see it); create it or fix --out"
            ) from None
        if code in ("NoSuchKey", "404", "NotFound"):
            raise NotFound from None
        if code in _REFUSED:
            raise OutputUnavailableError(
                f"{where}: the AWS credentials were refused ({code}) on {operation}; check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE"
            ) from None
        if code in _BAD_DIGEST:
            raise IntegrityError(
                f"{where}: the server refused the bytes: checksum mismatch ({code})"
            ) from None
        error = OutputUnavailableError if unavailable else OutputError
        raise error(f"{where}: {operation} failed: {code or status}") from None
    except (NoCredentialsError, PartialCredentialsError):
        raise OutputUnavailableError(
            f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE)"
        ) from None
    except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:  # no answer, or a body cut short
        error = OutputUnavailableError if unavailable else OutputError
        raise error(f"{where}: {operation} failed: {type(exc).__name__}") from None


def content_type(key: str) -> str:
    """What a browser opening the bucket's link should see (``.jpeg`` → ``image/jpeg``)."""
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def checksum(data: bytes) -> str:
    """The ``x-amz-checksum-sha256`` value of ``data``: base64 of the binary digest."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def json_object(data: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def file_blocks(fd: int, size: int) -> AsyncIterator[bytes]:
    """The file in ``size`` blocks, read in a worker thread (one hop per block)."""
    while block := await anyio.to_thread.run_sync(read_block, fd, size):
        yield block


def read_block(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left and (chunk := os.read(fd, left)):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


async def reblock(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Any chunking → blocks of exactly ``size`` bytes (the last one shorter)."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)

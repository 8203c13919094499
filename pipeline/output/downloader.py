"""Fetch one asset URL into a ``.part`` file (checked, bounded, resumable), then publish it atomically.

This is plan §2.2: the URL and every redirect hop pass :meth:`Downloader.check_url`
before a connection is made; the body streams to ``<final>.part`` while a byte
counter (hard cap) and a sha256 run; the magic bytes decide the type; the size is
checked against ``Content-Length``/``Content-Range``; the part is fsynced. A body of
known length is received past aiohttp's reader, straight into aligned buffers
(:mod:`pipeline.output.receive`); others go through :meth:`Downloader._copy`. A later
call resumes a kept part with ``Range`` (206 appended after re-hashing what is
there; 200 or a bad 206 or 416 restart from zero, the curl test 38 lesson).
:meth:`Downloader.publish` is ``os.replace`` plus a directory fsync, so a final
name only ever holds a whole file. This module is the one boundary where aiohttp
and ``OSError`` failures of a download become :class:`~pipeline.errors.DownloadError`.
The ``.part`` file itself (resume check, append-and-hash sink) lives in
:mod:`pipeline.output.part`, the magic-byte test in :mod:`pipeline.output.magic`.
"""

from __future__ import annotations

import errno
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import anyio.to_thread
from aiohttp import hdrs
from yarl import URL

from pipeline.errors import (
    AssetGoneError,
    DownloadError,
    IntegrityError,
    TransientDownloadError,
    UnsafeAssetError,
)
from pipeline.output.local import replace_part
from pipeline.output.magic import HEAD, Kind, require_kind, sniff
from pipeline.output.part import PartSink, discard, resumable
from pipeline.output.receive import receive
from pipeline.output.sidecar import strip_query

__all__ = ["LOOPBACK_HOSTS", "Downloader", "Fetched", "Kind", "TransientDownloadError", "sniff"]

#: Hosts that may be fetched over plain http by default: loopback only (tests, the sandbox).
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})

_GiB = 1024**3
#: What aiohttp's reader may buffer (twice this) before it pauses the socket. Small, because a body
#: of known length is taken over by :mod:`pipeline.output.receive` only after the headers: with 1 MiB
#: here, ~2 MiB of every 5 MB file had already gone through aiohttp's reader (and its copies) by then.
_READ_BUFSIZE = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_GONE = frozenset({403, 404, 410})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_NUMERIC_HOST = re.compile(r"(?i)(0x[0-9a-f]*|[0-9]+)")  # '2130706433', '0x7f': resolvers read these as IPs


@dataclass(frozen=True, slots=True, kw_only=True)
class Fetched:
    """A complete, fsynced ``.part`` file, ready for :meth:`Downloader.publish`."""

    part_path: Path
    #: Size of the whole file (resumed bytes included).
    bytes: int
    #: sha256 of the whole file, hex.
    sha256: str
    #: The type by magic bytes, never by the server's name or Content-Type.
    kind: Kind
    #: The extension to publish under (the same word as ``kind``).
    ext: str
    #: What the server claimed, for the record only.
    content_type: str
    #: Bytes kept from an earlier attempt (0 when the download started from zero).
    resumed_from: int


async def _strip_credentials(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Remove Authorization and Cookie however they got in (session defaults, auth=, netrc, cookie jar)."""
    request.headers.popall(hdrs.AUTHORIZATION, None)
    request.headers.popall(hdrs.COOKIE, None)
    return await handler(request)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP-date: the caller's backoff applies


class Downloader:
    """Downloads asset URLs with a session that carries no credentials.

    ``root`` (the output root) turns on the tree checks of :mod:`pipeline.output.layout`
    for part and final paths; without it only the final component is guarded
    (``O_NOFOLLOW``). ``allow_http_hosts`` are the only hosts allowed over plain
    http and the only IP literals or loopback names allowed at all.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        max_bytes: int = 2 * _GiB,
        allow_http_hosts: frozenset[str] = LOOPBACK_HOSTS,
        chunk_bytes: int = 1024 * 1024,
        max_redirects: int = 5,
        root: Path | None = None,
        direct_io: bool = True,
        receive_body: bool = True,
    ) -> None:
        if max_bytes <= 0 or chunk_bytes <= 0 or max_redirects < 0:
            raise ValueError("max_bytes and chunk_bytes must be positive, max_redirects not negative")
        self._session = session
        self._max_bytes = max_bytes
        self._allow = frozenset(h.lower().strip("[]") for h in allow_http_hosts)
        self._chunk = chunk_bytes
        self._max_redirects = max_redirects
        self._root = root
        self._direct = direct_io  # O_DIRECT part writes where the file system allows (output.direct)
        self._receive = receive_body  # bodies of known length past aiohttp's reader (output.receive)

    def check_url(self, url: str | URL) -> URL:
        """``url`` parsed, if we may fetch it: https (or http to an allowed host), no userinfo, no IP literal.

        Raises:
            UnsafeAssetError: anything else, before any connection is made.
        """
        try:
            parsed = url if isinstance(url, URL) else URL(url)
            host = (parsed.host or "").lower().rstrip(".")
        except (ValueError, TypeError):
            raise UnsafeAssetError(f"not a URL: {strip_query(str(url))!r}") from None
        where = strip_query(str(url))
        if not parsed.is_absolute() or not host:
            raise UnsafeAssetError(f"{where}: not an absolute URL with a host")
        if parsed.raw_user is not None or parsed.raw_password is not None:
            raise UnsafeAssetError(f"{parsed.scheme}://{host}/…: credentials in the URL are refused")
        if host in self._allow:
            if parsed.scheme not in ("http", "https"):
                raise UnsafeAssetError(f"{where}: scheme {parsed.scheme!r} is refused")
            return parsed
        if parsed.scheme != "https":
            raise UnsafeAssetError(f"{where}: only https is allowed for {host!r}")
        if _is_ip_literal(host) or host == "localhost" or host.endswith(".localhost"):
            raise UnsafeAssetError(f"{where}: IP literals and loopback names are refused")
        return parsed

    async def fetch(self, url: str, part_path: Path) -> Fetched:
        """Stream ``url`` into ``part_path``, resuming a part already there; see the module docstring.

        Raises:
            UnsafeAssetError: refused URL or redirect, too many redirects, over ``max_bytes``, not a
                JPEG/PNG/WebP/MP4 by its magic bytes, or a symlink in the way (the part is removed).
            AssetGoneError: 403/404/410: the URL expired; the part is kept.
            TransientDownloadError: 429/5xx or no connection; the part is kept.
            IntegrityError: the body stopped short or its length disagrees; the part is kept.
            DownloadError: any other status, or the part cannot be written (the part is removed).
        """
        self.check_url(url)
        # A few lstats, a mkdir and at most a 16-byte read: cheaper on the loop than a thread hop.
        offset, kind = resumable(part_path, self._root, self._max_bytes)
        if offset:
            fetched = await self._attempt(url, part_path, offset, kind)
            if fetched is not None:
                return fetched
        fetched = await self._attempt(url, part_path, 0, None)
        if fetched is None:  # pragma: no cover - _status() never restarts a request sent without Range
            raise DownloadError(f"{strip_query(url)}: no usable answer")
        return fetched

    async def publish(self, fetched: Fetched, final_path: Path) -> Path:
        """Move the part onto ``final_path`` atomically and durably; refuses a symlink there.

        Raises:
            UnsafeAssetError: ``final_path`` is a symlink or not a regular file, or outside the root.
            IntegrityError: the part is missing or no longer the size that was fetched.
            DownloadError: the rename failed (the part is kept).
        """
        return await anyio.to_thread.run_sync(self.publish_blocking, fetched, final_path)

    # -- file system (run in a worker thread) --------------------------------------------------

    def publish_blocking(self, fetched: Fetched, final: Path) -> Path:
        """:meth:`publish` for a caller already in a worker thread (one hop for several file steps)."""
        return replace_part(self._root, fetched.part_path, fetched.bytes, final)

    # -- network -------------------------------------------------------------------------------

    async def _attempt(self, url: str, part: Path, offset: int, kind: Kind | None) -> Fetched | None:
        """One request (plus redirects); ``None`` means "the resume was refused: start from zero"."""
        response = await self._get(url, offset)
        async with response:
            expected = self._status(response, offset)
            if expected is None:
                return None
            start, total = expected
            return await self._stream(response, part, start, kind if start else None, total)

    async def _get(self, url: str, offset: int) -> aiohttp.ClientResponse:
        """GET with redirects followed by hand, each hop checked; no credentials ever sent."""
        headers = {hdrs.ACCEPT_ENCODING: "identity"}
        if offset:
            headers[hdrs.RANGE] = f"bytes={offset}-"
        current: URL | str = url
        for _hop in range(self._max_redirects + 1):
            target = self.check_url(current)
            try:
                response = await self._session.get(
                    target,
                    headers=headers,
                    allow_redirects=False,
                    raise_for_status=False,  # statuses are mapped in _status, whatever the session says
                    auto_decompress=True,  # a server that gzips anyway still yields the real bytes
                    middlewares=(_strip_credentials,),
                    read_bufsize=_READ_BUFSIZE,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransientDownloadError(
                    f"{strip_query(str(target))}: no answer ({type(exc).__name__})"
                ) from exc
            if response.status not in _REDIRECTS:
                return response
            location = response.headers.get(hdrs.LOCATION, "")
            response.release()
            if not location:
                raise DownloadError(f"{strip_query(str(target))}: HTTP {response.status} without Location")
            try:
                current = target.join(URL(location))
            except ValueError:
                raise UnsafeAssetError(f"{strip_query(str(target))}: unusable redirect") from None
        raise UnsafeAssetError(f"{strip_query(url)}: more than {self._max_redirects} redirects")

    def _status(self, response: aiohttp.ClientResponse, offset: int) -> tuple[int, int | None] | None:
        """(Where the body starts, the whole size if known); an error; or ``None``: restart from zero."""
        status = response.status
        where = strip_query(str(response.url))
        if status in _GONE:
            raise AssetGoneError(
                f"{where}: HTTP {status}: the asset URL expired or was revoked; read the job again"
            )
        if status == 429 or status >= 500:
            retry_after = _retry_after(response.headers.get(hdrs.RETRY_AFTER))
            raise TransientDownloadError(f"{where}: HTTP {status}", retry_after_s=retry_after)
        encoded = response.headers.get(hdrs.CONTENT_ENCODING, "identity").lower() not in ("", "identity")
        if status == 200:  # without a Range, or a server that ignored it: the whole file, from zero
            return 0, None if encoded else response.content_length
        if status == 206 and offset and not encoded:
            match = _CONTENT_RANGE.fullmatch(response.headers.get(hdrs.CONTENT_RANGE, "").strip())
            if match and int(match[1]) == offset and int(match[2]) >= offset:
                end = int(match[2])
                total = None if match[3] == "*" else int(match[3])
                length = response.content_length
                if (total is None or total == end + 1) and (length is None or length == end - offset + 1):
                    return offset, end + 1
        if status in (206, 416) and offset:
            return None  # a range we did not ask for, or none at all: start over
        raise DownloadError(f"{where}: unexpected HTTP {status}")

    async def _stream(
        self, response: aiohttp.ClientResponse, part: Path, offset: int, kind: Kind | None, total: int | None
    ) -> Fetched:
        where = strip_query(str(response.url))
        if total is not None and total > self._max_bytes:
            await anyio.to_thread.run_sync(discard, part)
            raise UnsafeAssetError(f"{where}: {total} bytes declared, over the {self._max_bytes}-byte cap")
        sink = PartSink(part, offset, self._chunk, direct=self._direct)
        try:
            try:
                received = None
                if total is not None and self._receive:  # straight into aligned buffers (output.receive)
                    limits = self._session.timeout
                    received = await receive(response, sink, offset, kind, total, where, limits)
                size, kind = received or await self._copy(response, sink, offset, kind, where)
            finally:
                sink.close()
        except DownloadError as exc:  # unsafe content goes; a short body stays for the resume
            if not exc.retryable:
                await anyio.to_thread.run_sync(discard, part)
            raise
        except OSError as exc:
            await anyio.to_thread.run_sync(discard, part)
            if exc.errno == errno.ELOOP:
                raise UnsafeAssetError(f"{part} is a symlink; refusing to write through it") from exc
            raise DownloadError(f"{part}: cannot write: {exc.strerror}") from exc
        if total is not None and size != total:
            raise IntegrityError(f"{where}: got {size} of {total} bytes; the part is kept for a resume")
        return Fetched(
            part_path=part,
            bytes=size,
            sha256=sink.hexdigest(),
            kind=kind,
            ext=kind,
            content_type=response.headers.get(hdrs.CONTENT_TYPE, ""),
            resumed_from=offset,
        )

    async def _copy(
        self, response: aiohttp.ClientResponse, sink: PartSink, offset: int, kind: Kind | None, where: str
    ) -> tuple[int, Kind]:
        """Body → part: cap and magic checked per socket read; hash and write per ``chunk_bytes`` batch.

        Each batch goes to :meth:`PartSink.absorb` in one worker-thread hop, so the event loop
        only reads sockets; the last one is fsynced too. Returns the file's size and type.
        """
        size = offset
        head = b""  # the first bytes, held back until the magic is known (at most HEAD + one read)
        batch: list[bytes] = []
        batched = 0
        content = response.content
        try:
            while True:
                chunk, http_chunk_end = await content.readchunk()  # one socket read: never joined or sliced
                if not chunk:
                    if http_chunk_end:
                        continue  # the end of one chunk of a chunked body: more may follow
                    break
                size += len(chunk)
                if size > self._max_bytes:
                    raise UnsafeAssetError(f"{where}: more than the {self._max_bytes}-byte cap; aborted")
                if kind is None:
                    head += chunk
                    if len(head) < HEAD:
                        continue
                    kind, chunk, head = require_kind(head, where), head, b""
                batch.append(chunk)
                batched += len(chunk)
                if batched >= self._chunk:
                    await anyio.to_thread.run_sync(sink.absorb, batch)
                    batch, batched = [], 0
        except (aiohttp.ClientError, TimeoutError) as exc:  # ClientPayloadError, reset, sock_read timeout
            # A resume must build on bytes that exist: what arrived (past the magic check) is kept.
            await anyio.to_thread.run_sync(sink.absorb, batch, True)
            raise IntegrityError(
                f"{where}: connection lost after {size - len(head)} bytes ({type(exc).__name__}); "
                "the part is kept for a resume"
            ) from exc
        if kind is None:  # the whole body was shorter than the magic window
            kind = require_kind(head, where)
            batch.append(head)
        await anyio.to_thread.run_sync(sink.absorb, batch, True)
        return size, kind


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_NUMERIC_HOST.fullmatch(host.rsplit(".", 1)[-1]))
    return True

"""The downloader against a real aiohttp server on 127.0.0.1: resume, caps, magic, URL policy, publish."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import socket
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler

from pipeline.errors import AssetGoneError, DownloadError, IntegrityError, UnsafeAssetError
from pipeline.output.downloader import Downloader, Fetched, TransientDownloadError, sniff

HEADS = {
    "jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "webp": b"RIFF\x00\x00\x00\x00WEBPVP8X",
    "mp4": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00",
}
SIZE = 300_000
CHUNK = 64 * 1024


def payload(kind: str, size: int = SIZE) -> bytes:
    """Deterministic bytes that start with ``kind``'s magic (the downloader reads nothing else)."""
    head = HEADS[kind]
    return head + random.Random(kind).randbytes(size - len(head))


FILES = {f"a.{kind}": payload(kind) for kind in HEADS}
FILES["heic.bin"] = b"\x00\x00\x00\x18ftypheic" + bytes(1000)
FILES["tiny.jpeg"] = b"abc"
#: For 5-byte batches: a thousand reads of the body, each batch a worker-thread hop (300 KB took 12-42 s).
FILES["b.png"] = payload("png", 5_003)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Origin:
    """A loopback asset host that records what it was asked."""

    server: TestServer | None = None
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def headers_of(self, prefix: str) -> list[dict[str, str]]:
        return [h for p, h in self.requests if p.startswith(prefix)]


def _range_start(request: web.Request) -> int | None:
    value = request.headers.get("Range", "")
    if value.startswith("bytes=") and value.endswith("-"):
        return int(value[6:-1])
    return None


def _full(data: bytes, content_type: str = "application/octet-stream") -> web.Response:
    return web.Response(body=data, headers={"Content-Type": content_type})


def _ranged(request: web.Request, data: bytes) -> web.Response:
    start = _range_start(request)
    if start is None:
        return _full(data)
    if start >= len(data):
        return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
    headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
    return web.Response(status=206, body=data[start:], headers=headers)


def make_app(origin: Origin) -> web.Application:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin.requests.append((request.path, dict(request.headers)))
        return await handler(request)

    async def file(request: web.Request) -> web.StreamResponse:
        return _ranged(request, FILES[request.match_info["name"]])

    async def norange(request: web.Request) -> web.StreamResponse:
        return _full(FILES[request.match_info["name"]])

    async def trunc(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        origin.hits[name] = origin.hits.get(name, 0) + 1
        data = FILES[name]
        if origin.hits[name] > 1:
            return _ranged(request, data)
        response = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.close()  # fewer bytes than Content-Length, then the connection is gone
        return response

    async def r416(request: web.Request) -> web.StreamResponse:
        data = FILES[request.match_info["name"]]
        if _range_start(request) is not None:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        return _full(data)

    async def badrange(request: web.Request) -> web.StreamResponse:
        data = FILES[request.match_info["name"]]
        if _range_start(request) is not None:  # answers from 0 whatever was asked
            return web.Response(
                status=206, body=data, headers={"Content-Range": f"bytes 0-{len(data) - 1}/*"}
            )
        return _full(data)

    async def gzipped(request: web.Request) -> web.StreamResponse:
        body = gzip.compress(FILES[request.match_info["name"]])
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "image/png"})

    async def status(request: web.Request) -> web.StreamResponse:
        return web.Response(status=int(request.match_info["code"]), headers={"Retry-After": "7"}, text="no")

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["to"])

    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/loop")

    async def html(request: web.Request) -> web.StreamResponse:
        return _full(b"<!DOCTYPE html><html><body>Signature expired</body></html>", "text/html")

    async def m3u8(request: web.Request) -> web.StreamResponse:
        return _full(b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:1.0,\nv.ts\n", "video/mp4")

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        block = bytes(CHUNK)
        try:
            await response.write(HEADS["jpeg"])
            for _ in range(4096):  # 256 MiB: far past any cap a test sets
                await response.write(block)
        except ConnectionResetError:
            pass
        return response

    async def declared_huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(10**10), "Content-Type": "image/jpeg"})
        await response.prepare(request)
        await response.write(HEADS["jpeg"])
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application(middlewares=[record])
    app.router.add_get("/file/{name}", file)
    app.router.add_get("/norange/{name}", norange)
    app.router.add_get("/trunc/{name}", trunc)
    app.router.add_get("/r416/{name}", r416)
    app.router.add_get("/badrange/{name}", badrange)
    app.router.add_get("/gzip/{name}", gzipped)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop)
    app.router.add_get("/html", html)
    app.router.add_get("/m3u8", m3u8)
    app.router.add_get("/endless", endless)
    app.router.add_get("/declared-huge", declared_huge)
    return app


async def _start() -> Origin:
    origin = Origin()
    origin.server = TestServer(make_app(origin), host="127.0.0.1", port=0)
    await origin.server.start_server()
    return origin


@pytest.fixture(name="origin")
async def _origin() -> AsyncIterator[Origin]:
    origin = await _start()
    yield origin
    assert origin.server is not None
    await origin.server.close()


@pytest.fixture(name="cdn")
async def _cdn() -> AsyncIterator[Origin]:
    """A second loopback host on another port."""
    origin = await _start()
    yield origin
    assert origin.server is not None
    await origin.server.close()


@dataclass
class Traced:
    session: aiohttp.ClientSession
    started: list[str]


@pytest.fixture(name="traced")
async def _traced() -> AsyncIterator[Traced]:
    """A session that carries credentials it must never send, and counts every request it starts."""
    started: list[str] = []

    async def on_start(
        _session: aiohttp.ClientSession, _ctx: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        started.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    jar = aiohttp.CookieJar(unsafe=True)  # would send cookies to 127.0.0.1 if nothing stripped them
    jar.update_cookies({"session": "cookie-secret"})
    async with aiohttp.ClientSession(
        headers={"Authorization": "Bearer sk-must-not-leak"},
        cookie_jar=jar,
        trace_configs=[trace],
        timeout=aiohttp.ClientTimeout(total=10),
    ) as session:
        yield Traced(session, started)


@pytest.fixture(name="downloader")
def _downloader(traced: Traced, tmp_path: Path) -> Downloader:
    return Downloader(traced.session, root=tmp_path, chunk_bytes=CHUNK)


def part_in(tmp_path: Path, name: str = "a.part") -> Path:
    return tmp_path / "item" / name


class TestFetch:
    @pytest.mark.parametrize("kind", sorted(HEADS))
    async def test_happy_path(
        self, downloader: Downloader, origin: Origin, tmp_path: Path, kind: str
    ) -> None:
        """Each format arrives whole: size, sha256 and type from magic, into a part under a new directory."""
        part = part_in(tmp_path)
        fetched = await downloader.fetch(origin.url(f"/file/a.{kind}"), part)
        data = FILES[f"a.{kind}"]
        assert fetched == Fetched(
            part_path=part,
            bytes=len(data),
            sha256=sha(data),
            kind=kind,  # type: ignore[arg-type]
            ext=kind,
            content_type="application/octet-stream",
            resumed_from=0,
        )
        assert part.read_bytes() == data
        [(_, headers)] = origin.requests
        assert headers["Accept-Encoding"] == "identity"
        assert "Range" not in headers

    @pytest.mark.parametrize(
        ("chunk_bytes", "name"), [(5, "b.png"), (1000, "a.png"), (4 * 1024 * 1024, "a.png")]
    )
    async def test_any_batch_size_writes_and_hashes_every_byte_once(
        self, traced: Traced, origin: Origin, tmp_path: Path, chunk_bytes: int, name: str
    ) -> None:
        """Batches smaller than the magic window, than one socket read, or than the whole body: same file.

        The 5-byte case reads a smaller file (still several socket reads): each batch is a thread hop."""
        downloader = Downloader(traced.session, root=tmp_path, chunk_bytes=chunk_bytes)
        part, data = part_in(tmp_path), FILES[name]
        fetched = await downloader.fetch(origin.url(f"/file/{name}"), part)
        assert (fetched.bytes, fetched.sha256, fetched.kind) == (len(data), sha(data), "png")
        assert part.read_bytes() == data

    async def test_part_is_fsynced_whole_before_fetch_returns(
        self, downloader: Downloader, origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Durable before anyone may record it: the last fsync of the part saw every byte."""
        synced: list[tuple[int, int]] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            st = os.fstat(fd)
            synced.append((st.st_ino, st.st_size))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        part, data = part_in(tmp_path), FILES["a.jpeg"]
        await downloader.fetch(origin.url("/file/a.jpeg"), part)
        assert synced[-1] == (part.stat().st_ino, len(data))

    async def test_type_comes_from_magic_not_name(
        self, downloader: Downloader, origin: Origin, tmp_path: Path
    ) -> None:
        """A PNG served as ``.jpeg`` with ``Content-Type: image/png`` and gzip is still a PNG, decoded."""
        fetched = await downloader.fetch(origin.url("/gzip/a.png"), part_in(tmp_path))
        assert (fetched.kind, fetched.ext, fetched.sha256) == ("png", "png", sha(FILES["a.png"]))

    async def test_no_credentials_reach_any_host(
        self, downloader: Downloader, origin: Origin, cdn: Origin, tmp_path: Path
    ) -> None:
        """Session-level Authorization and cookies are stripped on every hop, the redirect target included."""
        target = cdn.url("/file/a.jpeg")
        await downloader.fetch(origin.url(f"/redirect?to={target}"), part_in(tmp_path))
        seen = [h for _, h in origin.requests + cdn.requests]
        assert len(seen) == 2
        assert all("Authorization" not in h and "Cookie" not in h for h in seen)

    async def test_truncated_body_keeps_part_and_resumes(
        self, downloader: Downloader, origin: Origin, tmp_path: Path
    ) -> None:
        """A short body: retryable IntegrityError, a clean prefix kept, and the rerun completes it."""
        data, part = FILES["a.mp4"], part_in(tmp_path)
        with pytest.raises(IntegrityError) as caught:
            await downloader.fetch(origin.url("/trunc/a.mp4"), part)
        assert caught.value.retryable
        # Every byte that arrived before the connection ended (output.receive keeps them all).
        kept = part.read_bytes()
        assert len(kept) < len(data) and data.startswith(kept)
        fetched = await downloader.fetch(origin.url("/trunc/a.mp4"), part)
        assert (fetched.bytes, fetched.sha256) == (len(data), sha(data))
        assert len(kept) == len(data) // 2  # what the server sent before it cut
        assert origin.requests[-1][1]["Range"] == f"bytes={len(kept)}-"
        assert fetched.resumed_from == len(kept)

    async def test_resume_hashes_the_part_and_appends_the_rest(
        self, downloader: Downloader, origin: Origin, tmp_path: Path
    ) -> None:
        """A kept part is resumed with Range from its size; the sha256 covers the whole file."""
        data, part = FILES["a.mp4"], part_in(tmp_path)
        part.parent.mkdir()
        part.write_bytes(data[:100_003])
        fetched = await downloader.fetch(origin.url("/file/a.mp4"), part)
        assert origin.requests[0][1]["Range"] == "bytes=100003-"
        assert (fetched.resumed_from, fetched.bytes, fetched.sha256) == (100_003, len(data), sha(data))
        assert part.read_bytes() == data

    @pytest.mark.parametrize("route", ["norange", "r416", "badrange"])
    async def test_refused_resume_restarts_from_zero(
        self, downloader: Downloader, origin: Origin, tmp_path: Path, route: str
    ) -> None:
        """200 to a Range, 416, or a 206 from the wrong offset: start over, never append a second copy."""
        data, part = FILES["a.webp"], part_in(tmp_path)
        part.parent.mkdir()
        part.write_bytes(data[:100_000])
        fetched = await downloader.fetch(origin.url(f"/{route}/a.webp"), part)
        assert (fetched.resumed_from, fetched.bytes, fetched.sha256) == (0, len(data), sha(data))
        assert part.read_bytes() == data
        assert origin.requests[0][1]["Range"] == "bytes=100000-"
        if route != "norange":  # these needed a second request, without Range
            assert len(origin.requests) == 2
            assert "Range" not in origin.requests[1][1]

    async def test_part_that_is_not_an_asset_is_not_resumed(
        self, downloader: Downloader, origin: Origin, tmp_path: Path
    ) -> None:
        """A stale part with foreign bytes is dropped and the file fetched whole."""
        part = part_in(tmp_path)
        part.parent.mkdir()
        part.write_bytes(b"<html>" * 100)
        fetched = await downloader.fetch(origin.url("/file/a.jpeg"), part)
        assert fetched.sha256 == sha(FILES["a.jpeg"])
        assert "Range" not in origin.requests[0][1]

    @pytest.mark.parametrize("path", ["/html", "/m3u8", "/file/heic.bin", "/file/tiny.jpeg"])
    async def test_not_an_image_or_video(
        self, downloader: Downloader, origin: Origin, tmp_path: Path, path: str
    ) -> None:
        """An HTML page with 200, an HLS playlist, a HEIC still, a 3-byte body: refused, part removed."""
        part = part_in(tmp_path)
        with pytest.raises(UnsafeAssetError, match="not an image or video: starts with"):
            await downloader.fetch(origin.url(path), part)
        assert not part.exists()

    async def test_byte_cap_without_content_length(
        self, traced: Traced, origin: Origin, tmp_path: Path
    ) -> None:
        """An endless chunked body is cut at the cap, the part removed, and memory stays far below the cap."""
        cap = 4 * 1024 * 1024
        downloader = Downloader(traced.session, root=tmp_path, chunk_bytes=CHUNK, max_bytes=cap)
        part = part_in(tmp_path)
        await downloader.fetch(origin.url("/file/a.jpeg"), part_in(tmp_path, "warm.part"))  # imports, threads
        tracemalloc.start()
        try:
            with pytest.raises(UnsafeAssetError, match="cap"):
                await downloader.fetch(origin.url("/endless"), part)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert not part.exists()
        assert peak < cap // 2, f"peak {peak} bytes: the body is being buffered"

    async def test_declared_length_over_cap_refused_before_the_body(
        self, traced: Traced, origin: Origin, tmp_path: Path
    ) -> None:
        """A Content-Length over the cap is refused on the headers alone."""
        downloader = Downloader(traced.session, root=tmp_path, max_bytes=10**6)
        part = part_in(tmp_path)
        with pytest.raises(UnsafeAssetError, match="declared"):
            await downloader.fetch(origin.url("/declared-huge"), part)
        assert not part.exists()

    @pytest.mark.parametrize("code", [403, 404, 410])
    async def test_expired_url_keeps_the_part(
        self, downloader: Downloader, origin: Origin, tmp_path: Path, code: int
    ) -> None:
        """403/404/410 mean "read the job again": AssetGoneError, and the part survives for the fresh URL."""
        part = part_in(tmp_path)
        part.parent.mkdir()
        part.write_bytes(FILES["a.jpeg"][:50_000])
        with pytest.raises(AssetGoneError) as caught:
            await downloader.fetch(origin.url(f"/status/{code}?sig=secret-token"), part)
        assert "secret-token" not in str(caught.value)
        assert not caught.value.retryable
        assert part.stat().st_size == 50_000

    @pytest.mark.parametrize(("code", "retry_after"), [(429, 7.0), (500, 7.0), (503, 7.0)])
    async def test_server_trouble_is_transient(
        self, downloader: Downloader, origin: Origin, tmp_path: Path, code: int, retry_after: float
    ) -> None:
        """429 and 5xx are retryable, with the server's Retry-After."""
        with pytest.raises(TransientDownloadError) as caught:
            await downloader.fetch(origin.url(f"/status/{code}"), part_in(tmp_path))
        assert caught.value.retryable
        assert caught.value.retry_after_s == retry_after

    async def test_other_status_is_a_plain_download_error(
        self, downloader: Downloader, origin: Origin, tmp_path: Path
    ) -> None:
        """A 400 is not retried."""
        with pytest.raises(DownloadError, match="HTTP 400") as caught:
            await downloader.fetch(origin.url("/status/400"), part_in(tmp_path))
        assert not caught.value.retryable

    async def test_connection_refused_is_transient(self, downloader: Downloader, tmp_path: Path) -> None:
        """Nobody listening: retryable, no part created."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(TransientDownloadError):
            await downloader.fetch(f"http://127.0.0.1:{port}/a.jpeg", part_in(tmp_path))
        assert not part_in(tmp_path).exists()


class TestUrlPolicy:
    @pytest.mark.parametrize(
        "url",
        [
            "http://example.invalid/x.jpeg",
            "ftp://127.0.0.2/x.jpeg",
            "file:///etc/passwd",
            "https://10.0.0.1/x.jpeg",
            "https://169.254.169.254/latest/meta-data",
            "https://[fd00::1]/x.jpeg",
            "https://2130706433/x.jpeg",
            "https://0x7f.1/x.jpeg",
            "https://foo.localhost/x.jpeg",
            "https://user:pw@cdn.example.com/x.jpeg",
            "http://user@127.0.0.1/x.jpeg",
            "/relative/x.jpeg",
            "https://",
        ],
    )
    async def test_refused_before_any_connection(
        self, downloader: Downloader, traced: Traced, tmp_path: Path, url: str
    ) -> None:
        """Unsafe URLs fail fast: no request started, nothing created on disk."""
        with pytest.raises(UnsafeAssetError):
            await downloader.fetch(url, part_in(tmp_path))
        assert traced.started == []
        assert not (tmp_path / "item").exists()

    def test_https_hosts_are_allowed(self, downloader: Downloader) -> None:
        """An ordinary https CDN URL passes (its host is unknown in advance)."""
        assert downloader.check_url("https://cdn.example.com/a.jpeg?sig=1").host == "cdn.example.com"

    @pytest.mark.parametrize(
        "target", ["http://example.invalid/x.jpeg", "https://10.1.2.3/x.jpeg", "file:///etc/passwd"]
    )
    async def test_redirect_hops_are_checked(
        self, downloader: Downloader, origin: Origin, traced: Traced, tmp_path: Path, target: str
    ) -> None:
        """A redirect to a forbidden place is refused without touching it."""
        with pytest.raises(UnsafeAssetError):
            await downloader.fetch(origin.url(f"/redirect?to={target}"), part_in(tmp_path))
        assert len(traced.started) == 1

    async def test_redirect_loop_is_capped(self, traced: Traced, origin: Origin, tmp_path: Path) -> None:
        """At most ``max_redirects`` hops are followed."""
        downloader = Downloader(traced.session, root=tmp_path, max_redirects=3)
        with pytest.raises(UnsafeAssetError, match="more than 3 redirects"):
            await downloader.fetch(origin.url("/loop"), part_in(tmp_path))
        assert len(origin.requests) == 4


class TestPublish:
    async def test_publish_is_an_atomic_rename(
        self, downloader: Downloader, origin: Origin, tmp_path: Path
    ) -> None:
        """The part becomes the final file; no temp or part is left beside it."""
        fetched = await downloader.fetch(origin.url("/file/a.png"), part_in(tmp_path, "image-1.abcd.part"))
        final = await downloader.publish(fetched, tmp_path / "item" / f"image-1.{fetched.ext}")
        assert final.read_bytes() == FILES["a.png"]
        assert sorted(p.name for p in final.parent.iterdir()) == ["image-1.png"]

    async def test_publish_refuses_a_symlinked_final_path(
        self, downloader: Downloader, origin: Origin, tmp_path: Path
    ) -> None:
        """A symlink planted at the final name is not written through, and the part survives."""
        outside = tmp_path.parent / f"{tmp_path.name}-outside"
        outside.write_bytes(b"precious")
        fetched = await downloader.fetch(origin.url("/file/a.jpeg"), part_in(tmp_path))
        final = tmp_path / "item" / "image-1.jpeg"
        final.symlink_to(outside)
        with pytest.raises(UnsafeAssetError, match="symlink"):
            await downloader.publish(fetched, final)
        assert outside.read_bytes() == b"precious"
        assert fetched.part_path.exists()

    async def test_publish_refuses_a_part_that_changed(
        self, downloader: Downloader, origin: Origin, tmp_path: Path
    ) -> None:
        """A part whose size is no longer what was fetched is not promoted."""
        fetched = await downloader.fetch(origin.url("/file/a.jpeg"), part_in(tmp_path))
        with fetched.part_path.open("ab") as f:
            f.write(b"extra")
        with pytest.raises(IntegrityError):
            await downloader.publish(fetched, tmp_path / "item" / "image-1.jpeg")
        assert not (tmp_path / "item" / "image-1.jpeg").exists()

    async def test_symlinked_directory_in_the_tree_is_refused(
        self, downloader: Downloader, origin: Origin, traced: Traced, tmp_path: Path
    ) -> None:
        """A directory symlink planted under the root pointing outside stops the fetch before any request."""
        outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
        outside.mkdir()
        (tmp_path / "item").symlink_to(outside, target_is_directory=True)
        with pytest.raises(UnsafeAssetError, match="symlink"):
            await downloader.fetch(origin.url("/file/a.jpeg"), part_in(tmp_path))
        assert traced.started == []
        assert list(outside.iterdir()) == []

    @pytest.mark.parametrize("with_root", [True, False])
    async def test_symlinked_part_is_refused(
        self, traced: Traced, origin: Origin, tmp_path: Path, with_root: bool
    ) -> None:
        """A part path that is a symlink is never opened (O_NOFOLLOW even without a root)."""
        downloader = Downloader(traced.session, root=tmp_path if with_root else None)
        outside = tmp_path.parent / f"{tmp_path.name}-victim"
        outside.write_bytes(b"\xff\xd8\xff" + bytes(100))
        part = part_in(tmp_path)
        part.parent.mkdir()
        part.symlink_to(outside)
        with pytest.raises(UnsafeAssetError):
            await downloader.fetch(origin.url("/file/a.jpeg"), part)
        assert outside.read_bytes() == b"\xff\xd8\xff" + bytes(100)


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (HEADS["jpeg"], "jpeg"),
        (HEADS["png"], "png"),
        (HEADS["webp"], "webp"),
        (HEADS["mp4"], "mp4"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00", None),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"#EXTM3U\n#EXT-X", None),
        (b"GIF89a\x01\x00\x01\x00\x00\x00", None),
        (b"", None),
    ],
)
def test_sniff(head: bytes, kind: str | None) -> None:
    """Magic bytes decide the type; lookalike containers do not pass."""
    assert sniff(head) == kind


async def test_constructor_rejects_nonsense(traced: Traced) -> None:
    """Caps must be positive."""
    with pytest.raises(ValueError, match="positive"):
        Downloader(traced.session, max_bytes=0)

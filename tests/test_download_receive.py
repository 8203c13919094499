"""Bodies received past aiohttp's reader (pipeline.output.receive), against real servers on 127.0.0.1.

Every test checks the bytes on disk against the body served: whatever the chunking of the
socket reads, the block size, a resume offset (aligned for O_DIRECT or not), a cut, a stall,
a body longer than declared, TLS, and the simulator's own truncated downloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from pipeline.errors import IntegrityError, TransientDownloadError, UnsafeAssetError
from pipeline.output import receive
from pipeline.output.downloader import Downloader
from pipeline.simulator.sandbox import Sandbox
from tests.conftest import TEST_KEY

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
BIG = 2 * 1024 * 1024 + 4096 * 3 + 123  # two blocks and more, an unaligned tail


def body(size: int = BIG) -> bytes:
    return JPEG + random.Random(size).randbytes(size - len(JPEG))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Host:
    server: TestServer | None = None
    ranges: list[str | None] = field(default_factory=list)
    peers: list[object] = field(default_factory=list)  # the client's address, one per request
    stall: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))


def _app(host: Host) -> web.Application:
    async def drip(request: web.Request) -> web.StreamResponse:
        """The body in pieces of random sizes, yielding between them: many short socket reads."""
        data, rng = body(), random.Random(7)
        host.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        response = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await response.prepare(request)
        at = 0
        while at < len(data):
            step = rng.randrange(1, 96 * 1024)
            await response.write(data[at : at + step])
            at += step
            await asyncio.sleep(0)
        return response

    async def ranged(request: web.Request) -> web.StreamResponse:
        data = body()
        value = request.headers.get("Range")
        host.ranges.append(value)
        host.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        if value is None:
            return web.Response(body=data)
        start = int(value.removeprefix("bytes=").removesuffix("-"))
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        return web.Response(status=206, body=data[start:], headers=headers)

    async def cut(request: web.Request) -> web.StreamResponse:
        """Declares the whole body, sends ``at`` bytes of it, then drops the connection."""
        data, at = body(), int(request.query["at"])
        response = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await response.prepare(request)
        await response.write(data[:at])
        assert request.transport is not None
        request.transport.close()
        return response

    async def stall(request: web.Request) -> web.StreamResponse:
        """Sends half the body, then nothing until the test is over."""
        data = body()
        response = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        await host.stall.wait()
        return response

    async def longer(request: web.Request) -> web.StreamResponse:
        """Declares fewer bytes than it sends."""
        data = body()
        response = web.StreamResponse(headers={"Content-Length": str(len(data) - 5000)})
        await response.prepare(request)
        assert request.transport is not None
        request.transport.write(data)  # past aiohttp's own length check
        request.transport.close()
        return response

    async def longer_open(request: web.Request) -> web.StreamResponse:
        """Declares fewer bytes than it sends, then serves the next request on the same connection."""
        data = body()
        response = web.StreamResponse(headers={"Content-Length": str(len(data) - 5000)})
        await response.prepare(request)
        assert request.transport is not None
        request.transport.write(data)
        return response

    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"<!DOCTYPE html>" + bytes(BIG), content_type="text/html")

    app = web.Application()
    for path, handler in [
        ("/drip", drip),
        ("/file", ranged),
        ("/cut", cut),
        ("/stall", stall),
        ("/longer", longer),
        ("/longer-open", longer_open),
        ("/html", html),
    ]:
        app.router.add_get(path, handler)
    return app


@pytest.fixture(name="host")
async def _host() -> AsyncIterator[Host]:
    host = Host()
    host.server = TestServer(_app(host), host="127.0.0.1", port=0)
    await host.server.start_server()
    yield host
    host.stall.set()
    await host.server.close()


@pytest.fixture(name="session")
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


@pytest.fixture(name="received")
def _received(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The sizes of the socket reads that went through the receiver (empty: aiohttp's reader did it all)."""
    reads: list[int] = []
    real = receive._Receiver.buffer_updated

    def spy(self: receive._Receiver, nbytes: int) -> None:
        reads.append(nbytes)
        real(self, nbytes)

    monkeypatch.setattr(receive._Receiver, "buffer_updated", spy)
    yield reads


def part_in(tmp_path: Path) -> Path:
    return tmp_path / "item" / "a.part"


@pytest.mark.parametrize("block", [4096, 5000, 64 * 1024, receive.BLOCK])
async def test_exact_bytes_whatever_the_chunking(
    session: aiohttp.ClientSession,
    host: Host,
    tmp_path: Path,
    received: list[int],
    monkeypatch: pytest.MonkeyPatch,
    block: int,
) -> None:
    """Reads of random sizes into blocks of any size (aligned or not, smaller than what came with
    the headers or not): the part is the body, its sha256 and size are the body's."""
    monkeypatch.setattr(receive, "BLOCK", block)
    part, data = part_in(tmp_path), body()
    fetched = await Downloader(session, root=tmp_path).fetch(host.url("/drip"), part)
    assert (fetched.bytes, fetched.sha256, fetched.kind) == (len(data), sha(data), "jpeg")
    assert part.read_bytes() == data
    assert len(received) > 1  # the body did go through the receiver, in several reads


@pytest.mark.parametrize("kept", [4096 * 100, 100_003])
async def test_resume_appends_from_the_part_with_range(
    session: aiohttp.ClientSession, host: Host, tmp_path: Path, received: list[int], kept: int
) -> None:
    """A kept part (block-aligned for O_DIRECT, or not) is resumed with Range; the hash covers it all."""
    part, data = part_in(tmp_path), body()
    part.parent.mkdir()
    part.write_bytes(data[:kept])
    fetched = await Downloader(session, root=tmp_path).fetch(host.url("/file"), part)
    assert host.ranges == [f"bytes={kept}-"]
    assert (fetched.resumed_from, fetched.bytes, fetched.sha256) == (kept, len(data), sha(data))
    assert part.read_bytes() == data and received


async def test_a_complete_body_leaves_the_connection_reusable(
    session: aiohttp.ClientSession, host: Host, tmp_path: Path, received: list[int]
) -> None:
    """The next download on the session goes over the same connection (no new TCP or TLS handshake)."""
    downloader, data = Downloader(session, root=tmp_path), body()
    for name in ("a.part", "b.part"):
        fetched = await downloader.fetch(host.url("/file"), tmp_path / name)
        assert (fetched.sha256, (tmp_path / name).read_bytes()) == (sha(data), data)
    assert received and len(host.peers) == 2 and host.peers[0] == host.peers[1]


@pytest.mark.parametrize("at", [BIG // 2, 5])
async def test_a_cut_keeps_what_arrived_and_the_rerun_resumes(
    session: aiohttp.ClientSession, host: Host, tmp_path: Path, at: int
) -> None:
    """Cut mid-body: a retryable IntegrityError and a part holding exactly the bytes sent, which a
    Range request completes. Cut inside the magic bytes: an empty part, nothing to build on."""
    part, data = part_in(tmp_path), body()
    downloader = Downloader(session, root=tmp_path)
    with pytest.raises(IntegrityError) as caught:
        await downloader.fetch(host.url(f"/cut?at={at}"), part)
    assert caught.value.retryable
    kept = part.read_bytes()
    assert kept == (data[:at] if at >= len(JPEG) else b"")
    fetched = await downloader.fetch(host.url("/file"), part)
    assert host.ranges == ([f"bytes={at}-"] if kept else [None])
    assert (fetched.bytes, fetched.sha256) == (len(data), sha(data))


async def test_a_stalled_body_ends_at_the_sessions_read_timeout(host: Host, tmp_path: Path) -> None:
    """No byte for ``sock_read`` seconds: IntegrityError, and the half that came is kept for a resume."""
    part, data = part_in(tmp_path), body()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20, sock_read=0.3)) as session:
        with pytest.raises(IntegrityError, match="stalled"):
            await Downloader(session, root=tmp_path).fetch(host.url("/stall"), part)
    assert part.read_bytes() == data[: len(data) // 2]


async def test_bytes_past_the_declared_length_are_not_taken(
    session: aiohttp.ClientSession, host: Host, tmp_path: Path
) -> None:
    """The file is the length the server declared; what follows it on the wire is never read."""
    part, data = part_in(tmp_path), body()[: BIG - 5000]
    fetched = await Downloader(session, root=tmp_path).fetch(host.url("/longer"), part)
    assert (fetched.bytes, fetched.sha256) == (len(data), sha(data))
    assert part.read_bytes() == data


async def test_stray_bytes_on_a_kept_connection_do_not_reach_the_next_download(
    session: aiohttp.ClientSession, host: Host, tmp_path: Path
) -> None:
    """Bytes past the declared length on a connection left open: the file is the declared length, and
    the stray bytes never become part of the next download's body.

    Whether they reach aiohttp's parser before the next request reuses the connection is a race
    (keep-alive has no way to tell): either the connection is closed first, or the next request
    reads them as its status line and fails as a transient error that the retry clears. Either way
    no byte of them lands in a file."""
    downloader, data = Downloader(session, root=tmp_path), body()
    first = await downloader.fetch(host.url("/longer-open"), tmp_path / "a.part")
    assert first.sha256 == sha(data[: BIG - 5000])
    try:
        second = await downloader.fetch(host.url("/file"), tmp_path / "b.part")
    except TransientDownloadError:
        assert not (tmp_path / "b.part").exists() or (tmp_path / "b.part").stat().st_size == 0
        second = await downloader.fetch(host.url("/file"), tmp_path / "b.part")
    assert (second.sha256, (tmp_path / "b.part").read_bytes()) == (sha(data), data)


async def test_not_an_asset_is_refused_before_a_byte_is_written(
    session: aiohttp.ClientSession, host: Host, tmp_path: Path
) -> None:
    part = part_in(tmp_path)
    with pytest.raises(UnsafeAssetError):
        await Downloader(session, root=tmp_path).fetch(host.url("/html"), part)
    assert not part.exists()


async def test_tls_bodies_take_the_same_path(tmp_path: Path, received: list[int]) -> None:
    """Real asset hosts are https: the TLS transport feeds the receiver's buffers the same way."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    host = Host()
    server = TestServer(_app(host), host="127.0.0.1", port=0)
    await server.start_server(ssl=server_ctx)
    try:
        connector = aiohttp.TCPConnector(ssl=client_ctx)
        async with aiohttp.ClientSession(connector=connector) as session:
            downloader = Downloader(session, root=tmp_path)
            drip = await downloader.fetch(f"https://127.0.0.1:{server.port}/drip", tmp_path / "a.part")
            whole = await downloader.fetch(f"https://127.0.0.1:{server.port}/file", tmp_path / "b.part")
    finally:
        await server.close()
    data = body()
    for fetched in (drip, whole):
        assert (fetched.bytes, fetched.sha256, fetched.part_path.read_bytes()) == (len(data), sha(data), data)
    assert len(received) > 2
    assert len(host.peers) == 2 and host.peers[0] == host.peers[1]  # one TLS handshake for both


async def test_the_simulators_truncated_download_is_resumed(tmp_path: Path, sandbox: Sandbox) -> None:
    """Against the simulator: a body cut at half by its fault switch, then completed with Range."""
    sandbox.control(file_size=BIG, truncated_download_rate=1.0)
    auth = {"Authorization": f"Bearer {TEST_KEY}", "API-Version": "1"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        job = {"modelID": "gpt-image-2", "prompt": "a red mug", "numImages": 1}
        async with session.post(f"{sandbox.base_url}/images/generation", json=job, headers=auth) as r:
            job_id = (await r.json())["result"]["jobId"]
        for _ in range(200):
            async with session.get(f"{sandbox.base_url}/jobs/{job_id}", headers=auth) as r:
                state = (await r.json())["result"]
            if state["status"] == "success":
                break
            sandbox.clock.advance(1.0)  # type: ignore[attr-defined]
        url = state["images"][0]["url"]
        part, downloader = part_in(tmp_path), Downloader(session, root=tmp_path)
        with pytest.raises(IntegrityError):
            await downloader.fetch(url, part)
        kept = part.stat().st_size
        sandbox.control(truncated_download_rate=0.0)
        async with session.get(url) as r:
            whole = await r.read()
        fetched = await downloader.fetch(url, part)
    assert kept == len(whole) // 2 and fetched.resumed_from == kept
    assert (fetched.bytes, fetched.sha256) == (len(whole), sha(whole))
    assert part.read_bytes() == whole


def test_uvloop_transports_take_the_same_path(tmp_path: Path, received: list[int]) -> None:
    """The run's loop is uvloop, whose transports are not ``asyncio.Transport`` subclasses: bodies
    still go through the receiver (not only the first socket read's worth), over TCP and TLS, and
    a cut body still keeps what arrived for the resume."""
    uvloop = pytest.importorskip("uvloop")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    data = body()

    async def main() -> None:
        host = Host()
        host.server = plain = TestServer(_app(host), host="127.0.0.1", port=0)
        tls = TestServer(_app(host), host="127.0.0.1", port=0)
        await plain.start_server()
        await tls.start_server(ssl=server_ctx)
        try:
            connector = aiohttp.TCPConnector(ssl=client_ctx)
            async with aiohttp.ClientSession(connector=connector) as session:
                downloader = Downloader(session, root=tmp_path)
                for n, url in enumerate(
                    [host.url("/file"), f"https://127.0.0.1:{tls.port}/file", host.url("/drip")]
                ):
                    received.clear()
                    fetched = await downloader.fetch(url, tmp_path / f"{n}.part")
                    assert (fetched.sha256, fetched.part_path.read_bytes()) == (sha(data), data)
                    assert sum(received) >= len(data) - 512 * 1024  # aiohttp's reader took little
                assert host.peers[0] == host.peers[2]  # the plain connection went back to the pool
                cut = tmp_path / "cut.part"
                with pytest.raises(IntegrityError):
                    await downloader.fetch(host.url(f"/cut?at={BIG // 2}"), cut)
                assert cut.read_bytes() == data[: BIG // 2]
                fetched = await downloader.fetch(host.url("/file"), cut)
                assert (fetched.resumed_from, fetched.sha256) == (BIG // 2, sha(data))
        finally:
            await plain.close()
            await tls.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())

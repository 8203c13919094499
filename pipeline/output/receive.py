"""A download's body received straight into aligned buffers, past aiohttp's body reader.

Why: profiled on the benchmark VM (perf, 5 MB files over loopback), aiohttp's read path cost
more than the sha256 every byte needs: each socket read allocates a fresh bytes object (page
faults on every new 256 KiB), its C parser copies the body into a second one per read, and
the O_DIRECT writer copied it a third time into an aligned buffer; with the per-read Python
of the stream reader and the garbage collection all that feeds, ~1.3 CPU s per GB on top
of the hash. Here, once aiohttp has parsed the status and headers, the rest of a body of
known length goes through an :class:`asyncio.BufferedProtocol` set on the same transport:
the kernel copies each read into one of two page-aligned buffers, which is hashed and
written (``O_DIRECT``) from where it landed while the socket fills the other one.

Only public asyncio API is used on the transport (``set_protocol``, ``pause_reading``,
``resume_reading``; plain and TLS transports both support buffered protocols), and aiohttp's
public ``response.connection`` and ``content.read_nowait``/``feed_eof``. Afterwards
aiohttp's protocol is put back: a complete body returns the connection to the pool (a new
TLS handshake per file would cost ~2 ms of client CPU, about what this saves on 5 MB), a
cut or stalled one closes it.
A body aiohttp must decode (chunked, compressed) or of unknown length goes the usual way.
"""

from __future__ import annotations

import asyncio
import math
from typing import Final

import aiohttp
import anyio
import anyio.to_thread
from aiohttp import hdrs

from pipeline.errors import IntegrityError
from pipeline.output.direct import give, take
from pipeline.output.magic import HEAD, Kind, require_kind
from pipeline.output.part import PartSink

__all__ = ["BLOCK", "receive"]

#: Bytes per buffer, two per download; one thread hop (hash + write) per block. Measured on 5 MB
#: files: 2 MiB cost ~0.15 CPU s/GB less than 1 MiB (hops, pauses, wake-ups), but the buffers add
#: to every other buffer of a run: downloading into a bucket (8 downloads, 4 uploads holding their
#: bodies) grew RSS by 69 MiB with 2 MiB, 54 with 1 MiB, 47 with 512 KiB (the budget is 50).
BLOCK: Final = 512 * 1024


class _Receiver(asyncio.BufferedProtocol):
    """Fills the armed buffer from the transport; pauses the transport when it is full."""

    def __init__(self, transport: asyncio.Transport, original: asyncio.BaseProtocol, remaining: int) -> None:
        self._transport = transport
        self._original = original
        self.remaining = remaining
        self.view = memoryview(b"")
        self.fill = 0
        self.lost: BaseException | None = None  # the connection ended before ``remaining`` reached 0
        self._waiter: asyncio.Future[None] | None = None

    def arm(self, view: memoryview, fill: int = 0) -> None:
        """Receive into ``view`` from ``fill`` on (reading resumes if there is room and a body left)."""
        self.view, self.fill = view, fill
        if self._room() and self.lost is None:
            self._transport.resume_reading()
        else:
            self._transport.pause_reading()  # get_buffer() must never be asked with no room

    async def wait(self) -> int:
        """Until the armed buffer is full, the body complete or the connection lost; its fill."""
        if self._room() and self.lost is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.fill

    def pause(self) -> None:
        self._transport.pause_reading()

    def why(self) -> str:
        """What ended the body early, for the error message."""
        lost = self.lost
        return f"{type(lost).__name__}: {lost}" if lost is not None else "complete"

    def _room(self) -> int:
        return min(len(self.view) - self.fill, self.remaining)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- asyncio.BufferedProtocol --------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view[self.fill : self.fill + self._room()]

    def buffer_updated(self, nbytes: int) -> None:
        self.fill += nbytes
        self.remaining -= nbytes
        if not self._room():
            self._transport.pause_reading()
            self._wake()

    def eof_received(self) -> bool:
        self.lost = ConnectionResetError("the server closed the connection")
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = exc or ConnectionResetError("the connection closed")
        self._wake()
        self._original.connection_lost(exc)  # aiohttp's connection bookkeeping ends as usual

    def pause_writing(self) -> None:
        self._original.pause_writing()

    def resume_writing(self) -> None:
        self._original.resume_writing()


def _take_over(response: aiohttp.ClientResponse, remaining: int) -> tuple[_Receiver, bytes] | None:
    """Swap our protocol onto the response's transport; ``None`` when this body must stay with aiohttp."""
    connection = response.connection
    if connection is None or hdrs.TRANSFER_ENCODING in response.headers:
        return None  # already complete and released, or framed in chunks aiohttp must decode
    transport, original = connection.transport, connection.protocol
    # Not ``isinstance(transport, asyncio.Transport)``: uvloop's TCP transport (the run's loop)
    # implements the interface without subclassing it, and was refused here, sending every
    # body of a run through aiohttp's reader (+1 CPU s per GB).
    if transport is None or original is None or transport.is_closing():
        return None
    if transport.get_protocol() is not original or response.content.exception() is not None:
        return None
    early = response.content.read_nowait()  # what arrived with the headers (may resume reading)
    transport.pause_reading()  # nothing reaches aiohttp's parser from here on
    early = early[:remaining]  # aiohttp's parser stops at Content-Length already; so do we
    receiver = _Receiver(transport, original, remaining - len(early))
    transport.set_protocol(receiver)
    return receiver, early


def _give_back(response: aiohttp.ClientResponse, receiver: _Receiver) -> None:
    """Put aiohttp's protocol back; a complete body frees the connection for the next request.

    aiohttp builds a fresh parser for every request on a connection, so the one left mid-body
    here is never fed again unless the server sends bytes nobody asked for, which fail its
    parse and close the connection. An incomplete body closes it now.
    """
    transport = receiver._transport
    if transport.get_protocol() is receiver:
        transport.pause_reading()
        transport.set_protocol(receiver._original)
    if receiver.remaining == 0 and receiver.lost is None and not transport.is_closing():
        transport.resume_reading()  # an idle pooled connection is read, to see the server close it
        response.content.feed_eof()  # the body is complete: aiohttp releases the connection to its pool
    else:
        response.close()


async def receive(
    response: aiohttp.ClientResponse,
    sink: PartSink,
    offset: int,
    kind: Kind | None,
    total: int,
    where: str,
    limits: aiohttp.ClientTimeout,
) -> tuple[int, Kind] | None:
    """Body → part for a body of known length; ``None`` if it must go through aiohttp's reader.

    The sink gets whole blocks (the last one fsynced). A body cut short keeps what arrived,
    fsynced, past the magic check, and raises :class:`~pipeline.errors.IntegrityError`.
    ``limits`` is the session's timeout: ``sock_read`` bounds each wait, ``total`` the body.
    """
    taken = _take_over(response, total - offset)
    if taken is None:
        return None
    receiver, early = taken
    buffers = [take(BLOCK), take(BLOCK)]
    deadline = anyio.current_time() + (limits.total or math.inf)
    try:
        views = [memoryview(b) for b in buffers]
        return await _pump(receiver, views, early, sink, (offset, kind), where, (limits.sock_read, deadline))
    finally:
        _give_back(response, receiver)
        for buffer in buffers:
            give(buffer)


async def _pump(
    receiver: _Receiver,
    views: list[memoryview],
    early: bytes,
    sink: PartSink,
    start: tuple[int, Kind | None],
    where: str,
    limits: tuple[float | None, float],
) -> tuple[int, Kind]:
    """Two buffers in turn: the socket fills one while a worker thread hashes and writes the other."""
    size, kind = start
    current, other = views
    rest = _load(receiver, current, memoryview(early))
    while True:
        fill = await _wait(receiver, *limits)
        block = current[:fill]
        done = receiver.remaining == 0 and not rest
        cut = not done and fill < len(current)  # a wait only ends short when the body did
        if kind is None and (fill >= HEAD or done):
            kind = require_kind(bytes(block[:HEAD]), where)  # unsafe content is never written
        if kind is None:  # cut before the magic bytes: an empty part, as a fresh start leaves it
            await anyio.to_thread.run_sync(sink.absorb_block, block[:0], True)
            raise IntegrityError(f"{where}: the body ended after {fill} bytes ({receiver.why()})")
        size += fill
        if not (done or cut):
            rest = _load(receiver, other, rest)  # the socket fills the other buffer meanwhile
        await anyio.to_thread.run_sync(sink.absorb_block, block, done or cut)
        if done:
            return size, kind
        if cut:
            raise IntegrityError(
                f"{where}: the body ended after {size} bytes ({receiver.why()}); the part is kept"
            )
        current, other = other, current


async def _wait(receiver: _Receiver, stall_s: float | None, deadline: float) -> int:
    """:meth:`_Receiver.wait`; past ``stall_s`` without a byte, or the deadline, the body counts as cut."""
    limit = min(stall_s or math.inf, deadline - anyio.current_time())
    with anyio.move_on_after(limit if limit != math.inf else None) as scope:
        return await receiver.wait()
    if scope.cancelled_caught:
        receiver.lost = TimeoutError(f"stalled: no byte for {stall_s} s, or past the session's total timeout")
        receiver.pause()
    return receiver.fill


def _load(receiver: _Receiver, view: memoryview, rest: memoryview) -> memoryview:
    """Copy what aiohttp already held into ``view`` and arm the receiver on the rest of it."""
    n = min(len(rest), len(view))
    view[:n] = rest[:n]
    receiver.arm(view, n)
    return rest[n:]

"""The fetch stage: every output of a finished job onto disk, verified, published and recorded.

Hosted URLs expire, so outputs are fetched as soon as their job succeeds. A download that cannot be
saved keeps its unit ``succeeded``: the job is paid for and its outputs are recorded, so a rerun
downloads again and never pays again.
"""

from __future__ import annotations

import errno

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pipeline.engine.context import RunContext
from pipeline.engine.delivery import Delivery
from pipeline.errors import AssetGoneError, AuthError, PipelineError
from pipeline.state.lifecycle import Ending, Event
from pipeline.state.records import UnitRecord

__all__ = ["Fetch", "is_disk_problem"]

_log = structlog.get_logger("pipeline.engine.fetch")


_DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT)


def is_disk_problem(exc: BaseException) -> bool:
    """A full, read-only or forbidden output disk: every further download would fail too."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (
            errno.ENOSPC,
            errno.EROFS,
            errno.EACCES,
            errno.EDQUOT,
        ):
            return True
        seen = seen.__cause__
    return False


class Fetch:
    """Owns the download stream and its workers."""

    def __init__(self, ctx: RunContext, delivery: Delivery) -> None:
        self.ctx, self.delivery = ctx, delivery
        self.outputs_left: dict[str, set[int]] = {}
        send, recv = anyio.create_memory_object_stream[tuple[str, int]](max_buffer_size=10**9)
        self._send: MemoryObjectSendStream[tuple[str, int]] = send
        self._recv: MemoryObjectReceiveStream[tuple[str, int]] = recv

    def queue(self, rec: UnitRecord) -> None:
        """The inbox: fetch every output of ``rec`` not downloaded yet; its chain children may go."""
        self.queue_outputs(rec.key, {o.n for o in rec.outputs if not o.downloaded})

    def queue_outputs(self, key: str, left: set[int]) -> None:
        """The inbox, for a unit whose outputs ``left`` are known without reading its record."""
        ctx = self.ctx
        ctx.move(key, Event.FETCHING)
        self.outputs_left[key] = left
        ctx.release_children(key)
        if not left:
            self._send.send_nowait((key, 0))  # 0: nothing to fetch, just finish the unit
        for n in sorted(left):
            self._send.send_nowait((key, n))

    async def worker(self) -> None:
        ctx = self.ctx
        async for key, n in self._recv:
            if key in ctx.settled:
                continue
            left = self.outputs_left.get(key, set())
            closing = bool(n) and left <= {n}  # the last output: its record closes the unit too
            try:
                if n:
                    ctx.tally.downloaded_bytes += await self.delivery.deliver(ctx.units[key], n, done=closing)
                    left.discard(n)
            except AuthError:
                raise
            except AssetGoneError as exc:
                await self._gone(key, n, exc)
                continue
            except (PipelineError, OSError) as exc:
                self._unsaved(key, n, exc)
                continue
            if not self.outputs_left.get(key) and key not in ctx.settled:
                if not closing:
                    await ctx.store.mark_done(key)
                ctx.move(key, Event.FETCHED)
                ctx.settle(key, Ending.DONE)

    async def _gone(self, key: str, n: int, exc: AssetGoneError) -> None:
        """Refreshing the job did not help: the outputs are gone for good. Reported, not looped on."""
        _log.error("outputs_gone", unit=key, n=n, error=str(exc))
        await self.ctx.store.mark_failed(key, f"output {n} is gone from the server: {exc}", "outputs_gone")
        self.ctx.move(key, Event.OUTPUTS_GONE)
        self.ctx.settle(key, Ending.FAILED)

    def _unsaved(self, key: str, n: int, exc: PipelineError | OSError) -> None:
        """Paid and recorded, but not saved: the unit stays ``succeeded`` for a free rerun."""
        reason = f"output {n} could not be saved: {exc}"
        _log.error("download_failed", unit=key, n=n, error=str(exc))
        self.ctx.reasons[key] = reason + "; rerun to download it again (no new job)"
        if is_disk_problem(exc):
            self.ctx.stop_submitting("output_unwritable")
        self.ctx.settle(key, Ending.DOWNLOAD_FAILED)

    def close(self) -> None:
        self._send.close()
        self._recv.close()

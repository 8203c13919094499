"""The three one-line writes every store spells the same way, over its own ``_simple``.

A failure, a parked outcome and a return to pending differ only in the phase, the phases they may
leave (from the lifecycle table, via ``records``) and the error kind they store; each store's
``_simple`` does the guarded SQL of its own dialect."""

from __future__ import annotations

from collections.abc import Set

from pipeline.state.records import CAN_FAIL, CAN_PARK, CAN_UNSEND, Phase

__all__ = ["SimpleMarks"]


class SimpleMarks:
    """``mark_failed``, ``mark_unknown`` and ``mark_pending`` of a :class:`StateStore`."""

    async def _simple(self, key: str, to: Phase, allowed: Set[Phase], reason: str, kind: str | None) -> None:
        raise NotImplementedError

    async def mark_failed(self, key: str, error: str, kind: str) -> None:
        """A permanent failure with its reason; only ``reset(Phase.FAILED)`` brings it back."""
        await self._simple(key, Phase.FAILED, CAN_FAIL, error, kind)

    async def mark_unknown(self, key: str, reason: str) -> None:
        """Park a unit whose outcome cannot be learned (lost intent, vanished job); see ``reset``."""
        await self._simple(key, Phase.UNKNOWN, CAN_PARK, reason, "unknown")

    async def mark_pending(self, key: str, reason: str) -> None:
        """Back to pending when the API certainly created nothing (e.g. a 429); attempts are kept."""
        await self._simple(key, Phase.PENDING, CAN_UNSEND, reason, None)

"""Start-up: each unit the state diff left (:mod:`pipeline.engine.diff`) to the stage that owns it.

Done units never get here (the diff checked their files); full records are read only for units
that are mid-way. Nothing here sends a request.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.engine.context import RunContext
from pipeline.engine.fetch import Fetch
from pipeline.engine.watch import Watch
from pipeline.state.lifecycle import Ending, Phase
from pipeline.state.records import UnitRecord

__all__ = ["resume_units"]

_ENDED = {Phase.FAILED: Ending.FAILED, Phase.UNKNOWN: Ending.UNKNOWN, Phase.REJECTED: Ending.REJECTED}


async def resume_units(
    ctx: RunContext, recorded: Mapping[str, Phase], *, watch: Watch, fetch: Fetch
) -> list[UnitRecord]:
    """Hand each unit to its stage; returns the ``submitting`` ones, which reconcile must decide first.

    ``recorded`` is the diff's: the phase of each unit the state knows, and of their upstreams."""
    store, phases = ctx.store, dict(recorded)
    leftovers: list[UnitRecord] = []
    for key in ctx.order:  # every phase first: releasing a unit's children asks theirs
        ctx.resume(key, phases.get(key, Phase.PENDING))
    for key in ctx.order:
        phase = phases.get(key, Phase.PENDING)
        if phase is Phase.DONE:
            ctx.settle(key, Ending.DONE)
            continue
        if phase in (Phase.SUCCEEDED, Phase.SUBMITTED, Phase.SUBMITTING):
            rec = store.get(key)
            if rec is None:
                continue
            if phase is Phase.SUCCEEDED:
                fetch.queue(rec)
            elif phase is Phase.SUBMITTED:
                watch.look_now(key)
            else:
                leftovers.append(rec)
        elif phase in _ENDED:
            ctx.settle(key, _ENDED[phase])
    _release_pending(ctx, phases)
    if ctx.remaining <= 0:
        ctx.finished.set()
    return leftovers


def _release_pending(ctx: RunContext, phases: dict[str, Phase]) -> None:
    """Pending units go to the ready stream once their upstream has outputs; blocked ones end."""
    for key in ctx.order:
        if key in ctx.settled or phases.get(key, Phase.PENDING) is not Phase.PENDING:
            continue
        upstream = ctx.units[key].upstream
        up_phase = phases.get(upstream) if upstream else None
        if upstream is None or up_phase in (Phase.SUCCEEDED, Phase.DONE):
            ctx.enqueue(key)
        elif upstream in ctx.settled and ctx.settled[upstream] is not Ending.DONE:
            ctx.settle(key, Ending.BLOCKED)

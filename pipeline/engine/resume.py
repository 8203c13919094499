"""Start-up: every unit of the manifest sorted by its recorded phase into the stage that owns it.

Done units (all of them, on a no-op resume) cost one light row per output and one ``stat``; full
records are read only for the few units that are mid-way. Nothing here sends a request.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.engine.context import RunContext
from pipeline.engine.fetch import Fetch
from pipeline.engine.watch import Watch
from pipeline.state.lifecycle import Ending, Event, Phase
from pipeline.state.sqlite import UnitRecord

__all__ = ["resume_units"]

_ENDED = {Phase.FAILED: Ending.FAILED, Phase.UNKNOWN: Ending.UNKNOWN, Phase.REJECTED: Ending.REJECTED}


async def resume_units(
    ctx: RunContext, *, present: Callable[[str, int | None], bool], watch: Watch, fetch: Fetch
) -> list[UnitRecord]:
    """Hand each unit to its stage; returns the ``submitting`` ones, which reconcile must decide first.

    ``present(path, size)`` says whether a done unit's file is still published (the output store's)."""
    store = ctx.store
    phases = store.phases()
    ctx.known_jobs.update(store.job_ids())
    done_files = store.done_outputs()
    leftovers: list[UnitRecord] = []
    for key in ctx.order:  # every phase first: releasing a unit's children asks theirs
        ctx.resume(key, phases.get(key, Phase.PENDING))
    for key in ctx.order:
        phase = phases.get(key, Phase.PENDING)
        if phase is Phase.DONE:
            files = done_files.get(key, [])
            missing = [n for n, path, size in files if not (path and present(path, size))]
            if files and not missing:
                ctx.settle(key, Ending.DONE)
                continue
            await store.reopen(key, missing)  # the files come back without paying again
            phase = phases[key] = ctx.move(key, Event.FILES_MISSING)
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

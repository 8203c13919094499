"""The state diff: the manifest's units against the state file, streamed, before the run begins.

A nightly run of a million-unit catalog that gained a hundred rows must find those hundred fast
and without holding a record per unit. This module reads the state in one streamed pass of
``(key, phase)`` and one of the done units' outputs, and returns only the units that still need
something: new ones (inserted as pending), unfinished ones, and done ones whose files are gone
(reopened, so they are fetched again without paying). A done unit whose files are all on disk
costs a dict lookup and one presence check per file (a ``stat`` for a folder, the start-up listing
for a bucket), and never reaches the stages.

When the manifest's units are a small share of the state's (a load that skipped the settled rows,
:mod:`.settled`), each is read by key instead: two scans of a million rows cost seconds before the
first POST, a few hundred lookups nothing; the stale count is then the state's total less the
units found.

The guarantee the resume always gave is kept: every recorded output of every done unit is
checked on disk (size included) on every run; a missing or resized file is fetched again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.engine.delivery import WorkUnit
from pipeline.state.records import Phase
from pipeline.state.store import StateStore

__all__ = ["Resume", "sort_out"]

# What the state says of each manifest unit, one byte per unit.
_NEW, _DONE, _OPEN = 0, 1, 2
#: Below one manifest unit per this many in the state, units are read by key rather than by scan.
_LOOKUP_SHARE = 50


@dataclass(frozen=True, slots=True)
class Resume:
    """The units a run must still look at, and what the state says of them.

    ``phases`` holds the recorded phase of each of ``units`` that the state knows (new units are
    absent: pending) and of their upstream units, so the scheduler reads no phase itself.
    """

    units: list[WorkUnit]
    phases: dict[str, Phase]
    #: Done upstream units of ``units``, which their chained requests are built from.
    upstreams: dict[str, WorkUnit]
    done: int  #: done units whose every output is on disk: nothing to do
    new: int  #: units the state did not know, now recorded as pending
    stale: int  #: units in the state that the manifest no longer has (kept, never deleted)
    reopened: int  #: done units with outputs missing on disk, back to succeeded


async def sort_out(
    units: Sequence[WorkUnit], store: StateStore, present: Callable[[str, int | None], bool]
) -> Resume:
    """Record new units, reopen done units whose files are gone, and return what is left to do.

    ``present(path, size)`` says whether a recorded output is still published (the output store's)."""
    position = {u.key: i for i, u in enumerate(units)}
    status = bytearray(len(units))  # _NEW until the state names the unit
    phases: dict[str, Phase] = {}
    total = sum(store.counts().values())
    if len(units) * _LOOKUP_SHARE < total:  # a few units of a big state: the rest were skipped
        stale, missing = _look_up(units, store, status, phases, present)
        stale = total - stale
    else:
        stale = _scan_phases(store, position, status, phases)
        missing = _missing_outputs(store, position, status, present)
    for key, numbers in missing.items():
        await store.reopen(key, numbers)
        status[position[key]] = _OPEN
        phases[key] = Phase.SUCCEEDED
    new = [u for u, s in zip(units, status, strict=True) if s == _NEW]
    if new:
        await store.sync_units(new)
    active = [u for u, s in zip(units, status, strict=True) if s != _DONE]
    upstreams: dict[str, WorkUnit] = {}
    for unit in active:
        up = unit.upstream
        if up is not None and up not in phases and (i := position.get(up)) is not None and status[i] == _DONE:
            phases[up] = Phase.DONE
            upstreams[up] = units[i]
    done = len(units) - len(active)
    return Resume(active, phases, upstreams, done, len(new), stale, len(missing))


def _scan_phases(
    store: StateStore, position: dict[str, int], status: bytearray, phases: dict[str, Phase]
) -> int:
    """Every unit's phase, streamed; returns how many the manifest no longer has."""
    stale = 0
    for key, phase in store.iter_phases():
        i = position.get(key)
        if i is None:
            stale += 1
        elif phase is Phase.DONE:
            status[i] = _DONE
        else:
            status[i] = _OPEN
            phases[key] = phase
    return stale


def _look_up(
    units: Sequence[WorkUnit],
    store: StateStore,
    status: bytearray,
    phases: dict[str, Phase],
    present: Callable[[str, int | None], bool],
) -> tuple[int, dict[str, list[int]]]:
    """Each unit read by key (its phase and outputs) instead of two scans of a state many times
    its size; returns how many the state knows, and the done ones' missing outputs."""
    known = 0
    missing: dict[str, list[int]] = {}
    for i, unit in enumerate(units):
        rec = store.get(unit.key)
        if rec is None:
            continue
        known += 1
        if rec.phase is not Phase.DONE:
            status[i] = _OPEN
            phases[unit.key] = rec.phase
            continue
        status[i] = _DONE
        gone = [o.n for o in rec.outputs if o.path is None or not present(o.path, o.bytes)]
        if gone or not rec.outputs:
            missing[unit.key] = gone
    return known, missing


def _missing_outputs(
    store: StateStore, position: dict[str, int], status: bytearray, present: Callable[[str, int | None], bool]
) -> dict[str, list[int]]:
    """Done units of the manifest with an output that is not on disk at its recorded size, with
    those outputs' numbers; a done unit with no output recorded at all is reopened too (as before:
    ``mark_done`` refuses that, so only a damaged file holds one)."""
    missing: dict[str, list[int]] = {}
    seen = bytearray(len(status))
    for key, n, path, size in store.iter_outputs():
        i = position.get(key)
        if i is None or status[i] != _DONE:
            continue
        seen[i] = 1
        if path is None or not present(path, size):
            missing.setdefault(key, []).append(n)
    for key, i in position.items():
        if status[i] == _DONE and not seen[i]:
            missing.setdefault(key, [])
    return missing

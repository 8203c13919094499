"""``run --regenerate-rejected``: pay again for rejected outputs only, once, with a fresh seed.

A preparation step before the run, so the engine itself needs no new path: the units whose
current output a reviewer rejected (decisions are keyed by the file's sha256), plus their chain
children (an upscale or a video made from a rejected image), have their files moved to
``.rejected/`` (kept, never overwritten) and go back to ``pending`` in one state transaction
that also records the new seed each request carries. The ordinary run then submits them once.

Order protects money: files move first, then the state changes. A crash in between leaves the
units ``done`` with their files gone; a plain rerun fetches the same (rejected) file again for
free, and the next ``--regenerate-rejected`` finds the verdict again. The other order could let
the delivery adopt the old file (same unit key, sidecar still there) for a newly paid job.

Before the files move, the units are held (:func:`hold_targets`): on a shared database no worker
may claim them meanwhile, a chain part of which a live worker holds is left for a later rerun, and
a unit that changed since the plan was read (another worker regenerated it first) is left alone,
so N workers started with ``--regenerate-rejected`` pay for each rejected unit once.

In state terms: an output set aside because it was rejected is recorded as ``rejected``; one set
aside because its upstream (or a sibling output of the same job) was rejected as ``superseded``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import anyio.to_thread
import structlog

from pipeline.clock import Clock
from pipeline.engine.seeds import seed_path, with_seed
from pipeline.manifest.plan import price_of
from pipeline.manifest.spec import Unit
from pipeline.output.layout import OutputLayout, fsync_dir, make_dirs_inside
from pipeline.state.records import Phase, UnitRecord
from pipeline.state.review_store import RetiredRecord, ReviewedState, ReviewReader

__all__ = [
    "REJECTED_DIR",
    "Regeneration",
    "apply_regeneration",
    "hold_targets",
    "plan_regeneration",
    "recorded_seeds",
    "seed_path",
    "with_seed",
]

_log = structlog.get_logger("pipeline.engine.regenerate")

REJECTED_DIR = ".rejected"
_REGENERABLE = frozenset({Phase.DONE, Phase.SUCCEEDED, Phase.FAILED, Phase.PENDING})
_SEED_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Target:
    """One unit to pay for again: why, its recorded outputs, and the seed its request will carry."""

    record: UnitRecord
    reason: str  #: ``rejected`` or ``superseded``
    seed: int | None
    credits: float | None = None  #: its estimated price (``None``: unpriced)


@dataclass(frozen=True, slots=True)
class Regeneration:
    """What ``--regenerate-rejected`` will do; ``credits`` is ``None`` when some unit has no price."""

    targets: tuple[Target, ...]
    credits: float | None
    skipped: tuple[str, ...]  #: why some rejected work is left alone (in flight, no longer in the manifest)
    rejected_shas: frozenset[str] = frozenset()

    @property
    def rejected(self) -> int:
        return sum(1 for t in self.targets if t.reason == "rejected")

    @property
    def children(self) -> int:
        return len(self.targets) - self.rejected

    def describe(self) -> str:
        """One line for the operator, shown before anything is paid."""
        cost = "unpriced (add prices: to the manifest for an estimate)"
        if self.credits is not None:
            cost = f"about {self.credits:g} credits"
        return (
            f"regenerating {len(self.targets)} unit(s): {self.rejected} rejected + {self.children} "
            f"chain child(ren); {cost}"
        )


def recorded_seeds(store: ReviewReader) -> dict[str, int]:
    """The seed each regenerated unit's next request carries (unit key -> seed), as recorded."""
    return {k: int(v["seed"]) for k, v in store.resources("seed").items() if "seed" in v}


def plan_regeneration(
    store: ReviewedState, units: Sequence[Unit], prices: Mapping[str, float]
) -> Regeneration:
    """The rejected units of the manifest and their chain children (reads only)."""
    rejected_shas = {sha for sha, d in store.decisions().items() if d.verdict == "reject"}
    by_key = {u.key: u for u in units}
    children: dict[str, list[str]] = {}
    for u in units:
        if u.upstream:
            children.setdefault(u.upstream, []).append(u.key)
    records = {r.key: r for r in store.units()} if rejected_shas else {}
    reasons: dict[str, str] = {}
    skipped: list[str] = []
    for rec in records.values():
        if rec.phase not in (Phase.DONE, Phase.SUCCEEDED):
            continue
        if not any(o.sha256 in rejected_shas for o in rec.outputs):
            continue
        if rec.key not in by_key:
            skipped.append(f"{rec.item_id} {rec.step}#{rec.index}: no longer in the manifest")
            continue
        reasons[rec.key] = "rejected"
    stack, in_flight = list(reasons), set()
    while stack:
        parent = stack.pop()
        for child in children.get(parent, ()):
            found = records.get(child)
            if child in reasons or found is None:
                continue  # never synced yet: it is pending and will use the new upstream anyway
            if found.phase not in _REGENERABLE:
                skipped.append(
                    f"{found.item_id} {found.step}#{found.index}: a job is in flight ({found.phase}); "
                    "its chain waits: rerun --regenerate-rejected once it ends"
                )
                in_flight.add(parent)
                continue
            reasons[child] = "superseded"
            stack.append(child)
    _wait_for_flights(reasons, in_flight, by_key, records, skipped)
    targets = []
    for key in (u.key for u in units if u.key in reasons):
        unit = by_key[key]
        seed = 1 + secrets.randbelow(_SEED_MAX) if seed_path(unit.step, unit.request) else None
        price = price_of(unit, prices) if prices else None
        cost = None if price is None else price * max(1, unit.expected_outputs)
        targets.append(Target(records[key], reasons[key], seed, cost))
    return Regeneration(tuple(targets), _credits(targets), tuple(skipped), frozenset(rejected_shas))


def _wait_for_flights(
    reasons: dict[str, str],
    in_flight: set[str],
    by_key: Mapping[str, Unit],
    records: Mapping[str, UnitRecord],
    skipped: list[str],
) -> None:
    """Drop each chain a job of which is still being made (``in_flight``: their parents): that job
    would finish from the rejected output, and once its upstream is made anew (and not rejected)
    no regeneration would redo it. The whole chain waits for a later rerun."""

    def root(key: str) -> str:
        while (up := by_key[key].upstream) in reasons:
            key = up
        return key

    waiting = {root(k) for k in in_flight}
    for key in [k for k in reasons if root(k) in waiting]:  # all roots first: then drop
        del reasons[key]
        rec = records[key]
        skipped.append(f"{rec.item_id} {rec.step}#{rec.index}: waits for a job of its chain in flight")


def _credits(targets: Sequence[Target]) -> float | None:
    costs = [t.credits for t in targets]
    return None if None in costs else sum((c or 0.0 for c in costs), 0.0)


async def apply_regeneration(
    plan: Regeneration, store: ReviewedState, layout: OutputLayout, clock: Clock
) -> int:
    """Hold the targets, move their files to ``.rejected/``, then reset them to pending with their
    seeds (and let go). On a shared database a chain another worker holds part of is left alone."""
    held = await hold_targets(plan, store)  # again: a no-op when the caller held them already
    for why in held.skipped[len(plan.skipped) :]:
        _log.warning("regeneration_skipped", reason=why)
    plan = held
    if not plan.targets:
        return 0
    retired = await anyio.to_thread.run_sync(_move_aside, plan, layout, clock)
    units = {t.record.key: t.reason for t in plan.targets}
    seeds = {t.record.key: t.seed for t in plan.targets if t.seed is not None}
    changed = await store.regenerate(units, retired, seeds)
    _log.info("regeneration_prepared", units=len(units), rejected=plan.rejected, children=plan.children)
    return changed


async def hold_targets(plan: Regeneration, store: ReviewedState) -> Regeneration:
    """The plan cut to what this process now holds, unchanged since it was read (another worker may
    have moved a unit on meanwhile); a chain goes whole or not at all. What it will not touch after
    all is let go at once."""
    if not plan.targets:
        return plan
    planned = {t.record.key: t.record for t in plan.targets}
    held = await store.hold(planned)
    fresh = {k: store.get(k) for k in held}
    ok = {k for k, rec in fresh.items() if rec is not None and _same(rec, planned[k])}

    def root(key: str) -> str:
        while (up := planned[key].upstream) in planned:
            key = up
        return key

    broken = {root(k) for k in planned if k not in ok}
    kept = tuple(t for t in plan.targets if root(t.record.key) not in broken)
    dropped = [t.record for t in plan.targets if root(t.record.key) in broken]
    if dropped:
        await store.release(held - {t.record.key for t in kept})
    skipped = tuple(
        f"{r.item_id} {r.step}#{r.index}: another worker holds it or its chain (or it changed); "
        "rerun --regenerate-rejected later" for r in dropped
    )  # fmt: skip
    return replace(plan, targets=kept, credits=_credits(kept), skipped=plan.skipped + skipped)


def _same(now: UnitRecord, planned: UnitRecord) -> bool:
    """Nothing that matters to the move changed: the phase and the recorded files."""
    files = [(o.n, o.path, o.sha256) for o in now.outputs]
    return now.phase is planned.phase and files == [(o.n, o.path, o.sha256) for o in planned.outputs]


def _move_aside(plan: Regeneration, layout: OutputLayout, clock: Clock) -> list[RetiredRecord]:
    """Each recorded file (and its sidecar) under ``.rejected/<same folder>/<stem>.<sha12><ext>``."""
    at = clock.now().isoformat().replace("+00:00", "Z")
    retired: list[RetiredRecord] = []
    touched: set[Path] = set()
    for target in plan.targets:
        rec = target.record
        for out in rec.outputs:
            moved: str | None = None
            if out.path:
                moved = _move_one(layout, out.path, out.sha256 or "unknown", touched)
            # a sibling output of a rejected one (same job) goes too, as superseded
            phase = "rejected" if out.sha256 in plan.rejected_shas else "superseded"
            retired.append(RetiredRecord(rec.key, out.n, phase, moved, out.sha256, rec.job_id, at))
    for directory in touched:
        fsync_dir(directory)
    return retired


def _move_one(layout: OutputLayout, rel: str, sha: str, touched: set[Path]) -> str | None:
    final = layout.check(layout.root / rel)
    if not final.is_file():
        return None  # already moved (a crash after the move) or deleted by hand
    side = final.with_suffix(".json")
    folder = make_dirs_inside(layout.root, layout.root / REJECTED_DIR / final.parent.relative_to(layout.root))
    stem = f"{final.stem}.{sha[:12]}"
    number = 1
    while (folder / f"{stem}{final.suffix}").exists() or (folder / f"{stem}.json").exists():
        number += 1
        stem = f"{final.stem}.{sha[:12]}-{number}"
    dest = folder / f"{stem}{final.suffix}"
    os.replace(final, dest)
    if side.is_file() and not side.is_symlink():
        os.replace(side, folder / f"{stem}.json")
    touched.update((folder, final.parent))
    _log.info("rejected_output_moved", path=rel, to=dest.relative_to(layout.root).as_posix())
    return dest.relative_to(layout.root).as_posix()

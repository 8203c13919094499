"""What a run of a manifest would do: counts per step and model, paid requests, state, estimated credits.

``plan`` sends nothing: it reads the validated manifest and, when given, the unit
phases the state file records (``pending``, ``submitting``, ``submitted``,
``succeeded``, ``done``, ``failed``, ``unknown``).

Prices are credits per output, looked up for each unit by its model id (``gpt-image-2``,
``@ava``, a trained model's UUID), then ``trained`` for trained models, then its
step (``image``, ``upscale``, ``video``). Units with no price are counted, not guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.manifest.schema import is_trained_id
from pipeline.manifest.spec import Manifest, Step, Unit

if TYPE_CHECKING:
    from pipeline.manifest.survey import Survey, UnitGroup

__all__ = ["IN_FLIGHT_PHASES", "PlanRow", "PlanSummary", "price_of", "render", "summarize"]

#: Phases in which a unit was (or may have been) paid for but is not finished.
IN_FLIGHT_PHASES = frozenset({"submitting", "submitted", "succeeded", "unknown"})


@dataclass(frozen=True, slots=True)
class PlanRow:
    """The units of one step and model; ``credits`` is ``None`` when no price applies."""

    step: Step
    model: str
    units: int
    outputs: int
    done: int
    in_flight: int
    failed: int
    pending: int
    credits: float | None


@dataclass(frozen=True, slots=True)
class PlanSummary:
    """Everything ``plan`` reports; totals are sums over ``rows``.

    ``paid_requests`` counts generation, upscale and video submissions plus model
    trainings; ``to_send`` is the units a run would still submit (``pending``).
    ``stale`` counts units the state knows that the manifest no longer
    has (their outputs are kept, never overwritten). Credits cover priced units only.
    """

    manifest: str
    name: str
    items: int
    rows: tuple[PlanRow, ...]
    units: int
    outputs: int
    paid_requests: int
    to_send: int
    trainings: tuple[str, ...]
    done: int
    in_flight: int
    failed: int
    pending: int
    unknown: int
    stale: int
    credits_total: float | None
    credits_remaining: float | None
    unpriced: tuple[str, ...]


def price_of(unit: Unit, prices: Mapping[str, float]) -> float | None:
    """Credits per output of ``unit``: by model id, then ``trained``, then step; ``None`` if unpriced."""
    model = unit.model_id
    if model is not None:
        if model in prices:
            return prices[model]
        if is_trained_id(model) and "trained" in prices:
            return prices["trained"]
    return prices.get(unit.step.value)


def summarize(
    manifest: Manifest | Survey,
    phases: Mapping[str, str] | None = None,
    *,
    prices: Mapping[str, float] | None = None,
) -> PlanSummary:
    """Count the manifest's work; ``phases`` maps unit key → phase from the state file.

    ``prices`` replaces the manifest's own ``prices:`` table when given (e.g. from settings).
    Units are grouped by step and model first: a price is looked up once per group, and a plan
    without a state reads no unit's key (a :class:`Survey` then builds none of its counted rows).
    """
    from pipeline.manifest.survey import Survey

    survey = manifest if isinstance(manifest, Survey) else Survey.of(manifest)
    phases = phases or {}
    table = survey.built.prices if prices is None else prices
    order = list(Step)
    groups = sorted(survey.groups(), key=lambda group: order.index(group.step))  # stable: first use
    counted, keys = _with_phases(survey, phases) if phases else ({}, set())
    rows: list[PlanRow] = []
    remaining: list[float] = []
    for group in groups:
        price = price_of(group.sample, table)
        states = counted.get((group.step, group.model_id))
        rows.append(_row(group, states, price))
        if price is not None:
            remaining.append(price * (group.outputs if states is None else states.outputs_left))
    priced = [row.credits for row in rows if row.credits is not None]
    unpriced = tuple(sorted({f"{row.step.value} {row.model}" for row in rows if row.credits is None}))
    return PlanSummary(
        manifest=survey.path.name,
        name=survey.name,
        items=survey.items,
        rows=tuple(rows),
        units=sum(row.units for row in rows),
        outputs=sum(row.outputs for row in rows),
        paid_requests=sum(row.units for row in rows) + len(survey.models),
        to_send=sum(row.pending for row in rows),
        trainings=tuple(f"@{spec.name}" for spec in survey.models),
        done=sum(row.done for row in rows),
        in_flight=sum(row.in_flight for row in rows),
        failed=sum(row.failed for row in rows),
        pending=sum(row.pending for row in rows),
        unknown=sum(1 for key in keys if phases.get(key) == "unknown"),
        stale=sum(1 for key in phases if key not in keys),
        credits_total=sum(priced) if priced else None,
        credits_remaining=sum(remaining) if priced else None,
        unpriced=unpriced,
    )


@dataclass(slots=True)
class _States:
    """What the state file says of one group's units."""

    done: int = 0
    in_flight: int = 0
    failed: int = 0
    pending: int = 0
    outputs_left: int = 0  # outputs of units not done yet


def _with_phases(
    survey: Survey, phases: Mapping[str, str]
) -> tuple[dict[tuple[Step, str | None], _States], set[str]]:
    """Each group's phases, and every key of the manifest (streamed: no unit is kept)."""
    found: dict[tuple[Step, str | None], _States] = {}
    keys: set[str] = set()
    for unit, key in survey.keyed():
        keys.add(key)
        group = (unit.step, unit.model_id)
        states = found.get(group)
        if states is None:
            states = found[group] = _States()
        phase = phases.get(key, "pending")
        if phase == "done":
            states.done += 1
            continue
        states.outputs_left += unit.expected_outputs
        if phase == "failed":
            states.failed += 1
        elif phase in IN_FLIGHT_PHASES:
            states.in_flight += 1
        else:
            states.pending += 1
    return found, keys


def _row(group: UnitGroup, states: _States | None, price: float | None) -> PlanRow:
    """One group: every unit has the same step and model, so the same price per output."""
    return PlanRow(
        step=group.step,
        model=group.model_id or "-",
        units=group.units,
        outputs=group.outputs,
        done=states.done if states else 0,
        in_flight=states.in_flight if states else 0,
        failed=states.failed if states else 0,
        pending=states.pending if states else group.units,
        credits=None if price is None else price * group.outputs,
    )


def render(summary: PlanSummary) -> str:
    """A compact table for the terminal."""
    header = ("step", "model", "units", "outputs", "done", "in flight", "failed", "pending", "credits")
    lines = [
        [r.step.value, r.model, r.units, r.outputs, r.done, r.in_flight, r.failed, r.pending, r.credits]
        for r in summary.rows
    ]
    lines.append(
        [
            "total",
            "",
            summary.units,
            summary.outputs,
            summary.done,
            summary.in_flight,
            summary.failed,
            summary.pending,
            summary.credits_total,
        ]
    )
    cells = [list(header)] + [[_cell(v) for v in line] for line in lines]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    table = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    out = [
        f"{summary.name} ({summary.manifest}): {summary.items:,} items, {summary.units:,} units, "
        f"{summary.paid_requests:,} paid requests ({summary.to_send:,} still to send), "
        f"{summary.outputs:,} outputs",
        *table,
    ]
    if summary.trainings:
        out.append(f"training first: {', '.join(summary.trainings)} (each waits until ready)")
    if summary.unknown:
        out.append(
            f"{summary.unknown} units were being submitted when a run stopped: check them before paying again"
        )
    if summary.stale:
        out.append(f"{summary.stale} units in the state file are no longer in the manifest (outputs kept)")
    if summary.credits_total is not None:
        remaining = summary.credits_remaining or 0.0
        line = f"estimated credits: {summary.credits_total:,.0f} in all, {remaining:,.0f} still to spend"
        if summary.unpriced:
            line += f"; no price for {', '.join(summary.unpriced)}"
        out.append(line)
    return "\n".join(out)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)

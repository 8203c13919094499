"""A manifest read for its counts: what ``plan`` and ``validate`` need of a catalog of any size.

:func:`survey_manifest` loads and checks a manifest exactly as :func:`load_manifest` does (the
same problems, at the same places), but a row a full load would build by relaying its variant's
template (:mod:`pipeline.manifest.tally`) is only counted: a million-row catalog costs its ids,
not two million :class:`Unit` objects and their keys. The counted rows' units come back on demand
(:meth:`Survey.units`), for a plan that compares keys with a state file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from pipeline.manifest.load import load_manifest
from pipeline.manifest.spec import Manifest, ModelSpec, Step, Unit
from pipeline.manifest.tally import Tally

__all__ = ["Survey", "UnitGroup", "describe", "survey_manifest"]


@dataclass(frozen=True, slots=True)
class UnitGroup:
    """The units of one step and model: how many, their outputs, and one of them (for its price)."""

    step: Step
    model_id: str | None
    units: int
    outputs: int
    sample: Unit


@dataclass(frozen=True, slots=True)
class Survey:
    """A checked manifest: the units built in full (``built``) and the rows only counted (``tally``)."""

    built: Manifest
    tally: Tally

    @classmethod
    def of(cls, manifest: Manifest) -> Survey:
        """A manifest loaded in full, every unit built."""
        return cls(manifest, Tally())

    @property
    def path(self) -> Path:
        return self.built.path

    @property
    def name(self) -> str:
        return self.built.name

    @property
    def models(self) -> tuple[ModelSpec, ...]:
        return self.built.models

    @property
    def items(self) -> int:
        """Expanded items: one per counted row, plus those built."""
        return len(self.built.items) + self.tally.rows

    @property
    def unit_count(self) -> int:
        return len(self.built.units) + sum(rows for _, rows in self.tally.shapes())

    def groups(self) -> list[UnitGroup]:
        """Units per step and model, in order of first use (a counted row's template unit was built
        first, so counting it never changes that order)."""
        found: dict[tuple[Step, str | None], list[int]] = {}
        samples: dict[tuple[Step, str | None], Unit] = {}
        weighted = chain(((u, 1) for u in self.built.units), self.tally.shapes())
        for unit, times in weighted:
            key = (unit.step, unit.model_id)
            counts = found.get(key)
            if counts is None:
                counts = found[key] = [0, 0]
                samples[key] = unit
            counts[0] += times
            counts[1] += times * unit.expected_outputs
        return [UnitGroup(k[0], k[1], c[0], c[1], samples[k]) for k, c in found.items()]

    def keyed(self) -> Iterator[tuple[Unit, str]]:
        """Every unit's key, with a unit of the same step, model and outputs (itself when built,
        its template when counted): what a plan against a state file reads, no unit made."""
        yield from ((unit, unit.key) for unit in self.built.units)
        yield from self.tally.keys()

    def units(self) -> Iterator[Unit]:
        """Every unit, the counted rows' built now (each as a full load builds it), none kept."""
        yield from self.built.units
        yield from self.tally.units()


def survey_manifest(path: Path) -> Survey:
    """Read and check ``path`` as :func:`load_manifest` does, counting the rows it would relay.

    Raises:
        ManifestError: exactly as :func:`load_manifest` raises it.
    """
    tally = Tally()
    return Survey(load_manifest(path, tally=tally), tally)


def describe(manifest: Manifest | Survey) -> str:
    """The one-line summary ``validate`` prints."""
    survey = manifest if isinstance(manifest, Survey) else Survey.of(manifest)
    steps: Counter[Step] = Counter()
    outputs = 0
    for group in survey.groups():
        steps[group.step] += group.units
        outputs += group.outputs
    units = sum(steps.values())
    paid = units + len(survey.models)
    parts = ", ".join(f"{steps[step]} {step.value}" for step in Step)
    text = (
        f"{survey.path.name}: {_count(survey.items, 'item')}, "
        f"{_count(units, 'unit')} ({parts}), {_count(paid, 'paid request')}, "
        f"{_count(outputs, 'output')}"
    )
    if survey.models:
        text += f", {_count(len(survey.models), 'model')} to train"
    return text


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"

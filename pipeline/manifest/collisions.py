"""Output paths that collide: two outputs of a manifest written to one file, or onto a name the
output folder reserves. Checked while loading, over every unit, so a run never overwrites its own
outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.manifest.ids import RESERVED_IDS
from pipeline.manifest.spec import Step, Unit
from pipeline.output.layout import slug
from pipeline.output.template import Template, compile_template

__all__ = ["collisions"]


def collisions(template: str, name: str, units: Sequence[Unit]) -> list[str]:
    """What is wrong with laying ``units`` out by ``template`` (manifest ``name``), one message
    each: paths compare ignoring case; the first reserved name ends the check."""
    compiled = compile_template(template)
    assert isinstance(compiled, Template)
    found: list[str] = []
    seen: dict[str, str] = {}
    clashes = 0
    for unit in units:
        fields = {
            "item": unit.item_id,
            "step": unit.step.value,
            "index": str(unit.index),
            "key": unit.key,
            "ext": "mp4" if unit.step == Step.VIDEO else "jpeg",
            "name": slug(name),
            "model": slug(unit.model_id or ""),
            "n": "",
        }
        for n in unit.output_numbers():
            fields["n"] = str(n)
            target = compiled.render(fields.__getitem__).casefold()
            label = f"{unit.item_id} {unit.step.value} {n}"
            if target.split("/")[0] in RESERVED_IDS:
                found.append(
                    f"{label} would be written to {target!r}, a name the output "
                    "folder reserves; rename the item"
                )
                return found
            first = seen.setdefault(target, label)
            if first != label:
                clashes += 1
                if clashes == 1:
                    found.append(f"outputs collide: {first} and {label} would both be written to {target!r}")
    if clashes > 1:
        found.append(f"{clashes} outputs collide in all; use {{item}}, {{step}} and {{n}}")
    return found

"""One expanded item (item × variant × row): where its fields came from, and whether its id is free.

Kept apart from the expansion loop because it is only asked for when something is
wrong: messages name the place a value came from (the item, its matrix, the
defaults or a rows file), and a clashing id names the item that made it first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pipeline.manifest.chain import Defaults
from pipeline.manifest.ids import RESERVED_IDS, unsafe_segment
from pipeline.manifest.problems import ProblemLog, format_path
from pipeline.manifest.rows import Rows
from pipeline.manifest.schema import FieldPath, Finding
from pipeline.manifest.spec import Step
from pipeline.manifest.variants import MAX_VARIANTS, Compiled, Hole, Variant
from pipeline.manifest.yamlsource import Document, descend

__all__ = ["Expansion", "Instance"]


class Expansion(Protocol):
    """What an instance reads of the expansion that made it (the expander, without importing it)."""

    doc: Document
    rows: Rows | None
    defaults: Mapping[Step, Defaults]
    log: ProblemLog
    ids: dict[str, int]
    compiled: list[Compiled]

    def render(
        self, item: Compiled, variant: Variant, row: int | None
    ) -> tuple[dict[str, Any], list[Any]] | None: ...


class Instance:
    """One item × variant × row: knows where each of its fields came from, for messages."""

    __slots__ = ("item", "row", "variant", "x")

    def __init__(self, expander: Expansion, item: Compiled, variant: Variant, row: int | None) -> None:
        self.x = expander
        self.item = item
        self.variant = variant
        self.row = row

    def origin(self) -> int:
        """This instance as one int: (manifest item, variant, row)."""
        rows = len(self.x.rows.records) + 1 if self.x.rows is not None else 1
        variant = self.item.variants.index(self.variant) if len(self.item.variants) > 1 else 0
        return ((self.item.index * MAX_VARIANTS) + variant) * rows + (0 if self.row is None else self.row + 1)

    def from_origin(self, code: int) -> Instance:
        """The instance :meth:`origin` encoded (of the same expander)."""
        rows = len(self.x.rows.records) + 1 if self.x.rows is not None else 1
        rest, row = divmod(code, rows)
        index, variant = divmod(rest, MAX_VARIANTS)
        item = next(c for c in self.x.compiled if c.index == index)
        return Instance(self.x, item, item.variants[variant], None if row == 0 else row - 1)

    def item_id(self) -> str:
        """The expanded id of this instance (rendered again: only asked for when reporting)."""
        rendered = self.x.render(self.item, self.variant, self.row)
        assert rendered is not None  # it was rendered once already
        return str(rendered[0]["id"]) + self.variant.id_suffix

    # -- locating -------------------------------------------------------------------------------

    def locate(
        self, full: FieldPath, *, at_key: bool = False, step: Step | None = None
    ) -> tuple[str, str, str]:
        """``(location, source path, note)`` of a path inside the item (or the defaults it inherited)."""
        doc = self.x.doc
        item_path: FieldPath = ("items", self.item.index)
        for at, override in self.variant.overrides.items():
            if full[: len(at)] == at:
                hole = self._row_hole(at)
                where = doc.where(override.node)
                if hole is None or self.x.rows is None or self.row is None:
                    return where, override.source, ""
                note = f" (from column {hole.row_names[0]!r}; template at {where})"
                return self.x.rows.where(self.row, hole.row_names[0]), override.source, note
        node, reached = descend(self.item.node, full)
        if reached < len(full) and step is not None:
            found = self._locate_default(full[1:] if step == Step.VIDEO else full, at_key, step)
            if found is not None:
                return found
        where = doc.where_key(node) if at_key and reached == len(full) else doc.where(node)
        hole = self._row_hole(full) if reached == len(full) else None
        if hole is None or self.x.rows is None or self.row is None:
            return where, format_path((*item_path, *full)), ""
        note = f" (from column {hole.row_names[0]!r}; template at {where})"
        return self.x.rows.where(self.row, hole.row_names[0]), format_path((*item_path, *full)), note

    def _locate_default(self, rel: FieldPath, at_key: bool, step: Step) -> tuple[str, str, str] | None:
        defaults = self.x.defaults.get(step)
        if defaults is None or defaults.node is None:
            return None
        node, reached = descend(defaults.node, rel)
        if reached < len(rel):
            return None
        where = self.x.doc.where_key(node) if at_key else self.x.doc.where(node)
        return where, format_path((*defaults.path.split("."), *rel)), ""

    def _row_hole(self, path: FieldPath) -> Hole | None:
        return next((h for h in self.variant.holes if h.path == path and h.row_names), None)

    def report(self, prefix: FieldPath, finding: Finding, step: Step | None) -> None:
        """Log a finding at the place the offending value came from (item, matrix, defaults or rows file)."""
        full = (*prefix, *finding.path)
        where, path, note = self.locate(full, at_key=finding.at_key, step=step)
        self.x.log.add(where, path, finding.message + note)

    # -- checks and units -------------------------------------------------------------------------

    def check_id(self, item_id: str) -> bool:
        """Whether the expanded id is a safe, unused folder name; reports why not."""
        reason = unsafe_segment(item_id)
        if reason is None and item_id.casefold() in RESERVED_IDS:
            reason = "is reserved: the output folder keeps its run reports and index there"
        if reason is not None:
            where, path, note = self.locate(("id",))
            self.x.log.add(where, path, f"id {item_id[:80]!r} {reason}; ids name output folders{note}")
            return False
        folded = item_id.casefold()
        first = self.x.ids.get(folded)
        if first is None:
            self.x.ids[item_id if folded == item_id else folded] = self.origin()
            return True
        first_instance = self.from_origin(first)
        first_id = first_instance.item_id()
        if first_instance.item is not self.item and first_instance.item.declared == self.item.declared:
            return False  # reported once, at the second declaration, by Compiler._declared_once
        where, path, note = self.locate(("id",))
        first_where = first_instance.locate(("id",))[0]
        if first_id == item_id:
            detail = f"duplicate item id {item_id!r} (first at {first_where})"
        else:
            detail = f"item id {item_id!r} differs only in case from {first_id!r} (at {first_where})"
        self.x.log.add(where, path, f"{detail}; ids must be unique, as they name output folders{note}")
        return False

"""Items × rows × matrix variants → checked, keyed units of paid work.

Each manifest item is compiled once (:mod:`pipeline.manifest.variants`), and only
the leaves that hold placeholders are rendered per row. A row whose checked values
look like an earlier row's (same model, same counts, non-empty prompt) reuses that
row's verdict, so 100,000 rows cost one check per distinct shape plus the per-row
id, merge and hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.manifest.assets import Assets
from pipeline.manifest.chain import Chain, Defaults, can_relay, relay
from pipeline.manifest.ids import RESERVED_IDS, is_plain, unsafe_segment
from pipeline.manifest.instances import Instance
from pipeline.manifest.prints import NoneSettled, Settle, Settled, indexable, row_print
from pipeline.manifest.problems import ProblemLog, format_path
from pipeline.manifest.rows import Cell, Rows
from pipeline.manifest.schema import TRAINED_SIGIL, FieldPath
from pipeline.manifest.spec import Item, Step, Unit
from pipeline.manifest.tally import Tally, changes, count_rows
from pipeline.manifest.variants import MAX_VARIANTS, Compiled, Compiler, Hole, Variant, cell_text
from pipeline.manifest.yamlsource import Document, Node

__all__ = ["MAX_ITEMS", "MAX_VARIANTS", "Expander"]

#: A manifest may not expand into more items than this.
MAX_ITEMS = 2_000_000


def _convert(text: str, kind: type) -> Any:
    """A rows cell filling a numeric or boolean field; left as text when it does not convert."""
    stripped = text.strip()
    try:
        if kind is bool:
            return {"true": True, "false": False}.get(stripped.lower(), text)
        if kind is int:
            return int(stripped)
        return float(stripped) if "." in stripped or "e" in stripped.lower() else int(stripped)
    except ValueError:
        return text


class Expander:
    """Expands the ``items:`` of one manifest; problems go to ``log``, results to ``items`` and ``units``."""

    def __init__(
        self,
        doc: Document,
        *,
        rows: Rows | None,
        defaults: Mapping[Step, Defaults],
        trained: Mapping[str, str],
        assets: Assets,
        log: ProblemLog,
    ) -> None:
        self.doc = doc
        self.rows = rows
        self.defaults = defaults
        self.log = log
        self.chain = Chain(defaults=defaults, trained=trained, assets=assets)
        self.items: list[Item] = []
        self.units: list[Unit] = []
        #: Folded item id -> where it was first made (:meth:`Instance.origin`): an int, not the instance,
        #: so a million items cost a dict entry each (the key is the id itself when folding keeps it).
        self.ids: dict[str, int] = {}
        self.compiled: list[Compiled] = []
        self.compiler = Compiler(doc, rows=rows, log=log)
        #: Set by the loader to skip settled rows (:mod:`pipeline.manifest.prints`).
        self.settle: Settle | None = None
        self.context = b""
        #: ``(fingerprint, unit keys)`` of each expanded row that may be indexed; units skipped.
        self.prints: list[tuple[bytes, tuple[str, ...]]] = []
        self.skipped_units = 0
        self._fingerprints: dict[int, list[bytes | None]] = {}
        self._settled: Settled = NoneSettled()
        #: Set by the loader to count the rows a full expansion would relay instead of building
        #: them (``plan``, ``validate``: :mod:`pipeline.manifest.tally`).
        self.tally: Tally | None = None

    # -- compile ------------------------------------------------------------------------------------

    def expand(self, items: Node) -> None:
        """Compile and expand every item; stops early only when the expansion would be absurdly large."""
        if not isinstance(items.value, list):
            return
        compiled = [c for i, node in enumerate(items.value) if (c := self._compile(i, node)) is not None]
        self.compiled = compiled
        total = sum(
            len(c.variants) * (len(self.rows.records) if c.uses_rows and self.rows else 1) for c in compiled
        )
        if total > MAX_ITEMS:
            self.log.add(
                self.doc.where(items), "items", f"expands to {total:,} items; the limit is {MAX_ITEMS:,}"
            )
            return
        if self.settle is not None:
            self._fingerprint(compiled)
        for item in compiled:
            self._expand_item(item)

    def _compile(self, index: int, node: Node) -> Compiled | None:
        compiled = self.compiler.compile(index, node)
        if compiled is not None:
            for variant in compiled.variants:
                variant.relayable = _relayable(variant.holes)
                variant.id_at = next((i for i, h in enumerate(variant.holes) if h.path == ("id",)), None)
        return compiled

    # -- expand -------------------------------------------------------------------------------------

    def _expand_item(self, item: Compiled) -> None:
        """Row by row, and within a row variant by variant, so one product's work stays together."""
        prints = self._fingerprints.get(item.index)
        if prints is not None:
            self._expand_printed(item, prints)
            return
        if self.tally is not None and item.uses_rows and len(item.variants) == 1 and self.rows is not None:
            count_rows(self, item, self.tally)
            return
        rows = range(len(self.rows.records)) if item.uses_rows and self.rows is not None else (None,)
        for row in rows:
            for variant in item.variants:
                self.instance(item, variant, row)

    # -- fingerprints -------------------------------------------------------------------------------

    def _fingerprint(self, compiled: list[Compiled]) -> None:
        """Every row's fingerprint, for items of one variant made per row; then ask which are settled."""
        assert self.settle is not None
        if self.rows is None:
            return
        every: list[bytes] = []
        for item in compiled:
            if item.uses_rows and len(item.variants) == 1:
                prints = [row_print(self.context, item.index, r) for r in self.rows.records]
                self._fingerprints[item.index] = prints
                every.extend(p for p in prints if p is not None)
        if every:
            self._settled = self.settle(every)
            self.skipped_units = self._settled.units  # a settled row always renders its id alone

    def _expand_printed(self, item: Compiled, prints: list[bytes | None]) -> None:
        """Rows of a fingerprinted item: settled ones only have their id checked, others expand."""
        assert self.rows is not None
        variant, settled, records, ids = item.variants[0], self._settled.rows, self.rows.records, self.ids
        plain = _plain_id(variant)
        first = Instance(self, item, variant, 0).origin()  # row r's origin is first + r
        for row, fp in enumerate(prints):
            if fp is not None and fp in settled:
                if plain is not None:  # the common id, "{sku}": checked inline (the full check reports)
                    prefix, column, suffix = plain
                    cell = records[row].get(column)
                    if type(cell) is str and unsafe_segment(item_id := prefix + cell + suffix) is None:
                        folded = item_id.casefold()
                        if folded not in ids and folded not in RESERVED_IDS:
                            ids[item_id if folded == item_id else folded] = first + row
                            continue
                if self._skip(item, variant, row):
                    continue
            before = len(self.units)
            self.instance(item, variant, row)
            units = self.units[before:]
            if fp is not None and units and indexable(units):
                self.prints.append((fp, tuple(u.key for u in units)))

    def _skip(self, item: Compiled, variant: Variant, row: int) -> bool:
        """Check a settled row's id (ids must stay unique with the rows that do expand); ``False``
        when it cannot be rendered alone, and the row is expanded instead."""
        assert self.rows is not None
        hole = next((h for h in variant.holes if h.path == ("id",)), None)
        try:
            record = self.rows.records[row]
            item_id = variant.base["id"] if hole is None else self.fill(hole, variant, record)
        except KeyError:
            return False
        if not isinstance(item_id, str):
            return False
        Instance(self, item, variant, row).check_id(item_id + variant.id_suffix)
        return True

    def render(
        self, item: Compiled, variant: Variant, row: int | None
    ) -> tuple[dict[str, Any], list[Any]] | None:
        """The item's data for one row and each hole's value; ``None`` when the row lacks a column."""
        record: Mapping[str, Cell] = self.rows.records[row] if row is not None and self.rows else {}
        base = variant.base
        if not variant.holes:
            return base, []
        root = dict(base)
        copied: dict[FieldPath, Any] = {}
        values: list[Any] = []
        for hole in variant.holes:
            try:
                value = self.fill(hole, variant, record)
            except KeyError as exc:
                column = exc.args[0]
                assert self.rows is not None and row is not None
                self.log.add(
                    self.rows.where(row),
                    format_path(("items", item.index, *hole.path)),
                    f"this row has no column {column!r} "
                    f"(used by {{{column}}} at {self.doc.where(hole.node)})",
                )
                return None
            values.append(value)
            parent: Any = root
            for depth in range(len(hole.path) - 1):
                prefix = hole.path[: depth + 1]
                child = copied.get(prefix)
                if child is None:
                    child = parent[hole.path[depth]]
                    child = dict(child) if isinstance(child, dict) else list(child)
                    parent[hole.path[depth]] = child
                    copied[prefix] = child
                parent = child
            parent[hole.path[-1]] = value
        return root, values

    def fill(self, hole: Hole, variant: Variant, record: Mapping[str, Cell]) -> Any:
        is_id = hole.path == ("id",)
        texts = variant.slug_text if is_id else variant.raw_text
        name = hole.template.whole
        if name is not None and name not in texts:  # "{column}": the cell itself
            cell = record[name]
            if hole.kind is not None:
                return _convert(cell, hole.kind) if isinstance(cell, str) else cell
            return cell if type(cell) is str else cell_text(cell)

        def lookup(key: str) -> str:
            text = texts.get(key)
            return text if text is not None else cell_text(record[key])

        return hole.template.render(lookup)

    def relay_values(self, variant: Variant, row: int | None) -> tuple[str, list[Any]] | None:
        """A row of a variant with a template: its id and hole values, without building its data
        (``None`` when a column is missing: the full render reports it)."""
        record: Mapping[str, Cell] = self.rows.records[row] if row is not None and self.rows else {}
        try:
            values = [self.fill(hole, variant, record) for hole in variant.holes]
        except KeyError:
            return None
        at = variant.id_at
        return (variant.base["id"] if at is None else values[at]), values

    def instance(self, item: Compiled, variant: Variant, row: int | None) -> None:
        fast = self.relay_values(variant, row) if variant.template is not None else None
        if fast is None:
            rendered = self.render(item, variant, row)
            if rendered is None:
                return
            data, values = rendered
            item_id = data["id"] + variant.id_suffix
        else:
            item_id, values = fast[0] + variant.id_suffix, fast[1]
        id_ok = self._claim_id(item, variant, row, item_id)
        signature = tuple(
            (type(v), bool(v.strip()) if isinstance(v, str) else v) if h.free else v
            for h, v in zip(variant.holes, values, strict=True)
        )
        verified = signature in variant.verified
        template = variant.template
        if verified and template is not None and self.tally is not None:
            if id_ok:
                self.tally.add(variant, row)  # relayed on demand, never held
            return
        if verified and template is not None:
            units: list[Unit] | None = relay(template, item_id, changes(variant.holes, values), plain=True)
        else:
            if fast is not None:
                rendered = self.render(item, variant, row)
                assert rendered is not None  # its values were just rendered
                data = rendered[0]
            report = Instance(self, item, variant, row).report
            units = self.chain.build(data, item_id, item.location, verified=verified, report=report)
        if units is None or not id_ok:
            return
        if not verified:
            variant.verified.add(signature)
            if variant.template is None and variant.relayable:
                self._adopt_template(variant, units, item_id, values)
        self.units.extend(units)
        self.items.append(
            Item(
                id=item_id,
                location=item.location,
                path=item.path,
                row=self.rows.lines[row] if row is not None and self.rows else None,
                variant=variant.shown,
                units=tuple(u.key for u in units),
            )
        )

    def _claim_id(self, item: Compiled, variant: Variant, row: int | None, item_id: str) -> bool:
        """Whether the expanded id is a safe, unused folder name (then taken); the common case
        inline, anything else through :meth:`Instance.check_id`, which reports why not."""
        folded = item_id.casefold()
        if folded in self.ids or folded in RESERVED_IDS or unsafe_segment(item_id) is not None:
            return Instance(self, item, variant, row).check_id(item_id)
        self.ids[item_id if folded == item_id else folded] = Instance(self, item, variant, row).origin()
        return True

    def _adopt_template(self, variant: Variant, units: list[Unit], item_id: str, values: list[Any]) -> None:
        """Rows of this variant that pass the same checks are built by :func:`relay` from ``units``,
        once relaying them gives back exactly what the full build gave (else never)."""
        if any(u.model_id is not None and u.model_id.startswith(TRAINED_SIGIL) for u in units):
            variant.relayable = False
            return
        if not all(is_plain(u.request) for u in units):
            variant.relayable = False  # a float or a huge integer: every key through canonical_json
        elif relay(units, item_id, changes(variant.holes, values), plain=True) == units:
            variant.template = tuple(units)
        else:
            variant.relayable = False


def _plain_id(variant: Variant) -> tuple[str, str, str] | None:
    """``(prefix, column, suffix)`` when the id is one rows column between literal text."""
    hole = next((h for h in variant.holes if h.path == ("id",)), None)
    if hole is None or len(hole.template.names) != 1 or hole.row_names != hole.template.names:
        return None
    parts = hole.template.parts
    return parts[0], hole.template.names[0], parts[1] + variant.id_suffix


def _relayable(holes: list[Hole]) -> bool:
    """Holes that only put text into top-level image fields (or the id)."""
    return all(
        h.path == ("id",) or (len(h.path) == 1 and h.kind is None and can_relay(str(h.path[0])))
        for h in holes
    )

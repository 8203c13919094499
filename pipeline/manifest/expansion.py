"""Items × rows × matrix variants → checked, keyed units of paid work.

Each manifest item is compiled once: its strings are split into placeholders, its
matrix variants are laid over it, and only the leaves that hold placeholders are
rendered per row. A row whose checked values look like an earlier row's (same
model, same counts, non-empty prompt) reuses that row's verdict, so 100,000 rows
cost one check per distinct shape plus the per-row id, merge and hash.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.manifest.assets import Assets
from pipeline.manifest.chain import ITEM_KEYS, Chain, Defaults, can_relay, relay
from pipeline.manifest.ids import RESERVED_IDS, slug, unsafe_segment
from pipeline.manifest.problems import ProblemLog, format_path
from pipeline.manifest.rows import Cell, Rows
from pipeline.manifest.schema import (
    EXTRA,
    FIELD_TYPES,
    FREE_TEXT_FIELDS,
    IMAGE_FIELDS,
    TRAINED_IMAGE_FIELDS,
    TRAINED_SIGIL,
    FieldPath,
    Finding,
    suggest,
)
from pipeline.manifest.spec import Item, Step, Unit, freeze
from pipeline.manifest.yamlsource import Document, Node, descend
from pipeline.output.template import Template, compile_template, unescape

__all__ = ["MAX_ITEMS", "MAX_VARIANTS", "Expander"]

#: A matrix may not multiply one item into more variants than this.
MAX_VARIANTS = 10_000
#: A manifest may not expand into more items than this.
MAX_ITEMS = 2_000_000

_IMAGE_KEYS = frozenset(IMAGE_FIELDS) | frozenset(TRAINED_IMAGE_FIELDS) | {EXTRA}
_ALLOWED_ITEM_KEYS = sorted(_IMAGE_KEYS | ITEM_KEYS)


def _cell_text(value: Cell) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


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


# -- compiled items --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Hole:
    """A leaf whose text has placeholders, rendered per row (and per variant)."""

    path: FieldPath
    template: Template
    node: Node
    row_names: tuple[str, ...]
    kind: type | None
    free: bool


@dataclass(frozen=True, slots=True)
class _Override:
    """A matrix value laid over the item at ``path``."""

    value: Any
    node: Node
    source: str


@dataclass(slots=True)
class _Variant:
    """One matrix combination: the item's data with the matrix values laid over it, and its holes.

    ``verified`` holds the signatures (hole values that matter to the checks) of rows
    that already passed them.
    """

    values: dict[str, Any]
    base: dict[str, Any]
    holes: list[_Hole]
    overrides: dict[FieldPath, _Override]
    raw_text: dict[str, str]
    slug_text: dict[str, str]
    id_suffix: str
    verified: set[tuple[Any, ...]] = field(default_factory=set)
    shown: Mapping[str, Any] = field(default_factory=dict)
    #: The units of the first row that passed the checks, when later rows may be built from them.
    template: tuple[Unit, ...] | None = None
    relayable: bool = True


@dataclass(slots=True)
class _Compiled:
    """A manifest item after compiling: its variants, and whether it repeats per row."""

    index: int
    node: Node
    holes: list[_Hole]
    variants: list[_Variant]
    uses_rows: bool
    location: str
    path: str
    declared: str = ""  # the id as written, casefolded: two items may not declare the same one


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
        #: Folded item id -> where it was first made (:meth:`_Instance.origin`): an int, not the instance,
        #: so a million items cost a dict entry each (the key is the id itself when folding keeps it).
        self.ids: dict[str, int] = {}
        self.compiled: list[_Compiled] = []
        self.declared: dict[
            str, tuple[str, str, bool, FieldPath]
        ] = {}  # folded → (written, where, matrix?, path)

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
        for item in compiled:
            self._expand_item(item)

    def _problem(self, node: Node, path: FieldPath, message: str, *, at_key: bool = False) -> None:
        where = self.doc.where_key(node) if at_key else self.doc.where(node)
        self.log.add(where, format_path(path), message)

    def _compile(self, index: int, node: Node) -> _Compiled | None:
        path: FieldPath = ("items", index)
        if not isinstance(node.value, dict):
            self._problem(node, path, "an item must be a mapping with an id")
            return None
        fields = dict(node.value)
        for key, child in node.value.items():
            if key not in _IMAGE_KEYS and key not in ITEM_KEYS:
                self._problem(
                    child,
                    (*path, key),
                    f"unknown field {key!r}{suggest(key, _ALLOWED_ITEM_KEYS)} "
                    "(unlisted API fields go under extra:)",
                    at_key=True,
                )
                del fields[key]
        matrix_node = fields.pop("matrix", None)
        axes = self._axes(matrix_node, path) if matrix_node is not None else []
        if axes is None:
            return None
        names = {name for name, _ in axes}
        columns = set(self.rows.columns) if self.rows else set()
        clash = names & columns
        if clash and matrix_node is not None:
            self._problem(
                matrix_node, (*path, "matrix"), f"{sorted(clash)[0]!r} is both a matrix key and a rows column"
            )
            return None
        holes: list[_Hole] = []
        base = self._template(
            Node(fields, node.line, node.column, node.key_line, node.key_column),
            path,
            (),
            holes,
            names | columns,
            names,
        )
        if not self._shape_ok(node, fields, path):
            return None
        self._declared_once(fields["id"], path, matrix=matrix_node is not None)
        variants = self._variants(base, holes, axes, path)
        if variants is None:
            return None
        uses_rows = any(h.row_names for v in variants for h in v.holes)
        where, declared = self.doc.where(node), str(fields["id"].value).casefold()
        return _Compiled(index, node, holes, variants, uses_rows, where, format_path(path), declared)

    def _declared_once(self, id_node: Node, path: FieldPath, *, matrix: bool) -> None:
        """Two items may not declare the same id, even when a matrix suffix would keep their folders apart."""
        written, where = str(id_node.value), self.doc.where(id_node)
        first = self.declared.setdefault(written.casefold(), (written, where, matrix, path))
        if first[3] == path:
            return
        if first[0] == written:
            detail = f"duplicate item id {written!r} (first at {first[1]})"
        else:
            detail = f"item id {written!r} differs only in case from {first[0]!r} (at {first[1]})"
        rule = "ids must be unique, as they name output folders"
        if matrix or first[2]:
            rule = f"declared ids must be unique, even where a matrix names the variants {first[0]}-…"
        self.log.add(where, format_path((*path, "id")), f"{detail}; {rule}")

    def _shape_ok(self, node: Node, fields: Mapping[str, Node], path: FieldPath) -> bool:
        ok = True
        if "id" not in fields:
            self._problem(node, path, "missing required field 'id'")
            ok = False
        elif not isinstance(fields["id"].value, str):
            self._problem(fields["id"], (*path, "id"), "expected text")
            ok = False
        video = fields.get("video")
        if video is not None and not isinstance(video.value, dict):
            self._problem(
                video, (*path, "video"), "expected a mapping with the video request (prompt, modelID, …)"
            )
            ok = False
        upscale = fields.get("upscale")
        if upscale is not None and not isinstance(upscale.value, bool | dict):
            self._problem(
                upscale, (*path, "upscale"), "expected true, false or a mapping such as {imageID: …}"
            )
            ok = False
        return ok

    def _axes(self, node: Node, path: FieldPath) -> list[tuple[str, list[tuple[Any, Node]]]] | None:
        mpath = (*path, "matrix")
        if not isinstance(node.value, dict) or not node.value:
            self._problem(node, mpath, "expected a mapping of field → list of values")
            return None
        axes: list[tuple[str, list[tuple[Any, Node]]]] = []
        count = 1
        for key, child in node.value.items():
            first = key.split(".")[0]
            if (first not in _IMAGE_KEYS and first not in ("video", "upscale")) or "" in key.split("."):
                self._problem(
                    child,
                    (*mpath, key),
                    f"cannot vary {key!r}{suggest(first, _ALLOWED_ITEM_KEYS)}",
                    at_key=True,
                )
                return None
            if not isinstance(child.value, list) or not child.value:
                self._problem(child, (*mpath, key), "expected a non-empty list of values")
                return None
            values: list[tuple[Any, Node]] = []
            for i, value_node in enumerate(child.value):
                if isinstance(value_node.value, dict | list) or value_node.value is None:
                    self._problem(
                        value_node, (*mpath, key, i), "a matrix value must be text, a number or a boolean"
                    )
                    return None
                values.append((value_node.value, value_node))
            axes.append((key, values))
            count *= len(values)
        if count > MAX_VARIANTS:
            self._problem(node, mpath, f"makes {count:,} variants; the limit is {MAX_VARIANTS:,}")
            return None
        return axes

    def _template(
        self,
        node: Node,
        path: FieldPath,
        rel: FieldPath,
        holes: list[_Hole],
        known: set[str],
        matrix: set[str],
    ) -> Any:
        """Plain data of ``node``; each placeholder string becomes a hole (``rel``: its path in the item)."""
        value = node.value
        if isinstance(value, dict):
            return {
                k: self._template(v, (*path, k), (*rel, k), holes, known, matrix) for k, v in value.items()
            }
        if isinstance(value, list):
            return [
                self._template(v, (*path, i), (*rel, i), holes, known, matrix) for i, v in enumerate(value)
            ]
        if not isinstance(value, str):
            return value
        compiled = compile_template(value)
        if compiled is None:
            return unescape(value)
        if isinstance(compiled, str):
            self._problem(node, path, compiled)
            return value
        unknown = [n for n in compiled.names if n not in known]
        if unknown:
            self._problem(node, path, self._unknown_placeholder(unknown[0], known))
            return value
        last = next((s for s in reversed(rel) if isinstance(s, str)), "")
        free = rel == ("id",) or EXTRA in rel or last in FREE_TEXT_FIELDS
        kind = FIELD_TYPES.get(last) if EXTRA not in rel and rel != ("id",) else None
        row_names = tuple(n for n in compiled.names if n not in matrix)
        holes.append(_Hole(rel, compiled, node, row_names, kind, free))
        return value

    def _unknown_placeholder(self, name: str, known: set[str]) -> str:
        hint = suggest(name, known)
        if self.rows is None:
            return (
                f"unknown placeholder {{{name}}}: no rows column or matrix key has this name{hint} "
                "(write {{ and }} for literal braces)"
            )
        if self.rows.label == self.doc.label:
            source = "the rows"
        elif self.rows.label.lower().endswith((".csv", ".tsv")):
            source = f"{self.rows.label}:1 (the header)"
        else:
            source = self.rows.label
        return (
            f"unknown placeholder {{{name}}}: {source} has no column {name!r}{hint} "
            f"(columns: {', '.join(self.rows.columns)}; write {{{{ and }}}} for literal braces)"
        )

    def _variants(
        self,
        base: dict[str, Any],
        holes: list[_Hole],
        axes: list[tuple[str, list[tuple[Any, Node]]]],
        path: FieldPath,
    ) -> list[_Variant] | None:
        id_hole = next((h for h in holes if h.path == ("id",)), None)
        used = set(id_hole.template.names) if id_hole else set()
        names = [name for name, _ in axes]
        variants: list[_Variant] = []
        for combo in itertools.product(*(list(enumerate(values)) for _, values in axes)):
            variant = _Variant({}, base, list(holes), {}, {}, {}, "")
            suffix: list[str] = []
            for name, (index, (value, node)) in zip(names, combo, strict=True):
                at = tuple(name.split("."))
                source = format_path((*path, "matrix", name, index))
                if not self._lay(variant, at, value, node, source, path):
                    return None
                variant.values[name] = value
                variant.raw_text[name] = _cell_text(value)
                variant.slug_text[name] = slug(value)
                if name not in used:
                    suffix.append(variant.slug_text[name])
            variant.id_suffix = "".join("-" + s for s in suffix)
            variant.base = freeze(variant.base)
            variant.shown = freeze(variant.values)
            variant.relayable = _relayable(variant.holes)
            variants.append(variant)
        return variants

    def _lay(
        self, variant: _Variant, at: FieldPath, value: Any, node: Node, source: str, path: FieldPath
    ) -> bool:
        """Set a matrix value at ``at`` in a copy of the variant's base tree."""
        root = variant.base = dict(variant.base)
        parent: Any = root
        for depth, segment in enumerate(at[:-1]):
            child = parent.get(segment) if isinstance(parent, dict) else None
            if child is None and isinstance(parent, dict):
                child = {}
            if not isinstance(child, dict):
                self._problem(
                    node,
                    (*path, *at[: depth + 1]),
                    f"cannot vary {format_path(at)}: {format_path(at[: depth + 1])} is not a mapping",
                )
                return False
            child = dict(child)
            parent[segment] = child
            parent = child
        if at[-1] in parent:
            self._problem(
                node, (*path, *at), f"{format_path(at)} is set on the item and in its matrix; keep one"
            )
            return False
        parent[at[-1]] = value
        variant.overrides[at] = _Override(value, node, source)
        if isinstance(value, str):
            compiled = compile_template(value)
            if isinstance(compiled, str):
                self._problem(node, (*path, *at), compiled)
                return False
            if isinstance(compiled, Template):
                columns = set(self.rows.columns) if self.rows else set()
                unknown = [n for n in compiled.names if n not in columns]
                if unknown:
                    self._problem(node, (*path, *at), self._unknown_placeholder(unknown[0], columns))
                    return False
                last = next((s for s in reversed(at) if isinstance(s, str)), "")
                variant.holes.append(
                    _Hole(at, compiled, node, compiled.names, FIELD_TYPES.get(last), last in FREE_TEXT_FIELDS)
                )
            else:
                parent[at[-1]] = unescape(value)
        return True

    # -- expand -------------------------------------------------------------------------------------

    def _expand_item(self, item: _Compiled) -> None:
        """Row by row, and within a row variant by variant, so one product's work stays together."""
        rows = range(len(self.rows.records)) if item.uses_rows and self.rows is not None else (None,)
        for row in rows:
            for variant in item.variants:
                self._instance(item, variant, row)

    def _render(
        self, item: _Compiled, variant: _Variant, row: int | None
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
                value = self._fill(hole, variant, record)
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

    def _fill(self, hole: _Hole, variant: _Variant, record: Mapping[str, Cell]) -> Any:
        is_id = hole.path == ("id",)
        texts = variant.slug_text if is_id else variant.raw_text
        name = hole.template.whole
        if name is not None and hole.kind is not None and name not in texts:
            cell = record[name]
            return _convert(cell, hole.kind) if isinstance(cell, str) else cell

        def lookup(key: str) -> str:
            text = texts.get(key)
            return text if text is not None else _cell_text(record[key])

        return hole.template.render(lookup)

    def _instance(self, item: _Compiled, variant: _Variant, row: int | None) -> None:
        rendered = self._render(item, variant, row)
        if rendered is None:
            return
        data, values = rendered
        inst = _Instance(self, item, variant, row)
        item_id = data["id"] + variant.id_suffix
        id_ok = inst.check_id(item_id)
        signature = tuple(
            (type(v), bool(v.strip()) if isinstance(v, str) else v) if h.free else v
            for h, v in zip(variant.holes, values, strict=True)
        )
        verified = signature in variant.verified
        template = variant.template
        if verified and template is not None:
            units: list[Unit] | None = relay(template, item_id, _changes(variant.holes, values))
        else:
            units = self.chain.build(data, item_id, item.location, verified=verified, report=inst.report)
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

    def _adopt_template(self, variant: _Variant, units: list[Unit], item_id: str, values: list[Any]) -> None:
        """Rows of this variant that pass the same checks are built by :func:`relay` from ``units``,
        once relaying them gives back exactly what the full build gave (else never)."""
        if any(u.model_id is not None and u.model_id.startswith(TRAINED_SIGIL) for u in units):
            variant.relayable = False
            return
        if relay(units, item_id, _changes(variant.holes, values)) == units:
            variant.template = tuple(units)
        else:
            variant.relayable = False


def _changes(holes: list[_Hole], values: list[Any]) -> dict[str, Any]:
    """The row's values of the variant's request fields (its id aside)."""
    return {str(h.path[0]): v for h, v in zip(holes, values, strict=True) if h.path != ("id",)}


def _relayable(holes: list[_Hole]) -> bool:
    """Holes that only put text into top-level image fields (or the id)."""
    return all(
        h.path == ("id",) or (len(h.path) == 1 and h.kind is None and can_relay(str(h.path[0])))
        for h in holes
    )


class _Instance:
    """One item × variant × row: knows where each of its fields came from, for messages."""

    __slots__ = ("item", "row", "variant", "x")

    def __init__(self, expander: Expander, item: _Compiled, variant: _Variant, row: int | None) -> None:
        self.x = expander
        self.item = item
        self.variant = variant
        self.row = row

    def origin(self) -> int:
        """This instance as one int: (manifest item, variant, row)."""
        rows = len(self.x.rows.records) + 1 if self.x.rows is not None else 1
        variant = self.item.variants.index(self.variant) if len(self.item.variants) > 1 else 0
        return ((self.item.index * MAX_VARIANTS) + variant) * rows + (0 if self.row is None else self.row + 1)

    def from_origin(self, code: int) -> _Instance:
        """The instance :meth:`origin` encoded (of the same expander)."""
        rows = len(self.x.rows.records) + 1 if self.x.rows is not None else 1
        rest, row = divmod(code, rows)
        index, variant = divmod(rest, MAX_VARIANTS)
        item = next(c for c in self.x.compiled if c.index == index)
        return _Instance(self.x, item, item.variants[variant], None if row == 0 else row - 1)

    def item_id(self) -> str:
        """The expanded id of this instance (rendered again: only asked for when reporting)."""
        rendered = self.x._render(self.item, self.variant, self.row)
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

    def _row_hole(self, path: FieldPath) -> _Hole | None:
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
            return False  # reported once, at the second declaration, by Expander._declared_once
        where, path, note = self.locate(("id",))
        first_where = first_instance.locate(("id",))[0]
        if first_id == item_id:
            detail = f"duplicate item id {item_id!r} (first at {first_where})"
        else:
            detail = f"item id {item_id!r} differs only in case from {first_id!r} (at {first_where})"
        self.x.log.add(where, path, f"{detail}; ids must be unique, as they name output folders{note}")
        return False

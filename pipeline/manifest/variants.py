"""Compiling a manifest item: its placeholders become holes, its matrix becomes variants.

Each item is compiled once, before any row is read: its strings are split into
placeholders, its matrix values are laid over a copy of its data, and only the
leaves that hold placeholders are kept as holes to render per row. Problems found
here are reported once per item, not once per row.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.manifest.chain import ITEM_KEYS
from pipeline.manifest.ids import slug
from pipeline.manifest.problems import ProblemLog, format_path
from pipeline.manifest.rows import Cell, Rows
from pipeline.manifest.schema import (
    EXTRA,
    FIELD_TYPES,
    FREE_TEXT_FIELDS,
    IMAGE_FIELDS,
    TRAINED_IMAGE_FIELDS,
    FieldPath,
    suggest,
)
from pipeline.manifest.spec import Unit, freeze
from pipeline.manifest.yamlsource import Document, Node
from pipeline.output.template import Template, compile_template, unescape

__all__ = ["MAX_VARIANTS", "Compiled", "Compiler", "Hole", "Override", "Variant", "cell_text"]

#: A matrix may not multiply one item into more variants than this.
MAX_VARIANTS = 10_000

_IMAGE_KEYS = frozenset(IMAGE_FIELDS) | frozenset(TRAINED_IMAGE_FIELDS) | {EXTRA}
_ALLOWED_ITEM_KEYS = sorted(_IMAGE_KEYS | ITEM_KEYS)


def cell_text(value: Cell) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


# -- compiled items --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hole:
    """A leaf whose text has placeholders, rendered per row (and per variant)."""

    path: FieldPath
    template: Template
    node: Node
    row_names: tuple[str, ...]
    kind: type | None
    free: bool


@dataclass(frozen=True, slots=True)
class Override:
    """A matrix value laid over the item at ``path``."""

    value: Any
    node: Node
    source: str


@dataclass(slots=True)
class Variant:
    """One matrix combination: the item's data with the matrix values laid over it, and its holes.

    ``verified`` holds the signatures (hole values that matter to the checks) of rows
    that already passed them.
    """

    values: dict[str, Any]
    base: dict[str, Any]
    holes: list[Hole]
    overrides: dict[FieldPath, Override]
    raw_text: dict[str, str]
    slug_text: dict[str, str]
    id_suffix: str
    verified: set[tuple[Any, ...]] = field(default_factory=set)
    shown: Mapping[str, Any] = field(default_factory=dict)
    #: The units of the first row that passed the checks, when later rows may be built from them.
    template: tuple[Unit, ...] | None = None
    relayable: bool = True
    #: Which of ``holes`` is the id (``None``: the id has no placeholder).
    id_at: int | None = None


@dataclass(slots=True)
class Compiled:
    """A manifest item after compiling: its variants, and whether it repeats per row."""

    index: int
    node: Node
    holes: list[Hole]
    variants: list[Variant]
    uses_rows: bool
    location: str
    path: str
    declared: str = ""  # the id as written, casefolded: two items may not declare the same one


class Compiler:
    """Compiles the items of one manifest; problems go to ``log``."""

    def __init__(self, doc: Document, *, rows: Rows | None, log: ProblemLog) -> None:
        self.doc = doc
        self.rows = rows
        self.log = log
        self.declared: dict[
            str, tuple[str, str, bool, FieldPath]
        ] = {}  # folded → (written, where, matrix?, path)

    def _problem(self, node: Node, path: FieldPath, message: str, *, at_key: bool = False) -> None:
        where = self.doc.where_key(node) if at_key else self.doc.where(node)
        self.log.add(where, format_path(path), message)

    def compile(self, index: int, node: Node) -> Compiled | None:
        """The item at ``items[index]`` compiled; ``None`` (after reporting why) when it cannot be."""
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
        holes: list[Hole] = []
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
        return Compiled(index, node, holes, variants, uses_rows, where, format_path(path), declared)

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
        holes: list[Hole],
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
        holes.append(Hole(rel, compiled, node, row_names, kind, free))
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
        holes: list[Hole],
        axes: list[tuple[str, list[tuple[Any, Node]]]],
        path: FieldPath,
    ) -> list[Variant] | None:
        id_hole = next((h for h in holes if h.path == ("id",)), None)
        used = set(id_hole.template.names) if id_hole else set()
        names = [name for name, _ in axes]
        variants: list[Variant] = []
        for combo in itertools.product(*(list(enumerate(values)) for _, values in axes)):
            variant = Variant({}, base, list(holes), {}, {}, {}, "")
            suffix: list[str] = []
            for name, (index, (value, node)) in zip(names, combo, strict=True):
                at = tuple(name.split("."))
                source = format_path((*path, "matrix", name, index))
                if not self._lay(variant, at, value, node, source, path):
                    return None
                variant.values[name] = value
                variant.raw_text[name] = cell_text(value)
                variant.slug_text[name] = slug(value)
                if name not in used:
                    suffix.append(variant.slug_text[name])
            variant.id_suffix = "".join("-" + s for s in suffix)
            variant.base = freeze(variant.base)
            variant.shown = freeze(variant.values)
            variants.append(variant)
        return variants

    def _lay(
        self, variant: Variant, at: FieldPath, value: Any, node: Node, source: str, path: FieldPath
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
        variant.overrides[at] = Override(value, node, source)
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
                    Hole(at, compiled, node, compiled.names, FIELD_TYPES.get(last), last in FREE_TEXT_FIELDS)
                )
            else:
                parent[at[-1]] = unescape(value)
        return True

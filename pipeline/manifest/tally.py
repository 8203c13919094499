"""Rows counted instead of built: what lets ``plan`` and ``validate`` read a million-row catalog.

A row whose checked values look like an earlier row's (its variant's *signature* already passed
the checks) and whose variant has a template (:func:`pipeline.manifest.chain.relay`) would get the
template's units with its own id and text laid over: the same steps, models and output counts,
other keys. Counting such rows needs neither their units nor their rendered prompts: only their
id (rendered, checked and claimed exactly as a full expansion claims it) and their signature.
A :class:`Tally` keeps, per variant, the rows counted that way; :meth:`Tally.units` builds their
units on demand, by the very calls a full expansion makes for them.

:func:`count_rows` is the loop for the common item (one variant, made per row). Whenever a row
is anything but the plain case (a missing column, an id that is taken or unsafe, a signature not
verified yet), it hands the row to the expander's own ``instance``, untouched, which reports
or builds it as a full expansion does: the fast loop only ever counts rows the full path would
have relayed.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from pipeline.manifest.chain import relay, relay_keys
from pipeline.manifest.ids import RESERVED_IDS, unsafe_segment
from pipeline.manifest.instances import Expansion, Instance
from pipeline.manifest.rows import Cell, Rows
from pipeline.manifest.spec import Unit
from pipeline.manifest.variants import Compiled, Hole, Variant

__all__ = ["Tally", "count_rows"]


class Expander(Expansion, Protocol):
    """What counting reads and calls of the expansion (:class:`pipeline.manifest.expansion.Expander`)."""

    def fill(self, hole: Hole, variant: Variant, record: Mapping[str, Cell]) -> Any: ...

    def relay_values(self, variant: Variant, row: int | None) -> tuple[str, list[Any]] | None: ...

    def instance(self, item: Compiled, variant: Variant, row: int | None) -> None: ...


class Tally:
    """Rows left unbuilt, per variant (in first-counted order), with the template that builds them."""

    def __init__(self) -> None:
        self._rows: dict[int, tuple[Variant, array[int]]] = {}
        self.rows = 0
        #: The expansion that counted the rows (set by it): it renders them again on demand.
        self.expander: Expander | None = None

    def add(self, variant: Variant, row: int | None) -> None:
        """Count ``row`` of ``variant`` (whose template and signature cover it; ``None``: an item
        not made per row)."""
        found = self._rows.get(id(variant))
        if found is None:
            found = self._rows[id(variant)] = (variant, array("q"))
        found[1].append(-1 if row is None else row)
        self.rows += 1

    def extend(self, variant: Variant, rows: array[int]) -> None:
        """Count each of ``rows`` of ``variant``."""
        if rows:
            found = self._rows.get(id(variant))
            if found is None:
                self._rows[id(variant)] = (variant, rows)
            else:
                found[1].extend(rows)
            self.rows += len(rows)

    def shapes(self) -> Iterator[tuple[Unit, int]]:
        """Each template unit with the number of counted rows that make one like it."""
        for variant, rows in self._rows.values():
            assert variant.template is not None
            for unit in variant.template:
                yield unit, len(rows)

    def units(self) -> Iterator[Unit]:
        """The units of every counted row: what a full expansion would have relayed for it."""
        expander = self.expander
        for variant, rows in self._rows.values():
            assert expander is not None
            template = variant.template
            assert template is not None
            for row in rows:
                fast = expander.relay_values(variant, None if row < 0 else row)
                assert fast is not None  # counted rows have every column
                item_id, values = fast[0] + variant.id_suffix, fast[1]
                yield from relay(template, item_id, changes(variant.holes, values), plain=True)

    def keys(self) -> Iterator[tuple[Unit, str]]:
        """Each counted row's units as ``(the template unit it copies, its own key)``: the keys
        :meth:`units` would give, without the units."""
        expander = self.expander
        for variant, rows in self._rows.values():
            template = variant.template
            assert expander is not None and template is not None
            holes, suffix = variant.holes, variant.id_suffix
            for row in rows:
                fast = expander.relay_values(variant, None if row < 0 else row)
                assert fast is not None  # counted rows have every column
                made = relay_keys(template, fast[0] + suffix, changes(holes, fast[1]), plain=True)
                for t, _, _, key in made:
                    yield t, key


def changes(holes: list[Hole], values: list[Any]) -> dict[str, Any]:
    """The row's values of the variant's request fields (its id aside)."""
    return {str(h.path[0]): v for h, v in zip(holes, values, strict=True) if h.path != ("id",)}


#: ``signer(record)``: ``(the id before its matrix suffix, the signature)``, or ``None`` when the
#: row must take the full path (a missing column, an id that is not text).
Signer = Callable[[Mapping[str, Cell]], "tuple[str, tuple[Any, ...]] | None"]


def count_rows(x: Expander, item: Compiled, tally: Tally) -> None:
    """Every row of a one-variant item: counted when a full expansion would relay it, else
    handed to the expander. Row order and id claims are the full expansion's."""
    assert x.rows is not None and len(item.variants) == 1
    variant = item.variants[0]
    counted: array[int] = array("q")
    plain = _plain(variant, x.rows)
    if plain is not None:
        _count_plain(x, item, counted, plain)
    else:
        _count_signed(x, item, counted)
    tally.extend(variant, counted)


def _count_signed(x: Expander, item: Compiled, counted: array[int]) -> None:
    assert x.rows is not None
    variant, ids, records = item.variants[0], x.ids, x.rows.records
    sign = signer(x, variant, x.rows)
    first = Instance(x, item, variant, 0).origin()  # row r's origin is first + r
    suffix, verified, reserved = variant.id_suffix, variant.verified, RESERVED_IDS
    for row, record in enumerate(records):
        if sign is not None and variant.template is not None and (got := sign(record)) is not None:
            item_id = got[0] + suffix
            if got[1] in verified:
                folded = item_id.casefold()
                if folded not in ids and folded not in reserved and unsafe_segment(item_id) is None:
                    ids[item_id if folded == item_id else folded] = first + row
                    counted.append(row)
                    continue
        x.instance(item, variant, row)


#: ``(id column, signature of a row with a non-empty id, with an empty one)``.
_Plain = tuple[str, tuple[Any, ...], tuple[Any, ...]]


def _plain(variant: Variant, rows: Rows) -> _Plain | None:
    """The catalog's usual shape, signed without a call per row: every row has every column, the
    id is one column (``"{sku}"``) and every other hole is free text with literal text around."""
    at = variant.id_at
    if at is None or not rows.complete:
        return None
    column = variant.holes[at].template.whole
    fixed: list[Any] = [_constant(h) for h in variant.holes]
    if column is None or column in variant.slug_text or fixed.count(None) != 1:
        return None
    yes, no = list(fixed), fixed
    yes[at], no[at] = (str, True), (str, False)
    return column, tuple(yes), tuple(no)


def _count_plain(x: Expander, item: Compiled, counted: array[int], plain: _Plain) -> None:
    """:func:`_count_signed` for :func:`_plain` variants: a row's signature is one of two."""
    assert x.rows is not None
    column, yes, no = plain
    variant, ids, records = item.variants[0], x.ids, x.rows.records
    first = Instance(x, item, variant, 0).origin()  # row r's origin is first + r
    suffix, verified, reserved, add = variant.id_suffix, variant.verified, RESERVED_IDS, counted.append
    ok_yes = ok_no = False  # whether either signature is verified, with a template: they only
    for row, record in enumerate(records):  # change when a row takes the full path
        cell = record[column]
        if type(cell) is str and (ok_yes if cell.strip() else ok_no):
            item_id = cell + suffix
            folded = item_id.casefold()
            if folded not in ids and folded not in reserved and unsafe_segment(item_id) is None:
                ids[item_id if folded == item_id else folded] = first + row
                add(row)
                continue
        x.instance(item, variant, row)
        ready = variant.template is not None
        ok_yes, ok_no = ready and yes in verified, ready and no in verified


def signer(x: Expander, variant: Variant, rows: Rows) -> Signer | None:
    """How to get a row's id and signature without rendering what the signature does not need:
    a free-text field whose template has literal text around its placeholders is non-empty text
    whatever the row holds. ``None`` when the variant's id has no placeholder (few rows, or a
    duplicate id on every row: the full path reports those)."""
    holes = variant.holes
    at = variant.id_at
    if at is None:
        return None
    needed = tuple(dict.fromkeys(n for h in holes for n in h.row_names))
    every = rows.complete  # every row has every column: no lookup can fail
    fixed = tuple(_constant(h) for h in holes)
    rendered = [i for i, c in enumerate(fixed) if c is None]
    fill, texts = x.fill, variant.slug_text
    id_hole = holes[at]
    column = id_hole.template.whole if id_hole.template.whole not in texts else None

    def sign(record: Mapping[str, Cell]) -> tuple[str, tuple[Any, ...]] | None:
        if not every and any(n not in record for n in needed):
            return None
        parts = list(fixed)
        item_id = ""
        for i in rendered:
            hole = holes[i]
            if i == at and column is not None:
                cell = record[column]
                value: Any = cell if type(cell) is str else None
                if value is None:
                    return None  # not text: the full path renders and checks it
            else:
                value = fill(hole, variant, record)
            if i == at:
                item_id = value
            if hole.free:  # as the full path signs it
                value = (type(value), bool(value.strip()) if isinstance(value, str) else value)
            parts[i] = value
        return item_id, tuple(parts)

    return sign


def _constant(hole: Hole) -> tuple[type, bool] | None:
    """The signature part of a free-text hole whose literal text makes it non-empty text; the id
    is always rendered (it is claimed)."""
    if hole.path == ("id",) or not hole.free:
        return None
    if any(part.strip() for part in hole.template.parts):
        return (str, True)
    return None

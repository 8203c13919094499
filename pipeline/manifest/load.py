"""Load a YAML manifest into a validated :class:`Manifest`, or a :class:`ManifestError` listing every problem.

This module reads the top-level sections (``version``, ``name``, ``defaults``,
``rows``, ``models``, ``output``, ``prices``) and hands ``items`` to
:mod:`pipeline.manifest.expansion`. Nothing here talks to the network: a manifest that
loads is one whose every request already passed the reference's rules.
``manifests/reference.yaml`` shows every feature; in short:

* request blocks use the API's field names; ``extra: {...}`` inside a request block
  or an options group passes fields the reference does not list, unchecked;
* ``defaults.image`` / ``defaults.video`` merge under every request of that step,
  keeping only the fields and the options group that apply to its model;
* ``{column}`` fills from ``rows:``, ``{key}`` from a ``matrix:`` key (slugged in
  ids); ``{{``/``}}`` are literal braces; an item that uses no column is made once;
* ``modelID: "@ava"`` names the trained model declared under ``models: {ava: …}``;
* ``output: {path: "{item}/{step}-{n}.{ext}"}`` lays out outputs (checked for collisions);
* ``prices: {gpt-image-2: 4, video: 40}`` gives credits per output for ``plan``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.catalog import IMAGE_MODELS, VIDEO_MODELS
from pipeline.errors import ConfigError, ManifestError, ManifestProblem
from pipeline.manifest.assets import Assets
from pipeline.manifest.chain import Defaults
from pipeline.manifest.collisions import collisions
from pipeline.manifest.expansion import Expander
from pipeline.manifest.ids import unsafe_segment
from pipeline.manifest.prints import Settle, context_digest
from pipeline.manifest.problems import ProblemLog, format_path
from pipeline.manifest.rows import Rows, load_rows, rows_from_node
from pipeline.manifest.schema import (
    TRAINED_SIGIL,
    FieldPath,
    Finding,
    check_defaults,
    describe_value,
    is_trained_id,
    suggest,
)
from pipeline.manifest.spec import Item, LocalRef, Manifest, ModelSpec, Step, Unit, freeze
from pipeline.manifest.tally import Tally
from pipeline.manifest.training import read_models
from pipeline.manifest.yamlsource import Document, Node, descend, load_yaml, plain
from pipeline.output.layout import OutputLayout
from pipeline.output.template import (
    DEFAULT_OUTPUT_TEMPLATE,
    OUTPUT_FIELDS,
    Template,
    compile_template,
    unescape,
)

__all__ = [
    "DEFAULT_OUTPUT_TEMPLATE",
    "MAX_MANIFEST_BYTES",
    "MAX_ROWS_BYTES",
    "Item",
    "LocalRef",
    "Manifest",
    "ModelSpec",
    "Step",
    "Unit",
    "load_manifest",
]

#: Manifests larger than this are refused before parsing.
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
#: Rows files larger than this are refused before parsing.
MAX_ROWS_BYTES = 256 * 1024 * 1024

_TOP_KEYS = ("version", "name", "defaults", "rows", "items", "models", "output", "prices")
_PRICE_STEPS = ("image", "upscale", "video", "trained")


def load_manifest(
    path: Path,
    *,
    max_bytes: int = MAX_MANIFEST_BYTES,
    max_rows_bytes: int = MAX_ROWS_BYTES,
    settle: Settle | None = None,
    tally: Tally | None = None,
) -> Manifest:
    """Read, check and expand a manifest.

    ``settle`` (a run's, see :mod:`pipeline.manifest.prints`) names the rows already done: they are
    left out of ``units`` and ``items`` (counted in ``skipped_units``), and the expanded rows'
    fingerprints come back in ``prints``. Only ``run`` may pass it: everything else needs every unit.
    ``tally`` (:func:`pipeline.manifest.survey.survey_manifest`'s) counts the rows a full load would
    relay instead of building them: they are missing from ``units`` and ``items``.

    Raises:
        ManifestError: with every problem found, each at ``file:line:column`` and a field path.
    """
    label = str(path)
    doc = load_yaml(path, max_bytes=max_bytes, label=label, what="manifest")
    root = doc.root
    if root is None:
        raise ManifestError(
            [ManifestProblem(f"{label}:1:1", "", "the manifest is empty: expected version: and items:")]
        )
    if not isinstance(root.value, dict):
        raise ManifestError(
            [
                ManifestProblem(
                    doc.where(root),
                    "",
                    "the manifest must be a mapping (version:, items:, …), "
                    f"not {describe_value(plain(root))}",
                )
            ]
        )
    with _collector_paused():
        return _Build(path, doc, root, root.value, max_rows_bytes).run(settle, tally)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while expanding: a million units are millions of new containers,
    each allocation burst triggers a collection, and each full one walks every unit made so far
    (a quarter of the time at 100,000 rows, more above). Expansion makes no reference cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Build:
    """One load: top-level sections in, :class:`Manifest` out, problems collected throughout."""

    def __init__(
        self, path: Path, doc: Document, root: Node, top: dict[str, Node], max_rows_bytes: int
    ) -> None:
        self.path = path
        self.doc = doc
        self.root = root
        self.top = top
        self.max_rows_bytes = max_rows_bytes
        self.log = ProblemLog(first_file=doc.label)
        self.assets = Assets(path.parent)

    def problem(self, node: Node, path: FieldPath, message: str, *, at_key: bool = False) -> None:
        self.log.add(self.doc.where_key(node) if at_key else self.doc.where(node), format_path(path), message)

    def run(self, settle: Settle | None = None, tally: Tally | None = None) -> Manifest:
        for key, node in self.top.items():
            if key not in _TOP_KEYS:
                self.problem(node, (key,), f"unknown section {key!r}{suggest(key, _TOP_KEYS)}", at_key=True)
        version = self._version()
        name = self._name()
        models = read_models(self.top.get("models"), self.doc, self.assets, self.log)
        trained = {spec.name: spec.key for spec in models}
        defaults = self._defaults(trained)
        rows, rows_ok = self._rows()
        output = self._output()
        prices = self._prices(trained)
        items_node = self.top.get("items")
        expander = Expander(
            self.doc, rows=rows, defaults=defaults, trained=trained, assets=self.assets, log=self.log
        )
        if items_node is None:
            self.problem(self.root, (), "missing required section 'items'")
        elif not isinstance(items_node.value, list) or not items_node.value:
            self.problem(items_node, ("items",), "expected a non-empty list of items")
        elif rows_ok:
            if settle is not None and not output:  # another layout is checked over every unit
                expander.settle, expander.context = settle, context_digest(plain(self.root))
            elif tally is not None and not output:
                expander.tally, tally.expander = tally, expander
            expander.expand(items_node)
        if not self.log:
            template = output[0] if output else DEFAULT_OUTPUT_TEMPLATE
            if template != DEFAULT_OUTPUT_TEMPLATE:
                self._collisions(template, output[1] if output else None, name, expander.units)
        if self.log:
            raise self.log.error()
        return Manifest(
            path=self.path,
            name=name,
            version=version,
            items=tuple(expander.items),
            units=tuple(expander.units),
            models=tuple(models),
            prices=freeze(prices),
            output_template=output[0] if output else DEFAULT_OUTPUT_TEMPLATE,
            skipped_units=expander.skipped_units,
            prints=tuple(expander.prints),
        )

    # -- sections -----------------------------------------------------------------------------------

    def _version(self) -> int:
        node = self.top.get("version")
        if node is None:
            return 1
        if node.value != 1 or isinstance(node.value, bool):
            self.problem(
                node,
                ("version",),
                f"unsupported version {describe_value(node.value)}; this tool reads version 1",
            )
        return 1

    def _name(self) -> str:
        node = self.top.get("name")
        if node is None:
            reason = unsafe_segment(self.path.stem)
            if reason is not None:
                self.log.add(
                    f"{self.doc.label}:1:1",
                    "name",
                    f"the name defaults to the file name {self.path.stem!r}, which {reason}; set name:",
                )
            return self.path.stem
        if not isinstance(node.value, str):
            self.problem(node, ("name",), f"expected text, got {describe_value(node.value)}")
            return self.path.stem
        reason = unsafe_segment(node.value)
        if reason is not None:
            self.problem(node, ("name",), f"name {node.value[:80]!r} {reason}; it names the output folder")
        return node.value

    def _mapping(self, key: str) -> dict[str, Node] | None:
        node = self.top.get(key)
        if node is None:
            return None
        if not isinstance(node.value, dict):
            self.problem(node, (key,), f"expected a mapping, got {describe_value(plain(node))}")
            return None
        return node.value

    def _report(self, node: Node, path: FieldPath, findings: list[Finding]) -> None:
        for finding in findings:
            target, _ = descend(node, finding.path)
            self.problem(target, (*path, *finding.path), finding.message, at_key=finding.at_key)

    def _defaults(self, trained: Mapping[str, str]) -> dict[Step, Defaults]:
        sections = self._mapping("defaults") or {}
        result: dict[Step, Defaults] = {}
        for key, node in sections.items():
            if key not in ("image", "video"):
                self.problem(
                    node,
                    ("defaults", key),
                    f"unknown defaults section {key!r}{suggest(key, ('image', 'video'))} (image or video)",
                    at_key=True,
                )
                continue
            if not isinstance(node.value, dict):
                self.problem(
                    node, ("defaults", key), f"expected a mapping, got {describe_value(plain(node))}"
                )
                continue
            block = self._literal(node, ("defaults", key))
            self._report(node, ("defaults", key), check_defaults(key, block, trained=trained))
            result[Step(key)] = Defaults(block, node, f"defaults.{key}")
        return result

    def _literal(self, node: Node, path: FieldPath) -> Any:
        """Plain data of a defaults block, ``{{``/``}}`` unescaped as in items.

        Defaults are not filled per row, so a ``{placeholder}`` there is a mistake.
        """
        value = node.value
        if isinstance(value, dict):
            return {key: self._literal(child, (*path, key)) for key, child in value.items()}
        if isinstance(value, list):
            return [self._literal(child, (*path, i)) for i, child in enumerate(value)]
        if not isinstance(value, str):
            return value
        if isinstance(compile_template(value), Template):
            self.problem(node, path, "placeholders are not filled in defaults; move this field to the items")
        return unescape(value)

    def _rows(self) -> tuple[Rows | None, bool]:
        """The rows table, and whether items can be expanded (not when the rows are unusable)."""
        node = self.top.get("rows")
        if node is None:
            return None, True
        try:
            if isinstance(node.value, list):
                return rows_from_node(node, self.doc), True
            if not isinstance(node.value, str) or not node.value.strip():
                self.problem(node, ("rows",), "expected a file name (CSV, JSON, YAML) or a list of mappings")
                return None, False
            target = self.assets.resolve(node.value)
            if not target.is_file():
                self.problem(node, ("rows",), f"no such rows file: {target}")
                return None, False
            label = node.value if Path(node.value).is_absolute() else str(self.path.parent / node.value)
            return load_rows(target, label=label, max_bytes=self.max_rows_bytes), True
        except ManifestError as exc:
            self.log.extend(exc)
            return None, False

    def _output(self) -> tuple[str, Node] | None:
        """``output.path``, checked by the same rules the engine's :class:`OutputLayout` applies."""
        section = self._mapping("output")
        if section is None:
            return None
        for key, child in section.items():
            if key != "path":
                self.problem(
                    child, ("output", key), f"unknown field {key!r}{suggest(key, ('path',))}", at_key=True
                )
        node = section.get("path")
        if node is None:
            return None
        if not isinstance(node.value, str):
            self.problem(
                node, ("output", "path"), f"expected a path template, got {describe_value(node.value)}"
            )
            return None
        compiled = compile_template(node.value)
        unknown = (
            [n for n in compiled.names if n not in OUTPUT_FIELDS] if isinstance(compiled, Template) else []
        )
        try:
            if unknown:
                raise ConfigError(
                    f"unknown placeholder {{{unknown[0]}}}{suggest(unknown[0], OUTPUT_FIELDS)} "
                    f"(available: {', '.join(OUTPUT_FIELDS)})"
                )
            OutputLayout(self.path.parent, node.value)
        except ConfigError as exc:
            self.problem(node, ("output", "path"), str(exc))
            return None
        return node.value, node

    def _collisions(self, template: str, node: Node | None, name: str, units: list[Unit]) -> None:
        """Two outputs written to one path (ignoring case) or onto a name the layout reserves: refused now."""
        where = node if node is not None else self.root
        path: FieldPath = ("output", "path") if node is not None else ()
        for message in collisions(template, name, units):
            self.problem(where, path, message)

    def _prices(self, trained: Mapping[str, str]) -> dict[str, float]:
        section = self._mapping("prices") or {}
        known = [*IMAGE_MODELS, *VIDEO_MODELS, *_PRICE_STEPS, *(TRAINED_SIGIL + n for n in trained)]
        prices: dict[str, float] = {}
        for key, node in section.items():
            if key not in known and not (is_trained_id(key) and not key.startswith(TRAINED_SIGIL)):
                self.problem(
                    node,
                    ("prices", key),
                    f"unknown price key {key!r}{suggest(key, known)} "
                    "(a model id, @name, trained, image, upscale or video)",
                    at_key=True,
                )
            elif isinstance(node.value, bool) or not isinstance(node.value, int | float) or node.value < 0:
                self.problem(
                    node,
                    ("prices", key),
                    f"expected credits per output (a number ≥ 0), got {describe_value(node.value)}",
                )
            else:
                prices[key] = float(node.value)
        return prices

"""The ``models:`` section: trained models to create and train before the items that use them.

An entry such as ``ava: {name: Ava, gender: Female, age: 30, photos: photos/ava/}``
becomes a :class:`ModelSpec`; items use it as ``modelID: "@ava"``. The photos
folder is checked now (12–20 images of accepted formats), so a run never starts a
training the API will refuse.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.manifest.assets import AssetError, Assets
from pipeline.manifest.ids import unit_key
from pipeline.manifest.problems import ProblemLog, format_path
from pipeline.manifest.schema import EXTRA, TRAINED_SIGIL, FieldPath, describe_value, suggest
from pipeline.manifest.spec import LocalRef, ModelSpec, freeze
from pipeline.manifest.yamlsource import Document, Node, plain

__all__ = ["MODEL_FIELDS", "read_models"]

#: The fields of a ``models:`` entry: the POST /models body, ``photos`` and the ``extra`` escape hatch.
MODEL_FIELDS = ("name", "gender", "age", "ethnicity", "eyeColor", "photos", EXTRA)

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")


def read_models(section: Node | None, doc: Document, assets: Assets, log: ProblemLog) -> list[ModelSpec]:
    """The ``models:`` section: one :class:`ModelSpec` per valid entry; every problem goes to ``log``."""
    reader = _Reader(doc, assets, log)
    if section is None:
        return []
    if not isinstance(section.value, dict):
        reader.problem(section, ("models",), "expected a mapping of model name → name, gender, age, photos")
        return []
    sections = section.value
    specs: list[ModelSpec] = []
    for name, node in sections.items():
        path: FieldPath = ("models", name)
        if not _MODEL_NAME.match(name):
            reader.problem(
                node,
                path,
                f"model name {name!r} must be letters, digits, _ or - "
                f'(items use it as modelID: "{TRAINED_SIGIL}{name}")',
                at_key=True,
            )
            continue
        if not isinstance(node.value, dict):
            reader.problem(node, path, "expected a mapping with name, gender, age, photos, …")
            continue
        spec = reader.model(name, node, node.value, path)
        if spec is not None:
            specs.append(spec)
    return specs


class _Reader:
    """Checks one ``models:`` entry at a time."""

    def __init__(self, doc: Document, assets: Assets, log: ProblemLog) -> None:
        self.doc = doc
        self.assets = assets
        self.log = log

    def problem(self, node: Node, path: FieldPath, message: str, *, at_key: bool = False) -> None:
        self.log.add(self.doc.where_key(node) if at_key else self.doc.where(node), format_path(path), message)

    def model(self, name: str, node: Node, fields: dict[str, Node], path: FieldPath) -> ModelSpec | None:
        """The spec of one entry, or ``None`` when it has problems (all reported)."""
        ok = True
        for key, child in fields.items():
            if key not in MODEL_FIELDS:
                self.problem(
                    child,
                    (*path, key),
                    f"unknown field {key!r}{suggest(key, MODEL_FIELDS)} "
                    "(unlisted API fields go under extra:)",
                    at_key=True,
                )
                ok = False
        request: dict[str, Any] = {"name": name}
        for key in ("name", "ethnicity", "eyeColor", "gender", "age"):
            field_node = fields.get(key)
            if field_node is None:
                continue
            value = field_node.value
            if key == "gender" and value not in ("Male", "Female"):
                self.problem(field_node, (*path, key), f"must be Male or Female, got {describe_value(value)}")
                ok = False
            elif key == "age" and (
                isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 150
            ):
                self.problem(
                    field_node, (*path, key), f"expected an age in years, got {describe_value(value)}"
                )
                ok = False
            elif key not in ("gender", "age") and (not isinstance(value, str) or not value.strip()):
                self.problem(field_node, (*path, key), f"expected text, got {describe_value(value)}")
                ok = False
            request[key] = value
        extra = fields.get(EXTRA)
        if extra is not None:
            if isinstance(extra.value, dict):
                request.update(plain(extra))
            else:
                self.problem(extra, (*path, EXTRA), "expected a mapping of unlisted fields")
                ok = False
        photos_node = fields.get("photos")
        photos: tuple[LocalRef, ...] = ()
        if photos_node is None:
            self.problem(node, path, "missing required field 'photos' (a folder of 12–20 training photos)")
            ok = False
        elif not isinstance(photos_node.value, str) or not photos_node.value.strip():
            self.problem(photos_node, (*path, "photos"), "expected the path of a folder of training photos")
            ok = False
        else:
            try:
                photos = self.assets.photos(photos_node.value)
            except AssetError as exc:
                self.problem(photos_node, (*path, "photos"), str(exc))
                ok = False
        if not ok:
            return None
        key = unit_key({"model": request, "photos": sorted(p.sha256 for p in photos)})
        return ModelSpec(name, key, freeze(request), photos, self.doc.where(node))

"""The value types of a validated manifest: the paid units of work and what they belong to.

Everything here is frozen: the engine reads a :class:`Manifest` and never changes
it. A unit's ``request`` is a :class:`FrozenDict` (lists inside are tuples): it
serialises with ``json.dumps`` as it is, ``dict(unit.request)`` is a mutable
shallow copy, and :meth:`Unit.body` is a mutable deep copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "LOCAL_PREFIX",
    "FrozenDict",
    "Item",
    "LocalRef",
    "Manifest",
    "ModelSpec",
    "Step",
    "Unit",
    "freeze",
    "thaw",
]

#: A request value ``local:sha256:<hex>`` stands for a local file until the engine uploads it.
LOCAL_PREFIX = "local:sha256:"


class FrozenDict(dict[str, Any]):
    """A ``dict`` that refuses changes: read-only, yet ``json.dumps`` and ``dict()`` take it as a dict."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("a manifest request is read-only; copy it with Unit.body() or dict()")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __reduce__(self) -> tuple[type[FrozenDict], tuple[dict[str, Any]]]:
        return FrozenDict, (dict(self),)

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, object]) -> dict[str, Any]:
        return thaw(self)  # type: ignore[no-any-return]


class Step(StrEnum):
    """What one unit asks the API for."""

    #: POST /images/generation
    IMAGE = "image"
    #: POST /images/upscaling
    UPSCALE = "upscale"
    #: POST /videos/generation
    VIDEO = "video"


@dataclass(frozen=True, slots=True)
class LocalRef:
    """A local image that must be uploaded (``auxiliaryType``) before its request is sent.

    ``field`` is where it sits in the request, e.g. ``("referenceImageURLs", 0)``,
    ``("referenceImages", 1, "url")`` or ``("inputImageId",)``; the value there is
    ``LOCAL_PREFIX + sha256`` until the engine replaces it with the uploaded asset's
    URL (for ``*URL*``/``url`` fields) or id (``inputImageId``). Keys use the content
    hash, not the path, so moving a file does not make new work.
    """

    field: tuple[str | int, ...]
    path: Path
    sha256: str
    size_bytes: int

    @property
    def placeholder(self) -> str:
        """The request value that stands for this file."""
        return LOCAL_PREFIX + self.sha256


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A trained model the manifest declares under ``models:``; items use it as ``modelID: "@name"``.

    ``request`` is the POST /models body; ``photos`` are the ``modelInput`` uploads
    (``field`` is ``("photos", i)``). ``key`` changes when either changes.
    """

    name: str
    key: str
    request: Mapping[str, Any]
    photos: tuple[LocalRef, ...]
    location: str


@dataclass(frozen=True, slots=True)
class Unit:
    """One paid request: an item × variant × step × index, identified by a stable ``key``.

    ``key`` is the first 32 hex digits of the SHA-256 of the canonical JSON of the
    step, item id, index, merged request, upstream key and trained-model key: the
    same manifest gives the same keys on every machine.

    The engine completes ``request`` before sending it:

    * local files (``local_files``) are replaced first, by uploaded URL or id;
    * ``upscale`` with an ``upstream``: set ``imageID`` to the id of output
      ``index`` of the upstream unit (image outputs are numbered from 1);
    * ``video`` with an ``upstream``: prepend ``{"url": <that output's url>,
      "role": "first_frame"}`` to ``referenceImages`` (creating the list);
    * ``modelID`` starting with ``@``: replace it with the id of the trained model
      of that :class:`ModelSpec` once it is ``ready``.
    """

    key: str
    item_id: str
    step: Step
    index: int
    request: Mapping[str, Any]
    upstream: str | None
    expected_outputs: int
    location: str
    model_id: str | None
    local_files: tuple[LocalRef, ...] = ()

    def body(self) -> dict[str, Any]:
        """A mutable, JSON-ready copy of ``request``."""
        return thaw(self.request)  # type: ignore[no-any-return]

    def output_numbers(self) -> range:
        """The ``n`` of each output in its item and step: ``(index - 1) * expected_outputs + 1`` onwards."""
        first = (self.index - 1) * self.expected_outputs + 1
        return range(first, first + self.expected_outputs)


@dataclass(frozen=True, slots=True)
class Item:
    """One expanded item (a manifest item × rows row × matrix variant) and the keys of its units."""

    id: str
    location: str
    path: str
    row: int | None
    variant: Mapping[str, Any]
    units: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated manifest: every unit of work, in an order where upstream comes first.

    ``prices`` maps a model id, ``@name``, ``trained`` or a step name to credits per
    output. ``output_template`` is the path of each output under the run folder.
    ``skipped_units`` and ``prints`` are a run's (see :mod:`pipeline.manifest.prints`): units of
    settled rows left out, and ``(fingerprint, unit keys)`` of the rows that were expanded.
    """

    path: Path
    name: str
    version: int
    items: tuple[Item, ...]
    units: tuple[Unit, ...]
    models: tuple[ModelSpec, ...]
    prices: Mapping[str, float]
    output_template: str
    skipped_units: int = 0
    prints: tuple[tuple[bytes, tuple[str, ...]], ...] = ()


_EMPTY = FrozenDict()
_SETTLED = frozenset({str, int, float, bool, type(None), FrozenDict, tuple})


def freeze(value: Any) -> Any:
    """A read-only copy: dicts become :class:`FrozenDict`, lists become tuples.

    Only this function makes a ``FrozenDict`` or a tuple, so both are returned as
    they are: frozen subtrees shared by many requests are frozen once.
    """
    if isinstance(value, dict):
        if type(value) is FrozenDict:
            return value
        if not value:
            return _EMPTY  # every upscale request of a catalog: one object, not one each
        return FrozenDict({k: v if type(v) in _SETTLED else freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(v if type(v) in _SETTLED else freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The inverse of :func:`freeze`: plain dicts and lists, ready for ``json.dumps``."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value

"""Row fingerprints: what lets a nightly run skip the rows of a big catalog that are already done.

A row's fingerprint is a hash of everything its units are made from: the manifest's data (every
section, rows aside), the item it expands, and the row's values. Same fingerprint, same units:
expansion is a pure function of those, with two exceptions that are kept out of the index
(:func:`indexable`): local files (their content, not their name, is in the key) and trained models
(their key comes from their photos). ``PRINT_SCHEME`` names the expansion rules; bump it whenever a
change to the code would give the same manifest and row other units.

The state keeps, per fingerprint, the keys of the row's units (:mod:`pipeline.state.sqlite_prints`).
A load given a :data:`Settle` callback asks it, with every row's fingerprint, which rows are
settled (known, every unit done, every output on disk); those rows are not expanded. Their ids
are still rendered and checked, so a new row cannot take the id of a skipped one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any, Protocol

import orjson

from pipeline.manifest.rows import Cell
from pipeline.manifest.schema import TRAINED_SIGIL
from pipeline.manifest.spec import Unit

__all__ = ["PRINT_SCHEME", "NoneSettled", "Settle", "Settled", "context_digest", "indexable", "row_print"]

#: The expansion rules a fingerprint stands for: bump it when the same manifest and row would
#: expand to other units (a new default, another key derivation, a changed merge).
PRINT_SCHEME = 1


class Settled(Protocol):
    """The settled rows among the fingerprints a load asked about, and their units in all."""

    @property
    def rows(self) -> Container[bytes]: ...

    @property
    def units(self) -> int: ...


#: ``settle(fingerprints)``: called once per load, with every candidate row's fingerprint.
Settle = Callable[[Sequence[bytes]], Settled]


class NoneSettled:
    """A first run's answer: nothing to skip (its rows are fingerprinted to be indexed)."""

    rows: Container[bytes] = frozenset()
    units = 0


def context_digest(data: Any) -> bytes:
    """The digest of a manifest's plain data (rows inside it included), under ``PRINT_SCHEME``."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    return hashlib.blake2b(f"{PRINT_SCHEME}\n{text}".encode(), digest_size=16).digest()


def row_print(context: bytes, item: int, record: Mapping[str, Cell]) -> bytes | None:
    """The fingerprint of item ``item`` expanded with ``record``; ``None`` when it cannot be made."""
    try:
        values = orjson.dumps(record)
    except (orjson.JSONEncodeError, TypeError):  # an integer beyond 64 bits, say: expanded every time
        return None
    digest = hashlib.blake2b(context, digest_size=16)
    digest.update(item.to_bytes(4, "little"))
    digest.update(values)
    return digest.digest()


def indexable(units: Iterable[Unit]) -> bool:
    """Whether a row's units are a function of its fingerprint alone (no file or trained model in them)."""
    return all(
        not u.local_files and not (u.model_id is not None and u.model_id.startswith(TRAINED_SIGIL))
        for u in units
    )

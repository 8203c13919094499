"""Identities: item ids that are safe path segments everywhere, matrix slugs, and stable unit keys."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "MAX_ID_LENGTH",
    "RESERVED_IDS",
    "canonical_json",
    "is_plain",
    "plain_key",
    "slug",
    "unit_key",
    "unsafe_segment",
]

#: Ids longer than this are refused: they become folder names, and file systems cap names at 255 bytes.
MAX_ID_LENGTH = 120
#: Names the output layout keeps at the top of the output folder, so no item may take them.
RESERVED_IDS = frozenset({"runs", "index.jsonl"})

#: The common id, in one match (a catalog checks a million): a letter or digit, then up to 119 of
#: these characters, not a Windows device name before the first dot, no trailing dot or space.
_PLAIN_ID = re.compile(
    r"(?!(?i:CON|PRN|AUX|NUL|COM[1-9]|LPT[1-9])(?:\.|\Z))[A-Za-z0-9][A-Za-z0-9_ .+=@,-]{0,119}(?<![. ])\Z"
)
_WINDOWS_FORBIDDEN = set('<>:"|?*')
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)


def unsafe_segment(text: str) -> str | None:
    """Why ``text`` cannot be a single path segment on every platform, or ``None`` when it can."""
    if _PLAIN_ID.match(text):
        return None
    if not text:
        return "must not be empty"
    if len(text) > MAX_ID_LENGTH:
        return f"is {len(text)} characters long; the limit is {MAX_ID_LENGTH}"
    if text in (".", ".."):
        return "is a relative path component"
    if "/" in text or "\\" in text:
        return "contains a path separator"
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        return f"contains the control or invisible character U+{ord(bad):04X}"
    bad = next((c for c in text if c in _WINDOWS_FORBIDDEN), None)
    if bad is not None:
        return f"contains {bad!r}, which Windows does not allow in file names"
    if text.startswith("."):
        return "starts with a dot (a hidden file)"
    if text != text.strip() or text.endswith("."):
        return "starts or ends with a space, or ends with a dot (Windows drops them)"
    if text.split(".")[0].rstrip().upper() in _RESERVED:
        return f"is a reserved device name on Windows ({text.split('.')[0]})"
    return None


def slug(value: object) -> str:
    """A matrix value as an id fragment: ``"1:1"`` → ``1x1``, ``"Veo 3.1"`` → ``veo-3.1``."""
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    text = re.sub(r"[^a-z0-9._]+", "-", text.casefold().replace(":", "x")).strip("-._")
    return text or "x"


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
#: In orjson's output, a number token with a fraction or an exponent: a float, which orjson may
#: spell differently from ``repr`` (``0.00001`` vs ``1e-05``). Matches inside strings too (harmless).
_FLOATISH = re.compile(rb"[:,\[]-?[0-9]+[.eE]")
_SORTED = orjson.OPT_SORT_KEYS


def canonical_json(payload: Mapping[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8, no NaN: the bytes every unit key is the hash of.

    The stdlib encoder defines them (keys must not change between versions: a changed key is new,
    paid work). orjson writes the same bytes ten times faster for strings, integers, booleans and
    nulls, so it runs first; a payload whose output shows a float, a nested null (orjson writes NaN
    as ``null``; the stdlib refuses it) or that orjson refuses (big integers, non-text keys) is
    encoded again by the stdlib.
    """
    try:
        text = orjson.dumps(payload, option=_SORTED)
    except orjson.JSONEncodeError:
        return _CANONICAL.encode(payload).encode()
    if _FLOATISH.search(text) or text.count(b"null") != list(payload.values()).count(None):
        return _CANONICAL.encode(payload).encode()
    return text


def unit_key(payload: Mapping[str, Any]) -> str:
    """The stable key of a unit: SHA-256 of canonical JSON (sorted keys, no spaces), 32 hex digits."""
    return hashlib.sha256(canonical_json(payload)).hexdigest()[:32]


_SCALAR = (str, bool, type(None))


def is_plain(value: Any) -> bool:
    """Text, booleans, nulls and 64-bit integers only, nested in mappings and lists: what orjson
    writes exactly as :func:`canonical_json` does, with no check of its output."""
    if isinstance(value, _SCALAR):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(is_plain(v) for v in value)
    return False


def plain_key(payload: Mapping[str, Any]) -> str:
    """:func:`unit_key` of a payload known to be :func:`is_plain` (the caller proves it once for
    many): the same key, without looking at orjson's output for floats and NaN."""
    try:
        text = orjson.dumps(payload, option=_SORTED)
    except orjson.JSONEncodeError:  # a lone surrogate, say: refused the way unit_key refuses it
        return unit_key(payload)
    return hashlib.sha256(text).hexdigest()[:32]

"""Values inside a request block: what a check finds, and the checks every field table is built from."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

__all__ = [
    "Check",
    "FieldPath",
    "Finding",
    "check_aspect",
    "check_bool",
    "check_number",
    "check_text",
    "check_text_list",
    "check_url",
    "check_url_list",
    "choice",
    "describe_value",
    "integer",
    "suggest",
]

FieldPath = tuple[str | int, ...]

_ASPECT = re.compile(r"[1-9][0-9]*:[1-9][0-9]*\Z")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem at ``path`` inside a request block; ``at_key`` points at the key rather than its value."""

    path: FieldPath
    message: str
    at_key: bool = False


#: A check appends what it finds about ``value`` at ``path`` to ``out``.
Check = Callable[[object, FieldPath, list[Finding]], None]


def describe_value(value: object) -> str:
    """A short, YAML-flavoured description of a value for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the text {value[:60]!r}" + ("…" if len(value) > 60 else "")
    if isinstance(value, int | float):
        return repr(value)
    return "a mapping" if isinstance(value, Mapping) else "a list"


def suggest(name: str, candidates: Collection[str]) -> str:
    """``"; did you mean 'x'?"`` for the nearest candidate, or nothing."""
    folded = {c.casefold(): c for c in candidates}
    match = folded.get(name.casefold())
    if match is None:
        import difflib  # only a manifest with a mistake needs it: off every run's start-up

        close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
        match = close[0] if close else None
    return f"; did you mean {match!r}?" if match else ""


def check_text(value: object, path: FieldPath, out: list[Finding]) -> None:
    if not isinstance(value, str):
        out.append(Finding(path, f"expected text, got {describe_value(value)}"))
    elif not value.strip():
        out.append(Finding(path, "must not be empty"))


def check_bool(value: object, path: FieldPath, out: list[Finding]) -> None:
    if not isinstance(value, bool):
        out.append(Finding(path, f"expected true or false, got {describe_value(value)}"))


def check_number(value: object, path: FieldPath, out: list[Finding]) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        out.append(Finding(path, f"expected a number, got {describe_value(value)}"))


def integer(low: int | None, high: int | None, note: str = "") -> Check:
    def check(value: object, path: FieldPath, out: list[Finding]) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(Finding(path, f"expected an integer, got {describe_value(value)}"))
        elif (low is not None and value < low) or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            out.append(Finding(path, f"must be {bounds}{note}, got {value}"))

    return check


def choice(choices: Collection[object], note: str = "") -> Check:
    shown = ", ".join(str(c) for c in sorted(choices, key=str))

    def check(value: object, path: FieldPath, out: list[Finding]) -> None:
        if isinstance(value, bool) or value not in choices:
            out.append(Finding(path, f"must be one of {shown}{note}, got {describe_value(value)}"))

    return check


def check_aspect(value: object, path: FieldPath, out: list[Finding]) -> None:
    if not isinstance(value, str) or not _ASPECT.match(value):
        out.append(Finding(path, f'expected a ratio like "1:1" or "9:16", got {describe_value(value)}'))


def check_url(value: object, path: FieldPath, out: list[Finding]) -> None:
    check_text(value, path, out)
    if isinstance(value, str) and _SCHEME.match(value) and not value.startswith(("https://", "http://")):
        out.append(Finding(path, "expected an http(s) URL or a local image file"))


def check_text_list(value: object, path: FieldPath, out: list[Finding]) -> None:
    if not isinstance(value, list | tuple):
        out.append(Finding(path, f"expected a list of text, got {describe_value(value)}"))
        return
    for i, item in enumerate(value):
        check_text(item, (*path, i), out)


def check_url_list(value: object, path: FieldPath, out: list[Finding]) -> None:
    if not isinstance(value, list | tuple):
        out.append(Finding(path, f"expected a list of URLs or image files, got {describe_value(value)}"))
        return
    for i, item in enumerate(value):
        check_url(item, (*path, i), out)

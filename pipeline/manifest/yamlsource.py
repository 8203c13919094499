"""Safe YAML loading that remembers where every value came from.

Only YAML's plain data (mappings, sequences, strings, numbers, booleans, null) is
built, by our own code from the composed node graph: no PyYAML constructor ever
runs, so Python tags (``!!python/object/apply``) cannot execute anything. Scalars
follow the YAML 1.2 core schema, not PyYAML's 1.1 one: ``16:9`` stays the string
``"16:9"`` instead of the sexagesimal integer 969, and ``no``/``on`` stay strings.
Duplicate keys are errors naming both places; anchors and aliases are refused
outright, which is the simplest complete defence against alias bombs.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
import yaml.composer
import yaml.events
import yaml.nodes
import yaml.reader

from pipeline.errors import ManifestError, ManifestProblem

__all__ = [
    "MAX_DEPTH",
    "Document",
    "Node",
    "NodeValue",
    "decode_text",
    "descend",
    "load_yaml",
    "parse_yaml",
    "plain",
    "read_bytes",
]

#: Nesting deeper than this is refused before PyYAML's recursive composer can overflow.
MAX_DEPTH = 64

NodeValue = None | bool | int | float | str | dict[str, "Node"] | list["Node"]

_TAG_PREFIX = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG_PREFIX + t for t in ("str", "int", "float", "bool", "null"))
_MAP, _SEQ = _TAG_PREFIX + "map", _TAG_PREFIX + "seq"
_SCALAR_TAGS = frozenset({_STR, _INT, _FLOAT, _BOOL, _NULL})
_INT_RE = re.compile(r"[-+]?(?:[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)\Z")
_SURROGATE = re.compile("[\ud800-\udfff]")


def unpaired_surrogate(text: str) -> str | None:
    """Why ``text`` is not valid Unicode, or ``None``: a ``\\uD800``-style escape with no partner.

    YAML double-quoted scalars and JSON strings can spell one; it would pass every check and then
    fail when the unit's key or a sidecar is encoded as UTF-8, far from the line that caused it.
    """
    if text.isascii():
        return None
    found = _SURROGATE.search(text)
    if found is None:
        return None
    return (
        f"contains an unpaired surrogate escape (\\u{ord(found.group()):04x}), which is not valid "
        "Unicode; write the character itself, or both halves of its surrogate pair"
    )


_UTF16_32_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)


@dataclass(frozen=True, slots=True)
class Node:
    """One YAML value with its 1-based position, and the position of its key when in a mapping."""

    value: NodeValue
    line: int
    column: int
    key_line: int
    key_column: int


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed file: ``label`` is how locations name it, ``root`` is ``None`` for an empty file."""

    label: str
    root: Node | None

    def where(self, node: Node) -> str:
        """``file:line:column`` of a value."""
        return f"{self.label}:{node.line}:{node.column}"

    def where_key(self, node: Node) -> str:
        """``file:line:column`` of the key a value is stored under (the value itself at top level)."""
        return f"{self.label}:{node.key_line}:{node.key_column}"


class _Resolver(yaml.resolver.BaseResolver):
    """YAML 1.2 core schema: fewer surprises than PyYAML's 1.1 rules for a hand-written manifest."""


for _tag, _regexp, _first in (
    (_BOOL, r"(?:true|True|TRUE|false|False|FALSE)\Z", "tTfF"),
    (_NULL, r"(?:~|null|Null|NULL|)\Z", ["~", "n", "N", ""]),
    (_INT, _INT_RE.pattern, "-+0123456789"),
    (_FLOAT, r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?\Z", "-+.0123456789"),
):
    _Resolver.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))


class _Refused(yaml.composer.ComposerError):
    """YAML that parses but that we refuse to compose (aliases, excessive nesting)."""


class _Loader(
    yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer, _Resolver
):
    """Reader, scanner, parser and composer only: the node graph, never constructed objects."""

    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Resolver.__init__(self)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.events.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                None, None, "anchors and aliases are not supported; write the value out", event.start_mark
            )
        if self._depth >= MAX_DEPTH:
            raise _Refused(
                None, None, f"nesting deeper than {MAX_DEPTH} levels is not supported", event.start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def descend(node: Node, path: Sequence[str | int]) -> tuple[Node, int]:
    """Follow ``path`` from ``node`` as far as it exists: the node reached and how many segments matched."""
    reached = 0
    for segment in path:
        value = node.value
        child: Node | None = None
        if isinstance(value, dict) and isinstance(segment, str):
            child = value.get(segment)
        elif isinstance(value, list) and isinstance(segment, int) and 0 <= segment < len(value):
            child = value[segment]
        if child is None:
            break
        node = child
        reached += 1
    return node, reached


def plain(node: Node) -> Any:
    """The plain data of a node tree, locations dropped."""
    value = node.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def read_bytes(path: Path, *, max_bytes: int, label: str, what: str = "file") -> bytes:
    """Read a file whole, refusing anything over ``max_bytes`` before parsing a byte of it."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise _single(label, f"the {what} is {size:,} bytes, over the {max_bytes:,}-byte limit")
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise _single(label, f"cannot read the {what}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise _single(label, f"the {what} is over the {max_bytes:,}-byte limit")
    return data


def decode_text(data: bytes, *, label: str, what: str = "file") -> str:
    """Decode UTF-8 (a UTF-8 byte-order mark is tolerated); anything else is one clear problem."""
    for bom, encoding in _UTF16_32_BOMS:
        if data.startswith(bom):
            raise _single(
                f"{label}:1:1",
                f"the {what} is {encoding} (it starts with a byte-order mark); save it as UTF-8",
            )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = data[exc.start : exc.start + 1].hex().upper()
        raise _single(
            f"{label}:{line}:{column}", f"the {what} is not valid UTF-8 (byte 0x{byte}); save it as UTF-8"
        ) from exc


def parse_yaml(text: str, *, label: str) -> Document:
    """Parse one YAML document into located plain data, reporting every problem found in it.

    A syntax error stops parsing and is reported alone with its ``line:column``.
    """
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # the reader rejects non-printable characters right here
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else f"{label}:1:1"
        raise _single(where, _syntax_message(exc, text, mark)) from exc
    except yaml.reader.ReaderError as exc:
        line, column = _line_column(text, exc.position)
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise _single(f"{label}:{line}:{column}", f"character {code:#06x} is not allowed in YAML") from exc
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above is marked or a reader error
        raise _single(f"{label}:1:1", str(exc)) from exc
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        return Document(label, None)
    builder = _Builder(label)
    node = builder.build(root, (root.start_mark.line + 1, root.start_mark.column + 1))
    if builder.problems:
        raise ManifestError(builder.problems)
    return Document(label, node)


def load_yaml(path: Path, *, max_bytes: int, label: str, what: str = "file") -> Document:
    """Read, decode and parse a YAML file, every failure becoming a located :class:`ManifestError`."""
    return parse_yaml(
        decode_text(read_bytes(path, max_bytes=max_bytes, label=label, what=what), label=label, what=what),
        label=label,
    )


class _Builder:
    """Turns composed nodes into :class:`Node` values, collecting every problem on the way."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.problems: list[ManifestProblem] = []

    def _problem(self, node: yaml.nodes.Node, message: str) -> None:
        mark = node.start_mark
        self.problems.append(ManifestProblem(f"{self.label}:{mark.line + 1}:{mark.column + 1}", "", message))

    def build(self, node: yaml.nodes.Node, key_at: tuple[int, int]) -> Node:
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        value: NodeValue
        if isinstance(node, yaml.nodes.MappingNode):
            value = self._mapping(node) if self._tag_ok(node, _MAP) else None
        elif isinstance(node, yaml.nodes.SequenceNode):
            value = (
                [
                    self.build(item, (item.start_mark.line + 1, item.start_mark.column + 1))
                    for item in node.value
                ]
                if self._tag_ok(node, _SEQ)
                else None
            )
        else:
            value = self._scalar(node)
        return Node(value, line, column, key_at[0], key_at[1])

    def _tag_ok(self, node: yaml.nodes.Node, expected: str) -> bool:
        if node.tag == expected:
            return True
        self._problem(node, f"unsupported tag {_show_tag(node.tag)}: only plain YAML data is accepted")
        return False

    def _mapping(self, node: yaml.nodes.MappingNode) -> dict[str, Node]:
        result: dict[str, Node] = {}
        seen: dict[str, yaml.nodes.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.nodes.ScalarNode):
                self._problem(key_node, "mapping keys must be plain strings")
                continue
            if key_node.tag not in _SCALAR_TAGS:
                self._problem(
                    key_node, f"unsupported tag {_show_tag(key_node.tag)}: only plain YAML data is accepted"
                )
                continue
            key = str(key_node.value)
            if key_node.style == '"' and (why := unpaired_surrogate(key)):
                self._problem(key_node, f"the key {why}")
                continue
            if key in seen:
                first = seen[key].start_mark
                self._problem(
                    key_node,
                    f"duplicate key {key!r} (first at {self.label}:{first.line + 1}:{first.column + 1})",
                )
                continue
            seen[key] = key_node
            key_mark = key_node.start_mark
            result[key] = self.build(value_node, (key_mark.line + 1, key_mark.column + 1))
        return result

    def _scalar(self, node: yaml.nodes.Node) -> NodeValue:
        text = str(node.value)
        tag = node.tag
        if tag == _STR:
            if (
                isinstance(node, yaml.nodes.ScalarNode)
                and node.style == '"'
                and (why := unpaired_surrogate(text))
            ):  # only escapes make one
                self._problem(node, f"the text {why}")
                return None
            return text
        if tag == _NULL:
            if text in ("", "~", "null", "Null", "NULL"):
                return None
        elif tag == _BOOL:
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
        elif tag == _INT:
            number = _parse_int(text)
            if number is not None:
                return number
            self._problem(node, f"{text[:40]!r} is not an integer this tool can read")
            return None
        elif tag == _FLOAT:
            try:
                real = float(text)
            except ValueError:
                real = math.nan
            if math.isfinite(real):
                return real
            self._problem(node, f"{text[:40]!r} is not a finite number")
            return None
        else:
            self._problem(node, f"unsupported tag {_show_tag(tag)}: only plain YAML data is accepted")
            return None
        self._problem(node, f"{text[:40]!r} cannot be read as {_show_tag(tag)}")
        return None


def _parse_int(text: str) -> int | None:
    if not _INT_RE.match(text):
        return None
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    try:
        if digits.startswith("0x"):
            return sign * int(digits[2:], 16)
        if digits.startswith("0o"):
            return sign * int(digits[2:], 8)
        return sign * int(digits, 10)
    except ValueError:  # more digits than int() converts (CPython's 4300-digit guard)
        return None


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG_PREFIX) :] if tag.startswith(_TAG_PREFIX) else tag


def _syntax_message(exc: yaml.MarkedYAMLError, text: str, mark: Any) -> str:
    parts = [p for p in (exc.context, exc.problem) if p]
    if isinstance(exc, _Refused):
        return "; ".join(parts)
    message = "YAML syntax error: " + ("; ".join(parts) if parts else "cannot parse")
    if mark is not None and 0 <= mark.index < len(text) and text[mark.index] in "@`":
        message += f" (a value starting with {text[mark.index]} must be quoted)"
    return message


def _line_column(text: str, position: int) -> tuple[int, int]:
    starts = [0] + [i + 1 for i, ch in enumerate(text[:position]) if ch == "\n"]
    line = bisect.bisect_right(starts, position)
    return line, position - starts[line - 1] + 1


def _single(location: str, message: str) -> ManifestError:
    return ManifestError([ManifestProblem(location, "", message)])

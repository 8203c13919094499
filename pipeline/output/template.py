"""``{placeholder}`` strings: parsed once, rendered many times.

One syntax serves item strings (``{sku}`` from a rows column, ``{modelID}`` from a
matrix key) and the output path template (``{item}/{step}-{n}.{ext}``). ``{{`` and
``}}`` are literal braces. Parsing happens once per string of the manifest, so
expanding 100,000 rows only joins pre-split parts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_OUTPUT_TEMPLATE",
    "OUTPUT_FIELDS",
    "Template",
    "compile_template",
    "render_output_path",
    "unescape",
]

#: The output layout when a manifest sets no ``output.path``.
DEFAULT_OUTPUT_TEMPLATE = "{item}/{step}-{n}.{ext}"

#: Placeholders an output path template may use, with what each means.
OUTPUT_FIELDS: Mapping[str, str] = {
    "item": "the item id (already a safe path segment)",
    "step": "image, upscale or video",
    "n": "the output's number within its item and step, from 1",
    "index": "the unit's index (which upstream output it consumes), from 1",
    "ext": "the file extension of the downloaded content (jpeg, png, webp, mp4, …)",
    "name": "the manifest name",
    "key": "the unit's stable key",
    "model": "the unit's model id as a slug (empty for upscale)",
}

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True, slots=True)
class Template:
    """A string split into literal ``parts`` around placeholder ``names``; one more part than names."""

    parts: tuple[str, ...]
    names: tuple[str, ...]

    @property
    def whole(self) -> str | None:
        """The placeholder name when the string is exactly one ``{placeholder}``, else ``None``."""
        if len(self.names) == 1 and self.parts == ("", ""):
            return self.names[0]
        return None

    def render(self, lookup: Callable[[str], str]) -> str:
        """Join the parts with each placeholder's text as given by ``lookup``."""
        parts = self.parts
        if len(self.names) == 1:
            return parts[0] + lookup(self.names[0]) + parts[1]
        out = [parts[0]]
        for name, literal in zip(self.names, parts[1:], strict=True):
            out.append(lookup(name))
            out.append(literal)
        return "".join(out)


def compile_template(text: str) -> Template | str | None:
    """Parse ``text``: a :class:`Template`, ``None`` when it has no placeholder, or an error message.

    Without placeholders the caller keeps the original string (with ``{{``/``}}``
    already meaning single braces, see :func:`unescape`).
    """
    if "{" not in text and "}" not in text:
        return None
    parts: list[str] = []
    names: list[str] = []
    literal: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[pos : match.start()])
        token = match.group(0)
        pos = match.end()
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif match.group(1) is not None:
            name = match.group(1).strip()
            if not name:
                return (
                    f"empty placeholder at character {match.start() + 1}; write {{{{ }}}} for literal braces"
                )
            parts.append("".join(literal))
            literal = []
            names.append(name)
        else:
            return (
                f"unmatched {token!r} at character {match.start() + 1}; write {token * 2} for a literal brace"
            )
    literal.append(text[pos:])
    if not names:
        return None
    parts.append("".join(literal))
    return Template(tuple(parts), tuple(names))


def unescape(text: str) -> str:
    """The literal text of a placeholder-free string (``{{`` → ``{``)."""
    return text.replace("{{", "{").replace("}}", "}")


def render_output_path(template: str, fields: Mapping[str, str]) -> str:
    """Render an output path template validated by the manifest loader (fields: :data:`OUTPUT_FIELDS`)."""
    compiled = compile_template(template)
    if compiled is None:
        return unescape(template)
    if isinstance(compiled, str):
        raise ValueError(compiled)
    return compiled.render(fields.__getitem__)

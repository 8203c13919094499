"""The house keeps its shape: small modules, classes and functions (the architecture's promise).

Limits: a class of 300 lines, a function of 60, a module of about 400 ("about": 10 % slack, so a
docstring does not force a split). The parsers that are tables of rules may run longer: they are
listed here with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "pipeline"
MODULE_MAX, CLASS_MAX, FUNCTION_MAX = 440, 300, 60

#: (path relative to pipeline/, qualified name) -> why it may be longer.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _spans(tree: ast.AST, prefix: str = "") -> list[tuple[str, str, int]]:
    found: list[tuple[str, str, int]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            name = f"{prefix}{node.name}"
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            found.append((kind, name, (node.end_lineno or node.lineno) - start + 1))
            found.extend(_spans(node, f"{name}."))
    return found


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_class_and_function_sizes(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    text = path.read_text(encoding="utf-8")
    too_long = []
    if (lines := text.count("\n")) > MODULE_MAX and (rel, "") not in EXCEPTIONS:
        too_long.append(f"module has {lines} lines (max {MODULE_MAX})")
    for kind, name, span in _spans(ast.parse(text)):
        limit = CLASS_MAX if kind == "class" else FUNCTION_MAX
        if span > limit and (rel, name) not in EXCEPTIONS:
            too_long.append(f"{kind} {name} has {span} lines (max {limit})")
    assert not too_long, f"{rel}: " + "; ".join(too_long)

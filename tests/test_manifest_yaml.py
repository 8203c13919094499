"""Hostile and broken YAML (reliability plan M1–M4, M7): refused quickly, safely, with a location."""

from __future__ import annotations

import re
import string
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ManifestError, ManifestProblem
from pipeline.manifest.load import load_manifest


def problems_of(path: Path, **kwargs: int) -> tuple[ManifestProblem, ...]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, **kwargs)
    return caught.value.problems


def test_python_tags_never_run(tmp_path: Path) -> None:
    """M1: ``!!python/object/apply`` is refused as an unsupported tag and nothing executes."""
    sentinel = tmp_path / "pwned"
    path = tmp_path / "m.yaml"
    path.write_text(f"items: !!python/object/apply:os.system ['touch {sentinel}']\n", encoding="utf-8")
    (problem,) = problems_of(path)
    assert problem.location == f"{path}:1:8"
    assert "unsupported tag !!python/object/apply:os.system" in problem.message
    assert not sentinel.exists()


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ("items: [a, b\n", "2:1", "expected ',' or ']'"),
        ("version: 1\nitems:\n  - id: a\n   prompt: p\n", "4:4", "YAML syntax error"),
        ("items:\n\t- id: a\n", "2:1", "found character '\\t'"),
        ("items:\n  - modelID: @ava\n", "2:14", "a value starting with @ must be quoted"),
        ("a: 1\n---\nb: 2\n", "2:1", "expected a single document"),
    ],
)
def test_syntax_error_is_one_problem_with_line_and_column(
    tmp_path: Path, text: str, where: str, fragment: str
) -> None:
    """M2: a syntax error stops parsing and is reported alone, at PyYAML's mark."""
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    (problem,) = problems_of(path)
    assert problem.location == f"{path}:{where}"
    assert fragment in problem.message


def test_duplicate_keys_name_both_lines(tmp_path: Path) -> None:
    """M3: PyYAML would keep the last value silently; we report the second key and point at the first."""
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nitems:\n  - id: a\n    prompt: p\n    prompt: q\nversion: 1\n", encoding="utf-8"
    )
    found = problems_of(path)
    assert [(p.location, p.message) for p in found] == [
        (f"{path}:5:5", f"duplicate key 'prompt' (first at {path}:4:5)"),
        (f"{path}:6:1", f"duplicate key 'version' (first at {path}:1:1)"),
    ]


def test_alias_bomb_is_refused_fast(tmp_path: Path) -> None:
    """M4: a billion-laughs document fails at its first anchor, in milliseconds."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    start = time.perf_counter()
    (problem,) = problems_of(path)
    assert time.perf_counter() - start < 0.5
    assert problem.location == f"{path}:1:4"
    assert "anchors and aliases are not supported" in problem.message


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    """Nesting deep enough to overflow a recursive composer is a problem, not a RecursionError."""
    path = tmp_path / "m.yaml"
    path.write_text("items: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    (problem,) = problems_of(path)
    assert "nesting deeper than 64 levels" in problem.message


@pytest.mark.parametrize(
    ("content", "where", "fragment"),
    [
        (b"", "1:1", "the manifest is empty"),
        (b"# only a comment\n\n", "1:1", "the manifest is empty"),
        (b"- id: a\n- id: b\n", "1:1", "must be a mapping (version:, items:, …), not a list"),
        (b"just text\n", "1:1", "not the text 'just text'"),
        (
            "items: [{id: a}]\n".encode("utf-16"),
            "1:1",
            "is UTF-16 (it starts with a byte-order mark); save it as UTF-8",
        ),
        (b"version: 1\nname: caf\xe9\n", "2:10", "not valid UTF-8 (byte 0xE9)"),
        (b"version: 1\x00\n", "1:11", "character 0x0000 is not allowed"),
    ],
)
def test_unreadable_files_get_one_clear_message(
    tmp_path: Path, content: bytes, where: str, fragment: str
) -> None:
    """M7: empty, a top-level list, a UTF-16 file, bad UTF-8: one problem each, with its place."""
    path = tmp_path / "m.yaml"
    path.write_bytes(content)
    (problem,) = problems_of(path)
    assert problem.location == f"{path}:{where}"
    assert fragment in problem.message


def test_utf8_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    """A UTF-8 BOM (Windows editors add one) is legal YAML and is accepted."""
    path = tmp_path / "m.yaml"
    path.write_bytes(b"\xef\xbb\xbfitems: [{id: a, modelID: gpt-image-2, prompt: p}]\n")
    assert load_manifest(path).items[0].id == "a"


def test_size_cap_is_checked_before_parsing(tmp_path: Path) -> None:
    """M7: a file over ``max_bytes`` is refused without being parsed."""
    path = tmp_path / "m.yaml"
    path.write_text("items: []\n" + "#" * 2000 + "\n", encoding="utf-8")
    (problem,) = problems_of(path, max_bytes=1024)
    assert problem.location == str(path)
    assert "over the 1,024-byte limit" in problem.message


def test_missing_file(tmp_path: Path) -> None:
    """A manifest that cannot be read is a ManifestError naming the file."""
    (problem,) = problems_of(tmp_path / "nope.yaml")
    assert problem.location == str(tmp_path / "nope.yaml") and "cannot read the manifest" in problem.message


def test_bad_numbers_are_located(tmp_path: Path) -> None:
    """Numbers Python cannot hold as written are problems at their place, not crashes."""
    path = tmp_path / "m.yaml"
    path.write_text("version: " + "9" * 5000 + "\nseed: 1e999\n", encoding="utf-8")
    found = problems_of(path)
    assert [(p.location, p.message.split(" ")[-1]) for p in found] == [
        (f"{path}:1:10", "read"),
        (f"{path}:2:7", "number"),
    ]


# -- property: anything either loads or fails with located problems ---------------------------------

KEYS = [
    "version",
    "name",
    "defaults",
    "image",
    "video",
    "rows",
    "items",
    "id",
    "prompt",
    "modelID",
    "numImages",
    "upscale",
    "matrix",
    "options",
    "veo",
    "duration",
    "openai",
    "extra",
    "aspectRatio",
    "imageID",
    "output",
    "path",
    "prices",
    "models",
    "photos",
    "referenceImageURLs",
    "referenceImages",
    "url",
    "role",
    "numVideos",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "gpt-image-2",
            "veo-3.1",
            "1:1",
            "{sku}",
            "a{",
            "first_frame",
            "@ava",
            "..",
            "",
            "x" * 130,
            "018f5f29-7a7e-7cc3-9c1b-1f5e2a9d4b10",
            "{item}/{step}-{n}.{ext}",
            "ref.png",
            "https://x/y.jpg",
        ]
    ),
    st.text(max_size=12),
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=5),
    ),
    max_leaves=25,
)
MANIFESTS = st.fixed_dictionaries(
    {"items": st.lists(st.dictionaries(st.sampled_from(KEYS), DOCUMENTS, max_size=6), max_size=3)},
    optional={k: DOCUMENTS for k in ("version", "defaults", "rows", "output", "prices", "models", "name")},
)
YAMLISH = st.text(alphabet=string.printable + "{}[]&*!@`|>%\u00e9\u202e", max_size=200)
LOCATION = re.compile(r".+:\d+(:\d+)?\Z")


def check_document(folder: Path, content: bytes) -> None:
    path = folder / "m.yaml"
    path.write_bytes(content)
    try:
        load_manifest(path)
    except ManifestError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.location.startswith(str(path)) and LOCATION.match(problem.location), problem
            assert problem.message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(MANIFESTS, DOCUMENTS))
def test_any_document_loads_or_fails_with_locations(tmp_path: Path, document: object) -> None:
    """Any data dumped as YAML loads, or raises ManifestError whose every problem has a location."""
    check_document(tmp_path, yaml.safe_dump(document, allow_unicode=True).encode())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=YAMLISH)
def test_any_text_loads_or_fails_with_locations(tmp_path: Path, text: str) -> None:
    """Random YAML-ish text never raises anything but a located ManifestError."""
    check_document(tmp_path, text.encode())

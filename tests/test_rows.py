"""Rows files (CSV, TSV, JSON, JSON Lines, YAML): values, line numbers, problems pointing into the file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pipeline.errors import ManifestError, ManifestProblem
from pipeline.manifest import rows as rows_module
from pipeline.manifest.load import load_manifest
from pipeline.manifest.rows import Rows, load_rows


def rows_of(tmp_path: Path, name: str, content: str | bytes) -> Rows:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return load_rows(path, label=name, max_bytes=1 << 20)


def problems_of(tmp_path: Path, name: str, content: str | bytes) -> tuple[ManifestProblem, ...]:
    with pytest.raises(ManifestError) as caught:
        rows_of(tmp_path, name, content)
    return caught.value.problems


class TestCsv:
    def test_header_is_line_one_and_values_stay_text(self, tmp_path: Path) -> None:
        """The first data row is line 2; numbers are not converted; blank lines are skipped."""
        rows = rows_of(tmp_path, "p.csv", "sku, name ,price\nA1,Rose,007\n\nB2,Lily,12.50\n")
        assert rows.columns == ("sku", "name", "price")
        assert [dict(r) for r in rows.records] == [
            {"sku": "A1", "name": "Rose", "price": "007"},
            {"sku": "B2", "name": "Lily", "price": "12.50"},
        ]
        assert rows.lines == (2, 4) and rows.where(1, "price") == "p.csv:4"

    def test_quoted_newlines_keep_later_line_numbers_right(self, tmp_path: Path) -> None:
        """A quoted field spanning lines shifts the next row's line number accordingly."""
        rows = rows_of(tmp_path, "p.csv", 'sku,notes\nA,"two\nlines"\nB,one\n')
        assert rows.lines == (2, 4) and rows.records[0]["notes"] == "two\nlines"

    def test_bom_semicolons_and_trailing_empty_columns(self, tmp_path: Path) -> None:
        """Excel habits: a UTF-8 BOM, ';' separators, empty unnamed trailing columns."""
        rows = rows_of(tmp_path, "p.csv", "\ufeffsku;name;;\r\nA;Rose;;\r\n")
        assert rows.columns == ("sku", "name") and rows.records[0] == {"sku": "A", "name": "Rose"}

    def test_tsv(self, tmp_path: Path) -> None:
        """A .tsv file is tab-separated."""
        assert rows_of(tmp_path, "p.tsv", "sku\tname\nA\tRose, red\n").records[0]["name"] == "Rose, red"

    @pytest.mark.parametrize(
        ("content", "where", "fragment"),
        [
            ("sku,name\nA,Rose\nB\n", "p.csv:3", "this row has 1 fields but the header has 2"),
            ("sku,sku\nA,B\n", "p.csv:1", "column 'sku' appears twice"),
            ("sku,\nA,x\n", "p.csv:2", "field 2 has a value but its column has no name"),
            ("", "p.csv:1", "expected a header line"),
            ("sku,name\n", "p.csv:1", "no data rows"),
            (b"sku,name\nA,Ros\xe9\n", "p.csv:2:6", "not valid UTF-8 (byte 0xE9)"),
            ('sku,name\nA,"Rose\n', "p.csv:2", "CSV error"),
        ],
    )
    def test_problems_name_the_line(
        self, tmp_path: Path, content: str | bytes, where: str, fragment: str
    ) -> None:
        """Each CSV problem points at its line (header = 1)."""
        problem = problems_of(tmp_path, "p.csv", content)[0]
        assert problem.location == where and fragment in problem.message


class TestJsonAndYaml:
    def test_json_rows_keep_types_and_lines(self, tmp_path: Path) -> None:
        """Each object's line is where it starts; values keep their JSON types."""
        rows = rows_of(
            tmp_path,
            "p.json",
            '[\n  {"sku": "A", "count": 2},\n  {"sku": "B",\n   "count": 1.5, "ok": true}\n]\n',
        )
        assert [dict(r) for r in rows.records] == [
            {"sku": "A", "count": 2},
            {"sku": "B", "count": 1.5, "ok": True},
        ]
        assert rows.lines == (2, 3) and not rows.complete

    def test_jsonl(self, tmp_path: Path) -> None:
        """JSON Lines: one object per line, blank lines skipped."""
        rows = rows_of(tmp_path, "p.jsonl", '{"sku": "A"}\n\n{"sku": "B"}\n')
        assert rows.lines == (1, 3)

    def test_yaml_rows_know_each_cell(self, tmp_path: Path) -> None:
        """YAML rows point at the exact cell."""
        rows = rows_of(tmp_path, "p.yaml", "- sku: A\n  name: Rose\n- {sku: B, name: Lily}\n")
        assert rows.where(0, "name") == "p.yaml:2:9" and rows.where(1, "sku") == "p.yaml:3:9"

    @pytest.mark.parametrize(
        ("name", "content", "where", "fragment"),
        [
            ("p.json", '{"sku": "A"}', "p.json:1", "must be a list of objects"),
            ("p.json", '[{"sku": "A"},\n {"sku": [1]}]', "p.json:2", "a row value must be text or a number"),
            ("p.json", '[{"sku": "A"},\n {"sku": }]', "p.json:2:10", "JSON error"),
            ("p.json", '[{"sku": "A", "sku": "B"}]', "p.json:1", "duplicate key 'sku'"),
            ("p.json", '[{"n": NaN}]', "p.json:1", "NaN is not a number JSON allows"),
            ("p.json", "[1]", "p.json:1", "each row must be a JSON object"),
            ("p.json", '[{"a": 1}] x', "p.json:1", "extra data"),
            ("p.jsonl", '{"a": 1}\n[2]\n', "p.jsonl:2", "each row must be a JSON object"),
            ("p.yaml", "- a: 1\n- [2]\n", "p.yaml:2:3", "each row must be a mapping"),
            ("p.yaml", "a: 1\n", "p.yaml:1:1", "rows must be a list of mappings"),
            ("p.xlsx", "", "p.xlsx", "unknown rows file type '.xlsx'"),
        ],
    )
    def test_problems_point_into_the_file(
        self, tmp_path: Path, name: str, content: str, where: str, fragment: str
    ) -> None:
        """Structural problems name the file and the row's line."""
        problem = problems_of(tmp_path, name, content)[0]
        assert problem.location == where and fragment in problem.message


# -- rows inside a manifest ----------------------------------------------------------------------


def manifest_with(tmp_path: Path, rows_name: str, rows: str, items: str) -> Path:
    (tmp_path / rows_name).write_text(rows, encoding="utf-8")
    path = tmp_path / "m.yaml"
    path.write_text(
        f"rows: {rows_name}\ndefaults:\n  image: {{modelID: gpt-image-2}}\nitems:\n"
        + textwrap.indent(textwrap.dedent(items), "  "),
        encoding="utf-8",
    )
    return path


def manifest_problems(path: Path) -> tuple[ManifestProblem, ...]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    return caught.value.problems


def test_rows_expand_in_row_order(tmp_path: Path) -> None:
    """One copy of each item per row, with the CSV text in prompts and ids."""
    path = manifest_with(
        tmp_path, "p.csv", "sku,name\nA1,Rose\nB2,Lily\n", '- {id: "p-{sku}", prompt: "photo of {name}"}\n'
    )
    manifest = load_manifest(path)
    assert [
        (i.id, i.row, u.request["prompt"]) for i, u in zip(manifest.items, manifest.units, strict=True)
    ] == [("p-A1", 2, "photo of Rose"), ("p-B2", 3, "photo of Lily")]


def test_unknown_column_names_the_header_and_the_template(tmp_path: Path) -> None:
    """A placeholder naming no column is reported once, at the template, naming the rows file's header."""
    path = manifest_with(
        tmp_path, "p.csv", "sku,color\nA,red\n", '- {id: "{sku}", prompt: "a {colour} cup"}\n'
    )
    (problem,) = manifest_problems(path)
    assert (problem.location, problem.path) == (f"{path}:5:27", "items[0].prompt")
    assert problem.message.startswith(
        f"unknown placeholder {{colour}}: {tmp_path / 'p.csv'}:1 (the header) has no column 'colour'; "
        "did you mean 'color'?"
    )


def test_row_without_the_column_names_row_line_and_column(tmp_path: Path) -> None:
    """JSON rows may lack a key: the problem is at that row's line and names the column and the template."""
    path = manifest_with(
        tmp_path,
        "p.json",
        '[\n {"sku": "A", "name": "x"},\n {"sku": "B"}\n]\n',
        '- {id: "{sku}", prompt: "photo of {name}"}\n',
    )
    (problem,) = manifest_problems(path)
    assert problem.location == f"{tmp_path / 'p.json'}:3"
    assert problem.message == f"this row has no column 'name' (used by {{name}} at {path}:5:27)"


def test_bad_number_from_a_row_is_located_in_the_rows_file(tmp_path: Path) -> None:
    """A whole placeholder filling numImages is converted; text that is no number is an error at its row."""
    path = manifest_with(
        tmp_path,
        "p.csv",
        "sku,count\nA,2\nB,two\nC,9\n",
        '- {id: "{sku}", prompt: p, numImages: "{count}"}\n',
    )
    found = manifest_problems(path)
    assert [(p.location, p.path) for p in found] == [
        (f"{tmp_path / 'p.csv'}:3", "items[0].numImages"),
        (f"{tmp_path / 'p.csv'}:4", "items[0].numImages"),
    ]
    assert found[0].message == (
        f"expected an integer, got the text 'two' (from column 'count'; template at {path}:5:41)"
    )
    assert found[1].message.startswith("must be from 1 to 4")


def test_duplicate_ids_from_rows_name_both_rows(tmp_path: Path) -> None:
    """Two rows giving one id are reported at the second row, naming the first."""
    path = manifest_with(tmp_path, "p.csv", "sku\nA\nB\nA\n", '- {id: "{sku}", prompt: p}\n')
    (problem,) = manifest_problems(path)
    assert problem.location == f"{tmp_path / 'p.csv'}:4"
    assert f"duplicate item id 'A' (first at {tmp_path / 'p.csv'}:2)" in problem.message


def test_unsafe_id_from_a_row(tmp_path: Path) -> None:
    """An id made unsafe by a row value is refused at that row."""
    path = manifest_with(tmp_path, "p.csv", "sku\nA\n../etc\n", '- {id: "{sku}", prompt: p}\n')
    (problem,) = manifest_problems(path)
    assert problem.location == f"{tmp_path / 'p.csv'}:3" and "contains a path separator" in problem.message


def test_missing_rows_file_is_reported_at_the_manifest(tmp_path: Path) -> None:
    """A rows file that does not exist is an error at ``rows:``."""
    path = tmp_path / "m.yaml"
    path.write_text(
        "rows: nope.csv\nitems: [{id: '{sku}', prompt: p, modelID: gpt-image-2}]\n", encoding="utf-8"
    )
    (problem,) = manifest_problems(path)
    assert (problem.location, problem.path) == (
        f"{path}:1:7",
        "rows",
    ) and "no such rows file" in problem.message


def test_rows_file_problems_are_reported_with_the_manifest(tmp_path: Path) -> None:
    """Problems inside the rows file come back through load_manifest with the file's own lines."""
    path = manifest_with(tmp_path, "p.csv", "sku,name\nA\n", '- {id: "{sku}", prompt: p}\n')
    (problem,) = manifest_problems(path)
    assert problem.location == f"{tmp_path / 'p.csv'}:2"


def test_placeholders_in_options_and_matrix_values(tmp_path: Path) -> None:
    """Placeholders work in any string of the item, including matrix values and options."""
    path = manifest_with(
        tmp_path,
        "p.csv",
        "sku,q,name\nA,low,Rose\n",
        """\
        - id: "{sku}"
          prompt: p
          options: {openai: {quality: "{q}"}}
          matrix: {preset: ["{name} studio", "{name} street"]}
        """,
    )
    manifest = load_manifest(path)
    assert [(i.id, u.body()) for i, u in zip(manifest.items, manifest.units, strict=True)] == [
        (
            "A-name-studio",
            {
                "modelID": "gpt-image-2",
                "prompt": "p",
                "preset": "Rose studio",
                "options": {"openai": {"quality": "low"}},
            },
        ),
        (
            "A-name-street",
            {
                "modelID": "gpt-image-2",
                "prompt": "p",
                "preset": "Rose street",
                "options": {"openai": {"quality": "low"}},
            },
        ),
    ]


@st.composite
def _tables(draw: st.DrawFn) -> str:
    """A table, mostly regular: the split's case, and its near misses."""
    width, delimiter = draw(st.integers(1, 3)), draw(st.sampled_from([",", ";", "\t"]))
    cell = st.text(alphabet="ab é;,", max_size=3)
    lines = [[draw(cell) for _ in range(width)] for _ in range(draw(st.integers(1, 5)))]
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return end.join(delimiter.join(line) for line in lines) + draw(st.sampled_from(["", end]))


_CSV_TEXT = st.one_of(st.text(alphabet='ab ,;\t"\r\n\x00é', max_size=40), _tables(), _tables())


@settings(max_examples=200, deadline=None)
@given(text=_CSV_TEXT, tsv=st.booleans(), chunk=st.sampled_from([1, 2, 3, 5, 8, 1 << 20]))
def test_the_plain_csv_split_reads_what_the_csv_module_reads(text: str, tsv: bool, chunk: int) -> None:
    """The split that reads plain CSV files without the csv module's per-row loop (a chunk at a
    time) gives the same table, or steps aside for the general reader (which words every problem)."""
    delimiter = "\t" if tsv else rows_module._delimiter(text)
    plain = rows_module._plain_csv(text, delimiter, chunk=chunk)
    event("split" if plain is not None else "general")
    if plain is None:
        return
    problems: list[ManifestProblem] = []
    records, lines = rows_module._read_csv(text, "x.csv", delimiter, problems)
    assert not problems and records
    table = rows_module._table("x.csv", records, lines)
    assert (plain[0], plain[1], plain[2], True) == (table.columns, table.records, table.lines, table.complete)


class TestUnpairedSurrogates:
    """``"\\ud800"`` is valid JSON and YAML escaping but not Unicode: refused at its line, not later
    as a UnicodeEncodeError while hashing the unit's key or writing its sidecar."""

    @pytest.mark.parametrize(
        ("name", "content", "where"),
        [
            ("p.json", '[\n {"sku": "A", "name": "ok"},\n {"sku": "B", "name": "x\\ud800"}\n]', "p.json:3"),
            ("p.jsonl", '{"sku": "A", "name": "ok"}\n{"sku": "B", "name": "\\udfff"}\n', "p.jsonl:2"),
            ("p.json", '[{"sku": "A", "n\\ud83dame": "ok"}]', "p.json:1"),
        ],
    )
    def test_json_rows_name_the_row_and_the_column(
        self, tmp_path: Path, name: str, content: str, where: str
    ) -> None:
        (problem,) = problems_of(tmp_path, name, content)
        assert problem.location == where
        assert "unpaired surrogate escape" in problem.message and "column " in problem.message
        problem.message.encode("utf-8")  # the message itself prints on any terminal

    def test_a_surrogate_pair_is_one_character_and_loads(self, tmp_path: Path) -> None:
        rows = rows_of(tmp_path, "p.json", '[{"sku": "A", "name": "rose \\ud83c\\udf39"}]')
        assert rows.records[0]["name"] == "rose \U0001f339"

    def test_yaml_manifest_text_and_keys_are_located(self, tmp_path: Path) -> None:
        path = manifest_with(tmp_path, "p.csv", "sku\nA\n", '- {id: "{sku}", prompt: "photo \\ud800"}\n')
        (problem,) = manifest_problems(path)
        assert problem.location == f"{path}:5:27" and "the text contains an unpaired" in problem.message
        path.write_text('rows:\n  - {sku: A, "k\\udc00": v}\nitems:\n  - {id: "{sku}", prompt: p}\n')
        assert any("the key contains an unpaired" in p.message for p in manifest_problems(path))

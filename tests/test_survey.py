"""``plan`` and ``validate`` count the rows a full load would relay: the same plan, the same problems.

A survey (:func:`survey_manifest`) builds no unit for a row its variant's template covers; it only
renders and claims the row's id. Whatever the catalog (ids taken twice or unsafe, empty cells,
missing columns, numbers from cells, matrices, chains, another layout), it must refuse exactly
what the full load refuses, at the same places, and otherwise give the same plan, the same
summary and, on demand, the very same units.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.errors import ManifestError
from pipeline.manifest import ids
from pipeline.manifest.load import Manifest, load_manifest
from pipeline.manifest.plan import summarize
from pipeline.manifest.spec import Unit
from pipeline.manifest.survey import Survey, describe, survey_manifest

#: Three id columns: each item of a catalog takes its id from its own (declared ids must differ).
IDS = ("sku", "alt", "ref")
COLUMNS = (*IDS, "name", "n", "ratio")

#: Odd cells per column: ids taken (in another case), reserved or unsafe; empty text; bad numbers.
_ODD: dict[str, Sequence[Any]] = {
    **dict.fromkeys(IDS, ("S0", "s1", "a1", "runs", "x/y", "CON", "", " ", ".h", 3, None)),
    "name": ["", " ", True, None],
    "n": ["9", "0", "x", 5, None],
    "ratio": ["x", "", 2],
}
ITEMS: list[dict[str, Any]] = [  # {sku}: the item's id column
    {"id": "{sku}", "prompt": "photo of {name}", "upscale": True},
    {"id": "{sku}", "prompt": "photo of {name}"},
    {"id": "{sku}", "prompt": "{name}"},
    {"id": "{sku}", "prompt": "shot of {name}", "numImages": "{n}"},
    {"id": "{sku}", "prompt": "still {name}", "aspectRatio": "{ratio}", "upscale": True},
    {"id": "{sku}", "prompt": "p {name}", "matrix": {"aspectRatio": ["1:1", "4:5"]}},
    {"id": "{sku}", "matrix": {"prompt": ["{name} red"]}},
    {"id": "{sku}-{aspectRatio}", "prompt": "p {name}", "matrix": {"aspectRatio": ["4:5"]}},
    {"id": "{name}{sku}", "prompt": "{name} {ratio}", "negativePrompt": "no {name}"},
    {"id": "fixed", "prompt": "plain"},
    {"id": "{sku}", "prompt": "clip of {name}", "video": {"prompt": "moving {name}"}},
    {"id": "{sku}-{name}", "prompt": "{{braces}} {name}", "upscale": True},
    {"id": "{sku}", "prompt": "  {name}  "},
]
#: Each column's usual values (JSON and YAML rows add the last, not text); one cell in ten is odd.
_GOOD: dict[str, list[Any]] = {"name": ["Mug", "Cap", 7], "n": ["1", "2", 2], "ratio": ["1:1", "4:5", 1]}


@st.composite
def catalogs(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["csv", "jsonl", "inline"]))
    rows: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 12))):
        row: dict[str, Any] = {column: f"{column[0]}{i}" for column in IDS}
        row.update({c: draw(st.sampled_from(good[: 2 + (kind != "csv")])) for c, good in _GOOD.items()})
        if draw(st.integers(0, 2)) == 0:
            column = draw(st.sampled_from(COLUMNS))
            odd = [v for v in _ODD[column] if kind != "csv" or isinstance(v, str)]  # CSV holds text only
            row[column] = draw(st.sampled_from(odd))
        if kind != "csv" and draw(st.integers(0, 19)) == 0:  # only JSON and YAML rows can lack one
            del row[draw(st.sampled_from(COLUMNS))]
        rows.append(row)
    picked = draw(st.lists(st.sampled_from(range(len(ITEMS))), min_size=1, max_size=3, unique=True))
    items = [
        {**ITEMS[k], "id": ITEMS[k]["id"].replace("{sku}", f"{{{IDS[j]}}}")} for j, k in enumerate(picked)
    ]
    doc: dict[str, Any] = {
        "version": 1,
        "name": "cat",
        "defaults": {"image": {"modelID": draw(st.sampled_from(["gpt-image-2", "nanobanana"]))}},
        "items": items,
    }
    if any("video" in item for item in items):
        doc["defaults"]["video"] = {"modelID": "veo-3.1"}
    if draw(st.booleans()):
        doc["prices"] = {"gpt-image-2": 4, "upscale": 1}
    if draw(st.integers(0, 5)) == 0:
        doc["output"] = {"path": "{item}-{step}-{n}.{ext}"}
    return {"kind": kind, "rows": rows, "doc": doc}


def _write(folder: Path, catalog: dict[str, Any]) -> Path:
    doc, rows = dict(catalog["doc"]), catalog["rows"]
    if catalog["kind"] == "csv":
        with (folder / "rows.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            writer.writerows([row.get(c, "") for c in COLUMNS] for row in rows)
        doc["rows"] = "rows.csv"
    elif catalog["kind"] == "jsonl":
        (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        doc["rows"] = "rows.jsonl"
    else:
        doc["rows"] = rows
    path = folder / "catalog.yaml"
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path


def _load(path: Path) -> Manifest | ManifestError:
    try:
        return load_manifest(path)
    except ManifestError as exc:
        return exc


def _survey(path: Path) -> Survey | ManifestError:
    try:
        return survey_manifest(path)
    except ManifestError as exc:
        return exc


def _order(unit: Unit) -> tuple[str, str]:
    return unit.item_id, unit.key


def assert_same(full: Manifest, survey: Survey) -> None:
    """Everything ``plan`` and ``validate`` print, and every unit, as the full load gives them."""
    assert describe(survey) == describe(full)
    assert summarize(survey) == summarize(full)
    assert summarize(survey, prices={"image": 2, "video": 5}) == summarize(
        full, prices={"image": 2, "video": 5}
    )
    keys = [u.key for u in full.units]
    phases = {
        key: ("done", "submitted", "failed", "unknown", "pending")[i % 5] for i, key in enumerate(keys[::2])
    }
    phases["0" * 32] = "done"  # a stale unit
    assert summarize(survey, phases) == summarize(full, phases)
    assert sorted(survey.units(), key=_order) == sorted(full.units, key=_order)
    keyed = sorted((u.step, u.model_id or "", u.expected_outputs, key) for u, key in survey.keyed())
    assert keyed == sorted((u.step, u.model_id or "", u.expected_outputs, u.key) for u in full.units)
    assert survey.items == len(full.items) and survey.unit_count == len(full.units)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(catalog=catalogs())
def test_a_survey_plans_and_refuses_as_the_full_load(tmp_path: Path, catalog: dict[str, Any]) -> None:
    path = _write(tmp_path, catalog)
    full, survey = _load(path), _survey(path)
    if isinstance(full, ManifestError):
        assert isinstance(survey, ManifestError)
        assert survey.problems == full.problems  # the same problems, places and order
        event("refused")
        return
    assert isinstance(survey, Survey), survey
    assert_same(full, survey)
    event(f"counted {min(survey.tally.rows, 3)}+ of {min(survey.items, 3)}+ items")


def test_a_big_catalog_is_counted_not_built(tmp_path: Path) -> None:
    """Past the first row, every row of a plain catalog is only counted, and the plan is the same."""
    rows = [{"sku": f"s{i}", "name": f"Thing {i}", "n": "1", "ratio": "1:1"} for i in range(500)]
    catalog = {
        "kind": "csv",
        "rows": rows,
        "doc": {"name": "cat", "items": [ITEMS[0], {**ITEMS[4], "id": "x{sku}"}]},
    }
    catalog["doc"]["defaults"] = {"image": {"modelID": "gpt-image-2"}}
    path = _write(tmp_path, catalog)
    survey, full = survey_manifest(path), load_manifest(path)
    assert (len(survey.built.units), survey.tally.rows) == (4, 998)  # one row per item built
    assert_same(full, survey)


def test_a_clash_with_a_counted_row_names_both_places(tmp_path: Path) -> None:
    """A counted row's id is claimed: a later row that takes it is reported at both rows' lines."""
    rows = [{"sku": s, "name": "x", "n": "1", "ratio": "1:1"} for s in ("a1", "b2", "c3", "B2")]
    catalog = {"kind": "csv", "rows": rows, "doc": {"name": "cat", "items": [ITEMS[1]]}}
    catalog["doc"]["defaults"] = {"image": {"modelID": "gpt-image-2"}}
    path = _write(tmp_path, catalog)
    with pytest.raises(ManifestError) as caught:
        survey_manifest(path)
    (problem,) = caught.value.problems
    assert problem.location == f"{tmp_path / 'rows.csv'}:5"
    assert f"item id 'B2' differs only in case from 'b2' (at {tmp_path / 'rows.csv'}:3)" in problem.message


@pytest.mark.parametrize("item", [ITEMS[1], ITEMS[2]], ids=["plain", "signed"])
@pytest.mark.parametrize(
    "sku", ["runs", "Index.jsonl", "x/y", "CON", "s0", "S0", " s2", "-", "é", 3, None, True, 2.5]
)
def test_a_counted_row_s_id_is_checked_as_a_built_one(tmp_path: Path, sku: Any, item: Any) -> None:
    """Reserved, unsafe and taken ids are refused on rows past the first, where counting starts,
    and ids from numbers are made as a full load makes them (in either loop: the catalog's usual
    shape, and any other)."""
    rows = [{"sku": s, "name": "x", "n": "1", "ratio": "1:1"} for s in ("s0", "s1", sku)]
    kind = "csv" if isinstance(sku, str) else "jsonl"
    catalog = {"kind": kind, "rows": rows, "doc": {"name": "cat", "items": [item]}}
    catalog["doc"]["defaults"] = {"image": {"modelID": "gpt-image-2"}}
    path = _write(tmp_path, catalog)
    full, survey = _load(path), _survey(path)
    if isinstance(full, Manifest):
        assert isinstance(survey, Survey) and sku in ("-", "é", 3, True, 2.5)
        assert_same(full, survey)
        return
    assert isinstance(survey, ManifestError) and survey.problems == full.problems


_SAFE_BEFORE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_ .+=@,-]{0,119}\Z")
_DEVICES = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.text(alphabet="aCcOoNnMmLlPpTtUuXx19 .-_/\\é\u0131\u017f\u212a", max_size=8),
        st.sampled_from(["CON", "con.txt", "COM1", "com0", "LPT9.x", "Nul ", "a" * 120, "a" * 121, "AUX."]),
    )
)
def test_the_one_match_id_check_is_the_three_step_one(text: str) -> None:
    """Ids are checked with one regular expression: what the three checks it replaced accepted."""
    before = bool(
        _SAFE_BEFORE.match(text)
        and not text.endswith((".", " "))
        and text.split(".")[0].upper() not in _DEVICES
    )
    assert (ids._PLAIN_ID.match(text) is not None) == before

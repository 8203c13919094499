"""Skipping settled rows (row fingerprints) finds exactly what a full expansion finds.

The fast path of a nightly run leaves out rows whose fingerprint the state knows and whose units
are all done. Whatever the edit (a changed cell, a new or deleted row, a duplicated one, another
template or default, a unit reopened), the units it keeps plus the ones it skips must be the full
expansion's, the skipped ones must all be done, and a manifest the full load refuses is refused.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.clock import FakeClock
from pipeline.engine.settled import none_settled
from pipeline.errors import ManifestError
from pipeline.manifest.load import Manifest, load_manifest
from pipeline.output.local import LocalOutputStore
from pipeline.state.sqlite import StateStore
from pipeline.state.sqlite_prints import missing_outputs, settled_rows

_PROMPTS = ("photo of {name} in {color}", "studio shot of {name}", "{name}, {color}, white background")


def _write(folder: Path, rows: Sequence[Sequence[str]], *, prompt: str, aspect: str, upscale: bool) -> Path:
    with (folder / "rows.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "name", "color", "note"])
        writer.writerows(rows)
    doc = {
        "version": 1,
        "name": "cat",
        "defaults": {"image": {"modelID": "gpt-image-2", "aspectRatio": aspect}},
        "rows": "rows.csv",
        "items": [{"id": "{sku}", "prompt": prompt, "upscale": upscale}],
    }
    path = folder / "catalog.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _index(manifest: Manifest) -> dict[bytes, tuple[str, ...]]:
    return dict(manifest.prints)


class _Settled:
    def __init__(self, rows: Mapping[bytes, int]) -> None:
        self.rows, self.units = rows, sum(rows.values())


def _settle(index: Mapping[bytes, tuple[str, ...]], done: set[str]) -> Any:
    def settle(prints: Sequence[bytes]) -> _Settled:
        found = {fp: len(index[fp]) for fp in prints if fp in index and all(key in done for key in index[fp])}
        return _Settled(found)

    return settle


def _load(path: Path, **kw: Any) -> Manifest | ManifestError:
    try:
        return load_manifest(path, **kw)
    except ManifestError as exc:
        return exc


_ROW = st.tuples(
    st.sampled_from(["a1", "b2", "c3", "d4", "e5", "f6", "g7", "h8", "A1"]),
    st.sampled_from(["Mug", "Cap", "Tee"]),
    st.sampled_from(["red", "navy"]),
    st.sampled_from(["", "x"]),
)


_EDITS = ("keep", "keep", "keep", "name", "note", "drop")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=st.lists(_ROW, min_size=1, max_size=8, unique_by=lambda r: r[0].casefold()),
    data=st.data(),
    duplicate=st.integers(0, 5),
    done_share=st.sampled_from([0, 2, 3, 4, 4, 4]),
    change=st.sampled_from(["none"] * 5 + ["prompt", "aspect", "upscale"]),
)
def test_skipping_finds_what_the_full_expansion_finds(
    tmp_path: Path,
    first: list[tuple[str, ...]],
    data: st.DataObject,
    duplicate: int,
    done_share: int,
    change: str,
) -> None:
    path = _write(tmp_path, first, prompt=_PROMPTS[0], aspect="1:1", upscale=True)
    before = load_manifest(path, settle=none_settled)
    index = _index(before)
    keys = [u.key for u in before.units]
    done = {key for i, key in enumerate(keys) if i % 4 < done_share}  # some reopened or never done
    # the edit: rows kept, changed (a used or an unused column), dropped, added, maybe duplicated;
    # maybe another template or default
    edited: list[tuple[str, ...]] = []
    for sku, name, color, note in first:
        edit = data.draw(st.sampled_from(_EDITS))
        if edit != "drop":
            edited.append((sku, name + "!" * (edit == "name"), color, note + "!" * (edit == "note")))
    edited += [(f"new{i}", "Bag", "red", "") for i in range(data.draw(st.integers(1, 3)))]
    edited += edited[:1] * (duplicate == 0)
    path = _write(
        tmp_path,
        edited,
        prompt=_PROMPTS[1 if change == "prompt" else 0],
        aspect="4:5" if change == "aspect" else "1:1",
        upscale=change != "upscale",
    )
    full = _load(path)
    fast = _load(path, settle=_settle(index, done))
    if isinstance(full, ManifestError):
        assert isinstance(fast, ManifestError)
        assert [p.message for p in fast.problems] == [p.message for p in full.problems]
        event("refused")
        return
    assert isinstance(fast, Manifest)
    full_keys = {u.key for u in full.units}
    kept = {u.key: u for u in fast.units}
    skipped = full_keys - kept.keys()
    assert kept.keys() <= full_keys
    assert all(full_unit == kept[full_unit.key] for full_unit in full.units if full_unit.key in kept)
    assert skipped <= done  # only done units are left out
    assert fast.skipped_units == len(skipped)
    event(f"skipped {min(len(skipped), 3)}+, kept {min(len(kept), 3)}+")
    assert [u.key for u in fast.units] == [u.key for u in full.units if u.key in kept]  # same order
    # every row whose units are not all done is expanded
    for item in full.items:
        if not set(item.units) <= done:
            assert set(item.units) <= kept.keys()


def test_a_new_row_cannot_take_the_id_of_a_skipped_one(tmp_path: Path) -> None:
    rows = [("a1", "Mug", "red", ""), ("b2", "Cap", "navy", "")]
    path = _write(tmp_path, rows, prompt=_PROMPTS[0], aspect="1:1", upscale=True)
    before = load_manifest(path, settle=none_settled)
    settle = _settle(_index(before), {u.key for u in before.units})
    path = _write(tmp_path, [*rows, ("A1", "Tee", "red", "")], prompt=_PROMPTS[0], aspect="1:1", upscale=True)
    with pytest.raises(ManifestError, match="differs only in case"):
        load_manifest(path, settle=settle)
    skipped = load_manifest(
        _write(tmp_path, rows, prompt=_PROMPTS[0], aspect="1:1", upscale=True), settle=settle
    )
    assert skipped.units == () and skipped.skipped_units == 4


def test_another_output_layout_expands_everything(tmp_path: Path) -> None:
    """A layout other than the default is checked for collisions over every unit: no skipping."""
    path = _write(tmp_path, [("a1", "Mug", "red", "")], prompt=_PROMPTS[0], aspect="1:1", upscale=True)
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "output": {"path": "{item}-{step}-{n}.{ext}"}}))
    calls: list[int] = []
    manifest = load_manifest(path, settle=lambda prints: calls.append(len(prints)) or none_settled(prints))  # type: ignore[func-returns-value]
    assert calls == [] and len(manifest.units) == 2


# -- the state's index ---------------------------------------------------------------------------------


async def _finish(store: StateStore, key: str, root: Path, name: str) -> None:
    await store.mark_submitting(key)
    await store.mark_submitted(key, f"job-{key}")
    await store.mark_succeeded(key, [(f"a-{key}", "http://127.0.0.1:9/x.jpeg")])
    (root / name).write_bytes(b"\xff\xd8\xff data")
    await store.record_download(key, 1, path=name, bytes=8, sha256="0" * 64)
    await store.mark_done(key)


async def test_the_state_settles_rows_whose_units_are_all_done(tmp_path: Path) -> None:
    rows = [("a1", "Mug", "red", ""), ("b2", "Cap", "navy", ""), ("c3", "Tee", "red", "")]
    manifest = load_manifest(
        _write(tmp_path, rows, prompt=_PROMPTS[0], aspect="1:1", upscale=True), settle=none_settled
    )
    root, state = tmp_path / "out", tmp_path / "state.db"
    root.mkdir()
    fps = [fp for fp, _ in manifest.prints]

    def found() -> tuple[list[int], int]:
        settled = settled_rows(state, fps)
        return [i for i, fp in enumerate(fps) if fp in settled.rows], settled.units

    assert found() == ([], 0)  # no state file yet
    async with StateStore.open(state, clock=FakeClock(), linger_s=0) as store:
        assert found() == ([], 0)  # no index yet
        await store.sync_units(manifest.units)
        await store.record_prints(manifest.prints)
        assert found() == ([], 0)  # nothing done
        for unit in manifest.units:
            await _finish(store, unit.key, root, f"{unit.key}.jpeg")
        assert found() == ([0, 1, 2], 6)
        _, second, third = manifest.prints
        await store.reopen(second[1][1], [1])  # a reopened upscale: its row is no longer settled
        assert found() == ([0, 2], 4)
        assert b"?" * 16 not in settled_rows(state, [*fps, b"?" * 16]).rows  # a row the index does not know
        (root / f"{third[1][0]}.jpeg").unlink()  # the files are the second pass's to check
        assert missing_outputs(state, settled_rows(state, fps).rows, LocalOutputStore(root).present) == {
            third[1][0]: [1]
        }
        # a unit two rows make (they differ in a column no unit reads): unfinished, both are unsettled
        await store.record_prints([(b"!" * 16, third[1])])
        await store.reopen(third[1][0], [1])
        assert found() == ([0], 2)
        assert b"!" * 16 not in settled_rows(state, [*fps, b"!" * 16]).rows


# -- a run ----------------------------------------------------------------------------------------------


async def test_a_rerun_skips_done_rows_and_still_fetches_their_lost_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.engine import settled
    from pipeline.engine.wiring import RunRequest, execute
    from pipeline.simulator import Sandbox, SimConfig
    from tests.conftest import TEST_KEY
    from tests.test_run import assert_outputs_verify, options

    skipped: list[int] = []
    real = settled.Skipping.settle

    def settle(self: settled.Skipping, prints: Sequence[bytes]) -> Any:
        skipped.append((found := real(self, prints)).units)
        return found

    monkeypatch.setattr(settled.Skipping, "settle", settle)
    monkeypatch.setenv("PHOTOGPT_API_KEY", TEST_KEY)
    out = tmp_path / "out"
    rows = [(f"s{i}", f"Thing {i}", "red", "") for i in range(6)]
    async with Sandbox(SimConfig.profile("fast", keys=(TEST_KEY,), seed=5)) as sim:
        request: dict[str, Any] = {"out": out, "base_url": sim.base_url, "options": options()}
        path = _write(tmp_path, rows, prompt=_PROMPTS[0], aspect="1:1", upscale=True)
        assert (await execute(RunRequest(manifest=path, **request))).exit_code == 0
        path = _write(
            tmp_path, [*rows, ("n1", "New", "navy", "")], prompt=_PROMPTS[0], aspect="1:1", upscale=True
        )
        second = await execute(RunRequest(manifest=path, **request))
        assert (second.exit_code, second.submitted, second.stale) == (0, 2, 0)
        lost = next(p for p in (out / "s3").iterdir() if p.suffix == ".jpeg")
        lost.unlink()
        third = await execute(RunRequest(manifest=path, **request))
        kinds = [job["kind"] for job in sim.ledger()]
    assert (third.exit_code, third.submitted, third.stale) == (0, 0, 0)
    assert third.downloaded_bytes > 0 and lost.exists()
    assert len(kinds) == 14  # 7 rows x (image + upscale), each paid once
    assert skipped == [12, 14, 12]  # units: the second run; the third's passes (the second expands s3)
    assert_outputs_verify(out)

"""Unit keys never change with the encoder, and the resume's streamed state diff sorts units right."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.clock import FakeClock
from pipeline.engine.diff import sort_out
from pipeline.manifest.ids import _CANONICAL, canonical_json, unit_key
from pipeline.output.local import LocalOutputStore
from pipeline.state.sqlite import Phase, StateStore

# -- keys ------------------------------------------------------------------------------------------

_SCALARS = (
    st.text(max_size=20)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.none()
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _stdlib(payload: dict[str, Any]) -> bytes | type[Exception]:
    try:
        return _CANONICAL.encode(payload).encode()
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        return type(exc)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["step", "item", "index", "request", "upstream", "model"]), _JSON))
def test_canonical_json_is_the_stdlib_encoding_byte_for_byte(payload: dict[str, Any]) -> None:
    expected = _stdlib(payload)
    if isinstance(expected, bytes):
        assert canonical_json(payload) == expected
    else:  # what the stdlib refuses (NaN, infinity) is still refused
        with pytest.raises((ValueError, TypeError, UnicodeEncodeError)):
            canonical_json(payload)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["step", "item", "index", "request", "upstream", "model"]), _JSON))
def test_the_plain_key_is_the_unit_key_of_every_plain_payload(payload: dict[str, Any]) -> None:
    """Relayed rows hash orjson's bytes unchecked once their template is plain: the same keys."""
    from pipeline.manifest.ids import is_plain, plain_key

    if is_plain(payload):
        try:
            expected = unit_key(payload)
        except (ValueError, TypeError, UnicodeEncodeError):
            return
        assert plain_key(payload) == expected


def test_keys_of_known_payloads_are_unchanged() -> None:
    """Pinned: a changed key would make every recorded unit new work, paid again."""
    image = {
        "step": "image",
        "item": "sku-1",
        "index": 1,
        "request": {
            "prompt": "café «x»",
            "numImages": 2,
            "options": {"openai": {"quality": "high"}},
            "ratio": 1.5,
            "tags": ["a", None, True],
        },
        "upstream": None,
        "model": None,
    }
    upscale = {
        "step": "upscale",
        "item": "sku-1",
        "index": 1,
        "request": {},
        "upstream": "abc",
        "model": None,
    }
    assert unit_key(image) == "efdfbcd09ca8f202c5fc0d6c0be076ab"
    assert unit_key(upscale) == "ec6b3cb5d1cf36592ded728907a4c436"
    assert unit_key(upscale) == hashlib.sha256(_CANONICAL.encode(upscale).encode()).hexdigest()[:32]


def test_nan_is_refused_as_before() -> None:
    with pytest.raises(ValueError):
        unit_key({"request": {"x": math.nan}, "upstream": None})


# -- the streamed state diff -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Unit:
    key: str
    item_id: str
    step: str = "image"
    index: int = 1
    request: dict[str, Any] = field(default_factory=lambda: {"prompt": "p"})
    upstream: str | None = None
    expected_outputs: int = 1
    model_id: str | None = None


async def _finish(store: StateStore, unit: _Unit, root: Path, *, write: bool = True) -> None:
    await store.mark_submitting(unit.key)
    await store.mark_submitted(unit.key, f"job-{unit.key}")
    await store.mark_succeeded(unit.key, [(f"a-{unit.key}", "http://127.0.0.1:9/x.jpeg")])
    path = f"{unit.item_id}/image-1.jpeg"
    if write:
        (root / unit.item_id).mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"\xff\xd8\xff data")
    await store.record_download(unit.key, 1, path=path, bytes=8, sha256="0" * 64)
    await store.mark_done(unit.key)


@pytest.mark.parametrize("share", [50, 10**9], ids=["scan", "lookup"])
async def test_sort_out_passes_on_only_what_is_left_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, share: int
) -> None:
    """Both ways of reading the state (two scans; by key, for a few units of a big state) agree."""
    from pipeline.engine import diff

    monkeypatch.setattr(diff, "_LOOKUP_SHARE", share)
    root = tmp_path / "out"
    done, gone, resized, running, new = (_Unit(f"{i:032x}", f"item-{i}") for i in range(5))
    child = _Unit("c" * 32, "item-0", step="upscale", upstream=done.key)
    stale = _Unit("f" * 32, "old-item")
    async with StateStore.open(tmp_path / "state.db", clock=FakeClock(), linger_s=0) as store:
        await store.sync_units([done, gone, resized, running, stale])
        await _finish(store, done, root)
        await _finish(store, gone, root, write=False)
        await _finish(store, resized, root)
        (root / resized.item_id / "image-1.jpeg").write_bytes(b"\xff\xd8")
        await store.mark_submitting(running.key)
        await store.mark_submitted(running.key, "job-running")

        units = [done, gone, resized, running, new, child]
        resume = await sort_out(units, store, LocalOutputStore(root).present)

        assert [u.key for u in resume.units] == [gone.key, resized.key, running.key, new.key, child.key]
        assert (resume.done, resume.new, resume.stale, resume.reopened) == (1, 2, 1, 2)
        assert resume.phases == {
            gone.key: Phase.SUCCEEDED,
            resized.key: Phase.SUCCEEDED,
            running.key: Phase.SUBMITTED,
            done.key: Phase.DONE,  # the new child's upstream, so the scheduler can release it
        }
        phases = dict(store.iter_phases())
        assert phases[gone.key] == Phase.SUCCEEDED and phases[new.key] == Phase.PENDING
        assert phases[done.key] == Phase.DONE
        record = store.get(gone.key)
        assert record is not None and not record.outputs[0].downloaded


# -- rows built from a checked template ---------------------------------------------------------------

_ROOT = Path(__file__).resolve().parents[1]

_TRICKY = """\
version: 1
name: tricky
defaults:
  image: {modelID: gpt-image-2, aspectRatio: "1:1", extra: {mood: calm}}
  video: {modelID: veo-3.1}
rows: [{sku: a1, name: A, color: red}, {sku: b2, name: B, color: blue}, {sku: c3, name: C, color: red}]
items:
  - id: "{sku}"
    prompt: "photo of {name} in {color}"
    upscale: true
    video: {prompt: "orbit {name}"}
  - id: "x-{sku}"
    prompt: "plain {name}"
    extra: {mood: "{color}"}
  - id: "m-{sku}"
    matrix: {prompt: ["studio {name}", "outdoor {name} {color}"], aspectRatio: ["1:1", "4:5"]}
"""


def _load_both(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    from pipeline.manifest import expansion
    from pipeline.manifest.load import load_manifest

    fast = load_manifest(path)
    with monkeypatch.context() as patch:
        patch.setattr(expansion, "_relayable", lambda holes: False)
        full = load_manifest(path)
    return fast, full


@pytest.mark.parametrize("name", ["catalog.yaml", "demo.yaml", "chain.yaml", "tricky"])
def test_relayed_rows_are_the_units_a_full_build_makes(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows built from a variant's checked template must equal the full build, key for key."""
    if name == "tricky":
        path = tmp_path / "tricky.yaml"
        path.write_text(_TRICKY, encoding="utf-8")
    else:
        path = _ROOT / "manifests" / name
    fast, full = _load_both(path, monkeypatch)
    assert fast.units == full.units
    assert fast.items == full.items
    assert len(fast.units) > 1


async def test_a_chained_step_added_later_is_built_from_the_done_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun that adds ``upscale`` to done items pays only for the upscales, built from the images
    the first run made (the done upstream units never reach the stages, but their outputs do)."""
    from pipeline.simulator import Sandbox, SimConfig
    from tests.conftest import TEST_KEY
    from tests.test_run import assert_outputs_verify, catalog, run, write_manifest
    from tests.virtual_clock import VirtualClock

    monkeypatch.setenv("PHOTOGPT_API_KEY", TEST_KEY)
    out = tmp_path / "out"
    async with Sandbox(SimConfig.profile("fast", keys=(TEST_KEY,), seed=5), clock=VirtualClock()) as sim:
        first = write_manifest(tmp_path, catalog(3, upscale_every=99, video_every=99))
        assert (await run(sim, first, out)).exit_code == 0
        later = write_manifest(tmp_path, catalog(3, upscale_every=1, video_every=99))
        summary = await run(sim, later, out)
        kinds = [job["kind"] for job in sim.ledger()]
    # item 0 had its upscale (and video) in the first run: two new upscales, nothing else paid again
    assert summary.exit_code == 0 and summary.submitted == 2
    assert len(kinds) == 7 and kinds.count("image") == 3
    assert_outputs_verify(out)

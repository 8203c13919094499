"""``plan``: counts per step and model, what the state says, and estimated credits; nothing is sent."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipeline.manifest.load import Manifest, Step, load_manifest
from pipeline.manifest.plan import PlanRow, price_of, render, summarize

MANIFEST = """\
    prices: {gpt-image-2: 4, upscale: 1, video: 40}
    defaults:
      image: {modelID: gpt-image-2}
      video: {modelID: veo-3.1}
    items:
      - {id: a, prompt: p, numImages: 2, upscale: true, video: {prompt: v}}
      - {id: b, prompt: p, modelID: nanobanana}
      - {id: c, video: {prompt: v, modelID: seedance-2.0, numVideos: 2}}
    """


@pytest.fixture(name="manifest")
def _manifest(tmp_path: Path) -> Manifest:
    path = tmp_path / "shop.yaml"
    path.write_text(textwrap.dedent(MANIFEST), encoding="utf-8")
    return load_manifest(path)


def test_counts_per_step_and_model(manifest: Manifest) -> None:
    """Rows group units by step (image, upscale, video) and model; totals add up."""
    summary = summarize(manifest)
    assert [(r.step, r.model, r.units, r.outputs, r.pending, r.credits) for r in summary.rows] == [
        (Step.IMAGE, "gpt-image-2", 1, 2, 1, 8.0),
        (Step.IMAGE, "nanobanana", 1, 1, 1, None),
        (Step.UPSCALE, "-", 2, 2, 2, 2.0),
        (Step.VIDEO, "veo-3.1", 2, 2, 2, 80.0),
        (Step.VIDEO, "seedance-2.0", 1, 2, 1, 80.0),
    ]
    assert (summary.units, summary.outputs, summary.paid_requests, summary.to_send) == (7, 9, 7, 7)
    assert (summary.credits_total, summary.credits_remaining, summary.unpriced) == (
        170.0,
        170.0,
        ("image nanobanana",),
    )


def test_state_phases_are_counted_and_stale_units_reported(manifest: Manifest) -> None:
    """Phases from the state file land in done / in flight / failed / pending; unknown keys are stale."""
    image, upscale1, upscale2, *_ = manifest.units
    phases = {image.key: "done", upscale1.key: "submitted", upscale2.key: "failed", "0" * 32: "done"}
    summary = summarize(manifest, phases)
    assert summary.rows[2] == PlanRow(
        Step.UPSCALE, "-", 2, 2, done=0, in_flight=1, failed=1, pending=0, credits=2.0
    )
    assert (summary.done, summary.in_flight, summary.failed, summary.pending, summary.stale) == (
        1,
        1,
        1,
        4,
        1,
    )
    assert summary.to_send == 4
    assert summary.credits_remaining == 170.0 - 8.0


def test_price_lookup_order(manifest: Manifest) -> None:
    """Model id first, then ``trained`` for trained models, then the step."""
    image = manifest.units[0]
    assert price_of(image, {"gpt-image-2": 3, "image": 9}) == 3
    assert price_of(image, {"image": 9}) == 9
    assert price_of(image, {}) is None


def test_prices_argument_overrides_the_manifest(manifest: Manifest) -> None:
    """A price table from settings replaces the manifest's."""
    assert summarize(manifest, prices={"image": 1, "upscale": 0, "video": 0}).credits_total == 3.0


def test_render_is_a_compact_table(manifest: Manifest) -> None:
    """The rendered plan has a header line, one line per group, a total and the notes."""
    image = manifest.units[0]
    text = render(summarize(manifest, {image.key: "unknown", "f" * 32: "done"}))
    lines = text.splitlines()
    assert lines[0] == "shop (shop.yaml): 3 items, 7 units, 7 paid requests (6 still to send), 9 outputs"
    assert lines[1].split() == [
        "step",
        "model",
        "units",
        "outputs",
        "done",
        "in",
        "flight",
        "failed",
        "pending",
        "credits",
    ]
    assert lines[2].split() == ["image", "gpt-image-2", "1", "2", "0", "1", "0", "0", "8"]
    assert lines[3].split() == ["image", "nanobanana", "1", "1", "0", "0", "0", "1", "-"]
    assert lines[7].split() == ["total", "7", "9", "0", "1", "0", "6", "170"]
    assert "1 units were being submitted when a run stopped" in text
    assert "1 units in the state file are no longer in the manifest" in text
    assert "estimated credits: 170 in all, 170 still to spend; no price for image nanobanana" in text


def test_plan_without_prices_shows_no_estimate(tmp_path: Path) -> None:
    """Without a price table there is no credit line and credits show as '-'."""
    path = tmp_path / "m.yaml"
    path.write_text("items: [{id: a, prompt: p, modelID: gpt-image-2}]\n", encoding="utf-8")
    summary = summarize(load_manifest(path))
    assert summary.credits_total is None and "estimated credits" not in render(summary)

"""Review decisions in the state, the review server's guards, and where a regeneration puts its seed.

Fast, in-process tests; the end-to-end loop (browser, shell, ledger) is in test_review_browser.py.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from pipeline.clock import FakeClock
from pipeline.engine.regenerate import apply_regeneration, plan_regeneration, seed_path, with_seed
from pipeline.errors import StateError
from pipeline.manifest.spec import Step, Unit
from pipeline.output.layout import OutputLayout
from pipeline.output.review_server import ReviewServer
from pipeline.state.sqlite import SCHEMA_VERSION, StateStore, open_readonly

SHA_A, SHA_B = "a" * 64, "b" * 64


async def test_last_decision_by_time_wins_and_undo_clears(tmp_path: Path, clock: FakeClock) -> None:
    async with StateStore.open(tmp_path / "s.db", clock=clock) as store:
        await store.record_decision(SHA_A, "reject", note="too dark", path="x/image-1.jpeg", item_id="x")
        old = datetime(2020, 1, 1, tzinfo=UTC)
        await store.record_decision(SHA_A, "approve", at=old)  # an older import does not win
        await store.record_decision(SHA_B, "approve")
        await store.record_decision(SHA_B, "undo")
        current = store.decisions()
        assert list(current) == [SHA_A]
        assert (current[SHA_A].verdict, current[SHA_A].note, current[SHA_A].path) == (
            "reject",
            "too dark",
            "x/image-1.jpeg",
        )
        with pytest.raises(StateError, match="approve, reject or undo"):
            await store.record_decision(SHA_A, "maybe")
        with pytest.raises(StateError, match="sha256"):
            await store.record_decision("not-a-hash", "approve")
    with open_readonly(tmp_path / "s.db") as view:
        assert view.decisions()[SHA_A].verdict == "reject"


async def test_a_version_1_state_file_is_migrated(tmp_path: Path, clock: FakeClock) -> None:
    """A file from before decisions existed gets the new tables on the next writer's open."""
    path = tmp_path / "s.db"
    async with StateStore.open(path, clock=clock):
        pass
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE decisions; DROP TABLE retired; PRAGMA user_version = 1;")
    conn.close()
    with pytest.raises(StateError, match="schema version 1"):
        open_readonly(path)
    async with StateStore.open(path, clock=clock) as store:
        await store.record_decision(SHA_A, "approve")
        assert store.review_counts() == {"approved": 0, "rejected": 0, "regenerated": 0}
    with open_readonly(path) as view:
        assert list(view.decisions()) == [SHA_A]
    assert SCHEMA_VERSION == 2


def test_seed_goes_where_the_model_takes_one() -> None:
    trained = {"modelID": "@ava", "prompt": "p"}
    assert with_seed(dict(trained), "image", 7) == {**trained, "seed": 7}
    veo = {"modelID": "veo-3.1-fast", "options": {"veo": {"duration": 4}}}
    assert with_seed(dict(veo), "video", 9)["options"] == {"veo": {"duration": 4, "seed": 9}}
    public = {"modelID": "gpt-image-2", "prompt": "p"}
    assert with_seed(dict(public), "image", 5) == public  # no seed field: the same request again
    assert seed_path("upscale", {"imageID": "x"}) is None
    assert seed_path("video", {"modelID": "kling-video-pro"}) is None


async def test_review_server_needs_the_token_and_json(tmp_path: Path, clock: FakeClock) -> None:
    out = tmp_path / "out"
    (out / "item").mkdir(parents=True)
    (out / "item" / "image-1.png").write_bytes(b"\x89PNG")
    (out / ".state").mkdir()
    async with (
        StateStore.open(out / ".state" / "state.db", clock=clock) as store,
        ReviewServer(out, store, token="tok-123") as server,
        aiohttp.ClientSession() as http,
    ):
        base = f"http://127.0.0.1:{server.port}"
        assert server.url == f"{base}/tok-123/"
        for path in ("/", "/wrong/", "/tok-12/item/image-1.png", "/tok-1234/"):
            async with http.get(base + path) as r:
                assert r.status == 403, path
        async with http.get(server.url.rstrip("/"), allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/tok-123/"
        async with http.get(server.url) as r:
            assert r.status == 200 and 'data-mode="review"' in await r.text()
            assert "connect-src &#39;self&#39;" in await r.text()
        async with http.get(server.url + "item/image-1.png") as r:
            assert r.status == 200 and await r.read() == b"\x89PNG"
        for bad in (".state/state.db", "..%2F..%2Fetc%2Fpasswd", "item/../.state/state.db"):
            async with http.get(server.url + bad) as r:
                assert r.status in (403, 404), bad
        decisions = server.url + "api/decisions"
        async with http.post(decisions, data="sha256=x") as r:
            assert r.status == 415  # a form post (what a foreign page can send) is refused
        async with http.post(decisions, json={"sha256": SHA_A, "verdict": "approve"},
                             headers={"Origin": "http://evil.example"}) as r:  # fmt: skip
            assert r.status == 403
        async with http.post(decisions, json={"sha256": "short", "verdict": "approve"}) as r:
            assert r.status == 400
        async with http.post(decisions, json={"sha256": SHA_A, "verdict": "reject", "note": "n"}) as r:
            assert r.status == 200 and (await r.json())["current"]["verdict"] == "reject"
        assert store.decisions()[SHA_A].note == "n"
        async with http.post(decisions, json={"sha256": SHA_A, "verdict": "undo"}) as r:
            assert (await r.json())["current"] is None


def _unit(key: str, step: str, model: str | None, upstream: str | None = None, outputs: int = 1) -> Unit:
    request: dict[str, object] = {"modelID": model, "prompt": key} if model else {}
    return Unit(key, key, Step(step), 1, request, upstream, outputs, "m.yaml:1:1", model)


async def _done(store: StateStore, out: Path, unit: Unit, fill: str) -> list[str]:
    """Run ``unit`` through the state to done with files on disk; returns their sha256s."""
    await store.mark_submitting(unit.key)
    await store.mark_submitted(unit.key, f"job-{unit.key}")
    await store.mark_succeeded(unit.key, [(f"a{n}", "u") for n in range(unit.expected_outputs)])
    shas = []
    for n in range(1, unit.expected_outputs + 1):
        rel = f"{unit.item_id}/{unit.step}-{n}.png"
        (out / unit.item_id).mkdir(exist_ok=True)
        (out / rel).write_bytes(f"{fill}{n}".encode())
        (out / rel).with_suffix(".json").write_text("{}")
        shas.append(fill * 64)
        await store.record_download(unit.key, n, path=rel, bytes=2, sha256=fill * 64 if n == 1 else "e" * 64)
    await store.mark_done(unit.key)
    return shas


async def test_regeneration_plan_moves_files_aside_and_resets_units(tmp_path: Path, clock: FakeClock) -> None:
    """A rejected image and its chain: counted and priced first, files kept under .rejected/, units
    pending with a seed where the model takes one; a sibling output goes as superseded."""
    out = tmp_path / "out"
    out.mkdir()
    image = _unit("img", "image", "@ava", outputs=2)  # a trained model: takes a seed
    child = _unit("up", "upscale", None, upstream="img")
    other = _unit("other", "image", "gpt-image-2")
    layout = OutputLayout(out)
    async with StateStore.open(out / ".state" / "state.db", clock=clock) as store:
        await store.sync_units([image, child, other])
        await _done(store, out, image, "c")
        await _done(store, out, child, "d")
        await _done(store, out, other, "f")
        (out / ".rejected" / "img").mkdir(parents=True)
        (out / ".rejected" / "img" / f"image-1.{'c' * 12}.png").write_bytes(b"older")  # never overwritten
        await store.record_decision("c" * 64, "reject", note="wrong bottle")
        await store.record_decision("f" * 64, "approve")
        plan = plan_regeneration(store, [image, child, other], {"trained": 3, "upscale": 1})
        assert (plan.rejected, plan.children, plan.credits) == (1, 1, 7.0)  # 3 x 2 outputs + 1
        assert plan.describe() == "regenerating 2 unit(s): 1 rejected + 1 chain child(ren); about 7 credits"
        assert await apply_regeneration(plan, store, layout, clock) == 2
        assert store.get("img").phase == store.get("up").phase == "pending"
        assert store.get("other").phase == "done"
        seeds = store.resources("seed")
        assert set(seeds) == {"img"} and isinstance(seeds["img"]["seed"], int)
        retired = {(r.unit_key, r.n): (r.phase, r.path) for r in store.retired()}
        assert retired == {
            ("img", 1): ("rejected", f".rejected/img/image-1.{'c' * 12}-2.png"),
            ("img", 2): ("superseded", f".rejected/img/image-2.{'e' * 12}.png"),
            ("up", 1): ("superseded", f".rejected/up/upscale-1.{'d' * 12}.png"),
        }
        assert (out / ".rejected" / "img" / f"image-1.{'c' * 12}.png").read_bytes() == b"older"
        assert (out / ".rejected" / "img" / f"image-1.{'c' * 12}-2.json").is_file()
        assert not (out / "img" / "image-1.png").exists() and (out / "other" / "image-1.png").exists()
        assert store.review_counts() == {"approved": 1, "rejected": 0, "regenerated": 2}
        again = plan_regeneration(store, [image, child, other], {})
        assert again.targets == () and again.credits == 0.0

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
from pipeline.engine.regenerate import seed_path, with_seed
from pipeline.errors import StateError
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

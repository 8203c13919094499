"""``POST /images/upload`` at most once: only a failure that proves nothing arrived is retried."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.engine.run import _parse_time
from pipeline.simulator import Sandbox, SimConfig
from pipeline.state.sqlite import open_readonly
from tests.conftest import TEST_KEY
from tests.test_run import PNG_1PX, options, run, write_manifest
from tests.virtual_clock import VirtualClock

UPLOAD = "POST /api/images/upload"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTOGPT_API_KEY", TEST_KEY)
    monkeypatch.delenv("PHOTOGPT_API_KEY_FILE", raising=False)


def _items(tmp_path: Path) -> list[dict[str, Any]]:
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "bag.png").write_bytes(PNG_1PX)
    return [{"id": "a", "prompt": "bag on a table", "referenceImageURLs": ["refs/bag.png"]}]


@pytest.mark.parametrize(("fault", "uploads"), [({"next_n_429": 2}, 3), ({"next_n_5xx": 1}, 1)])
async def test_an_upload_is_retried_only_when_nothing_arrived(
    tmp_path: Path, fault: dict[str, int], uploads: int
) -> None:
    """429s prove nothing arrived: retried until it is uploaded. A 5xx does not: sent once, and the
    item fails with a reason that says so (a rerun with --retry-failed tries again)."""
    config = SimConfig.profile("fast", keys=(TEST_KEY,), seed=3, fault_routes=(UPLOAD,))
    async with Sandbox(config, clock=VirtualClock()) as sim:
        sim.control(**fault)
        summary = await run(
            sim, write_manifest(tmp_path, _items(tmp_path)), tmp_path / "out", options=options()
        )
        assert sim.stats()["requests"][UPLOAD] == uploads
        if uploads > 1:
            assert summary.exit_code == 0, summary.failures
            # The sidecar's request is the body that was sent, recorded with the intent.
            side = json.loads((tmp_path / "out" / "a" / "image-1.json").read_text())
            with open_readonly(tmp_path / "out" / ".state" / "state.db") as view:
                [rec] = view.units()
                sent = view.resource("sent", rec.key)
            assert sent is not None and side["request"] == sent
            assert sent["referenceImageURLs"][0].startswith("http://127.0.0.1")
        else:
            assert summary.exit_code == 1
            [failure] = summary.failures
            assert "may or may not have arrived" in failure.reason
            assert sim.stats()["jobs_created"] == 0


@pytest.mark.parametrize(
    ("text", "readable"),
    [
        (None, False),
        ("", False),
        ("yesterday", False),
        ("2026-01-01T00:00:00", False),
        ("2026-01-01T00:00:00Z", True),
    ],
)
def test_an_unreadable_intent_time_is_not_taken_for_now(text: str | None, readable: bool) -> None:
    """None makes the caller search back days and log it; a naive time is as unreadable as garbage."""
    assert (_parse_time(text) is not None) is readable

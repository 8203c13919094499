"""The reconcile race, driven step by step on the simulator: a listing must not see another POST's job
as the uncertain unit's own.

A POST that meets a 5xx is uncertain; the run lists the jobs near it to learn whether it created one.
If another POST of the run creates its job while that listing is under way and its reply has not been
recorded yet, the listing shows one unclaimed job: adopting it puts two units on one job (a wrong image
under an item's name, or a resend that pays twice). The simulator holds the listing and the second
POST's reply, so the order is exact, not a matter of timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from pipeline import logs
from pipeline.engine.run import RunSummary
from pipeline.simulator import Sandbox, SimConfig
from pipeline.state.sqlite import open_readonly
from tests.conftest import TEST_KEY
from tests.test_run import jobs_per_body, options, run, write_manifest

POST = "POST /api/images/generation"
LIST = "GET /api/jobs"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTOGPT_API_KEY", TEST_KEY)
    monkeypatch.delenv("PHOTOGPT_API_KEY_FILE", raising=False)


def _phases(state: Path) -> dict[str, tuple[str, str | None]]:
    if not state.exists():
        return {}
    with open_readonly(state) as view:
        return {r.item_id: (str(r.phase), r.job_id) for r in view.units()}


async def _until(check: Any, what: str, seconds: float = 20.0) -> None:
    with anyio.fail_after(seconds):
        while not check():  # noqa: ASYNC110 - polls the simulator and the state file
            await anyio.sleep(0.02)


@pytest.mark.slow
async def test_a_job_created_during_the_listing_is_not_adopted_by_the_uncertain_unit(tmp_path: Path) -> None:
    """A's POST meets a 503 (nothing created); the listing starts; B's POST creates its job while the
    listing is held and B's reply is held too. The run must not give B's job to A."""
    config = SimConfig.profile("fast", keys=(TEST_KEY,), seed=3, fault_routes=(POST,))
    async with Sandbox(config) as sim:
        sim.control(next_n_5xx=1, hold=[POST, LIST])
        manifest = write_manifest(tmp_path, [{"id": "a", "prompt": "first"}, {"id": "b", "prompt": "second"}])
        out = tmp_path / "out"
        state = out / ".state" / "state.db"
        # B leaves 2 s after A, while A's listing is held: B's job falls in A's window.
        opts = options(submit_workers=1, submit_rate=0.5)
        done: list[RunSummary] = []
        logs.configure(fmt="json", level="info")  # reconcile_waits is an info event
        with structlog.testing.capture_logs() as events:
            async with anyio.create_task_group() as tg:

                async def go() -> None:
                    done.append(await run(sim, manifest, out, options=opts))

                tg.start_soon(go)
                try:
                    # The listing that reconciles A is under way; B's job exists, its reply held.
                    await _until(lambda: sim.stats()["waiting"].get(LIST, 0) >= 1, "the listing")
                    await _until(lambda: sim.stats()["waiting"].get(POST, 0) >= 1, "B's job")
                    assert sim.stats()["jobs_created"] == 1  # B's: A's 503 created nothing
                    sim.control(release=[LIST])
                    # The run reads the listing: it either decides about A at once (adopting B's job
                    # is the bug) or waits for the POSTs in flight around the listing (B) to be recorded.
                    await _until(
                        lambda: (
                            _phases(state).get("a", ("", None))[0] != "submitting"
                            or any(e["event"] == "reconcile_waits" for e in events)
                        ),
                        "A's decision",
                    )
                finally:
                    sim.control(release=[POST, LIST])
        summary = done[0]
        phases = _phases(state)
        assert phases["a"][1] != phases["b"][1], "two units on one job: A adopted B's job"
        assert summary.exit_code == 0, summary.failures
        assert sim.stats()["jobs_created"] == 2
        assert max(jobs_per_body(sim).values()) == 1


@pytest.mark.slow
async def test_resends_wait_for_the_other_uncertain_posts_before_the_clock_is_known(tmp_path: Path) -> None:
    """Three POSTs meet a 503 (nothing created), one after the other; the first resend loses its
    reply (its job created). No job of ours has shown the server's clock yet, so every span is
    ``±slack`` wide: had the first unit been resent as soon as it was decided, its lost job would
    sit in the spans of the two POSTs not decided yet, and all three would end ``unknown`` (seen in
    CI when the first reconcile batch held two of ten units). Resent together once all three are
    decided, the two resends that are answered show the clock, and the lost one's job is adopted."""
    config = SimConfig.profile("fast", keys=(TEST_KEY,), seed=3, fault_routes=(POST,))
    async with Sandbox(config) as sim:
        sim.control(next_n_5xx=3, next_n_lost=1)
        items = [{"id": name, "prompt": f"product {name}"} for name in ("a", "b", "c")]
        manifest = write_manifest(tmp_path, items)
        # 2 POSTs a second: "a" is decided (0.5 s settle) while "b" and "c" are in flight or not sent.
        opts = options(submit_workers=1, submit_rate=2.0, reconcile_slack_s=5.0)
        logs.configure(fmt="json", level="info")
        with structlog.testing.capture_logs() as events:
            summary = await run(sim, manifest, tmp_path / "out", options=opts)
        assert summary.exit_code == 0, summary.failures
        kinds = [e["event"] for e in events]
        assert kinds.count("submission_resent") == 3
        assert kinds.count("job_adopted") == 1
        first_resend = kinds.index("submission_resent")
        assert kinds[:first_resend].count("submission_uncertain") == 3, "a resend before all were decided"
        assert sim.stats()["jobs_created"] == 3
        assert max(jobs_per_body(sim).values()) == 1

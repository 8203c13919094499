"""Lost replies on a busy run: a POST creates its job, then answers 502, while 64 POSTs are in flight
and replies take up to 1.5 s. Resolved in the same run, never by a guess.

A lost reply is adopted when its job is provably the unit's own (:mod:`pipeline.engine.reconcile`);
the ambiguous ones stay ``unknown``. The figures (lost, adopted, unknown, wrong) are printed: run with
``-s`` to see them. Targets: at 1 % lost, at least 90 % adopted; at 8 %, not one wrong adoption.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.manifest.load import load_manifest
from pipeline.manifest.spec import thaw
from pipeline.simulator import Sandbox, SimConfig
from pipeline.simulator.store import body_hash
from pipeline.state.sqlite import open_readonly
from tests.conftest import TEST_KEY
from tests.test_run import jobs_per_body, options, run, write_manifest
from tests.virtual_clock import VirtualClock

pytestmark = pytest.mark.slow

POST = "POST /api/images/generation"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTOGPT_API_KEY", TEST_KEY)
    monkeypatch.delenv("PHOTOGPT_API_KEY_FILE", raising=False)


async def lost_reply_figures(tmp_path: Path, *, units: int, rate: float, seed: int) -> dict[str, Any]:
    """Run ``units`` images with ``rate`` of their replies lost; count what became of the lost ones."""
    config = SimConfig.profile(
        "fast",
        keys=(TEST_KEY,),
        seed=seed,
        fault_routes=(POST,),
        lost_reply_rate=rate,
        reply_delay_s=(0, 1.5),
    )
    manifest = write_manifest(tmp_path, [{"id": f"p{i:04d}", "prompt": f"product {i}"} for i in range(units)])
    out = tmp_path / "out"
    async with Sandbox(config, clock=VirtualClock()) as sim:  # latencies of virtual time: load-proof
        opts = options(submit_workers=64, max_active=256)
        summary = await run(sim, manifest, out, options=opts)
        stats, ledger = sim.stats(), {j["jobId"]: j["bodyHash"] for j in sim.ledger()}
        doubled = max(jobs_per_body(sim).values())
    requests = {u.key: body_hash(thaw(u.request)) for u in load_manifest(manifest).units}
    lost = set(stats["lost_replies"])
    with open_readonly(out / ".state" / "state.db") as view:
        records = view.units()
    owned = {r.job_id: r.key for r in records if r.job_id}
    return {
        "units": units,
        "lost": len(lost),
        "adopted": sum(1 for job in lost if job in owned),
        "unknown": sum(1 for r in records if str(r.phase) == "unknown"),
        "wrong": sum(1 for r in records if r.job_id and ledger[r.job_id] != requests[r.key]),
        "paid_twice": doubled > 1,
        "exit": summary.exit_code,
        "elapsed_s": round(summary.elapsed_s, 1),
    }


async def test_at_one_percent_lost_nearly_all_are_adopted_in_the_same_run(tmp_path: Path) -> None:
    figures = await lost_reply_figures(tmp_path, units=1000, rate=0.01, seed=11)
    print("lost replies at 1 %:", figures)
    assert figures["lost"] >= 5
    # The >= 90 % figure is a rate over many lost replies (reported in the closing notes across runs);
    # one run has only 5-11, and timing can leave one ambiguous, so a run may leave one unknown: never
    # paid twice, never adopted wrongly.
    assert figures["adopted"] >= figures["lost"] - 1, figures
    assert figures["wrong"] == 0 and not figures["paid_twice"], figures


async def test_at_eight_percent_lost_not_one_is_adopted_wrongly(tmp_path: Path) -> None:
    figures = await lost_reply_figures(tmp_path, units=400, rate=0.08, seed=12)
    print("lost replies at 8 %:", figures)
    assert figures["lost"] >= 15
    assert figures["wrong"] == 0 and not figures["paid_twice"], figures
    assert figures["adopted"] + figures["unknown"] == figures["lost"], figures  # none resent

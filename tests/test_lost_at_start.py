"""An outage as a run starts: its first POSTs create their jobs and lose their replies before any job
of ours has been read, on zero-latency virtual time (no request takes time to teach the server clock).

Without a bound on the server's clock the uncertain units' spans are ``±reconcile_slack_s``: every one
holds every job, nothing can be told apart, and after a minute of waiting they end ``unknown``. The
``Date`` header of every answer bounds the clock from the first request
(:mod:`pipeline.engine.serverclock`): each lost reply has exactly one job in its span and is adopted.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from pipeline import logs
from pipeline.simulator import Sandbox, SimConfig
from pipeline.state.sqlite import open_readonly
from tests.conftest import TEST_KEY
from tests.test_run import jobs_per_body, options, run, write_manifest
from tests.test_sweep import SkewedClock

POST = "POST /api/images/generation"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTOGPT_API_KEY", TEST_KEY)
    monkeypatch.delenv("PHOTOGPT_API_KEY_FILE", raising=False)


async def lost_at_start(
    tmp_path: Path,
    *,
    offset: timedelta,
    units: int = 4,
    date_off_s: float = 0.0,
    refused: int = 0,
    **opts: Any,
) -> dict[str, Any]:
    """``units`` images, one POST every 0.5 s, the first four replies lost (the job created, then a
    502); the first listing is read once all four are sent (``reconcile_settle_s``): no race."""
    config = SimConfig.profile(
        "fast", keys=(TEST_KEY,), seed=5, fault_routes=(POST,), date_offset_s=date_off_s
    )
    manifest = write_manifest(tmp_path, [{"id": f"p{i}", "prompt": f"product {i}"} for i in range(units)])
    out = tmp_path / "out"
    logs.configure(fmt="json", level="info")
    async with Sandbox(config, clock=SkewedClock(offset)) as sim:
        sim.control(next_n_5xx=refused, next_n_lost=4)  # ``refused`` 503s first: nothing created
        with structlog.testing.capture_logs() as events:
            summary = await run(
                sim,
                manifest,
                out,
                options=options(**{"submit_workers": 4, "submit_rate": 2, "reconcile_settle_s": 2.0, **opts}),
            )
        doubled = max(jobs_per_body(sim).values())
    with open_readonly(out / ".state" / "state.db") as view:
        records = view.units()
    return {
        "uncertain": sum(e["event"] == "submission_uncertain" for e in events),
        "adopted": sum(e["event"] == "job_adopted" for e in events),
        "resent": sum(e["event"] == "submission_resent" for e in events),
        "unknown": sum(str(r.phase) == "unknown" for r in records),
        "paid_twice": doubled > 1,
        "exit": summary.exit_code,
        "elapsed_s": round(summary.elapsed_s, 1),
    }


@pytest.mark.parametrize("hours", [0, 1, -1])
async def test_lost_replies_before_any_job_is_read_are_adopted_at_once(tmp_path: Path, hours: int) -> None:
    """A server clock on ours or an hour off: the ``Date`` headers bound it before any job is read."""
    figures = await lost_at_start(tmp_path, offset=timedelta(hours=hours))
    print("lost at start:", figures)
    assert figures["uncertain"] == 4 and figures["adopted"] == 4, figures
    assert figures["unknown"] == 0 and figures["resent"] == 0 and not figures["paid_twice"], figures
    assert figures["exit"] == 0
    assert figures["elapsed_s"] < 10, figures  # not the minute of reconcile_slack_s


async def test_with_date_headers_ignored_they_wait_for_the_slack_and_end_unknown(tmp_path: Path) -> None:
    """``server_date_window_s=None`` (a server whose ``Date`` is not to be trusted): the behaviour
    before the header was read. Never paid twice, never a guess: those left ambiguous wait for the
    slack, then end unknown."""
    figures = await lost_at_start(tmp_path, offset=timedelta(0), server_date_window_s=None)
    print("lost at start, Date ignored:", figures)
    assert figures["unknown"] == 4 and figures["resent"] == 0 and not figures["paid_twice"], figures
    assert figures["elapsed_s"] >= 60, figures


async def test_a_date_on_another_clock_never_makes_us_pay_twice(tmp_path: Path) -> None:
    """A proxy's ``Date`` 3 s ahead of the ``createdAt`` clock, beyond the window: by ``Date`` alone
    every span is empty. A resend needs the ``±slack`` span empty too, so none is sent again; with no
    job of ours to show the real clock they end unknown after the slack, as without the header."""
    figures = await lost_at_start(tmp_path, offset=timedelta(0), date_off_s=3.0)
    print("lost at start, Date 3 s ahead:", figures)
    assert figures["resent"] == 0 and not figures["paid_twice"], figures
    assert figures["adopted"] + figures["unknown"] == 4, figures


async def test_a_date_on_another_clock_is_dropped_once_our_jobs_show_the_real_one(
    tmp_path: Path,
) -> None:
    """The same proxy, and later POSTs answered: their jobs' ``createdAt`` contradicts the ``Date``
    bound, which is dropped (a warning); the lost replies are then adopted by ``createdAt``."""
    figures = await lost_at_start(tmp_path, offset=timedelta(0), units=8, date_off_s=3.0)
    print("lost at start then answered, Date 3 s ahead:", figures)
    assert figures["adopted"] == 4 and figures["resent"] == 0 and not figures["paid_twice"], figures


async def test_refused_posts_among_lost_ones_are_sent_again_and_the_lost_adopted(tmp_path: Path) -> None:
    """Two 503s that created nothing, then four lost replies, before any job of ours is read."""
    figures = await lost_at_start(tmp_path, offset=timedelta(hours=1), units=6, refused=2)
    print("refused and lost at start:", figures)
    assert figures["uncertain"] == 6 and figures["adopted"] == 4 and figures["resent"] == 2, figures
    assert figures["unknown"] == 0 and not figures["paid_twice"] and figures["elapsed_s"] < 10, figures

"""The operator's view: JSON logs for cron, the run record against the ledger, status during a run,
--max-runtime, --budget and --quiet. Real processes against a sandbox process on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CRASH_KEY as KEY
from tests.conftest import sim_request


def _manifest(tmp: Path, n: int, *, prices: dict[str, float] | None = None, fail: int | None = None) -> Path:
    items: list[dict[str, Any]] = [{"id": f"sku{i:03d}", "prompt": f"operator product {i}"} for i in range(n)]
    if fail is not None:
        items[fail]["prompt"] += " [[fail]]"
    doc: dict[str, Any] = {"version": 1, "name": "ops", "items": items}
    doc["defaults"] = {"image": {"modelID": "gpt-image-2"}}
    if prices:
        doc["prices"] = prices
    path = tmp / "ops.yaml"
    path.write_text(json.dumps(doc))
    return path


def _cli(origin: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOGPT_")}
    env.update(PHOTOGPT_API_KEY=KEY, PHOTOGPT_BASE_URL=f"{origin}/api")
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "pipeline", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(origin: str, *args: str) -> tuple[int, str, str]:
    proc = _cli(origin, *args)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_json_logs_and_run_record_match_the_ledger(sim_url: str, tmp_path: Path) -> None:
    """Not a terminal: every stderr line is JSON without the key; the run record's facts match the ledger."""
    out = tmp_path / "out"
    code, stdout, stderr = _run(sim_url, "run", str(_manifest(tmp_path, 8, fail=3)), "--out", str(out))
    assert code == 1
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert lines, "expected JSON log lines"
    assert KEY not in stderr + stdout
    events = {e["event"] for e in lines}
    assert {"job_submitted", "asset_downloaded", "job_failed", "run_finished"} <= events
    failed = [e for e in lines if e["event"] == "unit_failed"]
    assert [e["item"] for e in failed] == ["sku003"] and failed[0]["reason"]
    stats = sim_request(sim_url, "GET", "/_sim/stats")
    record = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert record["submitted"] == stats["jobs_created"] == 8
    assert record["counts"]["done"] == 7 and record["counts"]["failed"] == 1
    assert record["failures"][0]["item"] == "sku003" and record["exitCode"] == 1
    assert record["requestsTotal"] == sum(record["requests"].values()) > 8
    assert record["creditsSpent"] == 7  # the simulator refunds failed jobs; 1 credit per image
    manifest = tmp_path / "ops.yaml"
    code, stdout, _ = _run(sim_url, "status", str(manifest), "--out", str(out))
    assert code == 0
    assert f"failed: photogpt-pipeline run {manifest} --out {out} --retry-failed" in stdout
    assert sorted(p.name for p in (out / ".state").iterdir() if "lock" in p.name) == ["state.db.lock"]


def test_status_reads_a_run_in_progress(sim_url: str, tmp_path: Path) -> None:
    """`status --json` works read-only while a run holds the state; the run is not disturbed.

    The simulator holds every job read (single and listed) until status has been read, so the
    run is certainly in progress, with its jobs submitted, however slow the machine is."""
    polls = ["GET /api/jobs/{id}", "GET /api/jobs"]
    sim_request(sim_url, "POST", "/_sim/control", {"image_s": [0.1, 0.2], "hold": polls})
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, 6)
    proc = _cli(sim_url, "run", str(manifest), "--out", str(out))
    try:
        deadline = time.monotonic() + 60  # a bound on a hang, not a timing assumption
        seen: dict[str, int] = {}
        while seen.get("submitted", 0) < 6 and time.monotonic() < deadline and proc.poll() is None:
            if (out / ".state" / "state.db").exists():
                code, stdout, _ = _run(sim_url, "status", "--out", str(out), "--json")
                if code == 0:
                    seen = json.loads(stdout)["counts"]
            time.sleep(0.05)
        assert seen.get("submitted", 0) == 6, seen
        assert proc.poll() is None  # still running: its polls are held
        sim_request(sim_url, "POST", "/_sim/control", {"release": polls})
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # a failure above: a run left going would poll the next test's sandbox
            proc.kill()
            proc.communicate()
        sim_request(sim_url, "POST", "/_sim/control", {"release": polls})
    assert proc.returncode == 0, err[-2000:]
    code, stdout, _ = _run(sim_url, "status", str(manifest), "--out", str(out))
    assert code == 0 and "6 units" in stdout and "image " in stdout and "failed:" not in stdout


@pytest.mark.serial  # 0.3 s of run time must see a submission: not beside other tests' load
def test_max_runtime_leaves_a_resumable_state(sim_url: str, tmp_path: Path) -> None:
    """--max-runtime stops submitting; what was submitted finishes; a rerun completes the rest."""
    sim_request(sim_url, "POST", "/_sim/control", {"image_s": [0.5, 0.5]})
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, 12)
    code, _, stderr = _run(
        sim_url, "run", str(manifest), "--out", str(out), "--max-active", "2", "--max-runtime", "1.0"
    )  # 1 s: room for a slow machine's first POST; 2 slots of 0.5 s jobs submit at most 6 of 12 in it
    assert code == 1, stderr[-2000:]
    finished = json.loads(stderr.strip().splitlines()[-1])
    assert finished["event"] == "run_finished" and finished["stopped"] == "max_runtime"
    assert 0 < finished["left"] < 12
    code, _, stderr = _run(sim_url, "run", str(manifest), "--out", str(out))
    assert code == 0, stderr[-2000:]
    assert sim_request(sim_url, "GET", "/_sim/stats")["jobs_created"] == 12


def test_budget_stops_new_submissions_with_exit_5(sim_url: str, tmp_path: Path) -> None:
    """With a price table, --budget stops before the estimate would pass it; exit 5, resumable."""
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, 10, prices={"gpt-image-2": 1})
    code, _, stderr = _run(sim_url, "run", str(manifest), "--out", str(out), "--budget", "4")
    assert code == 5, stderr[-2000:]
    assert sim_request(sim_url, "GET", "/_sim/stats")["jobs_created"] == 4


def test_quiet_prints_nothing_on_success(sim_url: str, tmp_path: Path) -> None:
    """--quiet: a successful run is silent on both streams."""
    code, stdout, stderr = _run(
        sim_url, "run", str(_manifest(tmp_path, 3)), "--out", str(tmp_path / "o"), "--quiet"
    )
    assert (code, stdout, stderr) == (0, "", "")

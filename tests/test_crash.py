"""Crash tests: the run is SIGKILLed (at named points and at random moments) and rerun until done.

The simulator runs in its own process so that it outlives every kill and its
ledger counts every job ever created. Invariants after the final clean run:
every unit done exactly once on disk, each file matching its sidecar, no
``.part`` or temp file left, at most one job per request body (except units the
tool itself reported ``unknown``), and no finished download fetched twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.output.sidecar import file_sha256, read_index
from pipeline.state.sqlite import open_readonly
from tests.conftest import CRASH_KEY as KEY
from tests.conftest import sim_request as _sim

pytestmark = pytest.mark.slow


def _manifest(tmp: Path, n: int) -> Path:
    items: list[dict[str, Any]] = []
    for i in range(n):
        item: dict[str, Any] = {"id": f"p{i:03d}", "prompt": f"crash test product {i}"}
        if i % 3 == 0:
            item["upscale"] = True
        if i % 7 == 0:
            item["video"] = {"prompt": f"orbit {i}"}
        items.append(item)
    doc = {
        "version": 1,
        "name": "crash",
        "defaults": {
            "image": {"modelID": "gpt-image-2", "options": {"openai": {"outputFormat": "png"}}},
            "video": {"modelID": "veo-3.1", "options": {"veo": {"duration": 4}}},
        },
        "items": items,
    }
    path = tmp / "crash.yaml"
    path.write_text(json.dumps(doc))
    return path


def _start(
    manifest: Path, out: Path, origin: str, *extra: str, crash_at: str = ""
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOGPT_")}
    env.update(PHOTOGPT_API_KEY=KEY, PHOTOGPT_BASE_URL=f"{origin}/api")
    if crash_at:
        env["PHOTOGPT_PIPELINE_CRASH_AT"] = crash_at
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            str(manifest),
            "--out",
            str(out),
            "--log-format",
            "json",
            "--log-level",
            "warning",
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The child's stderr once it exits; on timeout it is killed and reaped, never leaked."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return err


def _finish(manifest: Path, out: Path, origin: str) -> None:
    """Run until exit 0; units reported unknown are resubmitted explicitly, as a user would."""
    err = b""
    for _ in range(6):
        proc = _start(manifest, out, origin)
        err = _wait(proc, 120)
        if proc.returncode == 0:
            return
        if proc.returncode == 1 and b"unknown" in err:
            proc = _start(manifest, out, origin, "--resubmit-unknown")
            err = _wait(proc, 120)
            if proc.returncode == 0:
                return
        assert proc.returncode in (0, 1), err.decode()[-2000:]
    raise AssertionError(f"the run never finished: {err.decode()[-2000:]}")


def _check_invariants(out: Path, origin: str, units: int) -> None:
    with open_readonly(out / ".state" / "state.db") as view:
        counts = {str(k): v for k, v in view.counts().items() if v}
        records = view.units()
        once_unknown = {r.key for r in records if any(e.phase == "unknown" for e in view.history(r.key))}
    assert counts == {"done": units}
    index = read_index(out / "index.jsonl")
    on_disk: dict[str, dict[str, Any]] = {}
    for record in index:
        on_disk[record["path"]] = record  # a re-recorded asset appears twice with the same path
    assert len(on_disk) == sum(len(r.outputs) for r in records)
    for rel, record in on_disk.items():
        side = json.loads((out / rel).with_suffix(".json").read_text())
        assert file_sha256(out / rel) == side["sha256"] == record["sha256"]
    assert [p for p in out.rglob("*") if p.name.endswith((".part", ".tmp"))] == []
    stats = _sim(origin, "GET", "/_sim/stats")
    doubled = [h for h, n in stats["jobs_by_body"].items() if n > 1]
    assert len(doubled) <= len(once_unknown), (doubled, once_unknown)


@pytest.mark.parametrize(
    "point",
    ["after_intent_commit", "after_post_before_record", "mid_download", "after_replace_before_record"],
)
def test_kill_at_a_named_point_then_resume(point: str, sim_url: str, tmp_path: Path) -> None:
    """S1–S4: the kill lands exactly at the risky moment; the rerun pays at most once."""
    manifest, out = _manifest(tmp_path, 6), tmp_path / "out"
    proc = _start(manifest, out, sim_url, "--max-active", "1", crash_at=point)
    err = _wait(proc, 120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    before = _sim(sim_url, "GET", "/_sim/stats")
    _finish(manifest, out, sim_url)
    _check_invariants(out, sim_url, units=6 + 2 + 1)
    after = _sim(sim_url, "GET", "/_sim/stats")
    assert max(after["jobs_by_body"].values()) == 1, "one job per unit: S1 resent once, S2 adopted"
    if point == "after_replace_before_record":
        files_before = sum(v for k, v in before["requests"].items() if "/files/" in k)
        files_after = sum(v for k, v in after["requests"].items() if "/files/" in k)
        assert files_after - files_before == 6 + 2 + 1 - 1, (
            "the published file was adopted, not fetched again"
        )


def test_random_kills_then_resume(sim_url: str, tmp_path: Path) -> None:
    """S5: SIGKILL at random moments, again and again; then every invariant holds."""
    rng = random.Random(20261124)
    manifest, out = _manifest(tmp_path, 30), tmp_path / "out"
    for _ in range(8):
        proc = _start(manifest, out, sim_url)
        time.sleep(rng.uniform(0.3, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        _wait(proc, 30)
        if proc.returncode == 0:
            break
    _finish(manifest, out, sim_url)
    _check_invariants(out, sim_url, units=30 + 10 + 5)


def _events(err: bytes) -> list[dict[str, Any]]:
    out = []
    for line in err.decode(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_sigterm_stops_cleanly_with_130_and_resumes(sim_url: str, tmp_path: Path) -> None:
    """SIGTERM once the first job is submitted: exit 130; no POST leaves after the run saw the signal
    (only those already in flight arrive); the state holds no unknown unit; the rerun finds none
    either, finishes, and pays at most once per request body."""
    manifest, out = _manifest(tmp_path, 30), tmp_path / "out"
    proc = _start(manifest, out, sim_url, "--log-level", "info")
    assert proc.stderr is not None
    seen: list[bytes] = []
    try:
        while b'"job_submitted"' not in (line := proc.stderr.readline()):  # the readiness signal
            assert line, "the run ended before submitting: " + b"".join(seen).decode()[-2000:]
            seen.append(line)
        proc.send_signal(signal.SIGTERM)
        err = b"".join(seen) + line + _wait(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err.decode()[-2000:]
    events = _events(err)
    [stopping] = [e for e in events if e["event"] == "submissions_stopped" and e["reason"] == "interrupted"]
    in_flight = next(e["in_flight"] for e in events if e["event"] == "stopping")
    arrivals = [a["at"] for a in _sim(sim_url, "GET", "/_sim/stats")["post_arrivals"]]
    late = [at for at in arrivals if at > _epoch(stopping["timestamp"])]
    assert len(late) <= in_flight, f"{len(late)} POSTs arrived after the stop, {in_flight} were in flight"
    with open_readonly(out / ".state" / "state.db") as view:
        counts = {str(k): v for k, v in view.counts().items() if v}
    assert "unknown" not in counts, counts
    rerun = _start(manifest, out, sim_url, "--log-level", "info")
    err = _wait(rerun, 120)
    assert rerun.returncode == 0, err.decode()[-2000:]
    assert not [e for e in _events(err) if e["event"] == "submission_unknown"]
    _check_invariants(out, sim_url, units=30 + 10 + 5)
    assert max(_sim(sim_url, "GET", "/_sim/stats")["jobs_by_body"].values()) == 1

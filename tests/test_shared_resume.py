"""Crash/resume parity on a shared run: done units whose files are gone are fetched again from their
jobs, never paid again, as a single run on SQLite does (engine/recheck.py, state/pgchecks.py).

Real PostgreSQL (tests/pg.py) and a sandbox process whose ledger counts every job ever created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.output.sidecar import file_sha256
from pipeline.state.pgreads import open_pg_view
from tests.conftest import CRASH_KEY as KEY
from tests.conftest import sim_request
from tests.pg import PgServer


def _manifest(tmp: Path, name: str, items: int) -> Path:
    rows: list[dict[str, Any]] = [
        {"id": f"p{i:02d}", "prompt": f"resume product {i}", **({"upscale": True} if i % 3 == 0 else {})}
        for i in range(items)
    ]
    doc = {
        "version": 1,
        "name": name,
        "defaults": {"image": {"modelID": "gpt-image-2", "options": {"openai": {"outputFormat": "png"}}}},
        "items": rows,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(doc))
    return path


def _worker(manifest: Path, out: Path, origin: str, url: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOGPT_")}
    env.update(PHOTOGPT_API_KEY=KEY, PHOTOGPT_BASE_URL=f"{origin}/api", PHOTOGPT_STATE_URL=url)
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "pipeline", "run", str(manifest), "--out", str(out),
         "--log-format", "json", "--log-level", "warning", "--lease", "5"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _finish(*procs: subprocess.Popen[bytes]) -> list[str]:
    """Wait for every worker; each must exit 0. Returns their stderr."""
    errs = []
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode()[-3000:]
        errs.append(err.decode())
    return errs


def _jobs(origin: str) -> int:
    return len(sim_request(origin, "GET", "/_sim/ledger"))


@pytest.mark.slow
def test_missing_files_of_done_units_come_back_from_their_jobs(
    pg_server: PgServer, sim_url: str, tmp_path: Path
) -> None:
    """Run once; delete two files (one an upscale's source, whose child is done and never claimed
    again) and shorten a third; rerun with 2 workers: all three are back and verified, the
    simulator created no job, and only one worker checked the files."""
    url = pg_server.create_database(f"resume_{uuid.uuid4().hex[:6]}")
    manifest, out = _manifest(tmp_path, "resume", 6), tmp_path / "out"  # 6 images + 2 upscales
    _finish(_worker(manifest, out, sim_url, url))
    paid = _jobs(sim_url)
    assert paid == 8

    gone = [out / "p00" / "image-1.png", out / "p01" / "image-1.png"]
    shortened = out / "p02" / "image-1.png"
    for path in gone:
        path.unlink()
    shortened.write_bytes(shortened.read_bytes()[:1000])

    errs = _finish(_worker(manifest, out, sim_url, url), _worker(manifest, out, sim_url, url))

    assert _jobs(sim_url) == paid, "a file that went missing was paid for again"
    for path in [*gone, shortened]:
        side = json.loads(path.with_suffix(".json").read_text())
        assert path.stat().st_size == side["bytes"] and file_sha256(path) == side["sha256"]
    with open_pg_view(url, "resume") as view:
        assert {str(k): v for k, v in view.counts().items() if v} == {"done": 8}
    with psycopg.connect(url) as conn:
        reopened = conn.execute(
            "SELECT unit_key, holder FROM photogpt.events WHERE run = 'resume'"
            " AND detail LIKE '%%missing in the output store%%'"
        ).fetchall()
        check = conn.execute(
            "SELECT value_json FROM photogpt.resources WHERE run = 'resume' AND kind = 'output_check'"
        ).fetchone()
    assert len(reopened) == 3 and len({k for k, _ in reopened}) == 3, reopened  # each once
    assert len({h for _, h in reopened}) == 1, "one worker checks the files for the run"
    assert check is not None
    figures = json.loads(check[0])
    assert (figures["checked"], figures["reopened"]) == (8, 3), figures
    assert sum(e.count('"outputs_missing"') for e in errs) == 1, errs

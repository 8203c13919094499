"""Several workers, one run, one PostgreSQL: `run MANIFEST --state postgresql://… --out DIR` on N
processes against one simulator process (its ledger counts every job ever created)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.output.sidecar import file_sha256, read_index
from pipeline.state.pgreads import open_pg_view
from tests.conftest import CRASH_KEY as KEY
from tests.conftest import sim_request as _sim
from tests.pg import PASSWORD, PgServer

#: Takeovers are bounded in seconds: scripts/test runs these alone (serial), not beside other tests.
pytestmark = [pytest.mark.slow, pytest.mark.serial]


def _manifest(tmp: Path, name: str, items: int, *, chains: bool) -> Path:
    rows: list[dict[str, Any]] = []
    for i in range(items):
        item: dict[str, Any] = {"id": f"p{i:03d}", "prompt": f"shared run product {i}"}
        if chains and i % 3 == 0:
            item["upscale"] = True
        if chains and i % 7 == 0:
            item["video"] = {"prompt": f"orbit {i}"}
        rows.append(item)
    doc = {
        "version": 1,
        "name": name,
        "defaults": {
            "image": {"modelID": "gpt-image-2", "options": {"openai": {"outputFormat": "png"}}},
            "video": {"modelID": "veo-3.1", "options": {"veo": {"duration": 4}}},
        },
        "items": rows,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(doc))
    return path


def _worker(manifest: Path, out: Path, origin: str, url: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOGPT_")}
    env.update(PHOTOGPT_API_KEY=KEY, PHOTOGPT_BASE_URL=f"{origin}/api", PHOTOGPT_STATE_URL=url)
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "pipeline", "run", str(manifest), "--out", str(out),
         "--log-format", "json", "--log-level", "warning", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _events(url: str, run: str) -> list[tuple[str, str, str, str | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT unit_key, at, detail, holder FROM photogpt.events WHERE run = %s ORDER BY id", (run,)
        ).fetchall()
    return [(k, at, d, h) for k, at, d, h in rows]


def _check_outputs(url: str, run: str, out: Path, origin: str, units: int) -> set[str]:
    """Every unit done, every file on disk matching its sidecar, at most one job per request body
    outside the units reported unknown. Returns the keys that were ever unknown."""
    with open_pg_view(url, run) as view:
        counts = {str(k): v for k, v in view.counts().items() if v}
        records = view.units()
        once_unknown = {r.key for r in records if any(e.phase == "unknown" for e in view.history(r.key))}
    assert counts == {"done": units}
    on_disk = {r["path"]: r for r in read_index(out / "index.jsonl")}
    assert len(on_disk) == sum(len(r.outputs) for r in records)
    for rel, record in on_disk.items():
        side = json.loads((out / rel).with_suffix(".json").read_text())
        assert file_sha256(out / rel) == side["sha256"] == record["sha256"]
    assert [p for p in out.rglob("*") if p.name.endswith((".part", ".tmp"))] == []
    stats = _sim(origin, "GET", "/_sim/stats")
    doubled = [h for h, n in stats["jobs_by_body"].items() if n > 1]
    assert len(doubled) <= len(once_unknown), (doubled, once_unknown)
    return once_unknown


def _no_write_after_takeover(events: list[tuple[str, str, str, str | None]]) -> int:
    """A worker whose unit was taken over never wrote to it again. Returns the takeovers seen."""
    lost: dict[str, set[str]] = {}
    takeovers = 0
    for key, _, detail, holder in events:
        assert holder not in lost.get(key, set()), f"{holder} wrote {key} after losing it: {detail}"
        if detail.startswith("taken over from "):
            takeovers += 1
            lost.setdefault(key, set()).add(detail.removeprefix("taken over from ").split(": ")[0])
    return takeovers


def _wait_holding(url: str, run: str, holder_prefix: str) -> None:
    """Until the worker whose holder id starts with ``holder_prefix`` holds a unit."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn, suppress(psycopg.errors.UndefinedTable):  # not created yet
            row = conn.execute(
                "SELECT count(*) FROM photogpt.units WHERE run = %s AND holder LIKE %s",
                (run, holder_prefix + "%"),
            ).fetchone()
            if row and row[0]:
                return
        time.sleep(0.1)
    raise AssertionError(f"{holder_prefix} never held a unit")


_AUDIT = """
CREATE TABLE IF NOT EXISTS photogpt.double_claims (
    unit_key text, held_by text, taken_by text, at timestamptz);
CREATE OR REPLACE FUNCTION photogpt.audit_claim() RETURNS trigger AS $$
BEGIN
    IF NEW.holder IS NOT NULL AND OLD.holder IS NOT NULL AND NEW.holder <> OLD.holder
       AND OLD.lease_until > clock_timestamp() THEN
        INSERT INTO photogpt.double_claims VALUES (OLD.key, OLD.holder, NEW.holder, clock_timestamp());
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER audit_claim BEFORE UPDATE OF holder ON photogpt.units
    FOR EACH ROW EXECUTE FUNCTION photogpt.audit_claim();
"""


def _audit_claims(url: str) -> None:
    """Record every claim taken while another worker's lease on the unit was still live."""
    import asyncio

    from pipeline.clock import SystemClock
    from pipeline.state.postgres import PostgresStore

    async def migrate() -> None:
        await (await PostgresStore.open(url, clock=SystemClock(), run="audit")).aclose()

    asyncio.run(migrate())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_AUDIT.encode())


def _double_claims(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute("SELECT * FROM photogpt.double_claims").fetchall())


def _at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_three_workers_one_killed(pg_server: PgServer, sim_url: str, tmp_path: Path) -> None:
    """3 workers on ~300 units; one SIGKILLed at a random moment; the others finish its units."""
    url = pg_server.url()
    manifest, out = _manifest(tmp_path, "kill3", 205, chains=True), tmp_path / "out"  # 205+69+30 units
    units = 205 + 69 + 30
    _audit_claims(url)
    procs = [_worker(manifest, out, sim_url, url, "--lease", "3") for _ in range(3)]
    victim = procs[1]
    dead = f"{socket.gethostname()}:{victim.pid}:"
    _wait_holding(url, "kill3", dead)  # a random moment while it works, not before it started
    time.sleep(random.Random().uniform(0.0, 2.0))
    victim.send_signal(signal.SIGKILL)
    killed_at = time.time()
    results = [
        (p.returncode if p is victim else p.wait(timeout=300), p.communicate(timeout=60)[1]) for p in procs
    ]
    for p, (code, err) in zip(procs, results, strict=True):
        if p is not victim:
            assert code in (0, 1), err.decode()[-3000:]
    finished_at = time.time()
    if any(code == 1 for code, _ in results):  # units reported unknown: resubmitted as a user would
        again = _worker(manifest, out, sim_url, url, "--resubmit-unknown")
        _, err = again.communicate(timeout=300)
        assert again.returncode == 0, err.decode()[-3000:]
    once_unknown = _check_outputs(url, "kill3", out, sim_url, units)
    events = _events(url, "kill3")
    takeovers = _no_write_after_takeover(events)
    taken = [_at(at) - killed_at for _, at, d, _ in events if d.startswith(f"taken over from {dead}")]
    print(f"\nkill3: {takeovers} takeovers, {len(taken)} from the dead worker, "
          f"first {min(taken, default=0):.2f}s, last {max(taken, default=0):.2f}s after the kill; "
          f"unknown {len(once_unknown)}; survivors done {finished_at - killed_at:.1f}s after it")  # fmt: skip
    assert _double_claims(url) == [], "a unit was claimed while another worker's lease was live"
    assert taken, "the dead worker held units: someone must have taken them over"
    # A survivor looks for expired leases every quarter lease, even mid-batch: the takeover waits
    # for the lease (renewed a third of a lease before the kill at most) and one look.
    assert max(taken) < 3 + 2.0, "its units were taken over within about one lease"


def test_shared_cap_keeps_the_server_under_its_limit_and_status_shows_it(
    pg_server: PgServer, sim_url: str, tmp_path: Path
) -> None:
    """Server cap 32, each of 3 workers told --max-active 64: peak <= 32, few 429s per unit; then
    ``status`` reads the shared run, and the database password shows nowhere."""
    _sim(sim_url, "POST", "/_sim/control", {"max_active_jobs": 32, "image_s": [2.0, 3.0]})
    url = pg_server.url()
    manifest, out = _manifest(tmp_path, "cap3", 300, chains=False), tmp_path / "out"
    procs = [_worker(manifest, out, sim_url, url, "--max-active", "64") for _ in range(3)]
    errs = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-2000:] for e in errs]
    assert all(PASSWORD not in e for e in errs)
    _check_outputs(url, "cap3", out, sim_url, 300)
    stats = _sim(sim_url, "GET", "/_sim/stats")
    peak, refused = max(stats["peak_active_jobs"].values()), stats["sent_429"]
    print(f"\ncap3: peak active {peak} (cap 32), {refused} 429s for 300 units ({refused / 300:.3f}/unit)")
    assert peak <= 32 and refused / 300 <= 0.05
    shown = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "pipeline", "status", str(manifest), "--state", url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "300 done" in shown.stdout and PASSWORD not in shown.stdout + shown.stderr
    records = list((out / "runs").glob("*.json"))
    assert len(records) == 3 and all(PASSWORD not in r.read_text() for r in records)
    assert len({json.loads(r.read_text())["worker"] for r in records}) == 3  # each names its worker


def test_bad_database_is_exit_2_and_nothing_is_sent(
    pg_server: PgServer, sim_url: str, tmp_path: Path
) -> None:
    manifest, out = _manifest(tmp_path, "bad", 3, chains=False), tmp_path / "out"

    def api_requests() -> dict[str, int]:
        return {k: v for k, v in _sim(sim_url, "GET", "/_sim/stats")["requests"].items() if "/api/" in k}

    before = api_requests()
    for url in (pg_server.url(password="wrong-pass-31x"), f"postgresql://u:{PASSWORD}@127.0.0.1:1/db"):
        proc = _worker(manifest, out, sim_url, url)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err.decode()[-2000:]
        assert PASSWORD not in err.decode() and "wrong-pass-31x" not in err.decode()
    assert api_requests() == before

"""One poller for many: workers on one API key elect a sweeper that lists the jobs of all of them;
the others read what it stored. Against the simulator and the throwaway PostgreSQL."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import sim_request as _sim
from tests.pg import PgServer
from tests.test_shared_run import _check_outputs, _manifest, _worker

pytestmark = pytest.mark.slow


def _polls(origin: str) -> int:
    """Status requests the simulator answered so far: job-list pages and single job reads."""
    counts = _sim(origin, "GET", "/_sim/stats")["requests"]
    return sum(n for route, n in counts.items() if route.partition(" ")[2] in ("/api/jobs", "/api/jobs/{id}"))


def _run(n: int, url: str, origin: str, tmp: Path, name: str, units: int) -> float:
    """``n`` workers on one fresh manifest; returns status requests per unit."""
    manifest, out = _manifest(tmp, name, units, chains=False), tmp / name
    manifest.write_text(manifest.read_text().replace("shared run product", name))  # new bodies
    before = _polls(origin)
    procs = [_worker(manifest, out, origin, url, "--max-active", "64") for _ in range(n)]
    errs = [p.communicate(timeout=240)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [e[-2000:] for e in errs]
    _check_outputs(url, name, out, origin, units)
    return (_polls(origin) - before) / units


def test_three_workers_poll_about_as_much_as_one(pg_server: PgServer, sim_url: str, tmp_path: Path) -> None:
    """The job-list sweeps do not multiply by the workers: one sweeps, the others read."""
    _sim(sim_url, "POST", "/_sim/control", {"max_active_jobs": 32, "image_s": [1.0, 2.0]})
    url = pg_server.create_database("sweep13")
    one = _run(1, url, sim_url, tmp_path, "poll1", 150)
    three = _run(3, url, sim_url, tmp_path, "poll3", 150)
    print(f"\nstatus requests per unit: 1 worker {one:.2f}, 3 workers {three:.2f}")
    # Each unit costs one read of its finished job (its outputs) whatever the workers; the list
    # pages are the sweeper's: 3 workers poll within 30 % of what 1 does (each used to sweep alone).
    assert three <= 1.3 * one


def _sweeper(url: str) -> str | None:
    with psycopg.connect(url) as conn:
        try:
            row = conn.execute(
                "SELECT holder FROM photogpt.sweeper WHERE lease_until > clock_timestamp()"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return str(row[0]) if row else None


@pytest.mark.serial  # the takeover is bounded in seconds (lease + a tick): not beside other tests' load
def test_a_dead_sweeper_is_replaced_and_the_run_finishes(
    pg_server: PgServer, sim_url: str, tmp_path: Path
) -> None:
    """SIGKILL the elected sweeper: another worker takes the sweeping over when its lease lapses."""
    _sim(sim_url, "POST", "/_sim/control", {"max_active_jobs": 32, "image_s": [1.0, 2.0]})
    url = pg_server.create_database("sweepkill")
    manifest, out = _manifest(tmp_path, "sweepkill", 80, chains=False), tmp_path / "out"
    procs = [_worker(manifest, out, sim_url, url, "--lease", "3") for _ in range(3)]
    deadline = time.monotonic() + 60
    while (first := _sweeper(url)) is None:
        assert time.monotonic() < deadline, "no sweeper was elected"
        time.sleep(0.05)
    host = socket.gethostname()
    victim = next(p for p in procs if first.startswith(f"{host}:{p.pid}:"))
    time.sleep(1.0)  # let it sweep for the others a while
    victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    victim.communicate(timeout=30)
    while (now := _sweeper(url)) in (None, first):
        assert time.monotonic() - killed < 30, "nobody took the sweeping over"
        time.sleep(0.05)
    took = time.monotonic() - killed
    print(f"\nsweeper {first} killed; {now} swept {took:.2f}s later (sweeper lease 3 s)")
    assert took < 3 + 2.0  # the lease, and a tick of the election
    for p in procs:
        if p is not victim:
            _, err = p.communicate(timeout=240)
            assert p.returncode in (0, 1), err.decode()[-3000:]
    if any(p.returncode == 1 for p in procs if p is not victim):  # a unit the victim left unknown
        again = _worker(manifest, out, sim_url, url, "--resubmit-unknown")
        _, err = again.communicate(timeout=240)
        assert again.returncode == 0, err.decode()[-3000:]
    _check_outputs(url, "sweepkill", out, sim_url, 80)

"""Shared fixtures: the simulator in-process (fast, clock-driven) and as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from pipeline import logs
from pipeline.clock import FakeClock
from pipeline.simulator import Sandbox, SimConfig

TEST_KEY = "sk-test-7f3a9c-very-secret-key"
OTHER_KEY = "sk-other-0b1d2e-another-secret"
CRASH_KEY = "sk-crash-test-5d1e9b"

# No property test has a wall-clock deadline (Hypothesis's default is 200 ms per example): on a
# loaded 2-core machine a descheduled worker makes a microsecond example "take" 300 ms, and
# Hypothesis fails it as unreliable timings (seen with the process stopped 0.3 s in 0.5 s).
# differing_executors: mutmut calls a test class's method again on a new instance in one process (its
# stats pass, then the clean run); pytest makes a new instance per test anyway, and no property test
# keeps state on self.
settings.register_profile(
    "photogpt", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors]
)
settings.load_profile("photogpt")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--serial-tests",
        choices=("all", "skip", "only"),
        default="all",
        help="tests marked serial: run them too (all), leave them out (skip), or run only them (only); "
        "scripts/test runs the rest on two workers, then these alone",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect by ``--serial-tests``: a deselected test is reported as such, never skipped."""
    choice = config.getoption("--serial-tests")
    if choice == "all":
        return
    keep = choice == "only"
    chosen = [i for i in items if (i.get_closest_marker("serial") is not None) == keep]
    dropped = [i for i in items if (i.get_closest_marker("serial") is not None) != keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = chosen


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    """Each test starts from JSON logs to stderr at warning level."""
    logs.configure(fmt="json", level="warning")


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="sim_config")
def _sim_config() -> SimConfig:
    return SimConfig.profile("fast", keys=(TEST_KEY, OTHER_KEY), seed=7)


@pytest.fixture(name="sandbox")
async def _sandbox(sim_config: SimConfig, clock: FakeClock) -> AsyncIterator[Sandbox]:
    """A simulator on 127.0.0.1 driven by the test's fake clock."""
    async with Sandbox(sim_config, host="127.0.0.1", port=0, clock=clock) as sb:
        yield sb


@pytest.fixture(name="pg_server", scope="session")
def _pg_server() -> Iterator[Any]:
    """A throwaway PostgreSQL for the whole session (tests/pg.py); skipped without the binaries
    except in CI, where that is a failure."""
    from tests.pg import throwaway_postgres

    with throwaway_postgres() as server:
        yield server


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port where a connection is refused: held bound (never listening) for the block,
    so no other process can start listening there meanwhile (a port merely found free could be)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def start_sandbox(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``photogpt-pipeline sandbox --port 0 ARGS`` as a process; returns it and its origin.

    The process binds the port itself and prints it once listening: a port picked free here and
    handed over could be taken by another test worker's server in between, and a readiness probe
    would then talk to that server."""
    with log_path.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "pipeline", "sandbox", "--port", "0", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 60
    while not (found := _ANNOUNCED.search(log_path.read_text(errors="replace"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"sandbox did not start: {log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    return proc, found[1]


_ANNOUNCED = re.compile(r" on (http://127\.0\.0\.1:\d+)/api\n")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s; always reaped."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(name="sandbox_process", scope="session")
def _sandbox_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``photogpt-pipeline sandbox`` as a real process; yields its base URL (key: ``sandbox``)."""
    log = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    env = {k: v for k, v in os.environ.items() if k != "PHOTOGPT_API_KEY"}
    proc, origin = start_sandbox(["--seed", "1"], log, env)
    try:
        yield f"{origin}/api"
    finally:
        stop_process(proc)


@pytest.fixture(name="sim_process", scope="session")
def _sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """One sandbox process for the session (key ``CRASH_KEY``): fast jobs, 64 KiB files so downloads
    take a moment. Yields its origin and its starting settings, which :func:`_sim_url` restores."""
    log = tmp_path_factory.mktemp("sim_process") / "sandbox.log"
    proc, origin = start_sandbox(["--key", CRASH_KEY, "--seed", "5"], log)
    try:
        settings = sim_request(origin, "POST", "/_sim/control", {"file_size": 65536})["config"]
        yield origin, settings
    finally:
        stop_process(proc)


@pytest.fixture(name="sim_url")
def _sim_url(sim_process: tuple[str, dict[str, Any]]) -> str:
    """The session's sandbox process as new: its starting settings, an empty store and ledger, the
    fault counters and RNG reseeded, nothing held (what a fresh process with the same seed would be,
    without a second of start-up per test)."""
    origin, settings = sim_process
    held = sim_request(origin, "POST", "/_sim/control", {})["held"]
    sim_request(origin, "POST", "/_sim/control", {"reset": True, "release": held, **settings})
    return origin


def sim_request(origin: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(  # noqa: S310 - loopback
        origin + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        return json.load(resp)

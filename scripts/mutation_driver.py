"""Run mutmut module by module and judge the kill rates (called by ``scripts/mutation``).

mutmut 3 reads one configuration per directory, so each module gets its own scratch
directory under ``.mutation/<stem>/``: links to ``pipeline/`` and ``tests/``, and a
``pyproject.toml`` that is the project's own (pytest settings) plus a generated
``[tool.mutmut]`` naming that module and its tests. mutmut then copies both into
``mutants/`` there, mutates only that module, and runs, for each mutant, only the
selected tests that reached the mutated function.

Survivors are named by a *stable* id, ``<file>:<function>:<hash of the changed
lines>``, since mutmut's own numbering shifts whenever the module changes. An id in
the equivalent-mutants file, with a reason, is left out of the kill rate.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
MUTMUT = ROOT / ".venv" / "bin" / "mutmut"

# A Hypothesis profile for mutation runs: mutmut runs a test several times in one process
# (stats, clean run, then forked per mutant), which trips the differing-executors check;
# derandomized examples make a verdict the same from run to run.
_HYPOTHESIS_PLUGIN = '''\
"""Loaded by scripts/mutation with ``-p mutation_hypothesis``."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "mutation",
    suppress_health_check=[HealthCheck.differing_executors],
    derandomize=True,
    database=None,
    deadline=None,
)
settings.load_profile("mutation")
'''

# mutmut's verdicts. A timeout is a kill: the tests noticed (they hung or spun).
KILLED = frozenset({"killed", "timeout", "caught by type check", "segfault"})


@dataclass(frozen=True, slots=True)
class Module:
    """One module to mutate and the fast tests that must kill its mutants."""

    path: str
    tests: tuple[str, ...]

    @property
    def stem(self) -> str:
        return Path(self.path).stem


@dataclass(frozen=True, slots=True)
class Survivor:
    name: str  # mutmut's name, valid for this run only
    status: str
    stable_id: str
    diff: str


@dataclass
class Outcome:
    module: Module
    seconds: float  # wall clock
    cpu_seconds: float  # user + system of mutmut and its workers: / cores ≈ wall time on an idle machine
    statuses: dict[str, str] = field(default_factory=dict)
    survivors: list[Survivor] = field(default_factory=list)
    equivalent: list[Survivor] = field(default_factory=list)

    @property
    def killed(self) -> int:
        return sum(1 for s in self.statuses.values() if s in KILLED)

    @property
    def rate(self) -> float:
        judged = len(self.statuses) - len(self.equivalent)
        return 100.0 if judged == 0 else 100.0 * self.killed / judged


def parse_modules(specs: list[str]) -> list[Module]:
    modules = []
    for spec in specs:
        path, sep, tests = spec.partition(":")
        if not sep or not tests.split():
            raise SystemExit(f"scripts/mutation: module line {spec!r} needs '<module>: <tests…>'")
        modules.append(Module(path.strip(), tuple(tests.split())))
    return modules


def load_equivalent(path: Path) -> dict[str, str]:
    """``id  # reason`` lines; blank and ``#`` lines are comments. A reason is required."""
    allowed: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        stable_id, _, reason = line.partition("#")
        if not reason.strip():
            raise SystemExit(f"{path}:{number}: an equivalent mutant needs a '# reason'")
        allowed[stable_id.strip()] = reason.strip()
    return allowed


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items) + "]"


def prepare(module: Module) -> Path:
    """A fresh scratch directory whose pyproject.toml points mutmut at ``module`` only."""
    work = WORK / module.stem
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "pipeline").symlink_to(ROOT / "pipeline")
    (work / "tests").symlink_to(ROOT / "tests")
    (work / "mutation_hypothesis.py").write_text(_HYPOTHESIS_PLUGIN, encoding="utf-8")
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    if re.search(r"^\[tool\.mutmut\]", project, re.MULTILINE):
        raise SystemExit("pyproject.toml has a [tool.mutmut] table: scripts/mutation writes its own")
    section = "\n".join(
        [
            "",
            "[tool.mutmut]  # written by scripts/mutation",
            'source_paths = ["pipeline"]',
            f"only_mutate = {_toml_list([module.path])}",
            f"pytest_add_cli_args_test_selection = {_toml_list(list(module.tests))}",
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "mutation_hypothesis"]',
            'also_copy = ["mutation_hypothesis.py"]',
            "use_git_change_detection = false",
            # A mutant that makes a virtual-clock test spin forever is a kill, but mutmut's default
            # CPU limit (30 × (tests' time + 1 s)) spends minutes proving it; 8 × (time + 2 s) is
            # still far above any honest run (CPU time, so a busy machine does not cause false kills).
            "timeout_multiplier = 4.0",
            "timeout_constant = 2.0",
            "",
        ]
    )
    (work / "pyproject.toml").write_text(project + section, encoding="utf-8")
    return work


def _mutmut(work: Path, *args: str, log: Path | None = None) -> str:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if log is None:
        done = subprocess.run(  # noqa: S603 - our own venv's mutmut
            [str(MUTMUT), *args], cwd=work, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"mutmut {' '.join(args)} failed in {work}:\n{done.stdout}{done.stderr}")
        return done.stdout
    with log.open("w", encoding="utf-8") as out:
        code = subprocess.call([str(MUTMUT), *args], cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"mutmut {' '.join(args)} failed (exit {code}); end of {log}:\n{tail}")
    return ""


def stable_id(module: Module, name: str, diff: str) -> str:
    """``file:function:hash``: survives renumbering and edits elsewhere in the module."""
    local = re.sub(r"__mutmut_\d+$", "", name.rsplit(".", 1)[-1])  # xǁClassǁmethod or x_function
    if local.startswith("xǁ"):
        cls, _, method = local[2:].partition("ǁ")
        function = f"{cls}.{method}"
    else:
        function = local.removeprefix("x_")
    changed = [
        line[0] + line[1:].strip()
        for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    digest = hashlib.sha256("\n".join(changed).encode()).hexdigest()[:10]
    return f"{Path(module.path).name}:{function}:{digest}"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_module(module: Module, jobs: int, allowed: dict[str, str], *, rerun: bool = True) -> Outcome:
    work = WORK / module.stem
    started, cpu_before = time.monotonic(), _children_cpu()
    if rerun or not (work / "mutants").is_dir():
        work = prepare(module)
        _mutmut(work, "run", "--max-children", str(jobs), log=work / "mutmut.log")
    outcome = Outcome(module, time.monotonic() - started, _children_cpu() - cpu_before)
    for line in _mutmut(work, "results", "--all", "true").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            outcome.statuses[name] = status
    for name, status in sorted(outcome.statuses.items()):
        if status in KILLED:
            continue
        diff = "\n".join(_mutmut(work, "show", name).splitlines()[1:])
        survivor = Survivor(name, status, stable_id(module, name, diff), diff)
        (outcome.equivalent if survivor.stable_id in allowed else outcome.survivors).append(survivor)
    return outcome


def report(outcomes: list[Outcome], allowed: dict[str, str], threshold: float) -> bool:
    ok = True
    for o in outcomes:
        for s in o.survivors:
            print(f"\n--- SURVIVED ({s.status}) {s.stable_id}   [{s.name}]\n{s.diff}")
    header = f"{'module':<32} {'mutants':>7} {'killed':>6} {'equiv':>5} {'surv':>5} {'kill %':>7}"
    print(f"\n{header} {'wall':>6} {'cpu':>6}")
    for o in outcomes:
        verdict = "ok" if o.rate >= threshold else f"BELOW {threshold:g}%"
        ok = ok and o.rate >= threshold
        print(
            f"{o.module.path:<32} {len(o.statuses):>7} {o.killed:>6} {len(o.equivalent):>5} "
            f"{len(o.survivors):>5} {o.rate:>6.1f}% {o.seconds:>5.0f}s {o.cpu_seconds:>5.0f}s  {verdict}"
        )
    for o in outcomes:
        for s in o.equivalent:
            print(f"equivalent: {s.stable_id}  # {allowed[s.stable_id]}")
    seen = {s.stable_id for o in outcomes for s in o.equivalent}
    ran = {Path(o.module.path).name for o in outcomes}
    for stale in sorted(i for i in allowed if i not in seen and i.split(":", 1)[0] in ran):
        print(f"note: {stale} is listed as equivalent but no longer survives; remove it")
    wall, cpu = sum(o.seconds for o in outcomes), sum(o.cpu_seconds for o in outcomes)
    print(
        f"total {wall:.0f}s wall, {cpu:.0f}s CPU (about {cpu / (os.cpu_count() or 1):.0f}s on this many idle "
        f"cores: {os.cpu_count()}); threshold {threshold:g}% per module"
    )
    return ok


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    options, specs = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(prog="scripts/mutation")
    parser.add_argument("only", nargs="*", help="module stems to run (default: all)")
    parser.add_argument("--threshold", type=float, default=90.0)
    parser.add_argument("--equivalent", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--report-only", action="store_true", help="judge the last run again, run nothing")
    args = parser.parse_args(options)
    modules = parse_modules(specs)
    unknown = set(args.only) - {m.stem for m in modules}
    if unknown:
        raise SystemExit(f"scripts/mutation: no module named {', '.join(sorted(unknown))}")
    modules = [m for m in modules if not args.only or m.stem in args.only]
    for p in (p for m in modules for p in (m.path, *m.tests)):
        if not (ROOT / p).exists():
            raise SystemExit(f"scripts/mutation: {p} does not exist")
    allowed = load_equivalent(ROOT / args.equivalent)
    outcomes = []
    for module in modules:
        print(f"mutating {module.path} against {' '.join(module.tests)} …", flush=True)
        outcomes.append(run_module(module, args.jobs, allowed, rerun=not args.report_only))
    return 0 if report(outcomes, allowed, args.threshold) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What every scenario shares: the simulator process, client processes and their resource use,
benchmark manifests, the lower bound, and the table of figures.

Everything talks to 127.0.0.1 only. Every wait has a deadline, every loop a bound.
"""

from __future__ import annotations

import csv
import heapq
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The key the benchmark simulator accepts and the clients send (not a secret).
KEY = "sk-bench-0c4f7e"
PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent

#: The simulator fields a scenario may set; each ``configure`` starts from these so that
#: nothing leaks from one scenario into the next.
SIM_DEFAULTS: dict[str, Any] = {
    "image_s": [1.0, 3.0],
    "upscale_s": [0.2, 0.6],
    "max_active_jobs": None,
    "rps_limit": None,
    "retry_after": "off",
    "file_size": 0,
    "created_probability": 0.2,
}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child: no PHOTOGPT_* from the caller, the benchmark key, ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOGPT_")}
    env["PHOTOGPT_API_KEY"] = KEY
    # A user's install has bytecode caches; a PYTHONDONTWRITEBYTECODE inherited from the caller
    # would make every client compile the package from source (~0.2 s of each start-up). The
    # caches go to a folder of their own, never into the source tree.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "photogpt-bench-pycache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


# The simulator ---------------------------------------------------------------------------------


class Simulator:
    """``photogpt-pipeline sandbox`` in a process of its own, controlled over ``/_sim``."""

    def __init__(self, workdir: Path, *, seed: int = 6) -> None:
        self.seed = seed
        self.origin = self.base_url = ""  # known once started: the sandbox picks its port
        self._log_path = workdir / "sandbox.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        # Port 0: the sandbox binds a free port itself and prints it. A port picked free here could
        # be taken by another process before the sandbox binds it.
        argv = [PYTHON, "-m", "pipeline", "sandbox", "--port", "0", "--key", KEY, "--seed", str(self.seed)]
        with self._log_path.open("wb") as log:
            self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=clean_env())  # noqa: S603
        deadline = time.monotonic() + timeout_s
        while not (found := re.search(r" on (http://127\.0\.0\.1:\d+)/api\n", self._log_path.read_text())):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the simulator did not start: {self._log_path.read_text()}")
            time.sleep(0.05)
        self.origin = found[1]
        self.base_url = f"{self.origin}/api"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout_s: float = 30.0
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - loopback only
            self.origin + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            return json.load(resp)

    def configure(self, **fields: Any) -> None:
        """A fresh world (jobs, ledger, rate buckets, seeded RNGs) with ``fields`` over the defaults."""
        self.call("POST", "/_sim/control", {"reset": True, "seed": self.seed, **SIM_DEFAULTS, **fields})

    def stats(self) -> dict[str, Any]:
        return dict(self.call("GET", "/_sim/stats"))

    def ledger(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/_sim/ledger"))


@dataclass(frozen=True)
class Requests:
    """Requests the simulator answered, by purpose."""

    submissions: int
    polls: int  # GET /jobs/{id} and GET /jobs (the list is a batch poll)
    downloads: int  # GET /files/...
    other: int  # ping, models, ...
    sent_429: int
    jobs: int  # jobs created (accepted submissions)

    @property
    def api(self) -> int:
        return self.submissions + self.polls + self.other

    @property
    def total(self) -> int:
        return self.api + self.downloads

    @classmethod
    def of(cls, stats: dict[str, Any]) -> Requests:
        counts: dict[str, int] = stats["requests"]
        submissions = polls = downloads = other = 0
        for route, n in counts.items():
            method, _, path = route.partition(" ")
            if path.startswith("/_sim"):
                continue
            if method == "POST" and path.endswith(("/generation", "/upscaling")):
                submissions += n
            elif path in ("/api/jobs/{id}", "/api/jobs"):
                polls += n
            elif path.startswith("/files/"):
                downloads += n
            else:
                other += n
        return cls(submissions, polls, downloads, other, int(stats["sent_429"]), int(stats["jobs_created"]))


class StatsSampler:
    """Samples ``/_sim/stats`` every ``every_s`` in a thread: (seconds since start, Requests)."""

    def __init__(self, sim: Simulator, every_s: float = 0.25, max_samples: int = 20_000) -> None:
        self._sim, self._every, self._max = sim, every_s, max_samples
        self.samples: list[tuple[float, Requests]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = 0.0

    def _loop(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self._max:
            at = time.perf_counter() - self._t0
            with suppress(OSError):
                self.samples.append((at, Requests.of(self._sim.stats())))
            self._stop.wait(self._every)

    @contextmanager
    def running(self) -> Iterator[StatsSampler]:
        self._t0 = time.perf_counter()
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=10)


# Client processes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessResult:
    """A finished child: exit code, wall time from spawn to reaped exit, its own CPU time (``wait4``)
    and peak RSS (its ``VmHWM``, read every ~20 ms while it runs)."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    stdout: str
    stderr: str
    timed_out: bool

    def tail(self, chars: int = 600) -> str:
        return (self.stderr or self.stdout)[-chars:].replace("\n", " | ")


def _hwm_kib(pid: int) -> int:
    """The peak resident set of ``pid`` so far (``VmHWM``, reset at exec), in KiB; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_process(
    argv: Sequence[str], *, env: dict[str, str], timeout_s: float, workdir: Path, name: str
) -> ProcessResult:
    """Run ``argv`` to the end (killed at ``timeout_s``), reaping it with ``wait4`` for its rusage."""
    out_path, err_path = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, stdout=out, stderr=err, cwd=workdir)  # noqa: S603
        deadline, timed_out, peak_kib, ticks = started + timeout_s, False, 0, 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                timed_out = True
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            if ticks % 4 == 0:
                peak_kib = max(peak_kib, _hwm_kib(proc.pid))
            ticks += 1
            time.sleep(0.004)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ProcessResult(
        returncode=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        # ru_maxrss would be wrong: Linux carries the parent's RSS over into a child at exec.
        peak_rss_mib=(peak_kib or usage.ru_maxrss) / 1024,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        timed_out=timed_out,
    )


def run_pipeline(
    manifest: Path,
    out: Path,
    sim: Simulator,
    *,
    max_active: int,
    timeout_s: float,
    name: str,
    extra: Iterable[str] = (),
) -> ProcessResult:
    """``photogpt-pipeline run`` against the simulator, exactly as a user would start it."""
    argv = [PYTHON, "-m", "pipeline", "run", str(manifest), "--base-url", sim.base_url, "--out", str(out)]
    argv += ["--max-active", str(max_active), "--log-format", "json", "--log-level", "warning", *extra]
    return run_process(argv, env=clean_env(), timeout_s=timeout_s, workdir=out.parent, name=name)


# Manifests -------------------------------------------------------------------------------------

_MANIFEST = """\
version: 1
name: {name}
defaults:
  image:
    modelID: gpt-image-2
    aspectRatio: "1:1"
    numImages: 1
    options: {{openai: {{imageSize: 1K, outputFormat: jpeg, quality: low}}}}
rows: {csv}
items:
  - id: "{{sku}}"
    prompt: "A studio photo of benchmark product {{sku}} on a white background"
"""


def write_manifest(folder: Path, units: int, *, name: str = "bench") -> Path:
    """A manifest of ``units`` image units (one per CSV row, one output each)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku"])
        writer.writerows([f"p{i:06d}"] for i in range(units))
    path = folder / f"{name}.yaml"
    path.write_text(_MANIFEST.format(name=name, csv=f"{name}.csv"), encoding="utf-8")
    return path


def write_bodies(manifest: Path, dest: Path) -> Path:
    """The manifest's request bodies, one JSON object a line, for the baseline scripts."""
    from pipeline.manifest.load import load_manifest

    units = load_manifest(manifest).units
    dest.write_text("".join(json.dumps(u.body()) + "\n" for u in units), encoding="utf-8")
    return dest


# The lower bound -------------------------------------------------------------------------------


def durations_in_order(ledger: list[dict[str, Any]], kind: str = "image") -> list[float]:
    """Job durations in the order the simulator created them (submission order)."""
    jobs = sorted((j for j in ledger if j["kind"] == kind), key=lambda j: (j["created"], j["jobId"]))
    return [float(j["duration"]) for j in jobs]


def list_schedule(durations: Sequence[float], slots: int) -> float:
    """Makespan of a perfect client: jobs in order, each on the first free of ``slots``, no overhead."""
    free = [0.0] * max(1, slots)
    end = 0.0
    for d in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + d)
        end = max(end, start + d)
    return end


# Figures ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One printed line: a measured value, its unit, and (optionally) the target it is judged by."""

    name: str
    value: float | int | str | None
    unit: str = ""
    target: str = ""
    ok: bool | None = None  # None: informational, not counted
    note: str = ""

    def line(self) -> str:
        if isinstance(self.value, float):
            shown = f"{self.value:.3f}" if abs(self.value) < 100 else f"{self.value:.1f}"
        else:
            shown = "n/a" if self.value is None else str(self.value)
        verdict = "" if self.ok is None else ("PASS" if self.ok else "FAIL")
        target = f"target {self.target}" if self.target else ""
        text = f"{self.name:<44} {shown:>10} {self.unit:<10} {target:<18} {verdict:<4}"
        return (text + (f"  {self.note}" if self.note else "")).rstrip()


def at_most(name: str, value: float | None, limit: float, unit: str = "", note: str = "") -> Figure:
    ok = value is not None and value <= limit
    return Figure(name, value, unit, f"<= {limit:g}", ok, note)


def at_least(name: str, value: float | None, limit: float, unit: str = "", note: str = "") -> Figure:
    ok = value is not None and value >= limit
    return Figure(name, value, unit, f">= {limit:g}", ok, note)


def info(name: str, value: float | int | str | None, unit: str = "", note: str = "") -> Figure:
    return Figure(name, value, unit, "", None, note)


def failed_run(name: str, result: ProcessResult) -> Figure:
    """A client run that did not finish cleanly: one failed figure that says why."""
    why = "timed out" if result.timed_out else f"exit {result.returncode}"
    return Figure(f"{name}.run", why, "", "exit 0", False, result.tail())


@dataclass
class Context:
    """What a scenario gets: the simulator, a scratch folder, and what earlier scenarios measured."""

    sim: Simulator
    workdir: Path
    results: dict[str, Any] = field(default_factory=dict)

    def folder(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def machine() -> str:
    """CPU model, cores, Python: the line the README quotes with the figures."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024**2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{model}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )

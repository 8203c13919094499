"""Rate-limited: the simulator admits L API requests per second per key (token bucket, 429 with
``Retry-After`` beyond it); the client is not told L and has more work than L allows.

A sampler reads ``/_sim/stats`` every 0.25 s. The achieved rate is the admitted API
requests (answered, not 429) per second over the window in which the client had work to
submit (first request to last job created), as a fraction of L. After that window only
polls remain and the demand falls below L by itself. 429s are counted over the whole
run and after the first five seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.harness import (
    Context,
    Figure,
    Requests,
    StatsSampler,
    at_least,
    at_most,
    failed_run,
    info,
    run_pipeline,
    write_manifest,
)

GRACE_S = 5.0


@dataclass(frozen=True)
class Size:
    units: int = 400
    limit_rps: float = 20.0
    cap: int = 64
    durations: tuple[float, float] = (1.0, 3.0)
    timeout_s: float = 300.0


@dataclass(frozen=True)
class Window:
    """Admitted-rate figures from a sample series."""

    start_s: float
    end_s: float
    admitted: int
    sent_429: int
    late_429: int

    @property
    def rate(self) -> float:
        return self.admitted / max(1e-9, self.end_s - self.start_s)


def window(samples: list[tuple[float, Requests]], units: int, grace_s: float = GRACE_S) -> Window | None:
    """From the last sample before the first API request to the first with every job created."""
    first = next((i for i, (_, r) in enumerate(samples) if r.api > 0), None)
    last = next((i for i, (_, r) in enumerate(samples) if r.jobs >= units), None)
    if first is None or last is None or last <= first:
        return None
    t0, r0 = samples[max(0, first - 1)]
    t1, r1 = samples[last]
    late = [r for t, r in samples if t >= t0 + grace_s]
    late_429 = samples[-1][1].sent_429 - late[0].sent_429 if late else 0
    admitted = (r1.api - r1.sent_429) - (r0.api - r0.sent_429)
    return Window(t0, t1, admitted, samples[-1][1].sent_429, late_429)


def run(ctx: Context, size: Size) -> list[Figure]:
    folder = ctx.folder("rate_limited")
    manifest = write_manifest(folder, size.units)
    ctx.sim.configure(image_s=list(size.durations), rps_limit=size.limit_rps, retry_after="seconds")
    sampler = StatsSampler(ctx.sim, every_s=0.25)
    with sampler.running():
        result = run_pipeline(
            manifest, folder / "out", ctx.sim, max_active=size.cap, timeout_s=size.timeout_s, name="client"
        )
    if result.returncode != 0:
        return [failed_run("rate_limited", result)]
    sampler.samples.append((sampler.samples[-1][0] + 0.25, Requests.of(ctx.sim.stats())))
    win = window(sampler.samples, size.units)
    if win is None:
        return [Figure("rate_limited.window", None, "", "measurable", False, "too few samples")]
    ctx.results["rate_limited"] = (size, win, result)
    return [
        info("rate_limited.units", size.units, "units", f"limit {size.limit_rps:g} req/s, Retry-After on"),
        info("rate_limited.wall", result.wall_s, "s"),
        info(
            "rate_limited.achieved_rate", win.rate, "req/s", f"admitted, over {win.end_s - win.start_s:.1f} s"
        ),
        at_least("rate_limited.rate/limit", win.rate / size.limit_rps, 0.95, "x"),
        info("rate_limited.429s", win.sent_429, "resp"),
        at_most(f"rate_limited.429s_after_{GRACE_S:g}s", win.late_429, 0, "resp"),
    ]

"""Live counts of a run, for the progress display, the summary and the run record.

The scheduler tells the tally each time a unit changes phase; the tally keeps
per-step counters so that a snapshot costs O(steps), not O(units), even for a
100,000-unit catalog refreshed several times a second.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["PHASES", "Snapshot", "Tally"]

#: Display phases, in the order a unit moves through them.
PHASES = ("pending", "submitting", "running", "downloading", "done", "failed", "unknown")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The run at one moment."""

    counts: Mapping[str, Mapping[str, int]]  # step -> display phase -> units
    total: int
    finished: int
    submitted: int
    per_minute: float
    target: int
    in_use: int
    rate_limited: int
    downloaded_bytes: int
    credits_spent: float
    elapsed_s: float
    eta_s: float | None
    #: Requests per second the run paces itself at, once it has learned the API's limit.
    paced_rps: float | None = None


class Tally:
    """Per-step phase counters plus the rates the operator wants to see."""

    def __init__(self, units: Iterable[tuple[str, str]]) -> None:
        """``units`` is ``(key, step)`` for every unit of the run; all start ``pending``."""
        self._step: dict[str, str] = {}
        self._phase: dict[str, str] = {}
        self._counts: dict[str, Counter[str]] = {}
        for key, step in units:
            self._step[key] = step
            self._phase[key] = "pending"
            self._counts.setdefault(step, Counter())["pending"] += 1
        self.submitted = 0
        self.rate_limited = 0
        self.downloaded_bytes = 0
        self.credits_spent = 0.0
        self._submits: deque[float] = deque(maxlen=4096)
        self._finishes: deque[float] = deque(maxlen=4096)

    def move(self, key: str, phase: str, now: float) -> None:
        """Unit ``key`` is now in display ``phase``."""
        old = self._phase.get(key)
        if old is None or old == phase:
            return
        counts = self._counts[self._step[key]]
        counts[old] -= 1
        counts[phase] += 1
        self._phase[key] = phase
        if phase == "running":
            self.submitted += 1
            self._submits.append(now)
        if phase in ("done", "failed", "unknown"):
            self._finishes.append(now)

    def snapshot(
        self, *, now: float, started: float, target: int, in_use: int, paced_rps: float | None = None
    ) -> Snapshot:
        """What the progress display shows; rates over the last minute, ETA from the finish rate."""
        total = len(self._phase)
        finished = sum(c["done"] + c["failed"] + c["unknown"] for c in self._counts.values())
        recent = [t for t in self._submits if now - t <= 60.0]
        window = min(60.0, max(1e-9, now - started))
        per_minute = len(recent) * 60.0 / window
        done_recent = [t for t in self._finishes if now - t <= 60.0]
        finish_rate = len(done_recent) / window
        left = total - finished
        eta = left / finish_rate if finish_rate > 0 and left > 0 else (0.0 if left == 0 else None)
        return Snapshot(
            counts={step: {p: c[p] for p in PHASES} for step, c in self._counts.items()},
            total=total,
            finished=finished,
            submitted=self.submitted,
            per_minute=per_minute,
            target=target,
            in_use=in_use,
            rate_limited=self.rate_limited,
            downloaded_bytes=self.downloaded_bytes,
            credits_spent=self.credits_spent,
            elapsed_s=now - started,
            eta_s=eta,
            paced_rps=paced_rps,
        )

"""The knobs of a run and what it reports at the end: frozen values shared by the CLI and the engine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.engine.poller import PollPolicy
from pipeline.engine.retry import RetryPolicy

__all__ = ["Failure", "RunOptions", "RunSummary"]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Knobs of one run. Rates are requests per second (``None``: unlimited)."""

    max_active: int = 32
    submit_rate: float | None = None
    poll_rate: float | None = None
    download_rate: float | None = None
    submit_workers: int = 16
    #: Asset downloads in flight at once (connections to the asset host).
    download_workers: int = 8
    poll_concurrency: int = 32
    #: ``list``: learn running jobs' statuses from the job list, a page for dozens of jobs
    #: (:mod:`pipeline.engine.sweep`), falling back to single polls if the list cannot be read;
    #: ``job``: ask ``GET /jobs/{id}`` for each job on its own schedule.
    poll_via: str = "list"
    #: Learn the API's request-rate limit from 429s and keep every request under it
    #: (:class:`~pipeline.engine.limits.RequestPacer`).
    adaptive_rate: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll: PollPolicy = field(default_factory=PollPolicy)
    max_runtime_s: float | None = None
    #: Stop new submissions before credits spent (job list) + in flight (price table) would pass this.
    budget: float | None = None
    prices: Mapping[str, float] = field(default_factory=dict)
    #: How far a job's creation time may be from our send time while the server's clock is not
    #: learned yet, and how long after a POST got no answer the server may still create its job.
    reconcile_slack_s: float = 60.0
    #: Where the server's ``createdAt`` clock may read, relative to an answer's ``Date`` header, when
    #: the answer was made: ``(0, 1)`` is a header truncated to the second on the same clock; the
    #: default allows 0.1 s between the machine that stamps ``Date`` and the one that stamps
    #: ``createdAt``. Neither is documented (inferred); ``None`` ignores ``Date`` (then spans use the
    #: slack until a job of ours is read). See pipeline/engine/serverclock.py.
    server_date_window_s: tuple[float, float] | None = (-0.1, 1.1)
    #: An uncertain POST is looked for in the job list this long after its span ends (list lag).
    reconcile_settle_s: float = 0.5
    #: After a stop request (SIGINT/SIGTERM): how long POSTs already sent may take to answer, be
    #: recorded and reconciled before the run ends.
    stop_grace_s: float = 10.0
    seed: int | None = None
    #: Unit key -> the seed a regeneration drew for it (recorded in the state; see engine/regenerate.py).
    seeds: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Failure:
    """A unit that did not finish, with what to do about it."""

    key: str
    item_id: str
    step: str
    index: int
    phase: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """What a run did: counts per phase at the end, failures, and why it stopped early (if it did)."""

    counts: Mapping[str, int]
    failures: tuple[Failure, ...]
    stopped: str | None
    submitted: int
    rate_limited: int
    downloaded_bytes: int
    elapsed_s: float
    stale: int
    #: Units not started because the run stopped early (quota, budget, --max-runtime): a rerun does them.
    left: int = 0
    #: HTTP requests this run made to the API, per endpoint template.
    requests: Mapping[str, int] = field(default_factory=dict)
    #: Credits the job list reports for this run's jobs (None when it was not asked).
    credits_spent: float | None = None
    #: The API's request-rate limit as measured from its 429s (req/s; None: never hit).
    rate_limit_rps: float | None = None
    #: The active-job target at the end, when 429s on submissions lowered it below ``--max-active``.
    active_cap: int | None = None

    @property
    def exit_code(self) -> int:
        """0 all done; 5 out of credits or budget; 1 anything failed, unknown or left for a rerun."""
        if self.stopped in ("quota", "budget"):
            return 5
        if self.failures or self.left:
            return 1
        return 0

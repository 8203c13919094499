"""After a run: its record (``runs/<timestamp>.json``) always, the gallery when anything changed."""

from __future__ import annotations

import contextlib
import json
import time

import anyio
import structlog

from pipeline.clock import Clock
from pipeline.engine.options import RunSummary
from pipeline.errors import OutputError
from pipeline.manifest.load import Manifest
from pipeline.output.local import LocalOutputStore
from pipeline.output.store import OutputStore
from pipeline.state.opening import state_location
from pipeline.state.review_store import ReviewReader
from pipeline.state.store import StateStore

__all__ = ["REPORT_MAX_UNITS", "after_run", "write_run_record"]

_log = structlog.get_logger("pipeline.engine.record")

#: Above this many units in the state, a run does not rebuild the gallery by itself.
REPORT_MAX_UNITS = 100_000


async def after_run(
    manifest: Manifest, store: StateStore, output: OutputStore, summary: RunSummary, clock: Clock
) -> None:
    """The run record always; the gallery when the run changed anything it shows; and, meanwhile,
    the state's row index (:mod:`pipeline.state.sqlite_prints`, on a store that keeps one): its
    commit (50 ms for 2,000 rows) overlaps the gallery's build instead of following it."""
    async with anyio.create_task_group() as tg:
        if (record_prints := getattr(store, "record_prints", None)) is not None:
            tg.start_soon(record_prints, manifest.prints)  # the diff has recorded every unit
        await _record_and_gallery(manifest, store, output, summary, clock)


async def _record_and_gallery(
    manifest: Manifest, store: StateStore, output: OutputStore, summary: RunSummary, clock: Clock
) -> None:
    review = store.review_counts() if isinstance(store, ReviewReader) else {}
    worker = getattr(store, "holder", None)  # a shared run: which worker wrote this record
    await write_run_record(output, summary, clock, review, worker)
    if not (summary.submitted or summary.downloaded_bytes or summary.failures):
        return  # a no-op resume changes nothing the gallery shows (`report` rebuilds it)
    units = sum(summary.counts.values())
    if units > REPORT_MAX_UNITS:
        # The gallery reads every unit of the state: for a million-unit catalog, gigabytes to show a
        # page nobody scrolls. `photogpt-pipeline report` still builds it on demand.
        _log.info("report_skipped", units=units, limit=REPORT_MAX_UNITS, hint="photogpt-pipeline report")
        return
    # Imported here: the gallery's modules (Jinja2) are not on the way to the first POST.
    from pipeline.output.publish_report import publish_report
    from pipeline.output.report import variant_groups

    try:
        state = state_location(store)  # the file, or the shared database's run
        await publish_report(output, state_path=state, groups=variant_groups(manifest.items))
    except (OSError, OutputError) as exc:  # the gallery is a convenience: never fail a run over it
        _log.warning("report_failed", error=str(exc))


async def write_run_record(
    output: OutputStore,
    summary: RunSummary,
    clock: Clock,
    review: dict[str, int] | None = None,
    worker: str | None = None,
) -> None:
    """``runs/<timestamp>.json``: the run's facts for scripts, written atomically."""
    stamp = clock.now().strftime("%Y%m%dT%H%M%S%fZ")
    record = {
        "counts": dict(summary.counts),
        "stopped": summary.stopped,
        "submitted": summary.submitted,
        "rateLimited": summary.rate_limited,
        "downloadedBytes": summary.downloaded_bytes,
        "elapsedSeconds": round(summary.elapsed_s, 3),
        "stale": summary.stale,
        "left": summary.left,
        "requests": dict(sorted(summary.requests.items())),
        "requestsTotal": sum(summary.requests.values()),
        "creditsSpent": summary.credits_spent,
        "learnedRateLimit": None if summary.rate_limit_rps is None else round(summary.rate_limit_rps, 2),
        "learnedActiveCap": summary.active_cap,
        "exitCode": summary.exit_code,
        "review": review or {},
        "failures": [
            {
                "item": f.item_id,
                "key": f.key,
                "step": f.step,
                "index": f.index,
                "phase": f.phase,
                "reason": f.reason,
            }
            for f in summary.failures
        ],
    }
    if worker is not None:
        record["worker"] = worker
    if isinstance(output, LocalOutputStore):
        # A run killed while writing its record leaves a temp; one younger than a minute may be
        # another worker's sharing the folder, between its create and its rename (it failed that
        # worker's run when removed).
        cutoff = time.time() - 60.0
        for leftover in (output.root / "runs").glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink(missing_ok=True)
    text = json.dumps(record, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    await output.put_bytes(f"runs/{stamp}.json", text.encode())

"""``run``: its flags, the run itself, the summary it prints or logs, and its one notification."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from pipeline.cli import collector
from pipeline.cli.flags import add_logging_flags
from pipeline.cli.outputs import out_arg
from pipeline.errors import ConfigError, PipelineError, unwrap_group

if TYPE_CHECKING:
    from pipeline.engine.run import RunSummary
    from pipeline.engine.tally import Snapshot

__all__ = ["register"]

_log = structlog.get_logger("pipeline.cli.run")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, Callable[[argparse.Namespace], Any]]:
    """The ``run`` sub-command; returns its handler by name."""
    run = sub.add_parser("run", help="run a manifest: submit, poll, download; resumes where it stopped")
    run.add_argument("manifest", type=Path)
    run.add_argument(
        "--out",
        type=out_arg,
        default=None,
        help="output folder or s3://BUCKET/PREFIX (default outputs/<name>)",
    )
    run.add_argument(
        "--state",
        default=None,
        help="state file (default <out>/.state/state.db; .photogpt-state/<bucket>/<prefix>/ for s3://), "
        "or a postgresql:// URL shared by several workers (default $PHOTOGPT_STATE_URL)",
    )
    run.add_argument(
        "--lease",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with a shared database: how long a worker's claim on a unit lasts without a heartbeat",
    )
    run.add_argument("--sandbox", action="store_true", help="run against an in-process simulator")
    run.add_argument("--sandbox-profile", choices=("fast", "realistic", "chaos"), default="fast")
    run.add_argument(
        "--base-url", default=None, help="API base URL (default $PHOTOGPT_BASE_URL or the real API)"
    )
    run.add_argument("--key-file", type=Path, default=None, help="file holding the API key (mode 600)")
    _add_limit_and_recovery_flags(run)
    _add_clock_flags(run)
    add_logging_flags(run)
    return {"run": _cmd_run}


def _add_clock_flags(run: argparse.ArgumentParser) -> None:
    """How far the server's ``Date`` header is trusted to bound its clock (reconcile spans)."""
    run.add_argument(
        "--server-date-window",
        type=date_window,
        default=(-0.1, 1.1),
        metavar="LO,HI|off",
        help="where the server's createdAt clock may read, in seconds after an answer's Date header "
        "(default -0.1,1.1: a header truncated to the second, 0.1 s between the server's machines); "
        "off: ignore Date (lost replies then wait until a job of ours shows the server's clock)",
    )


def _add_limit_and_recovery_flags(run: argparse.ArgumentParser) -> None:
    """How hard to hit the API, when to stop, and which earlier outcomes to pay for again."""
    run.add_argument("--max-active", type=int, default=32, help="most jobs running on the server at once")
    run.add_argument("--rate", type=float, default=None, help="most submissions per second")
    run.add_argument(
        "--max-runtime",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop submitting after this long; rerun to continue",
    )
    run.add_argument("--quiet", action="store_true", help="print nothing on success (for cron)")
    run.add_argument("--no-progress", action="store_true", help="no live progress display")
    run.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="CREDITS",
        help="stop new submissions before spent + in-flight credits would pass this",
    )
    run.add_argument(
        "--poll-profile",
        choices=("auto", "fast", "standard"),
        default="auto",
        help="fast: sub-second polls for a local simulator; auto: fast on loopback URLs only",
    )
    run.add_argument(
        "--poll-via",
        choices=("list", "job"),
        default="list",
        help="list: learn running jobs' statuses from GET /jobs, a page for many jobs (falls back "
        "to single polls if the list is unusable); job: GET /jobs/{id} for each job",
    )
    run.add_argument("--retry-failed", action="store_true", help="try permanently failed units again (pays)")
    run.add_argument(
        "--resubmit-unknown",
        action="store_true",
        help="submit units whose earlier submission has an unknown outcome again (may pay twice)",
    )
    run.add_argument(
        "--notify",
        action="append",
        default=[],
        metavar="URL",
        help="send one message when the run ends to this Apprise URL (Slack, Teams, Discord, mailto, "
        "ntfy, json://…); repeatable",
    )
    run.add_argument(
        "--notify-on",
        choices=("failure", "always"),
        default="failure",
        help="failure (default): only when the exit code is not 0 (failures, stops); always: every run",
    )
    run.add_argument(
        "--regenerate-rejected",
        action="store_true",
        help="pay again for units with a rejected output (see `review`) and their chain children",
    )


async def _cmd_run(args: argparse.Namespace) -> int:
    """The run, then its one notification (for a summary or an error that stopped it; never its exit code)."""
    if args.notify:  # the notify module (threads, sockets) stays out of the start-up otherwise
        from pipeline.cli.notify import check_urls

        check_urls(args.notify)
    try:
        summary = await _execute_run(args)
    except (PipelineError, BaseExceptionGroup) as caught:
        exc = unwrap_group(caught)
        if exc is None:
            raise
        await _notify(args, exc.exit_code, error=str(exc))
        if exc is caught:
            raise
        raise exc from None
    code = _finish_run(args, summary)
    await _notify(args, code, summary)
    return code


async def _notify(
    args: argparse.Namespace, code: int, summary: RunSummary | None = None, error: str | None = None
) -> None:
    from pipeline.cli.notify import Outcome, notify, wanted

    outcome = Outcome(args.manifest.name, code, summary, error)
    if args.notify and wanted(outcome, args.notify_on):
        await notify(args.notify, args.notify_on, dataclasses.replace(outcome, out=_run_out(args)))


def date_window(text: str) -> tuple[float, float] | None:
    """``--server-date-window``: ``off``, or ``LO,HI`` seconds with LO <= HI."""
    if text.strip().lower() == "off":
        return None
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LO,HI in seconds (e.g. -0.1,1.1) or off, not {text!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise argparse.ArgumentTypeError(f"LO must be at most HI (finite seconds), not {text!r}")
    return lo, hi


def _run_out(args: argparse.Namespace) -> Path | None:
    """The run's output folder for the message; ``None`` when even the manifest cannot say it."""
    from pipeline.engine.wiring import default_out
    from pipeline.manifest.load import load_manifest

    out: Path | None = args.out
    if out is not None:
        return out
    try:
        return default_out(load_manifest(args.manifest))
    except (PipelineError, OSError):
        return None


async def _execute_run(args: argparse.Namespace) -> RunSummary:
    from pipeline.engine.run import RunOptions
    from pipeline.engine.wiring import RunRequest, execute

    collector.settled()  # the engine is imported: freeze it, collect again (pipeline/cli/collector.py)
    if args.max_active < 1:
        raise ConfigError("--max-active must be at least 1")
    options = RunOptions(
        max_active=args.max_active,
        submit_rate=args.rate,
        max_runtime_s=args.max_runtime,
        budget=args.budget,
        poll_via=args.poll_via,
        server_date_window_s=args.server_date_window,
    )
    request = RunRequest(
        manifest=args.manifest,
        out=args.out,
        state=args.state,
        sandbox=args.sandbox,
        sandbox_profile=args.sandbox_profile,
        base_url=args.base_url,
        key_file=args.key_file,
        options=options,
        retry_failed=args.retry_failed,
        resubmit_unknown=args.resubmit_unknown,
        lease_s=args.lease,
        regenerate_rejected=args.regenerate_rejected,
        announce=None if args.quiet else lambda text: print(text, file=sys.stderr, flush=True),
        poll_profile=args.poll_profile,
        progress=_progress_display(args),
    )
    return await execute(request)


def _finish_run(args: argparse.Namespace, summary: RunSummary) -> int:
    """Print (or log) the summary as asked; the run's exit code."""
    if args.quiet and summary.exit_code == 0:
        return 0
    if _json_logs(args):
        _log_summary(summary)
    else:
        print(_render_summary(summary), file=sys.stderr)
    return summary.exit_code


def _json_logs(args: argparse.Namespace) -> bool:
    """Whether stderr carries JSON lines (then the summary is one more JSON line, not prose)."""
    if args.log_file is not None:
        return False
    return bool(args.log_format == "json" or (args.log_format == "auto" and not sys.stderr.isatty()))


def _log_summary(summary: RunSummary) -> None:
    for f in summary.failures:
        _log.warning(
            "unit_failed",
            item=f.item_id,
            unit=f.key,
            step=f.step,
            index=f.index,
            phase=f.phase,
            reason=f.reason,
        )
    _log.info(
        "run_finished",
        counts=dict(summary.counts),
        submitted=summary.submitted,
        rate_limited=summary.rate_limited,
        downloaded_bytes=summary.downloaded_bytes,
        requests=sum(summary.requests.values()),
        credits_spent=summary.credits_spent,
        learned_rate_limit=summary.rate_limit_rps,
        learned_active_cap=summary.active_cap,
        left=summary.left,
        stopped=summary.stopped,
        elapsed_s=round(summary.elapsed_s, 3),
        exit_code=summary.exit_code,
    )


def _render_summary(summary: RunSummary) -> str:
    from pipeline.cli.progress import human_bytes

    counts = ", ".join(f"{n} {phase}" for phase, n in sorted(summary.counts.items()) if n)
    credits = f", {summary.credits_spent:g} credits" if summary.credits_spent is not None else ""
    lines = [
        f"run finished in {summary.elapsed_s:.1f}s: {counts or 'nothing to do'}; "
        f"{summary.submitted} submitted, {summary.rate_limited} rate-limited, "
        f"{sum(summary.requests.values())} requests, "
        f"{human_bytes(summary.downloaded_bytes)} downloaded{credits}"
    ]
    if summary.rate_limit_rps is not None:
        lines.append(
            f"the API limits requests to about {summary.rate_limit_rps:.1f}/s (learned from its 429s); "
            "requests were paced just under it"
        )
    if summary.active_cap is not None:
        cap = summary.active_cap
        lines.append(f"the API refused jobs beyond about {cap} running at once; the run adapted to it")
    if summary.stopped:
        why = {
            "quota": "the account is out of credits",
            "budget": "the --budget was reached",
            "max_runtime": "--max-runtime was reached",
        }.get(summary.stopped, summary.stopped)
        lines.append(f"stopped early: {why}; {summary.left} unit(s) left: rerun the same command to continue")
    if summary.stale:
        lines.append(f"{summary.stale} unit(s) in the state are no longer in the manifest (stale, kept)")
    for f in summary.failures[:50]:
        lines.append(f"  {f.item_id} {f.step}#{f.index} [{f.phase}]: {f.reason}")
    if len(summary.failures) > 50:
        lines.append(f"  … and {len(summary.failures) - 50} more (see the run record)")
    return "\n".join(lines)


def _progress_display(
    args: argparse.Namespace,
) -> Callable[[Callable[[], Snapshot]], Coroutine[Any, Any, None]] | None:
    """The live display on a terminal unless --quiet/--no-progress; nothing for cron and pipes."""
    if args.quiet or args.no_progress or not sys.stderr.isatty():
        return None
    from pipeline.cli.progress import show_progress

    return functools.partial(show_progress, stream=sys.stderr)

"""The ``photogpt-pipeline`` command line: parse arguments, call the package, map errors to exit codes.

Exit codes (documented in README.md):

====  =====================================================================
0     everything asked for is done
1     finished, but some work failed (details in the summary)
2     bad usage, settings or manifest: nothing was sent
3     the API refused the key, or the preflight ping failed
5     the account is out of credits or quota: submissions stopped
130   interrupted (Ctrl-C); the state is saved and a rerun resumes
====  =====================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import inspect
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from pipeline import logs
from pipeline.cli import api_commands as apicli
from pipeline.cli import outputs
from pipeline.cli import review as review_cli
from pipeline.cli.flags import add_logging_flags
from pipeline.cli.outputs import out_arg
from pipeline.errors import ConfigError, PipelineError, unwrap_group

if TYPE_CHECKING:
    from pipeline.engine.run import RunSummary
    from pipeline.engine.tally import Snapshot

__all__ = ["main"]

_log = structlog.get_logger("pipeline.cli.main")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="photogpt-pipeline",
        description="Turn a YAML manifest into PhotoGPT images and videos: rate-limited, resumable, "
        "never paying twice.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sb = sub.add_parser("sandbox", help="serve the embedded PhotoGPT API simulator")
    sb.add_argument("--host", default="127.0.0.1")
    sb.add_argument("--port", type=int, default=8787)
    sb.add_argument("--key", action="append", default=[], help="an API key to accept (repeatable)")
    sb.add_argument("--profile", choices=("fast", "realistic", "chaos"), default="fast")
    sb.add_argument("--seed", type=int, default=None, help="seed for timings and faults")
    add_logging_flags(sb)

    ping = sub.add_parser("ping", help="check the base URL and the key (GET /ping, GET /models)")
    ping.add_argument("--key-file", type=Path, default=None, help="file holding the API key (mode 600)")
    add_logging_flags(ping)

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
        type=Path,
        default=None,
        help="state file (default <out>/.state/state.db; .photogpt-state/<bucket>/<prefix>/ for s3://)",
    )
    run.add_argument("--sandbox", action="store_true", help="run against an in-process simulator")
    run.add_argument("--sandbox-profile", choices=("fast", "realistic", "chaos"), default="fast")
    run.add_argument(
        "--base-url", default=None, help="API base URL (default $PHOTOGPT_BASE_URL or the real API)"
    )
    run.add_argument("--key-file", type=Path, default=None, help="file holding the API key (mode 600)")
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
    add_logging_flags(run)

    status = sub.add_parser("status", help="what the state file holds (read-only; safe during a run)")
    status.add_argument("manifest", type=Path, nargs="?")
    status.add_argument("--out", type=out_arg, default=None)
    status.add_argument("--state", type=Path, default=None)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    add_logging_flags(status)

    report = sub.add_parser("report", help="write the static HTML gallery of a run (report.html)")
    report.add_argument("manifest", type=Path, nargs="?")
    report.add_argument("--out", type=out_arg, default=None)
    report.add_argument("--state", type=Path, default=None)
    add_logging_flags(report)

    validate = sub.add_parser("validate", help="check a manifest; exit 0 or 2 with every problem")
    validate.add_argument("manifest", type=Path)
    add_logging_flags(validate)

    plan = sub.add_parser("plan", help="what a run would do and cost; sends no paid request")
    plan.add_argument("manifest", type=Path)
    plan.add_argument("--out", type=out_arg, default=None)
    plan.add_argument("--state", type=Path, default=None)
    add_logging_flags(plan)

    _COMMANDS.update(apicli.register(sub))
    _COMMANDS.update(review_cli.register(sub))
    _COMMANDS.update(outputs.register(sub))
    return parser


def _sandbox_keys(args: argparse.Namespace) -> tuple[tuple[str, ...], str]:
    """The keys the sandbox accepts, and how to describe them without printing a real key."""
    if args.key:
        return tuple(args.key), f"{len(args.key)} key(s) from --key"
    env_key = os.environ.get("PHOTOGPT_API_KEY", "").strip()
    if env_key:
        return (env_key,), "the key in PHOTOGPT_API_KEY"
    return ("sandbox",), "'sandbox' (export PHOTOGPT_API_KEY=sandbox)"


async def _cmd_sandbox(args: argparse.Namespace) -> int:
    from pipeline.simulator import SimConfig, serve

    keys, described = _sandbox_keys(args)
    overrides: dict[str, object] = {"keys": keys}
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = SimConfig.profile(args.profile, **overrides)
    print(
        f"PhotoGPT sandbox ({args.profile}) on http://{args.host}:{args.port}/api\n"
        f"  accepts {described}\n"
        f"  export PHOTOGPT_BASE_URL=http://{args.host}:{args.port}/api\n"
        f"  ledger: http://{args.host}:{args.port}/_sim/stats   (Ctrl-C stops)",
        flush=True,
    )
    await serve(config, args.host, args.port)
    return 0


async def _cmd_ping(args: argparse.Namespace) -> int:
    from pipeline.api.client import ApiClient
    from pipeline.api.config import ApiConfig

    config = ApiConfig.from_env(key_file=args.key_file)
    async with ApiClient(config) as api:
        await api.ping()
        models = await api.list_models()
    print(f"pong: {config.base_url} answers and accepts the key ({len(models)} trained model(s))")
    return 0


async def _cmd_run(args: argparse.Namespace) -> int:
    """The run, then its one notification (for a summary or an error that stopped it; never its exit code)."""
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

    if args.max_active < 1:
        raise ConfigError("--max-active must be at least 1")
    options = RunOptions(
        max_active=args.max_active,
        submit_rate=args.rate,
        max_runtime_s=args.max_runtime,
        budget=args.budget,
        poll_via=args.poll_via,
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


def _state_path(args: argparse.Namespace) -> Path:
    from pipeline.engine.wiring import default_out, default_state
    from pipeline.manifest.load import load_manifest

    if args.state:
        return Path(args.state)
    if args.out:
        return default_state(args.out)
    if args.manifest:
        return default_state(default_out(load_manifest(args.manifest)))
    raise ConfigError("say which run: give MANIFEST, --out DIR or --state PATH")


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from pipeline.state.sqlite import open_readonly

    path = _state_path(args)
    if not path.exists():
        raise ConfigError(f"{path}: no state file yet (nothing has run for this output folder)")
    view = open_readonly(path)
    try:
        counts = {str(phase): n for phase, n in view.counts().items()}
        units = [
            {
                "key": r.key,
                "item": r.item_id,
                "step": r.step,
                "index": r.index,
                "phase": str(r.phase),
                "jobId": r.job_id,
                "error": r.last_error,
            }
            for r in view.units()
        ]
        review = view.review_counts()
    finally:
        view.close()
    if args.json:
        print(json.dumps({"counts": counts, "review": review, "units": units}, indent=1))
    else:
        print(_render_status(path, units, _run_command(args)))
        if any(review.values()):
            print("review: " + ", ".join(f"{n} {what}" for what, n in review.items()))
    return 0


def _run_command(args: argparse.Namespace) -> str:
    """The ``run`` command that resumes this state, with the manifest, --out and --state as given."""
    import shlex

    words = ["photogpt-pipeline", "run", str(args.manifest) if args.manifest else "MANIFEST"]
    if args.out:
        words += ["--out", str(args.out)]
    if args.state:
        words += ["--state", str(args.state)]
    return shlex.join(words)


#: What resumes each phase: the run command, then these flags, then why.
_FIXES = {
    "failed": " --retry-failed   (pays again)",
    "unknown": " --resubmit-unknown   (may pay twice: check jobs first)",
    "submitted": "   (polls the jobs; never resubmits)",
    "succeeded": "   (downloads what is missing)",
    "pending": "",
    "submitting": "   (reconciles from the job list)",
}


def _render_status(path: Path, units: list[dict[str, Any]], run: str) -> str:
    """Per step × phase counts, then every failed/unknown unit with its reason and the fixing command."""
    from collections import Counter

    phases = ("pending", "submitting", "submitted", "succeeded", "done", "failed", "unknown")
    table: dict[str, Counter[str]] = {}
    for u in units:
        table.setdefault(str(u["step"]), Counter())[str(u["phase"])] += 1
    widths = [max(7, *(len(s) for s in table))] + [max(len(p), 5) for p in phases]
    head = ["step", *phases]
    lines = [f"{path}: {len(units)} units", "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    for step in sorted(table):
        cells = [step, *(str(table[step][p]) for p in phases)]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    problems = [u for u in units if u["phase"] in ("failed", "unknown")]
    for u in problems[:100]:
        lines.append(
            f"  {u['phase']:8} {u['item']} {u['step']}#{u['index']}: {u['error'] or '(no reason recorded)'}"
        )
    if len(problems) > 100:
        lines.append(f"  … and {len(problems) - 100} more (use --json)")
    left = {str(u["phase"]) for u in units} - {"done"}
    for phase in phases:
        if phase in left:
            lines.append(f"{phase}: {run}{_FIXES[phase]}")
    return "\n".join(lines)


def _cmd_report(args: argparse.Namespace) -> int:
    from pipeline.engine.wiring import default_out
    from pipeline.manifest.load import load_manifest
    from pipeline.output.report import build_report, variant_groups

    if isinstance(args.out, str):
        return int(asyncio.run(outputs.report_s3(args.out, args.state)))
    manifest = load_manifest(args.manifest) if args.manifest else None
    if args.out:
        out = Path(args.out)
    elif manifest is not None:
        out = default_out(manifest)
    else:
        raise ConfigError("say which run: give MANIFEST or --out DIR")
    if not out.is_dir():
        raise ConfigError(f"{out}: no such output folder (nothing has run there yet)")
    groups = variant_groups(manifest.items) if manifest is not None else None
    path = build_report(out, state_path=args.state, groups=groups)
    print(f"wrote {path}  (open it in a browser; links are relative, the folder can be moved or served)")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.manifest.load import describe, load_manifest

    print(describe(load_manifest(args.manifest)))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.engine.wiring import default_out, default_state
    from pipeline.manifest import plan
    from pipeline.manifest.load import load_manifest
    from pipeline.state.sqlite import open_readonly

    manifest = load_manifest(args.manifest)
    path = args.state or default_state(args.out or default_out(manifest))
    phases: dict[str, str] | None = None
    if Path(path).exists():
        view = open_readonly(path)
        try:
            phases = {k: str(v) for k, v in view.phases().items()}
        finally:
            view.close()
    print(plan.render(plan.summarize(manifest, phases)))
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "sandbox": _cmd_sandbox,
    "ping": _cmd_ping,
    "run": _cmd_run,
    "status": _cmd_status,
    "report": _cmd_report,
    "validate": _cmd_validate,
    "plan": _cmd_plan,
}


def _progress_display(
    args: argparse.Namespace,
) -> Callable[[Callable[[], Snapshot]], Coroutine[Any, Any, None]] | None:
    """The live display on a terminal unless --quiet/--no-progress; nothing for cron and pipes."""
    if args.quiet or args.no_progress or not sys.stderr.isatty():
        return None
    from pipeline.cli.progress import show_progress

    return functools.partial(show_progress, stream=sys.stderr)


def _default_level(args: argparse.Namespace) -> str:
    """The live progress display already tells what info lines would; keep the screen for it."""
    progress = (
        args.command == "run" and not args.no_progress and args.log_file is None and sys.stderr.isatty()
    )
    return "warning" if progress else "info"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    args = _build_parser().parse_args(argv)
    level = "error" if getattr(args, "quiet", False) else args.log_level or _default_level(args)
    log_file = args.log_file.open("a", encoding="utf-8") if args.log_file else None
    logs.configure(fmt=args.log_format, level=level, stream=log_file)
    try:
        command = _COMMANDS[args.command]
        if inspect.iscoroutinefunction(command):
            return int(asyncio.run(command(args)))
        return int(command(args))
    except PipelineError as exc:
        print(f"photogpt-pipeline: error: {logs.redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("photogpt-pipeline: interrupted", file=sys.stderr)
        return 130
    finally:
        if log_file is not None:
            log_file.close()

"""Commands that read a run without paying: ``status``, ``report``, ``validate`` and ``plan``."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.cli import outputs
from pipeline.cli.flags import add_logging_flags
from pipeline.cli.outputs import out_arg
from pipeline.errors import ConfigError

__all__ = ["register"]


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, Callable[[argparse.Namespace], Any]]:
    """The read-only sub-commands; returns their handlers by name."""
    status = sub.add_parser("status", help="what the state file holds (read-only; safe during a run)")
    status.add_argument("manifest", type=Path, nargs="?")
    status.add_argument("--out", type=out_arg, default=None)
    status.add_argument("--state", default=None, help="state file or postgresql:// URL")
    status.add_argument(
        "--run", default=None, help="with a shared database: the run's name (default: manifest name)"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    add_logging_flags(status)

    report = sub.add_parser("report", help="write the static HTML gallery of a run (report.html)")
    report.add_argument("manifest", type=Path, nargs="?")
    report.add_argument("--out", type=out_arg, default=None)
    report.add_argument("--state", default=None, help="state file or postgresql:// URL")
    report.add_argument("--run", default=None, help="with a shared database: the run's name")
    add_logging_flags(report)

    validate = sub.add_parser("validate", help="check a manifest; exit 0 or 2 with every problem")
    validate.add_argument("manifest", type=Path)
    add_logging_flags(validate)

    plan = sub.add_parser("plan", help="what a run would do and cost; sends no paid request")
    plan.add_argument("manifest", type=Path)
    plan.add_argument("--out", type=out_arg, default=None)
    plan.add_argument("--state", default=None, help="state file or postgresql:// URL")
    add_logging_flags(plan)
    return {"status": _cmd_status, "report": _cmd_report, "validate": _cmd_validate, "plan": _cmd_plan}


def _state_path(args: argparse.Namespace) -> Path:
    from pipeline.engine.request import default_out, default_state
    from pipeline.manifest.survey import survey_manifest

    if args.state:
        return Path(args.state)
    if args.out:
        return default_state(args.out)
    if args.manifest:  # only its name is needed: the rows are counted, not built
        return default_state(default_out(survey_manifest(args.manifest).built))
    raise ConfigError("say which run: give MANIFEST, --out DIR or --state PATH")


def _shared_state(args: argparse.Namespace) -> str | None:
    """The ``postgresql://`` URL ``--state`` or ``$PHOTOGPT_STATE_URL`` names, if any."""
    from pipeline.state.opening import resolve_state

    found = resolve_state(args.state, Path("unused"))
    return found if isinstance(found, str) else None


def _cmd_status(args: argparse.Namespace) -> int:
    if (url := _shared_state(args)) is not None:
        from pipeline.cli.shared_status import status_shared

        return status_shared(url, args)
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

    manifest = load_manifest(args.manifest) if args.manifest else None
    state = _report_state(args, manifest.name if manifest is not None else None)
    if isinstance(args.out, str):
        return int(asyncio.run(outputs.report_s3(args.out, state)))
    if args.out:
        out = Path(args.out)
    elif manifest is not None:
        out = default_out(manifest)
    else:
        raise ConfigError("say which run: give MANIFEST or --out DIR")
    if not out.is_dir():
        raise ConfigError(f"{out}: no such output folder (nothing has run there yet)")
    groups = variant_groups(manifest.items) if manifest is not None else None
    path = build_report(out, state_path=state, groups=groups)
    print(f"wrote {path}  (open it in a browser; links are relative, the folder can be moved or served)")
    return 0


def _report_state(args: argparse.Namespace, manifest_name: str | None) -> Any:
    """``--state`` for the gallery: a file (``None``: the one in the output folder), or one run of
    a shared database (``--state``/``$PHOTOGPT_STATE_URL``; the run is ``--run`` or the manifest's)."""
    from pipeline.state.store import SharedState

    if (url := _shared_state(args)) is not None:
        run = getattr(args, "run", None) or manifest_name
        if run is None:
            raise ConfigError("say which run of the shared database: give MANIFEST or --run NAME")
        return SharedState(url, run)
    return Path(args.state) if args.state else None


def _cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.manifest.survey import describe, survey_manifest

    print(describe(survey_manifest(args.manifest)))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.engine.request import default_out, default_state  # not wiring: no HTTP client
    from pipeline.errors import NoStateYetError
    from pipeline.manifest import plan
    from pipeline.manifest.survey import survey_manifest
    from pipeline.state.opening import open_view, resolve_state

    manifest = survey_manifest(args.manifest)  # rows counted, not built, unless a state asks for keys
    where = resolve_state(args.state, default_state(args.out or default_out(manifest.built)))
    phases: dict[str, str] | None = None
    if isinstance(where, str) or where.exists():
        try:
            view = open_view(where, run_name=manifest.name)
        except NoStateYetError:  # a database nothing has run against yet: plan as for no file
            pass
        else:
            try:
                phases = {k: str(v) for k, v in view.phases().items()}
            finally:
                view.close()
    print(plan.render(plan.summarize(manifest, phases)))
    return 0

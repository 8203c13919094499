"""``status --state postgresql://…``: one run of a shared database, and which worker holds what."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from pipeline.errors import ConfigError
from pipeline.state.pgconn import redact_url
from pipeline.state.pgreads import open_pg_view

__all__ = ["status_shared"]


def _run_name(args: argparse.Namespace) -> str:
    if args.run:
        return str(args.run)
    if args.manifest:
        from pipeline.manifest.load import load_manifest

        return load_manifest(args.manifest).name
    raise ConfigError("say which run of the shared database: give MANIFEST or --run NAME")


def status_shared(url: str, args: argparse.Namespace) -> int:
    """Counts per phase, the workers with how many units each holds, every held unit, the review."""
    run = _run_name(args)
    with open_pg_view(url, run) as view:
        counts = {str(phase): n for phase, n in view.counts().items()}
        units = view.units()
        workers = view.holders()
        review = view.review_counts()
    held = [u for u in units if u.holder and u.phase not in ("done", "failed", "unknown")]
    if args.json:
        print(json.dumps({
            "run": run,
            "counts": counts,
            "review": review,
            "workers": [{"holder": h, "holding": n, "seenAt": seen} for h, n, seen in workers],
            "units": [
                {"key": u.key, "item": u.item_id, "step": u.step, "index": u.index, "phase": str(u.phase),
                 "jobId": u.job_id, "error": u.last_error, "holder": u.holder, "leaseUntil": u.lease_until}
                for u in units
            ],
        }, indent=1))  # fmt: skip
        return 0
    total = sum(counts.values())
    shown = ", ".join(f"{n} {p}" for p, n in counts.items() if n) or "no units"
    lines = [f"{redact_url(url)} run {run!r}: {total} units: {shown}"]
    if workers:
        lines.append("workers (holder: units held under a live lease, last heartbeat):")
        lines += [f"  {h}: {n} held, seen {seen}" for h, n, seen in workers]
    per = Counter((u.holder, str(u.phase)) for u in held)
    for (holder, phase), n in sorted(per.items()):
        lines.append(f"  {holder} holds {n} {phase}")
    for u in [u for u in units if u.phase in ("failed", "unknown")][:100]:
        lines.append(
            f"  {u.phase:8} {u.item_id} {u.step}#{u.index}: {u.last_error or '(no reason recorded)'}"
        )
    if any(review.values()):
        lines.append("review: " + ", ".join(f"{n} {what}" for what, n in review.items()))
    print("\n".join(lines))
    return 0

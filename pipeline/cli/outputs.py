"""Commands about where outputs live: ``export``, and the bucket side of ``report``.

``--out`` and ``--to`` take a folder or ``s3://BUCKET/PREFIX``; S3 uses the standard AWS
configuration (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``AWS_PROFILE``).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pipeline.cli.flags import add_logging_flags
from pipeline.errors import ConfigError

__all__ = ["out_arg", "register", "report_s3"]

Handler = Callable[[argparse.Namespace], Awaitable[int]]


def out_arg(text: str) -> Path | str:
    """``--out``/``--to``: an ``s3://`` URL stays text (a Path would fold its ``//``), else a folder."""
    if text.startswith("s3://"):
        from pipeline.output.s3url import parse_s3_url

        parse_s3_url(text)  # a bad URL is a usage error now, not a surprise later
        return text
    return Path(text)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    export = sub.add_parser(
        "export", help="copy finished assets and sidecars to a folder or s3:// (resumable, verified)"
    )
    export.add_argument("manifest", type=Path)
    export.add_argument(
        "--to", type=out_arg, required=True, help="destination: a folder or s3://BUCKET/PREFIX"
    )
    export.add_argument("--out", type=out_arg, default=None, help="the run's output (default outputs/<name>)")
    export.add_argument("--state", default=None, help="state file or postgresql:// URL (for --only approved)")
    export.add_argument("--only", choices=("approved", "all"), default="all")
    export.add_argument(
        "--layout", default=None, help="rename on the way, e.g. '{item}/{step}-{index}-{n}.{ext}'"
    )
    add_logging_flags(export)
    return {"export": _cmd_export}


async def _open(where: Path | str, role: str) -> Any:
    from pipeline.engine.wiring import s3_home
    from pipeline.output.open import is_s3_url, open_output

    staging = s3_home(str(where)) / role if is_s3_url(where) else None
    store = open_output(where, staging=staging)
    await store.open()
    return store


async def _cmd_export(args: argparse.Namespace) -> int:
    from pipeline.engine.wiring import default_out, default_state
    from pipeline.manifest.load import load_manifest
    from pipeline.output.export import export_outputs
    from pipeline.output.layout import OutputLayout
    from pipeline.state.decisions import approved_sha256s
    from pipeline.state.opening import resolve_state
    from pipeline.state.store import SharedState

    manifest = load_manifest(args.manifest)
    source_at = args.out or default_out(manifest)
    if not isinstance(source_at, str) and not Path(source_at).is_dir():  # noqa: ASYNC240 - one stat
        raise ConfigError(f"{source_at}: no such output folder (nothing has run there yet)")
    layout = OutputLayout(Path("."), args.layout) if args.layout else None
    only = None
    if args.only == "approved":
        where = resolve_state(args.state, default_state(source_at))
        only = approved_sha256s(SharedState(where, manifest.name) if isinstance(where, str) else where)
    source = await _open(source_at, "export-src")
    try:
        dest = await _open(args.to, "export-dest")
        try:
            summary = await export_outputs(source, dest, only=only, layout=layout)
        finally:
            await dest.close()
    finally:
        await source.close()
    print(
        f"exported to {args.to}: {summary.copied} copied ({summary.bytes} bytes), "
        f"{summary.skipped} already there, {len(summary.failed)} failed"
        + ("" if only is None else f" (only approved: {len(only)} approved in the state)")
    )
    for line in summary.failed[:50]:
        print(f"  {line}")
    return 1 if summary.failed else 0


async def report_s3(out: str, state: Any) -> int:
    """``report --out s3://…``: the gallery built from the bucket's sidecars, uploaded beside them."""
    from pipeline.engine.wiring import default_state
    from pipeline.output.publish_report import publish_report

    store = await _open(out, "report")
    try:
        where = await publish_report(store, state_path=state or default_state(out))  # or a SharedState
    finally:
        await store.close()
    print(f"wrote {where}  (links are relative: it works from the bucket, or a static site of it)")
    return 0

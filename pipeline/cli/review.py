"""``photogpt-pipeline review``: judge a run's files, in the browser or from the shell.

Decisions (approve, reject with an optional note, undo) are keyed by the file's sha256, so a
regenerated file never inherits an old verdict; the newest decision wins and keeps its time.
They live in the state file, so writing them takes the run lock: while a run holds it, ``review``
exits 4 (and the reverse: a run waits for no review server, it exits 4 while one is open).
``run MANIFEST --regenerate-rejected`` then pays again for the rejected ones only.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.cli.flags import add_logging_flags
from pipeline.errors import ConfigError

if TYPE_CHECKING:  # imported when the command runs: every other command starts faster without them
    from pipeline.state.sqlite import StateStore

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Callable[..., Any]]:
    """Add ``review`` to ``sub``; return ``{"review": handler}``."""
    p = sub.add_parser(
        "review",
        help="approve or reject outputs: serve the gallery on 127.0.0.1, or decide from the shell",
        description="Without --approve/--reject/--undo/--import/--json: serve the gallery on 127.0.0.1 "
        "with a random token in the URL; clicks are written to the state at once. ITEM/FILE is a "
        "path inside the output folder, e.g. perfume/image-1.jpeg (the extension may be left out).",
    )
    p.add_argument("manifest", type=Path, nargs="?")
    p.add_argument("--out", type=Path, default=None, help="output folder (default outputs/<manifest name>)")
    p.add_argument("--state", type=Path, default=None, help="state file (default <out>/.state/state.db)")
    p.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    p.add_argument("--approve", nargs="+", default=[], metavar="ITEM/FILE")
    p.add_argument("--reject", nargs="+", default=[], metavar="ITEM/FILE")
    p.add_argument("--undo", nargs="+", default=[], metavar="ITEM/FILE")
    p.add_argument("--note", default=None, help="a note kept with --reject (why)")
    p.add_argument("--json", action="store_true", help="list the current decisions as JSON")
    p.add_argument("--import", dest="import_file", type=Path, default=None, metavar="FILE",
                   help="record the decisions a static report.html exported")  # fmt: skip
    add_logging_flags(p)
    return {"review": _cmd_review}


def _where(args: argparse.Namespace) -> tuple[Path, Path, Any]:
    """The output folder, the state file and the manifest (``None`` without MANIFEST)."""
    from pipeline.engine.wiring import default_out, default_state
    from pipeline.manifest.load import load_manifest

    manifest = load_manifest(args.manifest) if args.manifest else None
    if args.out:
        out = Path(args.out)
    elif manifest is not None:
        out = default_out(manifest)
    else:
        raise ConfigError("say which run: give MANIFEST or --out DIR")
    state = Path(args.state) if args.state else default_state(out)
    if not out.is_dir() or not state.is_file():
        raise ConfigError(f"{out}: nothing to review yet (no output folder or no state file {state})")
    return out, state, manifest


async def _cmd_review(args: argparse.Namespace) -> int:
    from pipeline.state.lock import RunLock
    from pipeline.state.sqlite import StateStore, open_readonly

    out, state, manifest = _where(args)
    if args.json:
        with open_readonly(state) as view:
            listed = [asdict(d) for d in view.decisions().values()]
            counts = view.review_counts()
        print(json.dumps({"decisions": listed, "review": counts}, indent=1))
        return 0
    lock = RunLock(state.with_name(state.name + ".lock"))
    lock.acquire()
    try:
        async with StateStore.open(state, clock=_clock()) as store:
            if args.approve or args.reject or args.undo or args.import_file:
                return await _decide(args, out, store)
            return await _serve(args, out, store, manifest)
    finally:
        lock.release()


async def _decide(args: argparse.Namespace, out: Path, store: StateStore) -> int:
    done = 0
    for verdict, names in (("approve", args.approve), ("reject", args.reject), ("undo", args.undo)):
        for name in names:
            rel, sha = _resolve(out, name)
            note = args.note if verdict == "reject" else None
            await store.record_decision(sha, verdict, note=note, path=rel, item_id=rel.split("/", 1)[0])
            print(f"{verdict:7} {rel}  (sha256 {sha[:12]}…)")
            done += 1
    if args.import_file is not None:
        for entry in _read_export(args.import_file):
            await store.record_decision(**entry)
            done += 1
        print(f"imported {args.import_file}")
    print(f"{done} decision(s) recorded in {store.path}")
    return 0


def _resolve(out: Path, name: str) -> tuple[str, str]:
    """``ITEM/FILE`` (extension optional) → its relative path and the sha256 of the file there now."""
    from pipeline.output.sidecar import file_sha256

    rel = name.strip().strip("/")
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ConfigError(f"{name!r}: give a file inside the output folder, like perfume/image-1.jpeg")
    candidates = [out / rel] if (out / rel).suffix else []
    if not candidates or not candidates[0].is_file():
        folder = (out / rel).parent
        stem = (out / rel).name
        candidates = (
            sorted(p for p in folder.glob(f"{stem}.*") if p.suffix != ".json") if folder.is_dir() else []
        )
    found = [p for p in candidates if p.is_file() and not p.is_symlink()]
    if len(found) != 1:
        what = "no file" if not found else f"{len(found)} files"
        raise ConfigError(f"{name!r}: {what} of that name in {out}")
    return found[0].relative_to(out).as_posix(), file_sha256(found[0])


def _read_export(path: Path) -> Iterator[dict[str, Any]]:
    """The entries of an exported decisions file, oldest first, checked before anything is recorded."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the decisions file: {exc}") from exc
    entries = doc.get("decisions") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise ConfigError(f'{path}: expected {{"decisions": [...]}} as the gallery exports it')
    checked = []
    for number, e in enumerate(entries, 1):
        if not isinstance(e, dict) or e.get("verdict") not in ("approve", "reject", "undo"):
            raise ConfigError(f"{path}: decision #{number} has no verdict approve, reject or undo")
        sha = e.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64:
            raise ConfigError(f"{path}: decision #{number} has no sha256")
        try:
            at = datetime.fromisoformat(str(e["at"]).replace("Z", "+00:00")) if e.get("at") else None
        except ValueError as exc:
            raise ConfigError(f"{path}: decision #{number}: bad time {e.get('at')!r}") from exc
        note, where, item = e.get("note"), e.get("path"), e.get("item")
        checked.append(
            {"sha256": sha, "verdict": e["verdict"], "note": str(note)[:500] if note else None,
             "path": where if isinstance(where, str) else None,
             "item_id": item if isinstance(item, str) else None, "at": at}
        )  # fmt: skip
    yield from sorted(checked, key=lambda c: (c["at"] is not None, c["at"] or datetime.min))


async def _serve(args: argparse.Namespace, out: Path, store: StateStore, manifest: Any) -> int:
    import anyio

    from pipeline.output.report import variant_groups
    from pipeline.output.review_server import ReviewServer

    groups = variant_groups(manifest.items) if manifest is not None else None
    token = secrets.token_urlsafe(24)
    async with ReviewServer(out, store, token=token, groups=groups, port=args.port) as server:
        print(f"review: {server.url}", flush=True)
        print(f"  decisions go to {store.path}; Ctrl-C stops", file=sys.stderr, flush=True)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
    return 0


def _clock() -> Any:
    from pipeline.clock import SystemClock

    return SystemClock()

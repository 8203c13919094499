"""``photogpt-pipeline review``: judge a run's files, in the browser or from the shell.

Decisions (approve, reject with an optional note, undo) are keyed by the file's sha256, so a
regenerated file never inherits an old verdict; the newest decision wins and keeps its time.
They live in the state file, so writing them takes the run lock: while a run holds it, ``review``
exits 4 (and the reverse: a run waits for no review server, it exits 4 while one is open). On a
shared database (``--state postgresql://…``) they belong to the run (the manifest's name, or
``--run``) and need no lock: a verdict touches no unit, so workers may be running meanwhile.
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
    from pipeline.state.review_store import ReviewedState

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
    p.add_argument("--state", default=None,
                   help="state file (default <out>/.state/state.db) or postgresql:// URL")  # fmt: skip
    p.add_argument("--run", default=None, help="with a shared database: the run's name (default: MANIFEST's)")
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


def _where(args: argparse.Namespace) -> tuple[Path, Path | str, Any, str]:
    """The output folder, the state (a file or a database URL), the manifest (``None`` without
    MANIFEST) and the run's name in a shared database."""
    from pipeline.engine.wiring import default_out, default_state
    from pipeline.manifest.load import load_manifest
    from pipeline.state.opening import resolve_state

    manifest = load_manifest(args.manifest) if args.manifest else None
    if args.out:
        out = Path(args.out)
    elif manifest is not None:
        out = default_out(manifest)
    else:
        raise ConfigError("say which run: give MANIFEST or --out DIR")
    state = resolve_state(args.state, default_state(out))
    run = args.run or (manifest.name if manifest is not None else None)
    if isinstance(state, str) and run is None:
        raise ConfigError("say which run of the shared database: give MANIFEST or --run NAME")
    if not out.is_dir() or (isinstance(state, Path) and not state.is_file()):
        raise ConfigError(f"{out}: nothing to review yet (no output folder or no state {_shown(state, run)})")
    return out, state, manifest, run or "default"


async def _cmd_review(args: argparse.Namespace) -> int:
    from pipeline.state.opening import open_store, open_view

    out, state, manifest, run = _where(args)
    if args.json:
        view = open_view(state, run_name=run)
        try:
            _require_run(view, state, run)
            listed = [asdict(d) for d in view.decisions().values()]
            counts = view.review_counts()
        finally:
            view.close()
        print(json.dumps({"decisions": listed, "review": counts}, indent=1))
        return 0
    lock = None
    if isinstance(state, Path):  # a file has one writer; a database's writes check their claims
        from pipeline.state.lock import RunLock

        lock = RunLock(state.with_name(state.name + ".lock"))
        lock.acquire()
    try:
        store: Any = await open_store(state, clock=_clock(), run_name=run)
        try:
            _require_run(store, state, run)
            if args.approve or args.reject or args.undo or args.import_file:
                return await _decide(args, out, store, _shown(state, run))
            return await _serve(args, out, store, manifest, _shown(state, run))
        finally:
            await store.aclose()
    finally:
        if lock is not None:
            lock.release()


def _require_run(store: Any, state: Path | str, run: str) -> None:
    """A shared database holds many runs: one no worker ran (a typo in ``--run``, a MANIFEST of
    another name) is "nothing to review", as a missing state file is, not verdicts filed under a
    name no ``--regenerate-rejected`` will read."""
    if isinstance(state, str) and not any(store.counts().values()):
        raise ConfigError(f"nothing to review yet: no units in {_shown(state, run)}; is --run NAME right?")


def _shown(state: Path | str, run: str | None) -> str:
    """Where decisions go, safe to print (a database URL without its password)."""
    if isinstance(state, Path):
        return str(state)
    from pipeline.state.pgconn import redact_url

    return f"{redact_url(state)} (run {run!r})"


async def _decide(args: argparse.Namespace, out: Path, store: ReviewedState, shown: str) -> int:
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
    print(f"{done} decision(s) recorded in {shown}")
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


async def _serve(args: argparse.Namespace, out: Path, store: ReviewedState, manifest: Any, shown: str) -> int:
    import anyio

    from pipeline.output.report import variant_groups
    from pipeline.output.review_server import ReviewServer

    groups = variant_groups(manifest.items) if manifest is not None else None
    token = secrets.token_urlsafe(24)
    async with ReviewServer(out, store, token=token, groups=groups, port=args.port) as server:
        print(f"review: {server.url}", flush=True)
        print(f"  decisions go to {shown}; Ctrl-C stops", file=sys.stderr, flush=True)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
    return 0


def _clock() -> Any:
    from pipeline.clock import SystemClock

    return SystemClock()

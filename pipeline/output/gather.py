"""What the gallery shows, gathered from an output folder: assets, unit problems, run facts, decisions.

Sources, cheapest first: ``index.jsonl`` (one record per asset; a later record for the same path
wins), or the sidecars when the index is missing; the state file for counts per phase, failures,
units that have no file yet and review decisions; the newest ``runs/*.json`` for the last run's
facts. No asset is read (one ``lstat`` each). Blocking: call it from a worker thread.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.errors import StateError
from pipeline.output.sidecar import read_index, read_sidecar, strip_query
from pipeline.state.opening import SharedState, open_view
from pipeline.state.records import Phase, UnitRecord
from pipeline.state.review_store import DecisionRecord

__all__ = [
    "Asset",
    "Facts",
    "Gathered",
    "Item",
    "Problem",
    "as_int",
    "as_text",
    "gather",
    "scrub",
    "step_rank",
]

_STEP_ORDER = {"image": 0, "upscale": 1, "video": 2}
_SECRETISH = re.compile(r"key|token|secret|password|authori[sz]ation|signature|credential", re.IGNORECASE)


@dataclass(slots=True)
class Asset:
    """One file of the index (or of the state), as the gallery shows it."""

    item: str
    step: str
    index: int
    n: int
    path: str  # relative, '/'-separated, checked by _safe_path
    key: str
    model: str | None
    request: Mapping[str, Any]
    job_id: str | None
    size: int | None
    sha256: str | None
    record: Mapping[str, Any] = field(default_factory=dict)  #: the sidecar as indexed
    exists: bool = False  # a regular file at ``path`` (one lstat; the file is never read)


@dataclass(slots=True)
class Problem:
    """A unit that has not produced its files, with why."""

    item: str
    step: str
    index: int
    kind: str  # failed | unknown | blocked | unfinished
    phase: str
    reason: str
    key: str
    job_id: str | None


@dataclass(slots=True)
class Item:
    assets: list[Asset] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass(slots=True)
class Facts:
    counts: dict[str, int] | None = None
    state_note: str | None = None
    run: dict[str, Any] | None = None
    run_name: str | None = None
    runs: int = 0
    decisions: dict[str, DecisionRecord] = field(default_factory=dict)


@dataclass(slots=True)
class Gathered:
    """Items by id (sorted), and the facts about the folder."""

    items: dict[str, Item]
    facts: Facts


def gather(
    out: Path, state_path: Path | SharedState, exists: Callable[[str], bool] | None = None
) -> Gathered:
    """Everything the gallery needs from ``out`` and its state file (missing parts are noted, not fatal).

    ``exists`` says whether an asset path is published (default: a regular file under ``out``)."""
    facts = Facts()
    assets = _load_assets(out)
    units = _load_state(state_path, facts)
    _load_latest_run(out / "runs", facts)
    present = exists or (lambda rel: _is_file(out / rel))
    return Gathered(_assemble(present, assets, units, facts), facts)


# -- gathering ---------------------------------------------------------------------------------------


def _load_assets(out: Path) -> dict[str, Asset]:
    """Assets by relative path: the index's records (the last one for a path wins), else the sidecars."""
    index = out / "index.jsonl"
    records: Iterable[dict[str, Any]] = read_index(index) if index.is_file() else _scan_sidecars(out)
    assets: dict[str, Asset] = {}
    for record in records:
        asset = _asset_from_record(record)
        if asset is not None:
            assets[asset.path] = asset
    return assets


def _scan_sidecars(out: Path) -> Iterator[dict[str, Any]]:
    """Every sidecar under ``out`` (not in ``runs/`` or dot folders), in a stable order."""
    for directory, dirs, files in os.walk(out):
        here = Path(directory)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here == out and d == "runs"))
        for name in sorted(files):
            if name.endswith(".json") and not name.startswith("."):
                data = read_sidecar(here / name)
                if data is not None and "path" in data and "key" in data:
                    yield data


def _asset_from_record(record: Mapping[str, Any]) -> Asset | None:
    path = _safe_path(record.get("path"))
    if path is None:
        return None
    raw = record.get("request")
    request: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return Asset(
        item=as_text(record.get("item")) or path.split("/", 1)[0],
        step=as_text(record.get("step")) or "?",
        index=as_int(record.get("index")) or 1,
        n=as_int(record.get("n")) or 1,
        path=path,
        key=as_text(record.get("key")) or "",
        model=as_text(record.get("model")) or as_text(request.get("modelID")),
        request=request,
        job_id=as_text(record.get("jobId")),
        size=as_int(record.get("bytes")),
        sha256=as_text(record.get("sha256")),
        record=record,
    )


def _load_state(state_path: Path | SharedState, facts: Facts) -> list[UnitRecord]:
    if isinstance(state_path, Path) and not state_path.is_file():
        facts.state_note = "no state file: showing the files of index.jsonl only"
        return []
    try:
        view = open_view(state_path)
        try:
            facts.counts = {str(phase): count for phase, count in view.counts().items()}
            facts.decisions = view.decisions()
            return view.units()
        finally:
            view.close()
    except StateError as exc:
        facts.state_note = f"the state file could not be read: {exc}"
        return []


def _load_latest_run(runs: Path, facts: Facts) -> None:
    try:
        names = sorted(p.name for p in runs.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except OSError:
        return
    facts.runs = len(names)
    for name in reversed(names):
        record = read_sidecar(runs / name)
        if record is not None:
            facts.run, facts.run_name = record, name
            return


def _assemble(
    exists: Callable[[str], bool], assets: dict[str, Asset], units: list[UnitRecord], facts: Facts
) -> dict[str, Item]:
    """Items by id: their assets (index, completed from the state) and their problems (from the state)."""
    for unit in units:
        if unit.phase not in (Phase.DONE, Phase.SUCCEEDED):
            continue
        for output in unit.outputs:
            path = _safe_path(output.path)
            if path is None or path in assets or not output.downloaded:
                continue
            request = _request(unit)
            assets[path] = Asset(
                item=unit.item_id,
                step=unit.step,
                index=unit.index,
                n=output.n,
                path=path,
                key=unit.key,
                model=as_text(request.get("modelID")),
                request=request,
                job_id=unit.job_id,
                size=output.bytes,
                sha256=output.sha256,
            )
    items: dict[str, Item] = {}
    for asset in assets.values():
        asset.exists = exists(asset.path)
        items.setdefault(asset.item, Item()).assets.append(asset)
    for unit in units:
        items.setdefault(unit.item_id, Item())
    for problem in _problems(units, facts):
        items.setdefault(problem.item, Item()).problems.append(problem)
    for item in items.values():
        item.assets.sort(key=lambda a: (step_rank(a.step), a.index, a.n, a.path))
        item.problems.sort(key=lambda p: (step_rank(p.step), p.index, p.key))
    return dict(sorted(items.items()))


def _problems(units: list[UnitRecord], facts: Facts) -> Iterator[Problem]:
    """Units that did not finish, with why; a unit replaced by newer work for the same slot is left out.

    A slot (item, step, index) whose manifest entry changed holds an old unit and a newer one: the old
    one's failure no longer matters, unless the last run record still lists it.
    """
    by_key = {u.key: u for u in units}
    newest: dict[tuple[str, str, int], str] = {}
    for u in units:
        slot = (u.item_id, u.step, u.index)
        newest[slot] = max(newest.get(slot, ""), u.updated_at)
    reported: dict[str, str] = {}
    for failure in (facts.run or {}).get("failures") or ():
        if isinstance(failure, dict) and isinstance(failure.get("key"), str):
            reported[failure["key"]] = as_text(failure.get("reason")) or ""
    for u in units:
        if u.phase == Phase.DONE:
            continue
        if u.key not in reported and u.updated_at < newest[(u.item_id, u.step, u.index)]:
            continue
        blocker = _failed_upstream(u, by_key)
        if u.phase in (Phase.FAILED, Phase.UNKNOWN):
            kind = str(u.phase)
            reason = u.last_error or reported.get(u.key) or kind
        elif blocker is not None:
            kind = "blocked"
            reason = f"blocked: its upstream {blocker.step} #{blocker.index} is {blocker.phase}"
        else:
            kind = "unfinished"
            reason = u.last_error or reported.get(u.key) or f"not finished yet ({u.phase})"
        yield Problem(u.item_id, u.step, u.index, kind, str(u.phase), reason, u.key, u.job_id)


def _failed_upstream(unit: UnitRecord, by_key: Mapping[str, UnitRecord]) -> UnitRecord | None:
    seen: set[str] = set()
    current = unit
    while current.upstream and current.upstream not in seen:
        seen.add(current.upstream)
        up = by_key.get(current.upstream)
        if up is None:
            return None
        if up.phase in (Phase.FAILED, Phase.UNKNOWN):
            return up
        current = up
    return None


# -- helpers -----------------------------------------------------------------------------------------


def _safe_path(value: object) -> str | None:
    """A relative '/' path with no empty, '.', '..' or hidden segment, or ``None``."""
    if not isinstance(value, str) or not value or value.startswith("/") or "\\" in value or "\0" in value:
        return None
    parts = value.split("/")
    if any(not p or p in (".", "..") for p in parts) or parts[0].startswith("."):
        return None
    return value


def as_text(value: object) -> str | None:
    """``value`` as text (``None`` stays ``None``)."""
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def as_int(value: object) -> int | None:
    """``value`` if it is a whole number (not a bool), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _request(unit: UnitRecord) -> dict[str, Any]:
    try:
        return unit.request
    except ValueError:
        return {}


def scrub(name: str, value: Any) -> Any:
    """``value`` fit to show: secret-looking fields masked, URLs without query or userinfo."""
    if _secretish(name):
        return "***"
    if type(value) in (int, float, bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): scrub(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(name, v) for v in value]
    if isinstance(value, str) and "://" in value:
        return strip_query(value)
    return value


@lru_cache(maxsize=4096)
def _secretish(name: str) -> bool:
    return _SECRETISH.search(name) is not None


def step_rank(step: str) -> tuple[int, str]:
    """Sort key: image, upscale, video, then any other step by name."""
    return (_STEP_ORDER.get(step, len(_STEP_ORDER)), step)


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False

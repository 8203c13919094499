"""A static HTML gallery of an output folder: ``<out>/report.html``, one contact sheet per item.

The page is one self-contained file: inline CSS, one tiny inline script, no external URL, and only
relative links (``perfume/image-1.jpeg``), so it opens from disk or from any web server that serves
the folder. Everything that comes from sidecars or the state is HTML-escaped and every path segment
is URL-encoded; remote URLs are never written (signed URLs carry credentials in their query).

Sources, cheapest first: ``index.jsonl`` (one record per asset; a later record for the same path
wins), or the sidecars when the index is missing; the state file for counts per phase, failures and
units that have no file yet; the newest ``runs/*.json`` for the last run's facts. No asset is read.

Opening ``report.html#check`` makes the page check itself: every image is loaded eagerly and
decoded, then ``<body>`` gets ``data-images-total``, ``data-images-loaded`` and
``data-images-broken`` (and the same for videos' metadata). The tests read those from headless
Chromium. :func:`build_report` blocks (file I/O, SQLite): call it through
``anyio.to_thread.run_sync`` from async code.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline.errors import StateError
from pipeline.output.layout import fsync_dir
from pipeline.output.sidecar import read_index, read_sidecar, strip_query
from pipeline.state.sqlite import Phase, UnitRecord, open_readonly

__all__ = ["build_report"]

_REPORT_NAME = "report.html"
_STEP_ORDER = {"image": 0, "upscale": 1, "video": 2}
_IMAGE_EXT = frozenset({".jpeg", ".jpg", ".png", ".webp", ".gif", ".avif"})
_VIDEO_EXT = frozenset({".mp4", ".webm", ".mov", ".m4v"})
_OPTIONS_MAX = 600  # characters of compact JSON per caption; the sidecar has the rest
_PROBLEM_LIST_MAX = 200  # entries in the summary at the top; every item's sheet still shows all
_SECRETISH = re.compile(r"key|token|secret|password|authori[sz]ation|signature|credential", re.IGNORECASE)
_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW


@dataclass(slots=True)
class _Asset:
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
    exists: bool = False  # a regular file at ``path`` (one lstat; the file is never read)


@dataclass(slots=True)
class _Problem:
    item: str
    step: str
    index: int
    kind: str  # failed | unknown | blocked | unfinished
    phase: str
    reason: str
    key: str
    job_id: str | None


@dataclass(slots=True)
class _Item:
    assets: list[_Asset] = field(default_factory=list)
    problems: list[_Problem] = field(default_factory=list)


@dataclass(slots=True)
class _Facts:
    counts: dict[str, int] | None = None
    state_note: str | None = None
    run: dict[str, Any] | None = None
    run_name: str | None = None
    runs: int = 0


# -- public ------------------------------------------------------------------------------------------


def build_report(
    out: Path,
    *,
    state_path: Path | None = None,
    title: str | None = None,
    exists: Callable[[str], bool] | None = None,
) -> Path:
    """Write ``<out>/report.html`` (atomically) from the folder's index, state and run records.

    ``state_path`` defaults to ``<out>/.state/state.db``; without a state file the page shows the
    assets of the index alone. Returns the report's path. Blocking: run it in a worker thread.
    ``exists`` says whether an asset path is published (default: a regular file under ``out``;
    a bucket's report is built from a local mirror of its sidecars and listing).
    """
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"no output folder at {out}")
    state_path = state_path if state_path is not None else out / ".state" / "state.db"
    facts = _Facts()
    assets = _load_assets(out)
    units = _load_state(state_path, facts)
    _load_latest_run(out / "runs", facts)
    items = _assemble(exists or (lambda rel: _is_file(out / rel)), assets, units, facts)
    heading = title or f"{out.resolve().name} · PhotoGPT outputs"
    target = out / _REPORT_NAME
    _atomic_stream(target, lambda write: _render(write, heading, items, facts))
    return target


# -- gathering ---------------------------------------------------------------------------------------


def _load_assets(out: Path) -> dict[str, _Asset]:
    """Assets by relative path: the index's records (the last one for a path wins), else the sidecars."""
    index = out / "index.jsonl"
    records: Iterable[dict[str, Any]] = read_index(index) if index.is_file() else _scan_sidecars(out)
    assets: dict[str, _Asset] = {}
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


def _asset_from_record(record: Mapping[str, Any]) -> _Asset | None:
    path = _safe_path(record.get("path"))
    if path is None:
        return None
    raw = record.get("request")
    request: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return _Asset(
        item=_text(record.get("item")) or path.split("/", 1)[0],
        step=_text(record.get("step")) or "?",
        index=_int(record.get("index")) or 1,
        n=_int(record.get("n")) or 1,
        path=path,
        key=_text(record.get("key")) or "",
        model=_text(record.get("model")) or _text(request.get("modelID")),
        request=request,
        job_id=_text(record.get("jobId")),
        size=_int(record.get("bytes")),
        sha256=_text(record.get("sha256")),
    )


def _load_state(state_path: Path, facts: _Facts) -> list[UnitRecord]:
    if not state_path.is_file():
        facts.state_note = "no state file: showing the files of index.jsonl only"
        return []
    try:
        with open_readonly(state_path) as view:
            facts.counts = {str(phase): count for phase, count in view.counts().items()}
            return view.units()
    except StateError as exc:
        facts.state_note = f"the state file could not be read: {exc}"
        return []


def _load_latest_run(runs: Path, facts: _Facts) -> None:
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
    exists: Callable[[str], bool], assets: dict[str, _Asset], units: list[UnitRecord], facts: _Facts
) -> dict[str, _Item]:
    """Items by id: their assets (index, completed from the state) and their problems (from the state)."""
    for unit in units:
        if unit.phase not in (Phase.DONE, Phase.SUCCEEDED):
            continue
        for output in unit.outputs:
            path = _safe_path(output.path)
            if path is None or path in assets or not output.downloaded:
                continue
            request = _request(unit)
            assets[path] = _Asset(
                item=unit.item_id,
                step=unit.step,
                index=unit.index,
                n=output.n,
                path=path,
                key=unit.key,
                model=_text(request.get("modelID")),
                request=request,
                job_id=unit.job_id,
                size=output.bytes,
                sha256=output.sha256,
            )
    items: dict[str, _Item] = {}
    for asset in assets.values():
        asset.exists = exists(asset.path)
        items.setdefault(asset.item, _Item()).assets.append(asset)
    for unit in units:
        items.setdefault(unit.item_id, _Item())
    for problem in _problems(units, facts):
        items.setdefault(problem.item, _Item()).problems.append(problem)
    for item in items.values():
        item.assets.sort(key=lambda a: (_step_rank(a.step), a.index, a.n, a.path))
        item.problems.sort(key=lambda p: (_step_rank(p.step), p.index, p.key))
    return dict(sorted(items.items()))


def _problems(units: list[UnitRecord], facts: _Facts) -> Iterator[_Problem]:
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
            reported[failure["key"]] = _text(failure.get("reason")) or ""
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
        yield _Problem(u.item_id, u.step, u.index, kind, str(u.phase), reason, u.key, u.job_id)


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


# -- rendering ---------------------------------------------------------------------------------------

_CSS = """
:root{--fg:#1d232b;--mute:#5f6b7a;--line:#dfe3e8;--bg:#f5f6f8;--card:#fff;--bad:#b42318;--badbg:#fef3f2}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
 background:var(--bg)}
header{background:#1d232b;color:#f3f5f7;padding:20px 28px}
header h1{margin:0 0 6px;font-size:22px;font-weight:600}
header .sub{color:#aab4c0;font-size:13px}
.facts{display:flex;flex-wrap:wrap;gap:8px;margin-top:12px}
.chip{background:#2c3440;border-radius:999px;padding:3px 11px;font-size:12.5px;white-space:nowrap}
.chip b{font-weight:600}
.chip.bad{background:var(--bad);color:#fff}
.chip.zero{opacity:.55}
.note{margin-top:10px;color:#f7c948;font-size:13px}
main{padding:8px 28px 40px}
.summary{background:var(--badbg);border:1px solid #fecdca;border-radius:8px;padding:10px 16px;margin:16px 0}
.summary h2{margin:0 0 6px;font-size:15px;color:var(--bad)}
.summary ul{margin:0;padding-left:18px;columns:2 360px}
.summary a{color:var(--bad)}
section.item{margin:22px 0 0}
section.item h2{font-size:16px;margin:0 0 10px;padding-bottom:6px;border-bottom:1px solid var(--line);
 display:flex;gap:10px;align-items:baseline;flex-wrap:wrap}
section.item h2 .count{font-size:12.5px;font-weight:400;color:var(--mute)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;overflow:hidden;display:flex;
 flex-direction:column;min-width:0}
.thumb{display:block;height:210px;background:#e9ecef;
 background-image:linear-gradient(45deg,#dde1e5 25%,transparent 25%,transparent 75%,#dde1e5 75%),
 linear-gradient(45deg,#dde1e5 25%,transparent 25%,transparent 75%,#dde1e5 75%);
 background-size:16px 16px;background-position:0 0,8px 8px}
.thumb img,.thumb video{width:100%;height:100%;object-fit:contain;display:block;background:transparent}
.thumb video{background:#000}
.thumb.missing,.thumb.other{display:flex;align-items:center;justify-content:center;color:var(--mute);font-size:13px}
.cap{padding:8px 10px 10px;font-size:12.5px;display:flex;flex-direction:column;gap:4px}
.cap .head{display:flex;gap:6px;align-items:center;flex-wrap:wrap}
.step{background:#e7edf6;color:#244b82;border-radius:4px;padding:0 6px;font-weight:600;font-size:12px}
.step.video{background:#efe7f6;color:#5b2c83}.step.upscale{background:#e6f4ea;color:#1e6b34}
.cap .file{color:var(--mute);text-decoration:none;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.cap .file:hover{text-decoration:underline}
.prompt{display:-webkit-box;-webkit-line-clamp:4;-webkit-box-orient:vertical;overflow:hidden;
 overflow-wrap:anywhere}
.none{color:var(--mute);font-style:italic}
code{font:11.5px/1.35 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere;
 background:#f1f3f5;border-radius:4px;padding:1px 4px}
.meta{color:var(--mute);display:grid;grid-template-columns:auto 1fr;gap:1px 8px}
.meta span:nth-child(odd){color:#8a94a3}
.meta span{overflow-wrap:anywhere;min-width:0}
.problem{margin:10px;padding:10px 12px;border:2px solid var(--bad);background:var(--badbg);color:var(--bad);
 border-radius:6px;font-size:13px;overflow-wrap:anywhere}
.problem strong{display:block;text-transform:uppercase;font-size:11.5px;letter-spacing:.04em;
 margin-bottom:3px}
.problem.unfinished{border-color:#98a2b3;background:#f2f4f7;color:#344054}
.card.problem-card{border-color:#fecdca}
.empty{color:var(--mute);font-style:italic;margin:4px 0 0}
footer{color:var(--mute);font-size:12px;padding:0 28px 24px}
"""

# Runs only when the page is opened as report.html#check: load and decode every image, then say so.
_SCRIPT = """(function(){
if(location.hash!=="#check")return;
var imgs=Array.prototype.slice.call(document.images);
var vids=Array.prototype.slice.call(document.querySelectorAll("video"));
imgs.forEach(function(i){i.loading="eager";});
function img(i){return i.decode().then(function(){return i.complete&&i.naturalWidth>0;},
function(){return false;});}
function vid(v){return new Promise(function(done){
if(v.readyState>=1){done(true);return;}
v.addEventListener("loadedmetadata",function(){done(true);});
v.addEventListener("error",function(){done(false);});
v.preload="metadata";v.load();});}
Promise.all([Promise.all(imgs.map(img)),Promise.all(vids.map(vid))]).then(function(r){
var b=document.body,ok=r[0].filter(Boolean).length,vok=r[1].filter(Boolean).length;
b.setAttribute("data-images-total",imgs.length);b.setAttribute("data-images-loaded",ok);
b.setAttribute("data-images-broken",imgs.length-ok);b.setAttribute("data-videos-total",vids.length);
b.setAttribute("data-videos-ready",vok);b.setAttribute("data-check","done");});
})();"""
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
# Defence in depth: even a prompt that slipped past escaping could not run script or reach the network.
_CSP = (
    "default-src 'none'; img-src 'self' file:; media-src 'self' file:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{_SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)

Write = Callable[[str], object]


def _render(write: Write, heading: str, items: dict[str, _Item], facts: _Facts) -> None:
    anchors = {item_id: f"i{number}" for number, item_id in enumerate(items, 1)}
    n_assets = sum(len(i.assets) for i in items.values())
    total_bytes = sum(a.size or 0 for i in items.values() for a in i.assets)
    n_problems = sum(1 for i in items.values() for p in i.problems if p.kind != "unfinished")
    write(
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(heading)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<header>\n"
        f"<h1>{_e(heading)}</h1>\n"
        f'<div class="sub">generated {_e(_now())} · {len(items)} items · {n_assets} files · '
        f"{_e(_human(total_bytes))}</div>\n"
    )
    _render_facts(write, facts, n_problems)
    write("</header>\n<main>\n")
    _render_problem_summary(write, items, anchors, n_problems)
    for item_id, item in items.items():
        _render_item(write, item_id, anchors[item_id], item)
    if not items:
        write('<p class="empty">Nothing here yet: no asset and no unit of work was found.</p>\n')
    write(
        "</main>\n<footer>photogpt-pipeline report · open <code>report.html#check</code> to verify that "
        f"every image decodes</footer>\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _render_facts(write: Write, facts: _Facts, n_problems: int) -> None:
    chips: list[str] = []
    if facts.counts is not None:
        for phase in Phase:
            count = facts.counts.get(str(phase), 0)
            bad = count and phase in (Phase.FAILED, Phase.UNKNOWN)
            cls = "chip bad" if bad else ("chip zero" if not count else "chip")
            chips.append(f'<span class="{cls}">{_e(str(phase))} <b>{count}</b></span>')
    run = facts.run
    if run is not None:
        failures = run.get("failures")
        chips.append(f'<span class="chip">last run <b>{_e(_stamp(facts.run_name or ""))}</b></span>')
        for label, value in (
            ("elapsed", _seconds(run.get("elapsedSeconds"))),
            ("submitted", _int(run.get("submitted"))),
            ("rate-limited", _int(run.get("rateLimited"))),
            ("downloaded", _human(_int(run.get("downloadedBytes")))),
            ("failures", len(failures) if isinstance(failures, list) else None),
            ("exit code", _int(run.get("exitCode"))),
            ("stopped", _text(run.get("stopped"))),
        ):
            if value is None or value == "":
                continue
            cls = "chip bad" if label in ("failures", "exit code") and value not in (0, "0") else "chip"
            chips.append(f'<span class="{cls}">{_e(label)} <b>{_e(str(value))}</b></span>')
        chips.append(f'<span class="chip">runs <b>{facts.runs}</b></span>')
    if n_problems:
        chips.append(f'<span class="chip bad">problems <b>{n_problems}</b></span>')
    if chips:
        write(f'<div class="facts">{"".join(chips)}</div>\n')
    if facts.state_note:
        write(f'<div class="note">{_e(facts.state_note)}</div>\n')


def _render_problem_summary(
    write: Write, items: dict[str, _Item], anchors: dict[str, str], total: int
) -> None:
    if not total:
        return
    write(f'<div class="summary"><h2>{total} unit{"s" if total != 1 else ""} did not succeed</h2><ul>\n')
    shown = 0
    for item_id, item in items.items():
        for p in item.problems:
            if p.kind == "unfinished":
                continue
            if shown == _PROBLEM_LIST_MAX:
                write(f"<li>… and {total - shown} more below</li>\n")
                write("</ul></div>\n")
                return
            shown += 1
            write(
                f'<li><a href="#{anchors[item_id]}">{_e(item_id)}</a> · {_e(p.step)} #{p.index} '
                f"<b>{_e(p.kind)}</b>: {_e(_clip(p.reason, 160))}</li>\n"
            )
    write("</ul></div>\n")


def _render_item(write: Write, item_id: str, anchor: str, item: _Item) -> None:
    bits = [f"{len(item.assets)} file{'s' if len(item.assets) != 1 else ''}"]
    kinds: dict[str, int] = {}
    for p in item.problems:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    bits += [f"{count} {kind}" for kind, count in sorted(kinds.items())]
    write(
        f'<section class="item" id="{anchor}"><h2>{_e(item_id)} '
        f'<span class="count">{_e(" · ".join(bits))}</span></h2>\n'
    )
    if not item.assets and not item.problems:
        write('<p class="empty">No outputs yet.</p>\n</section>\n')
        return
    write('<div class="grid">\n')
    for asset in item.assets:
        _render_asset(write, asset)
    for problem in item.problems:
        _render_problem(write, problem)
    write("</div>\n")
    if not item.assets:
        write('<p class="empty">No outputs yet.</p>\n')
    write("</section>\n")


def _render_asset(write: Write, a: _Asset) -> None:
    href = _href(a.path)
    ext = os.path.splitext(a.path)[1].lower()
    name = a.path.rsplit("/", 1)[-1]
    if not a.exists:
        thumb = '<div class="thumb missing">file missing</div>'
    elif ext in _IMAGE_EXT:
        thumb = (
            f'<a class="thumb" href="{href}"><img loading="lazy" decoding="async" src="{href}" '
            f'alt="{_e(a.item)} {_e(a.step)} {a.n}"></a>'
        )
    elif ext in _VIDEO_EXT:
        thumb = f'<div class="thumb"><video controls preload="metadata" src="{href}"></video></div>'
    else:
        thumb = f'<a class="thumb other" href="{href}">{_e(ext.lstrip(".") or "file")}</a>'
    prompt = _text(a.request.get("prompt"))
    prompt_html = (
        f'<div class="prompt" title="{_e(_clip(prompt, 2000))}">{_e(prompt)}</div>'
        if prompt
        else '<div class="prompt none">no prompt</div>'
    )
    options = _options_json(a.request)
    meta = [
        ("model", _e(a.model or "—")),
        ("job", f"<code>{_e(a.job_id)}</code>" if a.job_id else "—"),
        ("size", _e(_human(a.size))),
        (
            "sha256",
            f'<code title="{_e(a.sha256)}">{_e(a.sha256[:12])}</code>' if a.sha256 else "—",
        ),
    ]
    write(
        f'<div class="card">{thumb}<div class="cap"><div class="head">'
        f'<span class="step {_e(a.step)}">{_e(a.step)}</span><span>n {a.n}</span>'
        f'<a class="file" href="{href}">{_e(name)}</a></div>{prompt_html}'
        + (f"<div><code>{_e(options)}</code></div>" if options else "")
        + '<div class="meta">'
        + "".join(f"<span>{label}</span><span>{value}</span>" for label, value in meta)
        + "</div></div></div>\n"
    )


def _render_problem(write: Write, p: _Problem) -> None:
    cls = "problem unfinished" if p.kind == "unfinished" else "problem"
    job = f"<span>job</span><span><code>{_e(p.job_id)}</code></span>" if p.job_id else ""
    write(
        f'<div class="card problem-card"><div class="{cls}"><strong>{_e(p.step)} #{p.index} · '
        f"{_e(p.kind)}</strong>{_e(_clip(p.reason, 2000))}</div>"
        f'<div class="cap"><div class="meta"><span>phase</span><span>{_e(p.phase)}</span>'
        f"<span>unit</span><span><code>{_e(p.key)}</code></span>{job}</div></div></div>\n"
    )


# -- helpers -----------------------------------------------------------------------------------------


def _atomic_stream(path: Path, produce: Callable[[Write], None]) -> None:
    """Stream text into a fresh temp beside ``path``, fsync, rename over ``path``, fsync the directory."""
    directory = path.parent
    for old in directory.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
        old.unlink(missing_ok=True)
    temp = directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FLAGS, 0o666)
    try:
        with open(fd, "w", encoding="utf-8", newline="\n", buffering=1 << 16) as f:
            produce(f.write)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(directory)


def _safe_path(value: object) -> str | None:
    """A relative '/' path with no empty, '.', '..' or hidden segment, or ``None``."""
    if not isinstance(value, str) or not value or value.startswith("/") or "\\" in value or "\0" in value:
        return None
    parts = value.split("/")
    if any(not p or p in (".", "..") for p in parts) or parts[0].startswith("."):
        return None
    return value


def _href(path: str) -> str:
    return "/".join(quote(part, safe="") for part in path.split("/"))


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _int(value: object) -> int | None:
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


def _options_json(request: Mapping[str, Any]) -> str:
    """The request without prompt and model, as compact JSON: URLs lose their query, secret-ish fields go."""
    rest = {k: _scrub(k, v) for k, v in request.items() if k not in ("prompt", "modelID")}
    if not rest:
        return ""
    text = json.dumps(rest, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return _clip(text, _OPTIONS_MAX)


def _scrub(name: str, value: Any) -> Any:
    if _SECRETISH.search(name):
        return "***"
    if isinstance(value, dict):
        return {str(k): _scrub(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(name, v) for v in value]
    if isinstance(value, str) and "://" in value:
        return strip_query(value)
    return value


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _step_rank(step: str) -> tuple[int, str]:
    return (_STEP_ORDER.get(step, len(_STEP_ORDER)), step)


def _human(size: int | None) -> str:
    if size is None:
        return "—"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _seconds(value: object) -> str | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _stamp(name: str) -> str:
    stem = name.removesuffix(".json")
    try:
        moment = datetime.strptime(stem, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    except ValueError:
        return stem
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False

"""The gallery of an output folder, ``<out>/report.html``: a contact sheet to judge a run by eye.

One self-contained file: inline CSS and script, no external URL, only relative links
(``perfume/image-1.jpeg``), so it opens from disk or from any server of the folder. It is
rendered with Jinja2 with autoescape on (templates in ``templates/``), so every value from a
sidecar or the state is escaped by default; the per-asset details the lightbox shows travel as
one JSON block (``|tojson`` escapes ``<``, ``>``, ``&`` and quotes). Secret-looking fields are
masked and URLs lose their query and userinfo; the asset's remote URL is never written.

The page: a dense grid of 164 px tiles with lazily loaded thumbnails (thousands stay fast); the
variants of a matrix item sit side by side in one box; filters by step, model, status, failed
and decision; a lightbox with the full request and the sidecar; keyboard navigation; approve /
reject / undo per asset. Served by ``review`` (``mode="review"``) decisions are POSTed to the
server; opened from disk they are kept in the browser's localStorage and exported as JSON for
``review MANIFEST --import FILE``. ``report.html#check`` decodes every image and writes the tally
on ``<body>`` (``data-images-total``/``-loaded``/``-broken``, ``data-videos-total``/``-ready``).
Blocking (file I/O, SQLite): call it through ``anyio.to_thread.run_sync`` from async code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import jinja2
import orjson
from markupsafe import Markup

from pipeline.output.gather import Asset, Facts, Gathered, Problem, as_int, as_text, gather, scrub
from pipeline.output.sidecar import atomic_write
from pipeline.state.opening import SharedState
from pipeline.state.records import Phase

__all__ = ["VariantLike", "build_report", "render_report", "variant_groups", "warm"]

_REPORT_NAME = "report.html"
_IMAGE_EXT = frozenset({".jpeg", ".jpg", ".png", ".webp", ".gif", ".avif"})
_VIDEO_EXT = frozenset({".mp4", ".webm", ".mov", ".m4v"})
_NOT_IN_SIDECAR = frozenset({"request", "url"})  # the request is shown on its own; a remote URL never
_PROBLEM_LIST_MAX = 200  # entries in the summary at the top; every item's box still shows all
_STATUS_ORDER = ("done", "missing", "failed", "unknown", "blocked", "unfinished")


class VariantLike(Protocol):
    """An expanded manifest item (:class:`pipeline.manifest.spec.Item` fits): enough to group variants."""

    @property
    def id(self) -> str: ...
    @property
    def location(self) -> str: ...
    @property
    def row(self) -> int | None: ...
    @property
    def variant(self) -> Mapping[str, Any]: ...


def variant_groups(items: Iterable[VariantLike]) -> dict[str, tuple[str, str]]:
    """``item id -> (group label, variant label)`` for the items one matrix made (same line, same row)."""
    by_origin: dict[tuple[str, int | None], list[VariantLike]] = {}
    for item in items:
        by_origin.setdefault((item.location, item.row), []).append(item)
    groups: dict[str, tuple[str, str]] = {}
    for members in by_origin.values():
        if len(members) < 2:
            continue
        label = os.path.commonprefix([m.id for m in members]).rstrip("-_. ") or members[0].id  # noqa: RUF071 - ids, not paths
        for m in members:
            groups[m.id] = (label, " · ".join(str(v) for v in m.variant.values()) or m.id)
    return groups


def build_report(
    out: Path,
    *,
    state_path: Path | SharedState | None = None,
    title: str | None = None,
    groups: Mapping[str, tuple[str, str]] | None = None,
    exists: Callable[[str], bool] | None = None,
) -> Path:
    """Write ``<out>/report.html`` atomically; returns its path. ``groups``: see :func:`variant_groups`.

    ``exists`` says whether an asset path is published (default: a regular file under ``out``; a
    bucket's report is built from a local mirror of its sidecars and listing)."""
    html = render_report(out, state_path=state_path, title=title, groups=groups, exists=exists)
    target = Path(out) / _REPORT_NAME
    atomic_write(target, html.encode(), exclusive=False)  # workers sharing a folder
    return target


def render_report(
    out: Path,
    *,
    state_path: Path | SharedState | None = None,
    title: str | None = None,
    groups: Mapping[str, tuple[str, str]] | None = None,
    exists: Callable[[str], bool] | None = None,
    mode: str = "static",
) -> str:
    """The gallery as HTML text; ``mode="review"`` lets its script POST decisions to the review server."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"no output folder at {out}")
    gathered = gather(out, state_path if state_path is not None else out / ".state" / "state.db", exists)
    heading = title or f"{out.resolve().name} · PhotoGPT outputs"
    script = _static("gallery.js")
    csp = (
        "default-src 'none'; img-src 'self' file:; media-src 'self' file:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'; "
        + ("connect-src 'self'; " if mode == "review" else "")
        + "base-uri 'none'; form-action 'none'"
    )  # defence in depth: even a value that slipped past escaping could not run or reach the network
    view = _View(gathered, groups or {})
    return (
        _env()
        .get_template("gallery.html.j2")
        .render(
            heading=heading,
            mode=mode,
            csp=csp,
            css=Markup(_static("gallery.css")),  # noqa: S704 - our own packaged file, not data
            script=Markup(script),  # noqa: S704 - our own packaged file, not data
            generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            chips=_chips(gathered.facts, view.n_problems, {d["sha"] for d in view.data if d.get("sha")}),
            state_note=gathered.facts.state_note,
            data={
                "mode": mode,
                "store": f"photogpt-review:{out.resolve().name}",
                "decisions": {
                    sha: {"verdict": d.verdict, "note": d.note, "at": d.at}
                    for sha, d in gathered.facts.decisions.items()
                },
                "assets": view.data,
            },
            **view.context(),
        )
    )


def warm() -> None:
    """Compile the gallery's template now (a run loads it while waiting on its last jobs)."""
    _env().get_template("gallery.html.j2")
    _static("gallery.js")
    _static("gallery.css")


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.output", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    # The gallery's data block (|tojson) through orjson: the stdlib encoder was ~10 % of a
    # 2,000-tile render. Jinja still escapes <, >, & and ' in what it returns.
    env.policies["json.dumps_function"] = _dumps
    env.policies["json.dumps_kwargs"] = {}
    return env


def _dumps(value: Any) -> str:
    """Sorted JSON text; what orjson refuses (big integers, non-text keys) goes through the stdlib."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, sort_keys=True)


@cache
def _static(name: str) -> str:
    return resources.files("pipeline.output").joinpath("templates", name).read_text(encoding="utf-8")


class _View:
    """Groups of tiles for the template and, in the same order, the lightbox's data per tile."""

    def __init__(self, gathered: Gathered, groups: Mapping[str, tuple[str, str]]) -> None:
        self.data: list[dict[str, Any]] = []
        self.groups: list[dict[str, Any]] = []
        self.problems: list[dict[str, Any]] = []
        self.n_problems = 0
        self.filters: dict[str, set[str]] = {"step": set(), "model": set(), "status": set()}
        members: dict[str, list[str]] = {}
        for item_id in gathered.items:
            members.setdefault(groups.get(item_id, (item_id, ""))[0], []).append(item_id)
        for number, (label, item_ids) in enumerate(members.items(), 1):
            self._group(f"i{number}", label, item_ids, gathered, groups)

    def _group(
        self, anchor: str, label: str, item_ids: list[str], g: Gathered, groups: Mapping[str, tuple[str, str]]
    ) -> None:
        tiles: list[dict[str, Any]] = []
        files, kinds = 0, dict[str, int]()
        for item_id in item_ids:
            item, variant = g.items[item_id], groups.get(item_id, ("", ""))[1]
            for asset in item.assets:
                tiles.append(self._asset(asset, variant))
                files += 1
            for p in item.problems:
                tiles.append(self._problem(p, variant))
                kinds[p.kind] = kinds.get(p.kind, 0) + 1
                if p.kind != "unfinished":
                    self.n_problems += 1
                    if len(self.problems) < _PROBLEM_LIST_MAX:
                        self.problems.append(
                            {"anchor": anchor, "item": p.item, "step": p.step, "index": p.index,
                             "kind": p.kind, "reason": _clip(p.reason, 160)}
                        )  # fmt: skip
        bits = [f"{files} file{'s' if files != 1 else ''}"] + [f"{n} {k}" for k, n in sorted(kinds.items())]
        self.groups.append(
            {"anchor": anchor, "label": label, "count": " · ".join(bits), "tiles": tiles,
             "matrix": len(item_ids) > 1, "empty": files == 0}
        )  # fmt: skip

    def _asset(self, a: Asset, variant: str) -> dict[str, Any]:
        ext = os.path.splitext(a.path)[1].lower()
        kind = (
            "missing"
            if not a.exists
            else "img"
            if ext in _IMAGE_EXT
            else "video"
            if ext in _VIDEO_EXT
            else "other"
        )
        href = "/".join(_quote(part) for part in a.path.split("/"))
        prompt = as_text(a.request.get("prompt")) or ""
        request = scrub("request", dict(a.request))
        status = "done" if a.exists else "missing"
        self._seen(a.step, a.model or "—", status)
        facts = [
            ("item", a.item),
            ("variant", variant),
            ("step", f"{a.step} #{a.index}, output {a.n}"),
            ("model", a.model or "—"),
            ("seed", _seed(request)),
            ("job", a.job_id),
            ("size", _human(a.size)),
            ("sha256", a.sha256),
            ("file", a.path if a.exists else f"{a.path} (missing)"),
        ]
        self.data.append(
            {
                "item": a.item, "step": a.step, "n": a.n, "kind": kind, "href": href if a.exists else "",
                "path": a.path, "sha": a.sha256, "prompt": prompt, "request": request,
                "sidecar": _sidecar(a.record),
                "facts": [[k, str(v)] for k, v in facts if v not in (None, "")],
            }
        )  # fmt: skip
        return {
            "i": len(self.data) - 1, "problem": False, "item": a.item, "step": a.step, "n": a.n,
            "index": a.index, "variant": variant, "model": a.model or "—", "status": status,
            "sha": a.sha256 or "", "kind": kind, "href": href, "ext": ext.lstrip(".") or "file",
            "prompt": _clip(prompt, 200), "prompt_title": _clip(prompt, 2000),
        }  # fmt: skip

    def _problem(self, p: Problem, variant: str) -> dict[str, Any]:
        self._seen(p.step, "—", p.kind)
        facts = [("item", p.item), ("variant", variant), ("step", f"{p.step} #{p.index}"), ("phase", p.phase),
                 ("unit", p.key), ("job", p.job_id)]  # fmt: skip
        self.data.append(
            {"item": p.item, "step": p.step, "n": f"#{p.index}", "kind": "problem",
             "problem": f"{p.kind}: {p.reason}", "request": {}, "sidecar": None,
             "facts": [[k, str(v)] for k, v in facts if v not in (None, "")]}
        )  # fmt: skip
        return {
            "i": len(self.data) - 1, "problem": True, "item": p.item, "step": p.step, "index": p.index,
            "variant": variant, "model": "—", "status": p.kind, "reason": _clip(p.reason, 2000),
        }  # fmt: skip

    def _seen(self, step: str, model: str, status: str) -> None:
        self.filters["step"].add(step)
        self.filters["model"].add(model)
        self.filters["status"].add(status)

    def context(self) -> dict[str, Any]:
        order = {s: i for i, s in enumerate(_STATUS_ORDER)}
        return {
            "groups": self.groups,
            "problems": self.problems,
            "n_problems": self.n_problems,
            "problems_more": max(0, self.n_problems - len(self.problems)),
            "n_groups": len(self.groups),
            "n_assets": sum(1 for d in self.data if d["kind"] != "problem"),
            "total_size": _human(
                sum(as_int(d["sidecar"].get("bytes")) or 0 for d in self.data if d["sidecar"])
            ),
            "filters": {
                "step": sorted(self.filters["step"]),
                "model": sorted(self.filters["model"]),
                "status": sorted(self.filters["status"], key=lambda s: (order.get(s, 99), s)),
            },
        }


def _chips(facts: Facts, n_problems: int, shown: set[str]) -> list[dict[str, Any]]:
    chips: list[dict[str, Any]] = []
    if facts.counts is not None:
        for phase in Phase:
            count = facts.counts.get(str(phase), 0)
            bad = count and phase in (Phase.FAILED, Phase.UNKNOWN)
            chips.append({"cls": "chip bad" if bad else ("chip zero" if not count else "chip"),
                          "label": str(phase), "value": count})  # fmt: skip
    if facts.decisions:  # of the files shown: a regenerated file's predecessor no longer counts
        verdicts = [facts.decisions[s].verdict for s in shown if s in facts.decisions]
        chips.append({"cls": "chip", "label": "approved files", "value": verdicts.count("approve")})
        chips.append({"cls": "chip", "label": "rejected files", "value": verdicts.count("reject")})
    run = facts.run
    if run is not None:
        failures = run.get("failures")
        chips.append({"cls": "chip", "label": "last run", "value": _stamp(facts.run_name or "")})
        for label, value in (
            ("elapsed", _seconds(run.get("elapsedSeconds"))),
            ("submitted", as_int(run.get("submitted"))),
            ("rate-limited", as_int(run.get("rateLimited"))),
            ("downloaded", _human(as_int(run.get("downloadedBytes")))),
            ("failures", len(failures) if isinstance(failures, list) else None),
            ("exit code", as_int(run.get("exitCode"))),
            ("stopped", as_text(run.get("stopped"))),
        ):
            if value is None or value == "":
                continue
            bad = label in ("failures", "exit code") and value not in (0, "0")
            chips.append({"cls": "chip bad" if bad else "chip", "label": label, "value": value})
        chips.append({"cls": "chip", "label": "runs", "value": facts.runs})
    if n_problems:
        chips.append({"cls": "chip bad", "label": "problems", "value": n_problems})
    return chips


def _sidecar(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The sidecar to show: no request (shown apart), no remote URL; ``key`` (a hash) is no secret."""
    shown = {k: v if k == "key" else scrub(k, v) for k, v in record.items() if k not in _NOT_IN_SIDECAR}
    return shown or None


def _seed(request: Mapping[str, Any]) -> object:
    """The seed the request carried, if any (top level, or in an options group such as ``veo``)."""
    if "seed" in request:
        return request["seed"]
    options = request.get("options")
    if isinstance(options, Mapping):
        for group in options.values():
            if isinstance(group, Mapping) and "seed" in group:
                return group["seed"]
    return None


def _quote(part: str) -> str:
    return quote(part, safe="")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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

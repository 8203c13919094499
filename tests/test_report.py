"""The HTML gallery: built from a real run against the simulator, checked as text and in headless Chromium.

One module-scoped run (images with two outputs, an upscale, a video, a failing item with a blocked
upscale, a prompt carrying ``<script>``, an item id that needs URL-encoding) feeds every test; the
Chromium test opens ``report.html#check`` from disk, where the page's own script decodes every image
and writes the tally on ``<body>``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from pipeline import logs
from pipeline.engine.run import RunOptions, RunSummary
from pipeline.output.report import build_report
from pipeline.output.sidecar import read_index
from pipeline.simulator import Sandbox, SimConfig
from tests.conftest import TEST_KEY
from tests.test_run import FAST, QUICK, run, write_manifest
from tests.virtual_clock import VirtualClock

XSS = "<script>alert(1)</script> & \"quoted\" 'single'"
ODD_ID = "f odd+id @1"  # a legal item id whose folder name needs URL-encoding

ITEMS: list[dict[str, Any]] = [
    {"id": "a-pair", "prompt": "two shots of a lamp", "numImages": 2},
    {"id": "b-upscaled", "prompt": "a glass bottle", "upscale": True},
    {"id": "c-video", "video": {"prompt": "slow orbit around a chair"}},
    {"id": "d-broken", "prompt": "broken [[fail]]", "upscale": True},
    {"id": "e-xss", "prompt": XSS},
    {"id": ODD_ID, "prompt": "an odd folder name"},
]


class _Tags(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


@pytest.fixture(scope="module", name="built")
def _built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunSummary]:
    """One real run against the in-process simulator, then ``build_report`` on its folder."""
    tmp = tmp_path_factory.mktemp("report")
    out = tmp / "out"
    logs.configure(fmt="json", level="warning")

    async def go() -> RunSummary:
        config = SimConfig.profile("fast", keys=(TEST_KEY,), seed=3)
        async with Sandbox(config, clock=VirtualClock()) as sim:  # virtual time: no job waited for
            options = RunOptions(max_active=64, poll=FAST, retry=QUICK, seed=1)
            return await run(sim, write_manifest(tmp, ITEMS), out, options=options)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHOTOGPT_API_KEY", TEST_KEY)
        mp.delenv("PHOTOGPT_API_KEY_FILE", raising=False)
        summary = asyncio.run(go())
    assert summary.exit_code == 1  # d-broken fails, its upscale is blocked; the rest is done
    assert build_report(out) == out / "report.html"
    return out, summary


@pytest.fixture(name="out")
def _out(built: tuple[Path, RunSummary]) -> Path:
    return built[0]


def media_sources(text: str) -> list[tuple[str, str]]:
    return [
        (tag, attrs["src"] or "") for tag, attrs in tags(text) if tag in ("img", "video") and "src" in attrs
    ]


def page_data(text: str) -> dict[str, Any]:
    """The JSON block the gallery's script reads (every tile's lightbox details, the decisions)."""
    found = re.search(r'<script type="application/json" id="gallery-data">(.*?)</script>', text, re.S)
    assert found is not None
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def assert_local(out: Path, link: str) -> Path:
    """``link`` is a relative, query-free URL naming a regular file inside ``out``."""
    parts = urlsplit(link)
    assert not parts.scheme and not parts.netloc and not parts.query and not parts.fragment, link
    assert not link.startswith("/") and "\\" not in link, link
    target = out / unquote(parts.path)
    assert target.resolve().is_relative_to(out.resolve()), link
    assert target.is_file(), link
    return target


class TestContent:
    def test_every_asset_is_shown_with_a_relative_link_to_its_file(self, out: Path) -> None:
        """Each index record is one <img>/<video> whose relative, encoded src names the file."""
        text = (out / "report.html").read_text(encoding="utf-8")
        sources = media_sources(text)
        index = read_index(out / "index.jsonl")
        assert sorted(unquote(src) for _, src in sources) == sorted(r["path"] for r in index)
        for tag, src in sources:
            target = assert_local(out, src)
            assert (tag == "video") == (target.suffix == ".mp4")
        assert {tag for tag, _ in sources} == {"img", "video"}
        for tag, attrs in tags(text):
            if tag == "a" and not (attrs.get("href") or "").startswith("#"):
                assert_local(out, attrs["href"] or "")
        assert "f%20odd%2Bid%20%401/image-1.jpeg" in text  # encoded per segment, '/' kept
        images = [attrs for tag, attrs in tags(text) if tag == "img"]
        assert images and all(i.get("loading") == "lazy" and i.get("decoding") == "async" for i in images)
        videos = [attrs for tag, attrs in tags(text) if tag == "video"]
        assert all(v.get("preload") == "metadata" and "controls" in v for v in videos)

    def test_lightbox_data_carries_step_model_prompt_request_job_size_and_hash(self, out: Path) -> None:
        """Each tile's lightbox entry has the full request, the sidecar (no remote URL) and the facts."""
        text = (out / "report.html").read_text(encoding="utf-8")
        record = next(r for r in read_index(out / "index.jsonl") if r["item"] == "b-upscaled")
        entry = next(a for a in page_data(text)["assets"] if a["path"] == record["path"])
        assert entry["request"] == {
            "modelID": "gpt-image-2",
            "numImages": 1,
            "options": {"openai": {"outputFormat": "jpeg"}},
            "prompt": "a glass bottle",
        }
        facts = dict(entry["facts"])
        assert facts["job"] == record["jobId"] and facts["sha256"] == record["sha256"]
        assert facts["model"] == "gpt-image-2" and re.fullmatch(r"\d+ B|\d+\.\d kB", facts["size"])
        assert entry["sidecar"]["assetId"] == record["assetId"] and "url" not in entry["sidecar"]
        assert f'data-sha="{record["sha256"]}"' in text and "a glass bottle" in text
        assert text.index('id="i1"') < text.index('id="i2"')  # items in id order
        sections = re.findall(r'<section class="item" id="i\d+"><h2>([^<]+) ', text)
        assert sections == sorted(sections) and "a-pair" in sections[0]

    def test_failure_reason_is_in_a_red_box_of_its_item(
        self, out: Path, built: tuple[Path, RunSummary]
    ) -> None:
        """The failed job's reason and the blocked upscale show in d-broken's sheet, which has no file."""
        text = (out / "report.html").read_text(encoding="utf-8")
        section = text[text.index(">d-broken <") : text.index("</section>", text.index(">d-broken <"))]
        reason = next(f.reason for f in built[1].failures if f.item_id == "d-broken" and f.step == "image")
        assert "content policy" in reason
        boxes = re.findall(r'<div class="problem">(.*?)</div>', section)
        assert any("failed" in b and "content policy" in b for b in boxes), boxes
        assert any("blocked" in b and "upscale" in b for b in boxes), boxes
        assert "No outputs yet." in section
        assert "<img" not in section
        assert 'class="chip bad">failed <b>1</b>' in text  # the header's phase counts
        assert "d-broken</a>" in text  # the summary at the top links to the item

    def test_everything_from_sidecars_is_escaped_and_nothing_leaks(self, out: Path) -> None:
        """A prompt with <script> stays text; no remote URL, query string or key is written."""
        text = (out / "report.html").read_text(encoding="utf-8")
        assert "<script>alert" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;quoted&#34; &#39;single&#39;" in text
        assert text.count("<script") == 2  # the page's own script and its JSON data, nothing else
        assert text.count("<script>") == 1 and text.count('<script type="application/json"') == 1
        assert any(a.get("prompt") == XSS for a in page_data(text)["assets"])  # intact once parsed
        assert "://" not in text and TEST_KEY not in text
        assert "127.0.0.1" not in text
        assert "Content-Security-Policy" in text

    def test_rebuild_is_atomic_and_works_without_index_or_state(self, out: Path, tmp_path: Path) -> None:
        """Without index.jsonl the sidecars are scanned; without the state the files still show."""
        copy = tmp_path / "copy"
        shutil.copytree(out, copy)
        expected = media_sources((out / "report.html").read_text(encoding="utf-8"))
        (copy / "index.jsonl").unlink()
        build_report(copy)
        assert sorted(media_sources((copy / "report.html").read_text(encoding="utf-8"))) == sorted(expected)
        shutil.rmtree(copy / ".state")
        build_report(copy, title="No <state> here")
        text = (copy / "report.html").read_text(encoding="utf-8")
        assert sorted(media_sources(text)) == sorted(expected)
        assert "<title>No &lt;state&gt; here</title>" in text and "no state file" in text
        assert [p.name for p in copy.iterdir() if p.name.endswith(".tmp")] == []


class TestHostileAndLarge:
    def test_bad_paths_urls_and_secret_fields_never_reach_the_page(self, tmp_path: Path) -> None:
        """Paths leaving the folder are dropped; URLs lose their query; secret-looking fields are masked."""
        (tmp_path / "ok").mkdir()
        (tmp_path / "ok" / "image-1.png").write_bytes(b"\x89PNG")
        base = {
            "item": "ok",
            "step": "image",
            "index": 1,
            "n": 1,
            "key": "k",
            "bytes": 4,
            "sha256": "ab" * 32,
        }
        request = {
            "prompt": "p",
            "referenceImageURLs": ["https://cdn.example/ref.png?X-Amz-Signature=deadbeef&token=1"],
            "apiKey": "sk-should-not-show",
        }
        records = [
            {**base, "path": "ok/image-1.png", "request": request, "url": "https://x.example/a?sig=1"},
            *(
                {**base, "path": bad}
                for bad in ("../escape.png", "/etc/passwd", ".state/state.db", "a//b.png")
            ),
        ]
        (tmp_path / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        text = build_report(tmp_path).read_text(encoding="utf-8")
        assert [src for _, src in media_sources(text)] == ["ok/image-1.png"]
        request_shown = page_data(text)["assets"][0]["request"]
        assert request_shown["referenceImageURLs"] == ["https://cdn.example/ref.png"]
        assert request_shown["apiKey"] == "***"
        for leak in ("deadbeef", "sig=1", "sk-should-not-show", "x.example", "passwd", "escape", "state.db"):
            assert leak not in text, leak

    def test_thousands_of_assets_build_quickly(self, tmp_path: Path) -> None:
        """5,000 index records (files absent: shown as missing) render in well under a second or two of CPU,
        as lazily loaded tiles in one box per item (no full-width row per item)."""
        records = [
            {
                "item": f"sku-{i // 4:05d}",
                "step": "image",
                "index": 1,
                "n": i % 4 + 1,
                "key": f"{i:032x}",
                "path": f"sku-{i // 4:05d}/image-{i % 4 + 1}.jpeg",
                "request": {"prompt": f"product {i} <b>", "modelID": "gpt-image-2", "options": {"q": "high"}},
                "jobId": f"job-{i}",
                "bytes": 1000 + i,
                "sha256": f"{i:064x}",
            }
            for i in range(5000)
        ]
        (tmp_path / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        started = time.process_time()  # CPU time: other processes on a busy machine do not count
        text = build_report(tmp_path).read_text(encoding="utf-8")
        assert time.process_time() - started < 3.0
        assert text.count('class="thumb missing"') == 5000
        assert text.count('<section class="item"') == 1250

    def test_missing_folder_is_an_error(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            build_report(tmp_path / "nope")


@pytest.fixture(name="chromium")
def _chromium() -> Iterator[str]:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI: .ci/run must install it (apt-get install chromium)")
        pytest.skip("chromium not installed: apt-get install chromium")
    yield found


def test_every_image_decodes_in_headless_chromium(chromium: str, out: Path, tmp_path: Path) -> None:
    """Opened from disk as report.html#check, the page loads and decodes every <img> and reads each
    video's metadata; the tally on <body> must say all of them, and the count must match the file's."""
    text = (out / "report.html").read_text(encoding="utf-8")
    images = [src for tag, src in media_sources(text) if tag == "img"]
    videos = [src for tag, src in media_sources(text) if tag == "video"]
    assert images and videos
    url = (out / "report.html").resolve().as_uri() + "#check"
    # Playwright waits for the tally itself: chromium's --virtual-time-budget with --dump-dom
    # dumped the page before the decodes finished on a busy machine (media work runs on real time).
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector('body[data-check="done"]', state="attached", timeout=60_000)
            body_tag = page.evaluate(
                "() => '<body' + Array.from(document.body.attributes)"
                ".map(a => ` ${a.name}=\"${a.value}\"`).join('') + '>'"
            )
        finally:
            browser.close()
    body = re.search(r"<body([^>]*)>", body_tag)
    assert body is not None
    tally = dict(re.findall(r'data-([a-z-]+)="(\d+|done)"', body.group(1)))
    assert tally.get("check") == "done", f"the check script did not finish: {body.group(0)}"
    assert tally["images-total"] == str(len(images))
    assert tally["images-broken"] == "0"
    assert tally["images-loaded"] == str(len(images))
    assert tally["videos-ready"] == tally["videos-total"] == str(len(videos))

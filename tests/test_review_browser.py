"""Acceptance: the review loop in a real browser, then a regeneration that pays for the rejects only.

The demo manifest runs against a sandbox process; ``review`` serves its gallery; Playwright drives
the machine's Chromium (Debian's ``chromium``, never a downloaded browser) to approve one asset
and reject two, with the keyboard and with the mouse; a reload shows the decisions kept. Then
``run --regenerate-rejected`` must send exactly the two rejected generations plus the upscale
made from the rejected image, which the simulator's ledger proves. A screenshot of the gallery
is saved in the test's temp folder (the CI artefact) and its path is printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CRASH_KEY as KEY
from tests.conftest import sim_request

DEMO = Path(__file__).resolve().parent.parent / "manifests" / "demo.yaml"

pytestmark = pytest.mark.slow


def _chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is missing in CI: .ci/run must install it (apt-get install chromium)")
    pytest.skip("chromium not installed: apt-get install chromium")


def _env(origin: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOGPT_")}
    env.update(PHOTOGPT_API_KEY=KEY, PHOTOGPT_BASE_URL=f"{origin}/api")
    return env


def _cli(origin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "pipeline", *args],
        env=_env(origin),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@contextmanager
def _serving(origin: str, out: Path) -> Iterator[str]:
    """``review`` serving ``out`` as a process; yields the URL it printed; it must exit 0 on SIGTERM."""
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "pipeline", "review", str(DEMO), "--out", str(out)],
        env=_env(origin),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/\S+/)", line)
        assert found, f"review printed no URL: {line!r}"
        yield found.group(1)
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, err


def _run_demo(origin: str, out: Path) -> None:
    done = _cli(origin, "run", str(DEMO), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]


def _tile(page: Any, path: str) -> Any:
    return page.locator(f'.tile[data-i="{_index_of(page, path)}"]')


def _index_of(page: Any, path: str) -> int:
    index: int = page.evaluate(
        "p => JSON.parse(document.getElementById('gallery-data').textContent)"
        ".assets.findIndex(a => a.path === p)",
        path,
    )
    assert index >= 0, path
    return index


def _ledger(origin: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = sim_request(origin, "GET", "/_sim/ledger")
    return entries


def test_review_in_chromium_then_regenerate_only_the_rejects(sim_url: str, tmp_path: Path) -> None:
    chromium = _chromium()
    out = tmp_path / "demo"
    _run_demo(sim_url, out)
    with _serving(sim_url, out) as url:
        _review_in_browser(chromium, url, tmp_path)
    listed = json.loads(_cli(sim_url, "review", str(DEMO), "--out", str(out), "--json").stdout)
    notes = {d["path"]: d["note"] for d in listed["decisions"] if d["verdict"] == "reject"}
    assert notes == {REJECT_KEY: "bottle cap is cut off", REJECT_MOUSE: None}
    exported = _approve_in_static_page(chromium, out, tmp_path)
    imported = _cli(sim_url, "review", str(DEMO), "--out", str(out), "--import", str(exported))
    assert imported.returncode == 0, imported.stderr
    old_video = (out / "waves" / "video-1.mp4").read_bytes()
    before = _ledger(sim_url)

    regen = _cli(sim_url, "run", str(DEMO), "--out", str(out), "--regenerate-rejected", "--no-progress")
    assert regen.returncode == 0, regen.stderr[-3000:]
    assert "regenerating 3 unit(s): 2 rejected + 1 chain child(ren)" in regen.stderr
    new = _ledger(sim_url)[len(before) :]
    assert sorted(j["kind"] for j in new) == ["image", "upscale", "video"], new  # 2 generations + 1 child
    old_hashes = {j["kind"]: j["bodyHash"] for j in before}
    video = next(j for j in new if j["kind"] == "video")
    assert video["bodyHash"] != old_hashes["video"]  # Veo takes a seed: a new one was sent
    side = json.loads((out / "waves" / "video-1.json").read_text())
    assert isinstance(side["request"]["options"]["veo"]["seed"], int)
    assert (out / "waves" / "video-1.mp4").read_bytes() != old_video
    kept = sorted(p.relative_to(out / ".rejected").as_posix() for p in (out / ".rejected").rglob("*.*"))
    assert [re.sub(r"\.[0-9a-f]{12}\.", ".*.", k) for k in kept] == [
        "perfume/image-1.*.jpeg", "perfume/image-1.*.json", "perfume/upscale-1.*.jpeg",
        "perfume/upscale-1.*.json", "waves/video-1.*.json", "waves/video-1.*.mp4",
    ]  # fmt: skip
    plain = _cli(sim_url, "run", str(DEMO), "--out", str(out), "--no-progress")
    assert plain.returncode == 0
    assert len(_ledger(sim_url)) == len(before) + 3  # a plain rerun pays nothing more
    status = json.loads(_cli(sim_url, "status", str(DEMO), "--out", str(out), "--json").stdout)
    assert status["review"] == {"approved": 2, "rejected": 0, "regenerated": 3}
    record = json.loads(sorted((out / "runs").glob("*.json"))[-1].read_text())
    assert record["review"]["regenerated"] == 3


APPROVE, REJECT_KEY, REJECT_MOUSE = "headphones-1x1/image-1.jpeg", "perfume/image-1.jpeg", "waves/video-1.mp4"


def _review_in_browser(chromium: str, url: str, tmp_path: Path) -> None:
    """Approve one and reject two (keyboard and mouse), reload, see them kept; screenshot the gallery."""
    from playwright.sync_api import sync_playwright

    approve, reject_key, reject_mouse = APPROVE, REJECT_KEY, REJECT_MOUSE
    with pytest.raises(urllib.error.HTTPError) as refused:  # no token, no page
        urllib.request.urlopen(url.rsplit("/", 2)[0] + "/", timeout=5)  # noqa: S310 - loopback
    assert refused.value.code == 403
    approve, reject_key, reject_mouse = (
        "headphones-1x1/image-1.jpeg",
        "perfume/image-1.jpeg",
        "waves/video-1.mp4",
    )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15000)
            page.goto(url)
            page.wait_for_selector("body[data-ready]")
            first = page.locator(".tile").first
            assert _index_of(page, approve) == 0  # groups in id order: headphones' two variants come first
            first.focus()
            page.keyboard.press("a")  # keyboard: approve the focused tile
            page.wait_for_selector('.tile[data-i="0"][data-decision="approve"]')
            for _ in range(_index_of(page, reject_key)):
                page.keyboard.press("ArrowRight")  # keyboard: walk to the perfume image
            page.keyboard.press("Enter")  # open it in the lightbox, which shows its request
            page.wait_for_selector("#lb:not([hidden])")
            assert "Cinematic product photo" in page.inner_text("#lb-prompt")
            assert '"modelID": "gpt-image-2"' in page.inner_text("#lb-request")
            page.fill("#lb-note", "bottle cap is cut off")
            page.click("#lb-request")  # leave the note field so the key goes to the page
            page.keyboard.press("r")
            page.wait_for_selector(f'{_sel(page, reject_key)}[data-decision="reject"]')
            page.keyboard.press("Escape")
            page.wait_for_selector("#lb", state="hidden")
            tile = _tile(page, reject_mouse)
            tile.hover()
            tile.locator("button.no").click()  # mouse: reject the video
            page.wait_for_selector(f'{_sel(page, reject_mouse)}[data-decision="reject"]')

            page.reload()  # the decisions come back from the state file
            page.wait_for_selector("body[data-ready]")
            decided = page.eval_on_selector_all(
                ".tile[data-decision=approve], .tile[data-decision=reject]",
                "ts => ts.map(t => [t.dataset.i, t.dataset.decision])",
            )
            expected = {
                str(_index_of(page, approve)): "approve",
                str(_index_of(page, reject_key)): "reject",
                str(_index_of(page, reject_mouse)): "reject",
            }
            assert dict(decided) == expected
            page.locator(".tile").first.focus()
            page.keyboard.press("ArrowDown")  # down: the nearest tile of the next row (waves, at 1280 px)
            focused = page.evaluate("document.activeElement.dataset.i")
            assert focused == str(_index_of(page, REJECT_MOUSE))
            page.select_option("#f-decision", "reject")  # the filter shows just the two rejects
            assert page.locator(".tile:not([hidden])").count() == 2
            page.select_option("#f-decision", "")
            shot = tmp_path / "gallery.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"gallery screenshot: {shot}")
        finally:
            browser.close()


def _approve_in_static_page(chromium: str, out: Path, tmp_path: Path) -> Path:
    """report.html from disk: a decision is kept in the browser and exported as a JSON file."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.set_default_timeout(15000)
            page.goto((out / "report.html").resolve().as_uri())
            page.wait_for_selector("body[data-ready]")
            _tile(page, "sneaker/image-1.jpeg").focus()
            page.keyboard.press("a")
            page.wait_for_selector(f'{_sel(page, "sneaker/image-1.jpeg")}[data-decision="approve"]')
            with page.expect_download() as download:
                page.click("#export")
            saved = tmp_path / "decisions.json"
            download.value.save_as(str(saved))
        finally:
            browser.close()
    entries = json.loads(saved.read_text())["decisions"]
    assert [(e["path"], e["verdict"]) for e in entries] == [("sneaker/image-1.jpeg", "approve")]
    return saved


def _sel(page: Any, path: str) -> str:
    return f'.tile[data-i="{_index_of(page, path)}"]'


def test_shell_decisions_undo_import_and_a_regeneration(sim_url: str, tmp_path: Path) -> None:
    """Scripts decide from the shell; undo clears; an exported file imports; only the reject is paid again."""
    out = tmp_path / "demo"
    _run_demo(sim_url, out)
    sha = json.loads((out / "mug" / "image-1.json").read_text())["sha256"]
    export = tmp_path / "decisions.json"
    export.write_text(json.dumps({"format": "photogpt-decisions", "version": 1, "decisions": [
        {"sha256": sha, "verdict": "reject", "note": "too dark", "at": "2020-01-01T00:00:00.000Z"},
    ]}))  # fmt: skip
    decided = _cli(
        sim_url,
        "review",
        str(DEMO),
        "--out",
        str(out),
        "--approve",
        "mug/image-1",
        "--reject",
        "perfume/image-1.jpeg",
        "sneaker/image-1",
        "--note",
        "off brand",
        "--undo",
        "sneaker/image-1.jpeg",
        "--import",
        str(export),
    )  # fmt: skip  (approvals, rejections, undos, then the import: in that order)
    assert decided.returncode == 0, decided.stderr
    listed = json.loads(_cli(sim_url, "review", str(DEMO), "--out", str(out), "--json").stdout)
    verdicts = {d["path"] or d["sha256"]: (d["verdict"], d["note"]) for d in listed["decisions"]}
    # the import is older than the shell's approval of the mug: the newest decision wins
    assert verdicts == {
        "mug/image-1.jpeg": ("approve", None),
        "perfume/image-1.jpeg": ("reject", "off brand"),
    }
    missing = _cli(sim_url, "review", str(DEMO), "--out", str(out), "--reject", "nope/image-9")
    assert missing.returncode == 2 and "nope/image-9" in missing.stderr

    before = _ledger(sim_url)
    regen = _cli(sim_url, "run", str(DEMO), "--out", str(out), "--regenerate-rejected", "--no-progress")
    assert regen.returncode == 0, regen.stderr[-3000:]
    new = _ledger(sim_url)[len(before) :]
    assert sorted(j["kind"] for j in new) == ["image", "upscale"], new  # perfume and its upscale only
    again = _cli(sim_url, "run", str(DEMO), "--out", str(out), "--regenerate-rejected", "--no-progress")
    assert again.returncode == 0 and "regenerating 0 unit(s)" in again.stderr
    assert len(_ledger(sim_url)) == len(before) + 2

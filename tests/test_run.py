"""The whole run against the simulator on 127.0.0.1: files, resume, faults, exit codes.

Each test writes a manifest, runs the real pipeline (client, scheduler, state,
downloader) against an in-process sandbox whose ledger says how many jobs were
created for each request body: the proof that nothing was paid for twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from pipeline import logs
from pipeline.clock import Clock, SystemClock
from pipeline.engine.poller import PollPolicy
from pipeline.engine.retry import RetryPolicy
from pipeline.engine.run import RunOptions, RunSummary
from pipeline.engine.wiring import RunRequest, execute
from pipeline.errors import LockedError, PipelineError
from pipeline.output.sidecar import file_sha256, read_index
from pipeline.simulator import Sandbox, SimConfig
from pipeline.state.lock import RunLock
from pipeline.state.sqlite import Phase, StateStore, open_readonly
from tests.conftest import TEST_KEY
from tests.virtual_clock import VirtualClock

FAST = PollPolicy.fast()
SUBMIT = "POST /api/images/generation"
#: Retries on a sub-second scale: the simulator's faults are short, and tests should be too.
QUICK = RetryPolicy(base_s=0.02, cap_s=0.25, max_attempts=200, deadline_s=60)


def options(**kw: Any) -> RunOptions:
    return RunOptions(**{"max_active": 64, "poll": FAST, "retry": QUICK, "seed": 1, **kw})


def write_manifest(tmp: Path, items: list[dict[str, Any]], **top: Any) -> Path:
    doc = {
        "version": 1,
        "name": "t",
        "defaults": {
            "image": {
                "modelID": "gpt-image-2",
                "numImages": 1,
                "options": {"openai": {"outputFormat": "jpeg"}},
            },
            "video": {"modelID": "veo-3.1", "options": {"veo": {"duration": 4}}},
        },
        "items": items,
        **top,
    }
    path = tmp / "manifest.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
    return path


def catalog(n: int, *, upscale_every: int = 4, video_every: int = 10) -> list[dict[str, Any]]:
    """``n`` items with distinct prompts; some upscaled, some animated."""
    items: list[dict[str, Any]] = []
    for i in range(n):
        item: dict[str, Any] = {"id": f"sku-{i:04d}", "prompt": f"product photo number {i}"}
        if i % upscale_every == 0:
            item["upscale"] = True
        if i % video_every == 0:
            item["video"] = {"prompt": f"slow orbit {i}"}
        items.append(item)
    return items


@pytest.fixture(name="sim")
async def _sim() -> AsyncIterator[Sandbox]:
    """A simulator (fast profile) on virtual time: :func:`run` drives the run on the same clock, so a
    run waits for no job in real time (jobs of up to a second; retries and pauses of seconds)."""
    async with Sandbox(SimConfig.profile("fast", keys=(TEST_KEY,), seed=3), clock=VirtualClock()) as sb:
        yield sb


@pytest.fixture(name="real_time_sim")
async def _real_time_sim() -> AsyncIterator[Sandbox]:
    """The same simulator on the system clock, for a test whose outcome needs requests to take time."""
    async with Sandbox(SimConfig.profile("fast", keys=(TEST_KEY,), seed=3)) as sb:
        yield sb


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTOGPT_API_KEY", TEST_KEY)
    monkeypatch.delenv("PHOTOGPT_API_KEY_FILE", raising=False)


async def run(sim: Sandbox, manifest: Path, out: Path, **kw: Any) -> RunSummary:
    """The whole run against ``sim``, on the simulator's clock: on virtual time, jobs that take seconds
    finish as soon as every task waits on the clock alone (no real sleep); otherwise on real time."""
    opts = kw.pop("options", options())
    request = RunRequest(manifest=manifest, out=out, base_url=sim.base_url, options=opts, **kw)
    clock = sim.clock
    ours: Clock = getattr(clock, "ours", clock)  # a server clock set off ours (test_sweep) offers ours
    if not isinstance(clock, VirtualClock):
        return await execute(request, clock=ours)
    async with clock.autojump():
        try:
            return await execute(request, clock=ours)
        except Exception as exc:  # raised below, not as the autojump task group's ExceptionGroup
            failure = exc
    raise failure


def assert_outputs_verify(out: Path) -> list[dict[str, Any]]:
    """Every asset in index.jsonl exists, matches its sidecar, and no partial file is left."""
    index = read_index(out / "index.jsonl")
    for record in index:
        asset = out / record["path"]
        side = json.loads(asset.with_suffix(".json").read_text())
        assert side["key"] == record["key"] and side["sha256"] == record["sha256"]
        assert file_sha256(asset) == side["sha256"]
        assert asset.stat().st_size == side["bytes"]
    leftovers = [p for p in out.rglob("*") if p.suffix in (".part", ".tmp") or ".tmp" in p.name]
    assert leftovers == []
    return index


def jobs_per_body(sim: Sandbox) -> dict[str, int]:
    return dict(sim.stats()["jobs_by_body"])


class TestHappyPath:
    async def test_two_hundred_units_complete_and_verify(self, sim: Sandbox, tmp_path: Path) -> None:
        """A 200-unit catalog with upscales and videos finishes; each file matches its sidecar."""
        manifest = write_manifest(tmp_path, catalog(150, upscale_every=4, video_every=12))
        out = tmp_path / "out"
        summary = await run(sim, manifest, out)
        assert summary.exit_code == 0, summary.failures
        total = summary.counts["done"]
        assert total >= 200
        assert summary.submitted == total
        index = assert_outputs_verify(out)
        assert len(index) == total  # numImages 1 everywhere: one asset per unit
        assert sim.stats()["jobs_created"] == total
        assert max(jobs_per_body(sim).values()) == 1

    async def test_rerun_of_a_finished_manifest_sends_no_request(self, sim: Sandbox, tmp_path: Path) -> None:
        """Done work whose files verify is skipped without a single HTTP request."""
        manifest = write_manifest(tmp_path, catalog(12))
        out = tmp_path / "out"
        await run(sim, manifest, out)
        before = sum(sim.stats()["requests"].values())
        again = await run(sim, manifest, out)
        assert again.exit_code == 0 and again.submitted == 0
        assert sum(sim.stats()["requests"].values()) == before

    async def test_a_deleted_file_is_downloaded_again_without_paying(
        self, sim: Sandbox, tmp_path: Path
    ) -> None:
        """A missing output is fetched again from the recorded job; no job is created."""
        manifest = write_manifest(tmp_path, catalog(3))
        out = tmp_path / "out"
        await run(sim, manifest, out)
        victim = next(out.glob("sku-0001/image-1.*[gf]"))
        victim.unlink()
        created = sim.stats()["jobs_created"]
        again = await run(sim, manifest, out)
        assert again.exit_code == 0 and victim.exists()
        assert sim.stats()["jobs_created"] == created

    async def test_published_but_unrecorded_file_is_adopted_not_fetched(
        self, sim: Sandbox, tmp_path: Path
    ) -> None:
        """A file on disk with its sidecar whose record was lost (S4) is verified and kept, not fetched."""
        manifest = write_manifest(tmp_path, catalog(3, upscale_every=99, video_every=99))
        out = tmp_path / "out"
        await run(sim, manifest, out)
        with open_readonly(out / ".state" / "state.db") as view:
            key = next(r.key for r in view.units() if r.item_id == "sku-0001" and r.step == "image")
        async with StateStore.open(out / ".state" / "state.db", clock=SystemClock(), run_id="t") as store:
            await store.reopen(key, [1])  # as if the run died between the rename and the record
        fetched = sim.stats()["requests"]
        again = await run(sim, manifest, out)
        assert again.exit_code == 0
        assert {k: v for k, v in sim.stats()["requests"].items() if "/files/" in k} == {
            k: v for k, v in fetched.items() if "/files/" in k
        }
        with open_readonly(out / ".state" / "state.db") as view:
            rec = next(r for r in view.units() if r.key == key)
        assert rec.phase == Phase.DONE
        [output] = rec.outputs
        assert output.sha256 == file_sha256(out / str(output.path))
        assert len([r for r in assert_outputs_verify(out) if r["key"] == key]) == 1  # indexed once

    async def test_asset_and_sidecar_names_are_fsynced_before_the_record(
        self, sim: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One directory fsync after both renames covers both names, and precedes the index line."""
        import pipeline.output.local

        seen: list[tuple[Path, set[str], int]] = []
        real = pipeline.output.local.fsync_dir
        out = tmp_path / "out"

        def fsync_dir(directory: Path) -> None:
            real(directory)
            indexed = len(read_index(out / "index.jsonl"))
            seen.append((directory, {p.name for p in directory.iterdir()}, indexed))

        monkeypatch.setattr(pipeline.output.local, "fsync_dir", fsync_dir)
        await run(sim, write_manifest(tmp_path, catalog(4, upscale_every=99, video_every=99)), out)
        for i, record in enumerate(assert_outputs_verify(out)):
            asset = out / record["path"]
            assert any(
                d == asset.parent and {asset.name, asset.with_suffix(".json").name} <= names and indexed <= i
                for d, names, indexed in seen
            ), record["path"]

    async def test_edited_prompt_is_new_work_and_old_output_is_kept(
        self, sim: Sandbox, tmp_path: Path
    ) -> None:
        """Changing a prompt makes new work; the old file is moved aside, never overwritten."""
        out = tmp_path / "out"
        await run(sim, write_manifest(tmp_path, [{"id": "a", "prompt": "first"}]), out)
        old = (out / "a" / "image-1.jpeg").read_bytes()
        summary = await run(sim, write_manifest(tmp_path, [{"id": "a", "prompt": "second"}]), out)
        assert summary.exit_code == 0 and summary.stale == 1
        assert (out / "a" / "image-1.jpeg").read_bytes() != old
        assert [p.read_bytes() for p in (out / ".stale").rglob("*.jpeg")] == [old]

    async def test_hls_videos_go_through_the_download_flow(self, sim: Sandbox, tmp_path: Path) -> None:
        """A playlist URL is never saved: create-download gives the MP4 that is stored."""
        sim.control(video_hls=True)
        out = tmp_path / "out"
        summary = await run(sim, write_manifest(tmp_path, [{"id": "v", "video": {"prompt": "waves"}}]), out)
        assert summary.exit_code == 0
        data = (out / "v" / "video-1.mp4").read_bytes()
        assert data[4:8] == b"ftyp"


class TestFaults:
    async def test_429_storm_on_submissions_slows_the_pool(self, sim: Sandbox, tmp_path: Path) -> None:
        """Twenty 429s in a row, on POST /images/generation only (no Retry-After): every one reaches
        the submit path, the active-job target shrinks, the run finishes and pays once per unit."""
        sim.control(fault_routes=[SUBMIT], next_n_429=20)
        items = catalog(6, upscale_every=99, video_every=99)
        summary = await run(sim, write_manifest(tmp_path, items), tmp_path / "out")
        assert summary.exit_code == 0, summary.failures
        stats = sim.stats()
        assert stats["sent_429"] == 20 and summary.rate_limited == 20  # all met by submissions
        assert stats["requests"][SUBMIT] == 6 + 20  # each refused POST sent again
        assert summary.active_cap is not None and summary.active_cap < 64  # the pool slowed down
        assert max(jobs_per_body(sim).values()) == 1

    async def test_an_unannounced_request_rate_limit_is_learned(self, sim: Sandbox, tmp_path: Path) -> None:
        """20 requests/s per key, never announced: the run learns it from refused GETs and paces
        itself under it (without the pacer this run draws ~120 429s; with it ~35, all early)."""
        sim.control(rps_limit=20.0, retry_after="seconds")
        items = [{"id": f"s{i:03d}", "prompt": f"product {i}"} for i in range(80)]
        summary = await run(sim, write_manifest(tmp_path, items), tmp_path / "out")
        assert summary.exit_code == 0, summary.failures
        assert sim.stats()["sent_429"] <= 60
        assert max(jobs_per_body(sim).values()) == 1
        assert summary.rate_limit_rps is not None and 15 <= summary.rate_limit_rps <= 25
        record = json.loads(sorted((tmp_path / "out" / "runs").glob("*.json"))[-1].read_text())
        assert record["learnedRateLimit"] == round(summary.rate_limit_rps, 2)

    async def test_hidden_active_cap_with_retry_after(self, sim: Sandbox, tmp_path: Path) -> None:
        """The server allows 4 active jobs; the client asked for 64: it adapts and finishes."""
        sim.control(max_active_jobs=4, retry_after="seconds")
        summary = await run(sim, write_manifest(tmp_path, catalog(12)), tmp_path / "out")
        assert summary.exit_code == 0
        assert max(sim.stats()["peak_active_jobs"].values()) <= 4
        assert summary.active_cap is not None and summary.active_cap <= 5
        assert summary.rate_limit_rps is None  # refused submissions alone prove no rate limit
        assert max(jobs_per_body(sim).values()) == 1

    async def test_5xx_burst_on_submissions_is_reconciled_not_resent(
        self, real_time_sim: Sandbox, tmp_path: Path
    ) -> None:
        """Ten 503s (nothing created) and three lost replies (job created, then 502), on
        POST /images/generation only: each 503 is sent again only after the job list showed nothing
        was created; each lost reply's job is adopted, never paid twice.

        On the system clock: on virtual time every request takes no time at all, and a lost reply
        resent before any job of ours was read leaves the other 503s ambiguous (the server's clock
        is not learned: their ±slack spans all hold its job) until they end ``unknown``."""
        sim = real_time_sim
        sim.control(fault_routes=[SUBMIT], next_n_5xx=10, next_n_lost=3)
        logs.configure(fmt="json", level="info")
        # 50 ms between POSTs: two lost replies sent in the same millisecond could not be told apart.
        with structlog.testing.capture_logs() as events:
            opts = options(submit_rate=20.0)
            items = catalog(10, upscale_every=99, video_every=99)
            summary = await run(sim, write_manifest(tmp_path, items), tmp_path / "out", options=opts)
        assert summary.exit_code == 0, summary.failures
        stats = sim.stats()
        assert stats["sent_5xx"] == 10 + 3
        # 10 first tries (503), 10 resends (3 of them lost replies, adopted and not sent again).
        assert stats["requests"][SUBMIT] == 10 + 10
        kinds = [e["event"] for e in events]
        assert kinds.count("submission_uncertain") == 13
        assert kinds.count("submission_resent") == 10  # decided from the job list, not blindly
        assert kinds.count("job_adopted") == 3
        assert kinds.index("submission_resent") > kinds.index("submission_uncertain")
        assert stats["jobs_created"] == summary.counts["done"]
        assert max(jobs_per_body(sim).values()) == 1

    async def test_truncated_downloads_resume(self, sim: Sandbox, tmp_path: Path) -> None:
        """Cut-off bodies are resumed or refetched until the file verifies."""
        sim.control(truncated_download_rate=0.4, file_size=200_000)
        out = tmp_path / "out"
        summary = await run(sim, write_manifest(tmp_path, catalog(10)), out)
        assert summary.exit_code == 0
        assert sim.stats()["truncated_downloads"] > 0
        assert_outputs_verify(out)

    async def test_failed_job_is_reported_and_blocks_its_chain(self, sim: Sandbox, tmp_path: Path) -> None:
        """A failed job is listed with the API's reason, its downstream steps do not run: exit 1."""
        items = [{"id": "ok", "prompt": "fine"}, {"id": "bad", "prompt": "broken [[fail]]", "upscale": True}]
        out = tmp_path / "out"
        summary = await run(sim, write_manifest(tmp_path, items), out)
        assert summary.exit_code == 1
        reasons = {(f.item_id, f.step): f.reason for f in summary.failures}
        assert reasons[("bad", "image")]
        assert "upstream" in reasons[("bad", "upscale")]
        assert ("ok", "image") not in reasons
        with open_readonly(out / ".state" / "state.db") as view:
            assert view.counts()[Phase.FAILED] == 1

    async def test_never_finishing_job_stays_submitted_for_the_next_run(
        self, sim: Sandbox, tmp_path: Path
    ) -> None:
        """A job past its deadline is not resubmitted: it stays submitted and a later run collects it."""
        sim.control(image_s=(3.0, 3.0))
        poll = PollPolicy(
            first_s={"image": 0.2}, min_interval_s=0.05, max_interval_s=0.2, deadline_s={"image": 0.5}
        )
        manifest = write_manifest(tmp_path, [{"id": "slow", "prompt": "takes long"}])
        out = tmp_path / "out"
        first = await run(sim, manifest, out, options=options(poll=poll))
        assert first.exit_code == 1
        assert first.failures[0].phase == "submitted"
        sim.control(image_s=(0.1, 0.1))
        second = await run(sim, manifest, out)
        assert second.exit_code == 0
        assert sim.stats()["jobs_created"] == 1

    async def test_out_of_credits_stops_submitting_and_exits_5(self, sim: Sandbox, tmp_path: Path) -> None:
        """An empty account stops new submissions at once; what was submitted is still downloaded."""
        sim.control(credits=5)
        out = tmp_path / "out"
        summary = await run(
            sim,
            write_manifest(tmp_path, catalog(20)),
            out,
            options=options(max_active=2),
        )
        assert summary.exit_code == 5 and summary.stopped == "quota"
        assert summary.counts["done"] == 5
        assert len(read_index(out / "index.jsonl")) == 5

    async def test_a_second_run_on_the_same_state_is_refused(self, sim: Sandbox, tmp_path: Path) -> None:
        """One run at a time per state file: the second names the holder and exits 4."""
        manifest = write_manifest(tmp_path, catalog(2))
        out = tmp_path / "out"
        state = out / ".state" / "state.db"
        state.parent.mkdir(parents=True)
        with RunLock(state), pytest.raises(LockedError) as info:
            await run(sim, manifest, out)
        assert info.value.exit_code == 4
        assert "pid" in str(info.value)


PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a5d1f0b30000000049454e44ae426082"
)


class TestProvisioning:
    async def test_local_reference_files_are_uploaded_once_by_content(
        self, sim: Sandbox, tmp_path: Path
    ) -> None:
        """Two items share one local reference file: one upload, reused by the rerun of an edited item."""
        (tmp_path / "refs").mkdir()
        (tmp_path / "refs" / "bag.png").write_bytes(PNG_1PX)
        items = [
            {"id": "a", "prompt": "bag on a table", "referenceImageURLs": ["refs/bag.png"]},
            {"id": "b", "prompt": "bag on a beach", "referenceImageURLs": ["refs/bag.png"]},
        ]
        out = tmp_path / "out"
        summary = await run(sim, write_manifest(tmp_path, items), out)
        assert summary.exit_code == 0, summary.failures
        assert sim.stats()["requests"].get("POST /api/images/upload", 0) == 1
        side = json.loads((out / "a" / "image-1.json").read_text())
        assert side["request"]["referenceImageURLs"][0].startswith("http://127.0.0.1")
        items[1]["prompt"] = "bag in the snow"
        await run(sim, write_manifest(tmp_path, items), out)
        assert sim.stats()["requests"].get("POST /api/images/upload", 0) == 1

    async def test_declared_model_is_trained_once_then_used(self, sim: Sandbox, tmp_path: Path) -> None:
        """`models:` creates the model, uploads 12 photos, trains it, waits for ready, then generates."""
        photos = tmp_path / "photos" / "ava"
        photos.mkdir(parents=True)
        for i in range(12):
            (photos / f"p{i:02d}.png").write_bytes(PNG_1PX + bytes([i]))
        models = {"ava": {"name": "Ava", "gender": "Female", "age": 30, "photos": "photos/ava/"}}
        items = [{"id": "portrait", "modelID": "@ava", "prompt": "studio portrait"}]
        out = tmp_path / "out"
        summary = await run(sim, write_manifest(tmp_path, items, models=models), out)
        assert summary.exit_code == 0, summary.failures
        requests = sim.stats()["requests"]
        assert requests.get("POST /api/models", 0) == 1
        assert requests.get("POST /api/images/upload", 0) == 12
        side = json.loads((out / "portrait" / "image-1.json").read_text())
        assert not side["request"]["modelID"].startswith("@")
        items.append({"id": "portrait-2", "modelID": "@ava", "prompt": "outdoor portrait"})
        again = await run(sim, write_manifest(tmp_path, items, models=models), out)
        assert again.exit_code == 0
        assert sim.stats()["requests"].get("POST /api/models", 0) == 1


class TestOutputFaults:
    async def test_full_disk_keeps_paid_work_and_a_rerun_only_downloads(
        self, sim: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ENOSPC while saving: the run stops submitting, says why, and the rerun downloads without paying."""
        import errno

        import pipeline.output.local
        from pipeline.errors import DownloadError

        def full(root: Any, part: Path, size: int, final: Path, *, sync: bool = True) -> Path:
            raise DownloadError(f"{final}: cannot publish: No space left on device") from OSError(
                errno.ENOSPC, "No space left on device"
            )

        manifest = write_manifest(tmp_path, catalog(6))
        out = tmp_path / "out"
        with monkeypatch.context() as patch:
            patch.setattr(pipeline.output.local, "replace_part", full)  # the local store's rename
            first = await run(sim, manifest, out, options=options(max_active=2))
        assert first.exit_code == 1 and first.stopped == "output_unwritable"
        assert any("No space left" in f.reason and "rerun" in f.reason for f in first.failures)
        with open_readonly(out / ".state" / "state.db") as view:
            assert view.counts()[Phase.FAILED] == 0  # never marked failed: --retry-failed would pay again
        created = sim.stats()["jobs_created"]
        second = await run(sim, manifest, out)
        assert second.exit_code == 0
        assert created <= 9 and sim.stats()["jobs_created"] == 9  # 6 images, 2 upscales, 1 video: once each
        assert max(jobs_per_body(sim).values()) == 1

    async def test_an_output_path_that_is_a_file_is_a_clear_error(self, sim: Sandbox, tmp_path: Path) -> None:
        """--out pointing at a file: a configuration error naming the path, before any request."""
        blocker = tmp_path / "taken"
        blocker.write_text("not a folder")
        before = sum(sim.stats()["requests"].values())
        with pytest.raises(PipelineError) as info:
            await run(sim, write_manifest(tmp_path, catalog(2)), blocker / "out")
        assert info.value.exit_code == 2 and "taken" in str(info.value)
        assert sum(sim.stats()["requests"].values()) == before

    async def test_expired_asset_url_is_refreshed_from_the_job_not_paid_again(
        self, sim: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A 403 on an asset URL: the job is read again for a fresh URL; no job is created twice."""
        from pipeline.output.downloader import Downloader

        sim.control(signed_urls=True)
        original = Downloader.fetch
        expired: list[str] = []

        async def expire_first(self: Downloader, url: str, part: Path) -> Any:
            if not expired:
                expired.append(url)
                sim.control(expire_urls=True)
            return await original(self, url, part)

        monkeypatch.setattr(Downloader, "fetch", expire_first)
        out = tmp_path / "out"
        summary = await run(sim, write_manifest(tmp_path, catalog(4)), out, options=options(max_active=1))
        assert summary.exit_code == 0, summary.failures
        assert sim.stats()["jobs_created"] == 6 and max(jobs_per_body(sim).values()) == 1
        assert_outputs_verify(out)

    async def test_outputs_gone_for_good_are_reported_not_looped_on(
        self, sim: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every URL expires before use: one refresh, then the unit is failed with a clear reason."""
        from pipeline.output.downloader import Downloader

        sim.control(signed_urls=True)
        original = Downloader.fetch

        async def always_expired(self: Downloader, url: str, part: Path) -> Any:
            sim.control(expire_urls=True)
            return await original(self, url, part)

        monkeypatch.setattr(Downloader, "fetch", always_expired)
        summary = await run(sim, write_manifest(tmp_path, [{"id": "x", "prompt": "gone"}]), tmp_path / "out")
        assert summary.exit_code == 1
        assert "gone" in summary.failures[0].reason
        assert sim.stats()["jobs_created"] == 1


async def test_a_run_record_leaves_a_young_temp_of_another_worker_alone(sim: Sandbox, tmp_path: Path) -> None:
    """Workers sharing a folder write their run records at about the same moment: a temp younger
    than a minute may be another worker's, mid-write; only an old one is a killed run's litter."""
    runs = tmp_path / "out" / "runs"
    runs.mkdir(parents=True)
    young, old = runs / ".20260101T000000Z.json.aaaa.tmp", runs / ".20250101T000000Z.json.bbbb.tmp"
    young.write_bytes(b"{")
    old.write_bytes(b"{")
    os.utime(old, (old.stat().st_atime - 3600, old.stat().st_mtime - 3600))
    summary = await run(sim, write_manifest(tmp_path, catalog(1)), tmp_path / "out")
    assert summary.exit_code == 0
    assert young.exists() and not old.exists()
    assert len(list(runs.glob("*.json"))) == 1

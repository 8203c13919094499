"""``export``: finished assets and sidecars copied out (folder or bucket), verified, resumable, skipping
what is there; ``--only approved`` reads the review decisions; ``--layout`` renames on the way."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from pipeline.cli.main import main
from pipeline.clock import SystemClock
from pipeline.output.sidecar import read_index
from pipeline.simulator import Sandbox, SimConfig
from pipeline.state.decisions import approved_sha256s
from pipeline.state.sqlite import StateStore
from tests.conftest import TEST_KEY
from tests.seaweed import S3Server, _s3_server  # noqa: F401 - the session fixture
from tests.test_run import catalog, run, write_manifest
from tests.virtual_clock import VirtualClock


@pytest.fixture(name="sim")
async def _sim() -> AsyncIterator[Sandbox]:
    """The simulator on virtual time: each test's run waits for no job in real time."""
    async with Sandbox(SimConfig.profile("fast", keys=(TEST_KEY,), seed=3), clock=VirtualClock()) as sb:
        yield sb


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("PHOTOGPT_API_KEY", TEST_KEY)
    monkeypatch.chdir(tmp_path)
    yield


async def cli(*argv: str) -> int:
    return await anyio.to_thread.run_sync(main, list(argv))


def assets_of(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every asset with a sidecar that vouches for it."""
    found: dict[str, str] = {}
    for side in folder.rglob("*.json"):
        if "runs" in side.parts or side.name.startswith(".") or ".state" in side.parts:
            continue
        data = json.loads(side.read_text())
        asset = folder / data["path"]
        assert hashlib.sha256(asset.read_bytes()).hexdigest() == data["sha256"]
        found[data["path"]] = data["sha256"]
    return found


async def test_export_to_a_folder_is_verified_and_a_second_export_copies_nothing(
    sim: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path, catalog(4, video_every=99))
    out, dest = tmp_path / "out", tmp_path / "shop"
    await run(sim, manifest, out)
    source = {r["path"]: r["sha256"] for r in read_index(out / "index.jsonl")}
    assert await cli("export", str(manifest), "--out", str(out), "--to", str(dest)) == 0
    assert assets_of(dest) == source and f"{len(source)} copied" in capsys.readouterr().out
    assert await cli("export", str(manifest), "--out", str(out), "--to", str(dest)) == 0
    assert "0 copied" in capsys.readouterr().out
    victim = next(iter(sorted(source)))
    (dest / victim).with_suffix(".json").unlink()  # as if killed between the asset and its sidecar
    assert await cli("export", str(manifest), "--out", str(out), "--to", str(dest)) == 0
    assert assets_of(dest) == source


async def test_only_approved_exports_what_the_review_approved(sim: Sandbox, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, catalog(3, upscale_every=99, video_every=99))
    out, dest = tmp_path / "out", tmp_path / "approved"
    await run(sim, manifest, out)
    state = out / ".state" / "state.db"
    assert approved_sha256s(state) == frozenset()  # no decision yet: nothing is approved
    assert await cli("export", str(manifest), "--out", str(out), "--to", str(dest), "--only", "approved") == 0
    assert assets_of(dest) == {}
    first, second, *_ = sorted(read_index(out / "index.jsonl"), key=lambda r: r["path"])
    async with StateStore.open(state, clock=SystemClock()) as store:  # what `review` writes
        await store.record_decision(first["sha256"], "approve", path=first["path"])
        await store.record_decision(second["sha256"], "reject", path=second["path"])
    assert await cli("export", str(manifest), "--out", str(out), "--to", str(dest), "--only", "approved") == 0
    assert assets_of(dest) == {first["path"]: first["sha256"]}


async def test_layout_renames_and_a_template_that_could_fold_names_is_refused(
    sim: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path, catalog(2, upscale_every=99, video_every=99))
    out = tmp_path / "out"
    await run(sim, manifest, out)
    flat = tmp_path / "flat"
    layout = "{step}/{item}-{index}-{n}.{ext}"
    assert await cli("export", str(manifest), "--out", str(out), "--to", str(flat), "--layout", layout) == 0
    assert {"image/sku-0000-1-1.jpeg", "image/sku-0001-1-1.jpeg", "upscale/sku-0000-1-1.jpeg"} <= set(
        assets_of(flat)
    )
    code = await cli(
        "export",
        str(manifest),
        "--out",
        str(out),
        "--to",
        str(tmp_path / "x"),
        "--layout",
        "{n}-{step}.{ext}",
    )
    assert code == 2 and "needs {n}, and {item} and {step}" in capsys.readouterr().err


async def test_export_between_a_bucket_and_a_folder_both_ways(
    sim: Sandbox, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    manifest = write_manifest(tmp_path, catalog(3, video_every=99))
    out = tmp_path / "out"
    await run(sim, manifest, out)
    source = {r["path"]: r["sha256"] for r in read_index(out / "index.jsonl")}
    url = f"s3://{s3_server.bucket}/{s3_server.new_prefix()}/export"
    assert await cli("export", str(manifest), "--out", str(out), "--to", url) == 0
    back = tmp_path / "back"
    assert await cli("export", str(manifest), "--out", url, "--to", str(back)) == 0
    assert assets_of(back) == source

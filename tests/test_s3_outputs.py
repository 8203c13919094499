"""Runs with ``--out s3://bucket/prefix`` against a real S3-compatible server (SeaweedFS on loopback).

A whole run lands in the bucket, verified; a rerun uploads nothing and asks the API nothing;
two writers of one asset leave one object; bytes with a wrong checksum are refused; a missing
bucket or refused credentials stop with exit 2 before anything is paid; the report's links
work from the bucket; a SIGKILL mid multipart upload leaves no upload behind after the resume;
the secret key shows up nowhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline import logs
from pipeline.cli.main import main
from pipeline.engine.run import RunSummary
from pipeline.engine.wiring import RunRequest, execute
from pipeline.errors import IntegrityError, OutputUnavailableError, PipelineError
from pipeline.output.s3 import S3OutputStore
from pipeline.output.store import PutOutcome
from pipeline.simulator import Sandbox, SimConfig
from tests.conftest import CRASH_KEY, TEST_KEY, sim_request
from tests.seaweed import SECRET_KEY, S3Server, _s3_server  # noqa: F401 - the session fixture
from tests.test_run import catalog, options, write_manifest

PNG = b"\x89PNG\r\n\x1a\n" + b"png body " * 500


@pytest.fixture(name="sim")
async def _sim() -> AsyncIterator[Sandbox]:
    async with Sandbox(SimConfig.profile("fast", keys=(TEST_KEY,), seed=3)) as sb:
        yield sb


@pytest.fixture(name="s3")
def _s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3Server]:
    """The AWS variables set for the server; the API key set; the working folder a temp one."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PHOTOGPT_API_KEY", TEST_KEY)
    monkeypatch.delenv("PHOTOGPT_API_KEY_FILE", raising=False)
    monkeypatch.chdir(tmp_path)  # the local state of s3:// outputs goes to ./.photogpt-state
    yield s3_server


async def run_s3(sim: Sandbox, manifest: Path, url: str) -> RunSummary:
    return await execute(RunRequest(manifest=manifest, out=url, base_url=sim.base_url, options=options()))


def objects(s3: S3Server, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    return {
        key[len(prefix) + 1 :]: client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        for key in s3.keys(s3.bucket, prefix + "/")
    }


def assert_bucket_verifies(found: dict[str, bytes]) -> list[dict[str, Any]]:
    """Every sidecar's asset is there with its sha256; every asset has its sidecar."""
    sidecars = [
        json.loads(data)
        for key, data in found.items()
        if key.endswith(".json") and not key.startswith("runs/")
    ]
    for side in sidecars:
        assert hashlib.sha256(found[side["path"]]).hexdigest() == side["sha256"]
        assert len(found[side["path"]]) == side["bytes"]
    assets = [k for k in found if k.endswith((".png", ".jpeg", ".webp", ".mp4"))]
    assert sorted(assets) == sorted(s["path"] for s in sidecars)
    return sidecars


async def test_a_whole_run_lands_in_the_bucket_and_a_rerun_uploads_nothing(
    sim: Sandbox, s3: S3Server, tmp_path: Path
) -> None:
    prefix = s3.new_prefix()
    url = f"s3://{s3.bucket}/{prefix}"
    manifest = write_manifest(tmp_path, catalog(6))
    summary = await run_s3(sim, manifest, url)
    assert summary.exit_code == 0
    found = objects(s3, prefix)
    assert len(assert_bucket_verifies(found)) == 6 + 2 + 1  # images, upscales, a video
    assert "report.html" in found and any(k.startswith("runs/") for k in found)
    assert s3.uploads(s3.bucket) == []
    home = Path(".photogpt-state", s3.bucket, prefix)
    assert (home / "state.db").is_file()
    assert [p for p in (home / "parts").rglob("*") if p.is_file()] == []  # every part was published

    assert await anyio.to_thread.run_sync(main, ["status", "--out", url]) == 0  # the local state

    requests = sim.stats()["requests"]
    again = await run_s3(sim, manifest, url)
    assert again.exit_code == 0 and again.submitted == 0 and again.downloaded_bytes == 0
    assert sim.stats()["requests"] == requests  # not a single API request
    after = objects(s3, prefix)
    assert {k: v for k, v in after.items() if not k.startswith("runs/")} == {
        k: v for k, v in found.items() if not k.startswith("runs/")
    }


async def test_the_reports_links_work_from_the_bucket(sim: Sandbox, s3: S3Server, tmp_path: Path) -> None:
    prefix = s3.new_prefix()
    await run_s3(sim, write_manifest(tmp_path, catalog(3, video_every=99)), f"s3://{s3.bucket}/{prefix}")
    assert await anyio.to_thread.run_sync(main, ["report", "--out", f"s3://{s3.bucket}/{prefix}"]) == 0
    found = objects(s3, prefix)
    page = found["report.html"].decode()
    links = set(re.findall(r'(?:href|src)="([^"#:]+)"', page))
    assets = {k for k in found if k.endswith((".png", ".jpeg"))}
    assert assets and assets <= links  # every asset shown, by a relative link
    assert all(link in found for link in links)  # every relative link resolves in the bucket
    head = s3.client().head_object(Bucket=s3.bucket, Key=f"{prefix}/report.html")
    assert head["ContentType"].startswith("text/html")


async def test_two_writers_publish_one_asset_exactly_once(s3: S3Server, tmp_path: Path) -> None:
    """If-None-Match: * decides the race: one creates, the other finds the same bytes (or a conflict)."""
    prefix = s3.new_prefix()
    stores = [S3OutputStore(s3.bucket, prefix, staging=tmp_path / f"w{i}") for i in range(2)]
    for store in stores:
        await store.open()  # both listed an empty prefix: neither knows of the other's object
    outcomes: list[PutOutcome | PipelineError] = []
    digest = hashlib.sha256(PNG).hexdigest()

    async def publish(store: S3OutputStore, data: bytes, sha: str) -> None:
        part = store.staging / "x.part"
        part.write_bytes(data)
        try:
            outcomes.append(await store.put_file("item/image-1.png", part, sha256=sha))
        except PipelineError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(publish, store, PNG, digest)
    assert sorted(str(o) for o in outcomes) == ["PutOutcome.ALREADY", "PutOutcome.CREATED"]
    other = PNG + b"other"
    outcomes.clear()
    await publish(stores[1], other, hashlib.sha256(other).hexdigest())
    assert "not overwritten" in str(outcomes[0])
    assert s3.keys(s3.bucket, prefix + "/") == [f"{prefix}/item/image-1.png"]
    assert objects(s3, prefix)["item/image-1.png"] == PNG
    for store in stores:
        await store.close()


async def test_the_server_refuses_bytes_whose_checksum_is_wrong(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The x-amz-checksum-sha256 we send is checked by the server: a wrong one stores nothing."""
    import pipeline.output.s3wire as s3_module

    prefix = s3.new_prefix()
    store = S3OutputStore(s3.bucket, prefix, staging=tmp_path, part_size=5 << 20)
    await store.open()
    wrong = s3_module.checksum(b"not these bytes")
    monkeypatch.setattr(s3_module, "b64", lambda _hex: wrong)
    monkeypatch.setattr(s3_module, "checksum", lambda _data: wrong)
    try:
        for size in (len(PNG), 6 << 20):  # a single PUT, and a multipart upload
            data = (PNG * (size // len(PNG) + 1))[:size]
            (tmp_path / "x.part").write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
            with pytest.raises(IntegrityError, match="checksum"):
                await store.put_file("item/image-1.png", tmp_path / "x.part", sha256=digest)
    finally:
        await store.close()
    assert s3.keys(s3.bucket, prefix + "/") == []
    assert [k for k in s3.uploads(s3.bucket) if k.startswith(prefix)] == []


@pytest.mark.parametrize("problem", ["missing bucket", "bad credentials"])
async def test_an_unusable_bucket_stops_with_exit_2_before_anything_is_paid(
    problem: str, sim: Sandbox, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    bucket = s3.bucket
    if problem == "missing bucket":
        bucket = "no-such-bucket-here"
    else:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-Qq42")
    manifest = write_manifest(tmp_path, catalog(2))
    argv = ["run", str(manifest), "--out", f"s3://{bucket}/p", "--base-url", sim.base_url, "--quiet"]
    code = await anyio.to_thread.run_sync(main, argv)  # main() runs its own event loop
    err = capsys.readouterr().err
    assert code == 2, err
    assert bucket in err and ("does not exist" in err or "refused" in err), err
    assert "wrong-secret-Qq42" not in err and SECRET_KEY not in err
    assert sim.stats()["jobs_created"] == 0 and sum(sim.stats()["requests"].values()) == 0


async def test_the_secret_key_is_nowhere(sim: Sandbox, s3: S3Server, tmp_path: Path) -> None:
    """Debug logs of a run, the run record, sidecars, the report and errors hold no AWS secret."""
    sink = io.StringIO()
    logs.configure(fmt="json", level="debug", stream=sink)
    prefix = s3.new_prefix()
    await run_s3(sim, write_manifest(tmp_path, catalog(2)), f"s3://{s3.bucket}/{prefix}")
    seen = [sink.getvalue(), *(v.decode(errors="replace") for v in objects(s3, prefix).values())]
    os.environ["AWS_SECRET_ACCESS_KEY"] = "another-secret-Zz17"
    try:
        store = S3OutputStore(s3.bucket, prefix, staging=tmp_path)
        with pytest.raises(OutputUnavailableError) as caught:
            await store.open()
        seen += [str(caught.value), repr(caught.value), "".join(traceback.format_exception(caught.value))]
        await store.close()
    finally:
        os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
    text = "\n".join(seen)
    assert "s3_" in text or "asset_downloaded" in text
    assert SECRET_KEY not in text and "another-secret-Zz17" not in text


@pytest.mark.slow
def test_a_kill_mid_multipart_upload_then_resume_leaves_no_upload(
    s3: S3Server, sim_url: str, tmp_path: Path
) -> None:
    """SIGKILL after a part is stored: the rerun aborts the orphan upload and publishes the file."""
    sim_request(sim_url, "POST", "/_sim/control", {"file_size": 9 << 20})  # over the 8 MiB part size
    prefix = s3.new_prefix()
    manifest = write_manifest(tmp_path, [{"id": "big", "prompt": "one large file"}])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOGPT_")}
    env.update(PHOTOGPT_API_KEY=CRASH_KEY, PHOTOGPT_BASE_URL=f"{sim_url}/api")
    command = [sys.executable, "-m", "pipeline", "run", str(manifest), "--out", f"s3://{s3.bucket}/{prefix}"]
    killed = subprocess.run(  # noqa: S603 - our own interpreter and module
        command, env={**env, "PHOTOGPT_PIPELINE_CRASH_AT": "mid_upload"}, capture_output=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert [k for k in s3.uploads(s3.bucket) if k.startswith(prefix)], "a multipart upload was under way"
    assert s3.keys(s3.bucket, prefix + "/") == []  # nothing half-written under a final key
    again = subprocess.run(command, env=env, capture_output=True, timeout=120)  # noqa: S603
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert [k for k in s3.uploads(s3.bucket) if k.startswith(prefix)] == []
    found = objects(s3, prefix)
    [side] = assert_bucket_verifies(found)
    assert side["bytes"] == 9 << 20
    stats = sim_request(sim_url, "GET", "/_sim/stats")
    assert stats["jobs_created"] == 1  # paid once


async def test_no_server_at_the_endpoint_is_a_clear_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong AWS_ENDPOINT_URL_S3: the bucket is named, no traceback of botocore's."""
    from tests.conftest import refused_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    store = S3OutputStore("some-bucket", "p", staging=tmp_path)
    with refused_port() as port, pytest.raises(OutputUnavailableError, match="some-bucket") as caught:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
        await store.open()
    await store.close()
    assert caught.value.exit_code == 2 and SECRET_KEY not in str(caught.value)

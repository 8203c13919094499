"""The API helper commands (models, images, videos, jobs) against the simulator on 127.0.0.1.

Handlers run in-process, parsed by the parser ``register()`` builds and dispatched the
way ``cli.main`` does; the simulator runs on the real clock with short timings.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import logs
from pipeline.api.client import ApiClient
from pipeline.api.config import ApiConfig, ApiKey
from pipeline.api.records import Job
from pipeline.cli.api_commands import register
from pipeline.errors import PipelineError
from pipeline.simulator import Sandbox, SimConfig
from tests.conftest import TEST_KEY

PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
IMAGE_BODY = {"modelID": "gpt-image-2", "prompt": "a silver perfume bottle", "numImages": 1}
VIDEO_BODY = {"modelID": "veo-3.1", "prompt": "waves at dusk", "options": {"veo": {"duration": 4}}}
LEAVES = {
    "models list", "models show", "models create", "models train", "models delete",
    "images upload", "images show", "images delete",
    "videos list", "videos show", "videos delete", "videos download",
    "jobs list", "jobs show",
}  # fmt: skip


class Cli:
    """Runs one command line in-process, like ``cli.main``: exit code, stdout, stderr."""

    def __init__(self, sim: Sandbox, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.sim, self.key_file, self.capsys = sim, key_file, capsys

    async def __call__(self, *argv: str, key_file: Path | None = None) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="photogpt-pipeline")
        table = register(parser.add_subparsers(dest="command", required=True))
        flags = ["--base-url", self.sim.base_url, "--key-file", str(key_file or self.key_file)]
        args = parser.parse_args([*argv, *flags])
        self.capsys.readouterr()
        try:
            code = int(await table[args.command](args))
        except PipelineError as exc:
            print(f"photogpt-pipeline: error: {logs.redact(str(exc))}", file=sys.stderr)
            code = exc.exit_code
        out, err = self.capsys.readouterr()
        assert TEST_KEY not in out + err
        return code, out, err

    async def json(self, *argv: str) -> Any:
        code, out, err = await self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


def _key_file(path: Path, key: str) -> Path:
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PHOTOGPT_API_KEY", "PHOTOGPT_API_KEY_FILE", "PHOTOGPT_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(name="sim")
async def _sim() -> AsyncIterator[Sandbox]:
    config = SimConfig.profile("fast", keys=(TEST_KEY,), seed=3, training_s=0.3, video_s=(0.05, 0.1))
    async with Sandbox(config, host="127.0.0.1", port=0) as sb:
        yield sb


@pytest.fixture(name="run")
def _run(sim: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(sim, _key_file(tmp_path / "key", TEST_KEY), capsys)


@pytest.fixture(name="api")
async def _api(sim: Sandbox) -> AsyncIterator[ApiClient]:
    async with ApiClient(ApiConfig(base_url=sim.base_url, api_key=ApiKey(TEST_KEY))) as client:
        yield client


async def _finish(api: ApiClient, job_id: str) -> Job:
    for _ in range(200):
        job = await api.get_job(job_id)
        if job.is_terminal:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never finished")


async def _trainable(api: ApiClient) -> str:
    model = await api.save_model(name="Bo")
    for i in range(12):
        await api.upload_image(model_id=model.id, image_type="modelInput", data=PNG, filename=f"{i}.png")
    return model.id


async def _settled(api: ApiClient, model_id: str) -> str:
    """Wait until a model is no longer training; its status."""
    for _ in range(200):
        status = (await api.get_model(model_id)).status
        if status != "training":
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"model {model_id} never finished training")


def test_register_contract() -> None:
    """Keys match the leaves' ``command``, handlers are coroutine functions, cli's flags are there."""
    parser = argparse.ArgumentParser()
    table = register(parser.add_subparsers(dest="command", required=True))
    assert set(table) == LEAVES  # two words each: no clash with cli's one-word commands
    assert all(inspect.iscoroutinefunction(h) for h in table.values())
    args = parser.parse_args(["models", "train", "m1", "--log-level", "debug"])
    assert (args.command, args.id, args.log_format, args.log_level) == ("models train", "m1", "auto", "debug")
    assert (args.poll_interval, args.timeout, args.no_wait, args.json) == (300.0, 2700.0, False, False)
    assert parser.parse_args(["jobs", "list", "--since", "1h30m"]).since.total_seconds() == 5400
    with pytest.raises(SystemExit):
        parser.parse_args(["jobs", "list", "--since", "yesterday"])


async def test_model_lifecycle_create_upload_train_delete(run: Cli, tmp_path: Path) -> None:
    """create → show → 12 uploads → train (waits for ready) → delete → show is NotFound (exit 1)."""
    model = await run.json("models", "create", "--name", "Ava", "--age", "30", "--eye-color", "brown")
    assert model["name"] == "Ava" and model["status"] == "new"
    code, out, _ = await run("models", "show", model["id"])
    assert code == 0 and model["id"] in out and "status" in out
    for i in range(12):
        photo = tmp_path / f"p{i}.png"
        photo.write_bytes(PNG)
        image = await run.json("images", "upload", str(photo), "--type", "modelInput", "--model", model["id"])
        assert image["model_id"] == model["id"] and image["type"] == "modelInput"
    trained = await run.json("models", "train", model["id"], "--poll-interval", "0.05", "--timeout", "10")
    assert trained["status"] == "ready"
    assert model["id"] in {m["id"] for m in await run.json("models", "list")}
    code, out, _ = await run("models", "list")
    assert out.split()[:4] == ["id", "status", "name", "created"] and model["id"] in out
    assert await run.json("models", "delete", model["id"]) == {"id": model["id"], "deleted": True}
    code, out, err = await run("models", "show", model["id"])
    assert code == 1 and not out and "HTTP 404" in err


async def test_train_timeout_and_failure_exit_1(run: Cli, api: ApiClient, sim: Sandbox) -> None:
    """A timeout says training goes on server-side; --no-wait returns at once; a failed model exits 1."""
    slow = await _trainable(api)
    code, out, err = await run("models", "train", slow, "--timeout", "0")
    assert code == 1 and "continues server-side" in err and "training" in out
    await _settled(api, slow)
    sim.control(training_fails=True)
    failing = await _trainable(api)
    model = await run.json("models", "train", failing, "--no-wait")
    assert model["status"] == "training"
    assert await _settled(api, failing) == "failed"
    code, _, err = await run("models", "train", await _trainable(api), "--poll-interval", "0.05")
    assert code == 1 and "failed" in err
    code, _, _ = await run("models", "train", slow, "--poll-interval", "-1")
    assert code == 2


async def test_images_upload_show_delete(run: Cli, tmp_path: Path) -> None:
    """A reference image without a model: upload, show (JSON and text), delete, then 404."""
    photo = tmp_path / "ref.png"
    photo.write_bytes(PNG)
    image = await run.json("images", "upload", str(photo), "--type", "auxiliaryType")
    assert image["type"] == "auxiliaryType" and image["model_id"] is None
    assert (await run.json("images", "show", image["id"]))["id"] == image["id"]
    code, out, _ = await run("images", "show", image["id"])
    assert code == 0 and out.splitlines()[0].split() == ["id", image["id"]]
    code, out, _ = await run("images", "delete", image["id"])
    assert code == 0 and out.strip() == f"deleted image {image['id']}"
    assert (await run("images", "show", image["id"]))[0] == 1
    assert (await run("images", "upload", str(tmp_path / "missing.png"), "--type", "auxiliaryType"))[0] == 2


@pytest.mark.parametrize("hls", [False, True], ids=["mp4", "hls"])
async def test_videos_list_show_download_delete(
    run: Cli, api: ApiClient, sim: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hls: bool
) -> None:
    """A finished video is listed and shown; download writes a verified MP4 atomically (HLS too)."""
    sim.control(video_hls=hls)
    job = await _finish(api, (await api.generate_videos(VIDEO_BODY)).job_id)
    video_id = job.videos[0].id
    assert job.videos[0].url.endswith(".m3u8" if hls else ".mp4")
    page = await run.json("videos", "list", "--page-size", "5")
    assert page["page_size"] == 5 and video_id in {v["id"] for v in page["videos"]}
    code, out, _ = await run("videos", "list")
    assert out.split()[:4] == ["id", "job", "model", "created"] and video_id in out
    assert (await run.json("videos", "show", video_id))["job_id"] == job.job_id
    target = tmp_path / "out" / "clip.mp4"
    result = await run.json("videos", "download", video_id, "--out", str(target))
    data = target.read_bytes()
    assert data[4:8] == b"ftyp" and result["bytes"] == len(data) and result["path"] == str(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["clip.mp4"]  # no .part left behind
    monkeypatch.chdir(tmp_path)
    code, out, _ = await run("videos", "download", video_id)
    assert code == 0 and (tmp_path / f"{video_id}.mp4").read_bytes() == data
    assert (await run("videos", "delete", video_id))[0] == 0
    assert (await run("videos", "show", video_id))[0] == 1


async def test_jobs_list_and_show(run: Cli, api: ApiClient) -> None:
    """Jobs created through the API are listed (one page or all, with --since) and shown."""
    made = [(await api.generate_images(IMAGE_BODY)).job_id for _ in range(3)]
    for job_id in made:
        await _finish(api, job_id)
    listed = await run.json("jobs", "list")
    assert set(made) <= {j["job_id"] for j in listed["jobs"]}
    everything = await run.json("jobs", "list", "--since", "1h", "--all-pages")
    assert set(made) <= {j["job_id"] for j in everything["jobs"]} and everything["next_page_token"] is None
    code, out, _ = await run("jobs", "list", "--since", "90m")
    assert code == 0 and out.split()[:4] == ["id", "status", "created", "error"] and made[0] in out
    shown = await run.json("jobs", "show", made[0])
    assert shown["status"] == "success" and shown["images"][0]["url"].startswith("http://127.0.0.1")
    code, out, _ = await run("jobs", "show", made[0])
    assert code == 0 and "images[0].url" in out
    assert (await run("jobs", "list", "--since", "8d"))[0] == 2  # the API lists at most 7 days


async def test_wrong_key_exits_3_without_showing_it(run: Cli, tmp_path: Path) -> None:
    """A refused key is an AuthError (exit 3); neither key appears in the output."""
    wrong = "sk-wrong-1234-not-accepted"
    code, out, err = await run("jobs", "list", key_file=_key_file(tmp_path / "bad", wrong))
    assert code == 3 and wrong not in out + err


def test_through_the_real_cli(sandbox_process: str) -> None:
    """A real process lists models and jobs as JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOGPT_")}
    env |= {"PHOTOGPT_BASE_URL": sandbox_process, "PHOTOGPT_API_KEY": "sandbox"}
    for argv in (["models", "list", "--json"], ["jobs", "list", "--json"]):
        result = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "pipeline", *argv], capture_output=True, text=True, env=env, check=False
        )
        assert result.returncode == 0, result.stderr
        json.loads(result.stdout)
        assert "Bearer" not in result.stdout + result.stderr

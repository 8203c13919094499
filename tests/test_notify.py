"""``run --notify URL``: one message per run through Apprise, with counts and reasons and no secrets.

The receiving end is a real HTTP endpoint on 127.0.0.1 (an aiohttp server in its own
thread) addressed as Apprise's ``json://`` target; the runs are the real command against
a sandbox process holding a secret key.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pipeline import logs
from pipeline.cli.main import main
from pipeline.cli.notify import Outcome, check_urls, compose, notify, service
from pipeline.engine.run import Failure, RunSummary
from pipeline.errors import ConfigError
from tests.conftest import CRASH_KEY as KEY
from tests.conftest import refused_port, start_sandbox, stop_process

TOKEN = "tok-3e8f1c-webhook-secret"


@dataclass
class Receiver:
    """Messages POSTed to ``url`` (an Apprise ``json://`` URL whose path holds a token)."""

    url: str
    messages: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(name="receiver")
def _receiver() -> Iterator[Receiver]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_post("/hook/{token}", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner, int(runner.addresses[0][1])

    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield Receiver(f"json://127.0.0.1:{port}/hook/{TOKEN}", received)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _manifest(tmp: Path, n: int, fail: int | None = None) -> Path:
    items: list[dict[str, Any]] = [{"id": f"sku{i:03d}", "prompt": f"notify product {i}"} for i in range(n)]
    if fail is not None:
        items[fail]["prompt"] += " [[fail]]"
    path = tmp / "nightly.yaml"
    doc = {"version": 1, "defaults": {"image": {"modelID": "gpt-image-2"}}, "items": items}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(name="sandbox_url", scope="module")
def _sandbox_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One sandbox process for this file's runs (each run has its own output folder), accepting ``KEY``."""
    log = tmp_path_factory.mktemp("notify") / "sandbox.log"
    proc, origin = start_sandbox(["--key", KEY, "--seed", "3"], log)
    try:
        yield f"{origin}/api"
    finally:
        stop_process(proc)


@pytest.fixture(name="env")
def _env(sandbox_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("PHOTOGPT_API_KEY_FILE", raising=False)
    monkeypatch.setenv("PHOTOGPT_API_KEY", KEY)
    monkeypatch.setenv("PHOTOGPT_BASE_URL", sandbox_url)
    return sandbox_url


def _events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_a_failed_run_sends_exactly_one_message_with_counts_and_no_secrets(
    env: str, receiver: Receiver, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["run", str(_manifest(tmp_path, 3, fail=1)), "--out", str(out), "--log-format", "json"]
    assert main([*argv, "--notify", receiver.url]) == 1
    assert len(receiver.messages) == 1
    message = receiver.messages[0]
    assert message["title"] == "photogpt-pipeline: nightly.yaml needs attention (exit 1)"
    assert message["type"] == "failure"
    text = message["message"]
    assert "exit code 1 (finished, but some work failed or is left)" in text
    assert "Units: 2 done, 1 failed." in text and "Submitted 3;" in text and "credits spent" in text
    assert "Failures (1):\n- sku001 image#1 [failed]: generation failed" in text
    assert f"Report: {out.resolve() / 'report.html'}" in text and "Run record: " in text
    stderr = capsys.readouterr().err
    assert KEY not in json.dumps(message) and KEY not in stderr and TOKEN not in stderr
    assert [e["service"] for e in _events(stderr) if e["event"] == "notified"] == ["json"]


def test_success_is_silent_by_default_and_announced_with_always(
    env: str, receiver: Receiver, tmp_path: Path
) -> None:
    argv = ["run", str(_manifest(tmp_path, 2)), "--out", str(tmp_path / "out"), "--notify", receiver.url]
    assert main(argv) == 0
    assert receiver.messages == []
    assert main([*argv, "--notify-on", "always"]) == 0  # a no-op resume: still one message
    assert len(receiver.messages) == 1 and receiver.messages[0]["type"] == "success"
    assert "exit code 0 (everything asked for is done)" in receiver.messages[0]["message"]


def test_a_run_stopped_by_an_error_is_announced(
    env: str, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 3 (the key is refused) raises out of the run: the message still goes, without the key."""
    wrong = "sk-wrong-4b7d0e-not-accepted"
    monkeypatch.setenv("PHOTOGPT_API_KEY", wrong)
    argv = ["run", str(_manifest(tmp_path, 1)), "--out", str(tmp_path / "out"), "--notify", receiver.url]
    assert main(argv) == 3
    (message,) = receiver.messages
    assert (
        "exit code 3 (the API refused the key" in message["message"] and "Stopped by: " in message["message"]
    )
    assert wrong not in json.dumps(message)


def test_a_failing_endpoint_is_logged_by_service_and_keeps_the_exit_code(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "run",
        str(_manifest(tmp_path, 2, fail=0)),
        "--out",
        str(tmp_path / "out"),
        "--log-format",
        "json",
    ]
    with refused_port() as port:
        assert main([*argv, "--notify", f"json://127.0.0.1:{port}/hook/{TOKEN}"]) == 1
    stderr = capsys.readouterr().err
    failed = [e for e in _events(stderr) if e["event"] == "notify_failed"]
    assert len(failed) == 1 and failed[0]["service"] == "json" and failed[0]["reason"]
    assert TOKEN not in stderr and KEY not in stderr


def test_an_unusable_url_is_refused_before_any_work_naming_only_its_scheme() -> None:
    with pytest.raises(ConfigError) as caught:
        check_urls([f"nosuchservice://{TOKEN}@example.com"])
    assert "nosuchservice://" in str(caught.value) and TOKEN not in str(caught.value)
    assert service(f"slack://{TOKEN}/B0/C0") == "slack" and service("no scheme") == "?"


def test_the_message_lists_ten_failures_and_counts_the_rest() -> None:
    logs.register_secret("sk-leaked-into-a-reason-77")
    failures = tuple(
        Failure(
            key=f"k{i}",
            item_id=f"item{i:02d}",
            step="image",
            index=1,
            phase="failed",
            reason=f"bad {i} sk-leaked-into-a-reason-77",
        )
        for i in range(13)
    )
    summary = RunSummary(
        counts={"done": 7, "failed": 13},
        failures=failures,
        stopped="budget",
        submitted=20,
        rate_limited=0,
        downloaded_bytes=0,
        elapsed_s=61.0,
        stale=0,
        left=4,
        credits_spent=80.0,
    )
    title, body = compose(Outcome("catalog.yaml", summary.exit_code, summary))
    assert title == "photogpt-pipeline: catalog.yaml needs attention (exit 5)"
    assert "Units: 7 done, 13 failed." in body and "credits spent 80;" in body
    assert "Stopped early: the --budget was reached; 4 unit(s) left for a rerun." in body
    listed = [line for line in body.splitlines() if line.startswith("- ")]
    assert [line.split()[1] for line in listed] == [f"item{i:02d}" for i in range(10)]
    assert "… and 3 more (see the run record)" in body and "sk-leaked-into-a-reason-77" not in body


async def test_a_service_that_never_answers_is_given_up_on(capsys: pytest.CaptureFixture[str]) -> None:
    """Apprise sends synchronously: a hung endpoint costs at most the wait, then ``notify_failed``."""
    logs.configure(fmt="json", level="info")  # onto the captured stderr
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"json://127.0.0.1:{silent.getsockname()[1]}/hook/{TOKEN}"
        await notify([url], "failure", Outcome("m.yaml", 1), wait_s=0.3)
    failed = [e for e in _events(capsys.readouterr().err) if e["event"] == "notify_failed"]
    assert [(e["service"], e["reason"]) for e in failed] == [("json", "no answer within 0.3 s")]

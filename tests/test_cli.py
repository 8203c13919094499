"""The command line as a user runs it: real processes, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from pipeline.cli.main import main


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOGPT_")}
    full_env.update(env or {})
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def test_plain_http_to_a_remote_host_is_refused_with_exit_2() -> None:
    """A non-loopback http:// base URL is refused before any connection, exit 2."""
    result = _run(
        "ping", env={"PHOTOGPT_BASE_URL": "http://api.example.com/api", "PHOTOGPT_API_KEY": "k-123456"}
    )
    assert result.returncode == 2
    assert "https" in result.stderr
    assert "k-123456" not in result.stderr + result.stdout


def test_missing_key_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key anywhere: exit 2 and a message saying how to give one."""
    monkeypatch.delenv("PHOTOGPT_API_KEY", raising=False)
    monkeypatch.delenv("PHOTOGPT_API_KEY_FILE", raising=False)
    monkeypatch.setenv("PHOTOGPT_BASE_URL", "http://127.0.0.1:9/api")
    assert main(["ping"]) == 2


def test_ping_against_the_sandbox_process(sandbox_process: str) -> None:
    """`ping` succeeds with the sandbox's default key and fails with exit 3 on a wrong one."""
    ok = _run("ping", env={"PHOTOGPT_BASE_URL": sandbox_process, "PHOTOGPT_API_KEY": "sandbox"})
    assert ok.returncode == 0, ok.stderr
    assert "pong" in ok.stdout
    bad = _run("ping", env={"PHOTOGPT_BASE_URL": sandbox_process, "PHOTOGPT_API_KEY": "wrong-key-0000"})
    assert bad.returncode == 3
    assert "wrong-key-0000" not in bad.stderr + bad.stdout


def test_sandbox_on_port_0_prints_the_port_it_listens_on(sandbox_process: str) -> None:
    """``sandbox --port 0`` (how the fixture starts it): the printed URL names the port the system
    chose, and the sandbox answers there."""
    assert not sandbox_process.endswith(":0/api")
    with urllib.request.urlopen(sandbox_process.removesuffix("/api") + "/_sim/stats", timeout=10) as resp:  # noqa: S310
        assert json.load(resp)["jobs_created"] == 0


def test_seed_request_works_unchanged_against_the_sandbox(sandbox_process: str) -> None:
    """The issue's curl request, sent with the stdlib: job id, success, JPEG bytes; 401 without a key."""
    body = {
        "modelID": "gpt-image-2",
        "prompt": "A cinematic product photo of a silver perfume bottle",
        "aspectRatio": "1:1",
        "numImages": 1,
        "options": {"openai": {"imageSize": "1K", "outputFormat": "jpeg", "quality": "high"}},
    }
    headers = {"Authorization": "Bearer sandbox", "API-Version": "1", "Content-Type": "application/json"}
    req = urllib.request.Request(  # noqa: S310 - loopback
        f"{sandbox_process}/images/generation", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        job_id = json.load(resp)["result"]["jobId"]
    import time

    deadline = time.monotonic() + 30
    while True:
        poll = urllib.request.Request(f"{sandbox_process}/jobs/{job_id}", headers=headers)  # noqa: S310
        with urllib.request.urlopen(poll, timeout=10) as resp:  # noqa: S310
            job = json.load(resp)["result"]
        if job["status"] == "success":
            break
        assert job["status"] in {"created", "queued", "running"}
        assert time.monotonic() < deadline, "job never finished"
        time.sleep(0.1)
    with urllib.request.urlopen(job["images"][0]["url"], timeout=10) as resp:  # noqa: S310
        assert resp.read(3) == b"\xff\xd8\xff"
    anon = urllib.request.Request(  # noqa: S310
        f"{sandbox_process}/images/generation",
        data=json.dumps(body).encode(),
        headers={"API-Version": "1", "Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(anon, timeout=10)  # noqa: S310
    assert info.value.code == 401
    envelope = json.load(info.value)
    assert envelope["status"] == "NOK" and envelope["result"] is None


def test_module_and_console_script_agree() -> None:
    """`python -m pipeline --help` lists the commands."""
    result = _run("--help")
    assert result.returncode == 0
    assert "sandbox" in result.stdout and "ping" in result.stdout


def test_the_run_uses_uvloop_where_installed_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop is a speed-up only: opted out, or missing, the plain asyncio loop runs the command."""
    from pipeline.cli.main import _loop_factory

    uvloop = pytest.importorskip("uvloop")
    monkeypatch.delenv("PHOTOGPT_EVENT_LOOP", raising=False)
    assert _loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv("PHOTOGPT_EVENT_LOOP", "asyncio")
    assert _loop_factory() is None
    monkeypatch.delenv("PHOTOGPT_EVENT_LOOP")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    assert _loop_factory() is None

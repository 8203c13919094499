"""The preflight ping runs while the run starts, not in front of it; no intent, no POST before it passes."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from pipeline.api.client import ApiClient
from pipeline.engine.request import PreflightError
from pipeline.errors import ProtocolError, unwrap_group
from pipeline.simulator import Sandbox
from pipeline.state.sqlite import Phase, open_readonly
from tests.test_run import SUBMIT, _key, _sim, catalog, run, write_manifest  # noqa: F401 - fixtures


async def test_a_failing_preflight_stops_the_run_before_any_intent_or_post(
    sim: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ping answers late and wrong: the stages started meanwhile, yet nothing was paid or intended."""

    async def late_refusal(self: ApiClient) -> None:
        await anyio.sleep(0.3)  # long enough for every submit worker to be waiting at the gate
        raise ProtocolError("not the PhotoGPT API", endpoint="GET /ping")

    monkeypatch.setattr(ApiClient, "ping", late_refusal)
    manifest = write_manifest(tmp_path, catalog(6))
    out = tmp_path / "out"
    with pytest.raises(BaseException) as info:  # the session's task group wraps it
        await run(sim, manifest, out)
    error = unwrap_group(info.value) if isinstance(info.value, BaseExceptionGroup) else info.value
    assert isinstance(error, PreflightError) and error.exit_code == 3
    assert sim.stats()["requests"].get(SUBMIT, 0) == 0
    with open_readonly(out / ".state" / "state.db") as view:
        assert set(view.phases().values()) <= {Phase.PENDING}


async def test_the_first_post_follows_a_passing_preflight(
    sim: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow ping delays the first POST until it answers; then the run completes as usual."""
    order: list[str] = []
    real_ping, real_post = ApiClient.ping, ApiClient.generate_images

    async def slow_ping(self: ApiClient) -> None:
        await anyio.sleep(0.2)
        await real_ping(self)
        order.append("ping")

    async def post(self: ApiClient, body: object) -> object:
        order.append("post")
        return await real_post(self, body)  # type: ignore[arg-type]

    monkeypatch.setattr(ApiClient, "ping", slow_ping)
    monkeypatch.setattr(ApiClient, "generate_images", post)
    summary = await run(
        sim, write_manifest(tmp_path, catalog(4, upscale_every=99, video_every=99)), tmp_path / "o"
    )
    assert summary.exit_code == 0
    assert order[0] == "ping" and order.count("post") == 4

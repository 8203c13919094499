"""The API key never appears in logs, reprs or exceptions, even at debug level with errors."""

from __future__ import annotations

import io
import traceback

import structlog

from pipeline import logs
from pipeline.api.client import ApiClient
from pipeline.api.config import ApiConfig, ApiKey
from pipeline.clock import FakeClock
from pipeline.errors import PipelineError
from pipeline.simulator import Sandbox
from tests.conftest import TEST_KEY


async def test_key_stays_out_of_debug_logs_reprs_and_errors(sandbox: Sandbox, clock: FakeClock) -> None:
    """Good calls, failing calls and a wrong key: the key's text shows up nowhere a user can see."""
    sink = io.StringIO()
    logs.configure(fmt="json", level="debug", stream=sink)
    seen: list[str] = []
    wrong = "sk-wrong-key-abcdef-123456"
    for key in (TEST_KEY, wrong):
        config = ApiConfig(base_url=sandbox.base_url, api_key=ApiKey(key))
        seen += [repr(config), str(config), repr(config.api_key), str(config.api_key)]
        async with ApiClient(config, clock=clock) as api:
            seen.append(repr(api))
            for call in (api.list_models(), api.get_job("nope"), api.generate_images({"prompt": "x"})):
                try:
                    await call
                except PipelineError as exc:
                    seen += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
                    structlog.get_logger("test").error("call_failed", exc_info=exc, config=config)
    structlog.get_logger("test").debug("explicit", authorization=f"Bearer {TEST_KEY}", note=f"k={TEST_KEY}")
    text = sink.getvalue() + "\n".join(seen)
    assert "api_request" in sink.getvalue(), "debug request logs were expected"
    assert TEST_KEY not in text
    assert wrong not in text

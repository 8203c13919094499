"""One run's live parts: the API session (sandbox or real), the preflight, signals, the engine call.

A first SIGINT/SIGTERM asks the run to stop gracefully (no new POST; those sent finish and are
recorded); a second leaves at once. The run record and the gallery follow (:mod:`.record`).
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import anyio
import anyio.abc
import structlog

from pipeline.api.client import ApiClient
from pipeline.api.config import ApiConfig, ApiKey
from pipeline.clock import Clock
from pipeline.engine.options import RunOptions, RunSummary
from pipeline.engine.provision import Provisioner
from pipeline.engine.record import after_run
from pipeline.engine.request import SANDBOX_KEY, PreflightError, RunRequest
from pipeline.engine.retry import retrying
from pipeline.engine.run import run_pipeline
from pipeline.engine.tally import Snapshot
from pipeline.errors import ApiError, AuthError, InterruptedRunError
from pipeline.manifest.load import Manifest
from pipeline.output.downloader import Downloader
from pipeline.output.layout import OutputLayout
from pipeline.output.store import OutputStore
from pipeline.state.store import StateStore

__all__ = ["api_config", "run_session"]

_log = structlog.get_logger("pipeline.engine.session")


@asynccontextmanager
async def api_config(request: RunRequest) -> AsyncIterator[tuple[ApiConfig, bool]]:
    """The API to talk to: an in-process sandbox on a free loopback port, or the configured one."""
    if request.sandbox:
        from pipeline.simulator import Sandbox, SimConfig

        async with Sandbox(SimConfig.profile(request.sandbox_profile, keys=(SANDBOX_KEY,))) as sb:
            yield ApiConfig(base_url=sb.base_url, api_key=ApiKey(SANDBOX_KEY)), True
        return
    env = dict(os.environ)
    if request.base_url:
        env["PHOTOGPT_BASE_URL"] = request.base_url
    yield ApiConfig.from_env(env, key_file=request.key_file), False


async def _watch_signals(
    stop: anyio.Event,
    scope: anyio.CancelScope,
    interrupted: list[int],
    grace_s: float,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """First SIGINT/SIGTERM: ask the run to stop gracefully (no new POST; those sent finish and
    are recorded), and cancel it a little after its grace in case it is somewhere that does not
    watch the request (preflight, training a model). Second: leave at once."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async with anyio.create_task_group() as tg:
            async for signum in signals:
                if interrupted:
                    os._exit(130)  # WAL keeps the state file consistent even now
                interrupted.append(signum)
                _log.warning("interrupted", signal=signal.Signals(signum).name, grace_s=grace_s)
                stop.set()
                tg.start_soon(_cancel_after, scope, grace_s + 5.0)


async def _cancel_after(scope: anyio.CancelScope, seconds: float) -> None:
    await anyio.sleep(seconds)
    scope.cancel()


def _files_session() -> aiohttp.ClientSession:
    """The downloads' own session: asset hosts never see the API key."""
    return aiohttp.ClientSession()


def _preflight(
    api: ApiClient, config: ApiConfig, options: RunOptions, clock: Clock
) -> Callable[[], Awaitable[None]]:
    """The run's preflight: a ping (retried as any read); a refused key stays an AuthError, any
    other failure is a PreflightError naming the base URL."""

    async def preflight() -> None:
        try:
            await retrying(api.ping, policy=options.retry, clock=clock, rng=random.Random(options.seed))
        except AuthError:
            raise
        except ApiError as exc:
            raise PreflightError(f"preflight ping to {config.base_url} failed: {exc}") from exc

    return preflight


async def run_session(
    manifest: Manifest,
    config: ApiConfig,
    store: StateStore,
    where: tuple[OutputLayout, OutputStore],
    options: RunOptions,
    clock: Clock,
    *,
    fast: bool = False,
    progress: Callable[[Callable[[], Snapshot]], Coroutine[Any, Any, None]] | None = None,
    runner: Callable[..., Awaitable[RunSummary]] = run_pipeline,
) -> RunSummary:
    layout, output = where
    interrupted: list[int] = []
    summary: RunSummary | None = None
    async with ApiClient(config, clock=clock) as api, _files_session() as files:
        preflight = _preflight(api, config, options, clock)
        downloader = Downloader(files, root=layout.root)
        provisioner = Provisioner(
            api,
            store,
            clock,
            models={m.name: m for m in manifest.models},
            retry=options.retry,
            model_poll_s=0.5 if fast else 300.0,
            seed=options.seed,
        )
        stop = anyio.Event()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                await tg.start(_watch_signals, stop, scope, interrupted, options.stop_grace_s)

                def monitor(snapshot: Callable[[], Snapshot]) -> None:
                    if progress is not None:
                        tg.start_soon(progress, snapshot)

                summary = await runner(
                    manifest.units,
                    api=api,
                    store=store,
                    layout=layout,
                    downloader=downloader,
                    options=options,
                    clock=clock,
                    preflight=preflight,
                    provisioner=provisioner,
                    monitor=monitor,
                    output=output,
                    stop=stop,
                )
                tg.cancel_scope.cancel()
    if interrupted or summary is None:
        raise InterruptedRunError("interrupted: the state is saved; run the same command again to resume")
    if manifest.skipped_units:  # the diff counted the settled rows' units as no longer in the manifest
        summary = replace(summary, stale=max(0, summary.stale - manifest.skipped_units))
    await after_run(manifest, store, output, summary, clock)
    return summary

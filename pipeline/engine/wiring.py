"""Wiring for one ``run``: manifest, lock, state, sandbox or real API, sessions, signals.

The scheduler knows nothing of files on the command line, processes or
signals; this module owns those, so that the scheduler stays testable with
plain objects.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import structlog

from pipeline.api.client import ApiClient
from pipeline.api.config import ApiConfig, ApiKey
from pipeline.clock import Clock, SystemClock
from pipeline.engine.poller import PollPolicy
from pipeline.engine.provision import Provisioner
from pipeline.engine.retry import retrying
from pipeline.engine.run import RunOptions, RunSummary, run_pipeline
from pipeline.engine.tally import Snapshot
from pipeline.errors import ApiError, AuthError, ConfigError, InterruptedRunError, PipelineError
from pipeline.manifest.load import Manifest, load_manifest
from pipeline.output.downloader import Downloader
from pipeline.output.layout import OutputLayout
from pipeline.output.report import build_report
from pipeline.state.lock import RunLock
from pipeline.state.sqlite import Phase, StateStore

__all__ = ["PreflightError", "RunRequest", "default_out", "default_state", "execute"]

_log = structlog.get_logger("pipeline.engine.wiring")

#: The key the embedded sandbox accepts; it is not a secret.
SANDBOX_KEY = "sandbox"


class PreflightError(PipelineError):
    """The API did not answer the preflight ping: nothing was submitted."""

    exit_code = 3


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """What the user asked ``run`` to do."""

    manifest: Path
    out: Path | None = None
    state: Path | None = None
    sandbox: bool = False
    sandbox_profile: str = "fast"
    base_url: str | None = None
    key_file: Path | None = None
    options: RunOptions = field(default_factory=RunOptions)
    retry_failed: bool = False
    resubmit_unknown: bool = False
    #: ``auto``: sub-second polling against a loopback API (a local simulator), the
    #: reference's patient polling anywhere else.
    poll_profile: str = "auto"
    #: Draws the live progress display from the run's snapshots until cancelled (the CLI passes
    #: one when stderr is a terminal and not --quiet; the engine never imports the display).
    progress: Callable[[Callable[[], Snapshot]], Coroutine[Any, Any, None]] | None = None


def _is_loopback(base_url: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(base_url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def default_out(manifest: Manifest) -> Path:
    """``outputs/<manifest name>``, relative to the working directory."""
    return Path("outputs") / manifest.name


def default_state(out: Path) -> Path:
    """The state file lives inside the run's output folder, out of the way of item folders."""
    return out / ".state" / "state.db"


@asynccontextmanager
async def _api_config(request: RunRequest) -> AsyncIterator[tuple[ApiConfig, bool]]:
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


async def execute(request: RunRequest, *, clock: Clock | None = None) -> RunSummary:
    """Run a manifest to the end, or until stopped; raise PipelineError for what stops it early."""
    clock = clock or SystemClock()
    manifest = load_manifest(request.manifest)
    out = request.out or default_out(manifest)
    state_path = request.state or default_state(out)
    layout = OutputLayout(out, manifest.output_template)
    lock = RunLock(state_path.with_name(state_path.name + ".lock"))
    try:
        state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot use the output folder {out}: {exc.strerror or exc}") from exc
    lock.acquire()
    try:
        async with _api_config(request) as (config, is_sandbox):
            options = request.options
            fast = request.poll_profile == "fast" or (
                request.poll_profile == "auto" and (is_sandbox or _is_loopback(config.base_url))
            )
            if fast and options.poll == RunOptions().poll:
                options = _with_poll(options, PollPolicy.fast())
            if manifest.prices and not options.prices:
                options = replace(options, prices=manifest.prices)
            async with StateStore.open(state_path, clock=clock) as store:
                if request.retry_failed:
                    await store.reset(Phase.FAILED)
                if request.resubmit_unknown:
                    await store.reset(Phase.UNKNOWN)
                return await _run(
                    manifest, config, store, layout, options, clock, fast=fast, progress=request.progress
                )
    finally:
        lock.release()


def _with_poll(options: RunOptions, poll: PollPolicy) -> RunOptions:
    from dataclasses import replace

    return replace(options, poll=poll)


async def _run(
    manifest: Manifest,
    config: ApiConfig,
    store: StateStore,
    layout: OutputLayout,
    options: RunOptions,
    clock: Clock,
    *,
    fast: bool = False,
    progress: Callable[[Callable[[], Snapshot]], Coroutine[Any, Any, None]] | None = None,
) -> RunSummary:
    interrupted: list[int] = []
    summary: RunSummary | None = None
    async with ApiClient(config, clock=clock) as api, aiohttp.ClientSession() as files:

        async def preflight() -> None:
            try:
                await retrying(api.ping, policy=options.retry, clock=clock, rng=random.Random(options.seed))
            except AuthError:
                raise
            except ApiError as exc:
                raise PreflightError(f"preflight ping to {config.base_url} failed: {exc}") from exc

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

                summary = await run_pipeline(
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
                    stop=stop,
                )
                tg.cancel_scope.cancel()
    if interrupted or summary is None:
        raise InterruptedRunError("interrupted: the state is saved; run the same command again to resume")
    await anyio.to_thread.run_sync(_write_run_record, layout, summary, clock)
    if not (summary.submitted or summary.downloaded_bytes or summary.failures):
        # A no-op resume changes nothing the gallery shows (`photogpt-pipeline report` rebuilds it).
        return summary
    try:
        await anyio.to_thread.run_sync(lambda: build_report(layout.root, state_path=store.path))
    except OSError as exc:  # the gallery is a convenience: never fail a finished run over it
        _log.warning("report_failed", error=str(exc))
    return summary


def _write_run_record(layout: OutputLayout, summary: RunSummary, clock: Clock) -> None:
    """``runs/<timestamp>.json``: the run's facts for scripts, written atomically."""
    from pipeline.output.sidecar import write_sidecar

    stamp = clock.now().strftime("%Y%m%dT%H%M%S%fZ")
    record = {
        "counts": dict(summary.counts),
        "stopped": summary.stopped,
        "submitted": summary.submitted,
        "rateLimited": summary.rate_limited,
        "downloadedBytes": summary.downloaded_bytes,
        "elapsedSeconds": round(summary.elapsed_s, 3),
        "stale": summary.stale,
        "left": summary.left,
        "requests": dict(sorted(summary.requests.items())),
        "requestsTotal": sum(summary.requests.values()),
        "creditsSpent": summary.credits_spent,
        "learnedRateLimit": None if summary.rate_limit_rps is None else round(summary.rate_limit_rps, 2),
        "learnedActiveCap": summary.active_cap,
        "exitCode": summary.exit_code,
        "failures": [
            {
                "item": f.item_id,
                "key": f.key,
                "step": f.step,
                "index": f.index,
                "phase": f.phase,
                "reason": f.reason,
            }
            for f in summary.failures
        ],
    }
    layout.runs_dir.mkdir(parents=True, exist_ok=True)
    for leftover in layout.runs_dir.glob(".*.tmp"):  # from a run killed while writing its record
        leftover.unlink(missing_ok=True)
    write_sidecar(layout.runs_dir / f"{stamp}.json", json.loads(json.dumps(record)))

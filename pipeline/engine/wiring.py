"""Wiring for one ``run``: manifest, lock, state, sandbox or real API, sessions, signals.

The scheduler knows nothing of files on the command line, processes or
signals; this module owns those, so that the scheduler stays testable with
plain objects.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
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
from pipeline.engine import regenerate
from pipeline.engine.poller import PollPolicy
from pipeline.engine.provision import Provisioner
from pipeline.engine.retry import retrying
from pipeline.engine.run import RunOptions, RunSummary, run_pipeline
from pipeline.engine.tally import Snapshot
from pipeline.errors import (
    ApiError,
    AuthError,
    ConfigError,
    InterruptedRunError,
    OutputError,
    PipelineError,
)
from pipeline.manifest.load import Manifest, load_manifest
from pipeline.output.downloader import Downloader
from pipeline.output.layout import OutputLayout
from pipeline.output.local import LocalOutputStore
from pipeline.output.open import is_s3_url, open_output
from pipeline.output.s3url import parse_s3_url
from pipeline.output.store import OutputStore
from pipeline.state.lock import RunLock
from pipeline.state.opening import resolve_state
from pipeline.state.records import Phase
from pipeline.state.sqlite import StateStore as SqliteStore
from pipeline.state.store import StateStore

__all__ = ["PreflightError", "RunRequest", "default_out", "default_state", "execute"]

_log = structlog.get_logger("pipeline.engine.wiring")

#: Above this many units in the state, a run does not rebuild the gallery by itself.
REPORT_MAX_UNITS = 100_000

#: The key the embedded sandbox accepts; it is not a secret.
SANDBOX_KEY = "sandbox"


class PreflightError(PipelineError):
    """The API did not answer the preflight ping: nothing was submitted."""

    exit_code = 3


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """What the user asked ``run`` to do."""

    manifest: Path
    #: A folder, or ``s3://bucket/prefix`` (then the state and the parts stay local: :func:`s3_home`).
    out: Path | str | None = None
    #: A state file, or a ``postgresql://`` URL shared by cooperating workers (default: the file in
    #: ``<out>/.state``, or ``$PHOTOGPT_STATE_URL`` when set).
    state: Path | str | None = None
    #: Seconds a cooperating worker's claim on a unit lasts without a heartbeat (shared state only).
    lease_s: float = 60.0
    sandbox: bool = False
    sandbox_profile: str = "fast"
    base_url: str | None = None
    key_file: Path | None = None
    options: RunOptions = field(default_factory=RunOptions)
    retry_failed: bool = False
    resubmit_unknown: bool = False
    #: Pay again for units with a rejected output (and their chain children), with new seeds.
    regenerate_rejected: bool = False
    #: Told what a regeneration will cost before anything is paid (the CLI prints it).
    announce: Callable[[str], None] | None = None
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


def default_state(out: Path | str) -> Path:
    """The state file lives inside the run's output folder, out of the way of item folders;
    for an ``s3://`` output, in the local :func:`s3_home`."""
    if is_s3_url(out):
        return s3_home(str(out)) / "state.db"
    return Path(out) / ".state" / "state.db"


def s3_home(url: str) -> Path:
    """``.photogpt-state/<bucket>/<prefix>``: the local state and parts of an ``s3://`` output.

    Object storage holds the outputs; the state (SQLite, locked per run) and the resumable
    ``.part`` files stay on the machine that runs, relative to the working directory.
    """
    bucket, prefix = parse_s3_url(url)
    return Path(".photogpt-state", bucket, *(prefix.split("/") if prefix else ["_root"]))


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
    async with AsyncExitStack() as stack:
        manifest, early = await _load_resuming(request, clock, stack)
        return await _execute(request, clock, manifest, early)
    raise AssertionError("unreachable")  # pragma: no cover - the stack does not swallow errors


async def _load_resuming(
    request: RunRequest, clock: Clock, stack: AsyncExitStack
) -> tuple[Manifest, SqliteStore | None]:
    """The manifest, and the state already open when this is a resume.

    A resume's state file is opened (lock, integrity check: seconds for a million units) in a
    worker thread while the manifest expands in another; a first run, or a state path that only
    the loaded manifest can tell, opens after the load as before. Either way a manifest with
    problems raises before anything is created.
    """
    state_path = _state_before_load(request)
    lock = RunLock(state_path) if state_path else None
    if state_path is None or lock is None or not state_path.is_file():
        return load_manifest(request.manifest), None
    try:
        lock.acquire()
    except PipelineError:
        return load_manifest(request.manifest), None  # held: the run below says by whom
    stack.callback(lock.release)
    async with anyio.create_task_group() as tg:
        opened: list[SqliteStore] = []

        async def open_state() -> None:
            opened.append(await stack.enter_async_context(SqliteStore.open(state_path, clock=clock)))

        tg.start_soon(open_state)
        manifest = await anyio.to_thread.run_sync(load_manifest, request.manifest)
    out = request.out or default_out(manifest)
    if resolve_state(request.state, default_state(out)) != state_path:  # not the manifest's name
        await stack.aclose()
        return manifest, None
    return manifest, opened[0]


def _state_before_load(request: RunRequest) -> Path | None:
    """The state path when it can be told before the manifest is loaded: given, or from ``--out``, or
    from a plain ``name:`` line (checked against the loaded manifest afterwards)."""
    if request.state is not None or request.out is not None:
        found = resolve_state(request.state, default_state(request.out or Path()))
        return found if isinstance(found, Path) else None  # a database URL: no file to open early
    if isinstance(resolve_state(None, Path()), str):
        return None
    try:
        with request.manifest.open("rb") as handle:
            head = handle.read(_PEEK_BYTES)
    except OSError:
        return None
    match = _NAME_LINE.search(head)
    if match is None:
        return None
    return default_state(Path("outputs") / match.group(1).decode("utf-8", "replace"))


_PEEK_BYTES = 4096
_NAME_LINE = re.compile(rb"^name:[ \t]*([A-Za-z0-9][A-Za-z0-9_.+=@,-]*)[ \t]*(?:#.*)?$", re.MULTILINE)


async def _execute(
    request: RunRequest, clock: Clock, manifest: Manifest, early: SqliteStore | None
) -> RunSummary:
    out = request.out or default_out(manifest)
    state = resolve_state(request.state, default_state(out))
    if isinstance(state, str):  # a shared database: workers cooperate through claims, no lock file
        return await _execute_shared(request, manifest, out, state, clock)
    state_path = state
    staging = s3_home(str(out)) / "parts" if is_s3_url(out) else Path(out)
    output = open_output(out, staging=staging)
    layout = OutputLayout(staging, manifest.output_template)
    lock = RunLock(state_path)  # locks <state>.lock
    try:
        state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot use the output folder {staging}: {exc.strerror or exc}") from exc
    if early is None:
        lock.acquire()
    try:
        await output.open()  # a missing bucket or refused credentials stop here: nothing paid
        async with _api_config(request) as (config, is_sandbox):
            options = request.options
            fast = request.poll_profile == "fast" or (
                request.poll_profile == "auto" and (is_sandbox or _is_loopback(config.base_url))
            )
            if fast and options.poll == RunOptions().poll:
                options = _with_poll(options, PollPolicy.fast())
            if manifest.prices and not options.prices:
                options = replace(options, prices=manifest.prices)
            async with AsyncExitStack() as stack:
                if early is None:
                    store = await stack.enter_async_context(SqliteStore.open(state_path, clock=clock))
                else:
                    store = early
                if request.retry_failed:
                    await store.reset(Phase.FAILED)
                if request.resubmit_unknown:
                    await store.reset(Phase.UNKNOWN)
                if request.regenerate_rejected:
                    await _regenerate(request, manifest, store, layout, options, clock)
                seeds = {k: int(v["seed"]) for k, v in store.resources("seed").items() if "seed" in v}
                options = replace(options, seeds=seeds)
                return await _run(
                    manifest,
                    config,
                    store,
                    (layout, output),
                    options,
                    clock,
                    fast=fast,
                    progress=request.progress,
                )
    finally:
        with anyio.CancelScope(shield=True):
            await output.close()
        if early is None:
            lock.release()


async def _regenerate(
    request: RunRequest, manifest: Manifest, store: SqliteStore, layout: OutputLayout, options: RunOptions,
    clock: Clock,
) -> None:  # fmt: skip
    """Say what ``--regenerate-rejected`` will pay for, then set those units up for the run."""
    plan = regenerate.plan_regeneration(store, manifest.units, options.prices)
    for why in plan.skipped:
        _log.warning("regeneration_skipped", reason=why)
    (request.announce or (lambda text: _log.info("regeneration_planned", text=text)))(plan.describe())
    await regenerate.apply_regeneration(plan, store, layout, clock)


async def _execute_shared(
    request: RunRequest, manifest: Manifest, out: Path | str, url: str, clock: Clock
) -> RunSummary:
    """``run`` on a shared state database: one of possibly many workers (see cooperate.py)."""
    # Imported here: psycopg costs a few hundred ms of start-up that a run on SQLite never pays.
    from pipeline.engine.cooperate import SharedStore, run_shared
    from pipeline.state.pgconn import key_hash

    if request.lease_s <= 0:
        raise ConfigError("--lease must be a positive number of seconds")
    staging = s3_home(str(out)) / "parts" if is_s3_url(out) else Path(out)
    output = open_output(out, staging=staging)
    layout = OutputLayout(staging, manifest.output_template)
    try:
        await anyio.Path(staging).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot use the output folder {staging}: {exc.strerror or exc}") from exc
    # The database first: a bad URL or password is an error before any request to the API.
    store = await SharedStore.open(url, clock=clock, run=manifest.name, lease_s=request.lease_s)
    try:
        await output.open()  # a missing bucket or refused credentials stop here: nothing paid
        async with _api_config(request) as (config, is_sandbox):
            options = _tuned(request, manifest, config, is_sandbox)
            await store.share_limits(
                key_hash(config.api_key.reveal()), cap=options.max_active, rate_per_s=options.submit_rate
            )
            if request.retry_failed:
                await store.reset(Phase.FAILED)
            if request.resubmit_unknown:
                await store.reset(Phase.UNKNOWN)
            runner = functools.partial(run_shared, batch=max(8, options.max_active // 2))
            fast = options.poll != RunOptions().poll
            return await _run(manifest, config, store, (layout, output), options, clock, fast=fast,
                              progress=request.progress, runner=runner)  # fmt: skip
    finally:
        with anyio.CancelScope(shield=True):
            await output.close()
            await store.aclose()


def _tuned(request: RunRequest, manifest: Manifest, config: ApiConfig, is_sandbox: bool) -> RunOptions:
    options = request.options
    fast = request.poll_profile == "fast" or (
        request.poll_profile == "auto" and (is_sandbox or _is_loopback(config.base_url))
    )
    if fast and options.poll == RunOptions().poll:
        options = _with_poll(options, PollPolicy.fast())
    if manifest.prices and not options.prices:
        options = replace(options, prices=manifest.prices)
    return options


def _with_poll(options: RunOptions, poll: PollPolicy) -> RunOptions:
    from dataclasses import replace

    return replace(options, poll=poll)


async def _run(
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
    await _after_run(manifest, store, output, summary, clock)
    return summary


async def _after_run(
    manifest: Manifest, store: StateStore, output: OutputStore, summary: RunSummary, clock: Clock
) -> None:
    """The run record always; the gallery when the run changed anything it shows."""
    review = store.review_counts() if isinstance(store, SqliteStore) else {}
    worker = getattr(store, "holder", None)  # a shared run: which worker wrote this record
    await _write_run_record(output, summary, clock, review, worker)
    if not (summary.submitted or summary.downloaded_bytes or summary.failures):
        return  # a no-op resume changes nothing the gallery shows (`report` rebuilds it)
    units = sum(summary.counts.values())
    if units > REPORT_MAX_UNITS:
        # The gallery reads every unit of the state: for a million-unit catalog, gigabytes to show a
        # page nobody scrolls. `photogpt-pipeline report` still builds it on demand.
        _log.info("report_skipped", units=units, limit=REPORT_MAX_UNITS, hint="photogpt-pipeline report")
        return
    # Imported here: the gallery's modules (Jinja2) are not on the way to the first POST.
    from pipeline.output.publish_report import publish_report
    from pipeline.output.report import variant_groups

    try:
        state_path = getattr(store, "path", None)  # a shared database: the gallery shows the index
        await publish_report(output, state_path=state_path, groups=variant_groups(manifest.items))
    except (OSError, OutputError) as exc:  # the gallery is a convenience: never fail a run over it
        _log.warning("report_failed", error=str(exc))


async def _write_run_record(
    output: OutputStore,
    summary: RunSummary,
    clock: Clock,
    review: dict[str, int] | None = None,
    worker: str | None = None,
) -> None:
    """``runs/<timestamp>.json``: the run's facts for scripts, written atomically."""
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
        "review": review or {},
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
    if worker is not None:
        record["worker"] = worker
    if isinstance(output, LocalOutputStore):
        for leftover in (output.root / "runs").glob(".*.tmp"):  # from a run killed while writing one
            leftover.unlink(missing_ok=True)
    text = json.dumps(record, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    await output.put_bytes(f"runs/{stamp}.json", text.encode())

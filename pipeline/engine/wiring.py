"""Wiring for one ``run``: the manifest, the state (a locked SQLite file or a shared database), the
output store, then the session (:mod:`.session`).

The engine knows nothing of files on the command line, processes or signals; this module and
:mod:`.session` own those, so that the stages stay testable with plain objects.
"""

from __future__ import annotations

import functools
import re
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import anyio
import structlog

from pipeline.clock import Clock, SystemClock
from pipeline.engine.options import RunOptions, RunSummary
from pipeline.engine.request import (
    PreflightError,
    RunRequest,
    default_out,
    default_state,
    s3_home,
    tuned,
)
from pipeline.engine.session import api_config, run_session
from pipeline.engine.settled import Skipping, combine, none_settled
from pipeline.errors import ConfigError, PipelineError
from pipeline.manifest.load import Manifest, load_manifest
from pipeline.output.layout import OutputLayout
from pipeline.output.open import is_s3_url, open_output
from pipeline.state.lock import RunLock
from pipeline.state.opening import resolve_state
from pipeline.state.records import Phase
from pipeline.state.review_store import ReviewedState
from pipeline.state.sqlite import StateStore as SqliteStore

__all__ = ["PreflightError", "RunRequest", "default_out", "default_state", "execute", "s3_home"]

_log = structlog.get_logger("pipeline.engine.wiring")


async def execute(request: RunRequest, *, clock: Clock | None = None) -> RunSummary:
    """Run a manifest to the end, or until stopped; raise PipelineError for what stops it early."""
    clock = clock or SystemClock()
    async with AsyncExitStack() as stack:
        manifest, early, skipping = await _load_resuming(request, clock, stack)
        return await _execute(request, clock, manifest, early, skipping)
    raise AssertionError("unreachable")  # pragma: no cover - the stack does not swallow errors


async def _load_resuming(
    request: RunRequest, clock: Clock, stack: AsyncExitStack
) -> tuple[Manifest, SqliteStore | None, Skipping | None]:
    """The manifest, and the state already open when this is a resume.

    A resume's state file is opened (lock, integrity check: seconds for a million units) in a
    worker thread while the manifest expands in another, skipping the rows the state says are
    done (:mod:`.settled`); a first run, or a state path that only the loaded manifest can tell,
    opens after the load as before. Either way a manifest with problems raises before anything
    is created.
    """
    state_path = _state_before_load(request)
    lock = RunLock(state_path) if state_path else None
    if state_path is None or lock is None or not state_path.is_file():
        shared = isinstance(resolve_state(request.state, Path()), str)  # a database: no row index
        return load_manifest(request.manifest, settle=None if shared else none_settled), None, None
    try:
        lock.acquire()
    except PipelineError:
        return load_manifest(request.manifest), None, None  # held: the run below says by whom
    stack.callback(lock.release)
    skipping = Skipping.for_run(request, state_path, request.out or _peeked_out(request))
    settle = skipping.settle if skipping else none_settled
    async with anyio.create_task_group() as tg:
        opened: list[SqliteStore] = []

        async def open_state() -> None:
            opened.append(await stack.enter_async_context(SqliteStore.open(state_path, clock=clock)))

        tg.start_soon(open_state)
        load = functools.partial(load_manifest, request.manifest, settle=settle)
        manifest = await anyio.to_thread.run_sync(load)
    if skipping is not None and not skipping.fits(request, manifest):
        skipping = None
        if manifest.skipped_units:  # skipped on a wrong guess of the state
            manifest = await anyio.to_thread.run_sync(load_manifest, request.manifest)
    out = request.out or default_out(manifest)
    if resolve_state(request.state, default_state(out)) != state_path:  # not the manifest's name
        await stack.aclose()
        return manifest, None, None
    return manifest, opened[0], skipping


def _peeked_out(request: RunRequest) -> Path | None:
    """The default output folder, from the manifest's ``name:`` line (checked after the load)."""
    found = _peek_name(request)
    return None if found is None else Path("outputs") / found


def _state_before_load(request: RunRequest) -> Path | None:
    """The state path when it can be told before the manifest is loaded: given, or from ``--out``, or
    from a plain ``name:`` line (checked against the loaded manifest afterwards)."""
    if request.state is not None or request.out is not None:
        found = resolve_state(request.state, default_state(request.out or Path()))
        return found if isinstance(found, Path) else None  # a database URL: no file to open early
    if isinstance(resolve_state(None, Path()), str):
        return None
    name = _peek_name(request)
    return None if name is None else default_state(Path("outputs") / name)


def _peek_name(request: RunRequest) -> str | None:
    try:
        with request.manifest.open("rb") as handle:
            head = handle.read(_PEEK_BYTES)
    except OSError:
        return None
    match = _NAME_LINE.search(head)
    return None if match is None else match.group(1).decode("utf-8", "replace")


_PEEK_BYTES = 4096
_NAME_LINE = re.compile(rb"^name:[ \t]*([A-Za-z0-9][A-Za-z0-9_.+=@,-]*)[ \t]*(?:#.*)?$", re.MULTILINE)


async def _execute(
    request: RunRequest, clock: Clock, manifest: Manifest, early: SqliteStore | None,
    skipping: Skipping | None = None,
) -> RunSummary:  # fmt: skip
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
        async with api_config(request) as (config, is_sandbox):
            options = tuned(request, manifest, config, is_sandbox)
            fast = options.poll != RunOptions().poll
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
                where = (layout, output)
                summary = await run_session(manifest, config, store, where, options, clock, fast=fast,
                                            progress=request.progress)  # fmt: skip
                if skipping is None or not manifest.skipped_units:
                    return summary
                reopened = await skipping.reopen_missing(store)  # the skipped rows' files, checked now
                if not reopened or summary.stopped:  # stopped: the next run fetches what was reopened
                    return summary
                load = functools.partial(load_manifest, request.manifest, settle=skipping.settle)
                again = await anyio.to_thread.run_sync(load)  # a second pass, for the files missing
                second = await run_session(again, config, store, where, options, clock, fast=fast)
                return combine(summary, second)
    finally:
        with anyio.CancelScope(shield=True):
            await output.close()
        if early is None:
            lock.release()


async def _regenerate(
    request: RunRequest, manifest: Manifest, store: ReviewedState, layout: OutputLayout, options: RunOptions,
    clock: Clock,
) -> None:  # fmt: skip
    """Say what ``--regenerate-rejected`` will pay for, then set those units up for the run."""
    from pipeline.engine import regenerate  # only for this flag: kept out of every run's start-up

    plan = regenerate.plan_regeneration(store, manifest.units, options.prices)
    plan = await regenerate.hold_targets(plan, store)  # what no other worker holds: what will be paid
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
        async with api_config(request) as (config, is_sandbox):
            options = tuned(request, manifest, config, is_sandbox)
            await store.share_limits(
                key_hash(config.api_key.reveal()), cap=options.max_active, rate_per_s=options.submit_rate
            )
            if request.retry_failed:
                await store.reset(Phase.FAILED)
            if request.resubmit_unknown:
                await store.reset(Phase.UNKNOWN)
            if request.regenerate_rejected:  # units other workers hold are left to a later rerun
                await _regenerate(request, manifest, store, layout, options, clock)
            runner = functools.partial(run_shared, batch=max(8, options.max_active // 2))
            fast = options.poll != RunOptions().poll
            return await run_session(manifest, config, store, (layout, output), options, clock, fast=fast,
                              progress=request.progress, runner=runner)  # fmt: skip
    finally:
        with anyio.CancelScope(shield=True):
            await output.close()
            await store.aclose()

"""What ``run`` was asked to do, and the defaults that complete it (output folder, state path, options)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.api.config import ApiConfig
from pipeline.engine.options import RunOptions
from pipeline.engine.poller import PollPolicy
from pipeline.engine.tally import Snapshot
from pipeline.errors import PipelineError
from pipeline.manifest.load import Manifest
from pipeline.output.open import is_s3_url
from pipeline.output.s3url import parse_s3_url

__all__ = [
    "SANDBOX_KEY",
    "PreflightError",
    "RunRequest",
    "default_out",
    "default_state",
    "is_loopback",
    "s3_home",
    "tuned",
]

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


def is_loopback(base_url: str) -> bool:
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


def tuned(request: RunRequest, manifest: Manifest, config: ApiConfig, is_sandbox: bool) -> RunOptions:
    """The options as given, with fast polling against a local API and the manifest's prices."""
    options = request.options
    fast = request.poll_profile == "fast" or (
        request.poll_profile == "auto" and (is_sandbox or is_loopback(config.base_url))
    )
    if fast and options.poll == RunOptions().poll:
        options = replace(options, poll=PollPolicy.fast())
    if manifest.prices and not options.prices:
        options = replace(options, prices=manifest.prices)
    return options

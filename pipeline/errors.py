"""The one error hierarchy of photogpt-pipeline.

Every error the package raises on purpose derives from :class:`PipelineError`,
so the command line has one catch point. Each class carries ``exit_code`` (the
process status the CLI exits with, gallery-dl style) and ``retryable`` (whether
doing the same thing again later may succeed). Foreign exceptions (aiohttp,
asyncio timeouts, OSError, yaml) are mapped into this tree at one boundary per
layer (``ApiClient._map_error``, the manifest loader, the downloader) and chained with
``from``.

Tree::

    PipelineError                    exit 1  generic failure
    ├── ConfigError                  exit 2  bad settings: base URL, key file, flags
    │   └── ManifestError            exit 2  a manifest that does not validate (carries all problems)
    ├── ApiError                             anything the API said or failed to say
    │   ├── AuthError                exit 3  401/403: the key is wrong; stops the whole run
    │   ├── RateLimitedError         retry   429: slow down; ``retry_after_s`` when the server said
    │   ├── QuotaExhaustedError      exit 5  insufficient credits / quota: stop submitting, do not retry
    │   ├── RejectedError                    other 4xx: this request is wrong; fix it, do not retry
    │   │   ├── NotFoundError                404: unknown or foreign id
    │   │   └── ConflictError        retry   409: retry after the conflicting operation ends
    │   ├── ServerError              retry   5xx
    │   └── ProtocolError                    a 2xx whose body is not the documented envelope
    │   └── TransportError           retry   no HTTP answer: connection refused/reset, DNS
    │       └── RequestTimeoutError  retry   the request did not finish in time
    ├── DownloadError                        an asset could not be fetched or did not verify
    │   ├── AssetGoneError                   403/404/410 on the asset URL: re-read the job for a fresh URL
    │   ├── IntegrityError           retry   short read, size mismatch, truncated body
    │   ├── TransientDownloadError   retry   429/5xx or a dropped connection on the asset URL
    │   └── UnsafeAssetError                 wrong file type (magic bytes), over the byte cap, unsafe URL
    ├── OutputError                  exit 1  the output store (folder or bucket) failed
    │   ├── OutputConflictError              a create-only put found other bytes under the key
    │   └── OutputUnavailableError   exit 2  no such bucket, credentials refused, bad s3:// URL
    ├── StateError                   exit 2  the state file is unreadable, corrupt or of an unknown schema
    │   ├── LockedError              exit 4  another run holds the state file (names the holder)
    │   ├── StateUnavailableError    exit 2  state database unreachable, wrong password, newer schema
    │   ├── NoStateYetError          exit 2  a state database nothing has run against (``plan``: all new)
    │   └── LeaseLostError                   another worker holds the unit now: the write was refused
    └── InterruptedRunError          exit 130  stopped by a signal; the state is consistent

Messages never contain the API key: errors are built from the NOK ``message``,
the endpoint path and short, redacted excerpts only.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ApiError",
    "AssetGoneError",
    "AuthError",
    "ConfigError",
    "ConflictError",
    "ConnectTimeoutError",
    "DownloadError",
    "IntegrityError",
    "InterruptedRunError",
    "LeaseLostError",
    "LockedError",
    "ManifestError",
    "ManifestProblem",
    "NoStateYetError",
    "NotFoundError",
    "OutputConflictError",
    "OutputError",
    "OutputUnavailableError",
    "PipelineError",
    "ProtocolError",
    "QuotaExhaustedError",
    "RateLimitedError",
    "RejectedError",
    "RequestTimeoutError",
    "ServerError",
    "StateError",
    "StateUnavailableError",
    "TransientDownloadError",
    "TransportError",
    "UnsafeAssetError",
    "UploadUncertainError",
    "unwrap_group",
]


class PipelineError(Exception):
    """Base of every error the package raises on purpose."""

    exit_code: int = 1
    retryable: bool = False


class ConfigError(PipelineError):
    """Settings that cannot work: refused before any connection is made."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """One thing wrong in a manifest, with the place a user must look.

    ``location`` is ``file:line:column`` (or ``file:line`` for a rows file);
    ``path`` is the field path such as ``items[3].video.options.veo.duration``.
    """

    location: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        field = f"{self.path}: " if self.path else ""
        return f"{where}{field}{self.message}"


class ManifestError(ConfigError):
    """A manifest that does not validate. Holds every problem found, not only the first."""

    def __init__(self, problems: list[ManifestProblem] | tuple[ManifestProblem, ...]) -> None:
        self.problems: tuple[ManifestProblem, ...] = tuple(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the manifest"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


class ApiError(PipelineError):
    """The API answered with an error, or with something that is not its documented envelope.

    ``status`` is the HTTP status (``None`` when there was no HTTP answer),
    ``message`` the NOK envelope's human text, ``err`` its internal detail (log it at
    debug level only), ``endpoint`` the method and path that failed.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        endpoint: str = "",
        err: str | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.endpoint = endpoint
        self.err = err
        parts = [endpoint] if endpoint else []
        if status is not None:
            parts.append(f"HTTP {status}")
        prefix = " ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class AuthError(ApiError):
    """401/403: the key is missing, wrong or blocked. Nothing else will work; the run stops."""

    exit_code = 3


class RateLimitedError(ApiError):
    """429: too many requests or active jobs. ``retry_after_s`` is the server's hint, if any."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after_s = retry_after_s


class QuotaExhaustedError(ApiError):
    """The account is out of credits or quota: waiting will not help, so stop submitting."""

    exit_code = 5


class RejectedError(ApiError):
    """Another 4xx: the request itself is wrong and sending it again changes nothing."""


class NotFoundError(RejectedError):
    """404: the id is unknown or belongs to another key (or the base URL is wrong)."""


class ConflictError(RejectedError):
    """409: the resource is busy; the reference says to retry once the other operation ends."""

    retryable = True


class ServerError(ApiError):
    """5xx: the server failed; retry with backoff."""

    retryable = True


class ProtocolError(ApiError):
    """A 2xx answer that is not the documented envelope (HTML page, truncated JSON, wrong shape)."""


class TransportError(ApiError):
    """No HTTP answer at all: refused, reset, DNS failure. Retry with backoff."""

    retryable = True


class RequestTimeoutError(TransportError):
    """The request did not complete within its timeout. For a POST the outcome is unknown."""


class ConnectTimeoutError(TransportError):
    """No connection within the connect timeout: nothing was sent, so nothing was created."""


class UploadUncertainError(PipelineError):
    """An upload failed in a way that does not prove it did not arrive (5xx, timeout, reset): it is
    not sent again, since a duplicate training photo counts against the model's limit."""


class DownloadError(PipelineError):
    """An asset could not be fetched, or what arrived is not what was promised."""


class AssetGoneError(DownloadError):
    """The asset URL answered 403/404/410: it expired. Read the job again; never pay again."""


class IntegrityError(DownloadError):
    """The body was cut short or does not match its Content-Length / Content-Range. Retry."""

    retryable = True


class TransientDownloadError(DownloadError):
    """The asset host answered 429/5xx or dropped the connection: retry later, the part is kept."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnsafeAssetError(DownloadError):
    """Refused: wrong file type by magic bytes, over the byte cap, or a URL we must not fetch."""


class OutputError(PipelineError):
    """The output store failed (an S3 error or no answer); the part is kept, a rerun publishes it."""

    retryable = True


class OutputConflictError(OutputError):
    """A create-only put found different bytes under its key: reported, never overwritten."""

    retryable = False


class OutputUnavailableError(OutputError):
    """The output store cannot be used at all (missing bucket, refused credentials): nothing was paid."""

    exit_code = 2
    retryable = False


class StateError(PipelineError):
    """The state file cannot be used: unreadable, failed its integrity check, or an unknown schema."""

    exit_code = 2


class LockedError(StateError):
    """Another run holds this state file. The message names the holder (pid, host, start time)."""

    exit_code = 4


class StateUnavailableError(StateError):
    """The shared state database cannot be used: unreachable, wrong password, or a schema newer than
    this version. Raised before anything is sent to the API. The message never holds the password."""

    exit_code = 2


class NoStateYetError(StateError):
    """The state database holds no photogpt-pipeline schema yet: nothing has run against it. A
    reader that only looks (``plan``) treats it as an empty state; its own class so no caller has to
    match the message's words."""

    exit_code = 2


class LeaseLostError(StateError):
    """This worker's lease on a unit expired or another worker took the unit over: the change was
    not written. The unit is the other worker's now; this one lets it go (not a run failure)."""

    exit_code = 1
    retryable = True


class InterruptedRunError(PipelineError):
    """The run was stopped by SIGINT/SIGTERM after saving its state; a rerun resumes."""

    exit_code = 130


def unwrap_group(caught: BaseException) -> PipelineError | None:
    """The error that stopped a task group: a :class:`PipelineError` inside (nested) exception groups.

    Task groups wrap what their tasks raise; the operator must still see "the API refused the key"
    (exit 3), not an exception group (exit 1)."""
    if isinstance(caught, BaseExceptionGroup):
        return next((e for e in map(unwrap_group, caught.exceptions) if e is not None), None)
    return caught if isinstance(caught, PipelineError) else None

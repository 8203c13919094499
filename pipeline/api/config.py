"""Settings for talking to the PhotoGPT API: the secret key and the connection knobs.

This is the only module that reads the environment. Everything here is checked
before any connection is made, so a bad base URL or a readable key file fails
fast with a :class:`~pipeline.errors.ConfigError` instead of leaking the key.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from pipeline import __version__, logs
from pipeline.errors import ConfigError

__all__ = ["ApiConfig", "ApiKey", "load_api_key"]

_DEFAULT_BASE_URL = "https://developer.photogptai.com/api"
_ENV_API_KEY = "PHOTOGPT_API_KEY"
_ENV_API_KEY_FILE = "PHOTOGPT_API_KEY_FILE"
_ENV_BASE_URL = "PHOTOGPT_BASE_URL"

_MASK = "***"


class ApiKey:
    """The API key, wrapped so that ``repr``, ``str`` and f-strings show ``***``.

    Only :meth:`reveal` gives the value (the client's header builder and redaction call
    it). Creating one registers the value with :func:`pipeline.logs.register_secret`.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError("the API key is empty")
        # A key with whitespace or control characters cannot go into a Bearer header intact.
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ConfigError("the API key contains whitespace or control characters")
        self._value = value
        # From here on every log line masks the value, even where it was pasted by mistake.
        logs.register_secret(value)

    def reveal(self) -> str:
        """The secret itself: for the ``Authorization`` header and redaction, nothing else."""
        return self._value

    def __repr__(self) -> str:
        return f"ApiKey('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ApiKey):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((ApiKey, self._value))


def load_api_key(env: Mapping[str, str] | None = None, key_file: Path | None = None) -> ApiKey:
    """Find the API key: ``key_file`` if given, else ``$PHOTOGPT_API_KEY``, else ``$PHOTOGPT_API_KEY_FILE``.

    There is deliberately no command-line flag for the key itself: it would show in
    ``ps`` and the shell history. A key file must not be group- or other-readable.
    """
    env = os.environ if env is None else env
    if key_file is not None:
        return _read_key_file(Path(key_file))
    if _ENV_API_KEY in env:
        if not env[_ENV_API_KEY].strip():
            raise ConfigError(f"{_ENV_API_KEY} is set but empty")
        return ApiKey(env[_ENV_API_KEY].strip())
    if env.get(_ENV_API_KEY_FILE):
        return _read_key_file(Path(env[_ENV_API_KEY_FILE]))
    raise ConfigError(
        f"no API key: set {_ENV_API_KEY}, or write the key to a file (chmod 600) "
        f"and set {_ENV_API_KEY_FILE} to its path"
    )


def _read_key_file(path: Path) -> ApiKey:
    """The first line of ``path``, stripped, refusing files other users can read (as ssh does)."""
    try:
        with path.open("rb") as fh:
            # fstat the open file, not the path, so the checked file is the one read.
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ConfigError(f"API key file {path} is not a regular file")
            if mode & 0o077:
                raise ConfigError(
                    f"API key file {path} is readable by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
                )
            first = fh.readline(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"cannot read API key file {path}: {exc.strerror or exc}") from exc
    try:
        line = first.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"API key file {path} is not UTF-8 text") from exc
    if not line:
        raise ConfigError(f"API key file {path}: the first line is empty")
    return ApiKey(line)


def _default_user_agent() -> str:
    return f"photogpt-pipeline/{__version__} (+aiohttp)"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _normalise_base_url(url: str) -> str:
    """Check that the key may be sent to ``url`` and return it without a trailing slash."""
    if not isinstance(url, str) or not url or any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"base URL {url!r} is empty or contains whitespace")
    if "?" in url or "#" in url:
        raise ConfigError(f"base URL {url!r} must not have a query or fragment")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        raise ConfigError("base URL must not contain user info (user:password@)")
    try:
        host, _port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(f"base URL {url!r} has an invalid port") from exc
    if scheme not in ("http", "https") or not host:
        raise ConfigError(f"base URL {url!r} must be https://host/path")
    if scheme == "http" and not _is_loopback(host):
        raise ConfigError(
            f"base URL {url!r} uses plain http: the key would travel unencrypted; "
            "use https (http is allowed only for 127.0.0.1, ::1 and localhost)"
        )
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiConfig:
    """How to reach the API. Validated on construction; the key's repr is masked.

    Usage::

        config = ApiConfig.from_env()                      # production
        config = ApiConfig(base_url="http://127.0.0.1:8787/api", api_key=ApiKey("test"))
    """

    #: Root of every API path; https, or http on a loopback host only. No trailing slash.
    base_url: str = _DEFAULT_BASE_URL
    api_key: ApiKey
    #: Sent as the ``API-Version`` header on every request.
    api_version: str = "1"
    #: Total time for one request, connect to last byte (the docs' helper uses 120 s).
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    #: Cap on a JSON response body; a bigger one is a ProtocolError, not an OOM.
    max_response_bytes: int = 4 * 1024 * 1024
    #: Cloudflare in front of the API blocks default library user agents (error 1010).
    user_agent: str = field(default_factory=_default_user_agent)
    #: Size of the connection pool (aiohttp ``TCPConnector(limit=...)``).
    max_connections: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, ApiKey):
            raise ConfigError("api_key must be an ApiKey, so that it never prints")
        object.__setattr__(self, "base_url", _normalise_base_url(self.base_url))
        if not self.api_version.strip():
            raise ConfigError("api_version must not be empty")
        if not self.user_agent.strip() or not self.user_agent.isprintable():
            raise ConfigError("user_agent must be printable text")
        if not self.timeout_s > 0 or not self.connect_timeout_s > 0:
            raise ConfigError("timeout_s and connect_timeout_s must be positive")
        if self.max_response_bytes < 1:
            raise ConfigError("max_response_bytes must be at least 1")
        if self.max_connections < 1:
            raise ConfigError("max_connections must be at least 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, key_file: Path | None = None) -> Self:
        """Build from ``$PHOTOGPT_BASE_URL`` (optional) and the key (see :func:`load_api_key`)."""
        env = os.environ if env is None else env
        return cls(
            base_url=env.get(_ENV_BASE_URL) or _DEFAULT_BASE_URL,
            api_key=load_api_key(env, key_file),
        )

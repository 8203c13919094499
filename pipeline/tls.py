"""aiohttp's default TLS contexts, with the system CA certificates loaded when HTTPS first needs them.

Importing ``aiohttp.connector`` builds a verified and an unverified ``SSLContext``; loading the
system CA bundle into them is ~55 ms of CPU, a fifth of the 0.3 s start-up target, that a run
against an ``http://`` base URL (the sandbox, a local gateway) never uses. So while that one module
executes, certificate loading on new contexts is recorded instead of done; :func:`ensure_certs`
does it on the same objects before the first HTTPS request (every client session of ours carries
:func:`trace_config`). After that the contexts are exactly what aiohttp would have built. A session
without the hook that reaches an HTTPS host fails verification: it never connects unverified.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

    import aiohttp

__all__ = ["defer_aiohttp_certs", "ensure_certs", "trace_config"]

_TARGET = "aiohttp.connector"
_DEFERRED = ("load_default_certs", "set_default_verify_paths")
_PROXY_VARS = ("https_proxy", "http_proxy", "all_proxy", "ws_proxy", "wss_proxy")
_pending: list[tuple[ssl.SSLContext, str, tuple[Any, ...]]] = []
_lock = threading.Lock()


@contextlib.contextmanager
def _deferring() -> Iterator[None]:
    """Record, not run, CA loading on SSL contexts built inside the block."""
    import ssl

    saved = {name: ssl.SSLContext.__dict__.get(name) for name in _DEFERRED}

    def recorder(name: str) -> Any:
        def record(self: ssl.SSLContext, *args: Any) -> None:
            with _lock:
                _pending.append((self, name, args))

        return record

    for name in _DEFERRED:
        setattr(ssl.SSLContext, name, recorder(name))
    try:
        yield
    finally:
        for name, original in saved.items():
            if original is None:
                delattr(ssl.SSLContext, name)
            else:
                setattr(ssl.SSLContext, name, original)


class _Finder:  # a meta path finder; not importlib.abc's class, whose import costs start-up
    """One-shot: wraps the execution of ``aiohttp.connector`` in :func:`_deferring`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        inner = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            with _deferring():
                inner(module)

        setattr(spec.loader, "exec_module", exec_module)  # noqa: B010 - this spec's loader only
        return spec


def defer_aiohttp_certs() -> None:
    """Arrange for aiohttp's default contexts to load CA certificates lazily (before it is imported)."""
    if _TARGET in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())


def ensure_certs() -> None:
    """Load the CA certificates aiohttp's import deferred; idempotent and cheap once done."""
    if not _pending:
        return
    with _lock:
        work = list(_pending)
        _pending.clear()
    import ssl

    for context, name, args in work:
        getattr(ssl.SSLContext, name)(context, *args)


def _needs_tls(url_scheme: str) -> bool:
    if url_scheme != "http":
        return True
    return any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARS)


def trace_config() -> aiohttp.TraceConfig:
    """Hooks for a client session: certificates loaded before any HTTPS request or redirect."""
    import aiohttp

    async def on_start(_s: object, _c: SimpleNamespace, params: aiohttp.TraceRequestStartParams) -> None:
        if _pending and _needs_tls(params.url.scheme):
            ensure_certs()

    async def on_redirect(_s: object, _c: SimpleNamespace, _p: aiohttp.TraceRequestRedirectParams) -> None:
        ensure_certs()

    config = aiohttp.TraceConfig()
    config.on_request_start.append(on_start)
    config.on_request_redirect.append(on_redirect)
    config.freeze()
    return config

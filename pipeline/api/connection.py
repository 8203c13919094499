"""``Connection``: one aiohttp session to the API and the one path every request takes.

Each call makes exactly one HTTP attempt (retries belong to the engine: a blindly retried POST
pays twice) and every failure leaves through :meth:`Connection._call`, where
:func:`pipeline.api.answers.map_error` turns it into the most specific class of
:mod:`pipeline.errors`. The key goes only to the base URL's origin: URLs are the base plus a fixed
path with quoted ids, and redirects are never followed.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import aiohttp
import structlog
from yarl import URL

from pipeline.api import wire
from pipeline.api.answers import HttpFailure, map_error, read_envelope, server_date
from pipeline.api.config import ApiConfig
from pipeline.clock import Clock, SystemClock

__all__ = ["Connection", "Pacer", "request_sent_at"]

#: When the current task's last request was handed to aiohttp (our wall clock, after pacing), or None
#: when it never was. Read right after the call returns/raises.
_SENT_AT: ContextVar[datetime | None] = ContextVar("photogpt_request_sent_at", default=None)


def request_sent_at() -> datetime | None:
    """When this task's last request was handed over to be sent: a paid POST's job was created no
    earlier. (Stamped just before the hand-over rather than from an aiohttp trace of the headers
    leaving: the trace cost a few signal dispatches per request on every request, for a bound
    tighter only by the wait for a pooled connection.)"""
    return _SENT_AT.get()


log = structlog.get_logger("pipeline.api.client")  # the client's events, wherever they start

T = TypeVar("T")


class Pacer(Protocol):
    """Spaces API requests (see :class:`pipeline.engine.limits.RequestPacer`)."""

    async def acquire(self) -> None: ...

    def on_answer(self, method: str, status: int | None) -> None: ...


class Connection:
    """The session, the pacing and the request path under :class:`~pipeline.api.client.ApiClient`.

    ``stats`` counts requests per endpoint template (``"GET /jobs/{job_id}"``). A
    ``session`` passed in is used as is and left open on :meth:`aclose`. ``pacer``
    is asked before every request and told every answer's status: the run's
    :class:`~pipeline.engine.limits.RequestPacer` keeps requests under the API's rate
    (:meth:`paced` gives a run its own paced view without changing the client it was handed).
    """

    def __init__(
        self,
        config: ApiConfig,
        *,
        clock: Clock | None = None,
        session: aiohttp.ClientSession | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self._config = config
        self.pacer = pacer
        self._clock: Clock = clock or SystemClock()
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._base = URL(config.base_url)
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s, connect=config.connect_timeout_s)
        self.stats: Counter[str] = Counter()
        self._dates: Callable[[datetime, datetime, datetime], None] | None = None

    async def __aenter__(self) -> Self:
        self._open()
        return self

    def paced(
        self, pacer: Pacer | None, *, dates: Callable[[datetime, datetime, datetime], None] | None = None
    ) -> Self:
        """A view of this client whose requests go through ``pacer``, and whose answers' ``Date``
        headers are told to ``dates`` (sent, answered, date; our clock but the date): same session,
        same ``stats``."""
        self._open()
        view = copy.copy(self)
        view.pacer, view._dates = pacer, dates
        view._owns_session = False  # the original closes the session it opened
        return view

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session if this client created it. Idempotent."""
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("ApiClient is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._config.max_connections),
                timeout=self._timeout,
            )
        return self._session

    # ---- the one request path ---------------------------------------------------------------

    async def _call(
        self,
        method: str,
        template: str,
        *,
        parse: Callable[[Mapping[str, Any]], T],
        params: Mapping[str, str | int] | None = None,
        json_body: Mapping[str, Any] | None = None,
        form: aiohttp.FormData | None = None,
        **ids: str,
    ) -> T:
        """Send one request and parse its envelope; every failure leaves as an ApiError."""
        endpoint = f"{method} {template}"
        url = self._url(template, ids)
        session = self._open()
        pacer = self.pacer
        if pacer is not None:
            await pacer.acquire()
        self.stats[endpoint] += 1
        sent = self._clock.now()
        _SENT_AT.set(sent)
        started = self._clock.monotonic()
        status: int | None = None
        try:
            async with session.request(
                method,
                url,
                params=params,
                json=json_body,
                data=form,
                headers=self._headers(),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                if self._dates is not None and (date := server_date(resp.headers)) is not None:
                    self._dates(sent, self._clock.now(), date)
                envelope = await read_envelope(resp, self._config.max_response_bytes)
            return parse(envelope)
        except Exception as exc:
            # The boundary: any failure of one call -> the most specific ApiError (None: a bug).
            secrets = (self._config.api_key.reveal(),)
            error = map_error(endpoint, exc, status, secrets=secrets, now=self._clock.now())
            if error is None:
                raise
            log.debug("api_error", endpoint=endpoint, status=error.status, error=type(error).__name__,
                      message=error.message, err=error.err)  # fmt: skip
            # Internal signals carry nothing worth chaining; foreign exceptions do.
            raise error from (None if isinstance(exc, HttpFailure) else exc)
        finally:
            if pacer is not None:
                pacer.on_answer(method, status)
            elapsed_ms = round((self._clock.monotonic() - started) * 1000, 1)
            log.debug("api_request", method=method, endpoint=endpoint, status=status, elapsed_ms=elapsed_ms)

    def _url(self, template: str, ids: Mapping[str, str]) -> URL:
        """Base URL plus a fixed path; ids are quoted whole so none can leave the base path."""
        quoted = {name: wire.quote_id(name, value) for name, value in ids.items()}
        return URL(str(self._base) + template.format(**quoted), encoded=True)

    def _headers(self) -> dict[str, str]:
        # Built per request so the revealed key is not kept around in a plain attribute.
        return {
            "Authorization": f"Bearer {self._config.api_key.reveal()}",
            "API-Version": self._config.api_version,
            "Accept": "application/json",
            "User-Agent": self._config.user_agent,
        }

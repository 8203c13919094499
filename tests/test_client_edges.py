"""ApiClient edge cases: exact statuses, headers and malformed bodies (aioresponses), plus the few
wire facts a mock cannot show (multipart layout, redirects, cut-short bodies) on 127.0.0.1.

Behaviour against the simulator lives in ``test_client_wire.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from aioresponses import CallbackResult, aioresponses
from aioresponses import core as aioresponses_core
from yarl import URL

from pipeline.api.client import ApiClient
from pipeline.api.config import ApiConfig, ApiKey
from pipeline.api.records import JobStatus
from pipeline.clock import FakeClock
from pipeline.engine.outcome import SubmitOutcome, classify
from pipeline.errors import (
    ApiError,
    AuthError,
    ConflictError,
    ConnectTimeoutError,
    NotFoundError,
    ProtocolError,
    QuotaExhaustedError,
    RateLimitedError,
    RejectedError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)

BASE = "https://api.photogpt.test/api"
KEY = "sk-edge-5e4d3c2b1a-secret"
GEN = f"{BASE}/images/generation"
JOB = f"{BASE}/jobs/j1"
ANY = re.compile(r".*")
OK_TICKET = {"status": "OK", "result": {"jobId": "j1", "status": "queued"}}
OK_JOB = {"status": "OK", "result": {"jobId": "j1", "status": "running"}}
CLOUDFLARE_502 = (
    "<html><head><title>502 Bad Gateway</title><style>body{color:red}</style></head>"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>cloudflare</center></body></html>"
)


def _config(**overrides: Any) -> ApiConfig:
    return ApiConfig(base_url=overrides.pop("base_url", BASE), api_key=ApiKey(KEY), **overrides)


def _nok(message: str | None = None, err: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"status": "NOK", "result": None, **extra}
    if message is not None:
        body["message"] = message
    if err is not None:
        body["err"] = err
    return body


def _calls(mocked: aioresponses) -> list[tuple[str, URL, dict[str, Any]]]:
    return [(m, u, c.kwargs) for (m, u), calls in mocked.requests.items() for c in calls]


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    return FakeClock()


class _Sent:
    """Stands in for the request's stream writer, which aioresponses does not build."""

    output_size = 0


class _MockResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 predates aiohttp 3.14's required ``stream_writer`` argument
    (pnuckowski/aioresponses#289); supply it until a fixed release exists."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _Sent())
        super().__init__(method, url, **kwargs)


@pytest.fixture(name="mocked")
def _mocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    monkeypatch.setattr(aioresponses_core, "ClientResponse", _MockResponse)
    with aioresponses() as m:
        yield m


@pytest.fixture(name="api")
async def _api(clock: FakeClock) -> AsyncIterator[ApiClient]:
    async with ApiClient(_config(), clock=clock) as client:
        yield client


class TestRequests:
    async def test_every_request_carries_key_version_accept_and_agent(
        self, api: ApiClient, mocked: aioresponses
    ) -> None:
        """Bearer key, API-Version, Accept and our User-Agent on each call; the JSON body as given."""
        mocked.post(GEN, payload=OK_TICKET)
        body = {"modelID": "gpt-image-2", "prompt": "x", "options": {"openai": {"quality": "high"}}}
        ticket = await api.generate_images(body)
        assert (ticket.job_id, ticket.status) == ("j1", JobStatus.QUEUED)
        [(method, url, kwargs)] = _calls(mocked)
        assert (method, str(url)) == ("POST", GEN)
        assert kwargs["headers"] == {
            "Authorization": f"Bearer {KEY}",
            "API-Version": "1",
            "Accept": "application/json",
            "User-Agent": api._config.user_agent,
        }
        assert kwargs["json"] == body
        assert kwargs["allow_redirects"] is False

    @pytest.mark.parametrize(
        ("call", "path"),
        [
            (lambda api: api.get_job("a/b"), "/api/jobs/a%2Fb"),
            (lambda api: api.get_job(".."), "/api/jobs/%2E%2E"),
            (lambda api: api.get_job("."), "/api/jobs/%2E"),
            (lambda api: api.get_job("../../models"), "/api/jobs/..%2F..%2Fmodels"),
            (lambda api: api.get_image("x?y=1#z"), "/api/images/x%3Fy%3D1%23z"),
            (
                lambda api: api.get_video("https://evil.example/x"),
                "/api/videos/https%3A%2F%2Fevil.example%2Fx",
            ),
            (lambda api: api.get_model("a b%"), "/api/models/a%20b%25"),
        ],
    )
    async def test_ids_are_quoted_and_stay_on_the_base_path(
        self, api: ApiClient, mocked: aioresponses, call: Callable[[ApiClient], Awaitable[Any]], path: str
    ) -> None:
        """No id can add a path segment, climb out of the base path, add a query or change host."""
        mocked.get(ANY, status=404, payload=_nok("not found"))
        with pytest.raises(NotFoundError):
            await call(api)
        [(_, url, _)] = _calls(mocked)
        assert (url.host, url.raw_path, url.query_string) == ("api.photogpt.test", path, "")

    async def test_empty_id_is_refused_before_sending(self, api: ApiClient, mocked: aioresponses) -> None:
        """An empty id would address the collection instead of an item."""
        with pytest.raises(ValueError, match="job_id"):
            await api.get_job("")
        assert _calls(mocked) == []

    async def test_list_jobs_sends_rfc3339_z_times(self, api: ApiClient, mocked: aioresponses) -> None:
        """Aware datetimes go out in UTC with a Z; naive ones are refused."""
        mocked.get(ANY, payload={"status": "OK", "result": {"jobs": [], "nextPageToken": ""}})
        ist = timezone(timedelta(hours=5, minutes=30))
        page = await api.list_jobs(
            start=datetime(2026, 1, 1, tzinfo=UTC), end=datetime(2026, 1, 1, 5, 30, 1, tzinfo=ist)
        )
        assert page.jobs == () and page.next_page_token is None
        [(_, url, _)] = _calls(mocked)
        assert dict(url.query) == {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:00:01Z"}
        with pytest.raises(ValueError, match="timezone"):
            await api.list_jobs(start=datetime(2026, 1, 1))

    async def test_iter_jobs_follows_tokens_and_stops_on_a_repeat(
        self, api: ApiClient, mocked: aioresponses
    ) -> None:
        """Pages are followed by nextPageToken; a token seen before ends the walk."""
        pages = {None: ("a", "t1"), "t1": ("b", "t2"), "t2": ("c", "t1")}

        def reply(url: URL, **_: Any) -> CallbackResult:
            job, token = pages[url.query.get("pageToken")]
            return CallbackResult(
                payload={
                    "status": "OK",
                    "result": {"jobs": [{"jobId": job, "status": "success"}], "nextPageToken": token},
                }
            )

        mocked.get(ANY, callback=reply, repeat=True)
        assert [j.job_id async for j in api.iter_jobs()] == ["a", "b", "c"]
        assert api.stats == Counter({"GET /jobs": 3})

    async def test_stats_count_requests_per_endpoint_template(
        self, api: ApiClient, mocked: aioresponses
    ) -> None:
        """Failed calls count too: stats measure traffic, not success."""
        mocked.get(JOB, payload=OK_JOB, repeat=True)
        mocked.post(GEN, status=500, payload=_nok("boom"))
        await api.get_job("j1")
        await api.get_job("j1")
        with pytest.raises(ServerError):
            await api.generate_images({})
        assert api.stats == Counter({"GET /jobs/{job_id}": 2, "POST /images/generation": 1})

    async def test_small_result_shapes(self, api: ApiClient, mocked: aioresponses) -> None:
        """String results, a 204 delete, presets as strings or objects, ping without result."""
        mocked.get(f"{BASE}/models/m1/train", payload={"status": "OK", "result": "Training triggered"})
        mocked.delete(f"{BASE}/images/i1", status=204, body="")
        mocked.delete(
            f"{BASE}/models/m1", payload={"status": "OK", "result": {"id": "m1", "status": "deleted"}}
        )
        mocked.get(
            f"{BASE}/presets",
            payload={"status": "OK", "result": ["editorial", {"tag": "noir", "name": "Noir"}]},
        )
        mocked.get(f"{BASE}/ping", payload={"message": "pong!", "status": "OK"})
        assert await api.train_model("m1") == "Training triggered"
        await api.delete_image("i1")
        deleted = await api.delete_model("m1")
        assert deleted is not None and deleted.status == "deleted"
        assert [p.tag for p in await api.list_presets()] == ["editorial", "noir"]
        await api.ping()


class TestSession:
    async def test_injected_session_is_left_open(self, mocked: aioresponses) -> None:
        """A caller's session belongs to the caller."""
        mocked.get(JOB, payload=OK_JOB)
        async with aiohttp.ClientSession() as session:
            async with ApiClient(_config(), session=session) as api:
                assert (await api.get_job("j1")).status is JobStatus.RUNNING
            assert not session.closed

    async def test_own_session_is_closed_and_the_client_cannot_be_reused(self, mocked: aioresponses) -> None:
        """aclose() closes the client's session; later calls are a programming error."""
        mocked.get(JOB, payload=OK_JOB)
        api = ApiClient(_config())
        await api.get_job("j1")  # the session is created lazily
        session = api._session
        await api.aclose()
        await api.aclose()
        assert session is not None and session.closed
        with pytest.raises(RuntimeError, match="closed"):
            await api.get_job("j1")


class TestStatusMapping:
    @pytest.mark.parametrize(
        ("status", "error"),
        [
            (400, RejectedError),
            (401, AuthError),
            (403, AuthError),
            (404, NotFoundError),
            (409, ConflictError),
            (413, RejectedError),
            (422, RejectedError),
            (500, ServerError),
            (503, ServerError),
        ],
    )
    async def test_nok_statuses(
        self, api: ApiClient, mocked: aioresponses, status: int, error: type[ApiError]
    ) -> None:
        """Each code gets its class, with the NOK message, err, status and endpoint template."""
        mocked.get(JOB, status=status, payload=_nok("Something is wrong", "E_DETAIL"))
        with pytest.raises(error) as info:
            await api.get_job("j1")
        exc = info.value
        assert type(exc) is error
        assert (exc.status, exc.endpoint, exc.message, exc.err) == (
            status,
            "GET /jobs/{job_id}",
            "Something is wrong",
            "E_DETAIL",
        )
        assert str(exc) == f"GET /jobs/{{job_id}} HTTP {status}: Something is wrong"
        assert exc.__cause__ is None

    async def test_html_502_is_a_server_error_with_a_short_excerpt(
        self, api: ApiClient, mocked: aioresponses
    ) -> None:
        """A proxy's HTML page becomes a retryable ServerError quoting its text, tags stripped."""
        mocked.get(JOB, status=502, body=CLOUDFLARE_502, content_type="text/html")
        with pytest.raises(ServerError) as info:
            await api.get_job("j1")
        assert info.value.retryable and info.value.status == 502
        assert info.value.message == "502 Bad Gateway 502 Bad Gateway cloudflare"

    async def test_cloudflare_403_page_is_an_auth_error(self, api: ApiClient, mocked: aioresponses) -> None:
        """Cloudflare's bot block (error 1010) stops the run like a bad key."""
        mocked.post(GEN, status=403, body="error code: 1010", content_type="text/plain")
        with pytest.raises(AuthError) as info:
            await api.generate_images({})
        assert info.value.exit_code == 3 and info.value.message == "error code: 1010"

    async def test_empty_error_body_falls_back_to_the_reason(
        self, api: ApiClient, mocked: aioresponses
    ) -> None:
        """No NOK message and no body: the HTTP reason phrase."""
        mocked.get(JOB, status=500, body="")
        with pytest.raises(ServerError) as info:
            await api.get_job("j1")
        assert info.value.message == "Internal Server Error"

    async def test_nested_and_reason_messages_are_read(self, api: ApiClient, mocked: aioresponses) -> None:
        """Undocumented ``reason`` / ``error.message`` shapes still give a message."""
        mocked.get(JOB, status=400, payload={"status": "NOK", "error": {"message": "prompt too long"}})
        with pytest.raises(RejectedError, match="prompt too long"):
            await api.get_job("j1")

    @pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
    async def test_redirects_are_protocol_errors_and_not_followed(
        self, api: ApiClient, mocked: aioresponses, status: int
    ) -> None:
        """A 3xx is never followed, so the Authorization header cannot reach another host."""
        mocked.get(JOB, status=status, headers={"Location": "https://evil.example/steal"}, body="")
        mocked.get("https://evil.example/steal", payload=OK_JOB)
        with pytest.raises(ProtocolError) as info:
            await api.get_job("j1")
        assert info.value.status == status and "redirect" in info.value.message
        assert "evil.example" not in str(info.value)
        assert [str(u) for _, u, _ in _calls(mocked)] == [JOB]


class TestQuotaAndRateLimits:
    @pytest.mark.parametrize("status", [402, 400, 403, 429, 500, 200])
    @pytest.mark.parametrize(
        ("message", "err"),
        [
            ("insufficient credits", None),
            ("Quota exceeded for this billing period", None),
            ("You are out of credits", None),
            ("payment required", "INSUFFICIENT_CREDITS"),
        ],
    )
    async def test_quota_text_wins_over_the_status_code(
        self, api: ApiClient, mocked: aioresponses, status: int, message: str, err: str | None
    ) -> None:
        """Whatever the code, a credits/quota message is QuotaExhaustedError: exit 5, never retried."""
        mocked.post(GEN, status=status, payload=_nok(message, err))
        with pytest.raises(QuotaExhaustedError) as info:
            await api.generate_images({})
        assert info.value.exit_code == 5 and not info.value.retryable
        assert info.value.status == status and info.value.message == message

    @pytest.mark.parametrize(
        "message", ["rate limit exceeded", "Too many requests: quota of 10 rps", "slow down"]
    )
    async def test_429_rate_limit_stays_retryable(
        self, api: ApiClient, mocked: aioresponses, message: str
    ) -> None:
        """A 429 that talks about rate (even mentioning a quota) is a RateLimitedError."""
        mocked.post(GEN, status=429, payload=_nok(message))
        with pytest.raises(RateLimitedError) as info:
            await api.generate_images({})
        assert info.value.retryable and info.value.retry_after_s is None

    @pytest.mark.parametrize(
        ("header", "body_hint", "expected"),
        [
            ("7", None, 7.0),
            ("0", None, 0.0),
            (" 2.5 ", None, 2.5),
            ("http-date:+30", None, 30.0),
            ("http-date:-30", None, 0.0),
            ("http-date:+86400", None, 600.0),
            ("99999999", None, 600.0),
            ("soon", None, None),
            ("-5", None, None),
            ("inf", None, None),
            ("", None, None),
            (None, 12, 12.0),
            (None, 1e9, 600.0),
            (None, "12", None),
            (None, -1, None),
            (None, True, None),
            ("garbage", 3, 3.0),
            ("4", 30, 4.0),
            (None, None, None),
        ],
    )
    async def test_retry_after(
        self,
        api: ApiClient,
        mocked: aioresponses,
        clock: FakeClock,
        header: str | None,
        body_hint: Any,
        expected: float | None,
    ) -> None:
        """Delta-seconds or an HTTP-date (against the injected clock), or a body retry_after;
        clamped to [0, 600]; unreadable values give None so the scheduler's backoff decides."""
        clock.advance(1234)  # the date must be read against this clock, not the wall clock
        if header is not None and header.startswith("http-date:"):
            header = format_datetime(clock.now() + timedelta(seconds=float(header[10:])), usegmt=True)
        extra = {} if body_hint is None else {"retry_after": body_hint}
        mocked.get(
            JOB,
            status=429,
            payload=_nok("rate limited", **extra),
            headers={} if header is None else {"Retry-After": header},
        )
        with pytest.raises(RateLimitedError) as info:
            await api.get_job("j1")
        assert info.value.retry_after_s == expected


class TestMalformedSuccess:
    async def test_truncated_json_names_the_endpoint(self, api: ApiClient, mocked: aioresponses) -> None:
        """A 200 whose JSON stops half-way is a ProtocolError naming the endpoint, with an excerpt."""
        mocked.post(GEN, body='{"status":"OK","result":{"jobId":"j', content_type="application/json")
        with pytest.raises(ProtocolError) as info:
            await api.generate_images({})
        exc = info.value
        assert exc.endpoint == "POST /images/generation" and exc.status == 200
        assert str(exc).startswith("POST /images/generation HTTP 200: ")
        assert '{"status":"OK","result":{"jobId":"j' in exc.message
        assert isinstance(exc.__cause__, Exception)

    async def test_html_at_200_is_a_protocol_error(self, api: ApiClient, mocked: aioresponses) -> None:
        """An HTML page with a 200 (a captive portal, a CDN page) is not JSON."""
        mocked.get(JOB, body=CLOUDFLARE_502 * 20, content_type="text/html")
        with pytest.raises(ProtocolError) as info:
            await api.get_job("j1")
        assert "not JSON" in info.value.message and "<" not in info.value.message
        assert len(info.value.message) < 260

    async def test_nok_envelope_under_200_is_mapped(self, api: ApiClient, mocked: aioresponses) -> None:
        """{"status":"NOK"} with HTTP 200 is the server refusing: RejectedError with its message."""
        mocked.post(GEN, payload=_nok("modelID is required", "E_VALIDATION"))
        with pytest.raises(RejectedError) as info:
            await api.generate_images({})
        assert (info.value.status, info.value.message, info.value.err) == (
            200,
            "modelID is required",
            "E_VALIDATION",
        )

    @pytest.mark.parametrize(
        ("payload", "fragment"),
        [
            ({"status": "OK", "result": ["j1"]}, "wrong shape"),
            ({"status": "OK", "result": {"status": "queued"}}, "'jobId'"),
            ({"status": "OK", "result": {"jobId": 7, "status": "queued"}}, "'jobId'"),
            ({"status": "OK"}, "wrong shape"),
            ({"result": {"jobId": "j1", "status": "queued"}}, 'not "OK"'),
            ({"status": "FINE", "result": {}}, 'not "OK"'),
            ([1, 2, 3], "not a JSON object"),
            ("OK", "not a JSON object"),
        ],
    )
    async def test_wrong_shapes_are_protocol_errors(
        self, api: ApiClient, mocked: aioresponses, payload: Any, fragment: str
    ) -> None:
        """Anything but {"status":"OK","result":<the documented shape>} is a ProtocolError."""
        mocked.post(GEN, body=json.dumps(payload))
        with pytest.raises(ProtocolError) as info:
            await api.generate_images({})
        assert fragment in info.value.message and info.value.endpoint == "POST /images/generation"

    @pytest.mark.parametrize(
        ("call", "url", "payload"),
        [
            (lambda api: api.list_models(), f"{BASE}/models", {"status": "OK", "result": {"id": "m"}}),
            (lambda api: api.list_models(), f"{BASE}/models", {"status": "OK", "result": ["m1"]}),
            (
                lambda api: api.train_model("m1"),
                f"{BASE}/models/m1/train",
                {"status": "OK", "result": {"ok": 1}},
            ),
            (
                lambda api: api.get_video_download("v1"),
                f"{BASE}/videos/v1/download",
                {"status": "OK", "result": {"url": "u"}},
            ),
        ],
    )
    async def test_result_shape_is_checked_per_endpoint(
        self,
        api: ApiClient,
        mocked: aioresponses,
        call: Callable[[ApiClient], Awaitable[Any]],
        url: str,
        payload: Any,
    ) -> None:
        """Lists, strings and records are each checked, never trusted."""
        mocked.get(url, payload=payload)
        with pytest.raises(ProtocolError):
            await call(api)

    async def test_body_over_the_cap_is_refused(self, mocked: aioresponses) -> None:
        """More than max_response_bytes is a ProtocolError, counted as bytes arrive."""
        big = json.dumps({"status": "OK", "result": {"jobId": "j1", "status": "queued", "pad": "x" * 500}})
        mocked.get(JOB, body=big)
        mocked.get(JOB, body="{}", headers={"Content-Length": str(10**9)})
        mocked.get(JOB, status=500, body="E" * 5000, content_type="text/plain")
        async with ApiClient(_config(max_response_bytes=256)) as api:
            with pytest.raises(ProtocolError, match="256-byte limit"):
                await api.get_job("j1")
            with pytest.raises(ProtocolError, match="256-byte limit"):
                await api.get_job("j1")
            with pytest.raises(ServerError) as info:  # an error stays an error; its excerpt is capped
                await api.get_job("j1")
            assert len(info.value.message) <= 200


class TestTransport:
    @pytest.mark.parametrize(
        "exc",
        [
            aiohttp.ClientConnectionError("Connection refused"),
            aiohttp.ServerDisconnectedError(),
            aiohttp.ClientPayloadError("Response payload is not completed"),
            ConnectionResetError(104, "Connection reset by peer"),
            OSError(113, "No route to host"),
        ],
    )
    async def test_no_answer_is_a_retryable_transport_error(
        self, api: ApiClient, mocked: aioresponses, exc: Exception
    ) -> None:
        """Connection failures become TransportError, chained to the original."""
        mocked.post(GEN, exception=exc)
        with pytest.raises(TransportError) as info:
            await api.generate_images({})
        assert type(info.value) is TransportError
        assert (
            info.value.retryable
            and info.value.status is None
            and info.value.endpoint == "POST /images/generation"
        )
        assert info.value.__cause__ is exc

    @pytest.mark.parametrize(
        "exc", [TimeoutError(), aiohttp.ServerTimeoutError("read"), aiohttp.SocketTimeoutError("read")]
    )
    async def test_timeouts_are_request_timeout_errors(
        self, api: ApiClient, mocked: aioresponses, exc: Exception
    ) -> None:
        """asyncio and aiohttp read/total timeouts become RequestTimeoutError: the request may have
        been sent, so for a POST the outcome is unknown."""
        mocked.post(GEN, exception=exc)
        with pytest.raises(RequestTimeoutError) as info:
            await api.generate_images({})
        assert info.value.retryable and info.value.__cause__ is exc
        assert classify(info.value) is SubmitOutcome.UNCERTAIN_SILENT

    async def test_a_connect_timeout_sent_nothing(self, api: ApiClient, mocked: aioresponses) -> None:
        """aiohttp's connect timeout: no connection, nothing sent: safe to send again."""
        exc = aiohttp.ConnectionTimeoutError("connect")
        mocked.post(GEN, exception=exc)
        with pytest.raises(ConnectTimeoutError) as info:
            await api.generate_images({})
        assert info.value.retryable and info.value.__cause__ is exc
        assert not isinstance(info.value, RequestTimeoutError)
        assert classify(info.value) is SubmitOutcome.NOT_SENT


class TestSecrets:
    async def test_echoed_key_is_redacted_everywhere(self, api: ApiClient, mocked: aioresponses) -> None:
        """A server echoing the key or a Bearer token in message, err or body never shows it."""
        mocked.get(JOB, status=401, payload=_nok(f"bad key {KEY}", f"Authorization: Bearer {KEY}"))
        mocked.get(
            JOB, status=502, body=f"<p>upstream said Authorization: Bearer sk-other-token and {KEY}</p>"
        )
        mocked.post(GEN, body="x" * 190 + KEY)  # the key straddles the excerpt's cut
        errors: list[ApiError] = []
        for call in (api.get_job("j1"), api.get_job("j1"), api.generate_images({})):
            with pytest.raises(ApiError) as info:
                await call
            errors.append(info.value)
        text = " ".join(f"{e} {e!r} {e.message} {e.err}" for e in errors)
        assert KEY not in text and KEY[:8] not in text and "sk-other-token" not in text
        assert "Bearer ***" in text

    async def test_debug_logs_carry_endpoint_and_status_but_no_key(
        self, api: ApiClient, mocked: aioresponses
    ) -> None:
        """api_request and api_error events at debug level, without headers or the key."""
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
        mocked.get(JOB, payload=OK_JOB)
        mocked.get(JOB, status=404, payload=_nok("no such job", "E_NOT_FOUND"))
        with structlog.testing.capture_logs() as events:
            await api.get_job("j1")
            with pytest.raises(NotFoundError):
                await api.get_job("j1")
        requests = [e for e in events if e["event"] == "api_request"]
        assert [(e["method"], e["endpoint"], e["status"]) for e in requests] == [
            ("GET", "GET /jobs/{job_id}", 200),
            ("GET", "GET /jobs/{job_id}", 404),
        ]
        assert all(isinstance(e["elapsed_ms"], float) for e in requests)
        [error] = [e for e in events if e["event"] == "api_error"]
        assert (error["error"], error["err"], error["status"]) == ("NotFoundError", "E_NOT_FOUND", 404)
        assert all(e["log_level"] == "debug" and "headers" not in e for e in events)
        assert KEY not in repr(events)


# ---- on the wire, 127.0.0.1 --------------------------------------------------------------------


@pytest.fixture(name="serve")
async def _serve() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    """Start little aiohttp apps on 127.0.0.1; yields a function returning each one's origin."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> str:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


class TestOnTheWire:
    async def test_upload_is_multipart_with_a_file_part_and_a_json_data_part(
        self, serve: Callable[[web.Application], Awaitable[str]]
    ) -> None:
        """file has its name and a guessed image type; data is a JSON string typed application/json."""
        seen: dict[str, Any] = {}

        async def upload(request: web.Request) -> web.Response:
            seen["headers"] = dict(request.headers)
            reader = await request.multipart()
            async for part in reader:
                assert isinstance(part, aiohttp.BodyPartReader)
                seen[part.name or ""] = (part.filename, part.headers.get("Content-Type"), await part.read())
            return web.json_response(
                {"status": "OK", "result": {"id": "i1", "modelID": "m1", "type": "modelInput"}}
            )

        async def generate(request: web.Request) -> web.Response:
            seen["json_type"] = request.content_type
            return web.json_response(OK_TICKET)

        app = web.Application()
        app.router.add_post("/api/images/upload", upload)
        app.router.add_post("/api/images/generation", generate)
        origin = await serve(app)
        async with ApiClient(_config(base_url=f"{origin}/api/")) as api:
            image = await api.upload_image(
                model_id="m1", image_type="modelInput", data=b"\x89PNG-bytes", filename="dir/p1.PNG"
            )
            await api.generate_images({"prompt": "x"})
        assert image.id == "i1" and image.model_id == "m1"
        assert seen["file"] == ("p1.PNG", "image/png", b"\x89PNG-bytes")
        filename, ctype, raw = seen["data"]
        assert filename is None and ctype == "application/json"
        assert json.loads(raw) == {"modelID": "m1", "type": "modelInput"}
        headers = seen["headers"]
        assert headers["Content-Type"].startswith("multipart/form-data; boundary=")
        assert headers["Authorization"] == f"Bearer {KEY}" and headers["API-Version"] == "1"
        assert headers["User-Agent"].startswith("photogpt-pipeline/")
        assert seen["json_type"] == "application/json"

    async def test_redirect_to_another_host_never_reaches_it(
        self, serve: Callable[[web.Application], Awaitable[str]]
    ) -> None:
        """A real 307 to a second server: ProtocolError, and the second server sees nothing."""
        hits: list[dict[str, str]] = []

        async def trap(request: web.Request) -> web.Response:
            hits.append(dict(request.headers))
            return web.json_response(OK_JOB)

        other = web.Application()
        other.router.add_route("*", "/{tail:.*}", trap)
        other_origin = await serve(other)

        async def bounce(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(f"{other_origin}/steal")

        api_app = web.Application()
        api_app.router.add_route("*", "/{tail:.*}", bounce)
        origin = await serve(api_app)
        async with ApiClient(_config(base_url=f"{origin}/api")) as api:
            with pytest.raises(ProtocolError) as info:
                await api.get_job("j1")
        assert info.value.status == 307 and hits == []

    async def test_quoted_ids_arrive_as_one_segment(
        self, serve: Callable[[web.Application], Awaitable[str]]
    ) -> None:
        """On the wire too, dot-segments and slashes stay inside the id's segment."""
        paths: list[str] = []

        async def record(request: web.Request) -> web.Response:
            paths.append(request.raw_path)
            return web.json_response(_nok("no such job"), status=404)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        origin = await serve(app)
        async with ApiClient(_config(base_url=f"{origin}/api")) as api:
            for job_id in ("..", "../../ping", "a/b"):
                with pytest.raises(NotFoundError):
                    await api.get_job(job_id)
        assert paths == ["/api/jobs/%2E%2E", "/api/jobs/..%2F..%2Fping", "/api/jobs/a%2Fb"]

    async def test_cut_short_body_and_stalled_server(self) -> None:
        """Content-Length promised but the connection closes: TransportError; no answer: timeout."""
        release = asyncio.Event()
        handlers: list[asyncio.Task[Any]] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handlers.append(asyncio.current_task())  # type: ignore[arg-type]
            request = await reader.readuntil(b"\r\n\r\n")
            if b"/jobs/short" in request:
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                writer.write(head + b'{"status":')
                await writer.drain()
            else:
                await release.wait()  # stall until the client has given up
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            config = _config(base_url=f"http://127.0.0.1:{port}/api", timeout_s=0.05)
            async with ApiClient(config) as api:
                with pytest.raises(TransportError) as cut:
                    await api.get_job("short")
                assert type(cut.value) is TransportError
                assert isinstance(cut.value.__cause__, aiohttp.ClientPayloadError)
                with pytest.raises(RequestTimeoutError):
                    await api.get_job("stall")
        finally:
            release.set()
            await asyncio.gather(*handlers, return_exceptions=True)
            server.close()
            await server.wait_closed()

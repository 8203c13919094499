"""The submit path's exception ladder as a table: only failures that prove nothing was created are
sent again; everything that may have created a job goes to reconciliation."""

from __future__ import annotations

import pytest

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


class TestClassify:
    @pytest.mark.parametrize(
        ("error", "outcome"),
        [
            (AuthError("no", status=401), SubmitOutcome.AUTH),
            (QuotaExhaustedError("broke", status=402), SubmitOutcome.QUOTA),
            (RateLimitedError("slow", status=429), SubmitOutcome.RATE_LIMITED),
            (ConflictError("busy", status=409), SubmitOutcome.CONFLICT),
            (RejectedError("bad", status=422), SubmitOutcome.REJECTED),
            (NotFoundError("gone", status=404), SubmitOutcome.REJECTED),
            (ServerError("oops", status=500), SubmitOutcome.UNCERTAIN),
            (ServerError("lost", status=502), SubmitOutcome.UNCERTAIN),
            (ServerError("busy", status=503), SubmitOutcome.UNCERTAIN),
            (ServerError("gateway gave up", status=504), SubmitOutcome.UNCERTAIN_SILENT),
            (ProtocolError("garbled 2xx", status=200), SubmitOutcome.UNCERTAIN),
            (ProtocolError("malformed HTTP"), SubmitOutcome.UNCERTAIN_SILENT),
            (RequestTimeoutError("read timeout"), SubmitOutcome.UNCERTAIN_SILENT),
            (ConnectTimeoutError("connect timeout"), SubmitOutcome.NOT_SENT),
            (TransportError("reset"), SubmitOutcome.UNCERTAIN_SILENT),
            (ApiError("teapot", status=418), SubmitOutcome.NOT_SENT),
        ],
        ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
    )
    def test_table(self, error: ApiError, outcome: SubmitOutcome) -> None:
        assert classify(error) is outcome

    def test_a_refused_connection_sent_nothing(self) -> None:
        error = TransportError("refused")
        error.__cause__ = ConnectionRefusedError()
        assert classify(error) is SubmitOutcome.NOT_SENT

    def test_only_the_uncertain_outcomes_go_to_reconciliation(self) -> None:
        assert {o for o in SubmitOutcome if o.uncertain} == {
            SubmitOutcome.UNCERTAIN,
            SubmitOutcome.UNCERTAIN_SILENT,
        }

"""What a failed paid POST means for the money: one pure decision, table-tested and mutation-tested.

The submit path calls :func:`classify` on whatever a POST raised and acts on the
answer. The line it draws is the money rule: only a failure that *proves* nothing
was created may lead to sending the same POST again (``NOT_SENT`` and the refusals:
429, 409, quota); anything that may have created a job is ``UNCERTAIN`` or
``UNCERTAIN_SILENT`` and goes to reconciliation, never straight back to the wire.
"""

from __future__ import annotations

from enum import StrEnum

from pipeline.engine.retry import outcome_is_known
from pipeline.errors import (
    ApiError,
    AuthError,
    ConflictError,
    ProtocolError,
    QuotaExhaustedError,
    RateLimitedError,
    RejectedError,
    ServerError,
)

__all__ = ["SubmitOutcome", "classify"]

#: The gateway gave up waiting for the API: the API may still create the job afterwards.
_GATEWAY_TIMEOUT = 504


class SubmitOutcome(StrEnum):
    """What to do with a unit whose POST raised."""

    #: 429: nothing created; slow the pool down and send it again later.
    RATE_LIMITED = "rate_limited"
    #: Out of credits: stop submitting; the unit stays pending.
    QUOTA = "quota"
    #: 409: nothing created; back off and send it again later.
    CONFLICT = "conflict"
    #: 401/403: nothing will work; the run stops.
    AUTH = "auth"
    #: Another 4xx: the request is wrong; the unit fails.
    REJECTED = "rejected"
    #: Provably nothing sent or created (connection refused, connect timeout, an answered
    #: error that is no 5xx): back to pending, sent again later.
    NOT_SENT = "not_sent"
    #: The server answered, but a job may exist (5xx, a garbled 2xx): it was created, if at
    #: all, before the answer came.
    UNCERTAIN = "uncertain"
    #: No answer (read timeout, reset, 504): a job may exist, created even after we gave up.
    UNCERTAIN_SILENT = "uncertain_silent"

    @property
    def uncertain(self) -> bool:
        return self in (SubmitOutcome.UNCERTAIN, SubmitOutcome.UNCERTAIN_SILENT)


def classify(exc: ApiError) -> SubmitOutcome:
    """The outcome of a paid POST that raised ``exc`` (order matters: subclasses first)."""
    if isinstance(exc, AuthError):
        return SubmitOutcome.AUTH
    if isinstance(exc, QuotaExhaustedError):
        return SubmitOutcome.QUOTA
    if isinstance(exc, RateLimitedError):
        return SubmitOutcome.RATE_LIMITED
    if isinstance(exc, ConflictError):
        return SubmitOutcome.CONFLICT
    if isinstance(exc, RejectedError):
        return SubmitOutcome.REJECTED
    if isinstance(exc, ServerError):
        return SubmitOutcome.UNCERTAIN_SILENT if exc.status == _GATEWAY_TIMEOUT else SubmitOutcome.UNCERTAIN
    if isinstance(exc, ProtocolError):
        return SubmitOutcome.UNCERTAIN if exc.status is not None else SubmitOutcome.UNCERTAIN_SILENT
    if outcome_is_known(exc):  # a 4xx, or a connect-phase failure (timeout, refused, DNS)
        return SubmitOutcome.NOT_SENT
    return SubmitOutcome.UNCERTAIN_SILENT

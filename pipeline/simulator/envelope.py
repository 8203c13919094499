"""The API's JSON envelopes, and the one exception handlers raise to answer NOK.

Handlers raise :class:`ApiFailure` wherever a rule fails; one middleware turns
it into ``{"status":"NOK",...}`` so every error has the documented shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

__all__ = ["ApiFailure", "nok", "ok"]


class ApiFailure(Exception):
    """An error answer: HTTP ``status``, the user-facing ``message`` and an internal ``err`` code."""

    def __init__(
        self, status: int, message: str, err: str = "", headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err = err or message
        self.headers = dict(headers or {})


def ok(result: Any, **extra: Any) -> web.Response:
    """``{"status":"OK","result":...}`` plus any top-level extras (``page``, ``pageSize``)."""
    return web.json_response({"status": "OK", "result": result, **extra})


def nok(failure: ApiFailure, *, drop_message: bool = False, drop_err: bool = False) -> web.Response:
    """The NOK envelope for ``failure``; the switches drop keys so clients prove they cope."""
    body: dict[str, Any] = {"status": "NOK", "message": failure.message, "err": failure.err, "result": None}
    if drop_message:
        del body["message"]
    if drop_err:
        del body["err"]
    return web.json_response(body, status=failure.status, headers=failure.headers)

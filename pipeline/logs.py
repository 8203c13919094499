"""structlog set-up, and the redaction every log line passes through last.

The only module-level mutable state in the package lives here, as in structlog
itself: the renderer choice and the set of secret values to scrub. Redaction
runs after exceptions are formatted, so a key that found its way into a
traceback or an error message is masked too.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO

import structlog

__all__ = ["MASK", "configure", "redact", "register_secret"]

MASK = "***"

#: Event-dict keys whose values are never shown, whatever they hold.
_SENSITIVE_KEYS = frozenset({"authorization", "api_key", "apikey", "key", "token", "password", "cookie"})
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Remember a secret so that :func:`redact` masks it wherever it appears."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    """Mask registered secrets and ``Bearer`` tokens in ``text``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return _BEARER.sub(f"Bearer {MASK}", text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: MASK if str(k).lower() in _SENSITIVE_KEYS else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(repr(value)) if not isinstance(value, str) else value


def _redaction_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for k in list(event_dict):
        event_dict[k] = MASK if k.lower() in _SENSITIVE_KEYS else _redact_value(event_dict[k])
    return event_dict


def configure(
    *,
    fmt: Literal["auto", "console", "json"] = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    extra_processors: Iterable[Any] = (),
    cache: bool = False,
) -> None:
    """Set up structlog: console lines on a terminal, JSON lines otherwise or when asked.

    ``level`` is a standard level name; events below it cost almost nothing. ``cache``: each
    module's logger is built once, at its first event, instead of at every event (~7 us each, a
    dozen per unit of a run); only for a process configured once, as the command line is (a test
    that reconfigures logging, e.g. to capture it, would not reach loggers cached before).
    """
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *extra_processors,
            structlog.processors.format_exc_info,
            _redaction_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=cache,
    )

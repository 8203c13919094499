"""One message when a run ends, to any service Apprise knows: Slack, Teams, Discord, email, ntfy, ….

A nightly run that fails should reach a person without anyone parsing logs, and one
Apprise URL covers the services teams use. The message is one per run, never per
image. A notification is a courtesy: one that fails is logged as ``notify_failed``
with the service's name only (Apprise URLs embed tokens) and never changes the exit
code. Apprise sends synchronously, so it runs in a daemon thread the run waits for
at most ``timeout`` seconds: a hung service cannot keep the process alive.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from pipeline import logs
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.engine.run import RunSummary

__all__ = ["MAX_LISTED_FAILURES", "Outcome", "check_urls", "compose", "notify", "service", "wanted"]

_log = structlog.get_logger("pipeline.cli.notify")

#: Failures listed by name in a message; the rest are counted ("… and N more").
MAX_LISTED_FAILURES = 10
#: How long the run waits for all services together before it gives up on them.
TIMEOUT_S = 30.0

_MEANINGS = {
    0: "everything asked for is done",
    1: "finished, but some work failed or is left",
    2: "bad usage, settings or manifest: nothing was sent",
    3: "the API refused the key, or the preflight ping failed",
    4: "another run holds the state file",
    5: "out of credits, quota or --budget: submissions stopped",
    130: "interrupted: the state is saved, a rerun resumes",
}
_STOPS = {
    "quota": "the account is out of credits",
    "budget": "the --budget was reached",
    "max_runtime": "--max-runtime was reached",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: its exit code and summary, or the error that stopped it; where its output is."""

    name: str
    exit_code: int
    summary: RunSummary | None = None
    error: str | None = None
    out: Path | None = None


def service(url: str) -> str:
    """What a notification URL may be called in logs: its scheme (``slack``, ``json``), never a token."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep and scheme.isascii() and scheme.replace("+", "").isalnum() else "?"


def check_urls(urls: Sequence[str]) -> None:
    """Refuse, before any work, a URL Apprise cannot use; the message names only its scheme."""
    if not urls:
        return  # importing Apprise takes most of a second: only runs that notify pay for it
    import apprise

    for url in urls:
        logs.register_secret(url)  # tokens live in the URL: mask it wherever it might be printed
        if not apprise.Apprise().add(url):
            raise ConfigError(
                f"--notify: Apprise cannot use this {service(url)}:// URL "
                "(see https://github.com/caronc/apprise/wiki for the URL of each service)"
            )


def wanted(outcome: Outcome, notify_on: str) -> bool:
    """``always``: every run; ``failure`` (the default): only runs that exit with a code other than 0."""
    return notify_on == "always" or outcome.exit_code != 0


def compose(outcome: Outcome) -> tuple[str, str]:
    """The message's title and plain-text body: counts, failures with reasons, credits, exit code, report."""
    meaning = _MEANINGS.get(outcome.exit_code, "failed")
    verdict = "finished" if outcome.exit_code == 0 else "needs attention"
    title = f"photogpt-pipeline: {outcome.name} {verdict} (exit {outcome.exit_code})"
    lines = [f"Run of {outcome.name} on {socket.gethostname()}: exit code {outcome.exit_code} ({meaning})."]
    summary = outcome.summary
    if outcome.error:
        cut = outcome.error if len(outcome.error) <= 2000 else outcome.error[:2000] + " …"
        lines.append(f"Stopped by: {cut}")
    if summary is not None:
        counts = ", ".join(f"{n} {phase}" for phase, n in sorted(summary.counts.items()) if n)
        credits = "not known" if summary.credits_spent is None else f"{summary.credits_spent:g}"
        lines.append(f"Units: {counts or 'nothing to do'}.")
        lines.append(
            f"Submitted {summary.submitted}; credits spent {credits}; took {summary.elapsed_s:.0f} s."
        )
        if summary.stopped:
            why = _STOPS.get(summary.stopped, f"{summary.stopped} was reached")
            lines.append(f"Stopped early: {why}; {summary.left} unit(s) left for a rerun.")
        if summary.failures:
            lines.append(f"Failures ({len(summary.failures)}):")
            for f in summary.failures[:MAX_LISTED_FAILURES]:
                lines.append(f"- {f.item_id} {f.step}#{f.index} [{f.phase}]: {f.reason}")
            if len(summary.failures) > MAX_LISTED_FAILURES:
                lines.append(f"… and {len(summary.failures) - MAX_LISTED_FAILURES} more (see the run record)")
    lines.extend(_places(outcome))
    return logs.redact(title), logs.redact("\n".join(lines))


def _places(outcome: Outcome) -> list[str]:
    if outcome.out is None:
        return []
    out = outcome.out.resolve()
    places = []
    if (out / "report.html").is_file():
        places.append(f"Report: {out / 'report.html'}")
    records = sorted((out / "runs").glob("*.json")) if outcome.summary is not None else []
    if records:
        places.append(f"Run record: {records[-1]}")
    return places or [f"Output folder: {out}"]


async def notify(urls: Sequence[str], notify_on: str, outcome: Outcome, *, wait_s: float = TIMEOUT_S) -> None:
    """Send the run's one message to every URL when ``notify_on`` asks; failures are logged, never raised."""
    if not urls or not wanted(outcome, notify_on):
        return
    title, body = compose(outcome)
    await anyio.to_thread.run_sync(_deliver, tuple(urls), title, body, outcome.exit_code != 0, wait_s)


def _deliver(urls: tuple[str, ...], title: str, body: str, failed: bool, timeout: float) -> None:
    """Each URL from a daemon thread, waited for at most ``timeout`` s in all; failures logged by service."""
    results: dict[int, bool | str] = {}
    worker = threading.Thread(
        target=_send_all, args=(urls, title, body, failed, results), name="notify", daemon=True
    )
    worker.start()
    worker.join(timeout)
    for i, url in enumerate(urls):
        result = results.get(i, f"no answer within {timeout:g} s")
        if result is not True:
            reason = result if isinstance(result, str) else "the service refused it or could not be reached"
            _log.warning("notify_failed", service=service(url), reason=reason)
        else:
            _log.info("notified", service=service(url))


def _send_all(
    urls: tuple[str, ...], title: str, body: str, failed: bool, results: dict[int, bool | str]
) -> None:
    import apprise

    quiet = logging.getLogger(apprise.LOGGER_NAME)  # it may quote URLs with tokens: keep it off stderr
    quiet.propagate, quiet.disabled = False, True
    kind = apprise.NotifyType.FAILURE if failed else apprise.NotifyType.SUCCESS
    for i, url in enumerate(urls):
        try:
            sender = apprise.Apprise()
            sender.add(url)
            results[i] = bool(
                sender.notify(body=body, title=title, notify_type=kind, body_format=apprise.NotifyFormat.TEXT)
            )
        except Exception as exc:  # a plugin bug must not end the run's reporting
            results[i] = f"{type(exc).__name__} while sending"

"""Deciding what happened to a submission whose outcome is unknown, without paying twice.

A POST that timed out, was reset after sending, or got a 5xx may or may not
have created a paid job. The API has no idempotency key and no client
reference, so the only evidence is the job list: jobs created in the time span
the server could have created this POST's job in, that no unit of ours has
claimed. The rule is at-most-once:

- no unclaimed job in the unit's span → nothing was created: it may be sent again;
- exactly one unclaimed job in its span, and that job in no other uncertain
  unit's span → that job is ours: adopt it;
- anything else → ``unknown``: reported, resubmitted only on explicit request.

This holds only if every other POST of ours that could have created a job in
the listing was answered and recorded before deciding (the caller waits for that:
:class:`pipeline.engine.inflight.PostLog`); otherwise a job whose reply is still on
its way looks unclaimed. Spans are in the server's clock: ``[sent + lo, answered + hi]``
for the learned skew bounds ``lo <= server - ours <= hi`` (:class:`Skew`), or ``±slack``
while nothing is learned.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pipeline.api.records import JobSummary

__all__ = ["ROUNDING", "Decision", "Skew", "Uncertain", "Verdict", "decide", "span_of", "window_of"]

_ONE = "exactly one unclaimed job in its time span"
#: Listed times are rounded to the millisecond.
ROUNDING = timedelta(milliseconds=1)


class Verdict(StrEnum):
    """What to do with one uncertain submission."""

    RESUBMIT = "resubmit"
    ADOPT = "adopt"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Uncertain:
    """A unit whose POST may or may not have created a job.

    ``intent_at``: our clock just before the POST left. ``until``: the latest our
    clock says the server could have created the job (when its error answer came, or
    later when no answer came); ``None`` when unknown (a run killed mid-POST): then
    ``intent_at`` widened by the slack.
    """

    key: str
    intent_at: datetime
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Skew:
    """Learned bounds on the server's clock minus ours: ``lo <= skew <= hi``."""

    lo: timedelta
    hi: timedelta


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one uncertain unit, with the adopted job id or the reason."""

    key: str
    verdict: Verdict
    job_id: str | None = None
    reason: str = ""


def span_of(u: Uncertain, skew: Skew | None, slack: timedelta) -> tuple[datetime, datetime]:
    """The server-time span ``u``'s job, if any, was created in."""
    end = u.until if u.until is not None else u.intent_at
    if skew is None:
        return u.intent_at - slack, end + slack
    return u.intent_at + skew.lo - ROUNDING, end + skew.hi + ROUNDING


def window_of(
    uncertain: Sequence[Uncertain], skew: Skew | None, slack: timedelta
) -> tuple[datetime, datetime]:
    """The job-list window that covers every span of ``uncertain``."""
    spans = [span_of(u, skew, slack) for u in uncertain]
    return min(s for s, _ in spans), max(e for _, e in spans)


def _inside(job: JobSummary, span: tuple[datetime, datetime]) -> bool:
    # A job listed without a time could be anyone's: it counts for every span.
    return job.created_at is None or span[0] <= job.created_at <= span[1]


def decide(
    uncertain: Sequence[Uncertain],
    listed: Sequence[JobSummary],
    known_job_ids: Collection[str],
    *,
    slack: timedelta,
    skew: Skew | None = None,
    rivals: Sequence[Uncertain] = (),
) -> list[Decision]:
    """Apply the at-most-once rule to ``uncertain`` units given the jobs the server listed.

    ``listed`` must cover :func:`window_of` the same units and every POST of ours
    that could be in it must be recorded in ``known_job_ids`` or be uncertain:
    in ``uncertain`` or ``rivals`` (uncertain units not decided now, and units left
    ``unknown``, whose jobs may exist unclaimed).
    """
    unclaimed = [j for j in listed if j.job_id not in known_job_ids]
    everyone = [*uncertain, *rivals]
    spans = {id(u): span_of(u, skew, slack) for u in everyone}
    decisions: list[Decision] = []
    for u in uncertain:
        near = [j for j in unclaimed if _inside(j, spans[id(u)])]
        if not near:
            decisions.append(Decision(u.key, Verdict.RESUBMIT, reason="no job was created in its time span"))
            continue
        shared = [v for v in everyone if v is not u and any(_inside(j, spans[id(v)]) for j in near)]
        if len(near) == 1 and not shared:
            decisions.append(Decision(u.key, Verdict.ADOPT, job_id=near[0].job_id, reason=_ONE))
            continue
        why = f"{len(near)} unclaimed job(s) in its time span"
        if shared:
            why += f", {len(shared)} other uncertain submission(s) could own them"
        decisions.append(Decision(u.key, Verdict.UNKNOWN, reason=why + "; cannot tell which is ours"))
    return decisions

"""Deciding what happened to a submission whose outcome is unknown, without paying twice.

A POST that timed out, was reset after sending, or got a 5xx may or may not
have created a paid job. The API has no idempotency key and no client
reference, so the only evidence is the job list: jobs created in a time window
that no unit of ours has claimed. The rule is at-most-once:

- no unclaimed job in the window of the uncertain submissions → nothing was
  created: they may be sent again;
- exactly one uncertain submission and exactly one unclaimed job in its window
  → that job is ours: adopt it;
- anything else → ``unknown``: reported, resubmitted only on explicit request.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pipeline.api.records import JobSummary

__all__ = ["Decision", "Uncertain", "Verdict", "decide", "window_of"]

_ONE = "exactly one unclaimed job near its submission"


class Verdict(StrEnum):
    """What to do with one uncertain submission."""

    RESUBMIT = "resubmit"
    ADOPT = "adopt"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Uncertain:
    """A unit whose POST may or may not have created a job, and when its intent was recorded."""

    key: str
    intent_at: datetime


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one uncertain unit, with the adopted job id or the reason."""

    key: str
    verdict: Verdict
    job_id: str | None = None
    reason: str = ""


def window_of(uncertain: Sequence[Uncertain], now: datetime, slack: timedelta) -> tuple[datetime, datetime]:
    """The job-list window that covers every uncertain intent, widened by ``slack`` for clock skew."""
    start = min(u.intent_at for u in uncertain) - slack
    return start, max(now, start + slack)


def decide(
    uncertain: Sequence[Uncertain],
    listed: Sequence[JobSummary],
    known_job_ids: Collection[str],
    *,
    slack: timedelta,
) -> list[Decision]:
    """Apply the at-most-once rule to ``uncertain`` units given the jobs the server listed.

    ``listed`` must cover :func:`window_of` the same units and must have been
    fetched when no other submission of this process was in flight.
    """
    unclaimed = [j for j in listed if j.job_id not in known_job_ids]
    if not unclaimed:
        return [Decision(u.key, Verdict.RESUBMIT, reason="no job was created") for u in uncertain]
    if len(uncertain) == 1 and len(unclaimed) == 1:
        only = uncertain[0]
        return [Decision(only.key, Verdict.ADOPT, job_id=unclaimed[0].job_id, reason=_ONE)]
    decisions: list[Decision] = []
    for u in uncertain:
        near = [j for j in unclaimed if j.created_at is None or abs(j.created_at - u.intent_at) <= slack]
        others = [v for v in uncertain if v is not u and abs(v.intent_at - u.intent_at) <= 2 * slack]
        if not near:
            decisions.append(Decision(u.key, Verdict.RESUBMIT, reason="no job was created near its intent"))
        elif len(near) == 1 and not others:
            decisions.append(Decision(u.key, Verdict.ADOPT, job_id=near[0].job_id, reason=_ONE))
        else:
            decisions.append(
                Decision(
                    u.key,
                    Verdict.UNKNOWN,
                    reason=f"{len(near)} unclaimed job(s) near its submission; cannot tell which is ours",
                )
            )
    return decisions

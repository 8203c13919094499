"""Deciding what happened to a submission whose outcome is unknown, without paying twice.

A POST that timed out, was reset after sending, or got a 5xx may or may not
have created a paid job. The API has no idempotency key and no client
reference, so the only evidence is the job list: jobs created in the time span
the server could have created this POST's job in, that no unit of ours has
claimed. The rule is at-most-once:

- no unclaimed job in the unit's span → nothing was created: it may be sent again;
- one job the unit owns in *every* way of explaining the unclaimed jobs → adopt it;
- anything else → ``unknown``: reported, resubmitted only on explicit request.

"Explaining" is a matching: every unclaimed job inside some uncertain unit's span
was created by one of those units (each creates at most one job), never by
someone else. Two lost replies whose spans overlap are then both resolved unless
each job sits in both spans (sent within a few milliseconds of each other). A job
no uncertain unit's span holds is someone else's and is ignored. If the jobs cannot
be explained at all (more jobs than units could have made), nothing is adopted.

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

_ONE = "the one job in its time span that no other submission of ours can account for"
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
    ``intent_at`` widened by the slack, whatever is known of the server's clock.
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
    if u.until is None:  # killed mid-POST: sent and answered whenever; the clock's skew does not help
        return u.intent_at - slack, u.intent_at + slack
    if skew is None:
        return u.intent_at - slack, u.until + slack
    return u.intent_at + skew.lo - ROUNDING, u.until + skew.hi + ROUNDING


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
    owners = [*uncertain, *rivals]
    spans = [span_of(o, skew, slack) for o in owners]
    jobs = [j for j in listed if j.job_id not in known_job_ids and any(_inside(j, s) for s in spans)]
    near = [[k for k, j in enumerate(jobs) if _inside(j, span)] for span in spans]
    decisions: list[Decision] = []
    for i, u in enumerate(uncertain):
        if not near[i]:
            decisions.append(Decision(u.key, Verdict.RESUBMIT, reason="no job was created in its time span"))
            continue
        # If u may have made nothing, it may as well have made any job in its span (the owner of
        # that job in the matching can do without it): so None is possible only with every job.
        possible = [k for k in (None, *near[i]) if _explained(near, len(jobs), fixed=(i, k))]
        if len(possible) == 1 and possible[0] is not None:
            decisions.append(Decision(u.key, Verdict.ADOPT, job_id=jobs[possible[0]].job_id, reason=_ONE))
            continue
        why = f"{len(near[i])} unclaimed job(s) in its time span; "
        why += "cannot tell which is ours" if possible else "more than our submissions can account for"
        decisions.append(Decision(u.key, Verdict.UNKNOWN, reason=why))
    return decisions


def _explained(near: list[list[int]], n_jobs: int, *, fixed: tuple[int, int | None]) -> bool:
    """Whether every job can be given its own owner (``near[owner]``: the jobs in its span), with
    owner ``fixed[0]`` given job ``fixed[1]`` (None: no job). Augmenting paths (Kuhn's algorithm)."""
    me, mine = fixed
    owner_of: dict[int, int] = {} if mine is None else {mine: me}

    def assign(job: int, tried: set[int]) -> bool:
        for owner, options in enumerate(near):
            if owner == me or owner in tried or job not in options:
                continue
            tried.add(owner)
            held = next((j for j, o in owner_of.items() if o == owner), None)
            if held is None or assign_away(held, owner, tried):
                owner_of[job] = owner
                return True
        return False

    def assign_away(held: int, owner: int, tried: set[int]) -> bool:
        del owner_of[held]
        if assign(held, tried):
            return True
        owner_of[held] = owner
        return False

    return all(job in owner_of or assign(job, set()) for job in range(n_jobs))

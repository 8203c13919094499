"""A unit's life: its phases, the events that move it, and every allowed transition with its reason.

One unit of paid work (item × variant × step × index) lives through these phases::

    pending ──intent──▶ submitting ──accepted/adopted──▶ submitted ──job_succeeded──▶ succeeded
       ▲                  │  │  │                          │  │                          │
       │   refused,       │  │  └─ambiguous──▶ unknown ◀──vanished                   fetching
       └── nothing_created┘  └─invalid──▶ failed ◀──job_failed                          ▼
                                                                        done ◀──fetched── downloading
    done ──reject──▶ rejected ──regenerate──▶ superseded ──requeue──▶ pending   (the review loop)

The rule this table exists for: **a POST leaves only right after ``intent``, and ``intent`` is
allowed only from ``pending``.** Every way back to ``pending`` from a phase where a job may exist is
either proof that nothing was created (``refused``: the answer says so; ``nothing_created``: the job
list shows no job in the POST's window) or an operator's explicit choice to pay again
(``retry_failed``, ``resubmit_unknown``, ``requeue`` after a rejection). Both state stores enforce
this table on every write, and the engine asks it before acting, so a new path to a second payment
has to be added here, in plain sight, with its reason.

``downloading`` is a phase of the current run only: on disk it is ``succeeded`` (a crash mid-download
resumes from the recorded outputs, paying nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from pipeline.errors import StateError

__all__ = [
    "PERSISTED",
    "TRANSITIONS",
    "Ending",
    "Event",
    "Phase",
    "Transition",
    "advance",
    "allowed_from",
    "can",
]


class Phase(StrEnum):
    """Where a unit stands. Only ``pending`` may lead to a POST; every other phase means paid or parked."""

    PENDING = "pending"
    SUBMITTING = "submitting"  #: intent durable; the POST may or may not have left
    SUBMITTED = "submitted"  #: job id known and durable
    SUCCEEDED = "succeeded"  #: job finished, outputs recorded, downloads outstanding
    DOWNLOADING = "downloading"  #: this run is fetching the outputs (``succeeded`` on disk)
    DONE = "done"  #: every output downloaded, verified and recorded
    FAILED = "failed"  #: permanent failure with a reason; only ``retry_failed`` retries it
    UNKNOWN = "unknown"  #: outcome unknowable (lost answer, vanished job); paying again needs the operator
    REJECTED = "rejected"  #: a reviewer rejected an output; kept until regenerated or the verdict is undone
    SUPERSEDED = "superseded"  #: its files moved to ``.rejected/``; a new generation is about to start


#: Phases a state store writes (``downloading`` lives only in a run's memory).
PERSISTED = frozenset(Phase) - {Phase.DOWNLOADING}


class Event(StrEnum):
    """What happens to a unit. Facts from the API or the disk, decisions of the engine, operator choices."""

    INTENT = "intent"
    ACCEPTED = "accepted"
    REFUSED = "refused"
    INVALID = "invalid"
    UNCERTAIN = "uncertain"
    ADOPTED = "adopted"
    NOTHING_CREATED = "nothing_created"
    AMBIGUOUS = "ambiguous"
    JOB_SUCCEEDED = "job_succeeded"
    JOB_FAILED = "job_failed"
    VANISHED = "vanished"
    FETCHING = "fetching"
    FETCHED = "fetched"
    OUTPUTS_GONE = "outputs_gone"
    FILES_MISSING = "files_missing"
    CHAIN_BROKEN = "chain_broken"
    RETRY_FAILED = "retry_failed"
    RESUBMIT_UNKNOWN = "resubmit_unknown"
    REJECT = "reject"
    UNDO = "undo"
    REGENERATE = "regenerate"
    UPSTREAM_REGENERATED = "upstream_regenerated"
    REQUEUE = "requeue"


@dataclass(frozen=True, slots=True)
class Transition:
    """One allowed move, and why it is safe."""

    source: Phase
    event: Event
    target: Phase
    why: str


_P, _E = Phase, Event
_RULES: tuple[Transition, ...] = (
    Transition(_P.PENDING, _E.INTENT, _P.SUBMITTING, "the intent is durable before the POST leaves"),
    Transition(_P.PENDING, _E.CHAIN_BROKEN, _P.FAILED, "its upstream output or declared model is missing"),
    Transition(_P.SUBMITTING, _E.ACCEPTED, _P.SUBMITTED, "the API answered with a job id, recorded at once"),
    Transition(_P.SUBMITTING, _E.REFUSED, _P.PENDING, "the answer proves nothing was created (429, 409)"),
    Transition(_P.SUBMITTING, _E.INVALID, _P.FAILED, "the API refused the request: sending it again fails"),
    Transition(_P.SUBMITTING, _E.UNCERTAIN, _P.SUBMITTING, "timeout, reset or 5xx: the job list must decide"),
    Transition(_P.SUBMITTING, _E.ADOPTED, _P.SUBMITTED, "exactly one unclaimed job in the POST's window"),
    Transition(_P.SUBMITTING, _E.NOTHING_CREATED, _P.PENDING, "no job in the POST's window: safe to resend"),
    Transition(_P.SUBMITTING, _E.AMBIGUOUS, _P.UNKNOWN, "the job list cannot tell which job is ours"),
    Transition(_P.UNKNOWN, _E.ADOPTED, _P.SUBMITTED, "a later look found its job after all"),
    Transition(_P.SUBMITTED, _E.JOB_SUCCEEDED, _P.SUCCEEDED, "the job finished; its outputs are recorded"),
    Transition(_P.SUBMITTED, _E.JOB_FAILED, _P.FAILED, "the job failed on the server, with its reason"),
    Transition(_P.SUBMITTED, _E.VANISHED, _P.UNKNOWN, "the server no longer knows the job"),
    Transition(_P.SUCCEEDED, _E.FETCHING, _P.DOWNLOADING, "this run fetches the recorded outputs"),
    Transition(_P.SUCCEEDED, _E.FETCHED, _P.DONE, "every output is on disk, verified and recorded"),
    Transition(_P.DOWNLOADING, _E.FETCHED, _P.DONE, "every output is on disk, verified and recorded"),
    Transition(_P.SUCCEEDED, _E.OUTPUTS_GONE, _P.FAILED, "the server no longer has the outputs"),
    Transition(_P.DOWNLOADING, _E.OUTPUTS_GONE, _P.FAILED, "the server no longer has the outputs"),
    Transition(_P.DONE, _E.FILES_MISSING, _P.SUCCEEDED, "files vanished: fetch them again, no new job"),
    Transition(_P.SUCCEEDED, _E.FILES_MISSING, _P.SUCCEEDED, "recorded files vanished: fetch them again"),
    Transition(_P.FAILED, _E.RETRY_FAILED, _P.PENDING, "the operator asked to pay again (--retry-failed)"),
    Transition(
        _P.UNKNOWN, _E.RESUBMIT_UNKNOWN, _P.PENDING, "the operator asked to pay again (--resubmit-unknown)"
    ),
    Transition(_P.DONE, _E.REJECT, _P.REJECTED, "a reviewer rejected an output"),
    Transition(_P.REJECTED, _E.UNDO, _P.DONE, "the reviewer took the rejection back"),
    Transition(_P.REJECTED, _E.REGENERATE, _P.SUPERSEDED, "--regenerate-rejected moved its files aside"),
    Transition(_P.DONE, _E.UPSTREAM_REGENERATED, _P.SUPERSEDED, "it was made from a rejected output"),
    Transition(_P.SUCCEEDED, _E.UPSTREAM_REGENERATED, _P.SUPERSEDED, "it was made from a rejected output"),
    Transition(_P.FAILED, _E.UPSTREAM_REGENERATED, _P.SUPERSEDED, "its upstream is made anew"),
    Transition(_P.SUPERSEDED, _E.REQUEUE, _P.PENDING, "a new generation, paid once (--regenerate-rejected)"),
)

#: (phase, event) → the transition. Read-only: the table is the rule.
TRANSITIONS = MappingProxyType({(t.source, t.event): t for t in _RULES})


def can(phase: Phase, event: Event) -> bool:
    """Whether ``event`` may happen to a unit in ``phase``."""
    return (phase, event) in TRANSITIONS


def advance(phase: Phase, event: Event, *, key: str = "") -> Phase:
    """The phase after ``event``; a :class:`~pipeline.errors.StateError` when the table forbids it."""
    rule = TRANSITIONS.get((phase, event))
    if rule is None:
        sources = "/".join(sorted(allowed_from(event))) or "nowhere"
        who = f"unit {key}: " if key else ""
        raise StateError(f"{who}{event} is not allowed while {phase} (only from {sources})")
    return rule.target


def allowed_from(*events: Event) -> frozenset[Phase]:
    """Every phase from which one of ``events`` may happen (what a store checks before a write)."""
    return frozenset(t.source for t in _RULES if t.event in events)


class Ending(StrEnum):
    """How a unit's part in the current run ended (the run record and the progress display use it)."""

    DONE = "done"
    FAILED = "failed"
    BLOCKED = "blocked"  #: its upstream step did not finish
    UNKNOWN = "unknown"
    DEADLINE = "deadline"  #: still running on the server past the deadline: the next run polls it
    NOT_STARTED = "not_started"  #: the run stopped before sending it (budget, quota, runtime, signal)
    DOWNLOAD_FAILED = "download_failed"  #: paid and recorded, the file could not be saved: rerun
    REJECTED = "rejected"  #: done, but a reviewer rejected it; a plain rerun leaves it alone

    @property
    def display(self) -> str:
        """The progress column it counts in."""
        return _DISPLAY[self]


_DISPLAY = {
    Ending.DONE: "done",
    Ending.FAILED: "failed",
    Ending.BLOCKED: "failed",
    Ending.UNKNOWN: "unknown",
    Ending.DEADLINE: "running",
    Ending.NOT_STARTED: "pending",
    Ending.DOWNLOAD_FAILED: "failed",
    Ending.REJECTED: "done",
}

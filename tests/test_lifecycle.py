"""A unit's life as a table: exactly these transitions, and no sequence of events pays twice."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pipeline.errors import StateError
from pipeline.state.lifecycle import PERSISTED, TRANSITIONS, Ending, Event, Phase, advance, allowed_from, can

P, E = Phase, Event

#: Written out by hand, on purpose: a change to the lifecycle must change this table too.
EXPECTED = {
    (P.PENDING, E.INTENT): P.SUBMITTING,
    (P.PENDING, E.CHAIN_BROKEN): P.FAILED,
    (P.SUBMITTING, E.ACCEPTED): P.SUBMITTED,
    (P.SUBMITTING, E.REFUSED): P.PENDING,
    (P.SUBMITTING, E.INVALID): P.FAILED,
    (P.SUBMITTING, E.UNCERTAIN): P.SUBMITTING,
    (P.SUBMITTING, E.ADOPTED): P.SUBMITTED,
    (P.SUBMITTING, E.NOTHING_CREATED): P.PENDING,
    (P.SUBMITTING, E.AMBIGUOUS): P.UNKNOWN,
    (P.UNKNOWN, E.ADOPTED): P.SUBMITTED,
    (P.SUBMITTED, E.JOB_SUCCEEDED): P.SUCCEEDED,
    (P.SUBMITTED, E.JOB_FAILED): P.FAILED,
    (P.SUBMITTED, E.VANISHED): P.UNKNOWN,
    (P.SUCCEEDED, E.FETCHING): P.DOWNLOADING,
    (P.SUCCEEDED, E.FETCHED): P.DONE,
    (P.DOWNLOADING, E.FETCHED): P.DONE,
    (P.SUCCEEDED, E.OUTPUTS_GONE): P.FAILED,
    (P.DOWNLOADING, E.OUTPUTS_GONE): P.FAILED,
    (P.DONE, E.FILES_MISSING): P.SUCCEEDED,
    (P.SUCCEEDED, E.FILES_MISSING): P.SUCCEEDED,
    (P.FAILED, E.RETRY_FAILED): P.PENDING,
    (P.UNKNOWN, E.RESUBMIT_UNKNOWN): P.PENDING,
    (P.DONE, E.REJECT): P.REJECTED,
    (P.REJECTED, E.UNDO): P.DONE,
    (P.REJECTED, E.REGENERATE): P.SUPERSEDED,
    (P.DONE, E.UPSTREAM_REGENERATED): P.SUPERSEDED,
    (P.SUCCEEDED, E.UPSTREAM_REGENERATED): P.SUPERSEDED,
    (P.FAILED, E.UPSTREAM_REGENERATED): P.SUPERSEDED,
    (P.SUPERSEDED, E.REQUEUE): P.PENDING,
}

#: Events that prove no job was created by the attempt in flight.
PROOF = {E.REFUSED, E.NOTHING_CREATED}
#: Events by which an operator chooses to pay again.
OPERATOR = {E.RETRY_FAILED, E.RESUBMIT_UNKNOWN, E.REQUEUE}


@pytest.mark.parametrize(("phase", "event"), list(itertools.product(Phase, Event)))
def test_every_pair_is_allowed_exactly_when_the_table_says(phase: Phase, event: Event) -> None:
    """The lifecycle allows exactly the hand-written transitions, each with its reason, and refuses
    every other (phase, event) pair with a message naming where the event is allowed from."""
    if (phase, event) in EXPECTED:
        assert can(phase, event)
        assert advance(phase, event) is EXPECTED[phase, event]
        assert TRANSITIONS[phase, event].why
    else:
        assert not can(phase, event)
        with pytest.raises(StateError, match=f"{event} is not allowed while {phase}"):
            advance(phase, event, key="k1")


def test_the_table_has_no_transition_the_test_does_not_know() -> None:
    assert {pair: t.target for pair, t in TRANSITIONS.items()} == EXPECTED


def test_a_post_starts_only_from_pending() -> None:
    assert allowed_from(E.INTENT) == {P.PENDING}


def _reachable(start: Phase, events: set[Event]) -> set[Phase]:
    seen, todo = {start}, [start]
    while todo:
        here = todo.pop()
        for (source, event), rule_ in TRANSITIONS.items():
            if source is here and event in events and rule_.target not in seen:
                seen.add(rule_.target)
                todo.append(rule_.target)
    return seen


@pytest.mark.parametrize("paid", [P.SUBMITTED, P.SUCCEEDED, P.DOWNLOADING, P.DONE, P.FAILED, P.UNKNOWN])
def test_no_way_back_to_a_post_from_paid_work_without_the_operator(paid: Phase) -> None:
    """From any phase where a job exists (or may), ``pending`` is out of reach unless an operator
    event is taken: the engine alone can never pay twice."""
    automatic = set(Event) - OPERATOR
    assert P.PENDING not in _reachable(paid, automatic)


def test_from_submitting_only_proof_leads_back_to_pending() -> None:
    without_proof = set(Event) - OPERATOR - PROOF
    assert P.PENDING not in _reachable(P.SUBMITTING, without_proof)


def test_downloading_is_never_written_and_every_ending_has_a_column() -> None:
    assert P.DOWNLOADING not in PERSISTED
    assert {e.display for e in Ending} <= {"done", "failed", "unknown", "running", "pending"}


class UnitLife(RuleBasedStateMachine):
    """One unit driven by arbitrary events against a fake API; kills lose everything but the state.

    The engine's rules are modelled as the run applies them: a POST leaves on every ``intent``;
    facts (``accepted``, ``refused``, ``adopted``, ``nothing_created`` …) happen only when true on the
    fake server; operator events are counted as permission to pay once more. Whatever the order,
    the server never holds more jobs for the unit than one plus the operator's permissions.
    """

    def __init__(self) -> None:
        super().__init__()
        self.phase = P.PENDING  # durable
        self.jobs = 0  # jobs the fake server created for this unit
        self.claimed = 0  # jobs some recorded phase accounts for
        self.in_flight = False  # a POST on the wire (lost on kill)
        self.created_by_flight = False
        self.permitted = 1  # payments allowed: the first, plus one per operator event

    def _apply(self, event: Event) -> bool:
        if not can(self.phase, event):
            return False
        self.phase = advance(self.phase, event)
        return True

    @rule(creates=st.booleans())
    def intent(self, creates: bool) -> None:
        """The engine decides to send: the POST leaves right after the intent, whenever it is allowed,
        and the server may or may not create a job for it."""
        if not self.in_flight and self._apply(E.INTENT):
            self.in_flight, self.created_by_flight = True, creates
            self.jobs += creates

    @rule(event=st.sampled_from(sorted(set(Event) - OPERATOR - PROOF - {E.INTENT, E.ACCEPTED, E.ADOPTED})))
    def fact(self, event: Event) -> None:
        """Events whose truth the model need not check: none of them sends or claims a job."""
        self._apply(event)

    @precondition(lambda self: self.in_flight)
    @rule()
    def answer_arrives(self) -> None:
        self.in_flight = False
        if self.created_by_flight:
            if self._apply(E.ACCEPTED):
                self.claimed += 1
        else:
            self._apply(E.REFUSED)

    @precondition(lambda self: self.in_flight)
    @rule()
    def answer_lost(self) -> None:
        self.in_flight = False
        self._apply(E.UNCERTAIN)

    @rule(late=st.booleans())
    def kill(self, late: bool) -> None:
        """The process dies: a POST on the wire may still create its job after we are gone."""
        if self.in_flight and late and not self.created_by_flight:
            self.jobs += 1
        self.in_flight = False

    @precondition(lambda self: not self.in_flight)
    @rule(ambiguous=st.booleans())
    def reconcile(self, ambiguous: bool) -> None:
        """The job list: an unclaimed job of ours is adopted (or unknown when others blur it); none
        means nothing was created."""
        unclaimed = self.jobs - self.claimed
        if ambiguous and self._apply(E.AMBIGUOUS):
            return
        if unclaimed > 0:
            if self._apply(E.ADOPTED):
                self.claimed += 1
        else:
            self._apply(E.NOTHING_CREATED)

    @precondition(lambda self: not self.in_flight)
    @rule(event=st.sampled_from(sorted(OPERATOR)))
    def operator(self, event: Event) -> None:
        if self._apply(event):
            self.permitted += 1
            self.claimed = self.jobs  # the operator wrote the earlier jobs off

    @invariant()
    def never_pays_twice(self) -> None:
        assert self.jobs <= self.permitted, f"{self.jobs} jobs, {self.permitted} permitted, now {self.phase}"

    @invariant()
    def a_recorded_job_is_never_resent(self) -> None:
        if self.phase in (P.SUBMITTED, P.SUCCEEDED, P.DOWNLOADING, P.DONE):
            assert not self.in_flight


UnitLife.TestCase.settings = settings(max_examples=500, stateful_step_count=30, deadline=None)
TestUnitLife = UnitLife.TestCase


def test_a_refused_event_names_the_unit_and_where_it_is_allowed() -> None:
    with pytest.raises(StateError) as err:
        advance(P.DONE, E.INTENT, key="k1")
    assert str(err.value) == "unit k1: intent is not allowed while done (only from pending)"
    with pytest.raises(StateError) as err:
        advance(P.DONE, E.FETCHED)
    assert str(err.value) == "fetched is not allowed while done (only from downloading/succeeded)"

"""Every money decision about an uncertain POST, as fast table tests, plus a property over interleavings.

``decide`` says resend, adopt or unknown; ``PostLog`` says when a listing may be decided on and how
narrow each span is; ``classify`` says which failures may be sent again at all. A rerun never pays
twice only if all three are right, so each branch has a row here that fails when it breaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.api.records import JobStatus, JobSummary
from pipeline.engine.inflight import PostLog
from pipeline.engine.reconcile import Skew, Uncertain, Verdict, decide, span_of, window_of

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SLACK = timedelta(seconds=60)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def job(job_id: str, created: float | None) -> JobSummary:
    return JobSummary(
        job_id=job_id, status=JobStatus.RUNNING, created_at=None if created is None else at(created)
    )


def u(key: str, sent: float, until: float | None) -> Uncertain:
    return Uncertain(key, at(sent), None if until is None else at(until))


EXACT = Skew(timedelta(0), timedelta(0))


class TestDecide:
    @pytest.mark.parametrize(
        ("listed", "known", "rivals", "skew", "verdict", "adopted"),
        [
            pytest.param([], set(), [], EXACT, Verdict.RESUBMIT, None, id="nothing-listed"),
            pytest.param([job("j1", 10.5)], {"j1"}, [], EXACT, Verdict.RESUBMIT, None, id="only-claimed"),
            pytest.param([job("j1", 10.5)], set(), [], EXACT, Verdict.ADOPT, "j1", id="one-in-span"),
            pytest.param([job("j1", 12.5)], set(), [], EXACT, Verdict.RESUBMIT, None, id="one-outside-span"),
            pytest.param([job("j1", 9.5)], set(), [], EXACT, Verdict.RESUBMIT, None, id="one-before-send"),
            pytest.param(
                [job("j1", 10.2), job("j2", 10.8)], set(), [], EXACT, Verdict.UNKNOWN, None, id="two-in-span"
            ),
            pytest.param(
                [job("j1", 10.5), job("j2", 10.8)], {"j2"}, [], EXACT, Verdict.ADOPT, "j1", id="other-claimed"
            ),
            pytest.param(
                [job("j1", 10.5)],
                set(),
                [u("v", 10.4, 12.0)],
                EXACT,
                Verdict.UNKNOWN,
                None,
                id="rival-shares",
            ),
            pytest.param(
                [job("j1", 10.5)],
                set(),
                [u("v", 10.7, 12.0)],
                EXACT,
                Verdict.ADOPT,
                "j1",
                id="rival-disjoint",
            ),
            pytest.param([job("j1", None)], set(), [], EXACT, Verdict.ADOPT, "j1", id="no-time-alone"),
            pytest.param(
                [job("j1", None)],
                set(),
                [u("v", 50.0, 51.0)],
                EXACT,
                Verdict.UNKNOWN,
                None,
                id="no-time-rival",
            ),
            pytest.param([job("j1", 40.0)], set(), [], None, Verdict.ADOPT, "j1", id="unlearned-skew-slack"),
            pytest.param([job("j1", 80.0)], set(), [], None, Verdict.RESUBMIT, None, id="past-the-slack"),
            pytest.param(
                [job("j1", 13.5)],
                set(),
                [],
                Skew(timedelta(seconds=3), timedelta(seconds=3)),
                Verdict.ADOPT,
                "j1",
                id="server-3s-ahead",
            ),
        ],
    )
    def test_table(
        self,
        listed: list[JobSummary],
        known: set[str],
        rivals: list[Uncertain],
        skew: Skew | None,
        verdict: Verdict,
        adopted: str | None,
    ) -> None:
        """One uncertain POST sent at 10 s, its 5xx answered at 11 s."""
        [d] = decide([u("a", 10.0, 11.0)], listed, known, slack=SLACK, skew=skew, rivals=rivals)
        assert (d.verdict, d.job_id) == (verdict, adopted), d.reason

    def test_two_uncertain_sharing_one_job_are_both_unknown(self) -> None:
        decisions = decide(
            [u("a", 10, 11), u("b", 10.5, 11.5)], [job("j1", 10.7)], set(), slack=SLACK, skew=EXACT
        )
        assert [d.verdict for d in decisions] == [Verdict.UNKNOWN, Verdict.UNKNOWN]

    def test_two_uncertain_each_with_its_own_job_are_both_adopted(self) -> None:
        listed = [job("j1", 10.2), job("j2", 20.2)]
        decisions = decide([u("a", 10, 11), u("b", 20, 21)], listed, set(), slack=SLACK, skew=EXACT)
        assert [(d.verdict, d.job_id) for d in decisions] == [(Verdict.ADOPT, "j1"), (Verdict.ADOPT, "j2")]

    def test_overlapping_lost_replies_are_told_apart_by_the_matching(self) -> None:
        """u's span holds both jobs, v's only its own: v made j_v, so j_u must be u's."""
        listed = [job("j_u", 10.01), job("j_v", 10.21)]
        decisions = decide([u("a", 10, 10.5), u("b", 10.2, 11)], listed, set(), slack=SLACK, skew=EXACT)
        assert [(d.verdict, d.job_id) for d in decisions] == [(Verdict.ADOPT, "j_u"), (Verdict.ADOPT, "j_v")]

    def test_the_matching_counts_rivals_too(self) -> None:
        """The rival (decided later) must own j_v; then j_u is a's."""
        listed = [job("j_u", 10.01), job("j_v", 10.21)]
        [d] = decide([u("a", 10, 10.5)], listed, set(), slack=SLACK, skew=EXACT, rivals=[u("b", 10.2, 11)])
        assert (d.verdict, d.job_id) == (Verdict.ADOPT, "j_u")

    def test_more_jobs_than_owners_adopts_nothing(self) -> None:
        """Two unclaimed jobs, one uncertain POST: someone else is creating jobs; do not guess."""
        listed = [job("j1", 10.2), job("j2", 10.4)]
        [d] = decide([u("a", 10, 11)], listed, set(), slack=SLACK, skew=EXACT)
        assert d.verdict is Verdict.UNKNOWN and "account for" in d.reason

    def test_a_job_in_no_span_is_ignored(self) -> None:
        [d] = decide([u("a", 10, 11)], [job("j1", 10.5), job("far", 50)], set(), slack=SLACK, skew=EXACT)
        assert (d.verdict, d.job_id) == (Verdict.ADOPT, "j1")

    def test_a_killed_post_is_spanned_by_the_slack(self) -> None:
        """No answer time (the run was killed mid-POST): ``intent ± slack``."""
        assert span_of(u("a", 10, None), EXACT, SLACK) == (at(-50), at(70))
        assert span_of(u("a", 10, None), None, SLACK) == (at(-50), at(70))
        assert span_of(u("a", 10, 11), EXACT, SLACK) == (at(9.999), at(11.001))

    def test_the_window_covers_every_span(self) -> None:
        assert window_of([u("a", 10, 11), u("b", 30, 35)], None, SLACK) == (at(-50), at(95))


class TestPostLog:
    def test_open_posts_before_a_moment(self) -> None:
        log = PostLog()
        a = log.begin("a", at(0), 0.0)
        b = log.begin("b", at(1), 1.0)
        assert (log.in_flight, log.open_before(0.5), log.open_before(1.0)) == (2, 1, 2)
        log.close(a, 2.0)
        assert (log.open_before(0.5), log.open_before(1.0)) == (0, 1)
        log.close(b, 2.0)
        log.close(b, 2.0)  # twice is harmless
        assert log.in_flight == 0

    async def test_wait_closed_returns_when_earlier_posts_close_not_later_ones(self) -> None:
        log = PostLog()
        early = log.begin("a", at(0), 0.0)
        log.begin("late", at(5), 5.0)  # begun after the listing: never waited for
        closed: list[bool] = []
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                await log.wait_closed(1.0)
                closed.append(True)

            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            assert closed == []
            log.close(early, 6.0)
        assert closed == [True]

    def test_skew_bounds_from_send_and_answer_times(self) -> None:
        log = PostLog()
        assert log.skew() is None
        t = log.begin("a", at(10), 10.0)
        log.answered(t, at(12), "j1")
        log.learn("j1", at(14))  # server 2..4 s ahead
        assert log.skew() == Skew(timedelta(seconds=2), timedelta(seconds=4))
        t = log.begin("b", at(20), 20.0)
        log.answered(t, at(20.5), "j2")
        log.learn("j2", at(23.2))  # server 2.7..3.2 s ahead: the bounds only narrow
        assert log.skew() == Skew(timedelta(seconds=2.7), timedelta(seconds=3.2))
        log.learn("unknown-job", at(0))
        log.learn("j1", None)
        assert log.skew() == Skew(timedelta(seconds=2.7), timedelta(seconds=3.2))

    def test_contradicting_bounds_fall_back_to_the_slack(self) -> None:
        log = PostLog()
        for i, (sent, answered, created) in enumerate([(10, 11, 10.5), (20, 21, 25)]):
            t = log.begin(str(i), at(sent), float(sent))
            log.answered(t, at(answered), f"j{i}")
            log.learn(f"j{i}", at(created))
        assert log.skew() is None  # our wall clock jumped in between

    def test_uncertain_posts_are_ready_once_their_job_would_be_listed(self) -> None:
        log = PostLog()
        log.waiting = [u("a", 0, 1), u("b", 0, None), u("c", 0, 10)]
        assert [x.key for x in log.take_ready(at(1.4), timedelta(seconds=0.5))] == ["b"]
        assert [x.key for x in log.take_ready(at(1.5), timedelta(seconds=0.5))] == ["a"]
        assert [x.key for x in log.waiting] == ["c"]

    def test_until_the_server_clock_is_learned_uncertain_posts_wait_up_to_the_patience(self) -> None:
        log = PostLog()
        log.waiting = [u("a", 0, 1)]
        patience = timedelta(seconds=30)
        assert [x.key for x in log.take_ready(at(2), timedelta(seconds=0.5), patience)] == ["a"]
        log.waiting = [u("a", 0, 1)]  # nothing to learn from: no wait; a POST in flight: wait
        log.begin("x", at(1.5), 1.5)
        assert log.take_ready(at(2), timedelta(seconds=0.5), patience) == []
        t = log.begin("b", at(1), 1.0)
        log.answered(t, at(1.2), "j")
        log.learn("j", at(1.1))
        assert [x.key for x in log.take_ready(at(2), timedelta(seconds=0.5), patience)] == ["a"]
        fresh = PostLog()
        fresh.begin("x", at(0), 0.0)
        fresh.waiting = [u("c", 0, 1)]
        assert fresh.take_ready(at(31.4), timedelta(seconds=0.5), patience) == []
        assert [x.key for x in fresh.take_ready(at(31.5), timedelta(seconds=0.5), patience)] == ["c"]

    def test_old_closed_posts_are_forgotten_but_open_ones_kept(self) -> None:
        log = PostLog(keep_s=10.0)
        old = log.begin("a", at(0), 0.0)
        log.answered(old, at(1), "j1")
        log.close(old, 1.0)
        still = log.begin("b", at(2), 2.0)
        log.close(log.begin("c", at(3), 3.0), 100.0)
        assert log.open_before(50.0) == 1
        log.learn("j1", at(0.5))
        assert log.skew() is None  # j1's POST was forgotten
        log.close(still, 100.0)


# -- the property: over interleavings of POSTs, answers, kills and listings ---------------------------


@dataclass(frozen=True)
class _Post:
    key: str
    sent: int  # ms, our clock
    answered: int  # ms, our clock (for a kill: when the run died)
    fate: str  # ok | lost | nothing | silent | refused | killed
    created: int | None  # ms, our clock; None: no job


LATE_MS = 3000  # how long after a silent failure the server may still create the job
FATES = ("ok", "ok", "lost", "lost", "nothing", "silent", "refused", "killed")


@st.composite
def _posts(draw: st.DrawFn) -> list[_Post]:
    posts = []
    for i in range(draw(st.integers(1, 10))):
        sent = draw(st.integers(0, 3000))
        answered = sent + draw(st.integers(0, 2000))
        fate = draw(st.sampled_from(FATES))
        created: int | None = None
        if fate in ("ok", "lost") or (fate in ("silent", "killed") and draw(st.booleans())):
            latest = answered + (LATE_MS if fate == "silent" else 0)
            created = draw(st.integers(sent, latest))
        posts.append(_Post(f"u{i}", sent, answered, fate, created))
    return posts


def _ms(t: int) -> datetime:
    return T0 + timedelta(milliseconds=t)


@settings(max_examples=150, deadline=None)
@given(posts=_posts(), list_at=st.integers(0, 6000), skew_ms=st.integers(-5000, 5000))
def test_no_wrong_adoption_and_no_resend_of_a_unit_whose_job_exists(
    posts: list[_Post], list_at: int, skew_ms: int
) -> None:
    """Replay the run's bookkeeping in time order: POSTs begin and are answered; ``ok`` jobs are
    learned from polls; at ``list_at`` the ready uncertain POSTs are reconciled from a listing of
    the jobs the server has by then, decided once every POST begun before it is recorded. Killed
    POSTs (a previous run died mid-POST) are reconciled at the start with nothing in flight.
    Whatever the order: an adopted job is the unit's own, and a resent unit created no job."""
    skew = timedelta(milliseconds=skew_ms)
    log, known, tickets = PostLog(), set[str](), {}
    live = [p for p in posts if p.fate != "killed"]
    events = sorted([(p.sent, 0, p) for p in live] + [(p.answered, 1, p) for p in live], key=lambda e: e[:2])

    def replay(until: int) -> None:
        while events and events[0][0] <= until:
            t, kind, p = events.pop(0)
            if kind == 0:
                tickets[p.key] = log.begin(p.key, _ms(t), t / 1000)
                continue
            job_id = f"job-{p.key}" if p.created is not None else None
            log.answered(tickets[p.key], _ms(t), job_id if p.fate == "ok" else None)
            if p.fate == "ok":
                assert job_id is not None
                known.add(job_id)
                log.learn(job_id, _ms(p.created or 0) + skew)  # a poll reads its createdAt
            elif p.fate in ("lost", "nothing", "silent"):
                late = LATE_MS if p.fate == "silent" else 0
                log.waiting.append(Uncertain(p.key, _ms(p.sent), _ms(t + late)))
            log.close(tickets[p.key], t / 1000)

    def listing(moment: int, window: tuple[datetime, datetime]) -> list[JobSummary]:
        return [
            JobSummary(job_id=f"job-{p.key}", status=JobStatus.RUNNING, created_at=_ms(p.created) + skew)
            for p in live  # a killed POST belongs to an earlier run: see the test below
            if p.created is not None
            and p.created <= moment
            and window[0] <= _ms(p.created) + skew <= window[1]
        ]

    def check(batch: list[Uncertain], listed: list[JobSummary], rivals: list[Uncertain]) -> None:
        owner = {p.key: p for p in posts}
        slack = timedelta(seconds=60)
        for d in decide(batch, listed, known, slack=slack, skew=log.skew(), rivals=rivals):
            p = owner[d.key]
            if d.verdict is Verdict.ADOPT:
                assert d.job_id == f"job-{p.key}", f"{d.key} adopted another unit's job"
            if d.verdict is Verdict.RESUBMIT:
                assert p.created is None, f"{d.key} would be sent again though its job exists"

    replay(list_at)
    batch = log.take_ready(_ms(list_at), timedelta(0))
    if not batch:
        return
    listed = listing(list_at, window_of(batch, log.skew(), timedelta(seconds=60)))
    replay_to = list_at
    while log.open_before(list_at / 1000):  # what wait_closed waits for
        replay_to = events[0][0]
        replay(replay_to)
    check(batch, listed, list(log.waiting))


@settings(max_examples=100, deadline=None)
@given(posts=_posts(), skew_ms=st.integers(-5000, 5000), learned=st.booleans())
def test_the_next_run_after_a_kill_never_adopts_wrongly_nor_resends_a_paid_unit(
    posts: list[_Post], skew_ms: int, learned: bool
) -> None:
    """The run died: every POST not recorded as ``ok`` (killed mid-POST, or uncertain and not yet
    reconciled) is left ``submitting`` and reconciled by the next run at its start, with nothing in
    flight, no answer times and no learned skew: ``intent ± slack``."""
    skew, slack = timedelta(milliseconds=skew_ms), timedelta(seconds=60)
    known = {f"job-{p.key}" for p in posts if p.fate == "ok"}
    # The intent is written before the POST leaves: up to half a second earlier.
    left = [
        Uncertain(p.key, _ms(max(0, p.sent - 500)), None) for p in posts if p.fate not in ("ok", "refused")
    ]
    if not left:
        return
    start, end = window_of(left, None, slack)
    listed = [
        JobSummary(job_id=f"job-{p.key}", status=JobStatus.RUNNING, created_at=_ms(p.created) + skew)
        for p in posts
        if p.created is not None and start <= _ms(p.created) + skew <= end
    ]
    owner = {p.key: p for p in posts}
    # Asked again later in the run, the server's clock may be known by then: it must not narrow a span
    # whose send time is unknown (the intent is recorded before the POST waits for a connection).
    learnt = Skew(skew, skew) if learned else None
    for d in decide(left, listed, known, slack=slack, skew=learnt):
        if d.verdict is Verdict.ADOPT:
            assert d.job_id == f"job-{d.key}", f"{d.key} adopted another unit's job"
        if d.verdict is Verdict.RESUBMIT:
            assert owner[d.key].created is None, f"{d.key} would be sent again though its job exists"


def _brute(near: list[list[int]], n_jobs: int, me: int, mine: int | None) -> bool:
    """Every job gets its own owner among those whose span holds it, ``me`` getting ``mine``."""
    from itertools import product

    choices = [[None, *options] if o != me else [mine] for o, options in enumerate(near)]
    for pick in product(*choices):
        taken = [j for j in pick if j is not None]
        if len(taken) == len(set(taken)) and set(taken) == set(range(n_jobs)):
            return True
    return False


@settings(max_examples=150, deadline=None)
@given(
    data=st.integers(1, 4).flatmap(
        lambda jobs: st.tuples(
            st.just(jobs), st.lists(st.lists(st.integers(0, jobs - 1), unique=True), min_size=1, max_size=4)
        )
    ),
    pick=st.integers(0, 10),
)
def test_the_matching_agrees_with_brute_force(data: tuple[int, list[list[int]]], pick: int) -> None:
    """Kuhn's augmenting paths answer what trying every assignment answers."""
    from pipeline.engine.reconcile import _explained

    n_jobs, near = data
    me = pick % len(near)
    for mine in (None, *near[me]):
        assert _explained(near, n_jobs, fixed=(me, mine)) == _brute(near, n_jobs, me, mine)

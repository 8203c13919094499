"""The server clock's bounds (pipeline/engine/serverclock.py): an interval that always holds the true
offset, however the answers fall within their seconds, and that narrows as they come."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.api.answers import server_date
from pipeline.cli.run_command import date_window
from pipeline.engine.serverclock import ServerClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _date(server_time: datetime) -> datetime:
    """A ``Date`` header's value: the second the server's clock is in."""
    return server_time.replace(microsecond=0)


def _answer(clock: ServerClock, skew_s: float, sent_s: float, handled_s: float, answered_s: float) -> None:
    """A request sent, handled (the ``Date`` stamped) and answered at those seconds of our clock."""
    sent, answered = T0 + timedelta(seconds=sent_s), T0 + timedelta(seconds=answered_s)
    clock.answer_dated(sent, answered, _date(T0 + timedelta(seconds=handled_s + skew_s)))


requests = st.lists(
    st.tuples(
        st.floats(0, 120, allow_nan=False),
        st.floats(0, 1, allow_nan=False),
        st.floats(0, 2, allow_nan=False),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(skew_s=st.floats(-7200, 7200, allow_nan=False), reqs=requests)
def test_the_date_bound_always_holds_the_true_offset(
    skew_s: float, reqs: list[tuple[float, float, float]]
) -> None:
    clock = ServerClock((0.0, 1.0))
    for sent, where, latency in reqs:
        _answer(clock, skew_s, sent, sent + where * latency, sent + latency)
    bound = clock.skew()
    assert bound is not None
    true = timedelta(seconds=skew_s)
    assert bound.lo - timedelta(milliseconds=1) <= true <= bound.hi + timedelta(milliseconds=1)


def test_one_answer_bounds_the_offset_to_a_second_and_more_answers_narrow_it() -> None:
    clock = ServerClock((0.0, 1.0))
    _answer(clock, 3600.3, 10.0, 10.0, 10.0)  # zero latency: the server read 3610.3, Date 3610
    first = clock.skew()
    assert first is not None and first.hi - first.lo == timedelta(seconds=1)
    for k in range(1, 10):  # answers at other fractions of a second
        _answer(clock, 3600.3, 10.0 + k * 0.37, 10.0 + k * 0.37, 10.0 + k * 0.37)
    narrow = clock.skew()
    assert narrow is not None and narrow.hi - narrow.lo < timedelta(seconds=0.2)
    assert narrow.lo <= timedelta(seconds=3600.3) <= narrow.hi


def test_our_jobs_and_the_date_are_intersected() -> None:
    clock = ServerClock((0.0, 1.0))
    _answer(clock, 5.25, 0.0, 0.0, 0.0)  # skew in [5, 6]
    assert not clock.from_jobs
    clock.job_created(
        T0 + timedelta(seconds=105.25), T0 + timedelta(seconds=100), T0 + timedelta(seconds=100.5)
    )
    bound = clock.skew()  # createdAt says [4.75, 5.25]; with Date: [5, 5.25]
    assert clock.from_jobs and bound is not None
    assert (bound.lo, bound.hi) == (timedelta(seconds=5), timedelta(seconds=5.25))


def test_a_date_on_another_clock_is_dropped_once_our_jobs_contradict_it() -> None:
    """A proxy's Date 3 s ahead of the createdAt clock: our first job shows it, the Date goes."""
    clock = ServerClock((0.0, 1.0))
    _answer(clock, 3.0, 0.0, 0.0, 0.0)  # what Date says: [3, 4]; createdAt's clock is on ours
    clock.job_created(_at(10.1), _at(10), _at(10.2))
    with structlog.testing.capture_logs() as events:
        bound = clock.skew()
        assert bound is not None and bound.lo <= timedelta(0) <= bound.hi
        _answer(clock, 3.0, 20.0, 20.0, 20.0)  # ignored from now on
        assert clock.skew() == bound
    assert [e["event"] for e in events] == ["server_date_disagrees"]  # said once, not per decision


def test_a_listed_job_newer_than_the_date_allows_drops_the_date() -> None:
    """A Date lagging createdAt's clock: a job listed before the listing's answer proves it."""
    clock = ServerClock((0.0, 1.0))
    _answer(clock, -5.0, 0.0, 0.0, 0.0)  # Date says [-5, -4]; createdAt's clock is on ours
    clock.job_listed(_at(0.5), _at(1.0))  # skew >= -0.5
    assert clock.skew() is None  # nothing honest left: the slack rules until our jobs teach it


def test_no_window_ignores_the_header() -> None:
    clock = ServerClock(None)
    _answer(clock, 0.0, 0.0, 0.0, 0.0)
    assert clock.skew() is None


def test_the_header_is_read_as_an_aware_time_and_garbage_is_none() -> None:
    assert server_date({"Date": "Thu, 01 Jan 2026 00:00:07 GMT"}) == T0 + timedelta(seconds=7)
    assert server_date({"Date": "yesterday"}) is None
    assert server_date({}) is None


def test_the_cli_window_reads_lo_hi_or_off_and_names_bad_input() -> None:
    assert date_window("-0.1,1.1") == (-0.1, 1.1)
    assert date_window("off") is None
    for bad in ("1", "2,1", "a,b", "nan,1"):
        with pytest.raises(argparse.ArgumentTypeError, match="LO"):
            date_window(bad)


def test_a_listing_read_for_date_spans_serves_only_bounds_inside_them() -> None:
    """After the listing, a bound that left the one it was read for (the Date dropped) needs a new
    listing: its spans may hold jobs the listing never asked for."""
    from pipeline.engine.reconcile import Skew
    from pipeline.engine.reconciler import _within

    listed_with = Skew(timedelta(seconds=3), timedelta(seconds=4))
    assert _within(Skew(timedelta(seconds=3.2), timedelta(seconds=3.5)), listed_with)
    assert not _within(Skew(timedelta(seconds=-0.1), timedelta(seconds=0.2)), listed_with)
    assert not _within(Skew(timedelta(seconds=3.5), timedelta(seconds=4.5)), listed_with)
    assert not _within(None, listed_with)
    assert _within(None, None)

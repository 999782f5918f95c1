import datetime as dt
import random

import pytest

from connector.sink.retry import RetryPolicy, backoff_delay, parse_retry_after


class Top:
    """Always draws the top of the range (the exponential bound itself)."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Bottom:
    def uniform(self, a: float, b: float) -> float:
        return a


@pytest.mark.parametrize(
    ("attempt", "bound"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 60.0), (500, 60.0)]
)
def test_exponential_bound_is_capped(attempt, bound):
    assert backoff_delay(attempt, None, Top(), base=0.5, cap=60.0) == bound


def test_full_jitter_stays_within_zero_and_the_bound():
    rng = random.Random(7)
    delays = [backoff_delay(5, None, rng, base=0.5, cap=60.0) for _ in range(500)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert max(delays) - min(delays) > 4.0  # really jittered, not constant


def test_retry_after_is_a_floor_that_the_cap_does_not_shorten():
    assert backoff_delay(1, 7.0, Bottom(), cap=60.0) == 7.0
    assert backoff_delay(10, 7.0, Top(), cap=60.0) == 60.0  # jitter above the floor wins
    assert backoff_delay(1, 900.0, Bottom(), cap=60.0) == 900.0  # the server's wait, in full
    assert backoff_delay(10, 20.0, Top(), cap=60.0) == 60.0  # the computed part stays capped


def test_invalid_attempt_is_refused():
    with pytest.raises(ValueError):
        backoff_delay(0, None, Top())


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("3", 3.0), (" 1.5 ", 1.5), ("-1", None), ("soon", None), ("nan", None)],
)
def test_parse_retry_after_seconds(value, expected):
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date():
    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) is None


def test_policy_gives_up_after_the_budget_and_shortens_the_last_wait():
    policy = RetryPolicy(base=1.0, cap=100.0, max_retry_seconds=10.0)
    assert policy.next_delay(3, elapsed=0.0, retry_after=None, rng=Top()) == 4.0
    assert policy.next_delay(5, elapsed=8.0, retry_after=None, rng=Top()) == 2.0
    assert policy.next_delay(1, elapsed=10.0, retry_after=None, rng=Top()) is None
    assert policy.next_delay(1, elapsed=0.0, retry_after=30.0, rng=Bottom()) == 10.0


def test_a_repeat_window_wait_is_neither_capped_nor_cut_by_the_retry_budget():
    """A 409 retry inside Yespo's minute meets the 409 again: its wait (61 s) passes the 60 s cap,
    and a budget below it still gets that one retry."""
    assert RetryPolicy().next_delay(1, 0.0, 61.0, Bottom(), must_wait=61.0) == 61.0
    assert RetryPolicy().next_delay(1, 0.0, 61.0, Bottom()) == 61.0  # a Retry-After is not capped
    short = RetryPolicy(max_retry_seconds=30.0)
    assert short.next_delay(1, 0.0, 61.0, Top(), must_wait=61.0) == 61.0
    assert short.next_delay(2, 61.0, 61.0, Top(), must_wait=61.0) is None  # spent: give up

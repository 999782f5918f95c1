import pytest

from connector.sink.ratelimit import RateLimiter
from tests.stubs import ManualClock


def test_paces_requests_at_the_rate():
    clock = ManualClock(100.0)
    limiter = RateLimiter(10.0, clock)
    assert limiter.acquire_delay() == 0.0
    assert limiter.acquire_delay() == pytest.approx(0.1)
    assert limiter.acquire_delay() == pytest.approx(0.1)  # nothing was taken
    clock.now += 0.05
    assert limiter.peek_delay() == pytest.approx(0.05)
    clock.now += 0.05
    assert limiter.acquire_delay() == 0.0


def test_burst_allows_that_many_at_once_then_paces():
    clock = ManualClock(100.0)
    limiter = RateLimiter(5.0, clock, burst=3)
    assert [limiter.acquire_delay() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire_delay() == pytest.approx(0.2)


def test_blocking_acquire_sleeps_through_the_injected_sleep():
    clock = ManualClock(100.0)
    limiter = RateLimiter(4.0, clock)
    start = clock.now
    waits = [limiter.acquire(clock.sleep) for _ in range(9)]
    assert waits[0] == 0.0
    # 9 requests at 4/s with a burst of 1: the 9th goes out 2 s after the first.
    assert clock.now - start == pytest.approx(2.0)


def test_any_one_second_window_holds_at_most_rate_plus_one():
    clock = ManualClock(100.0)
    limiter = RateLimiter(50.0, clock)
    sent = []
    for _ in range(500):
        limiter.acquire(clock.sleep)
        sent.append(clock.now)
    for i, t in enumerate(sent):
        in_window = sum(1 for u in sent[i:] if u < t + 1.0)
        assert in_window <= 51


def test_rejects_bad_parameters():
    with pytest.raises(ValueError):
        RateLimiter(0, ManualClock(100.0))
    with pytest.raises(ValueError):
        RateLimiter(1, ManualClock(100.0), burst=0.5)

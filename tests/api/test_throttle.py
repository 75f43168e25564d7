"""The per-key token bucket behind the decision and report rate limits."""

import pytest

from sagas.errors import TooManyRequestsError
from sagas.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_the_rate_is_taken_then_refused_until_it_refills() -> None:
    clock = Clock()
    throttle = Throttle(6, clock=clock)  # 6 a minute: one every 10 s
    for _ in range(6):
        throttle.take("p1", "payment p1")
    with pytest.raises(TooManyRequestsError) as refused:
        throttle.take("p1", "payment p1")
    assert refused.value.retry_after == pytest.approx(10)
    assert "payment p1" in refused.value.detail
    throttle.take("p2", "payment p2")  # another key has its own bucket
    clock.now += 10
    throttle.take("p1", "payment p1")
    with pytest.raises(TooManyRequestsError):
        throttle.take("p1", "payment p1")


def test_refused_requests_do_not_buy_time() -> None:
    clock = Clock()
    throttle = Throttle(60, clock=clock)
    for _ in range(60):
        throttle.take("k", "k")
    for _ in range(100):  # a client hammering while refused
        with pytest.raises(TooManyRequestsError):
            throttle.take("k", "k")
    clock.now += 1
    throttle.take("k", "k")


def test_memory_is_bounded_by_forgetting_the_least_recent_keys() -> None:
    clock = Clock()
    throttle = Throttle(1, max_keys=3, clock=clock)
    for key in ("a", "b", "c", "d"):
        throttle.take(key, key)
    throttle.take("a", "a")  # forgotten: a full bucket again
    with pytest.raises(TooManyRequestsError):
        throttle.take("d", "d")

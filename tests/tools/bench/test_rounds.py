"""How ``python -m tools.bench`` splits the sagas of two compared loops into rounds (the
rounds themselves run in the smoke test)."""

from tools.bench.throughput import shares


def test_the_sagas_split_into_nearly_equal_rounds_that_add_up():
    assert shares(200, 2) == [100, 100]
    assert shares(10, 3) == [4, 3, 3]
    assert shares(7, 1) == [7]
    assert sum(shares(201, 4)) == 201

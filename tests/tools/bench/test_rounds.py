"""How ``python -m tools.bench`` pairs the saga's closed loop with the baseline's, and splits
their sagas into rounds (the rounds themselves run in the smoke test)."""

from tools.bench.throughput import _phase_groups, _shares


def test_the_saga_loop_runs_with_the_baseline_where_the_first_of_them_is():
    chosen = ["baseline", "saga", "history", "http"]
    assert _phase_groups(chosen) == [("baseline", "saga"), ("history",), ("http",)]


def test_a_loop_chosen_without_its_partner_runs_alone():
    assert _phase_groups(["saga", "history"]) == [("saga",), ("history",)]
    assert _phase_groups(["baseline", "http"]) == [("baseline",), ("http",)]


def test_the_sagas_split_into_nearly_equal_rounds_that_add_up():
    assert _shares(200, 2) == [100, 100]
    assert _shares(10, 3) == [4, 3, 3]
    assert _shares(7, 1) == [7]
    assert sum(_shares(201, 4)) == 201

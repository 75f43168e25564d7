"""How ``python -m tools.bench`` pairs a saga closed loop with the baseline's, and splits
its sagas into rounds (the rounds themselves run in the smoke test)."""

from tools.bench.throughput import _phase_groups, _shares


def test_a_saga_loop_runs_with_the_baseline_of_its_step_mode_where_the_first_of_them_is():
    chosen = ["baseline-remote", "saga-remote", "saga-local", "history", "http"]
    assert _phase_groups(chosen) == [
        ("baseline-remote", "saga-remote"),
        ("saga-local",),  # no baseline-local chosen: alone
        ("history",),
        ("http",),
    ]


def test_a_loop_chosen_without_its_partner_runs_alone():
    assert _phase_groups(["saga-remote", "baseline-local"]) == [
        ("saga-remote",),
        ("baseline-local",),
    ]


def test_the_sagas_split_into_nearly_equal_rounds_that_add_up():
    assert _shares(200, 2) == [100, 100]
    assert _shares(10, 3) == [4, 3, 3]
    assert _shares(7, 1) == [7]
    assert sum(_shares(201, 4)) == 201

"""``python -m tools.chaos``'s options: the activity routing of the orchestrated run reaches
the stack's processes and the run's last line, and is refused for the choreographed saga.

The chaos run itself (minutes on the real stack) is ``make chaos-ci``'s, not a unit test's.
"""

import argparse
import random
from pathlib import Path

import pytest

from tools.chaos.__main__ import Chaos, Database, _result_line, parse
from tools.chaos.stack import Stack


def stack(
    tmp_path: Path, *, saga_style: str | None = None, activity_routing: str | None = None
) -> Stack:
    """A chaos stack laid out in ``tmp_path`` (nothing started)."""
    return Stack(
        data_dir=tmp_path,
        database_url="sqlite://",
        payment_window=8,
        dealer_window=3,
        saga_style=saga_style,
        activity_routing=activity_routing,
    )


def last_line(args: argparse.Namespace, tmp_path: Path) -> str:
    """The run's last line, for a run of ``args`` that did nothing for 12 s."""
    database = Database("sqlite", None, tmp_path)
    chaos = Chaos(stack(tmp_path), database, random.Random(args.seed), args)
    return _result_line(args, chaos, violations=0, seconds=12)


@pytest.mark.parametrize("routing", ["workflow", "service"])
def test_the_routing_asked_for_is_exported_to_the_api_and_the_worker(
    tmp_path: Path, routing: str
) -> None:
    args = parse(["--routing", routing, "--seed", "1"])
    assert (args.style, args.routing) == ("orchestration", routing)
    run = stack(tmp_path, saga_style=args.style, activity_routing=args.routing)
    assert run.env["ACTIVITY_ROUTING"] == routing
    assert run.worker.env["ACTIVITY_ROUTING"] == run.api.env["ACTIVITY_ROUTING"] == routing


def test_without_routing_the_processes_keep_what_the_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACTIVITY_ROUTING", raising=False)
    args = parse(["--seed", "1"])
    assert args.routing is None
    assert "ACTIVITY_ROUTING" not in stack(tmp_path, activity_routing=args.routing).env
    monkeypatch.setenv("ACTIVITY_ROUTING", "service")
    assert stack(tmp_path, activity_routing=args.routing).env["ACTIVITY_ROUTING"] == "service"


def test_routing_with_the_choreographed_saga_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["--style", "choreography", "--routing", "service"])
    assert exit_.value.code == 2
    assert "--routing" in capsys.readouterr().err


def test_an_unknown_routing_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["--routing", "everywhere"])
    assert exit_.value.code == 2


def test_the_last_line_names_the_orchestrated_runs_routing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTIVITY_ROUTING", "workflow")
    asked = last_line(parse(["--routing", "service", "--seed", "7"]), tmp_path / "asked")
    assert asked.startswith("chaos: orchestration, routing service, seed 7, ")
    # Not asked for: the routing the stack's processes read from the environment.
    default = last_line(parse(["--seed", "7"]), tmp_path / "default")
    assert default.startswith("chaos: orchestration, routing workflow, seed 7, ")
    choreography = last_line(parse(["--style", "choreography", "--seed", "7"]), tmp_path / "c")
    assert choreography.startswith("chaos: choreography, seed 7, ")
    assert "routing" not in choreography

"""Smoke test of ``python -m tools.bench``: a tiny run on its own stack (SQLite), end to end.

Checks what the run reports, never how fast it was: every phase drove every saga to the end
it was meant to reach (DELIVERED, or CANCELLED where the bench cancelled), the history
phase measured what they say, the choreography phase drove both saga styles through
their APIs (with the real nats-server), and the last two lines have the documented format.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[3]
SAGA_PHASES = ["baseline", "saga"]
PHASES = [
    *SAGA_PHASES,
    "http-unloaded",
    "saturation-orchestration",
    "http",
    "saturation-choreography",
    "http-unloaded-choreography",
    "http-choreography",
]
LAST_LINE = re.compile(r"bench: \d+\.\d sagas/s, ratio \d+\.\d\d to baseline, p99 \d+ ms")
CHOREOGRAPHY_LINE = re.compile(
    r"bench-choreography: \d+\.\d sagas/s, ratio \d+\.\d\d to orchestration, p99 \d+ ms"
)


def test_a_small_bench_delivers_every_saga_in_every_phase(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}  # SQLite, whatever CI says
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.bench",
            "--sagas=10",
            "--style-sagas=5",
            "--concurrency=5",
            "--warmup=3",
            "--unloaded-orders=3",
            "--http-seconds=2",  # at 80% of saturation-orchestration: the default, not --rate
            "--cancel-every=3",
            "--quiet",
            f"--out={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    result = json.loads((tmp_path / "latest.json").read_text())
    phases = {p["name"]: p for p in result["phases"]}
    assert list(phases) == PHASES
    for name in SAGA_PHASES:
        assert (phases[name]["sagas"], phases[name]["delivered"]) == (10, 10), name
        # The saga's loop and the baseline's ran together, in two rounds of 5.
        assert phases[name]["rounds"] == 2, name
    for name in ("http-unloaded", "http-unloaded-choreography"):
        unloaded = phases[name]
        assert (unloaded["sagas"], unloaded["delivered"]) == (3, 3), name
        assert unloaded["http"]["in_transit"]["count"] == 3, name
        assert unloaded["http"]["confirms"]["count"] == 3, name

    http = phases["http"]
    saturation = phases["saturation-orchestration"]["sagas_per_s"]
    assert http["http"]["orders_per_s"] == pytest.approx(0.8 * saturation)
    assert "saturation-orchestration" in http["http"]["rate_source"]
    ordered = http["sagas"]
    assert ordered == round(0.8 * saturation * 2)
    cancelled = ordered // 3  # orders 2, 5, 8, ...
    assert (http["delivered"], http["cancelled"]) == (ordered - cancelled, cancelled)
    assert http["http"]["cancels"]["count"] == cancelled
    assert http["http"]["confirms"]["count"] == ordered - cancelled
    for phase in phases.values():
        assert phase["failures"] == 0, phase["name"]

    _check_choreography_phase(phases, result)

    histories = {h["name"]: h for h in result["history"]}
    assert list(histories) == ["saga", "baseline"]
    for history in histories.values():
        assert history["problem"] is None, history
        assert history["activities"] == 8, history  # the delivered path's steps
        assert 0 < history["workflow_tasks"] < history["events"], history

    targets = {t["target"]: t for t in result["targets"]}
    assert all(t["met"] is not None for t in targets.values()), targets
    # Each latency target names how many answers its percentile was taken from.
    assert targets["cancel p99, under load"]["samples"] == cancelled
    assert targets["confirm p50, unloaded"]["samples"] == 3

    assert result["failures"] == 0
    assert (Path(result["run_dir"]) / "result.json").is_file()

    *_, choreography_line, last_line = run.stdout.rstrip("\n").splitlines()
    assert CHOREOGRAPHY_LINE.fullmatch(choreography_line), choreography_line
    assert choreography_line == result["summary_choreography"]
    assert LAST_LINE.fullmatch(last_line), last_line


def _check_choreography_phase(phases: dict[str, Any], result: dict[str, Any]) -> None:
    """Each style's closed loop delivered every saga through its own API, and the open loop
    through the choreography API ran at the http phase's rate, cancels included."""
    for style in ("orchestration", "choreography"):
        loop = phases[f"saturation-{style}"]
        assert loop["style"] == style
        assert (loop["sagas"], loop["delivered"]) == (5, 5), style
        assert {"nats", "api-choreography"} <= set(loop["cpu_s"]), loop["cpu_s"]

    http, events = phases["http"], phases["http-choreography"]
    assert events["style"] == "choreography"
    assert events["http"]["orders_per_s"] == http["http"]["orders_per_s"]
    ordered = events["sagas"]
    assert ordered == http["sagas"]
    cancelled = ordered // 3
    assert (events["delivered"], events["cancelled"]) == (ordered - cancelled, cancelled)
    assert events["http"]["cancels"]["count"] == cancelled

    ratios = {(r["numerator"], r["denominator"]) for r in result["ratios"]}
    assert ("saturation-choreography", "saturation-orchestration") in ratios
    assert ("http-choreography", "http") in ratios

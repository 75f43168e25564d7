"""Smoke tests of ``python -m tools.bench`` and its scale run: tiny runs on their own stacks
(SQLite, the real servers), end to end.

They check what the runs report, never how fast they were: every saga reached its end in every
phase, both styles ran through their APIs (with the real nats-server), the history counted
what it says, and the last lines have the documented format.
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
LAST_LINE = re.compile(r"bench: \d+\.\d sagas/s, ratio \d+\.\d\d to baseline, p99 \d+ ms")
CHOREOGRAPHY_LINE = re.compile(
    r"bench-choreography: \d+\.\d sagas/s, ratio \d+\.\d\d to orchestration-workflow, "
    r"p99 \d+ ms"
)
ROUTING_LINE = re.compile(
    r"bench-routing: \d+\.\d sagas/s, ratio \d+\.\d\d to saga-service, p99 \d+ ms"
)
SCALE_LINE = re.compile(
    r"bench-scale: 20 open sagas, worker RSS \d+ MB, confirm p99 \d+ ms at 10 and \d+ ms at 20 "
    r"\(x\d+\.\d\d\)"
)


def bench(tmp_path: Path, *args: str) -> tuple[list[str], dict[str, Any]]:
    """Run the bench (SQLite, whatever CI's DATABASE_URL says); its stdout lines and the
    latest result."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    run = subprocess.run(
        [sys.executable, "-m", "tools.bench", *args, "--quiet", f"--out={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    latest = "scale-latest.json" if args[:1] == ("scale",) else "latest.json"
    return run.stdout.rstrip("\n").splitlines(), json.loads((tmp_path / latest).read_text())


def test_a_small_bench_delivers_every_saga_in_every_phase(tmp_path: Path):
    lines, result = bench(
        tmp_path, "--sagas=10", "--style-sagas=6", "--concurrency=5", "--warmup=2", "--unloaded=2"
    )

    phases = {p["name"]: p for p in result["phases"]}
    apis = ["orchestration-workflow", "orchestration-service", "choreography"]
    assert list(phases) == ["baseline", "saga-workflow", "saga-service", *apis]
    for phase in phases.values():
        assert phase["failures"] == 0, phase
        assert phase["delivered"] == phase["sagas"], phase["name"]
        assert phase["rounds"] == 2, phase["name"]  # each loop with its partners, alternating
    assert [phases[n]["through"] for n in phases] == ["client", "door", "door", "api", "api", "api"]
    assert {"nats", "api-choreography"} <= set(phases["choreography"]["cpu_s"])
    assert phases["choreography"]["cpu_ms_per_saga"]["nats"] > 0
    assert "api-service" in phases["orchestration-service"]["cpu_s"]
    ratios = {(r["numerator"], r["denominator"]) for r in result["ratios"]}
    assert ("saga-workflow", "saga-service") in ratios
    assert ("choreography", "orchestration-workflow") in ratios

    histories = {h["name"]: h for h in result["history"]}
    assert sorted(histories) == ["baseline", "saga-service", "saga-workflow"]
    for history in histories.values():
        assert history["problem"] is None, history
        assert history["activities"] == 8, history  # the delivered path's steps
        assert history["signals"] == 2, history
        assert 0 < history["workflow_tasks"] < history["events"], history
        assert history["bytes"] > 20 * history["events"], history

    unloaded = {u["name"]: u for u in result["unloaded"]}
    assert list(unloaded) == apis
    for one in unloaded.values():
        assert (one["failures"], one["to_in_transit"]["count"]) == (0, 2), one

    assert result["failures"] == 0
    assert (Path(result["run_dir"]) / "result.json").is_file()
    *_, choreography_line, routing_line, last_line = lines
    assert CHOREOGRAPHY_LINE.fullmatch(choreography_line), choreography_line
    assert choreography_line == result["summary_choreography"]
    assert ROUTING_LINE.fullmatch(routing_line), routing_line
    assert LAST_LINE.fullmatch(last_line), last_line


def test_a_small_scale_run_confirms_every_sampled_saga_at_each_level(tmp_path: Path):
    lines, result = bench(tmp_path, "scale", "--open=10,20", "--sample=3", "--batch=4")

    assert [level["open"] for level in result["levels"]] == [10, 20]
    for level in result["levels"]:
        assert (level["start_failures"], level["non_2xx"]) == (0, {}), level
        assert level["confirm"]["count"] == 3, level
        assert level["throughput_per_s"] > 0, level
    assert result["failures"] == 0
    assert SCALE_LINE.fullmatch(lines[-1]), lines[-1]

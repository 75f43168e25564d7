"""Smoke test of ``python -m tools.bench``: a tiny run on its own stack (SQLite), end to end.

Checks what the run reports, never how fast it was: every phase delivered every saga, and
the last line has the documented format.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[3]
PHASES = ["baseline-remote", "saga-remote", "baseline-local", "saga-local", "http"]
LAST_LINE = re.compile(r"bench: \d+\.\d sagas/s, ratio \d+\.\d\d to baseline, p99 \d+ ms")


def test_a_small_bench_delivers_every_saga_in_every_phase(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}  # SQLite, whatever CI says
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.bench",
            "--sagas=10",
            "--concurrency=5",
            "--warmup=3",
            "--rate=10",  # requests/s: 5 orders/s and their confirms
            "--http-seconds=2",
            "--quiet",
            f"--out={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    result = json.loads((tmp_path / "latest.json").read_text())
    phases = {p["name"]: p for p in result["phases"]}
    assert list(phases) == PHASES
    for name, phase in phases.items():
        assert (phase["sagas"], phase["delivered"], phase["failures"]) == (10, 10, 0), name
    assert result["failures"] == 0
    assert (Path(result["run_dir"]) / "result.json").is_file()

    last_line = run.stdout.rstrip("\n").splitlines()[-1]
    assert LAST_LINE.fullmatch(last_line), last_line

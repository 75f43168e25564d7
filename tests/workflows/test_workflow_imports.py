"""The workflow package stays free of side-effecting imports (it runs in the sandbox)."""

import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_importing_workflows_loads_no_sqlalchemy():
    # A fresh interpreter: this test process has imported sqlalchemy already.
    check = "import workflows, sys; assert 'sqlalchemy' not in sys.modules, 'sqlalchemy loaded'"
    completed = subprocess.run(
        [sys.executable, "-c", check],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr

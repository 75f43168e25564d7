"""The alert rules (monitoring/prometheus/alerts.yml): each links to a section of the runbook
that exists, each has recorded series that make it fire and not fire, each reads metrics
that are documented, and promtool accepts the rules and passes their tests."""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.docs.test_readme import anchors

ROOT = Path(__file__).resolve().parents[2]
RULES_PATH = ROOT / "monitoring" / "prometheus" / "alerts.yml"
RULE_TESTS_PATH = ROOT / "monitoring" / "prometheus" / "alerts.test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
OPERATIONS = ROOT / "docs" / "operations.md"
RULES: list[dict[str, Any]] = [
    rule for group in yaml.safe_load(RULES_PATH.read_text())["groups"] for rule in group["rules"]
]
RULE_TESTS: list[dict[str, Any]] = yaml.safe_load(RULE_TESTS_PATH.read_text())["tests"]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (apt-get install prometheus; .ci/run installs it)",
)


def test_every_alert_links_to_a_section_of_the_runbook_that_exists() -> None:
    sections = anchors(RUNBOOK.read_text())
    for rule in RULES:
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "docs/runbook.md", f"{rule['alert']}: {url}"
        assert anchor in sections, f"{rule['alert']}: no section #{anchor} in docs/runbook.md"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in RULE_TESTS:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in RULES}
    assert alerts - fired == set(), "never recorded firing"
    assert alerts - quiet == set(), "never recorded staying quiet"


def test_every_saga_metric_an_alert_reads_is_documented() -> None:
    documented = OPERATIONS.read_text()
    read = {name for rule in RULES for name in re.findall(r"order_saga_\w+", rule["expr"])}
    assert read, "the rules read no saga metric"
    assert sorted(name for name in read if f"`{name}`" not in documented) == []


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES_PATH)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_the_rules_pass_their_recorded_series() -> None:
    assert PROMTOOL is not None
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS_PATH)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr

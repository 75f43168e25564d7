"""Customer tokens: ``<customer_id>.<hex HMAC-SHA256(secret, customer_id)>``, and the CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.auth import issue_customer_token, main, verify_customer_token

SECRET = "unit-test-secret-0123456789"
ROOT = Path(__file__).resolve().parents[2]


def test_a_token_names_its_customer() -> None:
    token = issue_customer_token(SECRET, "c1")
    customer_id, mac = token.split(".")
    assert customer_id == "c1"
    assert len(mac) == 64
    assert int(mac, 16) >= 0  # hex
    assert verify_customer_token(SECRET, token) == "c1"


def test_a_customer_id_may_contain_dots() -> None:
    token = issue_customer_token(SECRET, "acme.eu.c1")
    assert verify_customer_token(SECRET, token) == "acme.eu.c1"


def test_tokens_are_deterministic_and_differ_per_customer_and_secret() -> None:
    assert issue_customer_token(SECRET, "c1") == issue_customer_token(SECRET, "c1")
    assert issue_customer_token(SECRET, "c1") != issue_customer_token(SECRET, "c2")
    assert issue_customer_token(SECRET, "c1") != issue_customer_token(SECRET + "x", "c1")


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(lambda t: t.replace("c1.", "c2."), id="another customer, same mac"),
        pytest.param(lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"), id="mac changed"),
        pytest.param(lambda t: t.upper(), id="upper case"),
        pytest.param(lambda t: t + "00", id="mac too long"),
        pytest.param(lambda t: t[:-2], id="mac too short"),
        pytest.param(lambda t: t.split(".")[0], id="no mac"),
        pytest.param(lambda t: "." + t.split(".")[1], id="no customer"),
        pytest.param(lambda t: "c1.", id="empty mac"),
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: t[:-1] + "\u00e9", id="not ascii"),
        pytest.param(lambda t: issue_customer_token("another-secret-0123", "c1"), id="other key"),
    ],
)
def test_a_forged_token_is_refused(forged) -> None:
    assert verify_customer_token(SECRET, forged(issue_customer_token(SECRET, "c1"))) is None


def test_no_token_for_an_empty_customer_id() -> None:
    with pytest.raises(ValueError, match="customer id"):
        issue_customer_token(SECRET, "")


def test_the_cli_prints_a_token_made_with_the_environments_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUSTOMER_TOKEN_SECRET", SECRET)
    assert main(["token", "c1"]) == 0
    assert capsys.readouterr().out == issue_customer_token(SECRET, "c1") + "\n"


def test_the_cli_refuses_without_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "c1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "CUSTOMER_TOKEN_SECRET is not set" in captured.err


def test_the_cli_runs_as_a_module() -> None:
    env = {**os.environ, "CUSTOMER_TOKEN_SECRET": SECRET}
    done = subprocess.run(
        [sys.executable, "-m", "api.auth", "token", "c1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert verify_customer_token(SECRET, done.stdout.strip()) == "c1"

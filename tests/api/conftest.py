"""Fixtures of the API and settings unit tests."""

from pathlib import Path

import pytest

from settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting leaks in from the shell running the tests (each test sets what it needs)."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)  # and no .env file from the working directory

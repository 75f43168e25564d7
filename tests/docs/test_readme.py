"""The README is the manual: what it documents must match the code."""

from pathlib import Path

from settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme():
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in README]
    assert missing == [], f"settings missing from README.md's Configuration table: {missing}"


def test_the_readme_shows_the_two_commands():
    assert "make run" in README
    assert "make test" in README

"""The lock files (``make lock``) pin every dependency of pyproject.toml, with hashes.

requirements/main.txt: the [project] dependencies (what the Dockerfile installs);
requirements/dev.txt: those plus the ``dev`` and ``otel`` extras (what ``make install`` installs).
"""

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NAME = canonicalize_name(PYPROJECT["name"])


def pins(lock: str) -> dict[str, list[tuple[str, int]]]:
    """Every pinned requirement of a lock file: name -> [(version, number of hashes)]."""
    text = (ROOT / "requirements" / lock).read_text()
    assert "make lock" in text.split("\n", 2)[1], f"{lock} should say it comes from `make lock`"
    found: dict[str, list[tuple[str, int]]] = {}
    for entry in text.replace("\\\n", " ").splitlines():
        if not entry.strip() or entry.lstrip().startswith("#"):
            continue
        spec, *hashes = entry.split("--hash=")
        req = Requirement(spec.strip())
        (pin,) = req.specifier
        assert pin.operator == "==", f"{lock}: {entry.split()[0]} is not pinned with =="
        assert all(h.startswith("sha256:") for h in hashes), f"{lock}: {req.name} hash"
        found.setdefault(canonicalize_name(req.name), []).append((pin.version, len(hashes)))
    return found


def declared(*groups: str) -> list[Requirement]:
    extras = PYPROJECT["optional-dependencies"]
    reqs = [Requirement(r) for group in groups for r in extras.get(group, [])]
    return [r for r in reqs if canonicalize_name(r.name) != NAME]  # order-saga[otel] itself


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("main.txt", [Requirement(r) for r in PYPROJECT["dependencies"]]),
        ("dev.txt", [Requirement(r) for r in PYPROJECT["dependencies"]] + declared("dev", "otel")),
    ],
)
def test_lock_pins_every_requirement_with_hashes(lock: str, requirements: list[Requirement]):
    locked = pins(lock)
    for name, pinned in locked.items():
        assert all(count >= 1 for _, count in pinned), f"{lock}: {name} has no --hash"
    for req in requirements:
        versions = locked.get(canonicalize_name(req.name))
        assert versions, f"{req.name} is not in requirements/{lock}: run `make lock`"
        for version, _ in versions:
            assert req.specifier.contains(version, prereleases=True), (
                f"requirements/{lock} pins {req.name}=={version}, pyproject.toml wants {req}"
            )


def test_runtime_lock_is_the_dev_lock_without_the_dev_tools():
    dev = pins("dev.txt")
    for name, versions in pins("main.txt").items():
        assert [v for v, _ in versions] == [v for v, _ in dev.get(name, [])], name

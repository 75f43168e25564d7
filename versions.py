"""Which build of the saga this code is, and a copy of it to run beside a newer one.

A saga is pinned to the build it started on, so the build id must change whenever the saga
can: by default it is a hash of ``workflows/`` and ``domain/``.

``python -m versions build-id`` prints it; ``python -m versions snapshot DIR`` copies the code a
worker runs into DIR, to keep an older build's workers running for the sagas pinned to it.
"""

import argparse
import hashlib
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# What the saga's shape and payloads are made of: the build id hashes these.
SAGA_CODE = ("workflows", "domain")
# What a worker process runs (worker.py and everything it imports).
WORKER_CODE = (
    "activities",
    "choreography",
    "domain",
    "sagas",
    "services",
    "store",
    "workflows",
    "faults.py",
    "settings.py",
    "telemetry.py",
    "versions.py",
    "worker.py",
)


def code_build_id(root: Path = ROOT) -> str:
    """A hash of the Python files of :data:`SAGA_CODE` under ``root``: their paths and
    contents, in a fixed order. 12 hex digits."""
    digest = hashlib.sha256()
    for package in SAGA_CODE:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def snapshot(destination: Path, root: Path = ROOT) -> None:
    """Copy :data:`WORKER_CODE` from ``root`` into ``destination`` (created; it must not
    exist), without compiled files."""
    destination.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in WORKER_CODE:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m versions", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build-id", help="print this code's build id")
    copy = commands.add_parser("snapshot", help="copy the code a worker runs into DIR")
    copy.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build-id":
        print(code_build_id())
    else:
        snapshot(args.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make audit``: the lock files against the bundled advisory snapshot, offline."""

from pathlib import Path

import pytest

from tools.audit import audit, bundled_advisories, main

ROOT = Path(__file__).resolve().parents[2]
LOCKS = [ROOT / "requirements" / "dev.txt", ROOT / "requirements" / "main.txt"]


def test_the_lock_files_pin_no_known_vulnerable_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(lock) for lock in LOCKS]) == 0
    assert "0 affected" in capsys.readouterr().out


def test_a_pinned_version_inside_an_advisorys_range_fails_the_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # h11 before 0.16.0 accepts malformed chunked bodies (CVE-2025-43859, GHSA-vqfr-h8mv-ghfj).
    lock = tmp_path / "requirements.txt"
    lock.write_text(
        "# make lock\n"
        "h11==0.14.0 \\\n    --hash=sha256:00\n"
        "fastapi[standard]==0.165.0 \\\n    --hash=sha256:00\n"
    )
    assert main([str(lock)]) == 1
    shown = capsys.readouterr().out
    assert "h11==0.14.0 is affected by GHSA-vqfr-h8mv-ghfj" in shown
    assert "fixed in 0.16.0" in shown
    assert "fastapi" not in shown.split("audit:")[0]
    # Accepted on purpose: not a finding any more.
    findings = audit([lock], bundled_advisories(), frozenset({"GHSA-vqfr-h8mv-ghfj"}))
    assert [f.advisory for f in findings if f.package == "h11"] == []


def test_the_snapshot_is_not_empty() -> None:
    advisories = bundled_advisories()
    assert sum(len(entries) for entries in advisories.values()) > 5000
    assert "h11" in advisories

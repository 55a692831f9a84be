"""Quality gates that run with the test suite: ruff and mypy --strict must pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _plants() -> list[Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import plants
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return list(plants.PLANTS)


def test_every_planted_bug_still_fits_the_code_and_is_listed() -> None:
    """bench/plants.py runs only by hand; a plant whose text no longer matches (code moved)
    would prove nothing without anyone noticing. Each must match its file exactly once, name
    tests that exist, and have its row in tests/SAFETY.md."""
    safety = (ROOT / "tests" / "SAFETY.md").read_text(encoding="utf-8")
    stale = []
    for plant in _plants():
        source = (ROOT / "tablettracker_backups" / plant.file).read_text(encoding="utf-8")
        if source.count(plant.old) != 1:
            stale.append(f"{plant.id}: its text is in {plant.file} {source.count(plant.old)} times")
        for test in plant.tests:
            module = test.split("::")[0]
            if not (ROOT / module).is_file():
                stale.append(f"{plant.id}: no test file {module}")
            elif "::" in test:
                name = test.split("::")[1].split("[")[0]
                if f"def {name}(" not in (ROOT / module).read_text(encoding="utf-8"):
                    stale.append(f"{plant.id}: no test {name} in {module}")
        if f"`{plant.id}`" not in safety:
            stale.append(f"{plant.id}: no row in tests/SAFETY.md")
    assert not stale, "\n".join(stale)

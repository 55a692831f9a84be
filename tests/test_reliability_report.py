"""The report generator itself: skipped tests show as skipped, kinds are totalled apart, and
under pytest-xdist the rows of every worker reach the one report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.faultkit import ROOT

CONFTEST = """
from tests.reliability import (
    pytest_collection_finish, pytest_deselected, pytest_runtest_makereport, pytest_sessionfinish,
    pytest_testnodedown, reliability,
)
import pytest

@pytest.fixture
def needs_something():
    pytest.skip("no such device here")
"""

FIRST = """
def test_fault(reliability):
    reliability("a fault", trials=3, checked="c")

def test_fuzz(reliability):
    reliability("a fuzz target", trials=50, checked="p", kind="fuzz")

def test_later_skipped(reliability):
    reliability("needs a device", trials=2, checked="d")
"""

SECOND = FIRST.replace(
    "def test_later_skipped(reliability):", "def test_later_skipped(needs_something, reliability):"
)


def run(folder: Path, body: str, artifacts: Path, *args: str) -> list[dict[str, object]]:
    (folder / "test_sample.py").write_text(body)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RELIABILITY_ARTIFACTS": str(artifacts)}
    env.pop("RELIABILITY_UPDATE", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sample.py", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode in (0, 5), done.stdout + done.stderr
    return list(json.loads((artifacts / "reliability.json").read_text())["rows"])


def test_a_test_skipped_in_a_fixture_shows_as_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "suite"
    folder.mkdir()
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "pytest.ini").write_text("[pytest]\n")
    artifacts = tmp_path / "artifacts"
    first = {r["fault"]: r for r in run(folder, FIRST, artifacts)}
    assert first["needs a device"]["result"] == "pass"
    second = {r["fault"]: r for r in run(folder, SECOND, artifacts)}
    skipped = second["needs a device"]
    assert (skipped["result"], skipped["trials"]) == ("skipped", 0)
    assert skipped["detail"] == "skipped: no such device here"
    report = (artifacts / "RELIABILITY.md").read_text()
    assert "fault trials: 3 in 2 classes; attacks: 0 in 0 classes; fuzz inputs: 50 in 1" in report
    assert "not passing: 0; skipped this run (0 trials counted): 1" in report
    # A deselected test (-k, -m 'not slow') did not run: its row from before is kept as it was.
    third = {r["fault"]: r for r in run(folder, SECOND, artifacts, "-k", "not fuzz")}
    assert third["a fuzz target"] == second["a fuzz target"]


def test_rows_from_every_xdist_worker_are_written_once(tmp_path: Path) -> None:
    """Three tests on two workers (xdist hands them out one by one, so both workers run some):
    the controller writes every row with its outcome and skip reason, as one process does
    (the test above)."""
    folder = tmp_path / "suite"
    folder.mkdir()
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "pytest.ini").write_text("[pytest]\n")
    artifacts = tmp_path / "artifacts"
    first = run(folder, FIRST, artifacts, "-n", "2")
    assert [(r["fault"], r["result"], r["trials"]) for r in first] == [
        ("a fault", "pass", 3),
        ("a fuzz target", "pass", 50),
        ("needs a device", "pass", 2),
    ]
    second = run(folder, SECOND, artifacts, "-n", "2")
    assert [r["result"] for r in second] == ["pass", "pass", "skipped"]
    assert second[2]["detail"] == "skipped: no such device here"
    report = (artifacts / "RELIABILITY.md").read_text()
    assert "fault trials: 3 in 2 classes; attacks: 0 in 0 classes; fuzz inputs: 50 in 1" in report
    assert "not passing: 0; skipped this run (0 trials counted): 1" in report

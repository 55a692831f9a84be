"""Collects what the fault and attack tests did, and regenerates ``tests/RELIABILITY.md``.

A test asks for the ``reliability`` fixture and calls it once per fault or attack class it
exercises, BEFORE the trials (so a failing test still shows up, as FAIL):
``row = reliability("kill -9 backup", trials=30, checked="...")``; it may fill in
``row["detail"]`` (and correct ``row["trials"]``) as it goes. The
test's own outcome (pass or FAIL) is filled in by :func:`pytest_runtest_makereport`. At the end
of the session the rows are merged into ``tests/reliability.json`` (rows of tests that did not
run this time are kept, so running one file updates only its rows) and the markdown table is
written from that file. Nobody edits the markdown by hand.

Under pytest-xdist each worker collects the rows of the tests it ran and hands them to the
controller at its end (``config.workeroutput``, read in :func:`pytest_testnodedown`); only the
controller merges and writes, once, so the report is the same however the tests were spread.

The hooks are imported into ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Generator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "reliability.json"
REPORT_MD = HERE / "RELIABILITY.md"
ARTIFACTS = HERE.parent / "test-artifacts"

Recorder = Callable[..., dict[str, Any]]
#: What a row counts: fault trials (a real fault injected), attacks (hostile requests or files),
#: fuzz inputs (generated inputs, each checked against a property). Totalled apart.
KINDS = ("fault", "attack", "fuzz")

_ROWS: dict[str, list[dict[str, Any]]] = {}
_OUTCOMES: dict[str, str] = {}
_SKIP_REASONS: dict[str, str] = {}
_STARTED: dict[str, float] = {}
_DURATIONS: dict[str, float] = {}
_COLLECTED_FILES: set[str] = set()
_COLLECTED_IDS: set[str] = set()
_DESELECTED: set[str] = set()


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Recorder:
    """Record one fault or attack class exercised by this test (see the module docstring)."""
    nodeid = request.node.nodeid
    _ROWS.setdefault(nodeid, [])

    def record(
        fault: str, *, trials: int, checked: str, detail: str = "", kind: str | None = None
    ) -> dict[str, Any]:
        # Default: the test module's RELIABILITY_KIND (test_hostile.py: "attack"), else "fault".
        kind = kind or getattr(request.module, "RELIABILITY_KIND", "fault")
        assert kind in KINDS, kind
        row: dict[str, Any] = {
            "fault": fault,
            "kind": kind,
            "trials": int(trials),
            "checked": checked,
            "detail": detail,
        }
        _ROWS[nodeid].append(row)
        return row

    return record


def pytest_deselected(items: list[pytest.Item]) -> None:
    # Deselected (``-m 'not slow'``): not run this time, so their rows from before are kept.
    _DESELECTED.update(item.nodeid for item in items)


def pytest_collection_finish(session: pytest.Session) -> None:
    for item in session.items:
        _COLLECTED_IDS.add(item.nodeid)
        _COLLECTED_FILES.add(item.nodeid.split("::", 1)[0])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "setup":
        _STARTED[item.nodeid] = time.monotonic()
    if report.failed:
        _OUTCOMES[item.nodeid] = "FAIL"
    elif report.skipped:
        # In a fixture (setup) or in the test: either way its rows were not checked this time.
        _OUTCOMES[item.nodeid] = "skipped"
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _SKIP_REASONS[item.nodeid] = reason.removeprefix("Skipped: ")
    elif report.when == "call" and report.passed:
        _OUTCOMES.setdefault(item.nodeid, "pass")
    if report.when == "teardown" and item.nodeid in _STARTED:
        _DURATIONS[item.nodeid] = time.monotonic() - _STARTED[item.nodeid]
    return report


def _targets() -> tuple[Path, Path]:
    """Where a run writes the report: ``test-artifacts/`` (git-ignored), so running the tests
    leaves the work tree clean; ``RELIABILITY_UPDATE=1`` writes the committed copy in tests/."""
    if os.environ.get("RELIABILITY_UPDATE") == "1":
        return RESULTS_JSON, REPORT_MD
    # RELIABILITY_ARTIFACTS: another folder (the report's own test uses a scratch one).
    folder = Path(os.environ.get("RELIABILITY_ARTIFACTS") or ARTIFACTS)
    return folder / RESULTS_JSON.name, folder / REPORT_MD.name


def _merge(results_json: Path) -> list[dict[str, Any]]:
    scratch = bool(os.environ.get("RELIABILITY_ARTIFACTS"))
    source = results_json if results_json.exists() or scratch else RESULTS_JSON
    try:
        previous = json.loads(source.read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        previous = []
    kept = [
        _skipped(row) if _OUTCOMES.get(row["test"]) == "skipped" else row
        for row in previous
        if row["test"] not in _ROWS
        # A test of a file collected this time that was not collected is gone (or renamed).
        and not (
            row["test"].split("::", 1)[0] in _COLLECTED_FILES
            and row["test"] not in _COLLECTED_IDS
            and row["test"] not in _DESELECTED
        )
    ]
    fresh = [
        dict(
            _skipped(row, nodeid) if _OUTCOMES.get(nodeid) == "skipped" else row,
            test=nodeid,
            result=_OUTCOMES.get(nodeid, "not run"),
            seconds=round(_DURATIONS.get(nodeid, 0.0), 1),
        )
        for nodeid, rows in _ROWS.items()
        for row in rows
    ]
    return sorted(kept + fresh, key=lambda r: (r["test"].split("::", 1)[0], r["fault"]))


def _skipped(row: dict[str, Any], nodeid: str | None = None) -> dict[str, Any]:
    """A row whose test was skipped this run: no trials were checked, whatever ran before."""
    test = nodeid or row["test"]
    return dict(
        row, result="skipped", trials=0, detail=f"skipped: {_SKIP_REASONS.get(test, '')}"[:200]
    )


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict[str, Any]]) -> str:
    """The markdown report."""
    failed = [r for r in rows if r["result"] not in ("pass", "skipped")]
    skipped = [r for r in rows if r["result"] == "skipped"]
    here = [r for r in rows if not r.get("apart")]
    apart = [r for r in rows if r.get("apart")]
    minutes = sum({r["test"]: r["seconds"] for r in here if r.get("kind") != "fuzz"}.values()) / 60
    counts = []
    for kind, label in (("fault", "fault trials"), ("attack", "attacks"), ("fuzz", "fuzz inputs")):
        mine = [r for r in rows if r.get("kind", "fault") == kind]
        counts.append(f"{label}: {sum(r['trials'] for r in mine)} in {len(mine)} classes")
    lines = [
        "# Reliability and security report",
        "",
        "Generated by the test suite (`tests/reliability.py` collects what each fault and attack",
        "test did; do not edit by hand). Every run of the tests writes it to `test-artifacts/`;",
        "`RELIABILITY_UPDATE=1 python -m pytest` (the whole suite) regenerates this copy.",
        "",
        f"- {'; '.join(counts)} (counted apart: a fuzz input is one generated input checked "
        "against a property, a fault trial is one injected fault checked end to end)",
        f"- Classes: {len(rows)}; not passing: {len(failed)}; skipped this run (0 trials "
        f"counted): {len(skipped)}",
        f"- Time in the tests that recorded rows: {minutes:.1f} min (the fuzz tests not "
        "counted), measured on a machine shared with other test runs"
        + (
            f"; rows run apart and merged in (`python -m tests.reliability --merge`, e.g. the "
            f"slow crash trials): {len(apart)} rows, {sum(r['trials'] for r in apart)} trials, "
            f"{sum(r['seconds'] for r in apart) / 60:.1f} min"
            if apart
            else ""
        ),
        f"- Last regenerated: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "",
        "| Kind | Fault, attack or fuzz target | Trials | What the test asserts | Result | Details "
        "| Test (seconds) |",
        "| --- | --- | ---: | --- | --- | --- | --- |",
    ]
    order = {kind: index for index, kind in enumerate(KINDS)}
    for row in sorted(rows, key=lambda r: order.get(r.get("kind", "fault"), 0)):
        test = row["test"].split("/")[-1]
        lines.append(
            f"| {row.get('kind', 'fault')} | {_cell(row['fault'])} | {row['trials']} | "
            f"{_cell(row['checked'])} | "
            f"{_cell(row['result'])} | {_cell(row['detail'])} | `{_cell(test)}` "
            f"({row['seconds']}) |"
        )
    return "\n".join(lines) + "\n"


#: What a worker hands the controller (see the module docstring).
WORKER_OUTPUT = "reliability"


def _collected() -> dict[str, Any]:
    """This process's rows, outcomes and collection, as plain JSON-able values."""
    return {
        "rows": _ROWS,
        "outcomes": _OUTCOMES,
        "skip_reasons": _SKIP_REASONS,
        "durations": _DURATIONS,
        "collected_files": sorted(_COLLECTED_FILES),
        "collected_ids": sorted(_COLLECTED_IDS),
        "deselected": sorted(_DESELECTED),
    }


def _absorb(collected: dict[str, Any]) -> None:
    """Add a worker's :func:`_collected` to this (the controller's) process."""
    for nodeid, rows in collected["rows"].items():
        _ROWS.setdefault(nodeid, []).extend(rows)
    _OUTCOMES.update(collected["outcomes"])
    _SKIP_REASONS.update(collected["skip_reasons"])
    _DURATIONS.update(collected["durations"])
    _COLLECTED_FILES.update(collected["collected_files"])
    _COLLECTED_IDS.update(collected["collected_ids"])
    _DESELECTED.update(collected["deselected"])


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown when xdist is not loaded
def pytest_testnodedown(node: Any, error: object) -> None:
    # On the controller, as each worker ends: its rows (a worker that crashed sends none; its
    # crashed test fails the run anyway).
    output = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
    if output:
        _absorb(json.loads(output))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller writes the report
        workeroutput[WORKER_OUTPUT] = json.dumps(_collected())
        return
    if not _ROWS:
        return
    results_json, report_md = _targets()
    rows = _merge(results_json)
    results_json.parent.mkdir(parents=True, exist_ok=True)
    results_json.write_text(
        json.dumps({"rows": rows}, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    report_md.write_text(render(rows), encoding="utf-8")


def merge_files(paths: list[Path]) -> None:
    """Add the rows of other runs' reliability.json files (e.g. the slow crash trials, run in
    slices elsewhere) to the committed results: a row replaces one with the same test and
    fault name, so re-merging a slice updates it."""
    rows = json.loads(RESULTS_JSON.read_text(encoding="utf-8"))["rows"]
    for path in paths:
        extra = [
            dict(row, apart=True) for row in json.loads(path.read_text(encoding="utf-8"))["rows"]
        ]
        keys = {(r["test"], r["fault"]) for r in extra}
        rows = [r for r in rows if (r["test"], r["fault"]) not in keys] + extra
    rows.sort(key=lambda r: (r["test"].split("::", 1)[0], r["fault"]))
    RESULTS_JSON.write_text(json.dumps({"rows": rows}, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    # python -m tests.reliability [--merge RESULTS.json ...]: (merge, then) re-render the
    # markdown from the JSON.
    import sys

    if sys.argv[1:2] == ["--merge"]:
        merge_files([Path(p) for p in sys.argv[2:]])
    REPORT_MD.write_text(
        render(json.loads(RESULTS_JSON.read_text(encoding="utf-8"))["rows"]), encoding="utf-8"
    )

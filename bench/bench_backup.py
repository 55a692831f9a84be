"""Time this project's backup against two baselines, on the same database, in one run.

Usage::

    python bench/bench_backup.py --db /tmp/tt.db [--repeat 3] [--modes delete,wal]

Methods, each run as its own process so its peak memory (max RSS, from ``wait4``) is its own:

* ``ours``: ``tablettracker_backups.backup.create_backup`` with default settings (snapshot
  through the backup API, integrity_check + foreign_key_check + row counts on the copy, zstd,
  SHA-256 of the raw and stored files, fsync, rename, metadata last).
* ``report`` (baseline a), the method of the original report: Python's ``sqlite3`` backup API
  copy to a file (one step), ``PRAGMA integrity_check`` on the copy, gzip level 9, SHA-256.
* ``cli`` (baseline b): ``sqlite3 DB ".backup FILE"`` followed by ``zstd -3``.

While each method runs, a separate writer process commits one small transaction (a count
session) every ``--interval`` ms with a high busy timeout, and records its longest commit
latency and any busy errors. This is done with the database in rollback-journal (DELETE) mode
and in WAL mode (the same file, switched between modes). Results go to a table on stdout and
to JSON under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))

METHODS = ("ours", "report", "cli")
LABELS = {"ours": "ours", "report": "(a) report", "cli": "(b) sqlite3+zstd"}
CHUNK = 1024 * 1024


# --- the methods, each run in a child process -------------------------------------------------


def run_ours(db: Path, workdir: Path) -> dict[str, Any]:
    """This project's backup with default settings; returns stored size and stage durations.

    ``BENCH_OURS_SETTINGS`` (JSON) overrides settings, for trying alternatives.
    """
    from tablettracker_backups.backup import create_backup
    from tablettracker_backups.settings import settings_from_mapping

    values: dict[str, Any] = {"database": db, "dir": workdir / "backups"}
    values.update(json.loads(os.environ.get("BENCH_OURS_SETTINGS", "{}")))
    settings = settings_from_mapping(values)
    result = create_backup(settings, kind="manual", trigger="bench")
    meta = result.metadata
    return {
        "stored_size": meta.stored_size,
        "durations": meta.durations,
        "compression": f"{meta.compression} {meta.compression_level}",
    }


def run_report(db: Path, workdir: Path) -> dict[str, Any]:
    """The original report's method: backup API copy, integrity_check, gzip -9, SHA-256."""
    raw = workdir / "report.db"
    stored = workdir / "report.db.gz"
    times: dict[str, float] = {}
    began = time.monotonic()
    src = sqlite3.connect(db)
    dst = sqlite3.connect(raw)
    src.backup(dst)
    dst.close()
    src.close()
    times["snapshot"] = time.monotonic() - began
    conn = sqlite3.connect(raw)
    integrity = conn.execute("PRAGMA integrity_check").fetchall()
    conn.close()
    if integrity != [("ok",)]:
        raise RuntimeError(f"integrity_check: {integrity}")
    times["verify"] = time.monotonic() - began - times["snapshot"]
    with raw.open("rb") as reader, gzip.open(stored, "wb", compresslevel=9) as writer:
        shutil.copyfileobj(reader, writer, CHUNK)
    times["compress"] = time.monotonic() - began - times["snapshot"] - times["verify"]
    digest = hashlib.sha256()
    with stored.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    raw.unlink()
    times["total"] = time.monotonic() - began
    return {"stored_size": stored.stat().st_size, "durations": times, "compression": "gzip 9"}


def run_cli(db: Path, workdir: Path) -> dict[str, Any]:
    """``sqlite3 .backup`` to a file, then ``zstd -3`` of that file."""
    raw = workdir / "cli.db"
    stored = workdir / "cli.db.zst"
    began = time.monotonic()
    # .timeout: wait for a writer's lock like the other methods do, instead of failing at once.
    subprocess.run(["sqlite3", "-cmd", ".timeout 120000", str(db), f".backup '{raw}'"], check=True)
    snapshot = time.monotonic() - began
    subprocess.run(["zstd", "-q", "-3", "-f", str(raw), "-o", str(stored)], check=True)
    raw.unlink()
    total = time.monotonic() - began
    return {
        "stored_size": stored.stat().st_size,
        "durations": {"snapshot": snapshot, "compress": total - snapshot, "total": total},
        "compression": "zstd 3",
    }


def child_main(method: str, db: Path, workdir: Path) -> int:
    """Entry point of a method's child process: prints one JSON line."""
    runner = {"ours": run_ours, "report": run_report, "cli": run_cli}[method]
    print(json.dumps(runner(db, workdir)))
    return 0


# --- the concurrent writer --------------------------------------------------------------------


def writer_main(
    db: str, interval: float, recording: EventType, stop: EventType, results: Any
) -> None:
    """Commit one small transaction every ``interval`` seconds until ``stop``.

    Latencies are recorded only while ``recording`` is set (the backup's duration), and the
    idle ones before it as a baseline.
    """
    conn = sqlite3.connect(db, timeout=120.0)  # a live app's writer waits rather than fails
    idle_max = 0.0
    latencies: list[float] = []
    busy = 0
    other_errors: list[str] = []
    counted = 0
    slow: list[tuple[float, float]] = []
    recording_since = 0.0
    while not stop.is_set():
        began = time.perf_counter()
        try:
            conn.execute(
                "INSERT INTO count_sessions (po_line_id, employee_id, counted_at,"
                " tablets_counted, damaged, notes) VALUES (1, 1, ?, ?, 0, ?)",
                (datetime.now(timezone.utc).isoformat(), counted, "bench writer"),
            )
            conn.commit()
        except sqlite3.OperationalError as exc:
            conn.rollback()
            if "locked" in str(exc) or "busy" in str(exc):
                busy += 1
            else:
                other_errors.append(str(exc))
        elapsed = time.perf_counter() - began
        counted += 1
        if recording.is_set():
            if not latencies:
                recording_since = began
            latencies.append(elapsed)
            if elapsed > 0.03 and len(slow) < 40:
                slow.append((round(began - recording_since, 3), round(1000 * elapsed, 1)))
        else:
            idle_max = max(idle_max, elapsed)
        time.sleep(interval)
    conn.close()
    latencies.sort()
    results.put(
        {
            "commits": len(latencies),
            "max_ms": 1000 * latencies[-1] if latencies else 0.0,
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0,
            "median_ms": 1000 * statistics.median(latencies) if latencies else 0.0,
            "idle_max_ms": 1000 * idle_max,
            "busy_errors": busy,
            "other_errors": other_errors[:5],
            "slow_commits_at_s_ms": slow,
        }
    )


@contextlib.contextmanager
def concurrent_writer(db: Path, interval: float, enabled: bool) -> Iterator[dict[str, Any]]:
    """Run the writer for the block; the yielded dict is filled with its figures afterwards."""
    figures: dict[str, Any] = {}
    if not enabled:
        yield figures
        return
    ctx = multiprocessing.get_context("spawn")
    recording, stop = ctx.Event(), ctx.Event()
    results = ctx.Queue()
    process = ctx.Process(
        target=writer_main, args=(str(db), interval, recording, stop, results), daemon=True
    )
    process.start()
    time.sleep(1.0)  # spawn, connect, and collect an idle baseline
    recording.set()
    try:
        yield figures
    finally:
        stop.set()
        figures.update(results.get(timeout=180))
        process.join(timeout=30)


# --- the parent -------------------------------------------------------------------------------


@dataclass
class Run:
    """One method's run: wall seconds, peak RSS, stored size, the writer's figures."""

    method: str
    mode: str
    phase: str
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    stored_size: int
    finished: bool
    detail: dict[str, Any]
    writer: dict[str, Any] = field(default_factory=dict)


def run_method(
    method: str,
    db: Path,
    workdir: Path,
    timeout: float | None = None,
    *,
    script: Path | None = None,
) -> tuple[float, float, float, dict[str, Any] | None]:
    """Run ``method`` in a child process; (wall s, CPU s, peak RSS MiB, its JSON output).

    The child is ``script --child METHOD --db DB --workdir DIR`` (this file by default; other
    benchmarks reuse this with their own methods).

    CPU seconds (user + system, all threads and child processes) show the work done, which
    the shared machine's load does not inflate the way it inflates wall time.

    The output is ``None`` when the child was killed after ``timeout`` seconds.
    """
    began = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, str(script or Path(__file__).resolve()), "--child", method,
         "--db", str(db), "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        start_new_session=True,  # so a timeout can kill the child's own children too
    )  # fmt: skip
    assert child.stdout is not None
    deadline = None if timeout is None else began + timeout
    killed = False
    while True:
        # wait4 gives this child's own peak RSS (including its children), unlike
        # RUSAGE_CHILDREN which keeps the maximum over every child ever waited for.
        pid, status, usage = os.wait4(child.pid, os.WNOHANG if deadline else 0)
        if pid:
            break
        if deadline is not None and time.monotonic() > deadline:
            os.killpg(child.pid, signal.SIGKILL)
            killed = True
            deadline = None
        time.sleep(0.02)
    seconds = time.monotonic() - began
    cpu = usage.ru_utime + usage.ru_stime
    rss = usage.ru_maxrss / 1024
    output = child.stdout.read()
    child.stdout.close()
    child.returncode = os.waitstatus_to_exitcode(status)
    if killed:
        return seconds, cpu, rss, None
    if child.returncode != 0:
        print(f"  {method} failed with exit code {child.returncode}", file=sys.stderr)
        return seconds, cpu, rss, None
    return seconds, cpu, rss, json.loads(output)


def set_journal_mode(db: Path, mode: str) -> None:
    """Switch the benchmark database's journal mode (checkpointing a WAL first)."""
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        got = conn.execute(f"PRAGMA journal_mode={mode}").fetchone()[0]
        if got != mode:
            raise RuntimeError(f"could not switch {db} to {mode} (still {got})")
    finally:
        conn.close()


def warm_cache(db: Path) -> None:
    """Read the database once so every method starts with it in the page cache."""
    with db.open("rb") as handle:
        while handle.read(16 * CHUNK):
            pass


def one_run(
    args: argparse.Namespace, method: str, mode: str, phase: str, timeout: float | None
) -> Run:
    """Run one method once (with the writer in the stall phase) and print a line about it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"ttbench-{method}-", dir=args.workdir))
    try:
        with concurrent_writer(args.db, args.interval / 1000, phase == "stall") as writer:
            seconds, cpu, rss, detail = run_method(method, args.db, workdir, timeout)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    finished = detail is not None
    stored = int(detail["stored_size"]) if detail else 0
    run = Run(method, mode, phase, seconds, cpu, rss, stored, finished, detail or {}, writer)
    line = (
        f"  {phase:6} {mode:6} {LABELS[method]:18} {seconds:7.2f}s (cpu {cpu:6.2f}s) "
        f"{rss:6.1f} MiB {stored / 2**20:7.1f} MiB stored"
    )
    if phase == "stall":
        line += (
            f"  writer max {writer.get('max_ms', 0):7.1f} ms"
            f" (idle {writer.get('idle_max_ms', 0):.1f}) busy {writer.get('busy_errors', 0)}"
        )
    if not finished:
        line += "  DID NOT FINISH" + (f" in {timeout:.0f}s" if timeout else "")
    print(line, flush=True)
    return run


def run_all(args: argparse.Namespace) -> list[Run]:
    """Timing runs (no writer, rollback-journal mode), then stall runs per journal mode.

    Methods rotate between repeats so that none always runs first on the shared machine.
    """
    runs: list[Run] = []
    args.workdir.mkdir(parents=True, exist_ok=True)
    methods: list[str] = args.methods
    set_journal_mode(args.db, "delete")
    warm_cache(args.db)
    for repeat in range(args.repeat):
        shift = repeat % len(methods)
        for method in methods[shift:] + methods[:shift]:
            if method == "report" and repeat >= args.report_repeat:
                continue
            runs.append(one_run(args, method, "delete", "timing", None))
    idle = {m: min((r.seconds for r in runs if r.method == m), default=60.0) for m in methods}
    for mode in args.modes:
        set_journal_mode(args.db, mode)
        warm_cache(args.db)
        for _ in range(args.stall_repeat):
            for method in methods:
                # sqlite3's .backup restarts whenever another process commits between its
                # steps, so under a steady writer it may never finish: bound it.
                timeout = max(30.0, 3 * idle[method]) if method == "cli" else None
                runs.append(one_run(args, method, mode, "stall", timeout))
    set_journal_mode(args.db, "delete")
    return runs


def summarise(runs: list[Run], mode: str, method: str) -> dict[str, Any]:
    """Median time, highest peak memory, median size (timing runs); median stall per mode."""
    timing = [r for r in runs if r.phase == "timing" and r.method == method]
    stall = [r for r in runs if r.phase == "stall" and r.mode == mode and r.method == method]
    out: dict[str, Any] = {}
    if timing:
        out.update(
            seconds=statistics.median(r.seconds for r in timing),
            best_seconds=min(r.seconds for r in timing),
            cpu_seconds=statistics.median(r.cpu_seconds for r in timing),
            peak_rss_mb=max(r.peak_rss_mb for r in timing),
            stored_size=statistics.median(r.stored_size for r in timing),
            runs=len(timing),
        )
    if stall:
        out.update(
            stall_ms=statistics.median(r.writer.get("max_ms", 0.0) for r in stall),
            stall_p99_ms=statistics.median(r.writer.get("p99_ms", 0.0) for r in stall),
            idle_max_ms=max(r.writer.get("idle_max_ms", 0.0) for r in stall),
            busy_errors=sum(r.writer.get("busy_errors", 0) for r in stall),
            finished_under_writer=all(r.finished for r in stall),
            seconds_under_writer=statistics.median(r.seconds for r in stall),
        )
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def report(runs: list[Run], modes: list[str]) -> dict[str, Any]:
    """Medians per method and mode, ours' ratios against (a) and (b), the targets' verdicts."""
    modes = modes or ["delete"]
    per_mode = {mode: {m: summarise(runs, mode, m) for m in METHODS} for mode in modes}
    for part in per_mode.values():
        if not part["cli"].get("finished_under_writer", True):
            part["cli"]["stall_ms"] = None  # it never finished, so it has no stall to compare
    t = per_mode[modes[0]]
    ours, a, b = t["ours"], t["report"], t["cli"]
    ratios: dict[str, float | None] = {
        "time (a)/ours": _ratio(a.get("seconds"), ours.get("seconds")),
        "time ours/(b)": _ratio(ours.get("seconds"), b.get("seconds")),
        "best time (a)/ours": _ratio(a.get("best_seconds"), ours.get("best_seconds")),
        "best time ours/(b)": _ratio(ours.get("best_seconds"), b.get("best_seconds")),
        "cpu (a)/ours": _ratio(a.get("cpu_seconds"), ours.get("cpu_seconds")),
        "cpu ours/(b)": _ratio(ours.get("cpu_seconds"), b.get("cpu_seconds")),
        "memory ours/(a)": _ratio(ours.get("peak_rss_mb"), a.get("peak_rss_mb")),
        "memory ours/(b)": _ratio(ours.get("peak_rss_mb"), b.get("peak_rss_mb")),
        "size ours/(a)": _ratio(ours.get("stored_size"), a.get("stored_size")),
        "size ours/(b)": _ratio(ours.get("stored_size"), b.get("stored_size")),
    }
    for mode, part in per_mode.items():
        ratios[f"stall {mode} ours/(a)"] = _ratio(
            part["ours"].get("stall_ms"), part["report"].get("stall_ms")
        )
        ratios[f"stall {mode} ours/(b)"] = _ratio(
            part["ours"].get("stall_ms"), part["cli"].get("stall_ms")
        )
    targets: dict[str, bool | None] = {
        "at least 8x faster than (a)": _at_least(ratios["time (a)/ours"], 8),
        "stored file no larger than (a)'s": _at_most(ratios["size ours/(a)"], 1),
        "within 2x of (b)'s time": _at_most(ratios["time ours/(b)"], 2),
        "peak memory under 100 MB": _at_most(ours.get("peak_rss_mb"), 100e6 / 2**20),
    }
    if "delete" in per_mode:
        targets["rollback-journal stall at most half of (a)'s"] = _at_most(
            ratios["stall delete ours/(a)"], 0.5
        )
    if "wal" in per_mode:
        wal = per_mode["wal"]["ours"]
        targets["WAL stall under 50 ms"] = _at_most(wal.get("stall_ms"), 50)
        targets["WAL: no busy errors"] = (
            None if "busy_errors" not in wal else wal["busy_errors"] == 0
        )
    return {"methods": per_mode, "ratios": ratios, "targets": targets}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(summary: dict[str, Any]) -> None:
    """A human-readable table: absolute medians per method, then ratios and verdicts."""
    modes = list(summary["methods"])
    head = (
        f"{'method':18} {'time s':>8} {'best s':>8} {'cpu s':>8} {'peak MiB':>9} {'stored MiB':>11}"
    )
    head += "".join(f" {'stall ' + mode + ' ms':>17}" for mode in modes)
    print("\n" + head)
    for method in METHODS:
        first = summary["methods"][modes[0]][method]
        if "seconds" not in first:
            continue
        line = (
            f"{LABELS[method]:18} {first['seconds']:8.2f} {first['best_seconds']:8.2f} "
            f"{first['cpu_seconds']:8.2f} {first['peak_rss_mb']:9.1f} "
            f"{first['stored_size'] / 2**20:11.1f}"
        )
        for mode in modes:
            m = summary["methods"][mode][method]
            stall = _fmt(m.get("stall_ms"), ".1f")
            if m.get("busy_errors"):
                stall += f" busy{m['busy_errors']}"
            if not m.get("finished_under_writer", True):
                stall = "did not finish"
            line += f" {stall:>17}"
        print(line)
    print()
    for name, value in summary["ratios"].items():
        print(f"  {name:26} {_fmt(value, '.3f')}")
    print()
    for target, ok in summary["targets"].items():
        verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        print(f"  [{verdict}] {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", type=Path, required=True, help="database to back up")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method and mode")
    parser.add_argument(
        "--report-repeat",
        type=int,
        default=None,
        help="runs of the slow baseline (a) per mode (default: --repeat)",
    )
    parser.add_argument(
        "--stall-repeat", type=int, default=1, help="runs per method and mode with the writer"
    )
    parser.add_argument("--modes", default="delete,wal", help="journal modes for stall runs")
    parser.add_argument("--methods", default=",".join(METHODS), help="ours,report,cli")
    parser.add_argument("--interval", type=float, default=5.0, help="writer interval, ms")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path, default=None, help="results file")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.db, args.workdir)
    if not args.db.is_file():
        print(
            f"error: {args.db} does not exist (create it with bench/generate.py)", file=sys.stderr
        )
        return 1
    args.modes = [m.strip().lower() for m in args.modes.split(",") if m.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.report_repeat is None:
        args.report_repeat = args.repeat
    db_size = args.db.stat().st_size
    print(f"benchmarking {args.db} ({db_size / 2**20:.0f} MiB), {os.cpu_count()} CPUs")
    runs = run_all(args)
    summary = report(runs, args.modes)
    print_table(summary)
    results = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "db": str(args.db),
        "db_size": db_size,
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "sqlite_version": sqlite3.sqlite_version,
        "repeat": args.repeat,
        "report_repeat": args.report_repeat,
        "interval_ms": args.interval,
        "summary": summary,
        "runs": [asdict(r) for r in runs],
    }
    path = args.json or HERE / "results" / f"bench-{datetime.now():%Y%m%dT%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Format 2 (the page store) against format 1 (one compressed file), on the same database, in
one run: what an incremental backup costs when 1% of the pages changed.

Usage::

    python bench/bench_pages_store.py --size 1GB [--db /tmp/tt-1g.db] [--workload random,append]

Steps, each ``create_backup`` in a process of its own (so its peak memory is its own, from
``wait4``), on a TabletTracker-shaped database (bench/generate.py), in rollback-journal mode:

1. ``v1 full``: a format 1 backup (``BACKUPS_FORMAT=files``) into folder A.
2. ``v2 first``: the first format 2 backup into folder B (all pages new).
3. The database changes by about 1% of its pages: ``random`` updates rows spread over the
   whole file (the worst case for the index tree: every leaf may change), ``append`` inserts
   new count sessions (what the app mostly does: pages at the ends of tables and indexes).
4. ``v1 again``: the next format 1 backup (a whole file again): the baseline.
5. ``v2 incremental``: the next format 2 backup, filed without the full checks
   (``BACKUPS_CHECK_BUDGET=0``: what a 1 GB database's snapshot is with the default budget);
   ``v2 incremental raw``: the same backup into a copy of folder B, its pages read straight
   from the live file (as the CLI and the worker take it; the one above is the host app's
   in-process path, through the backup API); ``v2 incremental checked``: the same backup
   into another copy, with the full checks.
6. ``v2 build``: the newest format 2 snapshot built back into a database file.

The changed pages are found by comparing the two files page by page; their compressed size is
zstd (same level) of those pages concatenated. Reported: the ratios the issue's targets name
(time of a v1 backup over a v2 incremental; stored bytes per incremental over the compressed
changed pages; first v2 size and time over v1), plus peak memory. JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import zstandard

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))

from bench.generate import parse_size  # noqa: E402

LEVEL = 6


# -- children ----------------------------------------------------------------------------------


def child(step: str, db: Path, folder: Path, out: Path | None) -> dict[str, Any]:
    from tablettracker_backups.backup import create_backup
    from tablettracker_backups.formats import format_of
    from tablettracker_backups.settings import settings_from_mapping
    from tablettracker_backups.storage.local import LocalStore
    from tablettracker_backups.store import BackupStore

    fmt = "files" if step.startswith("v1") else "pages"
    settings = settings_from_mapping(
        {
            "database": db,
            "dir": folder,
            "format": fmt,
            "compression_level": LEVEL,
            # The incremental is what a 1 GB database's snapshot is with the default budget
            # (its checks take far more than 5 s): the full checks wait for the scheduled run.
            # "-checked" runs them anyway (what a database within the budget pays).
            "check_budget": 1e6 if step.endswith("checked") else 0,
        }
    )
    started = time.perf_counter()
    if step == "v2-build":
        assert out is not None
        meta = BackupStore(settings).newest().metadata
        assert meta is not None
        format_of(meta).extract(LocalStore(folder), meta, out, scratch=folder, full=False)
        return {
            "seconds": time.perf_counter() - started,
            "raw_size": meta.raw_size,
            "max_rss_mib": _peak(),
        }
    # "-raw": as the CLI and the worker take it (pages read from the live file); otherwise
    # as the host app's process does (the backup API into a scratch copy).
    meta = create_backup(settings, notify_owner=False, raw_reads=step.endswith("raw")).metadata
    return {
        "max_rss_mib": _peak(),
        "seconds": time.perf_counter() - started,
        "checked": meta.checked,
        "stored": meta.stored_size,
        "raw_size": meta.raw_size,
        "durations": meta.durations,
        "pages": meta.extra.get("pages"),
    }


def _peak() -> float:
    """This process's own peak memory (measured here: a child's rusage seen from the parent
    also counts the parent's image it was forked from)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_child(step: str, db: Path, folder: Path, out: Path | None = None) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", step, "--db", str(db), "--folder", str(folder)]
    if out is not None:
        args += ["--out", str(out)]
    done = subprocess.run(args, stdout=subprocess.PIPE, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"step {step} failed ({done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- the change --------------------------------------------------------------------------------


def page_count(db: Path) -> tuple[int, int]:
    with closing(sqlite3.connect(db)) as conn:
        return (
            int(conn.execute("PRAGMA page_size").fetchone()[0]),
            int(conn.execute("PRAGMA page_count").fetchone()[0]),
        )


def change(db: Path, workload: str, fraction: float, seed: int = 11) -> None:
    """Change about ``fraction`` of the pages."""
    _, pages = page_count(db)
    rng = random.Random(seed)
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        if workload == "random":
            top = int(conn.execute("SELECT max(id) FROM count_sessions").fetchone()[0])
            # About one row per page to change: rows are spread evenly through the table, and
            # count_sessions holds most of the file.
            ids = rng.sample(range(1, top + 1), int(pages * fraction))
            conn.executemany(
                "UPDATE count_sessions SET tablets_counted = tablets_counted + 1 WHERE id = ?",
                [(i,) for i in ids],
            )
        else:
            row = conn.execute(
                "SELECT po_line_id, employee_id, counted_at, tablets_counted, damaged, notes "
                "FROM count_sessions ORDER BY id DESC LIMIT 1"
            ).fetchone()
            size, _ = page_count(db)
            rows = int(pages * fraction * size / max(1, 60 + len(row[5] or "")))
            conn.executemany(
                "INSERT INTO count_sessions (po_line_id, employee_id, counted_at,"
                " tablets_counted, damaged, notes) VALUES (?, ?, ?, ?, ?, ?)",
                [row] * rows,
            )
        conn.execute("COMMIT")


def changed_pages(before: Path, after: Path) -> tuple[int, int, int]:
    """(pages that differ or are new, their bytes, their zstd size at LEVEL)."""
    size, _ = page_count(after)
    changed: list[bytes] = []
    with before.open("rb") as old, after.open("rb") as new:
        while page := new.read(size):
            if old.read(size) != page:
                changed.append(page)
    blob = b"".join(changed)
    return len(changed), len(blob), len(zstandard.ZstdCompressor(level=LEVEL).compress(blob))


# -- the run -----------------------------------------------------------------------------------


def one_workload(db: Path, work: Path, workload: str, fraction: float) -> dict[str, Any]:
    live = work / f"{workload}.db"
    shutil.copyfile(db, live)
    a, b = work / f"{workload}-v1", work / f"{workload}-v2"
    v1_full = run_child("v1-full", live, a)
    v2_first = run_child("v2-first", live, b)
    before = work / f"{workload}-before.db"
    shutil.copyfile(live, before)
    change(live, workload, fraction)
    count, raw, compressed = changed_pages(before, live)
    before.unlink()
    # The same incremental into copies of folder B: read raw, and with the full checks.
    shutil.copytree(b, work / f"{workload}-v2r", copy_function=shutil.copy2)
    shutil.copytree(b, work / f"{workload}-v2c", copy_function=shutil.copy2)
    v1_again = run_child("v1-again", live, a)
    v2_incr = run_child("v2-incremental", live, b)
    v2_raw = run_child("v2-incremental-raw", live, work / f"{workload}-v2r")
    v2_checked = run_child("v2-incremental-checked", live, work / f"{workload}-v2c")
    shutil.rmtree(work / f"{workload}-v2r")
    shutil.rmtree(work / f"{workload}-v2c")
    built = work / f"{workload}-built.db"
    v2_build = run_child("v2-build", live, b, built)
    built.unlink()
    _, pages = page_count(live)
    stored = v2_incr["stored"]
    return {
        "workload": workload,
        "pages": pages,
        "changed_pages": count,
        "changed_fraction": round(count / pages, 4),
        "changed_bytes": raw,
        "changed_compressed": compressed,
        "steps": {
            "v1_full": v1_full,
            "v2_first": v2_first,
            "v1_again": v1_again,
            "v2_incremental": v2_incr,
            "v2_incremental_raw": v2_raw,
            "v2_incremental_checked": v2_checked,
            "v2_build": v2_build,
        },
        "ratios": {
            "v1_backup_over_v2_incremental_time": round(
                v1_again["seconds"] / v2_incr["seconds"], 2
            ),
            "v1_backup_over_v2_incremental_raw_time": round(
                v1_again["seconds"] / v2_raw["seconds"], 2
            ),
            "v1_backup_over_v2_incremental_checked_time": round(
                v1_again["seconds"] / v2_checked["seconds"], 2
            ),
            "v2_incremental_stored_over_changed_compressed": round(stored / compressed, 3),
            "v2_incremental_stored_minus_64k_over_changed_compressed": round(
                max(0, stored - 65536) / compressed, 3
            ),
            "v2_first_size_over_v1": round(v2_first["stored"] / v1_full["stored"], 3),
            "v2_first_time_over_v1": round(v2_first["seconds"] / v1_full["seconds"], 2),
            "v1_stored_over_v2_incremental_stored": round(v1_again["stored"] / stored, 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", default="256MB")
    parser.add_argument("--db", type=Path, help="reuse (or create) this database")
    parser.add_argument("--workload", default="random,append")
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--child")
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.db, args.folder, args.out)))
        return 0
    size = parse_size(args.size)
    db = args.db or Path(tempfile.gettempdir()) / f"tt-pages-{args.size}.db"
    if not db.exists():
        print(f"generating {db} ({args.size}) ...", flush=True)
        # In a process of its own: a child's peak memory (ru_maxrss) survives exec on Linux,
        # so steps forked from a parent that generated a database would report its peak.
        code = (
            "import pathlib; from bench.generate import generate; "
            f"generate(pathlib.Path({str(db)!r}), {size})"
        )
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-pages-", dir=db.parent) as tmp:
        for workload in args.workload.split(","):
            result = one_workload(db, Path(tmp), workload, args.fraction)
            results.append(result)
            steps, ratios = result["steps"], result["ratios"]
            print(
                f"\n== {workload}: {result['changed_pages']} of {result['pages']} pages "
                f"changed ({result['changed_fraction']:.2%}), compressed "
                f"{result['changed_compressed'] / 2**20:.2f} MiB"
            )
            for name, step in steps.items():
                stored = step.get("stored")
                print(
                    f"  {name:16} {step['seconds']:7.2f} s  "
                    + (f"{stored / 2**20:9.2f} MiB stored  " if stored is not None else " " * 23)
                    + f"peak {step['max_rss_mib']:6.1f} MiB"
                    + (f"  {step['durations']}" if "durations" in step else "")
                )
            for name, value in ratios.items():
                print(f"  {name:56} {value}")
    out = HERE / "results" / f"pages-store-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"size": args.size, "db": str(db), "results": results}, indent=2))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How large a database can be snapshotted inside the web process and stay well under 1 s?

Usage::

    python bench/bench_autosnapshot.py [--sizes demo,1,8,15,22] [--repeat 5] [--busy]

For each size (MiB) a TabletTracker-shaped database is generated (``bench/generate.py``, which
makes nothing smaller than about 7 MiB; ``demo`` is the demo app's seeded database, about the
size of TabletTracker's real one) and
an ``auto`` backup (``create_backup``: snapshot, integrity and foreign-key checks, zstd,
SHA-256, fsync, rename, metadata) is timed ``--repeat`` times in this process, as the
in-process trigger runs it. ``--busy`` keeps one core busy with a spinning process meanwhile
(a web worker rarely has the machine to itself). The threshold in
``tablettracker_backups.autosnapshot.IN_PROCESS_MAX_BYTES`` comes from this table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(HERE.parent))

from bench.generate import generate  # noqa: E402
from tablettracker_backups.backup import create_backup  # noqa: E402
from tablettracker_backups.demo.schema import create_demo_database  # noqa: E402
from tablettracker_backups.settings import settings_from_mapping  # noqa: E402
from tablettracker_backups.store import BackupStore  # noqa: E402


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy_core(enabled: bool) -> Iterator[None]:
    """One process spinning on a core for the block."""
    if not enabled:
        yield
        return
    spinner = multiprocessing.Process(target=_spin, daemon=True)
    spinner.start()
    try:
        yield
    finally:
        spinner.terminate()
        spinner.join()


def measure(size: str, repeat: int, workdir: Path) -> dict[str, object]:
    db = workdir / f"tt-{size}.db"
    if size == "demo":
        create_demo_database(str(db))
    else:
        generate(db, int(float(size) * 1024 * 1024))
    settings = settings_from_mapping({"database": db, "dir": workdir / f"backups-{size}"})
    walls: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        create_backup(settings, kind="auto", trigger="bench")
        walls.append(time.perf_counter() - started)
    store = BackupStore(settings)
    newest = store.list()[0].metadata
    assert newest is not None
    for info in store.list():
        store.delete(info.id)
    return {
        "size_mib": round(db.stat().st_size / 2**20, 2),
        "median_s": round(statistics.median(walls), 4),
        "max_s": round(max(walls), 4),
        "stored_kib": round(newest.stored_size / 1024, 1),
        "stages": newest.durations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="demo,1,8,15,22")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--busy", action="store_true", help="keep one core busy meanwhile")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, busy_core(args.busy):
        for size in args.sizes.split(","):
            rows.append(measure(size, args.repeat, Path(tmp)))
            row = rows[-1]
            print(
                f"{row['size_mib']:>8} MiB  median {row['median_s']:.3f} s  "
                f"max {row['max_s']:.3f} s  stored {row['stored_kib']} KiB",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

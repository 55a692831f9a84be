"""Benchmark: listing, ``--at`` resolution, health and the prune plan at 10 to 100,000 restore
points, through the catalog and by reading every manifest, in one run.

    python bench/bench_catalog.py                       # 10, 1,000, 10,000, 100,000
    python bench/bench_catalog.py --sizes 10,1000 --repeat 5

Each size gets a fresh folder of synthetic restore points (tests/catalogkit.py: a real
manifest each, one second apart, with an empty data file; listing needs no data), their files
dated a minute back so the catalog may trust them at once. Then, for each path:

* ``manifests``: ``BackupStore(settings, catalog=False)``, every manifest read and parsed,
  as before the catalog (the baseline);
* ``catalog``: ``BackupStore(settings)`` with its catalog built once beforehand (``build``
  is that first listing, which parses every manifest and writes the catalog; it is what a
  lost catalog costs once);

each operation is timed ``--repeat`` times (median): ``list`` (``BackupStore.list``), ``at``
(``point_at`` over a fresh listing: what ``restore --at`` resolves), ``health`` (the page
load's ``check_health(read_data=False)``) and ``prune-plan`` (``plan_for_store``). Peak memory
of one listing is the peak RSS of a child process that lists once (``--no-memory`` skips it).
Results are printed and written to ``bench/results/catalog-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tablettracker_backups.health import check_health  # noqa: E402
from tablettracker_backups.prune import plan_for_store  # noqa: E402
from tablettracker_backups.restore_points import point_at, restore_events  # noqa: E402
from tablettracker_backups.settings import Settings, settings_from_mapping  # noqa: E402
from tablettracker_backups.store import BackupStore  # noqa: E402
from tests.catalogkit import START, write_points  # noqa: E402

OPERATIONS = ("list", "at", "health", "prune-plan")


def make_folder(root: Path, count: int) -> Settings:
    folder = root / f"points-{count}"
    write_points(folder, count)
    old = time.time() - 60
    with os.scandir(folder) as entries:
        for entry in entries:
            os.utime(entry.path, (old, old))
    database = root / f"app-{count}.db"
    sqlite3.connect(database).close()
    return settings_from_mapping({"database": database, "dir": folder})


def operations(settings: Settings, catalog: bool, count: int) -> dict[str, Callable[[], object]]:
    def store() -> BackupStore:
        return BackupStore(settings, catalog=catalog)

    # A moment in the middle of the points: what a person restoring "to 3 p.m." asks for.
    middle = START + timedelta(seconds=count // 2, milliseconds=500)
    now = datetime.now(timezone.utc)

    def at() -> object:
        return point_at(store().list(), middle, now=now, events=restore_events(settings))

    return {
        "list": lambda: store().list(),
        "at": at,
        "health": lambda: check_health(settings, read_data=False, store=store()),
        "prune-plan": lambda: plan_for_store(store()),
    }


def timed(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_rss_mib(settings: Settings, catalog: bool) -> float:
    """Peak RSS of a child process that lists once (MiB), from its own ``VmHWM``: the
    ``ru_maxrss`` a parent gets from ``wait4`` on Linux also counts the parent's memory the
    child had before its ``exec``."""
    code = (
        "import sys; from pathlib import Path;"
        "from tablettracker_backups.settings import settings_from_mapping;"
        "from tablettracker_backups.store import BackupStore;"
        "s = settings_from_mapping({'database': Path(sys.argv[1]), 'dir': Path(sys.argv[2])});"
        "BackupStore(s, catalog=sys.argv[3] == '1').list();"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    args = [sys.executable, "-c", code, str(settings.database), str(settings.backup_dir)]
    out = subprocess.run(
        [*args, "1" if catalog else "0"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    return int(out.strip()) / 1024


def run(sizes: list[int], repeat: int, memory: bool, root: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": {}, "repeat": repeat}
    for count in sizes:
        started = time.perf_counter()
        settings = make_folder(root, count)
        made = time.perf_counter() - started
        row: dict[str, Any] = {"generate_s": made}
        # Built once (parses everything, writes the catalog): what a lost catalog costs.
        started = time.perf_counter()
        BackupStore(settings).list()
        row["build_s"] = time.perf_counter() - started
        catalog_file = settings.backup_dir / ".catalog" / "catalog.sqlite"
        row["catalog_mib"] = catalog_file.stat().st_size / 2**20
        # The baseline is slow at 100,000: fewer repeats there, never fewer than one.
        slow_repeat = max(1, repeat if count <= 10_000 else 1)
        for path, catalog in (("catalog", True), ("manifests", False)):
            ops = operations(settings, catalog, count)
            row[path] = {
                name: timed(call, repeat if catalog else slow_repeat) for name, call in ops.items()
            }
            if memory:
                row[path]["list_peak_rss_mib"] = peak_rss_mib(settings, catalog)
            print(f"{count:>7} {path:<9} " + json.dumps(row[path]), flush=True)
        results["sizes"][str(count)] = row
    return results


def report(results: dict[str, Any]) -> str:
    sizes = list(results["sizes"])
    base = results["sizes"][sizes[0]]
    header = " | ".join(f"{int(s):,}" for s in sizes)
    lines = [
        f"| operation | path | {header} | {sizes[-1]} / {sizes[0]} |",
        "|---|---|" + "---:|" * (len(sizes) + 1),
    ]
    for name in (*OPERATIONS, "list_peak_rss_mib"):
        for path in ("catalog", "manifests"):
            values = [results["sizes"][s][path].get(name) for s in sizes]
            if values[0] is None:
                continue
            unit = " MiB" if name.endswith("mib") else " s"
            cells = [f"{v:.4f}{unit}" if unit == " s" else f"{v:.0f}{unit}" for v in values]
            ratio = values[-1] / base[path][name]
            lines.append(f"| {name} | {path} | " + " | ".join(cells) + f" | {ratio:,.0f}x |")
    lines.append("")
    lines.append("| size | catalog list vs manifests list | build (first listing) | catalog file |")
    lines.append("|---:|---:|---:|---:|")
    for s in sizes:
        row = results["sizes"][s]
        speedup = row["manifests"]["list"] / row["catalog"]["list"]
        lines.append(
            f"| {int(s):,} | {speedup:.1f}x faster | {row['build_s']:.2f} s | "
            f"{row['catalog_mib']:.1f} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    options = parser.parse_args()
    sizes = [int(s) for s in options.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        results = run(sizes, options.repeat, not options.no_memory, Path(scratch))
    text = report(results)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (out / f"catalog-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

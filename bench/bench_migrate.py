"""``migrate`` on a folder of version 1 backups: what it frees and what it costs, in one run.

Usage::

    python bench/bench_migrate.py [--size 50MB] [--backups 10] [--fraction 0.01]

On a TabletTracker-shaped database (bench/generate.py), ``--backups`` format 1 backups are
taken, the database changing by about ``--fraction`` of its pages (``append`` workload of
bench_pages_store) between them; then ``migrate`` runs as a real CLI process. Reported, in
the same run: the folder's bytes before (the ``.db.zst`` files) and after (packs and node
packs), their ratio; migrate's seconds per backup against one format 1 backup's seconds (the
baseline: migrate decompresses, stores pages, builds and fully checks each twin); and that
every backup still verifies. JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_pages_store import change  # noqa: E402
from bench.generate import generate, parse_size  # noqa: E402
from tablettracker_backups.backup import create_backup  # noqa: E402
from tablettracker_backups.settings import settings_from_mapping  # noqa: E402
from tablettracker_backups.store import BackupStore  # noqa: E402
from tablettracker_backups.verify import verify_backup  # noqa: E402


def _bytes(folder: Path) -> int:
    return sum(
        p.stat().st_size
        for p in folder.rglob("*")
        if p.is_file() and (p.name.endswith(".db.zst") or "pages" in p.parts)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="50MB")
    parser.add_argument("--backups", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.01)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ttb-bench-migrate-") as scratch:
        root = Path(scratch)
        db = root / "tablet_counter.db"
        generate(db, parse_size(args.size))
        settings = settings_from_mapping({"database": db, "dir": root / "backups"})
        seconds = []
        for number in range(args.backups):
            if number:
                change(db, "append", args.fraction, seed=number)
            began = time.monotonic()
            create_backup(settings)
            seconds.append(time.monotonic() - began)
        before = _bytes(settings.backup_dir)
        env = {"BACKUPS_DATABASE": str(db), "BACKUPS_DIR": str(settings.backup_dir)}
        env["PYTHONPATH"] = str(ROOT)
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "tablettracker_backups", "migrate", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        migrate_seconds = time.monotonic() - began
        if done.returncode != 0:
            print(done.stdout, done.stderr)
            return 1
        after = _bytes(settings.backup_dir)
        store = BackupStore(settings)
        verified = all(verify_backup(store, i.id).ok for i in store.list())
        result = {
            "at": datetime.now(timezone.utc).isoformat(),
            "size": args.size,
            "database_bytes": db.stat().st_size,
            "backups": args.backups,
            "fraction": args.fraction,
            "bytes_before": before,
            "bytes_after": after,
            "after_over_before": round(after / before, 4),
            "v1_backup_seconds_median": round(sorted(seconds)[len(seconds) // 2], 3),
            "migrate_seconds": round(migrate_seconds, 3),
            "migrate_seconds_per_backup": round(migrate_seconds / args.backups, 3),
            "per_backup_over_v1_backup": round(
                migrate_seconds / args.backups / sorted(seconds)[len(seconds) // 2], 2
            ),
            "all_verify": verified,
        }
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"migrate-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Offsite bytes and time: a format 2 (pages) incremental against a format 1 full upload.

Usage::

    python bench/bench_offsite_pages.py --size 256MiB --change 0.01 --workdir /tmp/bench-op

Builds a TabletTracker-shaped database of about ``--size`` (the demo schema and a table of
text rows, which compress as real data does), starts ``weed mini`` on free loopback ports, and
in the same run, each format in a folder and a prefix of its own:

1. first backup and sync: format 1 uploads the whole compressed database; format 2 its packs;
2. ``--change`` of the database's pages rewritten (rows updated at random places), then a
   second backup and sync of each.

Bytes uploaded are what the prefix gained (its listing before and after: objects and
manifests), and the sync's time; the ratios put format 2 against format 1 from the same run.
With ``--encrypt`` both upload sealed (age) objects. Loopback measures this tool and
SeaweedFS, not a network.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the package importable from a clone
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_offsite import parse_size
from tablettracker_backups.backup import create_backup
from tablettracker_backups.offsite.sync import sync_offsite
from tablettracker_backups.settings import Settings, settings_from_mapping
from tests.s3kit import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer, weed_binary

MiB = 1024 * 1024
ROW_BYTES = 400


def build_database(path: Path, size: int, rng: random.Random) -> int:
    """The demo schema plus ``notes`` rows of word-like text up to ``size``; the row count."""
    from tablettracker_backups.demo.schema import create_demo_database

    create_demo_database(str(path))
    words = [f"w{n:04d}" for n in range(5000)]
    rows = max(1, size // ROW_BYTES)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        conn.executemany(
            "INSERT INTO notes (body) VALUES (?)",
            ((" ".join(rng.choices(words, k=ROW_BYTES // 6)),) for _ in range(rows)),
        )
    return rows


def change_pages(path: Path, rows: int, share: float, rng: random.Random) -> int:
    """Rewrite rows at random places so that about ``share`` of the pages change; pages."""
    with sqlite3.connect(path) as conn:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        touched = max(1, int(pages * share))
        for _ in range(touched):
            row = rng.randrange(1, rows + 1)
            conn.execute(
                "UPDATE notes SET body = ? WHERE id = ?",
                (f"changed {rng.random()} " + "x" * (ROW_BYTES // 2), row),
            )
    return touched


def prefix_bytes(server: SeaweedServer, prefix: str) -> dict[str, int]:
    """Every object under ``prefix`` and its size."""
    found: dict[str, int] = {}
    pages = server.client().get_paginator("list_objects_v2")
    for page in pages.paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = int(item["Size"])
    return found


def step(settings: Settings, server: SeaweedServer) -> dict[str, Any]:
    """One backup (kept, so offsite retention keeps it too) and one sync: what went."""
    assert settings.s3 is not None
    before = prefix_bytes(server, settings.s3.prefix)
    create_backup(settings, pinned=True, trigger="bench")
    begun = time.monotonic()
    result = sync_offsite(settings, verify_count=0)
    seconds = time.monotonic() - begun
    if not result.ok:
        raise RuntimeError(f"sync failed: {result.errors}")
    after = prefix_bytes(server, settings.s3.prefix)
    new = {k: v for k, v in after.items() if k not in before}
    return {
        "objects": len(new),
        "bytes": sum(new.values()),
        "sync_seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="64MiB", help="database size (default 64MiB)")
    parser.add_argument("--change", type=float, default=0.01, help="share of pages changed")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder")
    parser.add_argument("--encrypt", action="store_true", help="seal uploads with age")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    rng = random.Random(20)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-offsite-pages-"))
    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "tablet.db"
    database.unlink(missing_ok=True)
    rows = build_database(database, parse_size(args.size), rng)
    extra: dict[str, Any] = {}
    if args.encrypt:
        from tablettracker_backups.encryption import create_identity_file

        extra["encrypt_to"] = create_identity_file(workdir / f"key-{uuid.uuid4().hex[:6]}.txt")
    server = SeaweedServer(weed_binary(), Path(tempfile.mkdtemp(prefix="s3-", dir=workdir)))
    server.start()
    report: dict[str, Any] = {"database_mib": round(database.stat().st_size / MiB, 1)}
    try:
        settings = {}
        for name in ("files", "pages"):
            settings[name] = settings_from_mapping(
                {
                    "database": database,
                    "dir": workdir / f"backups-{name}-{uuid.uuid4().hex[:6]}",
                    "format": name,
                    "s3_bucket": BUCKET,
                    "s3_endpoint_url": server.endpoint,
                    "s3_prefix": f"bench-{name}-{uuid.uuid4().hex[:8]}/",
                    "s3_addressing_style": "path",
                    "s3_access_key_id": ACCESS_KEY,
                    "s3_secret_access_key": SECRET_KEY,
                    **extra,
                }
            )
        for name in ("files", "pages"):
            report[f"{name}_first"] = step(settings[name], server)
        report["pages_changed"] = change_pages(database, rows, args.change, rng)
        for name in ("files", "pages"):
            report[f"{name}_second"] = step(settings[name], server)
    finally:
        server.stop()
    full = report["files_second"]
    incremental = report["pages_second"]
    report["incremental_bytes_vs_full_upload"] = round(incremental["bytes"] / full["bytes"], 4)
    report["incremental_time_vs_full_upload"] = round(
        incremental["sync_seconds"] / max(full["sync_seconds"], 1e-9), 3
    )
    report["first_pages_bytes_vs_files"] = round(
        report["pages_first"]["bytes"] / report["files_first"]["bytes"], 3
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:<36}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Offsite upload and download against a local SeaweedFS: time, throughput, and peak memory.

Usage::

    python bench/bench_offsite.py --size 256MiB --workdir /tmp/bench-offsite [--json]

Builds a database of about ``--size`` of incompressible rows (so the stored backup is as large
as the database), takes one backup, starts ``weed mini`` on free loopback ports, then times:

* upload: ``OffsiteStore.upload`` (managed multipart transfer, two parts in flight, then the
  provider SHA-256 check against the locally computed composite checksum);
* recover: ``OffsiteStore.fetch_verified`` (download, SHA-256, decompression, integrity_check,
  row counts, schema), what ``restore --from-offsite`` does.

The upload runs in a fresh child process, once for real and once doing everything but the
transfer (imports, settings, client), and each child's peak resident memory (``ru_maxrss``) is
reported: the difference is what the upload itself costs, which should be about
``max_concurrency`` x chunk size whatever the file size. Loopback only measures this tool and
SeaweedFS, not a real network.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the package importable from a clone
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tablettracker_backups.backup import create_backup
from tablettracker_backups.offsite.client import OffsiteStore
from tablettracker_backups.settings import settings_from_mapping
from tablettracker_backups.store import BackupStore
from tests.s3kit import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer, weed_binary

MiB = 1024 * 1024


def parse_size(text: str) -> int:
    """Bytes from ``256MiB``, ``1GiB`` or a plain number (binary units)."""
    units = {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB}
    cleaned = text.strip().upper().replace("IB", "").replace("B", "")
    number = cleaned.rstrip("KMG")
    return int(float(number) * units[cleaned[len(number) :]])


def build_database(path: Path, size: int) -> None:
    from tablettracker_backups.demo.schema import create_demo_database

    create_demo_database(str(path))
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        for _ in range(max(1, size // MiB)):
            conn.execute("INSERT INTO attachments (data) VALUES (?)", (os.urandom(MiB),))


_CHILD = """
import json, resource, sys, time
from pathlib import Path
from tablettracker_backups.offsite.client import OffsiteStore
from tablettracker_backups.settings import settings_from_mapping
from tablettracker_backups.store import BackupStore

values, data, backup_id, transfer = json.loads(sys.argv[1])
settings = settings_from_mapping(values)
offsite = OffsiteStore.from_settings(settings)
meta = BackupStore(settings).read_metadata("primary", backup_id)
report = {}
if transfer:
    begun = time.monotonic()
    result = offsite.upload(Path(data), meta)
    report = {"seconds": time.monotonic() - begun, "parts": result.parts, "check": result.check}
print(json.dumps(report))
"""


def _child_upload(
    values: dict[str, Any], data: Path, backup_id: str, *, transfer: bool
) -> tuple[float, dict[str, Any]]:
    """Run (or only prepare) the upload in a fresh process; its peak RSS in MiB and report."""
    encoded = json.dumps([{k: str(v) for k, v in values.items()}, str(data), backup_id, transfer])
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, encoded],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    # wait4 gives this one child's own resource usage (peak RSS in KiB on Linux).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"upload child failed with {proc.returncode}")
    return usage.ru_maxrss / 1024, json.loads(output)


def _measure(values: dict[str, Any], backup_id: str, workdir: Path) -> dict[str, Any]:
    """Upload (in a child, with and without the transfer) and recover one backup; timings,
    throughput and memory, for the offsite store ``values`` name."""
    settings = settings_from_mapping(values)
    meta = BackupStore(settings).read_metadata("primary", backup_id)
    data = BackupStore(settings).data_path_for("primary", meta)
    offsite = OffsiteStore.from_settings(settings)
    baseline_rss, _ = _child_upload(values, data, meta.id, transfer=False)
    upload_rss, child = _child_upload(values, data, meta.id, transfer=True)
    upload_seconds = float(child["seconds"])
    target = workdir / "recovered.db"
    target.unlink(missing_ok=True)
    begun = time.monotonic()
    offsite.fetch_verified(meta.id, target)
    recover_seconds = time.monotonic() - begun
    target.unlink()
    offsite.delete(meta.id)
    return {
        "stored_mib": round(meta.stored_size / MiB, 1),
        "parts": child["parts"],
        "check": child["check"],
        "upload_seconds": round(upload_seconds, 2),
        "upload_mib_per_s": round(meta.stored_size / MiB / upload_seconds, 1),
        "recover_seconds": round(recover_seconds, 2),
        "recover_mib_per_s": round(meta.stored_size / MiB / recover_seconds, 1),
        "peak_rss_without_transfer_mib": round(baseline_rss, 1),
        "peak_rss_with_upload_mib": round(upload_rss, 1),
        "upload_memory_cost_mib": round(upload_rss - baseline_rss, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256MiB", help="database size (default 256MiB)")
    parser.add_argument("--chunksize", default="16MiB", help="multipart part size")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder")
    parser.add_argument(
        "--rclone",
        action="store_true",
        help="also through rclone (its local backend and rclone serve webdav on 127.0.0.1), "
        "with ratios to S3 from the same run",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-offsite-"))
    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "big.db"
    if not database.exists():
        build_database(database, size)
    local: dict[str, Any] = {"database": database, "dir": workdir / "backups"}
    backup_id = create_backup(settings_from_mapping(local), trigger="bench").metadata.id
    reports: dict[str, dict[str, Any]] = {}
    server = SeaweedServer(weed_binary(), Path(tempfile.mkdtemp(prefix="s3-", dir=workdir)))
    server.start()
    try:
        s3 = {
            **local,
            "s3_bucket": BUCKET,
            "s3_endpoint_url": server.endpoint,
            "s3_prefix": f"bench-{uuid.uuid4().hex[:8]}/",
            "s3_addressing_style": "path",
            "s3_access_key_id": ACCESS_KEY,
            "s3_secret_access_key": SECRET_KEY,
            "s3_multipart_chunksize": args.chunksize,
            "s3_multipart_threshold": args.chunksize,
        }
        reports["s3"] = _measure(s3, backup_id, workdir)
    finally:
        server.stop()
    if args.rclone:
        from tests.storage_conformance import rclone_webdav

        drive = Path(tempfile.mkdtemp(prefix="rclone-local-", dir=workdir))
        config = drive / "rclone.conf"
        config.write_text("[disk]\ntype = local\n")
        (drive / "root").mkdir()
        disk = {**local, "rclone_remote": f"disk:{drive / 'root'}", "rclone_config": config}
        reports["rclone-local"] = _measure(disk, backup_id, workdir)
        with rclone_webdav(Path(tempfile.mkdtemp(prefix="webdav-", dir=workdir))) as dav:
            served = {**local, "rclone_remote": "srv:bench", "rclone_config": dav.config}
            reports["rclone-webdav"] = _measure(served, backup_id, workdir)
        for name in ("rclone-local", "rclone-webdav"):
            for key in ("upload_seconds", "recover_seconds"):
                ratio = reports[name][key] / max(reports["s3"][key], 1e-9)
                reports[name][key.replace("seconds", "vs_s3")] = round(ratio, 2)
    if args.json:
        print(json.dumps(reports if args.rclone else reports["s3"], indent=2))
    else:
        for name, report in reports.items():
            print(f"-- {name}")
            width = max(len(k) for k in report)
            for key, value in report.items():
                print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

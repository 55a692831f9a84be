"""Health checks with real conditions: exit codes 0 ok, 1 warning, 2 critical."""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.fsutil import filesystem_type
from tablettracker_backups.health import (
    HealthReport,
    check_health,
    describe_recovery,
    network_wal_findings,
)
from tablettracker_backups.health import save_report as write_status
from tablettracker_backups.settings import Settings
from tablettracker_backups.status import ALERT_LOG, STATUS_FILE, record_run
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup
from tests.conftest import backdate, flip_byte, rewrite_metadata

# Thresholds that any test machine passes, so disk space only matters where a test says so.
ROOMY = {"disk_warning": "1MB", "disk_critical": "1MB"}


@pytest.fixture
def healthy(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**ROOMY)


def codes(report: HealthReport) -> dict[str, str]:
    return {f.code: f.level for f in report.findings}


def test_fresh_backup_is_ok(healthy: Settings) -> None:
    backup_id = create_backup(healthy).metadata.id
    report = check_health(healthy)
    assert report.findings == ()
    assert (report.status, report.exit_code) == ("ok", 0)
    assert report.newest_id == report.newest_verified_id == backup_id
    assert report.backup_count == 1
    assert report.slot_counts == {"hourly": 1, "daily": 1, "weekly": 1, "monthly": 1, "yearly": 1}
    assert set(report.disk) == {"primary", "secondary"}
    assert report.stored_bytes > 0


def test_no_backups_is_critical(healthy: Settings) -> None:
    report = check_health(healthy)
    assert report.exit_code == 2
    assert codes(report)["no-backups"] == "critical"


@pytest.mark.parametrize(
    ("interval", "age", "expected"),
    [
        ("1h", timedelta(minutes=50), None),
        ("1h", timedelta(hours=2), "warning"),
        ("1h", timedelta(hours=4), "critical"),
        ("1d", timedelta(hours=30), None),
        ("1d", timedelta(hours=40), "warning"),
        ("1d", timedelta(days=4), "critical"),
    ],
)
def test_age_of_the_newest_backup(
    make_settings: Callable[..., Settings], interval: str, age: timedelta, expected: str | None
) -> None:
    settings = make_settings(interval=interval, **ROOMY)
    backup_id = create_backup(settings).metadata.id
    backdate(settings, backup_id, age)
    report = check_health(settings)
    found = codes(report)
    if expected is None:
        assert report.exit_code == 0, report.findings
    else:
        assert found["backup-age"] == expected
        assert found["verified-backup-age"] == expected
        assert report.exit_code == {"warning": 1, "critical": 2}[expected]


def test_newest_verified_older_than_newest(healthy: Settings) -> None:
    old = create_backup(healthy).metadata.id
    backdate(healthy, old, timedelta(hours=5))
    new = create_backup(healthy).metadata.id
    # The newest backup's every copy fails verification (real damage, real verify).
    for folder in healthy.locations:
        flip_byte(folder / f"{new}.db.zst")
    assert not verify_backup(BackupStore(healthy), new).usable
    report = check_health(healthy)
    assert report.newest_id == new
    assert report.newest_verified_id == old
    assert codes(report)["verified-backup-age"] == "critical"
    assert report.exit_code == 2


def test_only_unverified_backups_is_critical(healthy: Settings) -> None:
    backup_id = create_backup(healthy).metadata.id
    for folder in healthy.locations:
        flip_byte(folder / f"{backup_id}.db.zst")
    verify_backup(BackupStore(healthy), backup_id)
    report = check_health(healthy)
    assert codes(report)["no-verified-backup"] == "critical"


def test_backup_dated_in_the_future_is_a_clock_warning(healthy: Settings) -> None:
    backup_id = create_backup(healthy).metadata.id
    rewrite_metadata(healthy, backup_id, created_at=datetime.now(timezone.utc) + timedelta(days=2))
    report = check_health(healthy)
    assert codes(report)["clock"] == "warning"
    assert report.exit_code == 1


@pytest.mark.parametrize(
    ("thresholds", "level"),
    [
        ({"disk_warning": "99.99%", "disk_critical": "1MB"}, "warning"),
        ({"disk_warning": "99.99%", "disk_critical": "99.99%"}, "critical"),
        ({"disk_warning": "1000TB", "disk_critical": "1MB"}, "warning"),
        ({"disk_warning": "1MB", "disk_critical": "1000TB"}, "critical"),
    ],
)
def test_disk_thresholds(
    make_settings: Callable[..., Settings], thresholds: dict[str, str], level: str
) -> None:
    settings = make_settings(**thresholds)
    create_backup(settings)
    report = check_health(settings)
    assert codes(report)["disk"] == level
    assert report.exit_code == {"warning": 1, "critical": 2}[level]
    assert report.disk["primary"]["free"] > 0


def test_stopped_schedule_is_a_warning(healthy: Settings) -> None:
    create_backup(healthy)
    record_run(healthy, at=datetime.now(timezone.utc) - timedelta(hours=3), result={"ok": True})
    status = json.loads((healthy.backup_dir / STATUS_FILE).read_text())
    assert status["last_run_at"].endswith("Z")
    report = check_health(healthy)
    assert codes(report)["schedule-stopped"] == "warning"
    assert report.last_run_at is not None
    assert report.next_run_due == report.last_run_at + timedelta(hours=1)
    # A recent run clears it.
    record_run(healthy, at=datetime.now(timezone.utc), result={"ok": True})
    assert "schedule-stopped" not in codes(check_health(healthy))


def test_failed_last_run_is_critical(healthy: Settings) -> None:
    create_backup(healthy)
    record_run(healthy, at=datetime.now(timezone.utc), result={"ok": False, "error": "disk full"})
    report = check_health(healthy)
    assert codes(report)["last-run-failed"] == "critical"
    assert "disk full" in next(f.message for f in report.findings if f.code == "last-run-failed")


def test_damaged_checksum_warning_then_critical(healthy: Settings) -> None:
    backup_id = create_backup(healthy).metadata.id
    flip_byte(healthy.backup_dir / f"{backup_id}.db.zst")
    report = check_health(healthy)
    assert codes(report)["checksum"] == "warning"  # the secondary copy is still sound
    assert report.exit_code == 1
    flip_byte(healthy.secondary_dir / f"{backup_id}.db.zst")  # type: ignore[operator]
    report = check_health(healthy)
    assert codes(report)["checksum"] == "critical"
    assert report.exit_code == 2


def test_missing_secondary_copy_is_a_warning(healthy: Settings) -> None:
    backup_id = create_backup(healthy).metadata.id
    (healthy.secondary_dir / f"{backup_id}.json").unlink()  # type: ignore[operator]
    report = check_health(healthy)
    assert codes(report) == {"copies-disagree": "warning"}


def test_damaged_metadata_is_reported(healthy: Settings) -> None:
    backup_id = create_backup(healthy).metadata.id
    for folder in healthy.locations:
        (folder / f"{backup_id}.json").write_text("garbage")
    report = check_health(healthy)
    found = codes(report)
    assert found["metadata"] == "warning"
    assert found["no-verified-backup"] == "critical"


def test_unreadable_live_database_is_critical(healthy: Settings) -> None:
    create_backup(healthy)
    healthy.database.write_bytes(b"not a database any more")
    report = check_health(healthy)
    assert codes(report)["database-unreadable"] == "critical"
    healthy.database.unlink()
    assert codes(check_health(healthy))["database-unreadable"] == "critical"


def test_corrupt_live_database_is_critical(healthy: Settings, tmp_path: Path) -> None:
    create_backup(healthy)
    data = bytearray(healthy.database.read_bytes())
    page = 4096
    # Scribble over the middle of the second page (a b-tree page) but keep the header.
    data[page + 8 : page + 400] = b"\xaa" * 392
    healthy.database.write_bytes(bytes(data))
    report = check_health(healthy)
    assert report.exit_code == 2
    assert {"database-corrupt", "database-unreadable"} & set(codes(report))


def test_status_and_alert_files_are_written_owner_only(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(disk_warning="99.99%", disk_critical="1MB")
    create_backup(settings)
    report = check_health(settings)
    write_status(settings, report)
    write_status(settings, report)
    status_path = settings.backup_dir / STATUS_FILE
    alerts_path = settings.backup_dir / ALERT_LOG
    for path in (status_path, alerts_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    status = json.loads(status_path.read_text())
    assert status["health"]["status"] == "warning"
    assert status["health"]["exit_code"] == 1
    lines = [json.loads(line) for line in alerts_path.read_text().splitlines()]
    assert len(lines) == 2 * len(report.findings)
    assert {line["code"] for line in lines} == {"disk"}
    assert all(line["level"] == "warning" and line["at"].endswith("Z") for line in lines)


def test_ok_report_appends_no_alert(healthy: Settings) -> None:
    create_backup(healthy)
    write_status(healthy, check_health(healthy))
    assert not (healthy.backup_dir / ALERT_LOG).exists()
    assert json.loads((healthy.backup_dir / STATUS_FILE).read_text())["health"]["status"] == "ok"


# -- PythonAnywhere: WAL on a network file system; recovery point ----------------------------


def mounts_file(tmp_path: Path, folder: Path, fstype: str) -> Path:
    """A /proc/mounts-shaped file: the root, and ``folder`` (space escaped) as ``fstype``."""
    escaped = str(folder).replace(" ", "\\040")
    path = tmp_path / "mounts"
    path.write_text(
        "/dev/vda1 / ext4 rw,relatime 0 0\n"
        f"server:/home {escaped} {fstype} rw,relatime 0 0\n"
        "proc /proc proc rw 0 0\n"
    )
    return path


def test_filesystem_type_takes_the_longest_mount_point(tmp_path: Path) -> None:
    folder = tmp_path / "home dir"
    folder.mkdir()
    mounts = mounts_file(tmp_path, folder, "nfs4")
    assert filesystem_type(folder / "app.db", mounts) == "nfs4"
    assert filesystem_type(tmp_path / "elsewhere.db", mounts) == "ext4"
    assert filesystem_type(tmp_path, tmp_path / "missing") is None
    # The real table knows this folder's file system.
    assert filesystem_type(tmp_path) not in (None, "nfs4")


@pytest.mark.parametrize("fstype", ["nfs4", "fuse.sshfs", "ext4"])
def test_wal_on_a_network_file_system_is_a_warning(
    tmp_path: Path, healthy: Settings, journal_mode: str, fstype: str
) -> None:
    with sqlite3.connect(healthy.database) as conn:
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
    mounts = mounts_file(tmp_path, healthy.database.parent, fstype)
    found = network_wal_findings(healthy, mounts)
    if journal_mode == "wal" and fstype != "ext4":
        assert [f.code for f in found] == ["wal-network-fs"]
        assert found[0].level == "warning" and fstype in found[0].message
    else:
        assert found == []
    # Looking left no -wal or -shm file behind (they would look like a change).
    if journal_mode == "delete":
        assert sorted(p.name for p in healthy.database.parent.iterdir()) == ["tablet_counter.db"]


def test_health_reports_the_recovery_point_achieved(healthy: Settings) -> None:
    create_backup(healthy, kind="auto")
    report = check_health(healthy)
    assert report.recovery["achieved_seconds"] == 0.0
    assert report.recovery["unsaved_writes"] is False
    lines = dict(describe_recovery(report.recovery))
    assert lines["Recovery point"] == "every write so far is in a backup"
    assert "at most every 5 min" in lines["Automatic snapshots"]
    assert lines["Restore points"].startswith("every backup of the last 24.0 h is kept (1")
    backup_id = BackupStore(healthy).list()[0].id
    backdate(healthy, backup_id, timedelta(minutes=10))
    with sqlite3.connect(healthy.database) as conn:
        conn.execute("UPDATE purchase_orders SET notes = 'unsaved' WHERE id = 1")
    report = check_health(healthy)
    assert report.recovery["unsaved_writes"] is True
    assert 590 < report.recovery["achieved_seconds"] < 660
    assert report.to_dict()["recovery"]["achieved_seconds"] == report.recovery["achieved_seconds"]
    assert "not in a backup yet" in dict(describe_recovery(report.recovery))["Recovery point"]

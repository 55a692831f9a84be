"""Health checks with real conditions: exit codes 0 ok, 1 warning, 2 critical."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sqlite3
import stat
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.errors import DatabaseError
from tablettracker_backups.fsutil import filesystem_type
from tablettracker_backups.health import (
    DATA_CODES,
    Finding,
    HealthReport,
    check_health,
    current_report,
    describe_recovery,
    network_wal_findings,
    restore_command,
    slot_counts,
)
from tablettracker_backups.health import save_report as write_status
from tablettracker_backups.metadata import utc_iso
from tablettracker_backups.offsite.policy import OffsiteLag
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import Level
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
    assert report.newest_id == report.newest_good_id == backup_id
    assert report.backup_count == 1
    assert report.slot_counts == {
        "minutely": 1,
        "hourly": 1,
        "daily": 1,
        "weekly": 1,
        "monthly": 1,
        "yearly": 1,
    }
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
    # The schedule runs (it just did not take a backup): only the backup's age is judged here.
    record_run(settings, at=datetime.now(timezone.utc), result={"ok": True})
    report = check_health(settings)
    found = codes(report)
    if expected is None:
        assert report.exit_code == 0, report.findings
    else:
        assert found["backup-age"] == expected
        assert found["verified-backup-age"] == expected
        assert report.exit_code == {"warning": 1, "critical": 2}[expected]


def test_no_scheduled_run_is_a_warning_after_one_interval(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(interval="1h", **ROOMY)
    backup_id = create_backup(settings).metadata.id
    backdate(settings, backup_id, timedelta(minutes=50))
    assert "no-scheduled-run" not in codes(check_health(settings))  # just set up: a note only
    backdate(settings, backup_id, timedelta(minutes=30))  # 80 min: one interval and the grace
    report = check_health(settings)
    assert codes(report)["no-scheduled-run"] == "warning"
    assert "tablettracker-backups init" in next(
        f.message for f in report.findings if f.code == "no-scheduled-run"
    )
    record_run(settings, at=datetime.now(timezone.utc), result={"ok": True})
    assert "no-scheduled-run" not in codes(check_health(settings))


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
    assert report.newest_good_id == old
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


def test_disk_thresholds_at_their_edges(
    make_settings: Callable[..., Settings], full_fs: Path
) -> None:
    """Free space exactly at a threshold is not below it; one byte more of threshold is.
    On a tmpfs of our own, so no other writer moves the free space between the two looks."""
    folder = full_fs / "backups"
    base = make_settings(dir=folder, secondary_dir=None, **ROOMY)
    create_backup(base)
    usage = shutil.disk_usage(folder)
    free, total = usage.free, usage.total

    def disk(warning: float, critical: float) -> list[str]:
        settings = dataclasses.replace(base, disk_warning=warning, disk_critical=critical)
        found = [f.level for f in check_health(settings).findings if f.code == "disk"]
        assert shutil.disk_usage(folder).free == free  # the check itself wrote nothing
        return found

    # In bytes.
    assert disk(1, 0) == []  # 1 is one byte, not the whole disk
    assert disk(free, 0) == []
    assert disk(free + 1, 0) == ["warning"]
    assert disk(free + 1, free) == ["warning"]
    assert disk(free + 1, free + 1) == ["critical"]
    # As a share of the disk (a threshold below 1 is a fraction of the total).
    assert disk((free - 1) / total, 0) == []
    assert disk((free + 1) / total, 0) == ["warning"]
    assert disk((free + 1) / total, (free - 1) / total) == ["warning"]
    assert disk((free + 1) / total, (free + 1) / total) == ["critical"]


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


def test_damaged_checksum_reported_then_critical(healthy: Settings) -> None:
    backup_id = create_backup(healthy).metadata.id
    flip_byte(healthy.backup_dir / f"{backup_id}.db.zst")
    report = check_health(healthy)
    # The secondary copy is still sound: the next run rebuilds this one, so no alarm.
    assert codes(report)["checksum"] == "ok"
    assert "the next run rebuilds it" in str(report.findings)
    assert report.exit_code == 0
    flip_byte(healthy.secondary_dir / f"{backup_id}.db.zst")  # type: ignore[operator]
    report = check_health(healthy)
    assert codes(report)["checksum"] == "critical"
    assert report.exit_code == 2


def test_missing_secondary_copy_is_reported_while_repairable(healthy: Settings) -> None:
    backup_id = create_backup(healthy).metadata.id
    (healthy.secondary_dir / f"{backup_id}.json").unlink()  # type: ignore[operator]
    report = check_health(healthy)
    assert codes(report) == {"copies-repairable": "ok"} and report.exit_code == 0
    # Once a run tried and could not rebuild it, health warns.
    record_run(
        healthy,
        at=datetime.now(timezone.utc),
        result={
            "ok": True,
            "repaired": [
                {"id": backup_id, "location": "secondary", "ok": False, "error": "disk away"}
            ],
        },
    )
    report = check_health(healthy)
    assert codes(report) == {"copies-disagree": "warning"}
    assert "rebuilding it failed: disk away" in report.findings[0].message


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
    assert (
        "critical",
        "database-unreadable",
        f"{healthy.database} is not a SQLite database (23 bytes)",
    ) in findings(report)
    healthy.database.unlink()
    assert (
        "critical",
        "database-unreadable",
        f"database {healthy.database} does not exist",
    ) in findings(check_health(healthy))


def test_what_quick_check_finds_is_quoted(healthy: Settings) -> None:
    create_backup(healthy)
    # A NOT NULL added by editing the schema over a row that holds NULL (as some migration
    # tools do): quick_check reports it.
    with contextlib.closing(sqlite3.connect(healthy.database, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE suppliers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO suppliers (name) VALUES (NULL)")
        conn.execute("PRAGMA writable_schema=ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = ? WHERE name = 'suppliers'",
            ("CREATE TABLE suppliers (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",),
        )
    assert (
        "critical",
        "database-corrupt",
        "quick_check: NULL value in suppliers.name",
    ) in findings(check_health(healthy))


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


# -- exact findings: level, code and the words a person reads -----------------------------------


def findings(report: HealthReport) -> list[tuple[str, str, str]]:
    return [(f.level.value, f.code, f.message) for f in report.findings]


@pytest.mark.parametrize(
    ("minutes_late", "expected"),
    [
        # interval 1 h, grace 15 min: warning past 1.5 h + 15 min, critical past 3 h + 15 min.
        (105, []),
        (106, [("warning", "backup-age", "newest backup is 106 min old (expected every 60 min)")]),
        (195, [("warning", "backup-age", "newest backup is 3.2 h old (expected every 60 min)")]),
        (196, [("critical", "backup-age", "newest backup is 3.3 h old (expected every 60 min)")]),
    ],
)
def test_freshness_boundaries_and_words(
    healthy: Settings, minutes_late: int, expected: list[tuple[str, str, str]]
) -> None:
    backup = create_backup(healthy).metadata
    now = backup.created_at + timedelta(minutes=minutes_late)
    verified_too = [
        (lv, "verified-" + code, "newest good" + text[6:]) for lv, code, text in expected
    ]
    # Only the freshness findings: the schedule's own findings have their own tests.
    got = [f for f in findings(check_health(healthy, now=now)) if f[1].endswith("backup-age")]
    assert got == expected + verified_too


def test_clock_boundary_and_words(healthy: Settings) -> None:
    backup = create_backup(healthy).metadata
    at_limit = backup.created_at - timedelta(minutes=5)  # dated exactly CLOCK_SKEW ahead
    assert findings(check_health(healthy, now=at_limit)) == []
    report = check_health(healthy, now=at_limit - timedelta(minutes=1))
    assert findings(report)[0] == (
        "warning",
        "clock",
        f"newest backup {backup.id} is dated 6 min in the future: check the system clock",
    )


def test_no_verified_backup_words(healthy: Settings) -> None:
    backup = create_backup(healthy).metadata
    rewrite_metadata(
        healthy,
        backup.id,
        verification={**json.loads(backup.to_json())["verification"], "ok": False, "error": "x"},
    )
    assert ("critical", "no-verified-backup", "no backup is verified and good") in findings(
        check_health(healthy)
    )
    assert ("critical", "no-backups", "there are no backups yet") not in findings(
        check_health(healthy)
    )


def test_checksum_and_copy_findings_words(healthy: Settings) -> None:
    store = BackupStore(healthy)
    first = create_backup(healthy).metadata.id
    second = create_backup(healthy).metadata.id
    flip_byte(store.data_path("primary", first, "zstd"))  # one copy bad: a warning
    for location in ("primary", "secondary"):  # every copy bad: critical
        flip_byte(store.data_path(location, second, "zstd"))
    store.metadata_path("secondary", first).unlink()
    got = findings(check_health(healthy))
    assert got == [
        ("warning", "checksum", f"primary copy of {second} does not match its SHA-256"),
        ("warning", "checksum", f"secondary copy of {second} does not match its SHA-256"),
        ("critical", "checksum", f"backup {second} has no copy with a good checksum"),
        ("warning", "checksum", f"primary copy of {first} does not match its SHA-256"),
        ("critical", "checksum", f"backup {first} has no copy with a good checksum"),
        (
            "ok",
            "copies-repairable",
            f"1 secondary cop(ies) missing or damaged ({first}); the next run rebuilds them "
            "from a sound copy",
        ),
    ]


def test_a_damaged_copy_and_lost_metadata_words(healthy: Settings) -> None:
    store = BackupStore(healthy)
    backup = create_backup(healthy).metadata
    lost = create_backup(healthy).metadata.id
    data = store.data_path("primary", backup.id, "zstd")
    data.write_bytes(data.read_bytes()[:10])
    for location in ("primary", "secondary"):
        store.metadata_path(location, lost).write_text("{")
    report = check_health(healthy)
    got = findings(report)
    problems = store.get(lost).problems
    assert len(problems) == 2  # both copies' problems, joined into one finding
    assert ("warning", "metadata", f"{lost}: {'; '.join(problems)}") in got
    # The secondary copy is sound: the run rebuilds the primary one (copies heal).
    assert (
        "ok",
        "copies-repairable",
        f"1 primary cop(ies) missing or damaged ({backup.id}); the next run rebuilds them "
        "from a sound copy",
    ) in got
    assert report.backup_count == 2


def test_checksums_are_read_past_lost_metadata_and_missing_copies(healthy: Settings) -> None:
    store = BackupStore(healthy)
    oldest = create_backup(healthy).metadata.id
    middle = create_backup(healthy).metadata.id
    newest = create_backup(healthy).metadata.id
    # A backup with no metadata is dated by its id (whole seconds): the others go back, so
    # that it lists first, as it would a moment later.
    backdate(healthy, oldest, timedelta(minutes=10))
    backdate(healthy, middle, timedelta(minutes=5))
    store.data_path("primary", oldest, "zstd").unlink()  # not listed as OK: not read
    flip_byte(store.data_path("secondary", oldest, "zstd"))
    flip_byte(store.data_path("primary", middle, "zstd"))
    for location in ("primary", "secondary"):
        store.metadata_path(location, newest).write_text("{")
    assert [i.id for i in store.list()] == [newest, middle, oldest]
    got = [f for f in findings(check_health(healthy)) if f[1] == "checksum"]
    assert got == [
        (
            "ok",
            "checksum",
            f"primary copy of {middle} does not match its SHA-256; the next run rebuilds it "
            "from a sound copy",
        ),
        ("warning", "checksum", f"secondary copy of {oldest} does not match its SHA-256"),
        ("critical", "checksum", f"backup {oldest} has no copy with a good checksum"),
    ]


def test_secondary_folder_away_is_a_warning_primary_missing_is_critical(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    (tmp_path / "plainfile").write_text("x")
    away = make_settings(secondary_dir=tmp_path / "plainfile" / "mirror", **ROOMY)
    create_backup(away)
    disk = [f for f in check_health(away).findings if f.code == "disk"]
    assert [(f.level.value, f.message) for f in disk] == [
        ("warning", f"secondary folder {tmp_path / 'plainfile' / 'mirror'}: Not a directory")
    ]
    gone = make_settings(dir=tmp_path / "never-made", secondary_dir=None, **ROOMY)
    disk = [f for f in check_health(gone).findings if f.code == "disk"]
    assert [(f.level.value, f.message) for f in disk] == [
        ("critical", f"primary folder {tmp_path / 'never-made'}: No such file or directory")
    ]


def test_room_for_the_next_backup_is_sized_from_the_live_database(
    make_settings: Callable[..., Settings], full_fs: Path
) -> None:
    import os
    import shutil

    settings = make_settings(
        dir=full_fs / "backups", secondary_dir=None, disk_warning="1KB", disk_critical="1KB"
    )
    # About 2 MiB that does not compress: the free MiB the message gives are then not 0.
    with contextlib.closing(sqlite3.connect(settings.database)) as conn:
        conn.execute("CREATE TABLE ballast (b BLOB)")
        conn.executemany("INSERT INTO ballast VALUES (?)", [(os.urandom(4096),)] * 500)
        conn.commit()
    meta = create_backup(settings).metadata
    raw = max(meta.raw_size, settings.database.stat().st_size)
    needed = raw + int(raw * meta.stored_size / meta.raw_size)
    free = shutil.disk_usage(full_fs).free
    if free >= needed:
        with (full_fs / "filler").open("wb") as filler:  # leave less than one backup's room
            filler.write(b"\0" * (free - needed + 8192))
    usage = shutil.disk_usage(full_fs)
    assert 2**20 <= usage.free < needed
    report = check_health(settings)
    assert (
        "critical",
        "disk",
        f"primary folder has {usage.free // 2**20} MiB free; the next backup needs about "
        f"{needed // 2**20 + 1} MiB",
    ) in findings(report)
    assert report.disk["primary"] == {"total": usage.total, "used": usage.used, "free": usage.free}


def test_the_light_check_reads_no_data_and_repeats_the_last_full_findings(
    healthy: Settings,
) -> None:
    """The pages' check: what hashing and quick_check found comes from the saved report."""
    backup_id = create_backup(healthy).metadata.id
    store = BackupStore(healthy)
    flip_byte(store.data_path("primary", backup_id, healthy.compression))
    light = check_health(healthy, read_data=False)
    assert "checksum" not in codes(light) and light.data_checked_at is None  # never ran
    full = check_health(healthy)
    # With a sound secondary copy beside it, the damaged primary is reported (the next run
    # rebuilds it), not warned about: the trust issue's "copies heal".
    assert codes(full)["checksum"] == "ok" and full.data_checked_at == full.checked_at
    write_status(healthy, full)
    light = check_health(healthy, read_data=False)
    assert codes(light)["checksum"] == "ok"
    assert light.data_checked_at == full.checked_at
    assert {f.message for f in light.findings if f.code == "checksum"} == {
        f.message for f in full.findings if f.code == "checksum"
    }


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
        assert found[0].level == "warning"
        assert found[0].message == (
            f"the database is in WAL mode on a network file system ({fstype}): WAL needs "
            "shared memory on one machine, and web apps and scheduled tasks may run on "
            "different ones (PythonAnywhere); switch back with PRAGMA journal_mode=DELETE"
        )
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
    # BACKUPS_SNAPSHOT_AFTER_WRITE unset: one second, but five minutes in a format 1 folder.
    assert (
        "at most every 1 s (now 5 min: backups here are whole copies (format 1))"
        in lines["Automatic snapshots"]
    )
    assert lines["Restore points"].startswith("every backup of the last 10 min is kept (1")
    (newest,) = BackupStore(healthy).list()
    assert newest.metadata is not None and healthy.snapshot_after_write == 1
    assert set(report.to_dict()["recovery"]) == {
        "snapshot_after_write",
        "effective_interval",
        "interval_reason",
        "last_auto",
        "latest_write_at",
        "unsaved_writes",
        "achieved_seconds",
        "recent",
    }
    # The interval the automatic snapshots now keep: format 1's five minutes, or 20x the last
    # backup.
    assert report.recovery["effective_interval"] == max(
        300.0, 20 * newest.metadata.durations["total"]
    )
    assert report.recovery["interval_reason"] == "files"
    backup_id = newest.id
    backdate(healthy, backup_id, timedelta(minutes=10))
    with sqlite3.connect(healthy.database) as conn:
        conn.execute("UPDATE purchase_orders SET notes = 'unsaved' WHERE id = 1")
    report = check_health(healthy)
    assert report.recovery["unsaved_writes"] is True
    assert 590 < report.recovery["achieved_seconds"] < 660
    assert report.to_dict()["recovery"]["achieved_seconds"] == report.recovery["achieved_seconds"]
    assert "not in a backup yet" in dict(describe_recovery(report.recovery))["Recovery point"]


@pytest.mark.parametrize(("kind", "trigger"), [("manual", "cli"), ("auto", "web")])
def test_a_failed_backup_is_critical_word_for_word(
    healthy: Settings, kind: str, trigger: str
) -> None:
    create_backup(healthy)
    live = healthy.database.read_bytes()
    healthy.database.write_bytes(b"x" * 4096)  # not a database any more
    with pytest.raises(DatabaseError) as caught:
        create_backup(healthy, kind=kind, trigger=trigger)
    healthy.database.write_bytes(live)
    at = json.loads((healthy.backup_dir / STATUS_FILE).read_text())["last_backup_failure"]["at"]
    [finding] = [f for f in check_health(healthy).findings if f.code == "last-backup-failed"]
    assert finding.level == "critical"
    assert finding.message == (f"the last {kind} backup ({trigger}) failed at {at}: {caught.value}")


# -- the findings from the offsite record and the schedule, word for word ---------------------
# (pure functions over a record: every branch, boundary and message, without a server)


def test_offsite_findings_say_how_far_behind_since_when_and_why() -> None:
    from tablettracker_backups.health import _offsite_findings

    now = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    since = now - timedelta(hours=5, minutes=30)
    error = "E" * 299 + "FG"  # only the first 300 characters are kept
    lag = OffsiteLag(
        configured=True,
        behind=("b3", "b2", "b1"),
        behind_since=since,
        damaged=("d1", "d2"),
        overdue=("o-oldest", "o-newer"),
        last_sync_at=now - timedelta(hours=1),
        last_error=error,
        last_error_at=now - timedelta(hours=1),
    )
    assert [(f.level, f.code, f.message) for f in _offsite_findings(lag, now)] == [
        (
            "warning",
            "offsite-behind",
            "offsite copy is 3 backup(s) behind since 2026-11-27 06:30 UTC (5.5 h); "
            f"last error: {'E' * 299}F",
        ),
        ("warning", "offsite-damaged", "offsite copy of d1 is damaged"),
        ("warning", "offsite-damaged", "offsite copy of d2 is damaged"),
        (
            "warning",
            "offsite-unverified",
            "2 offsite cop(ies) not read back within the verify period (oldest o-oldest)",
        ),
    ]
    # Behind with no date recorded: since now; no error, no tail.
    only = OffsiteLag(configured=True, behind=("b1",))
    assert [f.message for f in _offsite_findings(only, now)] == [
        "offsite copy is 1 backup(s) behind since 2026-11-27 12:00 UTC (0 s)"
    ]


def test_offsite_error_only_when_the_last_sync_itself_failed() -> None:
    from tablettracker_backups.health import _offsite_findings

    now = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    at = now - timedelta(minutes=10)
    failed = OffsiteLag(configured=True, last_sync_at=at, last_error="timed out", last_error_at=at)
    assert [(f.level, f.code, f.message) for f in _offsite_findings(failed, now)] == [
        ("warning", "offsite-error", "the last offsite sync failed: timed out")
    ]
    # An old error, with a good sync after it; an error before any sync; no error at all.
    for lag in (
        OffsiteLag(
            configured=True,
            last_sync_at=at,
            last_error="timed out",
            last_error_at=at - timedelta(hours=1),
        ),
        OffsiteLag(configured=True, last_error="timed out", last_error_at=at),
        OffsiteLag(configured=True, last_sync_at=at, last_error_at=at),
        OffsiteLag(configured=True),
    ):
        assert _offsite_findings(lag, now) == [], lag


def test_schedule_findings_boundaries_and_words() -> None:
    from tablettracker_backups.health import GRACE, _schedule_findings

    now = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    hour = timedelta(hours=1)

    def found(status: dict[str, object]) -> tuple[datetime | None, list[tuple[str, str, str]]]:
        at, findings = _schedule_findings(status, now=now, interval=hour, first_backup_at=None)
        return at, [(f.level, f.code, f.message) for f in findings]

    edge = now - (2 * hour + GRACE)
    assert found({"last_run_at": utc_iso(edge)}) == (edge, [])  # exactly at the limit: fine
    late = edge - timedelta(seconds=1)
    assert found({"last_run_at": utc_iso(late)}) == (
        late,
        [
            (
                "warning",
                "schedule-stopped",
                "the scheduled run last ran 2.3 h ago; is the scheduled task still enabled "
                "(free PythonAnywhere tasks expire)?",
            )
        ],
    )
    # A malformed time is no time (and no crash); a failed run says why, cut at 300 characters.
    assert found({"last_run_at": "yesterday"}) == (None, [])
    assert found({"last_run": {"ok": False, "error": "x" * 301}}) == (
        None,
        [("critical", "last-run-failed", f"the last scheduled run failed: {'x' * 300}")],
    )
    assert found({"last_run": {"ok": True, "error": "old"}}) == (None, [])


def test_describe_recovery_word_for_word() -> None:
    unknown = {"achieved_seconds": None, "snapshot_after_write": None}
    assert describe_recovery(unknown) == [
        ("Recovery point", "unknown (no good backup, or the database is missing)"),
        ("Automatic snapshots", "off (BACKUPS_SNAPSHOT_AFTER_WRITE=off)"),
    ]
    busy = {
        "achieved_seconds": 180.0,
        "snapshot_after_write": 300,
        "effective_interval": 600.0,
        "last_auto": {"at": "2026-11-27T12:00:00Z", "ok": False, "seconds": 1.234, "where": "w"},
        "recent": {
            "window": 86400,
            "granularity": 7200,
            "cost": 3 * 2**20,
            "budget": 10 * 2**20,
            "thinned": True,
            "kept": 7,
            "total": 90,
            "spacing": 1800,
        },
    }
    assert describe_recovery(busy) == [
        (
            "Recovery point",
            "3 min: the latest write came that long after the newest good backup, and is "
            "not in a backup yet",
        ),
        (
            "Automatic snapshots",
            "after web writes, at most every 5 min (now 10 min: 20x the last backup); "
            "the last FAILED after 1.23 s (w)",
        ),
        (
            "Restore points",
            "7 of 90 backups of the last 24.0 h kept to fit the budget (3.0 MiB of 10.0 MiB "
            "budget): the newest all, older ones one per 30 min; widest gap 2.0 h",
        ),
    ]
    calm = {
        "achieved_seconds": 0,
        "snapshot_after_write": 300,
        "effective_interval": 300.0,
        "last_auto": {"at": "2026-11-27T12:00:00Z", "ok": True, "seconds": 0.02, "where": "w"},
        "recent": {"window": 86400, "cost": 1, "budget": 2, "thinned": False, "kept": 3},
    }
    assert describe_recovery(calm) == [
        ("Recovery point", "every write so far is in a backup"),
        ("Automatic snapshots", "after web writes, at most every 5 min; the last took 0.02 s (w)"),
        ("Restore points", "every backup of the last 24.0 h is kept (3, 1 B of 2 B budget)"),
    ]
    no_time = dict(calm, last_auto={"at": "2026-11-27T12:00:00Z", "ok": True, "where": "w"})
    assert describe_recovery(no_time)[1][1].endswith("; the last took 0.00 s (w)")
    thinned = dict(calm, recent={**calm["recent"], "thinned": True, "total": 9, "spacing": None})
    assert describe_recovery(thinned)[2] == (
        "Restore points",
        "3 of 9 backups of the last 24.0 h kept to fit the budget (1 B of 2 B budget): the "
        "newest all, older ones only in the calendar slots",
    )


def test_restore_command_spells_out_every_folder_and_quotes(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    odd = tmp_path / "my backups"
    settings = make_settings(dir=odd, secondary_dir=None)
    assert restore_command(settings, "20261127T120000Z-abcdef") == (
        f"tablettracker-backups restore 20261127T120000Z-abcdef --database {settings.database} "
        f"--backup-dir '{odd}'"
    )
    both = make_settings(dir=tmp_path / "a", secondary_dir=tmp_path / "b")
    assert restore_command(both, "x").endswith(
        f"--backup-dir {tmp_path / 'a'} --secondary-dir {tmp_path / 'b'}"
    )


def test_current_report_is_saved_and_a_status_file_it_cannot_write_is_critical(
    healthy: Settings, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    create_backup(healthy)
    report = current_report(healthy)
    saved = json.loads((healthy.backup_dir / STATUS_FILE).read_text())["health"]
    assert saved == json.loads(json.dumps(report.to_dict()))
    # A status file that cannot be replaced (a folder in its place).
    (healthy.backup_dir / STATUS_FILE).unlink()
    (healthy.backup_dir / STATUS_FILE).mkdir()
    broken = current_report(healthy)
    assert broken.findings[-1].level == "critical" and broken.findings[-1].code == "status-file"
    assert broken.findings[-1].message.startswith("cannot write the status file: ")
    assert broken.exit_code == 2
    # A mistyped folder: "no backups", and the folder is not created.
    typo = make_settings(dir=tmp_path / "typo", secondary_dir=None, **ROOMY)
    assert current_report(typo).exit_code == 2
    assert not (tmp_path / "typo").exists()


def test_the_light_check_repeats_only_well_formed_data_findings(healthy: Settings) -> None:
    create_backup(healthy)
    at = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    kept = {"level": "critical", "code": "database-corrupt", "message": "page 2 is bad"}
    # The skipped ones come first: each is passed over, never the end of the list.
    items = [
        "not a finding",
        {"level": "warning", "code": "disk", "message": "not a data finding"},
        kept,
        {"level": "dreadful", "code": "checksum", "message": "no such level"},
        {"level": "warning", "code": "checksum"},
    ]
    write_status(healthy, HealthReport(checked_at=at, findings=()))
    status = json.loads((healthy.backup_dir / STATUS_FILE).read_text())
    status["health"]["findings"] = items
    (healthy.backup_dir / STATUS_FILE).write_text(json.dumps(status))
    report = check_health(healthy, read_data=False)
    assert report.data_checked_at == at
    data = [(f.level, f.code, f.message) for f in report.findings if f.code in DATA_CODES]
    assert data == [
        ("critical", "database-corrupt", "page 2 is bad"),
        ("warning", "checksum", ""),
    ]
    assert "not a data finding" not in [f.message for f in report.findings]  # checked anew
    status["health"]["checked_at"] = "not a time"
    (healthy.backup_dir / STATUS_FILE).write_text(json.dumps(status))
    report = check_health(healthy, read_data=False)
    assert report.data_checked_at is None
    assert not [f for f in report.findings if f.code in DATA_CODES]


def test_slot_counts_for_metrics_match_the_report(healthy: Settings) -> None:
    first = create_backup(healthy).metadata.id
    create_backup(healthy)
    backdate(healthy, first, timedelta(days=3))
    old, new = sorted(info.created_at for info in BackupStore(healthy).list())

    # Both in their own hour and day; week, month and year depend on today's date (UTC).
    expected = {
        "minutely": 1,  # the newest alone: the other is three days before it
        "hourly": 2,
        "daily": 2,
        "weekly": 1 if old.isocalendar()[:2] == new.isocalendar()[:2] else 2,
        "monthly": 1 if (old.year, old.month) == (new.year, new.month) else 2,
        "yearly": 1 if old.year == new.year else 2,
    }
    settings = dataclasses.replace(healthy, keep_recent=0)
    now = datetime.now(timezone.utc)
    assert check_health(settings, now=now).slot_counts == expected
    assert slot_counts(settings, BackupStore(settings).list(), now) == expected
    # Seen from two days ago, the newest backup is dated in the future and fills no slot.
    before = now - timedelta(days=2)
    only_old = {"minutely": 1, "hourly": 1, "daily": 1, "weekly": 1, "monthly": 1, "yearly": 1}
    assert slot_counts(settings, BackupStore(settings).list(), before) == only_old


def test_report_age() -> None:
    at = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    report = HealthReport(checked_at=at, findings=())
    assert report.age(None) is None
    assert report.age(at - timedelta(minutes=5)) == timedelta(minutes=5)


def test_report_to_dict_names_every_field() -> None:
    at = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    report = HealthReport(
        checked_at=at,
        findings=(
            Finding(Level.WARNING, "disk", "low"),
            Finding(Level.OK, "checksum", "rebuilt next run"),
        ),
        newest_id="n",
        newest_at=at - timedelta(hours=2),
        newest_good_id="g",
        newest_good_at=at - timedelta(hours=3),
        newest_checked_id="c",
        newest_checked_at=at - timedelta(hours=4),
        backup_count=4,
        slot_counts={"hourly": 2},
        disk={"primary": {"total": 10, "used": 4, "free": 6}},
        stored_bytes=123,
        sizes={"logical": 4096, "stored": 900, "added": 40, "own": 30, "next_backup_needs": 5000},
        last_run_at=at - timedelta(minutes=30),
        next_run_due=at + timedelta(minutes=30),
        offsite={"configured": True},
        encryption={"configured": False},
        recovery={"achieved_seconds": 0.0},
    )
    good = {"id": "g", "created_at": "2026-11-27T09:00:00Z"}
    assert report.to_dict() == {
        "status": "warning",
        "exit_code": 1,
        "checked_at": "2026-11-27T12:00:00Z",
        "findings": [
            {"level": "warning", "code": "disk", "message": "low"},
            {"level": "ok", "code": "checksum", "message": "rebuilt next run"},
        ],
        "newest_backup": {"id": "n", "created_at": "2026-11-27T10:00:00Z"},
        "newest_good_backup": good,
        "newest_verified_backup": good,
        "newest_checked_backup": {"id": "c", "created_at": "2026-11-27T08:00:00Z"},
        "backup_count": 4,
        "slot_counts": {"hourly": 2},
        "disk": {"primary": {"total": 10, "used": 4, "free": 6}},
        "stored_bytes": 123,
        "sizes": {
            "logical": 4096,
            "stored": 900,
            "added": 40,
            "own": 30,
            "next_backup_needs": 5000,
        },
        "last_run_at": "2026-11-27T11:30:00Z",
        "next_run_due": "2026-11-27T12:30:00Z",
        "offsite": {"configured": True},
        "encryption": {"configured": False},
        "recovery": {"achieved_seconds": 0.0},
    }
    empty = HealthReport(checked_at=at, findings=()).to_dict()
    assert (empty["status"], empty["exit_code"]) == ("ok", 0)
    assert empty["newest_backup"] == empty["newest_good_backup"] == {"id": None, "created_at": None}
    assert [empty[k] for k in ("last_run_at", "next_run_due")] == [None, None]
    assert [empty[k] for k in ("offsite", "encryption", "recovery", "sizes")] == [None] * 4
    worst = HealthReport(
        checked_at=at,
        findings=(
            Finding(Level.OK, "a", ""),
            Finding(Level.CRITICAL, "b", ""),
            Finding(Level.WARNING, "c", ""),
        ),
    )
    assert (worst.status, worst.exit_code) == ("critical", 2)


def test_a_primary_folder_that_cannot_be_listed_is_critical_and_says_why(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    (tmp_path / "plainfile").write_text("x")  # a file where the backup folder should be
    settings = make_settings(dir=tmp_path / "plainfile", secondary_dir=None)
    report = check_health(settings)
    [finding] = [f for f in report.findings if f.code == "backups-unreadable"]
    assert finding.level == "critical" and str(tmp_path / "plainfile") in finding.message
    assert report.exit_code == 2


def test_a_copy_that_could_not_be_rebuilt_says_why(healthy: Settings) -> None:
    from tablettracker_backups.runner import run

    create_backup(healthy)  # an older good backup: no new one is due
    newest = create_backup(healthy).metadata.id
    store = BackupStore(healthy)
    for location in ("primary", "secondary"):
        flip_byte(store.data_path(location, newest, healthy.compression))
    result = run(healthy)
    assert sorted((r.location, r.ok, r.error) for r in result.repaired) == [
        ("primary", False, "no other copy checks out"),
        ("secondary", False, "no other copy checks out"),
    ]
    checksum = [
        (f.level, f.message) for f in check_health(healthy).findings if f.code == "checksum"
    ]
    text = "copy of {} does not match its SHA-256; rebuilding it failed: no other copy checks out"
    assert checksum == [
        ("warning", f"primary {text.format(newest)}"),
        ("warning", f"secondary {text.format(newest)}"),
        ("critical", f"backup {newest} has no copy with a good checksum"),
    ]

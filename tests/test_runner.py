"""``run``: idempotent, prunes only after a verified backup, safe to run twice at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.errors import DatabaseError
from tablettracker_backups.evidence import dismiss, open_warnings
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.prune import plan_for_store
from tablettracker_backups.runner import run
from tablettracker_backups.settings import Settings
from tablettracker_backups.status import STATUS_FILE
from tablettracker_backups.store import BackupStore
from tests.conftest import backdate, flip_byte

ROOT = Path(__file__).resolve().parent.parent
ROOMY = {"disk_warning": "1MB", "disk_critical": "1MB"}


@pytest.fixture
def roomy(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**ROOMY)


def test_run_is_idempotent(roomy: Settings) -> None:
    first = run(roomy)
    assert first.backup is not None and first.error is None
    assert first.exit_code == 0, first.health.findings
    second = run(roomy)
    assert second.backup is None
    assert second.skipped_reason is not None and "only" in second.skipped_reason
    assert second.exit_code == 0
    assert [i.id for i in BackupStore(roomy).list()] == [first.backup.metadata.id]
    # The re-verify step re-checked the existing backup instead.
    assert second.reverified is not None and second.reverified.ok
    status = json.loads((roomy.backup_dir / STATUS_FILE).read_text())
    assert status["last_run"]["ok"] is True
    assert status["health"]["status"] == "ok"


def test_force_takes_another(make_settings: Callable[..., Settings]) -> None:
    # Without the recent tier, which would keep both (tests/test_autosnapshot.py).
    roomy = make_settings(**ROOMY, keep_recent="0")
    first = run(roomy)
    forced = run(roomy, force=True)
    assert first.backup is not None and forced.backup is not None
    assert forced.backup.metadata.id != first.backup.metadata.id
    # Same hour, same day...: the forced one supersedes the first in every slot.
    assert forced.pruned is not None
    assert forced.pruned.deleted == (first.backup.metadata.id,)
    assert [i.id for i in BackupStore(roomy).list()] == [forced.backup.metadata.id]


def test_backup_becomes_due_after_the_interval(roomy: Settings) -> None:
    first = run(roomy)
    assert first.backup is not None
    backdate(roomy, first.backup.metadata.id, timedelta(minutes=55))  # 0.9 h is due
    assert run(roomy).backup is not None


def _history(settings: Settings, days: int) -> list[str]:
    """``days`` backups, one per day, the oldest first, each a real backup backdated."""
    ids = []
    for _ in range(days):
        for backup_id in ids:
            backdate(settings, backup_id, timedelta(days=1))
        ids.append(create_backup(settings).metadata.id)
    for backup_id in ids:
        backdate(settings, backup_id, timedelta(days=1))
    return ids


def test_prune_only_after_the_new_backup_verified(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        keep_minutely=0,
        keep_hourly=1,
        keep_daily=1,
        keep_weekly=0,
        keep_monthly=0,
        keep_yearly=0,
        **ROOMY,
    )
    old = _history(settings, 3)
    # Retention would delete two of the three old backups...
    assert len(plan_for_store(BackupStore(settings)).delete) == 2
    # ...but the live database is now corrupt: the run keeps its snapshot, flagged
    # source-damaged, and prunes nothing (the older backups are what a recovery needs).
    data = bytearray(settings.database.read_bytes())
    data[4096 + 8 : 4096 + 400] = b"\xaa" * 392
    good = bytes(settings.database.read_bytes())
    settings.database.write_bytes(bytes(data))
    damaged = run(settings)
    assert damaged.error is None and damaged.backup is not None
    assert damaged.backup.metadata.source_damaged
    assert damaged.pruned is not None and damaged.pruned.deleted == ()
    assert damaged.exit_code == 2
    assert "source-damaged" in {f.code for f in damaged.health.findings}
    kept = sorted(i.id for i in BackupStore(settings).list())
    assert kept == sorted([*old, damaged.backup.metadata.id])
    assert BackupStore(settings).latest().id == old[-1]
    status = json.loads((settings.backup_dir / STATUS_FILE).read_text())
    assert status["health"]["status"] == "critical"
    # With the database healthy again the run backs up, verifies, then prunes.
    # The damaged snapshot's foreign-key violations rose: the backup before it is evidence of
    # a data-loss warning, kept until the owner dismisses the warning.
    [warning] = open_warnings(settings)
    assert warning.evidence_id == old[-1]
    settings.database.write_bytes(good)
    ok = run(settings)
    assert ok.error is None and ok.backup is not None and ok.pruned is not None
    assert len(ok.pruned.deleted) == 3
    assert [i.id for i in BackupStore(settings).list()] == [ok.backup.metadata.id, old[-1]]
    dismiss(settings, warning.backup_id, actor="test")
    # Dismissed: retention decides about it again, like any backup: a day old, in no slot the
    # newer backup does not fill, the next prune deletes it.
    assert not BackupStore(settings).get(old[-1]).pinned
    plan = plan_for_store(BackupStore(settings))
    assert plan.reasons(old[-1]) == () and old[-1] in {d.id for d in plan.delete}


def test_missing_database_is_a_recorded_failure(roomy: Settings) -> None:
    run(roomy)
    roomy.database.unlink()
    result = run(roomy)
    assert result.error is not None and "does not exist" in result.error
    assert result.exit_code == 2
    assert {f.code for f in result.health.findings} >= {"last-run-failed", "database-unreadable"}


def test_first_run_with_a_wrong_path_creates_no_folders(tmp_path: Path) -> None:
    from tablettracker_backups.settings import settings_from_mapping

    settings = settings_from_mapping({"database": tmp_path / "typo" / "app.db"})
    with pytest.raises(DatabaseError):
        run(settings)
    assert not (tmp_path / "typo").exists()


def test_a_damaged_copy_found_by_reverify_is_a_warning(roomy: Settings) -> None:
    first = run(roomy)
    assert first.backup is not None
    flip_byte(roomy.secondary_dir / f"{first.backup.metadata.id}.db.zst")  # type: ignore[operator]
    result = run(roomy)
    assert result.reverified is not None and not result.reverified.ok
    assert result.reverified.usable
    assert result.exit_code == 1
    assert any("re-verify" in w for w in result.warnings)


def test_a_daily_cadence_gives_correct_daily_slots(make_settings: Callable[..., Settings]) -> None:
    """A free account's single daily run: every run is due (even a little early), and each
    day's backup fills exactly one daily slot."""
    settings = make_settings(interval="1d", **ROOMY)
    taken = []
    for day in range(8):
        # The task runs about 23h after the last one some days, 25h on others.
        result = run(settings)
        assert result.backup is not None, (day, result.skipped_reason)
        taken.append(result.backup.metadata.id)
        assert result.error is None
        for backup_id in taken:
            backdate(settings, backup_id, timedelta(hours=23 if day % 2 else 25))
    # The runs' times of day now alternate between the clock's hour and the one after; run
    # between 23:00 and midnight, that pair straddles midnight (two backups on one date, none
    # on the next). A real task scheduled for 23:30 does exactly that; this test is about one
    # run a day, so move the whole week back until the newest run was at yesterday's noon.
    store = BackupStore(settings)
    newest = max(i.created_at for i in store.list())
    noon = (newest - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
    for backup_id in taken:
        backdate(settings, backup_id, newest - noon)
    plan = plan_for_store(store)
    assert not plan.delete
    daily = [r for d in plan.keep for r in d.reasons if r.startswith("daily ")]
    days = sorted({i.created_at.date() for i in store.list()})
    assert len(days) == 8
    assert sorted(daily) == sorted(f"daily {d.isoformat()}" for d in days)
    counts = Counter(r.split(" ")[0] for d in plan.keep for r in d.reasons)
    assert counts["daily"] == 8
    assert counts["hourly"] == 8  # every backup sits in its own hour too


def _run_process(
    settings: Settings, *extra: str, lock_timeout: str = "60"
) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.update(
        BACKUPS_DATABASE=str(settings.database),
        BACKUPS_DIR=str(settings.backup_dir),
        BACKUPS_LOCK_TIMEOUT=lock_timeout,
        BACKUPS_DISK_WARNING="1MB",
        BACKUPS_DISK_CRITICAL="1MB",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "tablettracker_backups", "run", "--json", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_concurrent_runs_take_one_backup(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(secondary_dir=None)
    processes = [_run_process(settings), _run_process(settings)]
    outputs = [p.communicate(timeout=120) for p in processes]
    for process, (_out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert "Traceback" not in err
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(r["backup"] is None for r in results) == [False, True]
    infos = BackupStore(settings).list()
    assert len(infos) == 1 and infos[0].verified


def test_a_run_while_another_holds_the_lock_exits_3(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(secondary_dir=None)
    create_backup(settings)
    before = sorted(p.name for p in settings.backup_dir.iterdir())
    with operation_lock(settings):
        process = _run_process(settings, "--force", lock_timeout="0.2")
        out, err = process.communicate(timeout=60)
    assert process.returncode == 3
    assert err.startswith("Busy: another backup")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    # --json: the error is JSON on standard output too.
    assert json.loads(out) == {"error": err.strip()[len("Busy: ") :], "exit_code": 3}
    # Nothing was touched while it was busy.
    assert sorted(p.name for p in settings.backup_dir.iterdir()) == before
    assert all(i.verified for i in BackupStore(settings).list())


def test_status_records_each_run(roomy: Settings) -> None:
    before = datetime.now(timezone.utc)
    run(roomy)
    status = json.loads((roomy.backup_dir / STATUS_FILE).read_text())
    last = datetime.fromisoformat(status["last_run_at"].replace("Z", "+00:00"))
    assert last >= before - timedelta(seconds=1)


def test_run_removes_debris_even_when_no_backup_is_due(roomy: Settings) -> None:
    first = run(roomy)
    assert first.backup is not None
    orphan = roomy.backup_dir / "20200101T000000Z-0a0b0c.db.zst"
    orphan.write_bytes(b"data committed, metadata never written")
    temp = roomy.backup_dir / ".tmp-deadbeef-20200101T000000Z-0a0b0c.db"
    temp.write_bytes(b"half a snapshot")
    assert [i.id for i in BackupStore(roomy).list()] == [first.backup.metadata.id]
    second = run(roomy)
    assert second.backup is None
    assert not orphan.exists() and not temp.exists()

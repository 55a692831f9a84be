"""The operation lock: exclusive between processes, bounded wait, freed by a killed holder."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tablettracker_backups.errors import LockedError, StorageError
from tablettracker_backups.locking import LOCK_NAME, acquire_lock, is_locked, operation_lock
from tablettracker_backups.settings import Settings
from tests.faultkit import ROOT

HOLDER = """
import sys, time
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.settings import settings_from_mapping
settings = settings_from_mapping({"database": sys.argv[1], "dir": sys.argv[2]})
with operation_lock(settings, timeout=0):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_in_another_process(settings: Settings) -> subprocess.Popen[str]:
    """A process that takes the lock and keeps it until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(settings.database), str(settings.backup_dir)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def stop(holder: subprocess.Popen[str]) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate(timeout=60)


def test_the_lock_is_exclusive_and_a_killed_holder_frees_it(settings: Settings) -> None:
    assert not is_locked(settings)
    holder = hold_in_another_process(settings)
    try:
        started = time.monotonic()
        assert is_locked(settings)
        assert time.monotonic() - started < 0.5  # a look, not a wait
        with pytest.raises(LockedError) as refused:
            acquire_lock(settings, timeout=0)
        assert str(refused.value) == (
            "another backup, restore or prune is in progress (waited 0s); "
            "try again when it has finished"
        )
    finally:
        stop(holder)
    assert not is_locked(settings)
    with operation_lock(settings, timeout=0):
        assert is_locked(settings)  # held by us: another taker is refused
    assert not is_locked(settings)


def test_the_wait_is_the_configured_timeout(make_settings: object) -> None:
    assert callable(make_settings)
    settings = make_settings(lock_timeout=0.6)
    holder = hold_in_another_process(settings)
    try:
        started = time.monotonic()
        with pytest.raises(LockedError, match=r"waited 0\.6s"):
            acquire_lock(settings)
        waited = time.monotonic() - started
        assert 0.5 <= waited < 5, waited
        started = time.monotonic()
        with pytest.raises(LockedError, match=r"waited 0\.2s"):
            acquire_lock(settings, timeout=0.2)  # an explicit timeout wins
        assert time.monotonic() - started < 0.55
    finally:
        stop(holder)


def test_the_lock_file_is_owner_only_in_the_state_folder(settings: Settings) -> None:
    old = os.umask(0)
    try:
        with operation_lock(settings, timeout=0):
            lock_file = settings.state_dir / LOCK_NAME
            assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600
            assert stat.S_IMODE(settings.state_dir.stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_a_state_folder_that_cannot_be_made_is_a_storage_error(
    make_settings: object, tmp_path: Path
) -> None:
    assert callable(make_settings)
    (tmp_path / "plainfile").write_text("x")
    settings = make_settings(dir=tmp_path / "plainfile" / "backups")
    with pytest.raises(StorageError):
        acquire_lock(settings, timeout=0)


def test_a_lock_file_that_cannot_be_opened_is_a_storage_error(settings: Settings) -> None:
    (settings.state_dir / LOCK_NAME).mkdir(parents=True)  # a folder where the lock file goes
    with pytest.raises(StorageError, match=f"^cannot take the lock in {settings.state_dir}: "):
        acquire_lock(settings, timeout=0)


def test_backup_and_restore_each_wait_for_the_lock(make_settings: object) -> None:
    """Each takes the lock itself (not only ``run``): with another process holding it, each
    is refused and nothing changes, the live database included."""
    from tablettracker_backups.backup import create_backup
    from tablettracker_backups.restore import restore_backup
    from tablettracker_backups.store import BackupStore

    assert callable(make_settings)
    settings = make_settings(lock_timeout=0)
    backup_id = create_backup(settings).metadata.id
    live = settings.database.read_bytes()
    holder = hold_in_another_process(settings)
    try:
        with pytest.raises(LockedError):
            create_backup(settings)
        with pytest.raises(LockedError):
            restore_backup(settings, backup_id)
    finally:
        stop(holder)
    assert BackupStore(settings).ids() == [backup_id]
    assert settings.database.read_bytes() == live

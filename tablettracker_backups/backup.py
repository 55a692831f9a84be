"""Taking a backup: snapshot, verify, compress, store in every folder, commit.

Order matters for "complete and verified or it does not exist": the snapshot goes to a
temporary file; integrity and foreign-key checks run on it while it is compressed and hashed
(the two overlap on two cores); the stored file is fsynced and renamed into each folder; the
metadata is written last, in each folder, as the commit marker.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tablettracker_backups.compression import StreamResult, compress_file, copy_file
from tablettracker_backups.errors import BackupError, StorageError, VerificationError
from tablettracker_backups.fsutil import (
    check_writable_dir,
    cleanup_temp_files,
    commit,
    remove_quietly,
    temp_path,
)
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import (
    KINDS,
    BackupMetadata,
    SourceInfo,
    Verification,
    data_filename,
    new_backup_id,
)
from tablettracker_backups.progress import StageProgress, for_stage
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import (
    DatabaseCheck,
    check_sqlite_file,
    inspect_database,
    take_snapshot,
)
from tablettracker_backups.store import BackupStore
from tablettracker_backups.version import __version__

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupResult:
    """A backup that was taken, verified and committed, plus anything that went half-wrong."""

    metadata: BackupMetadata
    locations: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def prepare_locations(settings: Settings) -> None:
    """Create the backup folders owner-only and check they are writable."""
    for directory in settings.locations:
        check_writable_dir(directory)


def cleanup_debris(settings: Settings) -> list[Path]:
    """Remove temporary files and uncommitted data files left by a killed run (under the lock)."""
    removed: list[Path] = []
    for directory in settings.locations:
        removed += cleanup_temp_files(directory)
    removed += BackupStore(settings).cleanup_orphans()
    if removed:
        logger.info("removed %d leftover temporary files", len(removed))
    return removed


def create_backup(
    settings: Settings,
    *,
    kind: str = "manual",
    trigger: str = "cli",
    progress: StageProgress | None = None,
    lock: bool = True,
) -> BackupResult:
    """Take, verify and store one backup of the live database.

    ``lock=False`` is for callers that already hold the operation lock (restore, run).
    Raises :class:`DatabaseError`, :class:`StorageError`, :class:`VerificationError` or
    :class:`LockedError`; on any error nothing new is listed as a backup.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown backup kind {kind!r}")
    # Refuse a missing or non-SQLite source before creating any folder for it.
    check_sqlite_file(settings.database)
    if not lock:
        return _create_backup(settings, kind=kind, trigger=trigger, progress=progress)
    prepare_locations(settings)
    with operation_lock(settings):
        cleanup_debris(settings)
        return _create_backup(settings, kind=kind, trigger=trigger, progress=progress)


def _create_backup(
    settings: Settings,
    *,
    kind: str,
    trigger: str,
    progress: StageProgress | None,
) -> BackupResult:
    prepare_locations(settings)
    store = BackupStore(settings)
    started = time.monotonic()
    created_at = datetime.now(timezone.utc)
    backup_id = new_backup_id(created_at)
    primary = settings.backup_dir
    raw_tmp = temp_path(primary, f"{backup_id}.db")
    stored_name = data_filename(backup_id, settings.compression)
    stored_tmp = temp_path(primary, stored_name)
    try:
        snap = take_snapshot(
            settings.database,
            raw_tmp,
            busy_timeout=settings.busy_timeout,
            progress=for_stage(progress, "snapshot"),
        )
        snapshot_done = time.monotonic()
        check, stream, check_seconds = _check_and_compress(settings, raw_tmp, stored_tmp, progress)
        if not check.ok:
            raise VerificationError(
                f"the snapshot failed its checks (integrity: {check.integrity}; "
                f"foreign key violations: {check.foreign_key_violations}); no backup was kept"
            )
        commit(stored_tmp, primary / stored_name)
    except BaseException:
        remove_quietly(stored_tmp)
        raise
    finally:
        remove_quietly(raw_tmp)
    compress_done = time.monotonic()
    metadata = BackupMetadata(
        id=backup_id,
        created_at=created_at,
        kind=kind,
        trigger=trigger,
        source=SourceInfo(
            path=str(settings.database),
            size=snap.source_size,
            page_size=snap.page_size,
            page_count=snap.page_count,
            journal_mode=snap.journal_mode,
            sqlite_version=snap.sqlite_version,
            signature=snap.signature,
        ),
        tool_version=__version__,
        schema_fingerprint=check.schema_fingerprint,
        row_counts=check.row_counts,
        raw_size=stream.raw_size,
        raw_sha256=stream.raw_sha256,
        stored_size=stream.stored_size,
        sha256=stream.sha256,
        compression=settings.compression,
        compression_level=settings.compression_level,
        durations={
            "snapshot": round(snap.seconds, 4),
            "verify": round(check_seconds, 4),
            "compress": round(compress_done - snapshot_done, 4),
            "total": round(time.monotonic() - started, 4),
        },
        verification=Verification(
            ok=True,
            verified_at=datetime.now(timezone.utc),
            integrity_check=check.integrity,
            foreign_key_violations=check.foreign_key_violations,
        ),
    )
    try:
        store.write_metadata("primary", metadata)
    except BackupError:
        remove_quietly(primary / stored_name)
        raise
    written = ["primary"]
    warnings: list[str] = []
    if "secondary" in store.locations:
        try:
            _copy_to(store, "secondary", metadata)
            written.append("secondary")
        except BackupError as exc:
            warnings.append(f"secondary copy failed: {exc}")
            logger.warning("secondary copy of %s failed: %s", backup_id, exc)
    logger.info("backup %s stored (%d bytes) in %s", backup_id, stream.stored_size, written)
    return BackupResult(metadata, tuple(written), tuple(warnings))


def _check_and_compress(
    settings: Settings,
    raw: Path,
    stored_tmp: Path,
    progress: StageProgress | None,
) -> tuple[DatabaseCheck, StreamResult, float]:
    """Run the integrity checks in a thread while the main thread compresses and hashes.

    Both release the GIL (SQLite and zstd are C), so on two cores the wall time is roughly
    the longer of the two rather than their sum.
    """
    outcome: dict[str, object] = {}

    def check() -> None:
        begun = time.monotonic()
        try:
            outcome["check"] = inspect_database(raw, full=True)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - begun

    worker = threading.Thread(target=check, name="backup-integrity-check", daemon=True)
    worker.start()
    total = raw.stat().st_size
    done = 0

    def on_chunk(size: int) -> None:
        nonlocal done
        done += size
        if progress is not None:
            progress("compress", done, total)

    try:
        stream = compress_file(
            raw,
            stored_tmp,
            algorithm=settings.compression,
            level=settings.compression_level,
            progress=on_chunk,
        )
    finally:
        worker.join()
    if "error" in outcome:
        error = outcome["error"]
        assert isinstance(error, BaseException)
        raise error
    check_result = outcome["check"]
    assert isinstance(check_result, DatabaseCheck)
    seconds = outcome["seconds"]
    assert isinstance(seconds, float)
    return check_result, stream, seconds


def _copy_to(store: BackupStore, location: str, metadata: BackupMetadata) -> None:
    """Copy a committed backup from the primary folder to ``location`` and commit it there."""
    source = store.data_path("primary", metadata.id, metadata.compression)
    final = store.data_path(location, metadata.id, metadata.compression)
    temp = temp_path(final.parent, final.name)
    try:
        size, digest = copy_file(source, temp)
        if size != metadata.stored_size or digest != metadata.sha256:
            raise VerificationError(f"the {location} copy does not match what was written")
        commit(temp, final)
    except BaseException:
        remove_quietly(temp)
        raise
    try:
        store.write_metadata(location, metadata)
    except StorageError:
        remove_quietly(final)
        raise

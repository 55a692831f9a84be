"""Restoring a backup: check it first, keep a safety snapshot, write through SQLite, check after.

Order matters, because this is the one operation that overwrites data:

1. Under the operation lock (backup, prune and run wait), pick a sound copy: each copy is
   decompressed to a scratch file in its own folder and fully checked (SHA-256, integrity,
   foreign keys, row counts, schema). A damaged primary falls back to the secondary, and says
   so; with no sound copy nothing is touched.
2. Take a ``pre-restore`` safety snapshot of the target, unless it does not exist yet (recovery
   on a fresh machine) or is an empty file.
3. Write the checked copy into the target with SQLite's online backup API. The app's open
   connections stay valid: they see the old data until the write commits, then the new data,
   never a mix; in WAL mode the pages go through the WAL, so no stale ``-wal`` can undo them.
4. Check again (quick_check, row counts and schema against the metadata) while holding the write
   lock, so an app write right after the restore cannot be mistaken for damage. On failure the
   safety snapshot is written back the same way, and both failures are reported.
5. Append the outcome to the audit log.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from tablettracker_backups import audit, notify
from tablettracker_backups.backup import cleanup_debris, create_backup
from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.encryption import Identity, missing_identity, unseal_metadata
from tablettracker_backups.errors import (
    AgeIdentityError,
    BackupError,
    BackupNotFound,
    DatabaseError,
    LockedError,
    MetadataError,
    OffsiteError,
    RestoreError,
    StorageError,
    VerificationError,
)
from tablettracker_backups.fsutil import (
    commit,
    describe_os_error,
    ensure_private_dir,
    fsync_path,
    remove_quietly,
    temp_path,
)
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import (
    REGULAR_KINDS,
    BackupMetadata,
    utc_iso,
    validate_backup_id,
)
from tablettracker_backups.offsite.client import ByteProgress, OffsiteStore
from tablettracker_backups.progress import StageProgress, for_stage
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import (
    SqliteFailure,
    check_sqlite_file,
    classify_sqlite_error,
    connect,
    copy_database,
    integrity,
    read_transaction,
    row_counts,
    schema_fingerprint,
)
from tablettracker_backups.states import CopyStatus, TableChange
from tablettracker_backups.status import update_status
from tablettracker_backups.store import BackupInfo, BackupStore, CopyState
from tablettracker_backups.verify import extract_verified

logger = logging.getLogger(__name__)

#: Stages, in order: ``verify`` (bytes decompressed), ``safety-snapshot`` (pages) and
#: ``safety-compress`` (bytes) for the safety snapshot, ``write`` (pages), ``check`` (0 or 1 of
#: 1); ``rollback`` (pages) only if the check failed.
RestoreProgress = StageProgress
#: Test seam: called with the target path after the write and before the check afterwards.
AfterWriteHook = Callable[[Path], None]
#: How the rollback's notes start in a failed restore's ``fell_back`` (after the restore's own).
ROLLBACK_NOTE = "rollback: "

#: Files SQLite keeps beside a database; a stale one next to a missing database is refused.
SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class TableDiff:
    """One table's row counts in the backup and in the live database.

    ``status`` is ``added`` (only in the backup: the restore brings it back), ``removed`` (only
    in the live database: the restore drops it), ``changed`` (row counts differ) or ``same``
    (equal row counts; the rows themselves may still differ).
    """

    name: str
    backup_rows: int | None
    live_rows: int | None
    status: TableChange

    @property
    def delta(self) -> int:
        """Rows the restore adds (positive) or takes out of the live database (negative)."""
        return (self.backup_rows or 0) - (self.live_rows or 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RestorePreview:
    """What restoring a backup would change, computed without changing anything.

    ``schema_changed`` is true when the live database exists and its schema fingerprint differs
    from the backup's.
    """

    backup_id: str
    created_at: datetime
    tables: tuple[TableDiff, ...]
    schema_changed: bool
    live_exists: bool
    #: Which kind of backup this is: a ``pre-restore`` safety snapshot holds the data as it was
    #: just before an earlier restore, not a scheduled or manual backup.
    kind: str = "unknown"
    label: str | None = None
    #: The snapshot holds damaged data (the live database failed integrity_check then).
    source_damaged: bool = False
    foreign_key_violations: int = 0
    #: Tables the backup could not count, and why (a virtual table's module not loaded).
    not_counted: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """What is being restored, in words: ``manual backup``, ``safety snapshot ...``."""
        if self.kind == "pre-restore":
            return "safety snapshot (the data as it was just before an earlier restore)"
        return f"{self.kind} backup"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``restore ID --preview --json``)."""
        return {
            "backup_id": self.backup_id,
            "created_at": utc_iso(self.created_at),
            "kind": self.kind,
            "label": self.label,
            "source_damaged": self.source_damaged,
            "foreign_key_violations": self.foreign_key_violations,
            "not_counted": dict(self.not_counted),
            "tables": [table.to_dict() for table in self.tables],
            "schema_changed": self.schema_changed,
            "live_exists": self.live_exists,
        }

    def by_impact(self) -> list[TableDiff]:
        """The tables, those the restore changes most first (a dropped or brought-back table
        counts with all its rows); tables it leaves at the same row count last, by name."""
        return sorted(
            self.tables,
            key=lambda t: (t.status == TableChange.SAME, -abs(t.delta), t.name),
        )


@dataclass(frozen=True)
class RestoreResult:
    """A restore that was written and checked.

    ``source_location`` is the folder whose copy was used; ``fell_back`` explains each copy that
    was skipped as missing or damaged; ``safety_snapshot_id`` is the pre-restore snapshot (None
    when the target did not exist or was empty). ``durations`` are seconds per step.
    """

    backup_id: str
    source_location: str
    target: Path
    safety_snapshot_id: str | None
    fell_back: tuple[str, ...]
    durations: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``restore --json``, the web pages, the audit log)."""
        return {
            "backup_id": self.backup_id,
            "source_location": self.source_location,
            "target": str(self.target),
            "safety_snapshot_id": self.safety_snapshot_id,
            "fell_back": list(self.fell_back),
            "durations": dict(self.durations),
        }


# -- choosing the backup ---------------------------------------------------------------------


def resolve_backup(store: BackupStore, backup_id: str) -> BackupInfo:
    """The backup named by ``backup_id``, or for ``latest`` the newest good regular backup
    (never a pre-restore safety snapshot, never one of damaged data).

    Raises :class:`InvalidBackupId`, :class:`BackupNotFound`, or :class:`RestoreError` when no
    copy's metadata can be read.
    """
    try:
        info = store.latest() if backup_id == "latest" else store.get(validate_backup_id(backup_id))
    except BackupNotFound as missing:
        # No local copy at all: the offsite store, when configured, is the last place to look.
        info = _offsite_info(store.settings, backup_id, missing)
    if info.metadata is None:
        raise RestoreError(
            f"backup {info.id} cannot be restored: no copy has readable metadata "
            f"({'; '.join(info.problems) or 'unknown problem'})"
        )
    return info


def _offsite_info(settings: Settings, backup_id: str, missing: BackupNotFound) -> BackupInfo:
    """The backup as the offsite store has it; re-raises ``missing`` when there is none."""
    if settings.s3 is None:
        raise missing
    try:
        offsite = OffsiteStore.from_settings(settings)
        listed = offsite.complete_ids()
        if backup_id == "latest":
            meta = _newest_good_offsite(offsite, listed)
            if meta is None:
                raise missing
        elif backup_id not in listed:
            raise missing
        else:
            meta = offsite.read_metadata(backup_id)
    except (OffsiteError, MetadataError) as exc:
        raise BackupNotFound(f"{missing}; the offsite store could not help: {exc}") from None
    return BackupInfo(
        id=meta.id,
        created_at=meta.created_at,
        metadata=meta,
        copies=(CopyState("offsite", CopyStatus.OK),),
        verified=meta.verification.ok,
    )


def _newest_good_offsite(offsite: OffsiteStore, listed: list[str]) -> BackupMetadata | None:
    """``latest`` among offsite backups (newest first): a regular one of undamaged data."""
    for candidate in listed:
        try:
            meta = offsite.read_metadata(candidate)
        except MetadataError:
            continue
        if meta.kind in REGULAR_KINDS and not meta.source_damaged and meta.verification.ok:
            return meta
    return None


# -- preview -----------------------------------------------------------------------------------


def preview_restore(
    settings: Settings, backup_id: str, *, identity: Identity | None = None
) -> RestorePreview:
    """Per-table row counts of a backup (from its metadata) against the live database.

    An encrypted backup known only from the offsite store keeps its row counts sealed:
    ``identity`` opens them. Changes nothing and takes no lock. Raises
    :class:`InvalidBackupId`, :class:`BackupNotFound`, :class:`RestoreError` (unreadable
    metadata), :class:`AgeIdentityError` (sealed counts without a fitting identity) or
    :class:`DatabaseError` (live database unreadable).
    """
    BackupStore(settings).require_folder()  # a typo in the folder: refuse, create nothing
    info = resolve_backup(BackupStore(settings), backup_id)
    meta = info.metadata
    assert meta is not None  # resolve_backup guarantees it
    if meta.encryption is not None and not meta.row_counts and not meta.source.path:
        # The offsite copy's public metadata: without its sealed counts every live table
        # would look "removed".
        if identity is None:
            raise missing_identity(f"offsite backup {meta.id}", meta.encryption)
        meta = unseal_metadata(meta, identity)
    live = settings.database
    live_exists = _has_data(live)
    live_counts: dict[str, int] = {}
    schema_changed = False
    if live_exists:
        check_sqlite_file(live)
        try:
            with closing(connect(live, busy_timeout=settings.busy_timeout, uri_mode="ro")) as conn:
                live_counts = row_counts(conn)
                schema_changed = schema_fingerprint(conn) != meta.schema_fingerprint
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot read the live database {live}: {exc}") from None
    tables = []
    for name in sorted(set(meta.row_counts) | set(live_counts)):
        in_backup = meta.row_counts.get(name)
        in_live = live_counts.get(name)
        if in_live is None:
            status = TableChange.ADDED
        elif in_backup is None:
            status = TableChange.REMOVED
        else:
            status = TableChange.SAME if in_backup == in_live else TableChange.CHANGED
        tables.append(TableDiff(name, in_backup, in_live, status))
    return RestorePreview(
        info.id,
        meta.created_at,
        tuple(tables),
        schema_changed,
        live_exists,
        kind=meta.kind,
        label=meta.label,
        source_damaged=meta.source_damaged,
        foreign_key_violations=meta.findings.foreign_key_violations,
        not_counted=dict(meta.findings.not_counted),
    )


# -- restore -----------------------------------------------------------------------------------


@dataclass
class _Attempt:
    """What a restore has done so far, for the audit log whether it succeeds or not."""

    backup_id: str
    target: Path
    source_location: str | None = None
    safety_snapshot_id: str | None = None
    fell_back: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)

    def details(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "target": str(self.target),
            "source_location": self.source_location,
            "safety_snapshot_id": self.safety_snapshot_id,
            "fell_back": list(self.fell_back),
            "durations": dict(self.durations),
        }


def restore_backup(
    settings: Settings,
    backup_id: str,
    *,
    to: Path | None = None,
    actor: str = "cli",
    identity: Identity | None = None,
    progress: RestoreProgress | None = None,
    _after_write: AfterWriteHook | None = None,
) -> RestoreResult:
    """Restore ``backup_id`` (or ``latest``) into the live database, or into ``to``.

    ``to`` names another file (new, or an existing SQLite file that is overwritten the same
    safe way); the live database is then left alone. ``actor`` is recorded in the audit log.
    ``identity`` opens encrypted copies; with ``BACKUPS_ENCRYPT=all`` it is required up front,
    since the safety snapshot is encrypted too and undoing a failed restore must open it.
    ``_after_write`` is a test seam only: it runs after the write and before the check
    afterwards, so tests can inject a real fault there; applications never pass it.

    Raises :class:`InvalidBackupId`, :class:`BackupNotFound`, :class:`LockedError`,
    :class:`AgeIdentityError` (nothing was changed), or :class:`RestoreError` whose message says
    what state the target is in. Either outcome of a restore that started is sent to the owner
    (after the lock is released).
    """
    try:
        result = _restore(settings, backup_id, to, actor, identity, progress, _after_write)
    except RestoreError as exc:
        notify.send(settings, [notify.restore_failed(settings, backup_id, str(exc))])
        raise
    notify.send(
        settings,
        [
            notify.restore_done(
                settings, result.backup_id, str(result.target), result.safety_snapshot_id
            )
        ],
    )
    return result


def _restore(
    settings: Settings,
    backup_id: str,
    to: Path | None,
    actor: str,
    identity: Identity | None,
    progress: RestoreProgress | None,
    _after_write: AfterWriteHook | None,
) -> RestoreResult:
    started = time.monotonic()
    if identity is None and settings.encryption is not None and settings.encryption.local:
        raise AgeIdentityError(
            "backups are encrypted (BACKUPS_ENCRYPT=all): restoring needs --identity FILE (or "
            "BACKUPS_IDENTITY_FILE), also to undo the restore from its encrypted safety "
            "snapshot; nothing was changed"
        )
    target = _target(settings, to)
    is_live = _same_file(target, settings.database)
    if backup_id != "latest":
        validate_backup_id(backup_id)
    BackupStore(settings).require_folder()  # a typo in the folder: refuse, create nothing
    with operation_lock(settings):
        cleanup_debris(settings)
        store = BackupStore(settings)
        info = resolve_backup(store, backup_id)
        attempt = _Attempt(info.id, target)
        try:
            _restore_locked(
                settings,
                store,
                info,
                target,
                is_live,
                attempt,
                actor,
                identity,
                progress,
                _after_write,
            )
        except (LockedError, AgeIdentityError):
            raise
        except BaseException as exc:
            attempt.durations["total"] = round(time.monotonic() - started, 4)
            message = str(exc) if isinstance(exc, BackupError) else f"interrupted: {exc!r}"
            _audit(settings, actor, attempt, ok=False, message=message)
            if isinstance(exc, RestoreError) or not isinstance(exc, BackupError):
                raise
            raise RestoreError(f"restore of {info.id} failed: {exc}") from None
        attempt.durations["total"] = round(time.monotonic() - started, 4)
        assert attempt.source_location is not None
        result = RestoreResult(
            backup_id=info.id,
            source_location=attempt.source_location,
            target=target,
            safety_snapshot_id=attempt.safety_snapshot_id,
            fell_back=tuple(attempt.fell_back),
            durations=dict(attempt.durations),
        )
        _audit(settings, actor, attempt, ok=True, message=f"restored {info.id} into {target}")
        if is_live:
            _remember_live_restore(settings, result, actor)
        logger.info("restored %s into %s", info.id, target)
        return result


def _remember_live_restore(settings: Settings, result: RestoreResult, actor: str) -> None:
    """Note in the status file which backup the live database now comes from (the dashboard
    shows it without reading the audit log); a failure here must not fail the restore."""
    try:
        update_status(
            settings,
            last_restore={
                "backup_id": result.backup_id,
                "at": utc_iso(datetime.now(timezone.utc)),
                "actor": actor,
                "safety_snapshot_id": result.safety_snapshot_id,
            },
        )
    except StorageError as exc:
        logger.warning(
            "could not note the restore of %s in the status file: %s", result.backup_id, exc
        )


def _restore_locked(
    settings: Settings,
    store: BackupStore,
    info: BackupInfo,
    target: Path,
    is_live: bool,
    attempt: _Attempt,
    actor: str,
    identity: Identity | None,
    progress: RestoreProgress | None,
    after_write: AfterWriteHook | None,
) -> None:
    # Refuse an unusable target before spending time on the backup.
    existed = target.exists()
    if existed:
        _check_overwritable(target)
    else:
        _check_no_leftovers(target)
    begun = time.monotonic()
    scratch, location, meta = _extract_sound_copy(store, info.id, attempt, identity, progress)
    attempt.source_location = location
    attempt.durations["verify"] = round(time.monotonic() - begun, 4)
    try:
        wal = meta.source.journal_mode.lower() == "wal"
        begun = time.monotonic()
        # A file that did not exist has no reader to keep consistent: the checked scratch file
        # itself becomes it (a hard link), saving a page-by-page copy of the whole database.
        placed = not existed and _link_into_place(scratch, target, wal=wal)
        if not existed and not placed:
            _create_empty(target)
        safety: BackupMetadata | None = None
        if existed and _has_data(target):
            begun = time.monotonic()
            safety = _safety_snapshot(settings, target, is_live, actor, progress)
            attempt.safety_snapshot_id = safety.id
            attempt.durations["safety_snapshot"] = round(time.monotonic() - begun, 4)
            begun = time.monotonic()
        try:
            if placed:
                if progress is not None:
                    progress("write", 1, 1)
            else:
                _write(
                    scratch,
                    target,
                    timeout=settings.busy_timeout,
                    progress=for_stage(progress, "write"),
                    wal_if_new=not existed and wal,
                    stage=Stage.RESTORE_WRITE,  # pragma: no mutate
                )
        except BaseException as exc:
            # The backup API rolled its transaction back, so only a file we created remains.
            if not existed:
                _remove_database(target)
            if not isinstance(exc, BackupError):
                raise
            state = "the new file was removed" if not existed else f"{target} was not changed"
            raise RestoreError(
                f"could not write backup {info.id} into {target}: {exc}; {state}"
            ) from None
        attempt.durations["write"] = round(time.monotonic() - begun, 4)
        if after_write is not None:
            after_write(target)
        crash_point(Stage.RESTORE_POST_CHECK)  # pragma: no mutate
        begun = time.monotonic()
        try:
            _check_after(target, meta, timeout=settings.busy_timeout, linked=placed)
        except BackupError as exc:
            attempt.durations["post_check"] = round(time.monotonic() - begun, 4)
            _undo(store, target, existed, safety, str(exc), info.id, attempt, identity, progress)
        attempt.durations["post_check"] = round(time.monotonic() - begun, 4)
        if progress is not None:
            progress("check", 1, 1)
    finally:
        remove_quietly(scratch)


def _extract_sound_copy(
    store: BackupStore,
    backup_id: str,
    attempt: _Attempt,
    identity: Identity | None,
    progress: RestoreProgress | None,
    *,
    use_offsite: bool = True,
) -> tuple[Path, str, BackupMetadata]:
    """Decompress and fully check copies, primary first, then (``use_offsite``) the offsite
    copy, until one is sound.

    Returns (scratch file, location, that copy's metadata). Raises :class:`RestoreError` when
    no copy is sound, :class:`AgeIdentityError` when an encrypted local copy cannot be opened
    (a missing or wrong key is not a damaged copy); nothing outside the backup folders has
    been touched then.
    """
    # Copies that could not be checked for lack of space or I/O trouble are not "unsound".
    unchecked = 0
    for location, folder in store.locations.items():
        try:
            meta = store.read_metadata(location, backup_id)
        except BackupNotFound:
            attempt.fell_back.append(f"{location} copy is missing")
            continue
        except (MetadataError, StorageError) as exc:
            attempt.fell_back.append(f"{location} copy skipped: {exc}")
            continue
        scratch = temp_path(folder, f"{backup_id}.restore.db")
        done = 0

        def on_bytes(size: int, total: int = meta.raw_size) -> None:
            nonlocal done
            done += size
            if progress is not None:
                progress("verify", done, total)

        try:
            # Not full: equal SHA-256s prove the bytes; the data checks are verify's job.
            extract_verified(
                store.data_path_for(location, meta),
                meta,
                scratch,
                identity=identity,
                progress=on_bytes,
                full=False,
            )
        except (VerificationError, StorageError) as exc:
            unchecked += isinstance(exc, StorageError)
            attempt.fell_back.append(f"{location} copy skipped: {exc}")
            logger.warning("restore of %s: %s copy is not usable: %s", backup_id, location, exc)
            continue
        return scratch, location, meta
    offsite = (
        _extract_offsite_copy(store, backup_id, attempt, identity, progress)
        if use_offsite
        else None
    )
    if offsite is not None:
        return offsite
    if unchecked and unchecked == len(attempt.fell_back):
        raise RestoreError(
            f"could not check backup {backup_id} (no room or I/O trouble; the backup itself "
            "was not found damaged); nothing was changed (" + "; ".join(attempt.fell_back) + ")"
        )
    raise RestoreError(
        f"no sound copy of backup {backup_id}; nothing was changed ("
        + "; ".join(attempt.fell_back or ["no copies"])
        + ")"
    )


def _extract_offsite_copy(
    store: BackupStore,
    backup_id: str,
    attempt: _Attempt,
    identity: Identity | None,
    progress: RestoreProgress | None,
) -> tuple[Path, str, BackupMetadata] | None:
    """The last fallback: download the offsite copy and check it like a local one.

    Returns ``None`` (and notes why in ``attempt``) when there is no usable offsite copy,
    including an encrypted one that ``identity`` (missing or another key) cannot open.
    """
    settings = store.settings
    if settings.s3 is None:
        return None
    ensure_private_dir(settings.backup_dir)
    scratch = temp_path(settings.backup_dir, f"{backup_id}.restore.db")
    done = 0
    total = 1

    def on_bytes(size: int) -> None:
        nonlocal done
        done += size
        if progress is not None:
            progress("download", done, total)

    try:
        offsite = OffsiteStore.from_settings(settings)
        total = max(offsite.read_metadata(backup_id).stored_size, 1)
        meta = offsite.fetch_verified(backup_id, scratch, identity=identity, progress=on_bytes)
    except (
        VerificationError,
        MetadataError,
        BackupNotFound,
        OffsiteError,
        StorageError,
        AgeIdentityError,
    ) as exc:
        remove_quietly(scratch)
        attempt.fell_back.append(f"offsite copy skipped: {exc}")
        logger.warning("restore of %s: the offsite copy is not usable: %s", backup_id, exc)
        return None
    attempt.fell_back.append("restored from the offsite copy")
    return scratch, "offsite", meta


def _safety_snapshot(
    settings: Settings,
    target: Path,
    is_live: bool,
    actor: str,
    progress: RestoreProgress | None,
) -> BackupMetadata:
    source_settings = settings if is_live else dataclasses.replace(settings, database=target)
    stage = (
        (lambda name, done, total: progress(f"safety-{name}", done, total)) if progress else None
    )
    try:
        result = create_backup(
            source_settings,
            kind="pre-restore",
            trigger=actor,
            progress=stage,
            lock=False,
            notify_owner=False,
        )
    except LockedError:
        raise
    except BackupError as exc:
        raise RestoreError(
            f"could not take a safety snapshot of {target} ({exc}); nothing was changed. "
            "If that database is damaged beyond a snapshot, move it aside (with any -wal, -shm "
            "and -journal file beside it) and restore again"
        ) from None
    for warning in result.warnings:
        logger.warning("safety snapshot %s: %s", result.metadata.id, warning)
    crash_point(Stage.SAFETY_SNAPSHOT)  # pragma: no mutate
    return result.metadata


def _undo(
    store: BackupStore,
    target: Path,
    existed: bool,
    safety: BackupMetadata | None,
    failure: str,
    backup_id: str,
    attempt: _Attempt,
    identity: Identity | None,
    progress: RestoreProgress | None,
) -> NoReturn:
    """Put the target back as it was after a failed check; always raises RestoreError."""
    first = (
        f"backup {backup_id} was written into {target} but the check afterwards failed: {failure}"
    )
    if safety is None:
        if not existed:
            _remove_database(target)
            raise RestoreError(f"{first}; the new file was removed")
        _empty_database(target)
        raise RestoreError(f"{first}; {target} was emptied again, as it was before")
    begun = time.monotonic()
    rollback = _Attempt(safety.id, target)
    scratch: Path | None = None
    try:
        # Any sound local copy will do, as for a restore: the snapshot was verified moments
        # ago, but a folder may have failed since. Not offsite: it was never uploaded, and
        # asking an unreachable store would keep the database in its failed state longer.
        try:
            scratch, _, _ = _extract_sound_copy(
                store, safety.id, rollback, identity, None, use_offsite=False
            )
        except RestoreError:
            raise RestoreError(
                f"{first}; the safety snapshot {safety.id} could not be put back: no copy of it "
                f"could be read as sound ({'; '.join(rollback.fell_back)}). {target} holds "
                f"what was written from backup {backup_id}: check it (tablettracker-backups "
                "health), or restore another backup (tablettracker-backups list)"
            ) from None
        _write(
            scratch,
            target,
            timeout=store.settings.busy_timeout,
            progress=for_stage(progress, "rollback"),
            wal_if_new=False,
        )
        _check_after(target, safety, timeout=store.settings.busy_timeout)
    except RestoreError:
        raise
    except BackupError as exc:
        raise RestoreError(
            f"{first}; putting the safety snapshot {safety.id} back ALSO failed: {exc}. "
            f"{target} may be damaged: restore {safety.id} by hand "
            f"(tablettracker-backups restore {safety.id})"
        ) from None
    finally:
        if scratch is not None:
            remove_quietly(scratch)
        attempt.fell_back += [f"{ROLLBACK_NOTE}{note}" for note in rollback.fell_back]
        attempt.durations["rollback"] = round(time.monotonic() - begun, 4)
    raise RestoreError(
        f"{first}; the safety snapshot {safety.id} was put back, so {target} is as it was "
        "before the restore"
    )


# -- writing and checking through SQLite ----------------------------------------------------------


def _write(
    source: Path,
    target: Path,
    *,
    timeout: float,
    progress: Callable[[int, int], None] | None,
    wal_if_new: bool,
    stage: Stage | None = None,
) -> None:
    """Copy every page of the checked file ``source`` into ``target`` with the backup API.

    The backup API writes inside one write transaction on ``target``, so other connections see
    the old or the new content, never a mix; on any error it rolls back and ``target`` is
    unchanged. Raises :class:`DatabaseError` (busy for ``timeout`` seconds, or refused) or
    :class:`StorageError`.
    """
    with (
        closing(connect(source, uri_mode="ro")) as src,
        closing(connect(target, busy_timeout=timeout)) as dst,
    ):
        try:
            mode = str(dst.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if mode == "wal":
                # SQLite can only write a backup through a WAL whose page size matches.
                source_size = int(src.execute("PRAGMA page_size").fetchone()[0])
                target_size = int(dst.execute("PRAGMA page_size").fetchone()[0])
                if source_size != target_size:
                    raise DatabaseError(
                        f"{target} is in WAL mode with {target_size}-byte pages but the backup "
                        f"has {source_size}-byte pages; switch it to journal_mode=DELETE first"
                    )
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open {target}: {exc}") from None
        with read_transaction(src, source):
            copy_database(
                src, dst, timeout=timeout, progress=progress, label=f"{target}", stage=stage
            )
        try:
            if wal_if_new:
                dst.execute("PRAGMA journal_mode=WAL")
                mode = "wal"
            if mode == "wal":
                # Fold the restored pages into the main file now, so no large -wal is left to
                # replay; readers still on the old snapshot make this partial, which is safe.
                dst.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            logger.warning("checkpoint after restoring into %s did not finish: %s", target, exc)


def _check_after(
    target: Path, meta: BackupMetadata, *, timeout: float, linked: bool = False
) -> None:
    """quick_check, row counts and schema of ``target`` against ``meta``.

    Runs inside a write-locked transaction (``BEGIN IMMEDIATE``) so an app write that lands
    right after the restore is not mistaken for damage. ``linked``: the target *is* the
    checked scratch file (a hard link, nothing was copied), whose SHA-256 matched, so no page
    can differ and quick_check is skipped; the row counts and schema still confirm that the
    file at the target path is the backup. Raises :class:`VerificationError`, or
    :class:`DatabaseError` when the lock cannot be had within ``timeout`` seconds.
    """
    try:
        with closing(connect(target, busy_timeout=timeout)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # A backup of damaged data is restored as it is: its quick_check cannot say ok.
                if not meta.source_damaged and not linked:
                    found = integrity(conn, full=False)
                    if found != "ok":
                        raise VerificationError(f"quick_check: {found}")
                counts = row_counts(conn)
                if counts != meta.row_counts:
                    differing = sorted(
                        name
                        for name in set(counts) | set(meta.row_counts)
                        if counts.get(name) != meta.row_counts.get(name)
                    )
                    raise VerificationError(
                        f"row counts differ from the backup's in {', '.join(differing)}"
                    )
                if schema_fingerprint(conn) != meta.schema_fingerprint:
                    raise VerificationError("schema differs from the backup's")
            finally:
                conn.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:
        if classify_sqlite_error(exc) is SqliteFailure.BUSY:
            raise DatabaseError(f"{target} stayed locked for {timeout:g}s: {exc}") from None
        raise VerificationError(f"{target} is not readable: {exc}") from None


# -- targets -------------------------------------------------------------------------------------


def _target(settings: Settings, to: Path | None) -> Path:
    if to is None:
        return settings.database
    if "\x00" in str(to) or not str(to).strip():
        raise RestoreError(f"invalid target path {str(to)[:60]!r}")
    return Path(to).expanduser().absolute()


def _same_file(one: Path, other: Path) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return one.resolve() == other.resolve()


def _has_data(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _check_overwritable(target: Path) -> None:
    if target.is_dir():
        raise RestoreError(f"{target} is a folder, not a database file")
    if not _has_data(target):
        return
    try:
        check_sqlite_file(target)
    except DatabaseError as exc:
        raise RestoreError(f"refusing to overwrite {target}: {exc}") from None


def _check_no_leftovers(target: Path) -> None:
    """Refuse a -wal, -shm or -journal left beside a database that does not exist."""
    stale = [f"{target}{suffix}" for suffix in SIDE_FILES if Path(f"{target}{suffix}").exists()]
    if stale:
        raise RestoreError(
            f"{target} does not exist but {', '.join(stale)} does; SQLite could mix that "
            "leftover into the restored database: move it aside first"
        )


def _create_empty(target: Path) -> None:
    """Create an empty owner-only file (and its folder) for a database that does not exist."""
    ensure_private_dir(target.parent)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except OSError as exc:
        raise RestoreError(f"cannot create {target}: {describe_os_error(exc, target)}") from None


def _link_into_place(scratch: Path, target: Path, *, wal: bool) -> bool:
    """Make the checked ``scratch`` file the new database ``target`` (which does not exist).

    Returns False, having changed nothing, where a hard link cannot be made (another file
    system, or one without hard links): the caller then copies the pages instead. Raises
    :class:`RestoreError` if ``target`` appeared meanwhile; it is never overwritten.
    """
    ensure_private_dir(target.parent)
    try:
        fsync_path(scratch)
        os.link(scratch, target)
    except FileExistsError:
        raise RestoreError(f"{target} appeared while restoring; it was not changed") from None
    except OSError as exc:
        logger.info("copying pages into %s instead of linking: %s", target, exc)
        return False
    try:
        fsync_path(target.parent)
        if wal:
            with closing(connect(target)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
    except (OSError, sqlite3.Error) as exc:
        _remove_database(target)
        raise RestoreError(f"cannot finish {target}: {exc}; the new file was removed") from None
    return True


def _remove_database(target: Path) -> None:
    for suffix in ("", *SIDE_FILES):
        remove_quietly(Path(f"{target}{suffix}"))


def _empty_database(target: Path) -> None:
    try:
        # By path: opening and closing a descriptor would drop this process's SQLite locks.
        os.truncate(target, 0)
    except OSError as exc:
        logger.warning("could not empty %s again: %s", target, exc)
    for suffix in SIDE_FILES:
        remove_quietly(Path(f"{target}{suffix}"))


# -- audit ---------------------------------------------------------------------------------------


def _audit(settings: Settings, actor: str, attempt: _Attempt, *, ok: bool, message: str) -> None:
    """Record the outcome; a full audit log must not turn a done restore into a failure."""
    try:
        audit.record(
            settings,
            action="restore",
            actor=actor,
            ok=ok,
            message=message,
            details=attempt.details(),
        )
    except StorageError as exc:
        logger.warning(
            "could not write the audit log entry for restore of %s: %s", attempt.backup_id, exc
        )


# -- recovery from the offsite store alone ---------------------------------------------------


@dataclass(frozen=True)
class RecoveryResult:
    """A database rebuilt from the offsite store alone."""

    id: str
    path: Path
    metadata: BackupMetadata
    #: Newer offsite backups that were damaged and passed over (id, why), newest first.
    skipped: tuple[tuple[str, str], ...] = ()


def recover_from_offsite(
    settings: Settings,
    backup_id: str = "latest",
    *,
    to: Path,
    identity: Identity | None = None,
    progress: ByteProgress | None = None,
) -> RecoveryResult:
    """Rebuild the database at the new path ``to`` from the offsite store alone.

    Needs only the offsite settings and credentials (and, for encrypted backups, ``identity``):
    no local backup folder, no lock, no live database. A missing or wrong identity stops at
    once with :class:`AgeIdentityError` naming the keys that would open the backup: that is not
    damage, so ``latest`` does not pass over to an older backup for it.
    ``latest`` takes the newest good regular offsite backup that passes every check (size,
    SHA-256, integrity_check, row counts, schema), passing over damaged ones and saying so; a
    named id must pass or nothing is written. ``to`` must not exist yet; it appears only once
    complete and verified. Raises :class:`RestoreError`, :class:`BackupNotFound`,
    :class:`VerificationError` or :class:`OffsiteError`.
    """
    offsite = OffsiteStore.from_settings(settings)
    target = to.expanduser().absolute()
    if target.exists() or target.is_symlink():
        raise RestoreError(
            f"{target} already exists; recover into a new path, then move it into place"
        )
    ensure_private_dir(target.parent)
    listed = offsite.complete_ids()
    if backup_id == "latest":
        if not listed:
            raise BackupNotFound(f"there are no backups in the offsite store {offsite.where}")
        candidates = listed
    else:
        validate_backup_id(backup_id)
        if backup_id not in listed:
            raise BackupNotFound(f"no backup {backup_id} in the offsite store {offsite.where}")
        candidates = [backup_id]
    skipped: list[tuple[str, str]] = []
    for candidate in candidates:
        if backup_id == "latest" and not _good_regular_offsite(offsite, candidate):
            continue  # latest: never a safety snapshot, never a snapshot of damaged data
        scratch = temp_path(target.parent, target.name)
        try:
            metadata = offsite.fetch_verified(
                candidate, scratch, identity=identity, progress=progress
            )
        except (VerificationError, MetadataError, BackupNotFound) as exc:
            remove_quietly(scratch)
            if backup_id != "latest":
                raise VerificationError(
                    f"offsite backup {candidate} failed its checks: {exc}; nothing was written"
                ) from None
            logger.warning("offsite backup %s is damaged, trying an older one: %s", candidate, exc)
            skipped.append((candidate, str(exc)))
            continue
        except BaseException:
            remove_quietly(scratch)
            raise
        if target.exists():
            remove_quietly(scratch)
            raise RestoreError(f"{target} appeared while recovering; nothing was overwritten")
        commit(scratch, target)
        logger.info("recovered backup %s from %s into %s", candidate, offsite.where, target)
        return RecoveryResult(candidate, target, metadata, tuple(skipped))
    if not skipped:
        raise BackupNotFound(
            f"there is no good regular backup in the offsite store {offsite.where}"
        )
    raise VerificationError(
        f"every offsite backup failed its checks (newest {skipped[0][0]}: {skipped[0][1]})"
    )


def _good_regular_offsite(offsite: OffsiteStore, backup_id: str) -> bool:
    """Whether an offsite backup can be ``latest`` (its metadata unreadable: let the full
    check say why, as for any damaged copy)."""
    try:
        meta = offsite.read_metadata(backup_id)
    except (MetadataError, BackupNotFound):
        return True
    return meta.kind in REGULAR_KINDS and not meta.source_damaged

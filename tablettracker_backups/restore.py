"""Restoring a backup: check it first, then one lock hold for the safety copy, the write
and the check, then file the safety copy.

Order matters, because this is the one operation that overwrites data:

1. Under the operation lock (backup, prune and run wait), refuse a backup folder that belongs
   to another database than the one restored into (unless that is asked for by name), write
   the restore's record (:mod:`.intent`: a killed restore is never silent), and pick a sound
   copy: each is decompressed to a scratch file in its own folder and fully checked (SHA-256,
   integrity, foreign keys, row counts, schema). A damaged primary falls back to the secondary,
   then the offsite copy, and says so; with no sound copy nothing is touched.
2. Take the target's write lock once (:mod:`.overwrite` says how, per journal mode) and keep
   it while a plain page copy of what the target holds is made and fsynced (the safety copy),
   the checked copy is written in with SQLite's backup API (open connections stay valid and
   see the old or the new data, never a mix), and quick_check, row counts and schema are
   checked on the same connection. If that check fails, the safety copy is written back under
   the same hold. No app write can land between these steps, so none is lost; app writers
   wait meanwhile (the blueprint answers the host's write requests with 503).
3. After the lock is released, compress, hash and file the safety copy as a ``pre-restore``
   backup in the target's own folder (a ``--to`` target keeps its previous content beside it
   as a plain file), append the outcome to the audit log, and put the restore on the timeline
   that ``--at`` reads.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tablettracker_backups import audit, intent, notify
from tablettracker_backups.backup import cleanup_debris, file_snapshot
from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.encryption import Identity
from tablettracker_backups.errors import (
    AgeIdentityError,
    BackupError,
    BackupNotFound,
    DatabaseBusy,
    DatabaseError,
    LockedError,
    MetadataError,
    RestoreError,
    StorageError,
    VerificationError,
)
from tablettracker_backups.fsutil import (
    commit,
    describe_os_error,
    ensure_private_dir,
    fsync_path,
    keep_beside,
    remove_quietly,
    temp_path,
)
from tablettracker_backups.identity import (
    DatabaseIdentity,
    claim_folders,
    configured_identity,
    read_identity,
    same_database,
)
from tablettracker_backups.intent import RestoreIntent
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import (
    REGULAR_KINDS,
    BackupMetadata,
    utc_iso,
    validate_backup_id,
)
from tablettracker_backups.offsite.client import ByteProgress, OffsiteStore
from tablettracker_backups.overwrite import HeldDatabase
from tablettracker_backups.preview import RestorePreview, TableDiff, preview_restore
from tablettracker_backups.progress import StageProgress, for_stage
from tablettracker_backups.restore_points import RestoreEvent, record_restore
from tablettracker_backups.settings import Settings, settings_from_mapping
from tablettracker_backups.snapshot import (
    SnapshotInfo,
    SqliteFailure,
    check_sqlite_file,
    classify_sqlite_error,
    connect,
    copy_database,
    describe_copy,
    inspect_database,
    integrity,
    read_transaction,
    row_counts,
    schema_fingerprint,
)
from tablettracker_backups.sound_copy import extract_sound_copy, resolve_backup
from tablettracker_backups.status import update_status
from tablettracker_backups.store import BackupInfo, BackupStore

logger = logging.getLogger(__name__)

#: Stages, in order: ``verify`` (bytes decompressed), ``safety-snapshot`` (pages) and
#: ``safety-compress`` (bytes) for the safety snapshot, ``write`` (pages), ``check`` (0 or 1 of
#: 1); ``rollback`` (pages) only if the check failed.
RestoreProgress = StageProgress
#: Test seam: called under the restore's lock after the write and before the check, with the
#: target and the connection holding the lock (None for a new or empty target, not held).
AfterWriteHook = Callable[[Path, "sqlite3.Connection | None"], None]
#: How the rollback's notes start in a failed restore's ``fell_back`` (after the restore's own).
ROLLBACK_NOTE = "rollback: "

#: Files SQLite keeps beside a database; a stale one next to a missing database is refused.
SIDE_FILES = ("-wal", "-shm", "-journal")


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
    #: A ``--to`` target's previous content, kept beside it (a plain SQLite file).
    safety_kept: str | None = None
    #: Done, but with something left for the next run (a safety copy not filed yet).
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``restore --json``, the web pages, the audit log)."""
        return {
            "backup_id": self.backup_id,
            "source_location": self.source_location,
            "target": str(self.target),
            "safety_snapshot_id": self.safety_snapshot_id,
            "safety_kept": self.safety_kept,
            "fell_back": list(self.fell_back),
            "warnings": list(self.warnings),
            "durations": dict(self.durations),
        }


# -- restore -----------------------------------------------------------------------------------


@dataclass
class _Attempt:
    """What a restore has done so far, for the audit log whether it succeeds or not."""

    backup_id: str
    target: Path
    source_location: str | None = None
    safety_snapshot_id: str | None = None
    #: A ``--to`` target's previous content, kept beside it as a plain SQLite file.
    safety_kept: str | None = None
    fell_back: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    #: Trouble after the restore itself succeeded (its safety copy could not be filed yet).
    warnings: list[str] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "target": str(self.target),
            "source_location": self.source_location,
            "safety_snapshot_id": self.safety_snapshot_id,
            "safety_kept": self.safety_kept,
            "fell_back": list(self.fell_back),
            "durations": dict(self.durations),
        }


@dataclass(frozen=True)
class _Job:
    """One restore's fixed facts, passed down the steps below."""

    settings: Settings
    #: The folders the target's safety snapshot is filed in: the target's own (None for a
    #: ``--to`` target, whose previous content is kept beside it).
    own: Settings | None
    target: Path
    live: bool
    actor: str
    identity: Identity | None
    progress: RestoreProgress | None
    after_write: AfterWriteHook | None
    #: No other connection to the target in this process (see :mod:`.overwrite`).
    raw_reads: bool = False


def restore_backup(
    settings: Settings,
    backup_id: str,
    *,
    to: Path | None = None,
    actor: str = "cli",
    identity: Identity | None = None,
    progress: RestoreProgress | None = None,
    from_database: str | None = None,
    target_settings: Settings | None = None,
    raw_reads: bool = False,
    _after_write: AfterWriteHook | None = None,
) -> RestoreResult:
    """Restore ``backup_id`` (or ``latest``) into the live database, or into ``to``.

    ``to`` names another file (new, or an existing SQLite file that is overwritten the same
    safe way, its previous content kept beside it); the live database is then left alone.
    The backup folder must belong to the database restored into (its ``database.json``), as for
    a backup; restoring another database's backup into it is deliberate: ``from_database``
    names the database the folder belongs to, and the target's safety snapshot is filed in
    the target's own folders (``target_settings``; default: the target's default folder).
    ``raw_reads`` says this process has no other connection to the target (the command line,
    the jobs' worker; never a host app's process): the safety copy and the check then read
    the file's bytes (see :mod:`.overwrite`). ``actor`` is recorded in the audit log.
    ``identity`` opens encrypted copies; with
    ``BACKUPS_ENCRYPT=all`` it is required up front, since the safety snapshot is encrypted too
    and undoing a failed restore must open it. ``_after_write`` is a test seam only: it runs
    under the restore's lock after the write and before the check, given the target and the
    connection holding the lock, so tests can inject a real fault there.

    Raises :class:`InvalidBackupId`, :class:`BackupNotFound`, :class:`LockedError`,
    :class:`AgeIdentityError` (nothing was changed), or :class:`RestoreError` whose message says
    what state the target is in. Either outcome of a restore that started is sent to the owner
    (after the lock is released).
    """
    try:
        result = _restore(
            settings,
            backup_id,
            to,
            actor,
            identity,
            progress,
            from_database,
            target_settings,
            _after_write,
            raw_reads,
        )
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
    from_database: str | None,
    target_settings: Settings | None,
    after_write: AfterWriteHook | None,
    raw_reads: bool,
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
    _check_target_kind(target)
    own = _own_folders(
        settings, target, is_live and _has_data(target), from_database, target_settings
    )
    with ExitStack() as locks:
        locks.enter_context(operation_lock(settings))
        cleanup_debris(settings)
        if intent.in_group(settings):
            raise RestoreError(
                f"a group restore that includes {settings.database} was interrupted and is not "
                "settled yet: run the scheduled command over the whole site (run) first, which "
                "finishes it or puts every member back; nothing was changed"
            )
        if own is not None and own.backup_dir != settings.backup_dir:
            # Another database's folder is read; the target's own folder gets its safety
            # snapshot, so nothing may run there meanwhile either.
            locks.enter_context(operation_lock(own))
            cleanup_debris(own)
            claim_folders(own)
        store = BackupStore(settings)
        info = resolve_backup(store, backup_id)
        job = _Job(
            settings, own, target, is_live, actor, identity, progress, after_write, raw_reads
        )
        attempt = _Attempt(info.id, target)
        try:
            record = intent.begin(settings, backup_id=info.id, target=target, live=is_live)
        except StorageError as exc:
            # A restore that a kill could leave untraced must not start.
            raise RestoreError(
                f"could not record the restore in {settings.state_dir} ({exc}); nothing was changed"
            ) from exc
        try:
            record = _restore_locked(
                job, store, info, attempt, record, latest=backup_id == "latest"
            )
        except (LockedError, AgeIdentityError):
            clear_unless_unfinished(settings)
            raise
        except BaseException as exc:
            attempt.durations["total"] = round(time.monotonic() - started, 4)
            message = str(exc) if isinstance(exc, BackupError) else f"interrupted: {exc!r}"
            _audit(settings, actor, attempt, ok=False, message=message)
            clear_unless_unfinished(settings)
            if isinstance(exc, RestoreError) or not isinstance(exc, BackupError):
                raise
            raise RestoreError(f"restore of {info.id} failed: {exc}") from exc
        attempt.durations["total"] = round(time.monotonic() - started, 4)
        assert attempt.source_location is not None
        result = RestoreResult(
            backup_id=info.id,
            source_location=attempt.source_location,
            target=target,
            safety_snapshot_id=attempt.safety_snapshot_id,
            fell_back=tuple(attempt.fell_back),
            durations=dict(attempt.durations),
            safety_kept=attempt.safety_kept,
            warnings=tuple(attempt.warnings),
        )
        _audit(settings, actor, attempt, ok=True, message=f"restored {info.id} into {target}")
        if is_live:
            _remember_live_restore(settings, result, actor)
        if record.unfinished is None:
            intent.clear(settings)
        logger.info("restored %s into %s", info.id, target)
        return result


def clear_unless_unfinished(settings: Settings) -> None:
    """The restore ended and said how: forget its record, unless it left work for the next
    run (a safety copy it could not file)."""
    try:
        record = intent.read(settings)
    except StorageError:
        record = None
    if record is None or record.unfinished is None:
        intent.clear(settings)


def _own_folders(
    settings: Settings,
    target: Path,
    overwrites_live: bool,
    from_database: str | None,
    target_settings: Settings | None,
) -> Settings | None:
    """The settings whose folders get the target's safety snapshot (None for a ``--to`` file).

    Refuses, in one line naming both, a backup folder that belongs to another database than
    the live one it would overwrite, unless ``from_database`` names that database: restoring
    one database's backup into another is done on purpose, never by a mistyped folder. A live
    database that does not exist yet (or is empty) is being recovered: any folder will do.
    """
    is_live = overwrites_live
    recorded = _folder_owner(settings)
    if from_database is not None:
        if recorded is None or recorded.name != from_database:
            owner = recorded.describe() if recorded else "no database (it has no database.json)"
            raise RestoreError(
                f"--from-database {from_database}: backup folder {settings.backup_dir} belongs "
                f"to {owner}; nothing was changed"
            )
        if not is_live:
            return None
        own = target_settings or own_settings(settings, target)
        if os.path.realpath(own.backup_dir) == os.path.realpath(settings.backup_dir):
            raise RestoreError(
                f"the safety snapshot of {target} would go into {settings.backup_dir}, which "
                f"belongs to {recorded.describe()}; give {target}'s own backup folder "
                "(BACKUPS_DIR); nothing was changed"
            )
        return own
    if not is_live:
        return None
    if recorded is not None and not same_database(recorded, settings):
        raise RestoreError(
            f"backup folder {settings.backup_dir} belongs to database {recorded.describe()}, not "
            f"{configured_identity(settings).describe()}; nothing was changed. To restore a "
            f"backup of {recorded.name!r} into it on purpose: add --from-database "
            f"{recorded.name}"
        )
    return settings


def _folder_owner(settings: Settings) -> DatabaseIdentity | None:
    try:
        return read_identity(settings.backup_dir)
    except StorageError as exc:
        raise RestoreError(f"{exc}; nothing was changed") from exc


def own_settings(settings: Settings, database: Path) -> Settings:
    """Settings for ``database`` in its own default backup folder (no secondary, no offsite):
    where its safety snapshot goes when another database's backup is restored into it."""
    return settings_from_mapping(
        {"database": database, "busy_timeout": settings.busy_timeout, "compression": "zstd"}
    )


def _remember_live_restore(settings: Settings, result: RestoreResult, actor: str) -> None:
    """Note in the status file which backup the live database now comes from (the dashboard
    shows it without reading the audit log), and put the restore on the timeline ``--at``
    reads; a failure here must not fail the restore."""
    now = datetime.now(timezone.utc)
    try:
        update_status(
            settings,
            last_restore={
                "backup_id": result.backup_id,
                "at": utc_iso(now),
                "actor": actor,
                "safety_snapshot_id": result.safety_snapshot_id,
            },
        )
        record_restore(settings, RestoreEvent(now, result.backup_id, result.safety_snapshot_id))
    except StorageError as exc:
        logger.warning(
            "could not note the restore of %s in the status file: %s", result.backup_id, exc
        )


def _restore_locked(
    job: _Job,
    store: BackupStore,
    info: BackupInfo,
    attempt: _Attempt,
    record: RestoreIntent,
    *,
    latest: bool = False,
) -> RestoreIntent:
    target = job.target
    # Refuse an unusable target before spending time on the backup.
    existed = target.exists()
    if existed:
        _check_overwritable(target)
    else:
        _check_no_leftovers(target)
    begun = time.monotonic()
    scratch, location, meta = extract_sound_copy(
        store, info.id, attempt.fell_back, job.identity, job.progress
    )
    attempt.source_location = location
    attempt.durations["verify"] = round(time.monotonic() - begun, 4)
    if latest and meta.source_damaged:
        # ``latest`` was a snapshot not checked yet, and its check (just recorded) found
        # damaged data: latest never means that. Asked again, latest is an older one.
        remove_quietly(scratch)
        raise RestoreError(
            f"latest was backup {info.id}, not checked until now: its check found damaged "
            f"data ({meta.findings.integrity[:200]}); it is now marked source-damaged and "
            "nothing was changed: restore latest again for the newest good backup"
        )
    try:
        if existed and _has_data(target):
            return _restore_over(job, scratch, meta, attempt, record)
        _restore_into_empty(job, scratch, meta, attempt, existed=existed)
        return record
    finally:
        remove_quietly(scratch)


def _restore_into_empty(
    job: _Job, scratch: Path, meta: BackupMetadata, attempt: _Attempt, *, existed: bool
) -> None:
    """A new file, or an empty one: there is nothing to keep, so no safety copy and no hold."""
    target, settings, progress = job.target, job.settings, job.progress
    wal = meta.source.journal_mode.lower() == "wal"
    begun = time.monotonic()
    # A file that did not exist has no reader to keep consistent: the checked scratch file
    # itself becomes it (a hard link), saving a page-by-page copy of the whole database.
    placed = not existed and _link_into_place(scratch, target, wal=wal)
    if not existed and not placed:
        _create_empty(target)
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
            f"could not write backup {meta.id} into {target}: {exc}; {state}"
        ) from exc
    attempt.durations["write"] = round(time.monotonic() - begun, 4)
    if job.after_write is not None:
        job.after_write(target, None)
    crash_point(Stage.RESTORE_POST_CHECK)  # pragma: no mutate
    begun = time.monotonic()
    try:
        _check_after(target, meta, timeout=settings.busy_timeout, linked=placed)
    except BackupError as exc:
        attempt.durations["post_check"] = round(time.monotonic() - begun, 4)
        first = f"backup {meta.id} was written into {target} but the check afterwards failed: {exc}"
        if not existed:
            _remove_database(target)
            raise RestoreError(f"{first}; the new file was removed") from exc
        _empty_database(target)
        raise RestoreError(f"{first}; {target} was emptied again, as it was before") from exc
    attempt.durations["post_check"] = round(time.monotonic() - begun, 4)
    if progress is not None:
        progress("check", 1, 1)


def _restore_over(
    job: _Job, scratch: Path, meta: BackupMetadata, attempt: _Attempt, record: RestoreIntent
) -> RestoreIntent:
    """Overwrite a database that has data, under one hold of its write lock: copy what it
    holds, write the backup, check it (or put the copy back), release; then file the copy."""
    settings, target, progress = job.settings, job.target, job.progress
    folder = job.own.backup_dir if job.own is not None else target.parent
    if job.own is not None:
        ensure_private_dir(folder)
    safety = _scratch_copy(folder, "before")
    record = intent.advance(
        settings,
        record,
        intent.HOLD,
        safety_copy=str(safety),
        extra={"safety_dir": str(folder), "kept_beside_target": job.own is None},
    )
    failure: BackupError | None = None
    undo_failure: BackupError | None = None
    after_failed: Path | None = None
    copied: SnapshotInfo | None = None
    written = False
    try:
        with _held(target, settings.busy_timeout, raw=job.raw_reads) as held:
            stage_begun = time.monotonic()

            def on_captured(info: SnapshotInfo) -> None:
                nonlocal record, stage_begun, copied
                copied = info
                now = time.monotonic()
                attempt.durations["safety_snapshot"] = round(now - stage_begun, 4)
                stage_begun = now
                record = intent.advance(
                    settings,
                    record,
                    intent.WRITE,
                    safety_copied=True,
                    journal_mode=held.journal_mode,
                )

            record = intent.advance(
                settings,
                record,
                intent.SAFETY_COPY,
                journal_mode=held.journal_mode,
                durable=False,  # the app waits; the record of "hold" already says enough
            )
            try:
                held.replace(
                    scratch,
                    capture=safety,
                    progress=for_stage(progress, "write"),
                    capture_progress=for_stage(progress, "safety-snapshot"),
                    on_captured=on_captured,
                    stage=Stage.RESTORE_WRITE,  # pragma: no mutate
                )
            except BackupError as exc:
                raise _not_written(meta.id, target, exc, captured=copied is not None) from exc
            written = True
            attempt.durations["write"] = round(time.monotonic() - stage_begun, 4)
            if job.after_write is not None:
                job.after_write(target, held.conn)
            crash_point(Stage.RESTORE_POST_CHECK)  # pragma: no mutate
            record = intent.advance(settings, record, intent.CHECK, durable=False)
            stage_begun = time.monotonic()
            try:
                held.check(lambda conn: _verify_restored(conn, meta, target, held, scratch))
            except BackupError as exc:
                failure = exc
                attempt.durations["post_check"] = round(time.monotonic() - stage_begun, 4)
                record = intent.advance(settings, record, intent.ROLLBACK)
                stage_begun = time.monotonic()
                # In WAL mode an app write may have slipped in after the commit: copy what is
                # overwritten now too, so even that is never lost.
                after_failed = _scratch_copy(folder, "after-failed-restore") if held.wal else None
                record = intent.advance(
                    settings,
                    record,
                    intent.ROLLBACK,
                    extra={**record.extra, "after_failed": after_failed and str(after_failed)},
                )

                def on_rollback_captured(_: SnapshotInfo) -> None:
                    nonlocal record
                    record = intent.advance(
                        settings,
                        record,
                        intent.ROLLBACK,
                        extra={**record.extra, "after_failed_done": True},
                    )

                try:
                    _put_back(held, safety, after_failed, progress, on_rollback_captured)
                except BackupError as second:
                    undo_failure = second
                attempt.durations["rollback"] = round(time.monotonic() - stage_begun, 4)
            else:
                attempt.durations["post_check"] = round(time.monotonic() - stage_begun, 4)
                if progress is not None:
                    progress("check", 1, 1)
        attempt.durations["hold"] = round(held.held_seconds, 4)
    except BaseException:
        if not written or copied is None:
            # Nothing was written (the write's transaction rolled back): the copy of the
            # unchanged database is not needed.
            remove_quietly(safety)
            raise
        # The target was overwritten: whatever went wrong since, what it held is kept.
        _keep_copies(job, attempt, record, safety, copied, after_failed)
        raise
    record = intent.advance(settings, record, intent.RELEASED)
    crash_point(Stage.RESTORE_RELEASED)  # pragma: no mutate
    begun = time.monotonic()
    if copied is None:  # pragma: no cover - replace() returns only after the copy
        raise RestoreError(f"the safety copy of {target} was not made")
    record = _keep_copies(job, attempt, record, safety, copied, after_failed)
    attempt.durations["safety_file"] = round(time.monotonic() - begun, 4)
    if failure is not None:
        raise RestoreError(
            _failure_message(settings, meta.id, target, failure, undo_failure, attempt)
        )
    return record


@contextmanager
def _held(target: Path, busy_timeout: float, *, raw: bool) -> Iterator[HeldDatabase]:
    """The target under the restore's write lock; a lock that cannot be had is one line."""
    held = HeldDatabase(target, busy_timeout=busy_timeout, raw=raw)
    try:
        held.__enter__()
    except DatabaseBusy as exc:
        raise _not_written("", target, exc, captured=False) from exc
    except DatabaseError as exc:
        raise RestoreError(f"cannot restore into {target}: {exc}; nothing was changed") from exc
    try:
        yield held
    except BaseException as exc:
        held.__exit__(type(exc), exc, exc.__traceback__)
        raise
    held.__exit__(None, None, None)


def _not_written(backup_id: str, target: Path, exc: BackupError, *, captured: bool) -> RestoreError:
    """Why a restore wrote nothing: the lock, the safety copy, or the write itself."""
    text = str(exc)
    if isinstance(exc, DatabaseBusy):
        # Busy is not damage: no advice to move a live database aside.
        return RestoreError(
            f"{text}; nothing was changed: try again when the app is less busy (or raise "
            "BACKUPS_BUSY_TIMEOUT)"
        )
    if not captured:
        return RestoreError(
            f"could not take a safety snapshot of {target} ({text}); nothing was changed. If "
            "that database is damaged beyond a snapshot, move it aside (with any -wal, -shm "
            "and -journal file beside it) and restore again"
        )
    return RestoreError(
        f"could not write backup {backup_id} into {target}: {text}; {target} was not changed"
    )


def _scratch_copy(folder: Path, tag: str) -> Path:
    """A new scratch name for a copy of the target (never ``.tmp-*``: see intent.SAFETY_PREFIX)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return folder / f"{intent.SAFETY_PREFIX}{stamp}-{secrets.token_hex(3)}-{tag}.db"


def _put_back(
    held: HeldDatabase,
    safety: Path,
    capture: Path | None,
    progress: RestoreProgress | None,
    on_captured: Callable[[SnapshotInfo], None],
) -> None:
    """Write the safety copy back under the same hold and check it; raises BackupError."""
    expected = inspect_database(safety, full=False)
    held.replace(
        safety,
        capture=capture,
        progress=for_stage(progress, "rollback"),
        on_captured=on_captured,
        stage=Stage.RESTORE_ROLLBACK,  # pragma: no mutate
    )

    def verify(conn: sqlite3.Connection) -> None:
        if held.compares_bytes and held.holds(safety):
            return
        _compare(conn, held.target, expected.row_counts, expected.schema_fingerprint, quick=True)
        if held.compares_bytes:
            raise VerificationError(f"{held.target} does not hold the safety copy's bytes")

    held.check(verify)


def _keep_copies(
    job: _Job,
    attempt: _Attempt,
    record: RestoreIntent,
    safety: Path,
    copied: SnapshotInfo,
    after_failed: Path | None,
) -> RestoreIntent:
    """File the safety copy as a ``pre-restore`` backup in the target's own folder (or keep a
    ``--to`` target's beside it), then remove the scratch; trouble leaves the copy and the
    record, for the next run to finish, and is a warning (the restore itself is done)."""
    settings = job.settings
    record = intent.advance(settings, record, intent.FILING)
    try:
        if job.own is None:
            kept = keep_beside(job.target, safety, "before-restore")
            attempt.safety_kept = str(kept)
            record = intent.advance(settings, record, intent.FILING, safety_kept=str(kept))
        else:
            result = file_snapshot(job.own, safety, copied, kind="pre-restore", trigger=job.actor)
            attempt.safety_snapshot_id = result.metadata.id
            record = intent.advance(settings, record, intent.FILING, safety_kept=result.metadata.id)
            for warning in result.warnings:
                logger.warning("safety snapshot %s: %s", result.metadata.id, warning)
            crash_point(Stage.SAFETY_SNAPSHOT)  # pragma: no mutate
        remove_quietly(safety)
        if after_failed is not None and after_failed.exists():
            _file_after_failed(job, attempt, after_failed)
    except BackupError as exc:
        note = f"the safety copy of {job.target} could not be kept yet ({exc}); it is at {safety}"
        logger.warning("%s", note)
        attempt.warnings.append(f"{note}; the next run files it")
        return intent.advance(settings, record, intent.FILING, unfinished=note)
    return record


def _file_after_failed(job: _Job, attempt: _Attempt, copy: Path) -> None:
    """What a failed restore's rollback overwrote (WAL mode), kept in case the app slipped a
    write in; never needed otherwise, never thrown away."""
    if job.own is None:
        kept = keep_beside(job.target, copy, "after-failed-restore")
        attempt.fell_back.append(f"{ROLLBACK_NOTE}what was overwritten is kept at {kept}")
        return
    snap = describe_copy(copy, journal_mode="wal")
    result = file_snapshot(job.own, copy, snap, kind="pre-restore", trigger=job.actor)
    remove_quietly(copy)
    attempt.fell_back.append(
        f"{ROLLBACK_NOTE}what was overwritten is kept as backup {result.metadata.id}"
    )


def _failure_message(
    settings: Settings,
    backup_id: str,
    target: Path,
    failure: BackupError,
    undo_failure: BackupError | None,
    attempt: _Attempt,
) -> str:
    first = (
        f"backup {backup_id} was written into {target} but the check afterwards failed: {failure}"
    )
    if attempt.safety_snapshot_id:
        where = f"the safety snapshot {attempt.safety_snapshot_id}"
    elif attempt.safety_kept:
        where = f"the safety copy {attempt.safety_kept}"
    else:
        where = "the safety copy"
    if undo_failure is None:
        return f"{first}; {where} was put back, so {target} is as it was before the restore"
    hint = (
        f" ({settings.command_line('restore', attempt.safety_snapshot_id)})"
        if attempt.safety_snapshot_id
        else ""
    )
    return (
        f"{first}; putting {where} back ALSO failed: {undo_failure}. {target} may be damaged: "
        f"restore it by hand{hint}"
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
    """Copy every page of the checked file ``source`` into the new or empty file ``target``
    with the backup API (one write transaction: on any error ``target`` is unchanged).
    Raises :class:`DatabaseError` or :class:`StorageError`."""
    with (
        closing(connect(source, uri_mode="ro")) as src,
        closing(connect(target, busy_timeout=timeout)) as dst,
    ):
        with read_transaction(src, source):
            copy_database(
                src, dst, timeout=timeout, progress=progress, label=f"{target}", stage=stage
            )
        if not wal_if_new:
            return
        try:
            dst.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            logger.warning("could not put %s back in WAL mode: %s", target, exc)


def _verify_restored(
    conn: sqlite3.Connection,
    meta: BackupMetadata,
    target: Path,
    held: HeldDatabase | None = None,
    source: Path | None = None,
) -> None:
    """The check after the write, on the connection holding the lock. Where the file's bytes
    can be read (``held.compares_bytes``), they must be exactly the pages of the checked copy
    ``source``: stronger than quick_check, and a fraction of its time. Otherwise, and to say
    what differs when they are not: quick_check (unless the backup holds damaged data, whose
    quick_check cannot say ok), row counts, schema."""
    byte_check = held is not None and source is not None and held.compares_bytes
    if byte_check and held is not None and source is not None and held.holds(source):
        return
    _compare(conn, target, meta.row_counts, meta.schema_fingerprint, quick=not meta.source_damaged)
    if byte_check:
        raise VerificationError(
            f"{target} does not hold the backup's bytes (its row counts and schema match)"
        )


def _compare(
    conn: sqlite3.Connection,
    target: Path,
    counts: dict[str, int],
    fingerprint: str,
    *,
    quick: bool,
) -> None:
    """Raise :class:`VerificationError` unless the database on ``conn`` passes quick_check
    (when ``quick``) and has exactly these row counts and this schema; a lock is not damage:
    it raises :class:`DatabaseBusy`."""
    try:
        if quick:
            found = integrity(conn, full=False)
            if found != "ok":
                raise VerificationError(f"quick_check: {found}")
        now = row_counts(conn)
        if now != counts:
            differing = sorted(
                name for name in set(now) | set(counts) if now.get(name) != counts.get(name)
            )
            raise VerificationError(
                f"row counts differ from the backup's in {', '.join(differing)}"
            )
        if schema_fingerprint(conn) != fingerprint:
            raise VerificationError("schema differs from the backup's")
    except sqlite3.DatabaseError as exc:
        if classify_sqlite_error(exc) is SqliteFailure.BUSY:
            raise DatabaseBusy(f"{target} stayed locked: {exc}") from exc
        raise VerificationError(f"{target} is not readable: {exc}") from exc


def _check_after(
    target: Path, meta: BackupMetadata, *, timeout: float, linked: bool = False
) -> None:
    """The check of a new or emptied target, on a connection of its own under
    ``BEGIN IMMEDIATE``. ``linked``: the target *is* the checked scratch file (a hard link),
    whose SHA-256 matched, so quick_check is skipped; the row counts and schema still confirm
    that the file at the target path is the backup. Raises :class:`VerificationError`, or
    :class:`DatabaseError` when the lock cannot be had within ``timeout`` seconds.
    """
    try:
        with closing(connect(target, busy_timeout=timeout)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _compare(
                    conn,
                    target,
                    meta.row_counts,
                    meta.schema_fingerprint,
                    quick=not meta.source_damaged and not linked,
                )
            finally:
                conn.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:
        if classify_sqlite_error(exc) is SqliteFailure.BUSY:
            raise DatabaseError(f"{target} stayed locked for {timeout:g}s: {exc}") from exc
        raise VerificationError(f"{target} is not readable: {exc}") from exc


# -- targets -------------------------------------------------------------------------------------


def _target(settings: Settings, to: Path | None) -> Path:
    if to is None:
        return settings.database
    if "\x00" in str(to) or not str(to).strip():
        raise RestoreError(f"invalid target path {str(to)[:60]!r}")
    return Path(to).expanduser().absolute()


def _check_target_kind(target: Path) -> None:
    """Only a regular file (or a new one in a folder) can be restored into: SQLite would
    create its journal beside anything else (``/dev/null-journal``) and fail obscurely."""
    try:
        mode = target.stat().st_mode
    except FileNotFoundError as exc:
        if target.parent.exists() and not target.parent.is_dir():
            raise RestoreError(
                f"cannot restore into {target}: {target.parent} is not a folder"
            ) from exc
        return
    except OSError as exc:
        raise RestoreError(f"cannot restore into {target}: {exc.strerror}") from exc
    if stat.S_ISDIR(mode):
        raise RestoreError(f"{target} is a folder, not a database file")
    if not stat.S_ISREG(mode):
        raise RestoreError(
            f"refusing to restore into {target}: it is not a regular file (a device, pipe or "
            "socket); give a database file's path"
        )


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
    if not os.access(target, os.W_OK) or not os.access(target.parent, os.W_OK):
        # SQLite opens such a file read-only and fails at the first write with "attempt to
        # write a readonly database", or, in WAL mode, "unable to open database file".
        what = target if not os.access(target, os.W_OK) else target.parent
        raise RestoreError(
            f"cannot restore into {target}: {what} is not writable (a read-only file system, "
            "or permissions; SQLite also needs to create its -journal, -wal and -shm files "
            "beside it); nothing was changed"
        )
    try:
        check_sqlite_file(target)
    except DatabaseError as exc:
        raise RestoreError(f"refusing to overwrite {target}: {exc}") from exc


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
        raise RestoreError(f"cannot create {target}: {describe_os_error(exc, target)}") from exc


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
    except FileExistsError as exc:
        raise RestoreError(f"{target} appeared while restoring; it was not changed") from exc
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
        raise RestoreError(f"cannot finish {target}: {exc}; the new file was removed") from exc
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


def dismiss_interrupted(settings: Settings, *, actor: str) -> RestoreIntent:
    """Forget the record of an interrupted restore, after the owner has checked the database
    (health stops reporting it). Raises :class:`BackupNotFound` when there is none, and
    :class:`LockedError` while another operation runs."""
    with operation_lock(settings):
        cleanup_debris(settings)  # files its safety copy first, if that is still to do
        record = intent.read(settings)
        if record is None:
            raise BackupNotFound("there is no interrupted restore to dismiss")
        intent.clear(settings)
    audit.record(
        settings,
        action="restore",
        actor=actor,
        ok=True,
        message=(
            f"dismissed the interrupted restore of {record.backup_id} into {record.target} "
            f"(stopped at {record.stage})"
        ),
        details={"backup_id": record.backup_id, "target": record.target, "stage": record.stage},
    )
    return record


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
                ) from exc
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


#: Kept importable from here, where they used to live.
__all__ = [
    "RecoveryResult",
    "RestorePreview",
    "RestoreResult",
    "TableDiff",
    "dismiss_interrupted",
    "preview_restore",
    "recover_from_offsite",
    "resolve_backup",
    "restore_backup",
]

#: The check after a write and the rollback under the same hold, for the group restore
#: (:mod:`.group_restore`), which restores several databases the same way.
verify_restored = _verify_restored
put_back = _put_back
scratch_copy = _scratch_copy

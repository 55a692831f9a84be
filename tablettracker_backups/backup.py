"""Taking a backup: snapshot, check, compress, prove, store in every folder, commit.

Order matters for "complete and faithful or it does not exist": the snapshot goes to a
temporary file; integrity and foreign-key checks run on it while it is compressed and hashed
(the two overlap on two cores); the stored file is read back to prove it decompresses to
exactly the snapshot; it is fsynced and renamed into each folder; the metadata, with what the
checks found in the data, is written last, in each folder, as the commit marker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from tablettracker_backups import audit, intent, notify
from tablettracker_backups.anomaly import (
    EXTRA_KEY,
    Anomaly,
    AnomalyKind,
    find_anomalies,
    previous_good,
)
from tablettracker_backups.checks import Plan, plan_checks
from tablettracker_backups.compression import (
    StreamResult,
    compress_file,
    decompress_file,
)
from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.display import human_size
from tablettracker_backups.encryption import (
    SealResult,
    encrypt_file,
    encrypted_metadata,
    require_pyrage,
)
from tablettracker_backups.errors import (
    BackupError,
    LockedError,
    MetadataError,
    ObjectCorrupt,
    StorageError,
    VerificationError,
)
from tablettracker_backups.evidence import record_anomalies
from tablettracker_backups.formats import (
    FILES,
    PAGES,
    BackupFormat,
    choose_format,
    format_of,
    page_index,
)
from tablettracker_backups.fsutil import (
    TEMP_PREFIX,
    check_writable_dir,
    cleanup_temp_files,
    commit,
    keep_beside,
    remove_quietly,
    remove_stale_scratch_dirs,
    temp_path,
)
from tablettracker_backups.identity import claim_folders
from tablettracker_backups.layout import PAGES_PREFIX, data_key, manifest_key, state_key
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import (
    CHECK_NAMES,
    KINDS,
    NOT_CHECKED,
    QUICK_CHECKS,
    BackupMetadata,
    SourceInfo,
    Verification,
    new_backup_id,
    utc_iso,
    validate_label,
)
from tablettracker_backups.pagestore import Written, write_file_pages
from tablettracker_backups.progress import StageProgress, for_stage
from tablettracker_backups.replicate import replicate
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import (
    UNREADABLE_SCHEMA,
    DatabaseCheck,
    SnapshotInfo,
    check_sqlite_file,
    describe_copy,
    inspect_database,
    inspect_header,
    read_live_pages,
    take_snapshot,
)
from tablettracker_backups.states import CopyStatus
from tablettracker_backups.status import read_status, update_status
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.store import BackupInfo, BackupStore
from tablettracker_backups.version import __version__

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class BackupResult:
    """A backup that was taken, verified and committed, plus anything that went half-wrong."""

    metadata: BackupMetadata
    locations: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    #: What changed suspiciously since the previous good backup (also in the metadata).
    anomalies: tuple[Anomaly, ...] = ()


def prepare_locations(settings: Settings) -> str | None:
    """Create the backup folders owner-only and check they are writable.

    Raises :class:`StorageError` for the primary folder. The secondary folder only holds a
    second copy, so its trouble (a disk that is away, read-only or full) must not stop the
    backup: it is returned as a one-line reason instead (``None`` when the folder is usable).
    Its parents are never created: a missing parent is a disk that is not mounted, and a
    "second copy" written onto the system disk in its place would be no second copy at all.
    """
    check_writable_dir(settings.backup_dir)
    if settings.secondary_dir is None:
        return None
    try:
        check_writable_dir(settings.secondary_dir, parents=False)
    except StorageError as exc:
        logger.warning("secondary folder %s is not usable: %s", settings.secondary_dir, exc)
        return str(exc)
    return None


def cleanup_debris(settings: Settings) -> list[Path]:
    """Remove temporary files and uncommitted data files left by a killed run, and finish
    after a killed restore (under the lock: no restore of these folders is running)."""
    record = intent.read(settings)
    pending = record is not None and record.found_at is None
    freed = _temp_bytes(settings) if pending else 0
    removed: list[Path] = []
    for directory in settings.locations:
        removed += cleanup_temp_files(directory)
        # A pack or node a killed format 2 backup was writing (under pages/, in subfolders).
        pages = directory / PAGES_PREFIX.rstrip("/")
        if pages.is_dir():
            removed += [pages / key for key in LocalStore(pages).cleanup()]
    removed += BackupStore(settings).cleanup_orphans()
    freed += remove_stale_scratch_dirs(settings.backup_dir)
    if removed:
        logger.info("removed %d leftover temporary files", len(removed))
    if pending and record is not None and not intent.in_group(settings):
        # A member of an unsettled group restore is settled with the group (run over the
        # site, or restore --group), never alone.
        _settle_restore(settings, record, freed)
    return removed


def _temp_bytes(settings: Settings) -> int:
    """Bytes held by leftover temporary files (a killed restore's decompressed copy)."""
    total = 0
    for directory in settings.locations:
        with contextlib.suppress(OSError):
            for entry in directory.iterdir():
                if entry.name.startswith(TEMP_PREFIX):
                    with contextlib.suppress(OSError):
                        total += entry.stat().st_size
    return total


def _settle_restore(settings: Settings, record: intent.RestoreIntent, freed: int) -> None:
    """A restore was killed: keep its complete safety copies (filed as ``pre-restore``
    backups, or beside a ``--to`` target), remove its scratch files, note what the target
    holds, and audit it. The record stays, so health says so until the owner has looked."""
    before = intent.before_shape(record)
    kept = record.safety_kept
    notes: list[str] = []
    copies = [
        (record.safety_copy, record.safety_copied, kept is not None),
        (record.extra.get("after_failed"), bool(record.extra.get("after_failed_done")), False),
    ]
    for name, complete, filed in copies:
        if not isinstance(name, str) or not Path(name).is_file():
            continue
        copy = Path(name)
        size = copy.stat().st_size
        if complete and not filed:
            try:
                kept_as = _keep_safety_copy(settings, record, copy)
            except BackupError as exc:
                notes.append(f"its safety copy {copy} could not be kept yet: {exc}")
                logger.error("after the interrupted restore: %s", notes[-1])
                continue
            kept = kept or kept_as
            if kept_as != kept:
                notes.append(f"what its rollback overwrote is kept as {kept_as}")
        elif not complete:
            notes.append(f"an incomplete copy of the target ({human_size(size)}) was removed")
        remove_quietly(copy)
        freed += size
    record = dataclasses.replace(
        record,
        found_at=datetime.now(timezone.utc),
        freed=freed,
        safety_kept=kept,
        extra={**record.extra, **({"before": before} if before is not None else {})},
    )
    record = dataclasses.replace(record, state=intent.describe_state(settings, record))
    intent.save(settings, record)
    message = (
        f"the restore of {record.backup_id} into {record.target} was interrupted at stage "
        f"{record.stage} ({utc_iso(record.stage_at)}); {record.state}; "
        + (f"the data from before it is kept as {kept}; " if kept else "")
        + (f"{'; '.join(notes)}; " if notes else "")
        + f"freed {human_size(freed)}"
    )
    logger.warning("%s", message)
    try:
        audit.record(
            settings,
            action="restore",
            actor="cleanup",
            ok=False,
            message=message,
            details={
                "backup_id": record.backup_id,
                "target": record.target,
                "stage": record.stage,
                "interrupted": True,
                "safety_kept": kept,
                "freed": freed,
            },
        )
    except StorageError as exc:
        logger.warning("could not audit the interrupted restore: %s", exc)


def _keep_safety_copy(settings: Settings, record: intent.RestoreIntent, copy: Path) -> str:
    """File a killed restore's complete safety copy where the restore would have; returns
    the backup id (or the file it was kept as, beside a ``--to`` target)."""
    target = Path(record.target)
    if record.extra.get("kept_beside_target"):
        return str(keep_beside(target, copy, "before-restore"))
    folder = Path(str(record.extra.get("safety_dir") or settings.backup_dir))
    own = (
        settings
        if folder == settings.backup_dir
        else dataclasses.replace(
            settings, database=target, backup_dir=folder, secondary_dir=None, database_name=""
        )
    )
    snap = describe_copy(copy, journal_mode=record.journal_mode or "delete")
    snap = dataclasses.replace(snap, began_at=record.started_at)
    result = file_snapshot(
        own, copy, snap, kind="pre-restore", trigger="interrupted-restore", source=target
    )
    return result.metadata.id


def create_backup(
    settings: Settings,
    *,
    kind: str = "manual",
    trigger: str = "cli",
    progress: StageProgress | None = None,
    lock: bool = True,
    label: str | None = None,
    pinned: bool = False,
    notify_owner: bool = True,
    raw_reads: bool = False,
) -> BackupResult:
    """Take, check and store one backup of the live database.

    The backup is kept when its stored file decompresses to exactly the snapshot and the
    snapshot opens as SQLite; what the checks find in the data (integrity messages, foreign-key
    violations, tables that could not be counted) is recorded as findings, never a reason to
    throw the copy away. ``label`` is a note shown with it; ``pinned`` keeps it out of
    retention until unpinned. ``lock=False`` is for callers that already hold the operation
    lock (restore, run).
    With ``notify_owner`` (the default) a failure, the anomalies and, with
    ``BACKUPS_NOTIFY_ON=all``, the success are sent to the owner after the lock is released;
    ``run`` and restore pass False and report in their own message.
    ``raw_reads`` says this process is not the host app's (the CLI, the detached worker): in
    rollback-journal mode a format 2 snapshot whose full checks wait then reads its pages
    straight from the live file under the read transaction's SHARED lock
    (:func:`.snapshot.read_live_pages`) instead of through a scratch copy.

    Raises :class:`DatabaseError`, :class:`StorageError`, :class:`VerificationError`,
    :class:`IdentityError` (the folder belongs to another database) or :class:`LockedError`;
    on any error nothing new is listed as a backup. A failed manual or automatic backup is
    recorded for ``health`` (a scheduled one is recorded by ``run``).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown backup kind {kind!r}")
    label = validate_label(label)
    options = _Options(kind, trigger, progress, label, pinned, raw_reads=raw_reads)
    try:
        # Refuse a missing or non-SQLite source before creating any folder for it.
        check_sqlite_file(settings.database)
        if settings.encryption is not None and settings.encryption.local:
            # BACKUPS_ENCRYPT=all without the library: fail loudly, never store plaintext.
            require_pyrage()
        if not lock:
            result = _create_backup(settings, options)
        else:
            prepare_locations(settings)
            with operation_lock(settings):
                cleanup_debris(settings)
                result = _create_backup(settings, options)
    except LockedError:
        raise
    except BackupError as exc:
        _note_failure(settings, options, exc)
        if notify_owner:
            notify.send(settings, [notify.backup_failed(settings, str(exc), trigger=trigger)])
        raise
    _note_success(settings, options)
    if notify_owner:
        notify.send(settings, backup_events(settings, result))
    return result


def backup_events(settings: Settings, result: BackupResult) -> list[notify.Event]:
    """What the owner hears of a backup that was taken: its anomalies, and the success."""
    meta = result.metadata
    events = [
        notify.anomaly(
            settings,
            notify.Severity.INFO if found.info_only else notify.Severity.WARNING,
            f"backup {meta.id}: {found.message}",
            found.previous_id,
        )
        for found in result.anomalies
    ]
    events.append(notify.backup_ok(settings, meta.id, human_size(meta.stored_size)))
    return events


def _anomalies(
    settings: Settings, infos: list[BackupInfo] | None, current: BackupMetadata
) -> tuple[Anomaly, ...]:
    """Compare with the previous good backup; a folder that could not be listed (``infos``
    None) only skips this."""
    if infos is None:
        return ()
    # Row counts and foreign keys are compared between checked snapshots only: one filed
    # unchecked has none (its drop shows at the next checked one, against the last checked).
    previous = previous_good([i for i in infos if i.metadata is not None and i.metadata.checked])
    if previous is None or previous.metadata is None:
        return ()
    found = find_anomalies(
        previous.metadata, current, drop=settings.anomaly_drop, command=settings.command
    )
    if not current.checked:
        found = tuple(item for item in found if item.kind is AnomalyKind.SCHEMA_CHANGED)
    for item in found:
        logger.warning("anomaly in backup %s: %s", current.id, item.message)
    return found


@dataclass(frozen=True)
class _Options:
    kind: str
    trigger: str
    progress: StageProgress | None
    label: str | None
    pinned: bool
    #: Written into the manifest's ``extra`` (a coordinated snapshot's group).
    extra: dict[str, Any] = field(default_factory=dict)
    #: This process is not the host app's (the CLI, the detached worker): a format 2
    #: snapshot whose full checks wait may read pages straight from the live file.
    raw_reads: bool = False


@dataclass(frozen=True)
class _Stored:
    """A snapshot taken, checked, compressed, proven to decompress to itself, and committed
    as a data file in the primary folder (not yet listed: its metadata comes next)."""

    snap: SnapshotInfo
    check: DatabaseCheck
    stream: StreamResult
    durations: dict[str, float]
    #: The encrypted form that was committed instead (``BACKUPS_ENCRYPT=all``), or None.
    sealed: SealResult | None = None
    #: The format it was stored in, and what its manifest records of it (format 2's index).
    format_version: int = FILES.version
    extra: dict[str, object] = dataclasses.field(default_factory=dict)


def _create_backup(settings: Settings, options: _Options) -> BackupResult:
    secondary_trouble = prepare_locations(settings)
    if options.kind != "pre-restore":
        # A safety snapshot is of whatever the restore overwrites; everything else must be
        # of the database this folder belongs to.
        claim_folders(settings)
    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    backup_id = new_backup_id(started_at)
    raw_tmp = temp_path(settings.backup_dir, f"{backup_id}.db")
    choice: _Choice | None = None
    if options.raw_reads:
        found = _read_live(settings, backup_id, options, started, started_at, secondary_trouble)
        if isinstance(found, BackupResult):
            return found
        choice = found
    try:
        snap = take_snapshot(
            settings.database,
            raw_tmp,
            busy_timeout=settings.busy_timeout,
            progress=for_stage(options.progress, "snapshot"),
        )
        return _file_raw(
            settings,
            backup_id,
            raw_tmp,
            snap,
            options,
            started,
            started_at,
            secondary_trouble,
            choice,
        )
    finally:
        remove_quietly(raw_tmp)


def file_snapshot(
    settings: Settings,
    raw: Path,
    snap: SnapshotInfo,
    *,
    kind: str,
    trigger: str,
    source: Path | None = None,
    label: str | None = None,
    pinned: bool = False,
    backup_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> BackupResult:
    """Check, compress, prove and store a copy already taken (``raw``, described by ``snap``)
    as a backup; ``raw`` is left in place (the caller removes it once this returns).

    For a restore's safety snapshot, copied under the restore's own lock and filed after it
    is released, and for each member of a coordinated snapshot (:mod:`.coordinated`), whose
    id is chosen up front and whose manifest names its group in ``extra``. The caller holds
    the operation lock. ``source`` is the database the copy is of (default: the configured
    one). Raises what :func:`create_backup` raises.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown backup kind {kind!r}")
    options = _Options(kind, trigger, None, validate_label(label), pinned, dict(extra or {}))
    secondary_trouble = prepare_locations(settings)
    started_at = snap.began_at or datetime.now(timezone.utc)
    where = settings if source is None else dataclasses.replace(settings, database=source)
    return _file_raw(
        where,
        backup_id or new_backup_id(started_at),
        raw,
        snap,
        options,
        time.monotonic() - snap.seconds,
        started_at,
        secondary_trouble,
    )


@dataclass(frozen=True)
class _Choice:
    """What the folder's listing (made once, before the new backup exists) decides: the
    format, the parent a format 2 snapshot builds on, and the listing for the anomalies."""

    store: BackupStore
    infos: list[BackupInfo] | None
    format: BackupFormat
    parent: BackupMetadata | None


def _choose(settings: Settings) -> _Choice:
    store = BackupStore(settings)
    try:
        infos: list[BackupInfo] | None = store.list()
    except BackupError as exc:
        logger.warning("could not list the backups: %s", exc)
        infos = None
    newest = _newest_primary(infos or [])
    chosen = choose_format(
        settings.backup_format,
        encrypted_locally=settings.encryption is not None and settings.encryption.local,
        offsite=settings.offsite is not None,
        gzip=settings.compression == "gzip",
        newest=newest,
    )
    parent = newest if newest is not None and newest.format_version == PAGES.version else None
    return _Choice(store, infos, chosen, parent)


def _plan(settings: Settings, choice: _Choice, options: _Options, size: int) -> Plan:
    return plan_checks(
        options.kind, choice.infos or [], size, budget=settings.check_budget, paged=True
    )


def _file_raw(
    settings: Settings,
    backup_id: str,
    raw: Path,
    snap: SnapshotInfo,
    options: _Options,
    started: float,
    started_at: datetime,
    secondary_trouble: str | None,
    choice: _Choice | None = None,
) -> BackupResult:
    choice = choice or _choose(settings)
    if choice.format is PAGES:
        plan = _plan(settings, choice, options, snap.source_size)
        logger.info("backup %s: full checks %s: %s", backup_id, plan.full, plan.reason)
        stored = _store_pages(settings, raw, snap, options, choice.parent, plan)
    else:
        stored = _store_raw(settings, backup_id, raw, snap, options)
    return _commit_stored(
        settings, choice, backup_id, started_at, options, stored, started, secondary_trouble
    )


def _commit_stored(
    settings: Settings,
    choice: _Choice,
    backup_id: str,
    started_at: datetime,
    options: _Options,
    stored: _Stored,
    started: float,
    secondary_trouble: str | None,
) -> BackupResult:
    """Write the manifest of a snapshot whose data is stored (the commit), then copy it to
    the other folders."""
    store = choice.store
    metadata = _build_metadata(settings, backup_id, started_at, options, stored, started)
    anomalies = _anomalies(settings, choice.infos, metadata)
    if anomalies:
        metadata = dataclasses.replace(
            metadata, extra={**metadata.extra, EXTRA_KEY: [a.to_dict() for a in anomalies]}
        )
    if stored.sealed is not None and settings.encryption is not None:
        # Last, so the sealed details include the anomalies (their messages name tables).
        metadata = encrypted_metadata(metadata, stored.sealed, settings.encryption.recipients)
    try:
        store.write_metadata("primary", metadata)
    except BackupError:
        for key in format_of(metadata).owned_keys(metadata):
            remove_quietly(settings.backup_dir / key)
        raise
    written, warnings = _copy_to_others(store, metadata, secondary_trouble)
    logger.info("backup %s stored (%d bytes) in %s", backup_id, metadata.stored_size, written)
    # Once the backup is committed: the previous backup still holds the lost rows, so it is
    # pinned before anything (this run's prune included) could delete it.
    record_anomalies(settings, store, backup_id, anomalies)
    return BackupResult(metadata, tuple(written), tuple(warnings), anomalies)


def _read_live(
    settings: Settings,
    backup_id: str,
    options: _Options,
    started: float,
    started_at: datetime,
    secondary_trouble: str | None,
) -> BackupResult | _Choice:
    """A format 2 snapshot whose full checks wait, read straight from the live file (the
    caller's process is not the host app's: ``raw_reads``). Returns the backup, or the
    listing's choice when this path does not apply (format 1, full checks due, WAL mode):
    the backup API copy then goes on with it."""
    choice = _choose(settings)
    if choice.format is not PAGES:
        return choice
    try:
        size = settings.database.stat().st_size
    except OSError:
        return choice  # the snapshot reports a missing file properly
    plan = _plan(settings, choice, options, size)
    if plan.full:
        return choice
    index = None
    if choice.parent is not None:
        try:
            index = page_index(choice.parent)
        except MetadataError as exc:
            logger.warning("storing every page again: backup %s: %s", choice.parent.id, exc)
    progress = options.progress

    def on_pages(done: int, total: int) -> None:
        if progress is not None:
            progress("compress", done, total)

    live = read_live_pages(
        LocalStore(settings.backup_dir),
        settings.database,
        busy_timeout=settings.busy_timeout,
        parent=index,
        level=settings.compression_level,
        progress=on_pages,
    )
    if live is None:
        return choice  # WAL mode: its pages are read through SQLite
    logger.info("backup %s: %s; pages read from the live file", backup_id, plan.reason)
    written = live.written
    snap = SnapshotInfo(
        source_size=written.raw_size,
        page_size=written.index.page_size,
        page_count=written.index.page_count,
        journal_mode=live.journal_mode,
        sqlite_version=sqlite3.sqlite_version,
        seconds=live.seconds,
        signature=live.signature,
        began_at=live.began_at,
    )
    check = DatabaseCheck(
        NOT_CHECKED,
        0,
        {},
        live.schema_fingerprint,
        written.index.page_size,
        written.index.page_count,
        checked=False,
    )
    durations = {
        # The read transaction: reading, hashing and storing the pages all happen inside it.
        "snapshot": round(live.seconds, 4),
        "pages": round(written.seconds, 4),
    }
    stored = _paged(snap, check, written, durations)
    return _commit_stored(
        settings, choice, backup_id, started_at, options, stored, started, secondary_trouble
    )


def _newest_primary(infos: list[BackupInfo]) -> BackupMetadata | None:
    """The newest backup whose primary copy looks sound: whose format a folder keeps, and
    whose pages a new page-store snapshot need not store again."""
    for info in infos:
        if info.metadata is not None and info.copy_state("primary") == CopyStatus.OK:
            return info.metadata
    return None


def _store_pages(
    settings: Settings,
    raw: Path,
    snap: SnapshotInfo,
    options: _Options,
    parent: BackupMetadata | None,
    plan: Plan,
) -> _Stored:
    """Check the snapshot ``raw`` while its new pages go into the primary folder's page store
    (format 2): packs and index nodes, each committed; the manifest naming them comes next.
    The full checks run when ``plan`` says so, else only the header check."""
    progress = options.progress
    index = None
    if parent is not None:
        try:
            index = page_index(parent)
        except MetadataError as exc:
            logger.warning("storing every page again: backup %s: %s", parent.id, exc)
    snapshot_done = time.monotonic()

    def on_pages(done: int, total: int) -> None:
        if progress is not None:
            progress("compress", done, total)

    check, written, check_seconds = _check_while(
        raw,
        lambda: write_file_pages(
            LocalStore(settings.backup_dir),
            raw,
            parent=index,
            level=settings.compression_level,
            progress=on_pages,
        ),
        keep_unreadable=options.kind == "pre-restore",
        full=plan.full,
    )
    durations = {
        "snapshot": round(snap.seconds, 4),
        # What the next snapshot's estimate reads is the full checks' time alone.
        ("verify" if plan.full else "header_check"): round(check_seconds, 4),
        "compress": round(time.monotonic() - snapshot_done, 4),
        # Of which reading, hashing and storing the pages (the checks ran beside it).
        "pages": round(written.seconds, 4),
    }
    return _paged(snap, check, written, durations)


def _paged(
    snap: SnapshotInfo, check: DatabaseCheck, written: Written, durations: dict[str, float]
) -> _Stored:
    """A format 2 snapshot stored: its page index stands for the stored file (the SHA-256
    the manifest records is the index root's, the stored size what the snapshot added)."""
    stream = StreamResult(
        raw_size=written.raw_size,
        raw_sha256=written.raw_sha256,
        stored_size=written.index.added,
        sha256=written.index.root,
    )
    return _Stored(
        snap,
        check,
        stream,
        durations,
        format_version=PAGES.version,
        extra={"pages": written.index.to_dict()},
    )


def _store_raw(
    settings: Settings, backup_id: str, raw: Path, snap: SnapshotInfo, options: _Options
) -> _Stored:
    """Check and compress the snapshot ``raw``, prove the stored file, commit it."""
    primary = settings.backup_dir
    stored_name = data_key(backup_id, settings.compression)
    stored_tmp = temp_path(primary, stored_name)
    progress = options.progress
    sealed_tmp = temp_path(primary, data_key(backup_id, settings.compression, encrypted=True))
    try:
        snapshot_done = time.monotonic()
        check, stream, check_seconds = _check_and_compress(
            settings, raw, stored_tmp, progress, keep_unreadable=options.kind == "pre-restore"
        )
        compress_done = time.monotonic()
        _prove_stored(stored_tmp, settings.compression, stream)
        prove_done = time.monotonic()
        sealed: SealResult | None = None
        encrypt_seconds = 0.0
        if settings.encryption is not None and settings.encryption.local:
            # Only after the plain snapshot passed every check: what is encrypted is verified.
            sealed = encrypt_file(
                stored_tmp,
                sealed_tmp,
                settings.encryption.recipients,
                expected_sha256=stream.sha256,
            )
            remove_quietly(stored_tmp)
            stored_tmp = sealed_tmp
            stored_name = data_key(backup_id, settings.compression, encrypted=True)
            encrypt_seconds = round(time.monotonic() - prove_done, 4)
        commit(stored_tmp, primary / stored_name)
        crash_point(Stage.DATA_RENAME)  # pragma: no mutate
    except BaseException:
        remove_quietly(stored_tmp)
        remove_quietly(sealed_tmp)
        raise
    durations = {
        "snapshot": round(snap.seconds, 4),
        "verify": round(check_seconds, 4),
        "compress": round(compress_done - snapshot_done, 4),
        "prove": round(prove_done - compress_done, 4),
    }
    if sealed is not None:
        durations["encrypt"] = encrypt_seconds
    return _Stored(snap, check, stream, durations, sealed)


def _prove_stored(stored: Path, algorithm: str, stream: StreamResult) -> None:
    """The stored file must decompress to exactly the snapshot: the definition of a faithful
    copy. Compression computed both hashes as it went; this reads the file back to prove it."""
    proof = decompress_file(stored, None, algorithm=algorithm, expected_sha256=stream.sha256)
    if proof.raw_sha256 != stream.raw_sha256 or proof.raw_size != stream.raw_size:
        raise VerificationError(
            "the stored file does not decompress to the snapshot; no backup was kept"
        )


def _build_metadata(
    settings: Settings,
    backup_id: str,
    started_at: datetime,
    options: _Options,
    stored: _Stored,
    started: float,
) -> BackupMetadata:
    snap, check, stream = stored.snap, stored.check, stored.stream
    checked_at = datetime.now(timezone.utc)
    return BackupMetadata(
        id=backup_id,
        # The state the copy holds is as of its read transaction, which may have waited for
        # a writer: stamping the run's start would date that writer's rows too early.
        created_at=snap.began_at or started_at,
        started_at=started_at,
        kind=options.kind,
        trigger=options.trigger,
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
        compression=settings.compression if stored.format_version == FILES.version else "zstd",
        compression_level=settings.compression_level,
        format_version=stored.format_version,
        # The page index (format 2) and the group of a coordinated snapshot.
        extra={**stored.extra, **options.extra},
        durations={**stored.durations, "total": round(time.monotonic() - started, 4)},
        verification=Verification(
            ok=True,
            verified_at=checked_at,
            integrity_check=check.integrity,
            foreign_key_violations=check.foreign_key_violations,
            checks=dict.fromkeys(CHECK_NAMES if check.checked else QUICK_CHECKS, checked_at),
        ),
        findings=check.findings(),
        label=options.label,
        pinned=options.pinned,
    )


def _copy_to_others(
    store: BackupStore, metadata: BackupMetadata, secondary_trouble: str | None
) -> tuple[list[str], list[str]]:
    """Copy a committed backup to the other folders; a failure there, or a secondary folder
    that is away (``secondary_trouble``), is a warning (``run`` rebuilds the missing copy
    later), never a reason to lose the primary one."""
    written = ["primary"]
    warnings: list[str] = []
    for location in store.locations:
        if location == "primary":
            continue
        if location == "secondary" and secondary_trouble is not None:
            warnings.append(f"secondary copy failed: {secondary_trouble}")
            continue
        try:
            copy_between(store, "primary", location, metadata)
            written.append(location)
        except BackupError as exc:
            warnings.append(f"{location} copy failed: {exc}")
            logger.warning("%s copy of %s failed: %s", location, metadata.id, exc)
    return written, warnings


def _note_failure(settings: Settings, options: _Options, exc: BackupError) -> None:
    """Remember a failed manual or automatic backup, so health shows it like a failed run."""
    if options.kind not in ("manual", "auto") or not settings.state_dir.is_dir():
        return  # run records its own; a restore reports its safety snapshot; no folder: typo
    try:
        update_status(
            settings,
            last_backup_failure={
                "at": utc_iso(datetime.now(timezone.utc)),
                "kind": options.kind,
                "trigger": options.trigger,
                "error": str(exc)[:500],
            },
        )
    except BackupError as status_error:
        logger.error("could not record the failed backup: %s", status_error)


def _note_success(settings: Settings, options: _Options) -> None:
    if options.kind == "pre-restore" or not read_status(settings).get("last_backup_failure"):
        return
    try:
        update_status(settings, last_backup_failure=None)
    except BackupError as exc:
        logger.error("could not clear the failed backup from the status file: %s", exc)


def _check_and_compress(
    settings: Settings,
    raw: Path,
    stored_tmp: Path,
    progress: StageProgress | None,
    *,
    keep_unreadable: bool,
) -> tuple[DatabaseCheck, StreamResult, float]:
    """Run the integrity checks in a thread while the main thread compresses and hashes.

    Both release the GIL (SQLite and zstd are C), so on two cores the wall time is roughly
    the longer of the two rather than their sum. A snapshot that does not open as SQLite is
    refused, unless ``keep_unreadable`` (a safety snapshot is kept whatever it holds).
    """
    total = raw.stat().st_size
    done = 0

    def on_chunk(size: int) -> None:
        nonlocal done
        done += size
        if progress is not None:
            progress("compress", done, total)

    return _check_while(
        raw,
        lambda: compress_file(
            raw,
            stored_tmp,
            algorithm=settings.compression,
            level=settings.compression_level,
            progress=on_chunk,
        ),
        keep_unreadable=keep_unreadable,
    )


def _check_while(
    raw: Path, work: Callable[[], T], *, keep_unreadable: bool, full: bool = True
) -> tuple[DatabaseCheck, T, float]:
    """Run the checks of the snapshot ``raw`` in a thread while this one does ``work``;
    the checks' outcome, the work's result, and the seconds the checks took. Without
    ``full``, only the header check (:func:`.snapshot.inspect_header`)."""
    outcome: dict[str, object] = {}

    def check() -> None:
        begun = time.monotonic()
        try:
            outcome["check"] = _inspect_snapshot(raw, keep_unreadable=keep_unreadable, full=full)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - begun

    worker = threading.Thread(target=check, name="backup-integrity-check", daemon=True)
    worker.start()
    try:
        result = work()
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
    return check_result, result, seconds


def _inspect_snapshot(raw: Path, *, keep_unreadable: bool, full: bool) -> DatabaseCheck:
    try:
        return inspect_database(raw, full=True) if full else inspect_header(raw)
    except VerificationError as exc:
        if not keep_unreadable:
            raise VerificationError(
                f"the snapshot does not open as a SQLite database ({exc}); no backup was kept"
            ) from exc
        # The bytes are kept exactly as they were; their findings say they are unreadable.
        return DatabaseCheck(f"unreadable: {exc}", 0, {}, UNREADABLE_SCHEMA, 0, 0)


def copy_between(store: BackupStore, source: str, location: str, metadata: BackupMetadata) -> None:
    """Copy a committed backup from the ``source`` folder into ``location`` and commit it
    there, through :func:`.replicate.replicate`: data under a temporary name, checked against
    the metadata's SHA-256, fsynced and renamed, then the manifest as stored, then the state
    document. Raises :class:`VerificationError` when the bytes written do not match,
    :class:`StorageError` when the folder cannot be written."""
    state = store.read_state_bytes(source, metadata.id)
    origin = LocalStore(store.locations[source])
    try:
        replicate(
            origin,
            LocalStore(store.locations[location]),
            format_of(metadata).parts(origin, metadata),
            # The manifest as it is stored (copies carry the same one), then what changed.
            (manifest_key(metadata.id), store.read_manifest(source, metadata.id)),
            after=[(state_key(metadata.id), state)] if state is not None else [],
            scratch=store.locations[location],
            part_stage=Stage.SECONDARY_COPY,  # pragma: no mutate
            manifest_stage=Stage.METADATA_WRITE,  # pragma: no mutate
        )
    except ObjectCorrupt as exc:
        raise VerificationError(
            f"the {location} copy of {metadata.id} does not match its metadata "
            f"(the {source} copy it came from is damaged)"
        ) from exc

"""Write-triggered snapshots: a recovery point of minutes without a daemon.

After a web request that may have written, the blueprint calls :func:`after_write` once the
response has gone out. It decides from ``stat()`` alone (:mod:`.changes`) whether the database
changed since the newest good backup, and whether that backup is older than the effective
interval: the larger of ``BACKUPS_SNAPSHOT_AFTER_WRITE`` and :data:`COST_FACTOR` times the
newest backup's duration, so snapshots take at most about 5% of the time. Then:

- due, and the database small (:data:`IN_PROCESS_MAX_BYTES`): an ordinary verified backup of
  kind ``auto``, right here, in the thread that served the request;
- due, and larger (or an offsite copy should follow at once): the detached job worker does it;
- changed but not yet due, or busy: a *waiting* worker (one at most) sleeps until it is due,
  checks again, and snapshots if something is still unsaved. That catches the tail of a burst
  of writes, which no later request may come to trigger.

Never two at once: decisions are taken under a short file lock (:data:`DECISION_LOCK`), a
snapshot under the operation lock without waiting (busy: a waiting worker checks later), and
a snapshot re-checks after taking the lock. Writes made outside web requests are caught by
the next scheduled ``run``, which also backs up when the signature changed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tablettracker_backups.backup import create_backup
from tablettracker_backups.changes import SourceSignature, changed_since, source_signature
from tablettracker_backups.errors import (
    BackupError,
    BackupNotFound,
    LockedError,
    MetadataError,
    StorageError,
)
from tablettracker_backups.formats import FILES
from tablettracker_backups.fsutil import atomic_write_bytes, remove_quietly
from tablettracker_backups.jobs import queue as jobs
from tablettracker_backups.locking import folder_lock, operation_lock
from tablettracker_backups.metadata import BackupMetadata, parse_utc, utc_iso
from tablettracker_backups.offsite.sync import sync_offsite
from tablettracker_backups.retention import CLOCK_SKEW
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import State
from tablettracker_backups.status import read_status, update_status
from tablettracker_backups.store import BackupStore

logger = logging.getLogger(__name__)

#: Snapshots may take at most 1/COST_FACTOR of the time: the interval grows with their duration.
COST_FACTOR = 20
#: The default interval of a folder in format 1, where every snapshot is a whole copy (the
#: one-second default is the page store's).
FILES_DEFAULT_INTERVAL = 300.0
#: Largest database (with its -wal) snapshotted inside the web process. On this project's
#: 2-core test machine (bench/bench_autosnapshot.py, other work running beside it) a full
#: backup of 6.9 MiB of TabletTracker data took 0.14-0.17 s (median; 0.39 s at most with one
#: core kept busy), 13.8 MiB 0.45-0.82 s (1.18 s at most): so up to 8 MiB in-process, larger
#: ones in the detached worker. The demo database (84 KiB) takes 10-20 ms.
IN_PROCESS_MAX_BYTES = 8 * 1024 * 1024
#: ... and only while the newest backup took no longer than this (a slow disk, a loaded host).
IN_PROCESS_MAX_SECONDS = 0.5
#: Automatic snapshots this small go offsite at once (by the worker); larger ones at the next
#: scheduled run.
OFFSITE_RIGHT_AWAY_BYTES = 8 * 1024 * 1024
#: Newest backup ids whose metadata the cheap check reads before giving up.
SCAN_LIMIT = 20
#: The decision lock, and the record of the waiting worker, in the state folder.
DECISION_LOCK = ".auto.lock"
PENDING_FILE = "auto-pending.json"
#: How long a decision waits for another decision (they take milliseconds).
DECISION_WAIT = 2.0
#: A waiting worker gives up after this many snapshots (the next write starts another).
MAX_ROUNDS = 50
STATUS_KEY = "last_auto"

# One decision at a time per database inside this process (the file lock covers other
# processes); a site's databases are decided apart, each by its state folder. A request that
# finds one under way does not wait: it marks it missed, and the running one decides once more
# before it stops, so no write goes unseen.
_flags = threading.Lock()
_busy: set[str] = set()
_missed: set[str] = set()
# Only touched by the one decision under way for that database (see _busy), each keyed by its
# state folder: the newest backup's metadata, and until when a waiting worker has not looked.
_newest_cache: dict[str, tuple[tuple[tuple[str, int], ...], BackupMetadata | None]] = {}
_waiting_until: dict[str, datetime] = {}


class Outcome(State):
    """What one trigger did."""

    OFF = "off"
    UNCHANGED = "unchanged"
    WAITING = "waiting"
    BUSY = "busy"
    TAKEN = "taken"
    HANDED_OFF = "handed-off"
    FAILED = "failed"


@dataclass(frozen=True)
class Check:
    """The cheap look: has the database changed since the newest good backup, is one due?"""

    checked_at: datetime
    signature: SourceSignature
    newest: BackupMetadata | None
    changed: bool
    #: The effective interval in seconds (the setting, or more for slow snapshots).
    interval: float
    #: When a snapshot becomes due (None: no backup yet, due now).
    due_at: datetime | None

    @property
    def due(self) -> bool:
        """Changed, and the newest good backup is at least one interval old."""
        return self.changed and (self.due_at is None or self.due_at <= self.checked_at)

    @property
    def size(self) -> int:
        """Bytes of the database and its -wal: what a snapshot has to read."""
        wal = self.signature.wal.size if self.signature.wal else 0
        return self.signature.database.size + wal


@dataclass(frozen=True)
class TriggerResult:
    """The outcome of :func:`after_write`, with the backup taken (if any)."""

    outcome: Outcome
    detail: str = ""
    backup_id: str | None = None


def effective_interval(settings: Settings, newest: BackupMetadata | None) -> float:
    """The larger of the setting and :data:`COST_FACTOR` times the newest backup's duration.

    The default (one second) is for the page store, where a snapshot stores only the pages
    that changed: with ``BACKUPS_SNAPSHOT_AFTER_WRITE`` unset, a folder whose newest backup is
    in format 1 (a whole compressed copy each time) waits :data:`FILES_DEFAULT_INTERVAL`."""
    return interval_and_reason(settings, newest)[0]


def interval_and_reason(settings: Settings, newest: BackupMetadata | None) -> tuple[float, str]:
    """:func:`effective_interval`, and why it is longer than the setting: ``cost`` (20x the
    newest backup's duration), ``files`` (format 1's default), or ``""`` (it is not)."""
    base = float(settings.snapshot_after_write or 0)
    interval, reason = base, ""
    if (
        not settings.snapshot_after_write_set
        and newest is not None
        and newest.format_version == FILES.version
        and interval < FILES_DEFAULT_INTERVAL
    ):
        interval, reason = FILES_DEFAULT_INTERVAL, "files"
    last = newest.durations.get("total", 0.0) if newest is not None else 0.0
    if COST_FACTOR * last > interval:
        interval, reason = COST_FACTOR * last, "cost"
    return interval, reason


def newest_good_metadata(store: BackupStore, *, cached: bool = False) -> BackupMetadata | None:
    """The newest verified, regular backup's metadata, reading as few files as possible.

    Ids sort by time, so the newest is found with a folder listing and one small JSON file
    (a full :meth:`BackupStore.list` reads every backup's metadata). ``cached``: reuse the
    last answer while no backup folder's modification time moved (every backup, deletion and
    metadata rewrite renames a file into the folder), so a request costs a few ``stat()``s.
    """
    if not cached:
        return _newest_good_metadata(store)
    try:
        key = tuple((str(path), os.stat(path).st_mtime_ns) for path in store.locations.values())
    except OSError:
        return _newest_good_metadata(store)
    hit = _newest_cache.get(key[0][0])
    if hit is not None and hit[0] == key:
        return hit[1]
    found = _newest_good_metadata(store)
    _newest_cache[key[0][0]] = (key, found)
    return found


def _newest_good_metadata(store: BackupStore) -> BackupMetadata | None:
    for backup_id in store.ids()[:SCAN_LIMIT]:
        for location in store.locations:
            try:
                meta = store.read_metadata(location, backup_id)
            except (BackupNotFound, MetadataError, StorageError):
                continue
            if meta.kind != "pre-restore" and meta.verification.ok:
                return meta
            break
    return None


def evaluate(
    settings: Settings,
    *,
    now: datetime | None = None,
    when_unsure: bool = True,
    cached: bool = False,
) -> Check:
    """Look (``stat()`` and one metadata file) without opening the database; ``cached``: see
    :func:`newest_good_metadata` (only for the one decision under way in this process).

    Raises :class:`StorageError` when the backup folder cannot be listed, ``OSError`` when the
    database cannot be looked at.
    """
    now = now or datetime.now(timezone.utc)
    signature = source_signature(settings.database)
    newest = newest_good_metadata(BackupStore(settings), cached=cached)
    recorded = newest.source.signature if newest is not None else None
    changed = changed_since(recorded, signature, when_unsure=when_unsure)
    interval = effective_interval(settings, newest)
    due_at = None
    if newest is not None and newest.created_at <= now + CLOCK_SKEW:
        # A backup dated in the future means the clock went back: due now.
        due_at = newest.created_at + timedelta(seconds=interval)
    return Check(now, signature, newest, changed, interval, due_at)


def _runs_in_process(settings: Settings, check: Check) -> bool:
    last = check.newest.durations.get("total", 0.0) if check.newest is not None else 0.0
    return (
        check.size <= IN_PROCESS_MAX_BYTES
        and last <= IN_PROCESS_MAX_SECONDS
        # An offsite upload right after would hold the web worker for a network round trip.
        and settings.offsite is None
    )


def decision_lock(
    settings: Settings, *, timeout: float = DECISION_WAIT
) -> contextlib.AbstractContextManager[None]:
    """The short lock around deciding what to do; raises :class:`LockedError` when busy."""
    return folder_lock(
        settings, DECISION_LOCK, timeout=timeout, busy="another automatic snapshot is deciding"
    )


# -- the trigger (in the web process) ----------------------------------------------------------


def after_write(
    settings: Settings, values: Mapping[str, Any], *, trigger: str = "web"
) -> TriggerResult:
    """Snapshot if due, after a request that may have written. Called after the response.

    ``values`` are the lower-case core settings a worker process rebuilds :class:`Settings`
    from. Returns what happened; a failed snapshot is also recorded in the status file.
    Raises only on trouble outside the snapshot (an unreadable backup folder); the web face
    logs that and carries on.
    """
    if settings.snapshot_after_write is None:
        return TriggerResult(Outcome.OFF)
    key = str(settings.state_dir)
    with _flags:
        if key in _busy:
            # Another request of this process is deciding; it decides once more for us.
            _missed.add(key)
            return TriggerResult(Outcome.BUSY, "another request of this process is checking")
        _busy.add(key)
    try:
        while True:
            result = _decide(settings, values, trigger)
            with _flags:
                if key not in _missed:
                    _busy.discard(key)
                    return result
                _missed.discard(key)
    except BaseException:
        with _flags:
            _busy.discard(key)
            _missed.discard(key)
        raise


def _decide(settings: Settings, values: Mapping[str, Any], trigger: str) -> TriggerResult:
    # The common case on a busy day, without any lock: nothing new, or a waiting worker that
    # has not looked yet and so will see this write when it does.
    quick = evaluate(settings, cached=True)
    if not quick.changed:
        return TriggerResult(Outcome.UNCHANGED)
    waiting = _waiting_until.get(str(settings.state_dir))
    if not quick.due and waiting is not None and quick.checked_at < waiting:
        return TriggerResult(Outcome.WAITING, f"a worker checks at {utc_iso(waiting)}")
    try:
        with decision_lock(settings):
            check = evaluate(settings)
            if not check.changed:
                return TriggerResult(Outcome.UNCHANGED)
            if not check.due or not _runs_in_process(settings, check):
                return _ensure_worker(settings, values, check)
    except LockedError as exc:
        return TriggerResult(Outcome.BUSY, str(exc))
    result = _take_in_process(settings, trigger)
    if result.outcome in (Outcome.TAKEN, Outcome.BUSY):
        # Writes that landed during the snapshot (or while someone else held the lock) are
        # saved by a waiting worker, since no later request may come to trigger one.
        # Busy: the decision holding the lock sees the change itself.
        with contextlib.suppress(LockedError), decision_lock(settings):
            again = evaluate(settings)
            if again.changed:
                _ensure_worker(settings, values, again)
    return result


def _take_in_process(settings: Settings, trigger: str) -> TriggerResult:
    try:
        with operation_lock(settings, timeout=0):
            check = evaluate(settings)  # someone may have backed up since the decision
            if not check.due:
                return TriggerResult(Outcome.UNCHANGED, "backed up meanwhile")
            return _snapshot(settings, trigger=trigger, where="in-process")
    except LockedError as exc:
        return TriggerResult(Outcome.BUSY, str(exc))


def _snapshot(settings: Settings, *, trigger: str, where: str) -> TriggerResult:
    """Take one ``auto`` backup (the caller holds the operation lock) and record how it went."""
    started = time.monotonic()
    try:
        result = create_backup(
            settings,
            kind="auto",
            trigger=trigger,
            lock=False,
            # Never inside the host app: a descriptor it closes would drop the app's locks.
            raw_reads=where != "in-process",
        )
    except BackupError as exc:
        logger.error("automatic snapshot failed: %s", exc)
        record(settings, ok=False, where=where, seconds=time.monotonic() - started, error=str(exc))
        return TriggerResult(Outcome.FAILED, str(exc))
    meta = result.metadata
    record(settings, ok=True, where=where, seconds=time.monotonic() - started, backup=meta.id)
    logger.info("automatic snapshot %s taken %s", meta.id, where)
    return TriggerResult(Outcome.TAKEN, "; ".join(result.warnings), meta.id)


def record(
    settings: Settings,
    *,
    ok: bool,
    where: str,
    seconds: float,
    backup: str | None = None,
    error: str | None = None,
) -> None:
    """Remember the last automatic snapshot in the status file (for health and the pages)."""
    try:
        update_status(
            settings,
            **{
                STATUS_KEY: {
                    "at": utc_iso(datetime.now(timezone.utc)),
                    "ok": ok,
                    "where": where,
                    "seconds": round(seconds, 4),
                    "backup": backup,
                    "error": error,
                }
            },
        )
    except BackupError as exc:
        logger.error("could not write the status file: %s", exc)


def last_auto(settings: Settings) -> dict[str, Any] | None:
    """What :func:`record` last wrote, or None."""
    value = read_status(settings).get(STATUS_KEY)
    return value if isinstance(value, dict) else None


# -- the waiting worker --------------------------------------------------------------------------


def _pending_path(settings: Settings) -> Path:
    return settings.state_dir / PENDING_FILE


def _pending(settings: Settings) -> tuple[jobs.Job, datetime | None] | None:
    """The live waiting worker's job and when it looks next (None: now), if there is one."""
    try:
        document = json.loads(_pending_path(settings).read_text(encoding="utf-8"))
        job = jobs.read_job(settings, str(document["job"]))
        until = document.get("until")
        wake = None if until is None else parse_utc(until, "until")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, BackupError):
        return None
    return None if job.finished else (job, wake)


def _set_pending(settings: Settings, job_id: str, until: datetime | None) -> None:
    """Record the waiting worker, and until when it has not looked yet: it sees every write
    made before then (the caller holds the decision lock)."""
    document = {"job": job_id, "until": None if until is None else utc_iso(until)}
    atomic_write_bytes(_pending_path(settings), json.dumps(document).encode())
    _remember_wait(settings, until)


def _remember_wait(settings: Settings, until: datetime | None) -> None:
    if until is None:
        _waiting_until.pop(str(settings.state_dir), None)
    else:
        _waiting_until[str(settings.state_dir)] = until


def _ensure_worker(settings: Settings, values: Mapping[str, Any], check: Check) -> TriggerResult:
    """Make sure a worker will snapshot once due (the caller holds the decision lock)."""
    pending = _pending(settings)
    if pending is not None:
        _remember_wait(settings, pending[1])
        return TriggerResult(Outcome.WAITING, f"worker {pending[0].id} will check again")
    wake = None if check.due else (check.due_at or check.checked_at)
    params = {} if wake is None else {"not_before": utc_iso(wake)}
    try:
        job = jobs.start_job(settings, values, action="auto", actor="automatic", params=params)
    except LockedError as exc:
        return TriggerResult(Outcome.BUSY, str(exc))
    _set_pending(settings, job.id, wake)
    if wake is None:
        return TriggerResult(Outcome.HANDED_OFF, f"worker {job.id} takes it now")
    return TriggerResult(Outcome.WAITING, f"worker {job.id} checks at {params['not_before']}")


#: Called with (stage, done, total) while the worker waits and snapshots.
Progress = Callable[[str, int, int], None]


def run_worker(
    settings: Settings,
    job_id: str,
    *,
    not_before: datetime | None,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str, dict[str, Any]]:
    """The ``auto`` job: wait until due, snapshot while anything is unsaved, then stop.

    Returns a message and the ids taken. Offsite copies of small snapshots go at once.
    """
    taken: list[str] = []
    failures: list[str] = []
    wake = not_before
    for _ in range(MAX_ROUNDS):
        if wake is not None:
            _wait_until(wake, progress, sleep)
        try:
            with decision_lock(settings, timeout=settings.lock_timeout + DECISION_WAIT):
                check = evaluate(settings)
                if not check.changed:
                    _clear_pending(settings, job_id)
                    break
                wake = None if check.due else check.due_at
                _set_pending(settings, job_id, wake)
        except LockedError:
            wake = datetime.now(timezone.utc) + timedelta(seconds=1)
            continue
        if wake is not None:
            continue
        try:
            with operation_lock(settings):
                outcome = _snapshot_and_upload(settings, progress)
        except LockedError:
            # Another backup, restore or prune: look again once it is over.
            wake = datetime.now(timezone.utc) + timedelta(seconds=settings.lock_timeout or 1)
            continue
        if outcome.backup_id is not None:
            taken.append(outcome.backup_id)
        elif outcome.outcome == Outcome.FAILED:
            failures.append(outcome.detail)
            with decision_lock(settings, timeout=settings.lock_timeout + DECISION_WAIT):
                _clear_pending(settings, job_id)
            break
        wake = None
    else:
        with decision_lock(settings, timeout=settings.lock_timeout + DECISION_WAIT):
            _clear_pending(settings, job_id)
    if failures:
        raise BackupError(f"automatic snapshot failed: {failures[0]}")
    if not taken:
        return "nothing unsaved: no snapshot needed", {"taken": []}
    return f"automatic snapshot {', '.join(taken)} taken", {"taken": taken}


def _snapshot_and_upload(settings: Settings, progress: Progress | None) -> TriggerResult:
    check = evaluate(settings)  # re-check under the operation lock
    if not check.due:
        return TriggerResult(Outcome.UNCHANGED, "backed up meanwhile")
    if progress is not None:
        progress("snapshot", 0, 1)
    result = _snapshot(settings, trigger="web:auto", where="worker")
    if result.backup_id is not None and settings.offsite is not None:
        meta = BackupStore(settings).read_metadata("primary", result.backup_id)
        if meta.stored_size <= OFFSITE_RIGHT_AWAY_BYTES:
            sync = sync_offsite(settings, verify_count=0)
            for warning in sync.warnings():
                logger.warning("%s", warning)
    return result


def _clear_pending(settings: Settings, job_id: str) -> None:
    """Forget the waiting worker (the caller holds the decision lock), if it is this one."""
    try:
        document = json.loads(_pending_path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(document, dict) and document.get("job") == job_id:
        remove_quietly(_pending_path(settings))


def _wait_until(wake: datetime, progress: Progress | None, sleep: Callable[[float], None]) -> None:
    while True:
        left = (wake - datetime.now(timezone.utc)).total_seconds()
        if left <= 0:
            return
        if progress is not None:
            progress(f"waiting until {utc_iso(wake)}", 0, 1)
        sleep(min(left, 5.0))


def parse_not_before(params: Mapping[str, str]) -> datetime | None:
    """The ``not_before`` job parameter; raises :class:`MetadataError` when malformed."""
    value = params.get("not_before")
    return None if value is None else parse_utc(value, "not_before")

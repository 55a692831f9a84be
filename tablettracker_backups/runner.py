"""``run``: everything a scheduled task needs, idempotent and safe to run twice at once.

Back up if one is due, re-verify the least recently verified backup, prune (only once the
newest backup has verified), check health, and remember that the run happened. A missed run is
harmless: the next one simply finds a backup due.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from tablettracker_backups.backup import (
    BackupResult,
    cleanup_debris,
    create_backup,
    prepare_locations,
)
from tablettracker_backups.changes import changed_since, source_signature
from tablettracker_backups.errors import BackupError
from tablettracker_backups.health import HealthReport, check_health, save_report
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import utc_iso
from tablettracker_backups.offsite.sync import SyncResult, sync_offsite
from tablettracker_backups.prune import PruneResult, prune
from tablettracker_backups.retention import CLOCK_SKEW
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import check_sqlite_file
from tablettracker_backups.status import record_run
from tablettracker_backups.store import BackupStore, newest_good
from tablettracker_backups.verify import VerifyResult, verify_backup

logger = logging.getLogger(__name__)

#: A run this close to the interval counts as due, so a daily task at a fixed time never skips.
DUE_FRACTION = 0.9


@dataclass(frozen=True)
class RunResult:
    """What one ``run`` did."""

    started_at: datetime
    backup: BackupResult | None
    skipped_reason: str | None
    reverified: VerifyResult | None
    pruned: PruneResult | None
    health: HealthReport
    error: str | None = None
    warnings: tuple[str, ...] = field(default=())
    #: The offsite sync's outcome; ``None`` when no offsite store is configured.
    offsite: SyncResult | None = None

    @property
    def exit_code(self) -> int:
        """2 if the run failed or health is critical, 1 on a warning, else 0."""
        if self.error is not None:
            return 2
        return max(self.health.exit_code, 1 if self.warnings else 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``run --json`` and the scheduled-task endpoint)."""
        return {
            "ok": self.error is None,
            "exit_code": self.exit_code,
            "started_at": utc_iso(self.started_at),
            "backup": (
                {
                    "id": self.backup.metadata.id,
                    "size": self.backup.metadata.stored_size,
                    "locations": list(self.backup.locations),
                }
                if self.backup
                else None
            ),
            "skipped_reason": self.skipped_reason,
            "reverified": self.reverified.to_dict() if self.reverified else None,
            "pruned": list(self.pruned.deleted) if self.pruned else [],
            "health": self.health.to_dict(),
            "error": self.error,
            "warnings": list(self.warnings),
            "offsite": self.offsite.to_dict() if self.offsite else None,
        }


def backup_due(store: BackupStore, now: datetime) -> str | None:
    """``None`` if a backup is due now, else why not.

    Due when the newest good backup is an interval old; with write-triggered snapshots on, also
    when the database changed since it (a write the web trigger never saw, such as a console
    script's), so the next run catches it whatever the interval.
    """
    interval = timedelta(seconds=store.settings.interval)
    info = newest_good(store.list())
    if info is None:
        return None
    age = now - info.created_at
    if age < -CLOCK_SKEW:
        return None  # dated in the future: the clock went back; take a fresh one
    if age >= interval * DUE_FRACTION:
        return None
    if store.settings.snapshot_after_write is not None and info.metadata is not None:
        try:
            current = source_signature(store.settings.database)
        except OSError:
            current = None  # the backup step reports a missing database properly
        # Not sure (a same-tick write on a coarse clock) counts as unchanged here: the
        # interval still catches it, and every run would otherwise back up.
        if current is not None and changed_since(
            info.metadata.source.signature, current, when_unsure=False
        ):
            return None
    return f"newest verified backup {info.id} is only {int(age.total_seconds())}s old"


def _least_recently_verified(store: BackupStore, skip: str | None) -> str | None:
    infos = [i for i in store.list() if i.metadata is not None and i.id != skip]
    if not infos:
        return None
    oldest = min(infos, key=lambda i: i.metadata.verification.verified_at)  # type: ignore[union-attr]
    return oldest.id


def run(
    settings: Settings,
    *,
    force: bool = False,
    trigger: str = "scheduled",
    reverify: bool = True,
) -> RunResult:
    """Do one scheduled run. Raises only :class:`LockedError` (another operation is running);
    every other failure is reported in the result, and recorded for ``health``."""
    started = datetime.now(timezone.utc)
    if not settings.state_dir.is_dir():
        # Nowhere to record a failure yet: refuse a wrong path before creating folders for it.
        check_sqlite_file(settings.database)
    prepare_locations(settings)
    store = BackupStore(settings)
    backup: BackupResult | None = None
    skipped: str | None = None
    reverified: VerifyResult | None = None
    pruned: PruneResult | None = None
    error: str | None = None
    warnings: list[str] = []
    offsite: SyncResult | None = None
    with operation_lock(settings):
        try:
            # Inside the try, so a missing or replaced database is a recorded failed run that
            # health reports as critical, not an exception that leaves no trace for it.
            check_sqlite_file(settings.database)
            cleanup_debris(settings)
            # "Now" is taken after the lock: a run that waited for another run's backup must
            # see that backup as just taken, not as dated in its future (which reads as a
            # clock that went back and would take a second, redundant backup).
            skipped = None if force else backup_due(store, datetime.now(timezone.utc))
            if skipped is None:
                backup = create_backup(settings, kind="scheduled", trigger=trigger, lock=False)
                warnings += backup.warnings
            if reverify:
                target = _least_recently_verified(store, backup.metadata.id if backup else None)
                if target is not None:
                    reverified = verify_backup(store, target)
                    if not reverified.ok:
                        warnings += [
                            f"re-verify of {target}: {c.location}: {c.error}"
                            for c in reverified.copies
                            if not c.ok
                        ]
        except BackupError as exc:
            error = str(exc)
            logger.error("scheduled run failed: %s", exc)
        if settings.s3 is not None:
            # After the local backup and before local pruning, so a backup is uploaded before
            # local retention may remove it. Offsite trouble is a warning: the local backup
            # is safe, and the next run retries.
            offsite = sync_offsite(settings, verify_count=None if reverify else 0)
            warnings += offsite.warnings()
        if error is None:
            try:
                pruned = prune(store, protect=[backup.metadata.id] if backup else [])
            except BackupError as exc:
                error = str(exc)
                logger.error("scheduled run failed: %s", exc)
        try:
            record_run(
                settings,
                at=started,
                result={
                    "ok": error is None,
                    "error": error,
                    "backup": backup.metadata.id if backup else None,
                    "offsite": offsite.to_dict() if offsite else None,
                },
            )
        except BackupError as exc:
            logger.error("could not write the status file: %s", exc)
        report = check_health(settings)
        try:
            save_report(settings, report)
        except BackupError as exc:
            logger.error("could not write the status file: %s", exc)
        result = RunResult(
            started, backup, skipped, reverified, pruned, report, error, tuple(warnings), offsite
        )
    return result

"""``run``: everything a scheduled task needs, idempotent and safe to run twice at once.

Back up if one is due, re-verify the least recently verified backup, prune (only once the
newest backup has verified), check health, and remember that the run happened. A missed run is
harmless: the next one simply finds a backup due.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from tablettracker_backups import notify, weekly
from tablettracker_backups.backup import (
    BackupResult,
    backup_events,
    cleanup_debris,
    create_backup,
    prepare_locations,
)
from tablettracker_backups.changes import changed_since, source_signature
from tablettracker_backups.coordinated import GroupBackupResult, create_group_backup
from tablettracker_backups.display import human_size
from tablettracker_backups.encryption import Identity
from tablettracker_backups.errors import BackupError, LockedError
from tablettracker_backups.group_restore import finish_group_restores
from tablettracker_backups.heal import Repair, heal_copies
from tablettracker_backups.health import HealthReport, check_health, save_report
from tablettracker_backups.identity import claim_folders
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import utc_iso
from tablettracker_backups.notifiers import Budget
from tablettracker_backups.offsite.sync import SyncResult, sync_offsite
from tablettracker_backups.pings import PING_TIMEOUT, ping
from tablettracker_backups.prune import PruneResult, prune
from tablettracker_backups.retention import CLOCK_SKEW
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import check_sqlite_file
from tablettracker_backups.status import record_run
from tablettracker_backups.store import BackupStore, newest_good
from tablettracker_backups.verify import VerifyResult, failure_event, verify_backup

logger = logging.getLogger(__name__)

#: A run this close to the interval counts as due, so a daily task at a fixed time never skips.
DUE_FRACTION = 0.9
#: The exit code of a run that found another operation holding the lock (as the CLI exits).
LOCKED_EXIT_CODE = 3


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
    #: Copies rebuilt from a sound copy in another folder or offsite (and any that could not be).
    repaired: tuple[Repair, ...] = ()

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
                    "anomalies": [a.to_dict() for a in self.backup.anomalies],
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
            "repaired": [r.to_dict() for r in self.repaired],
        }

    def audit_message(self) -> str:
        """One line for the audit log: what the run did (every face writes the same)."""
        if self.error:
            return self.error
        parts = [f"backed up {self.backup.metadata.id}" if self.backup else "no backup due"]
        if self.reverified:
            parts.append(
                f"re-verified {self.reverified.id}: {'ok' if self.reverified.ok else 'DAMAGED'}"
            )
        if self.pruned and self.pruned.deleted:
            labelled = len(self.pruned.labels)
            parts.append(
                f"pruned {len(self.pruned.deleted)}"
                + (f" ({labelled} labelled)" if labelled else "")
            )
        healed = [r for r in self.repaired if r.ok]
        if healed:
            parts.append(f"rebuilt {len(healed)} cop{'y' if len(healed) == 1 else 'ies'}")
        if self.offsite is not None and self.offsite.uploaded:
            parts.append(f"uploaded {len(self.offsite.uploaded)} offsite")
        return "; ".join(parts)

    def audit_details(self) -> dict[str, Any]:
        """Everything the run changed, for the audit log: the backup taken and its anomalies,
        the backups pruned (labels too), the copies rebuilt, what went offsite."""
        details: dict[str, Any] = {}
        if self.backup:
            details["backup_id"] = self.backup.metadata.id
            details["anomalies"] = [a.message for a in self.backup.anomalies]
        elif self.skipped_reason:
            details["skipped"] = self.skipped_reason
        if self.pruned:
            details.update(self.pruned.audit_details())
        details["rebuilt"] = [r.describe() for r in self.repaired]
        if self.offsite is not None:
            details["uploaded"] = [u.id for u in self.offsite.uploaded]
            details["offsite_deleted"] = list(self.offsite.pruned)
        details["warnings"] = list(self.warnings)
        return details

    def summary(self) -> str:
        """A few lines of plain text: what the run did and the health verdict (the body of the
        dead-man finish ping)."""
        lines = [
            f"tablettracker-backups run started {utc_iso(self.started_at)}: exit {self.exit_code}"
        ]
        if self.error:
            lines.append(f"FAILED: {self.error}")
        if self.backup:
            meta = self.backup.metadata
            lines.append(f"backed up {meta.id} ({human_size(meta.stored_size)})")
            lines += [f"anomaly: {a.message}" for a in self.backup.anomalies]
        elif self.skipped_reason:
            lines.append(f"no backup due: {self.skipped_reason}")
        if self.reverified:
            lines.append(
                f"re-verified {self.reverified.id}: {'ok' if self.reverified.ok else 'PROBLEM'}"
            )
        if self.pruned and self.pruned.deleted:
            lines.append(f"pruned {len(self.pruned.deleted)} backup(s)")
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append(f"health: {self.health.status}")
        lines += [f"  [{f.level}] {f.message}" for f in self.health.findings]
        return "\n".join(lines)


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
    return f"newest good backup {info.id} is only {int(age.total_seconds())}s old"


def _least_recently_verified(store: BackupStore, skip: str | None) -> str | None:
    """What the rolling drill checks next: a snapshot not checked yet first (the newest:
    ``latest`` may be it), else the one verified longest ago."""
    infos = [i for i in store.list() if i.metadata is not None and i.id != skip]
    if not infos:
        return None
    unchecked = [i for i in infos if i.verified and not i.checked]
    if unchecked:
        return unchecked[0].id
    oldest = min(infos, key=lambda i: i.metadata.verification.verified_at)  # type: ignore[union-attr]
    return oldest.id


def run(
    settings: Settings,
    *,
    force: bool = False,
    trigger: str = "scheduled",
    reverify: bool = True,
    identity: Identity | None = None,
    pings: bool = True,
    taken: BackupResult | None = None,
) -> RunResult:
    """Do one scheduled run. Raises only :class:`LockedError` (another operation is running)
    or, before any backup folder exists, the error that stops it from being created; every
    other failure is reported in the result, and recorded for ``health``. ``identity``, given
    by a person for one run, opens encrypted copies: the re-verify checks them in full and a
    lost local copy is rebuilt from a sealed offsite copy.

    Around the run: dead-man pings (``BACKUPS_PING_URL``) at the start and the end, and after
    the lock is released one message to the owner with what changed (and, with
    ``BACKUPS_NOTIFY_WEEKLY``, the weekly report when one is due). Together they take at most
    :data:`notify.BUDGET_SECONDS`, and never change the outcome.

    ``taken`` is this database's member of the coordinated snapshot a site's run just took:
    it is the run's backup (no other is taken), and prune keeps it.
    """
    budget = Budget(notify.BUDGET_SECONDS)
    if pings:
        ping(settings, "start", budget=budget)
    try:
        result = _run_locked(
            settings,
            force=force,
            trigger=trigger,
            reverify=reverify,
            identity=identity,
            taken=taken,
        )
    except BackupError as exc:
        code = LOCKED_EXIT_CODE if isinstance(exc, LockedError) else 2
        if pings:
            ping(settings, str(code), f"run did not start: {exc}", budget=budget)
        raise
    # Keep time for the finish ping: it is what tells the dead-man service the run ended.
    reserve = PING_TIMEOUT if settings.ping_url and pings else 0.0
    notify.observe(
        settings,
        result.health.findings,
        extra=_events(settings, result),
        budget=Budget(max(0.0, budget.left() - reserve)),
    )
    if settings.notify_weekly:
        try:
            backups = BackupStore(settings).list()
        except BackupError:
            backups = []
        weekly.send_if_due(
            settings,
            backups,
            result.health.status,
            budget=Budget(max(0.0, budget.left() - reserve)),
        )
    if pings:
        ping(
            settings,
            str(result.exit_code) if result.exit_code else "",
            result.summary(),
            budget=budget,
        )
    return result


@dataclass(frozen=True)
class DatabaseRun:
    """One database's part of a site's run: its result, or why it did not run."""

    settings: Settings
    result: RunResult | None
    #: Why the run did not start (another operation held the lock, no database file ...).
    error: str | None = None
    #: 3 when another operation held the lock, else 2; only without a result.
    error_code: int = 2

    @property
    def name(self) -> str:
        """The database's name in the site."""
        return self.settings.database_name

    @property
    def exit_code(self) -> int:
        """The run's exit code, or the one it did not start with."""
        return self.result.exit_code if self.result is not None else self.error_code

    def to_dict(self) -> dict[str, Any]:
        """The run's JSON (as for a site of one), or ``ok``, ``error`` and ``exit_code``."""
        if self.result is not None:
            return self.result.to_dict()
        return {"ok": False, "error": self.error, "exit_code": self.error_code}


#: Exit codes from best to worst: busy (3) is worse than a warning, not than a failure.
SEVERITY = (0, 1, LOCKED_EXIT_CODE, 2)


def worst_exit_code(codes: list[int]) -> int:
    """The worst of ``codes`` by :data:`SEVERITY` (0 for none)."""
    return max(codes, key=lambda c: SEVERITY.index(c) if c in SEVERITY else 99, default=0)


@dataclass(frozen=True)
class SiteRunResult:
    """What one ``run`` did for each database of a site, in the site's order."""

    runs: tuple[DatabaseRun, ...]
    #: The coordinated snapshot taken (``BACKUPS_COORDINATED``), if one was due.
    group: GroupBackupResult | None = None
    #: Why the coordinated snapshot that was due failed (each database then backed up alone).
    group_error: str | None = None
    #: What finishing an interrupted group restore did (or why it could not yet).
    group_restore: str | None = None

    @property
    def exit_code(self) -> int:
        """The worst database's exit code (2 when a coordinated snapshot failed)."""
        return worst_exit_code([r.exit_code for r in self.runs] + ([2] if self.group_error else []))

    def to_dict(self) -> dict[str, Any]:
        """``{"databases": {name: run JSON}, "exit_code": N}`` (``run --json`` for a site),
        with ``group`` (the coordinated snapshot's id, or null) and ``group_error``."""
        return {
            "databases": {r.name: r.to_dict() for r in self.runs},
            "exit_code": self.exit_code,
            "group": self.group.group_id if self.group else None,
            "group_error": self.group_error,
            "group_restore": self.group_restore,
        }


def _coordinated_snapshot(
    databases: Sequence[Settings], *, force: bool, trigger: str
) -> tuple[GroupBackupResult | None, str | None]:
    """With ``BACKUPS_COORDINATED``, one snapshot of every database that has it on, taken
    together when any of them is due: the snapshot and None, (None, None) when none is due
    or fewer than two take part, or (None, why) when it failed."""
    members = [s for s in databases if s.coordinated]
    if len(members) < 2:
        return None, None
    now = datetime.now(timezone.utc)
    due = force
    for settings in members:
        try:
            due = due or backup_due(BackupStore(settings), now) is None
        except BackupError:
            due = True  # the database's own run says what is wrong with its folder
    if not due:
        return None, None
    try:
        group = create_group_backup(members, kind="scheduled", trigger=trigger, notify_owner=False)
    except BackupError as exc:
        logger.error("the coordinated snapshot failed: %s", exc)
        return None, f"the coordinated snapshot failed: {exc}"
    return group, None


def run_site(
    databases: Sequence[Settings],
    *,
    force: bool = False,
    trigger: str = "scheduled",
    identity: Identity | None = None,
) -> SiteRunResult:
    """Run every database of a site, one after the other, each under its own lock. One that
    fails, or cannot start, never stops the others: its error is in its part of the result.

    First, a group restore that was interrupted is finished or rolled back
    (:func:`.group_restore.finish_group_restores`). Then, with ``BACKUPS_COORDINATED`` on
    for two or more databases and any of them due, one coordinated snapshot of them is taken
    (:mod:`.coordinated`): each member is its database's backup of this run. If it fails,
    each database backs up alone as usual, and the failure makes the exit code 2.

    A dead-man ping URL shared by several databases is pinged once for them: ``start``
    before the first, and the worst of their exit codes after the last, so one database's
    success never hides another's failure.
    """
    budget = Budget(notify.BUDGET_SECONDS)
    by_url: dict[str, list[Settings]] = {}
    for settings in databases:
        if settings.ping_url:
            by_url.setdefault(settings.ping_url, []).append(settings)
    for members in by_url.values():
        ping(members[0], "start", budget=budget)
    settled = finish_group_restores(databases)
    group, group_error = _coordinated_snapshot(databases, force=force, trigger=trigger)
    taken = dict(group.members) if group is not None else {}
    runs: list[DatabaseRun] = []
    for settings in databases:
        try:
            result = run(
                settings,
                force=force,
                trigger=trigger,
                identity=identity,
                pings=False,
                taken=taken.get(settings.database_name),
            )
        except LockedError as exc:
            runs.append(DatabaseRun(settings, None, str(exc), LOCKED_EXIT_CODE))
        except BackupError as exc:
            logger.error("run of database %s did not start: %s", settings.database_name, exc)
            runs.append(DatabaseRun(settings, None, str(exc)))
        except Exception as exc:
            # A bug or an unforeseen OS error in one database's run must not cost the others
            # theirs: logged with its traceback, reported as that database's failure.
            logger.exception("run of database %s failed", settings.database_name)
            runs.append(DatabaseRun(settings, None, f"{type(exc).__name__}: {exc}"))
        else:
            runs.append(DatabaseRun(settings, result))
    for members in by_url.values():
        names = {m.database_name for m in members}
        mine = [r for r in runs if r.name in names]
        code = worst_exit_code([r.exit_code for r in mine])
        body = "\n\n".join(
            f"[{r.name}] " + (r.result.summary() if r.result else f"did not start: {r.error}")
            for r in mine
        )
        ping(members[0], str(code) if code else "", body, budget=budget)
    return SiteRunResult(tuple(runs), group, group_error, settled)


@dataclass
class _Progress:
    """What a run has done so far; each step fills in its part."""

    started: datetime
    backup: BackupResult | None = None
    skipped: str | None = None
    reverified: VerifyResult | None = None
    pruned: PruneResult | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    offsite: SyncResult | None = None
    repaired: tuple[Repair, ...] = ()

    def fail(self, exc: BackupError) -> None:
        self.error = str(exc)
        logger.error("scheduled run failed: %s", exc)

    def result(self, report: HealthReport) -> RunResult:
        return RunResult(
            self.started,
            self.backup,
            self.skipped,
            self.reverified,
            self.pruned,
            report,
            self.error,
            tuple(self.warnings),
            self.offsite,
            self.repaired,
        )


def _run_locked(
    settings: Settings,
    *,
    force: bool,
    trigger: str,
    reverify: bool,
    identity: Identity | None = None,
    taken: BackupResult | None = None,
) -> RunResult:
    """The run itself: every step under the operation lock."""
    progress = _Progress(started=datetime.now(timezone.utc), backup=taken)
    if not settings.state_dir.is_dir():
        # Nowhere to record a failure yet: refuse a wrong path before creating folders for it.
        check_sqlite_file(settings.database)
    prepare_locations(settings)
    store = BackupStore(settings)
    with operation_lock(settings):
        _back_up_and_reverify(
            settings,
            store,
            progress,
            force=force,
            trigger=trigger,
            reverify=reverify,
            identity=identity,
        )
        if settings.offsite is not None:
            _sync_offsite(settings, progress, reverify=reverify, identity=identity)
        if progress.error is None:
            _prune(store, progress)
        _record(settings, progress)
        return progress.result(_check_health(settings))


def _back_up_and_reverify(
    settings: Settings,
    store: BackupStore,
    progress: _Progress,
    *,
    force: bool,
    trigger: str,
    reverify: bool,
    identity: Identity | None = None,
) -> None:
    """Back up if one is due, then fully re-check the least recently verified backup."""
    try:
        # Inside the try, so a missing or replaced database, or a folder of another database,
        # is a recorded failed run that health reports as critical, not an exception that
        # leaves no trace for it.
        check_sqlite_file(settings.database)
        claim_folders(settings)
        cleanup_debris(settings)
        # "Now" is taken after the lock: a run that waited for another run's backup must
        # see that backup as just taken, not as dated in its future (which reads as a
        # clock that went back and would take a second, redundant backup).
        if progress.backup is not None:
            # The site's coordinated snapshot is this run's backup.
            progress.warnings += progress.backup.warnings
        elif not force and (skipped := backup_due(store, datetime.now(timezone.utc))):
            progress.skipped = skipped
        else:
            progress.backup = create_backup(
                settings, kind="scheduled", trigger=trigger, lock=False, notify_owner=False
            )
            progress.warnings += progress.backup.warnings
        if reverify:
            new_id = progress.backup.metadata.id if progress.backup else None
            target = _least_recently_verified(store, new_id)
            if target is not None:
                progress.reverified = verify_backup(
                    store, target, identity=identity, notify_owner=False
                )
                progress.warnings += [
                    f"re-verify of {target}: {c.location}: {c.error}"
                    for c in progress.reverified.copies
                    if not c.ok
                ]
        # After the re-verify, so a copy it found damaged is rebuilt in the same run.
        progress.repaired = heal_copies(
            store, recheck=settings.health_checksum_count, identity=identity
        )
        progress.warnings += [r.describe() for r in progress.repaired if not r.ok]
    except BackupError as exc:
        progress.fail(exc)


def _sync_offsite(
    settings: Settings, progress: _Progress, *, reverify: bool, identity: Identity | None
) -> None:
    """Upload to the offsite store, after the local backup and before local pruning, so a
    backup is uploaded before local retention may remove it (and format 2's index nodes are
    still here for offsite collection). Offsite trouble is a warning: the local backup is
    safe, and the next run retries."""
    progress.offsite = sync_offsite(
        settings, verify_count=None if reverify else 0, identity=identity
    )
    progress.warnings += progress.offsite.warnings()


def _prune(store: BackupStore, progress: _Progress) -> None:
    """Apply retention, never deleting the backup just taken."""
    try:
        progress.pruned = prune(
            store, protect=[progress.backup.metadata.id] if progress.backup else []
        )
    except BackupError as exc:
        progress.fail(exc)


def _record(settings: Settings, progress: _Progress) -> None:
    """Remember that the run happened and how it ended (health reads it)."""
    try:
        record_run(
            settings,
            at=progress.started,
            result={
                "ok": progress.error is None,
                "error": progress.error,
                "backup": progress.backup.metadata.id if progress.backup else None,
                "offsite": progress.offsite.to_dict() if progress.offsite else None,
                "repaired": [r.to_dict() for r in progress.repaired],
            },
        )
    except BackupError as exc:
        logger.error("could not write the status file: %s", exc)


def _check_health(settings: Settings) -> HealthReport:
    """The health report after the run, saved for the pages and ``status``."""
    report = check_health(settings)
    try:
        save_report(settings, report)
    except BackupError as exc:
        logger.error("could not write the status file: %s", exc)
    return report


def _events(settings: Settings, result: RunResult) -> list[notify.Event]:
    """The run's one-off news for the owner; lasting conditions come from its health report."""
    events = backup_events(settings, result.backup) if result.backup else []
    if result.reverified is not None and not result.reverified.ok:
        events.append(failure_event(settings, result.reverified))
    return events

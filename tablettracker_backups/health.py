"""Health checks: is the data safe right now? Exit codes 0 ok, 1 warning, 2 critical.

Each check adds findings; the report's status is the worst of them. :func:`save_report` hands
the report to :mod:`tablettracker_backups.status`, which keeps the status file and alert log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tablettracker_backups import intent
from tablettracker_backups.autosnapshot import interval_and_reason, last_auto
from tablettracker_backups.changes import changed_since, source_signature
from tablettracker_backups.display import format_age, human_size, local_time
from tablettracker_backups.errors import BackupError, DatabaseError
from tablettracker_backups.evidence import open_warnings
from tablettracker_backups.footprint import Footprint, folder_bytes, measure
from tablettracker_backups.formats import FILES
from tablettracker_backups.fsutil import PROC_MOUNTS, filesystem_type
from tablettracker_backups.identity import check_folders
from tablettracker_backups.keys import EncryptionStatus, encryption_status
from tablettracker_backups.metadata import parse_utc, utc_iso
from tablettracker_backups.notify import command, notifier_problems
from tablettracker_backups.offsite.policy import OffsiteLag, offsite_lag
from tablettracker_backups.offsite.record import read_state
from tablettracker_backups.prune import current_plan
from tablettracker_backups.retention import (
    CLOCK_SKEW,
    RetentionPlan,
    candidates_from,
    plan_for_backups,
    plan_retention,
)
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import live_journal_mode, quick_check_live
from tablettracker_backups.states import CopyStatus, Level
from tablettracker_backups.status import read_status, write_status
from tablettracker_backups.store import BackupInfo, BackupStore, newest_good

logger = logging.getLogger(__name__)

#: Leeway on top of the interval before a late backup counts as missed (scheduling jitter).
GRACE = timedelta(minutes=15)


@dataclass(frozen=True)
class Finding:
    """One thing a health check noticed."""

    level: Level
    code: str
    message: str


@dataclass(frozen=True)
class HealthReport:
    """Everything health knows, and the verdict."""

    checked_at: datetime
    findings: tuple[Finding, ...]
    #: The newest regular backup, whatever its state.
    newest_id: str | None = None
    newest_at: datetime | None = None
    #: ``latest``: the newest good regular backup (faithful copy of undamaged data).
    newest_good_id: str | None = None
    newest_good_at: datetime | None = None
    #: The newest regular backup whose full data checks have run (see :mod:`.checks`).
    newest_checked_id: str | None = None
    newest_checked_at: datetime | None = None
    backup_count: int = 0
    slot_counts: dict[str, int] = field(default_factory=dict)
    disk: dict[str, dict[str, int]] = field(default_factory=dict)
    stored_bytes: int = 0
    #: The sizes of the newest backup: ``logical`` (its database), ``stored`` (a whole copy
    #: of it, shared objects included), ``added`` (what it wrote when taken), ``own`` (what
    #: only it holds); and ``next_backup_needs``, the free space the next backup needs.
    sizes: dict[str, int] = field(default_factory=dict)
    last_run_at: datetime | None = None
    next_run_due: datetime | None = None
    #: The offsite copy's standing (:meth:`OffsiteLag.to_dict`); empty when not configured.
    offsite: dict[str, Any] = field(default_factory=dict)
    #: Encryption and the keys backups need (:meth:`EncryptionStatus.to_dict`); empty when
    #: encryption is not configured and no backup is encrypted.
    encryption: dict[str, Any] = field(default_factory=dict)
    #: When the checks that read data (the live database's quick_check, the newest backups'
    #: SHA-256) last ran: ``checked_at`` for a full check, the saved report's time for a light
    #: one (:func:`check_health` with ``read_data=False``), None if they never ran.
    data_checked_at: datetime | None = None
    #: Recovery point and restore-point granularity (:func:`recovery_summary`).
    recovery: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> Level:
        """``ok``, ``warning`` or ``critical``: the worst finding."""
        return max((f.level for f in self.findings), key=lambda lv: lv.exit_code, default=Level.OK)

    @property
    def exit_code(self) -> int:
        """0 ok, 1 warning, 2 critical."""
        return self.status.exit_code

    def age(self, moment: datetime | None) -> timedelta | None:
        """How long before ``checked_at`` the moment was."""
        return None if moment is None else self.checked_at - moment

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``health --json``, the status file, the task endpoint)."""

        def iso(moment: datetime | None) -> str | None:
            return None if moment is None else utc_iso(moment)

        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "checked_at": iso(self.checked_at),
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "newest_backup": {"id": self.newest_id, "created_at": iso(self.newest_at)},
            "newest_good_backup": {
                "id": self.newest_good_id,
                "created_at": iso(self.newest_good_at),
            },
            # The name older scripts read; it means the same as newest_good_backup.
            "newest_verified_backup": {
                "id": self.newest_good_id,
                "created_at": iso(self.newest_good_at),
            },
            "newest_checked_backup": {
                "id": self.newest_checked_id,
                "created_at": iso(self.newest_checked_at),
            },
            "backup_count": self.backup_count,
            "slot_counts": self.slot_counts,
            "disk": self.disk,
            "stored_bytes": self.stored_bytes,
            "sizes": self.sizes or None,
            "last_run_at": iso(self.last_run_at),
            "next_run_due": iso(self.next_run_due),
            "offsite": self.offsite or None,
            "encryption": self.encryption or None,
            "recovery": self.recovery or None,
        }


#: Findings only a check that reads data can make; a light check repeats the saved ones.
DATA_CODES = frozenset({"database-unreadable", "database-corrupt", "checksum"})


def check_health(
    settings: Settings,
    *,
    now: datetime | None = None,
    extra_findings: tuple[Finding, ...] = (),
    store: BackupStore | None = None,
    read_data: bool = True,
) -> HealthReport:
    """Run every health check; never raises for a finding, only reports it.

    ``read_data=False`` is the light check for a page load: it reads no backup data and not
    the live database (a 1 GB database would mean reading a gigabyte per page view). The
    live database's quick_check and the newest backups' SHA-256 are then not redone; their
    findings are those of the last full check, saved by ``run`` or ``health``
    (:func:`save_report`), and ``data_checked_at`` says when that was. Everything else
    (ages, copies by size, disk, the schedule, offsite lag) is checked as usual. ``store`` may
    carry a listing cache.
    """
    now = now or datetime.now(timezone.utc)
    findings: list[Finding] = list(extra_findings)
    store = store or BackupStore(settings)
    interval = timedelta(seconds=settings.interval)
    status = read_status(settings)

    data_checked_at: datetime | None = now
    if read_data:
        findings += _live_database_findings(settings)
    else:
        data_checked_at, saved = _saved_data_findings(settings)
        findings += saved
    findings += _identity_findings(settings)
    findings += restore_findings(settings)
    listed = True
    try:
        backups = store.list()
    except BackupError as exc:
        findings.append(Finding(Level.CRITICAL, "backups-unreadable", str(exc)))
        backups = []
        listed = False
    # Unknown (metadata lost) counts as regular here: a backup exists, it is just not good.
    regular = [b for b in backups if b.kind != "pre-restore"]
    newest = regular[0] if regular else None
    good = newest_good(regular)
    findings += _freshness_findings(newest, good, now=now, interval=interval)
    # What the data checks found is known of checked snapshots only.
    checked = [b for b in regular if b.checked]
    findings += _source_findings(settings, checked, good)
    findings += _foreign_key_findings(checked)
    findings += _unchecked_findings(newest, checked[0] if checked else None, now, interval)
    findings += data_loss_findings(settings, backups if listed else None)
    failed = _failed_repairs(status)
    recent = backups[: settings.health_checksum_count]
    if read_data:
        findings += _checksum_findings(store, recent, failed)
    else:
        findings += _metadata_findings(recent)
    # Per listing, not per call: a page load with 1,000 backups must not walk them all.
    copy_findings, stored_bytes, newest_size = store.memo(
        ("health", tuple(sorted(failed.items()))),
        lambda: (
            _copy_findings(settings, backups, failed),
            _stored_bytes(store, backups),
            _newest_size(settings, backups, newest),
        ),
    )
    findings += copy_findings
    findings += network_wal_findings(settings, query=read_data)
    findings += _auto_findings(settings, newest)
    disk, disk_findings, needed = _disk(settings, newest, newest_size)
    findings += disk_findings
    first = regular[-1].created_at if regular else None
    last_run_at, schedule_findings = _schedule_findings(
        status,
        now=now,
        interval=interval,
        first_backup_at=first,
        setup=settings.command_line("init", where=False),
    )
    findings += schedule_findings
    findings += _backup_failure_findings(status)
    # The plan lists the folder again: with no listing, it is the plan for no backups (else
    # the error just reported would escape, and a health check must never raise for it).
    plan = current_plan(store, now=now) if listed else plan_for_backups(settings, [], now=now)
    offsite: dict[str, Any] = {}
    state = read_state(settings) if settings.offsite is not None else None
    if settings.offsite is not None:
        lag = offsite_lag(settings, backups, now=now, state=state)
        offsite = lag.to_dict()
        findings += _offsite_findings(lag, now)
    keys = encryption_status(settings, backups, state)
    findings += _encryption_findings(keys, now)
    # The owner cannot hear of any of the above while notifications fail.
    findings += [Finding(Level.WARNING, code, text) for code, text in notifier_problems(settings)]

    return HealthReport(
        checked_at=now,
        findings=tuple(findings),
        newest_id=newest.id if newest else None,
        newest_at=newest.created_at if newest else None,
        newest_good_id=good.id if good else None,
        newest_good_at=good.created_at if good else None,
        newest_checked_id=checked[0].id if checked else None,
        newest_checked_at=checked[0].created_at if checked else None,
        backup_count=len(backups),
        slot_counts=_count_slots(plan),
        disk=disk,
        stored_bytes=stored_bytes,
        sizes=_sizes(newest_size) | {"next_backup_needs": needed},
        last_run_at=last_run_at,
        next_run_due=None if last_run_at is None else last_run_at + interval,
        offsite=offsite,
        encryption=keys.to_dict() if keys.configured or keys.needs else {},
        data_checked_at=data_checked_at,
        recovery=recovery_summary(settings, backups, plan),
    )


def recovery_summary(
    settings: Settings, backups: list[BackupInfo], plan: RetentionPlan
) -> dict[str, Any]:
    """The recovery point achieved, and the restore-point granularity retention leaves.

    ``achieved_seconds`` is the age of the newest good backup at the moment of the latest
    write (0 when no write came after it): what a lost disk would cost right now. The latest
    write is the newest modification time of the database files (``stat()`` only).
    """
    newest = newest_good(backups)
    meta = newest.metadata if newest is not None else None
    interval, reason = interval_and_reason(settings, meta)
    summary: dict[str, Any] = {
        "snapshot_after_write": settings.snapshot_after_write,
        "effective_interval": interval if settings.snapshot_after_write else None,
        "interval_reason": reason if settings.snapshot_after_write else None,
        "last_auto": last_auto(settings),
        "latest_write_at": None,
        "unsaved_writes": None,
        "achieved_seconds": None,
        "recent": plan.recent.to_dict() if plan.recent is not None else None,
    }
    try:
        current = source_signature(settings.database)
    except OSError:
        return summary
    latest = datetime.fromtimestamp(current.latest_write_ns / 1e9, timezone.utc)
    summary["latest_write_at"] = utc_iso(latest)
    if newest is None or meta is None:
        return summary
    unsaved = changed_since(meta.source.signature, current, when_unsure=False)
    restored = _restored_unchanged(settings, backups, latest) if unsaved else None
    if restored is not None:
        # A restore rewrote the file (new times), but what it holds is that backup's data.
        unsaved = False
        summary["restored_from"] = restored
    summary["unsaved_writes"] = unsaved
    summary["achieved_seconds"] = (
        max(0.0, (latest - newest.created_at).total_seconds()) if unsaved else 0.0
    )
    return summary


def _restored_unchanged(
    settings: Settings, backups: list[BackupInfo], latest_write: datetime
) -> str | None:
    """The backup the live database was last restored from, when nothing was written since
    (the latest write is not after the restore noted itself) and that backup still exists."""
    noted = read_status(settings).get("last_restore")
    if not isinstance(noted, dict):
        return None
    try:
        at = parse_utc(noted.get("at"), "at")
    except BackupError:
        return None
    backup_id = noted.get("backup_id")
    if latest_write > at or not any(b.id == backup_id and b.good for b in backups):
        return None
    return str(backup_id)


def describe_recovery(recovery: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, sentence) pairs a person reads about :func:`recovery_summary`'s output: the
    recovery point achieved, the automatic snapshots, the restore points kept."""
    lines: list[tuple[str, str]] = []
    achieved = recovery.get("achieved_seconds")
    if achieved is None:
        lines.append(("Recovery point", "unknown (no good backup, or the database is missing)"))
    elif achieved == 0:
        restored = recovery.get("restored_from")
        lines.append(
            (
                "Recovery point",
                "every write so far is in a backup"
                + (f" (the database is as restored from backup {restored})" if restored else ""),
            )
        )
    else:
        lines.append(
            (
                "Recovery point",
                f"{format_age(timedelta(seconds=achieved))}: the latest write came that long "
                "after the newest good backup, and is not in a backup yet",
            )
        )
    every = recovery.get("snapshot_after_write")
    if not every:
        lines.append(("Automatic snapshots", "off (BACKUPS_SNAPSHOT_AFTER_WRITE=off)"))
    else:
        text = f"after web writes, at most every {format_age(timedelta(seconds=every))}"
        effective = recovery.get("effective_interval") or every
        if effective > every:
            why = (
                "backups here are whole copies (format 1)"
                if recovery.get("interval_reason") == "files"
                else "20x the last backup"
            )
            text += f" (now {format_age(timedelta(seconds=effective))}: {why})"
        last = recovery.get("last_auto")
        if isinstance(last, dict) and last.get("at"):
            outcome = "took" if last.get("ok") else "FAILED after"
            text += f"; the last {outcome} {last.get('seconds', 0):.2f} s ({last.get('where')})"
        lines.append(("Automatic snapshots", text))
    recent = recovery.get("recent")
    if isinstance(recent, dict):
        window = format_age(timedelta(seconds=recent["window"]))
        gap = recent.get("granularity")
        widest = f"; widest gap {format_age(timedelta(seconds=gap))}" if gap else ""
        budget = f"{human_size(recent['cost'])} of {human_size(recent['budget'])} budget"
        if not recent["thinned"]:
            text = f"every backup of the last {window} is kept ({recent['kept']}, {budget})"
        else:
            spacing = recent.get("spacing")
            older = (
                f"older ones one per {format_age(timedelta(seconds=spacing))}"
                if spacing
                else "older ones only in the calendar slots"
            )
            text = (
                f"{recent['kept']} of {recent['total']} backups of the last {window} kept to "
                f"fit the budget ({budget}): the newest all, {older}"
            )
        lines.append(("Restore points", text + widest))
    return lines


#: File system types that share files between hosts over a network: SQLite's WAL mode needs
#: shared memory on one host, so it is unsafe there (PythonAnywhere's web and task servers).
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "ceph", "glusterfs", "afs"}
)


def network_wal_findings(
    settings: Settings, mounts: Path = PROC_MOUNTS, *, query: bool = True
) -> list[Finding]:
    """Warn when the database is in WAL mode on a network file system (the type from
    ``mounts``). The journal mode comes from ``PRAGMA journal_mode`` (see
    :func:`live_journal_mode`); with ``query=False`` (a page load, which opens no live
    database) from the ``-wal`` file's presence alone, which misses a WAL database nobody has
    open."""
    fstype = filesystem_type(settings.database, mounts)
    if fstype not in NETWORK_FILESYSTEMS and not (fstype or "").startswith("fuse.sshfs"):
        return []
    if query:
        wal = live_journal_mode(settings.database) == "wal"
    else:
        wal = Path(f"{settings.database}-wal").exists()
    if not wal:
        return []
    return [
        Finding(
            Level.WARNING,
            "wal-network-fs",
            f"the database is in WAL mode on a network file system ({fstype}): WAL needs "
            "shared memory on one machine, and web apps and scheduled tasks may run on "
            "different ones (PythonAnywhere); switch back with PRAGMA journal_mode=DELETE",
        )
    ]


def _saved_data_findings(settings: Settings) -> tuple[datetime | None, list[Finding]]:
    """The data-reading findings of the last saved full check, and when it ran."""
    saved = read_status(settings).get("health")
    if not isinstance(saved, dict):
        return None, []
    try:
        at = parse_utc(saved.get("checked_at"), "checked_at")
    except BackupError:
        return None, []
    findings: list[Finding] = []
    for item in saved.get("findings") or []:
        if not isinstance(item, dict) or item.get("code") not in DATA_CODES:
            continue
        try:
            level = Level(item.get("level"))
        except ValueError:
            continue
        findings.append(Finding(level, str(item["code"]), str(item.get("message", ""))))
    return at, findings


def _metadata_findings(recent: list[BackupInfo]) -> list[Finding]:
    return [
        Finding(Level.WARNING, "metadata", f"{info.id}: {'; '.join(info.problems)}")
        for info in recent
        if info.metadata is None and not info.newer
    ]


def current_report(settings: Settings) -> HealthReport:
    """The report ``health``, ``status`` and the dashboard show: checked now and saved, so the
    three never disagree. A status file that cannot be written is itself a critical finding
    (a full or read-only backup folder is exactly when the report matters most)."""
    report = check_health(settings)
    if not settings.state_dir.is_dir():
        return report  # a mistyped folder: report "no backups" without creating it
    try:
        save_report(settings, report)
    except BackupError as exc:
        report = dataclasses.replace(
            report,
            findings=(
                *report.findings,
                Finding(Level.CRITICAL, "status-file", f"cannot write the status file: {exc}"),
            ),
        )
    return report


def restore_command(settings: Settings, backup_id: str) -> str:
    """The exact command that restores ``backup_id`` into the live database, with the
    folders spelled out so it works pasted as it is, whatever config file is in use."""
    return settings.command_line("restore", backup_id)


def restore_findings(settings: Settings) -> list[Finding]:
    """A restore that was killed (critical until the owner has looked), one that left work for
    the next run (a warning), or one running now (informational)."""
    try:
        record = intent.read(settings)
    except BackupError as exc:
        return [Finding(Level.CRITICAL, "restore-interrupted", str(exc))]
    if record is None:
        return []
    if record.found_at is None and record.unfinished is None and intent.alive(record):
        return [
            Finding(
                Level.OK,
                "restore-running",
                f"a restore of backup {record.backup_id} into {record.target} is running "
                f"(stage {record.stage}, since {local_time(record.started_at)})",
            )
        ]
    state = record.state or intent.describe_state(settings, record)
    dismiss = command(settings, "restore", "--dismiss")
    if record.unfinished is not None and record.found_at is None:
        return [
            Finding(
                Level.WARNING,
                "restore-unfinished",
                f"the restore of backup {record.backup_id} into {record.target} is done, but "
                f"{record.unfinished}; the next run finishes it",
            )
        ]
    kept = (
        f"; the data from before it is kept as {record.safety_kept}" if record.safety_kept else ""
    )
    return [
        Finding(
            Level.CRITICAL,
            "restore-interrupted",
            f"the restore of backup {record.backup_id} into {record.target} was interrupted at "
            f"stage {record.stage} ({local_time(record.stage_at)}): {state}{kept or ''}. Restore "
            f"again ({command(settings, 'restore', record.backup_id)}) or, once the "
            f"database is as it should be, dismiss this: {dismiss}",
        )
    ]


def _identity_findings(settings: Settings) -> list[Finding]:
    try:
        check_folders(settings)
    except BackupError as exc:
        return [Finding(Level.CRITICAL, "folder-identity", str(exc))]
    return []


def _source_findings(
    settings: Settings, regular: list[BackupInfo], good: BackupInfo | None
) -> list[Finding]:
    """The newest snapshot holds damaged data: say which backup to restore, and how."""
    newest = next((b for b in regular if b.verified), None)
    if newest is None or not newest.source_damaged or newest.metadata is None:
        return []
    damage = newest.metadata.findings.integrity.splitlines()[0][:200]
    message = (
        f"the live database failed integrity_check when backup {newest.id} was taken "
        f"({damage}); that backup is kept, flagged source-damaged"
    )
    if good is None:
        message += "; there is no good backup to restore from"
    else:
        message += (
            f"; the newest good backup is {good.id} (taken {good.created_at:%Y-%m-%d %H:%M} UTC): "
            f"restore it with: {restore_command(settings, good.id)}"
        )
    return [Finding(Level.CRITICAL, "source-damaged", message)]


def _unchecked_findings(
    newest: BackupInfo | None, checked: BackupInfo | None, now: datetime, interval: timedelta
) -> list[Finding]:
    """Snapshots filed without their full checks are normal (the scheduled run checks its
    own backup, and the drill the newest unchecked one); a warning only when no snapshot
    has been fully checked for more than two intervals."""
    if newest is None or newest.checked or not newest.verified:
        return []
    since = checked.created_at if checked is not None else None
    if since is not None and now - since <= 2 * interval + GRACE:
        return []
    shown = (
        f"the newest fully checked backup is {checked.id}, {format_age(now - since)} old"
        if checked is not None and since is not None
        else "no backup has been fully checked yet"
    )
    return [
        Finding(
            Level.WARNING,
            "checks-overdue",
            f"backup {newest.id} and those before it are not checked yet (integrity, foreign "
            f"keys, row counts did not fit BACKUPS_CHECK_BUDGET); {shown}: the scheduled run "
            "checks them, or run verify",
        )
    ]


def _foreign_key_findings(regular: list[BackupInfo]) -> list[Finding]:
    """Foreign-key violations in the newest backup: a warning when the count rose since the
    previous backup, naming the tables; a steady count is reported, not alarmed on."""
    faithful = [b for b in regular if b.verified and b.metadata is not None]
    if not faithful:
        return []
    newest = faithful[0].metadata
    assert newest is not None
    now_count = newest.findings.foreign_key_violations
    previous = faithful[1].metadata if len(faithful) > 1 else None
    if previous is not None and now_count > previous.findings.foreign_key_violations:
        before = previous.findings.foreign_key_tables
        rose = sorted(
            table
            for table, count in newest.findings.foreign_key_tables.items()
            if count > before.get(table, 0)
        )
        return [
            Finding(
                Level.WARNING,
                "foreign-keys-rose",
                f"foreign-key violations rose from {previous.findings.foreign_key_violations} "
                f"to {now_count} between backups {previous.id} and {newest.id}"
                + (f", in {', '.join(rose)}" if rose else ""),
            )
        ]
    if now_count == 0:
        return []
    tables = ", ".join(sorted(newest.findings.foreign_key_tables)) or "unknown tables"
    trend = "" if previous is None else " (not more than in the previous backup)"
    return [
        Finding(
            Level.OK,
            "foreign-keys",
            f"{now_count} foreign-key violation(s) in {tables} in backup {newest.id}{trend}; "
            "SQLite enforces foreign keys only where the app turns them on",
        )
    ]


def data_loss_findings(
    settings: Settings, backups: list[BackupInfo] | None = None
) -> list[Finding]:
    """One warning per open data-loss warning (:mod:`tablettracker_backups.evidence`), until
    the owner dismisses it; ``backups`` (the listing) tells whether the evidence still exists."""
    present = None if backups is None else {b.id for b in backups}
    findings = []
    for warning in open_warnings(settings):
        where = (
            f"backup {warning.evidence_id} still has the data and is kept until the warning is "
            "dismissed"
            if present is None or warning.evidence_id in present
            else f"backup {warning.evidence_id}, which had the data, is gone"
        )
        findings.append(
            Finding(
                Level.WARNING,
                "data-loss",
                f"data may have been lost before backup {warning.backup_id} "
                f"({warning.reason}): {where}",
            )
        )
    return findings


def _backup_failure_findings(status: dict[str, Any]) -> list[Finding]:
    """A failed manual or web backup is shown like a failed scheduled run, until one works."""
    failure = status.get("last_backup_failure")
    if not isinstance(failure, dict):
        return []
    return [
        Finding(
            Level.CRITICAL,
            "last-backup-failed",
            f"the last {failure.get('kind', 'manual')} backup ({failure.get('trigger', '?')}) "
            f"failed at {failure.get('at', '?')}: {str(failure.get('error'))[:300]}",
        )
    ]


def _auto_findings(settings: Settings, newest: BackupInfo | None) -> list[Finding]:
    """Warn when the last automatic snapshot failed and nothing has succeeded since."""
    last = last_auto(settings)
    if last is None or last.get("ok") is not False:
        return []
    try:
        at = parse_utc(last.get("at"), "last_auto.at")
    except BackupError:
        return []
    if newest is not None and newest.created_at >= at:
        return []
    return [
        Finding(
            Level.WARNING,
            "auto-snapshot-failed",
            f"the last automatic snapshot failed: {str(last.get('error'))[:300]}",
        )
    ]


def _live_database_findings(settings: Settings) -> list[Finding]:
    try:
        result = quick_check_live(settings.database, busy_timeout=settings.busy_timeout)
    except DatabaseError as exc:
        return [Finding(Level.CRITICAL, "database-unreadable", str(exc))]
    if result != "ok":
        return [Finding(Level.CRITICAL, "database-corrupt", f"quick_check: {result}")]
    return []


def _freshness_findings(
    newest: BackupInfo | None,
    good: BackupInfo | None,
    *,
    now: datetime,
    interval: timedelta,
) -> list[Finding]:
    """Is there a backup, a good one, and are they as recent as the schedule promises?"""
    findings: list[Finding] = []
    if newest is None:
        findings.append(Finding(Level.CRITICAL, "no-backups", "there are no backups yet"))
    elif good is None:
        findings.append(
            Finding(Level.CRITICAL, "no-verified-backup", "no backup is verified and good")
        )
    for label, info, code in (
        ("newest backup", newest, "backup-age"),
        ("newest good backup", good, "verified-backup-age"),
    ):
        if info is None:
            continue
        age = now - info.created_at
        late = f"{label} is {format_age(age)} old (expected every {format_age(interval)})"
        if age < -CLOCK_SKEW:
            findings.append(
                Finding(
                    Level.WARNING,
                    "clock",
                    f"{label} {info.id} is dated {format_age(age)}: check the system clock",
                )
            )
        elif age > 3 * interval + GRACE:
            findings.append(Finding(Level.CRITICAL, code, late))
        elif age > interval + interval / 2 + GRACE:
            findings.append(Finding(Level.WARNING, code, late))
    return findings


def _failed_repairs(status: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(backup id, location) -> why the last run could not rebuild that copy."""
    last_run = status.get("last_run")
    repairs = last_run.get("repaired") if isinstance(last_run, dict) else None
    return {
        (str(r.get("id")), str(r.get("location"))): str(r.get("error"))
        for r in (repairs if isinstance(repairs, list) else [])
        if isinstance(r, dict) and not r.get("ok")
    }


def _copy_findings(
    settings: Settings, backups: list[BackupInfo], failed: dict[tuple[str, str], str]
) -> list[Finding]:
    """Copies that are missing, damaged or differ. One that ``run`` can rebuild from a sound
    copy elsewhere is reported, not warned about; a warning means a repair is impossible."""
    offsite_sound: set[str] = set()
    if settings.offsite is not None:
        offsite_sound = {c.id for c in read_state(settings).copies.values() if c.ok}
    findings: list[Finding] = []
    pending: dict[str, list[str]] = {}
    for info in backups:
        for copy in info.copies:
            if copy.state == CopyStatus.OK:
                continue
            if copy.state == CopyStatus.NEWER:
                findings.append(
                    Finding(
                        Level.OK,
                        "newer-format",
                        f"{copy.location} copy of {info.id}: {copy.detail}",
                    )
                )
                continue
            text = f"{copy.location} copy of {info.id} is {copy.state}" + (
                f": {copy.detail}" if copy.detail else ""
            )
            elsewhere = info.id in offsite_sound or any(
                c.state == CopyStatus.OK for c in info.copies if c.location != copy.location
            )
            if copy.state == CopyStatus.DIFFERS:
                findings.append(Finding(Level.WARNING, "copies-disagree", text))
            elif (info.id, copy.location) in failed:
                reason = failed[(info.id, copy.location)]
                findings.append(
                    Finding(
                        Level.WARNING, "copies-disagree", f"{text}; rebuilding it failed: {reason}"
                    )
                )
            elif info.metadata is None or not elsewhere:
                findings.append(
                    Finding(
                        Level.WARNING,
                        "copies-disagree",
                        f"{text}; no sound copy to rebuild it from",
                    )
                )
            else:
                pending.setdefault(copy.location, []).append(info.id)
    for location, ids in pending.items():
        shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
        findings.append(
            Finding(
                Level.OK,
                "copies-repairable",
                f"{len(ids)} {location} cop(ies) missing or damaged ({shown}); the next run "
                "rebuilds them from a sound copy",
            )
        )
    return findings


def _schedule_findings(
    status: dict[str, Any],
    *,
    now: datetime,
    interval: timedelta,
    first_backup_at: datetime | None,
    setup: str = "tablettracker-backups init",
) -> tuple[datetime | None, list[Finding]]:
    """When the scheduled run last ran, and whether it failed, stopped, or was never set up.

    A fresh install (``init`` took the first backup) has had no scheduled run yet: that is no
    finding until one interval has passed since the first backup (the pages say it as a note),
    then a warning, since nothing will take the next backup.
    """
    findings: list[Finding] = []
    last_run_at: datetime | None = None
    if status.get("last_run_at"):
        with contextlib.suppress(BackupError):
            last_run_at = parse_utc(status["last_run_at"], "last_run_at")
    last_run = status.get("last_run")
    if isinstance(last_run, dict) and last_run.get("ok") is False:
        findings.append(
            Finding(
                Level.CRITICAL,
                "last-run-failed",
                f"the last scheduled run failed: {str(last_run.get('error'))[:300]}",
            )
        )
    if last_run_at is None and first_backup_at is not None:
        waited = now - first_backup_at
        if waited > interval + GRACE:
            findings.append(
                Finding(
                    Level.WARNING,
                    "no-scheduled-run",
                    f"no scheduled run yet, {format_age(waited)} after the first backup: set up "
                    f"the scheduled task ({setup} prints its command)",
                )
            )
    if last_run_at is not None and now - last_run_at > 2 * interval + GRACE:
        findings.append(
            Finding(
                Level.WARNING,
                "schedule-stopped",
                f"the scheduled run last ran {format_age(now - last_run_at)} ago; is the "
                "scheduled task still enabled (free PythonAnywhere tasks expire)?",
            )
        )
    return last_run_at, findings


#: The first word of a retention reason that names what keeps a backup, for the counts.
SLOT_NAMES = ("minutely", "hourly", "daily", "weekly", "monthly", "yearly", "recent", "pre-restore")


def slot_counts(settings: Settings, backups: list[BackupInfo], now: datetime) -> dict[str, int]:
    """How many backups retention keeps in each slot (minutely ... yearly, pre-restore)."""
    return _count_slots(plan_retention(candidates_from(backups), settings.retention, now=now))


def _count_slots(plan: RetentionPlan) -> dict[str, int]:
    slots: Counter[str] = Counter()
    for decision in plan.keep:
        for reason in decision.reasons:
            slot = reason.split(" ")[0].rstrip(",")
            if slot in SLOT_NAMES:
                slots[slot] += 1
    return dict(slots)


def _offsite_findings(lag: OffsiteLag, now: datetime) -> list[Finding]:
    """Warnings about the offsite copy, from the local record (no network)."""
    findings: list[Finding] = []
    if lag.behind:
        since = lag.behind_since or now
        message = (
            f"offsite copy is {len(lag.behind)} backup(s) behind since "
            f"{since:%Y-%m-%d %H:%M} UTC ({format_age(now - since)})"
        )
        if lag.last_error:
            message += f"; last error: {lag.last_error[:300]}"
        findings.append(Finding(Level.WARNING, "offsite-behind", message))
    elif lag.last_error and lag.last_sync_at is not None and lag.last_error_at == lag.last_sync_at:
        findings.append(
            Finding(
                Level.WARNING, "offsite-error", f"the last offsite sync failed: {lag.last_error}"
            )
        )
    for backup_id in lag.damaged:
        findings.append(
            Finding(Level.WARNING, "offsite-damaged", f"offsite copy of {backup_id} is damaged")
        )
    if lag.overdue:
        findings.append(
            Finding(
                Level.WARNING,
                "offsite-unverified",
                f"{len(lag.overdue)} offsite cop(ies) not read back within the verify period "
                f"(oldest {lag.overdue[0]})",
            )
        )
    return findings


def _encryption_findings(keys: EncryptionStatus, now: datetime) -> list[Finding]:
    """Encryption that cannot run, no recent drill with the identity, plaintext offsite."""
    findings: list[Finding] = []
    if not keys.configured:
        return findings
    if not keys.available:
        stopped = "no backup is taken" if keys.mode == "all" else "nothing is uploaded offsite"
        findings.append(
            Finding(
                Level.CRITICAL,
                "encryption-unavailable",
                "BACKUPS_ENCRYPT_TO is set but the age library (pyrage) is not installed, so "
                f"{stopped}: pip install 'tablettracker-backups[encrypt]'",
            )
        )
    if keys.drill_overdue(now):
        when = (
            f"last one {format_age(now - keys.last_drill_at)} ago"
            if keys.last_drill_at
            else "never done"
        )
        command = "verify --offsite" if keys.drill_where == "offsite" else "verify"
        findings.append(
            Finding(
                Level.WARNING,
                "encryption-drill",
                f"no full check of an encrypted backup with its identity within "
                f"{keys.drill_period_days} days ({when}): run 'tablettracker-backups {command} "
                "--identity FILE' where the identity is kept, to prove it still opens them",
            )
        )
    if keys.plaintext_offsite:
        findings.append(
            Finding(
                Level.WARNING,
                "offsite-plaintext",
                f"{len(keys.plaintext_offsite)} offsite cop(ies) were uploaded before "
                f"encryption was set up and are readable by the provider (newest "
                f"{keys.plaintext_offsite[0]}); they leave with offsite retention",
            )
        )
    return findings


def _checksum_findings(
    store: BackupStore, recent: list[BackupInfo], failed: dict[tuple[str, str], str]
) -> list[Finding]:
    findings: list[Finding] = _metadata_findings(recent)
    for info in recent:
        if info.metadata is None:
            continue
        sound = 0
        mismatched: list[str] = []
        for copy in info.copies:
            if copy.state != CopyStatus.OK:
                continue
            try:
                matches = store.checksum_matches(info, copy.location)
            except BackupError as exc:
                findings.append(Finding(Level.WARNING, "checksum", f"{info.id}: {exc}"))
                continue
            if not matches:
                mismatched.append(copy.location)
            else:
                sound += 1
        for location in mismatched:
            # With a sound copy beside it, the next run rebuilds this one: reported, not alarmed.
            text = f"{location} copy of {info.id} does not match its SHA-256"
            reason = failed.get((info.id, location))
            if reason is not None:
                findings.append(
                    Finding(Level.WARNING, "checksum", f"{text}; rebuilding it failed: {reason}")
                )
            elif sound:
                findings.append(
                    Finding(
                        Level.OK, "checksum", f"{text}; the next run rebuilds it from a sound copy"
                    )
                )
            else:
                findings.append(Finding(Level.WARNING, "checksum", text))
        if sound == 0:
            findings.append(
                Finding(
                    Level.CRITICAL, "checksum", f"backup {info.id} has no copy with a good checksum"
                )
            )
    return findings


def _stored_bytes(store: BackupStore, backups: list[BackupInfo]) -> int:
    """Bytes the backups take in every folder: each sound copy's objects, an object shared
    by several format 2 backups counted once per folder."""
    total = 0
    for location, folder in store.locations.items():
        metas = [
            b.metadata
            for b in backups
            if b.metadata is not None and b.copy_state(location) == CopyStatus.OK
        ]
        total += folder_bytes(folder, metas)
    return total


def _newest_size(
    settings: Settings, backups: list[BackupInfo], newest: BackupInfo | None
) -> Footprint | None:
    """The newest backup's sizes, measured among every backup of the primary folder."""
    if newest is None or newest.metadata is None:
        return None
    metas = [b.metadata for b in backups if b.metadata is not None]
    return measure(settings.backup_dir, metas).get(newest.id)


def _sizes(size: Footprint | None) -> dict[str, int]:
    if size is None:
        return {}
    return {"logical": size.logical, "stored": size.stored, "added": size.added, "own": size.own}


def _disk(
    settings: Settings, newest: BackupInfo | None, size: Footprint | None = None
) -> tuple[dict[str, dict[str, int]], list[Finding], int]:
    disk: dict[str, dict[str, int]] = {}
    findings: list[Finding] = []
    # A backup needs room for the raw snapshot and the compressed file at the same time. The
    # live database may have grown since the newest backup, so size it from the live file
    # (stat only: opening it outside SQLite would drop a host app's locks). The compressed
    # side is sized by a whole copy of the newest backup: a format 2 backup after a small
    # change added almost nothing, but after a VACUUM every page is new again.
    needed = 0
    raw = 0
    ratio = 1.0
    if newest is not None and newest.metadata is not None:
        raw = newest.metadata.raw_size
        whole = size.stored if size is not None and size.measured else None
        if whole is None and newest.metadata.format_version != FILES.version:
            whole = raw  # not measured: every page new, uncompressed (an upper bound)
        whole = newest.metadata.stored_size if whole is None else whole
        ratio = whole / max(newest.metadata.raw_size, 1)
    with contextlib.suppress(OSError):  # a missing database is reported by its own check
        raw = max(raw, settings.database.stat().st_size)
    if raw:
        needed = raw + int(raw * ratio)
    for name, directory in zip(("primary", "secondary"), settings.locations, strict=False):
        try:
            usage = shutil.disk_usage(directory)
        except OSError as exc:
            # No primary folder means no backups; a secondary that is away only means one
            # copy is missing, and every backup still goes to the primary.
            level = Level.CRITICAL if name == "primary" else Level.WARNING
            findings.append(Finding(level, "disk", f"{name} folder {directory}: {exc.strerror}"))
            continue
        disk[name] = {"total": usage.total, "used": usage.used, "free": usage.free}
        for level, threshold in (
            (Level.CRITICAL, settings.disk_critical),
            (Level.WARNING, settings.disk_warning),
        ):
            limit = threshold * usage.total if threshold < 1 else threshold
            if usage.free < limit:
                findings.append(
                    Finding(level, "disk", f"{name} folder has {usage.free // 2**20} MiB free")
                )
                break
        else:
            if usage.free < needed:
                findings.append(
                    Finding(
                        Level.CRITICAL,
                        "disk",
                        f"{name} folder has {usage.free // 2**20} MiB free; the next backup "
                        f"needs about {needed // 2**20 + 1} MiB",
                    )
                )
    return disk, findings, needed


def save_report(settings: Settings, report: HealthReport) -> None:
    """Save the report to the status file and append warnings and worse to the alert log."""
    write_status(
        settings,
        health=report.to_dict(),
        alerts=[dataclasses.asdict(f) for f in report.findings if f.level != Level.OK],
        at=report.checked_at,
    )

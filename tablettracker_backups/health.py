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

from tablettracker_backups.autosnapshot import effective_interval, last_auto
from tablettracker_backups.changes import changed_since, source_signature
from tablettracker_backups.display import format_age, human_size
from tablettracker_backups.errors import BackupError, DatabaseError
from tablettracker_backups.fsutil import PROC_MOUNTS, filesystem_type
from tablettracker_backups.metadata import parse_utc, utc_iso
from tablettracker_backups.offsite.policy import OffsiteLag, offsite_lag
from tablettracker_backups.retention import CLOCK_SKEW, RetentionPlan, plan_for_backups
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
    newest_id: str | None = None
    newest_at: datetime | None = None
    newest_verified_id: str | None = None
    newest_verified_at: datetime | None = None
    backup_count: int = 0
    slot_counts: dict[str, int] = field(default_factory=dict)
    disk: dict[str, dict[str, int]] = field(default_factory=dict)
    stored_bytes: int = 0
    last_run_at: datetime | None = None
    next_run_due: datetime | None = None
    #: The offsite copy's standing (:meth:`OffsiteLag.to_dict`); empty when not configured.
    offsite: dict[str, Any] = field(default_factory=dict)
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
            "newest_verified_backup": {
                "id": self.newest_verified_id,
                "created_at": iso(self.newest_verified_at),
            },
            "backup_count": self.backup_count,
            "slot_counts": self.slot_counts,
            "disk": self.disk,
            "stored_bytes": self.stored_bytes,
            "last_run_at": iso(self.last_run_at),
            "next_run_due": iso(self.next_run_due),
            "offsite": self.offsite or None,
            "recovery": self.recovery or None,
        }


def check_health(
    settings: Settings,
    *,
    now: datetime | None = None,
    extra_findings: tuple[Finding, ...] = (),
) -> HealthReport:
    """Run every health check; never raises for a finding, only reports it."""
    now = now or datetime.now(timezone.utc)
    findings: list[Finding] = list(extra_findings)
    store = BackupStore(settings)
    interval = timedelta(seconds=settings.interval)

    findings += _live_database_findings(settings)
    try:
        backups = store.list()
    except BackupError as exc:
        findings.append(Finding(Level.CRITICAL, "backups-unreadable", str(exc)))
        backups = []
    regular = [b for b in backups if b.kind != "pre-restore"]
    newest = regular[0] if regular else None
    newest_verified = next((b for b in regular if b.verified), None)
    findings += _freshness_findings(newest, newest_verified, now=now, interval=interval)
    findings += _checksum_findings(store, backups[: settings.health_checksum_count])
    findings += _copy_findings(backups)
    findings += network_wal_findings(settings)
    findings += _auto_findings(settings, newest)
    disk, disk_findings = _disk(settings, newest)
    findings += disk_findings
    last_run_at, schedule_findings = _schedule_findings(settings, now=now, interval=interval)
    findings += schedule_findings
    plan = plan_for_backups(settings, backups, now=now)
    offsite: dict[str, Any] = {}
    if settings.s3 is not None:
        lag = offsite_lag(settings, backups, now=now)
        offsite = lag.to_dict()
        findings += _offsite_findings(lag, now)

    return HealthReport(
        checked_at=now,
        findings=tuple(findings),
        newest_id=newest.id if newest else None,
        newest_at=newest.created_at if newest else None,
        newest_verified_id=newest_verified.id if newest_verified else None,
        newest_verified_at=newest_verified.created_at if newest_verified else None,
        backup_count=len(backups),
        slot_counts=_slot_counts(plan),
        disk=disk,
        stored_bytes=sum(
            b.stored_size * sum(c.state == CopyStatus.OK for c in b.copies) for b in backups
        ),
        last_run_at=last_run_at,
        next_run_due=None if last_run_at is None else last_run_at + interval,
        offsite=offsite,
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
    summary: dict[str, Any] = {
        "snapshot_after_write": settings.snapshot_after_write,
        "effective_interval": (
            effective_interval(settings, meta) if settings.snapshot_after_write else None
        ),
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
    summary["unsaved_writes"] = unsaved
    summary["achieved_seconds"] = (
        max(0.0, (latest - newest.created_at).total_seconds()) if unsaved else 0.0
    )
    return summary


def describe_recovery(recovery: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, sentence) pairs a person reads about :func:`recovery_summary`'s output: the
    recovery point achieved, the automatic snapshots, the restore points kept."""
    lines: list[tuple[str, str]] = []
    achieved = recovery.get("achieved_seconds")
    if achieved is None:
        lines.append(("Recovery point", "unknown (no good backup, or the database is missing)"))
    elif achieved == 0:
        lines.append(("Recovery point", "every write so far is in a backup"))
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
            text += f" (now {format_age(timedelta(seconds=effective))}: 20x the last backup)"
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


def network_wal_findings(settings: Settings, mounts: Path = PROC_MOUNTS) -> list[Finding]:
    """Warn when the database is in WAL mode on a network file system (the type from
    ``mounts``; the journal mode from ``PRAGMA journal_mode``, see :func:`live_journal_mode`)."""
    fstype = filesystem_type(settings.database, mounts)
    if fstype not in NETWORK_FILESYSTEMS and not (fstype or "").startswith("fuse.sshfs"):
        return []
    mode = live_journal_mode(settings.database)
    if mode != "wal":
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
    newest_verified: BackupInfo | None,
    *,
    now: datetime,
    interval: timedelta,
) -> list[Finding]:
    """Is there a backup, a verified one, and are they as recent as the schedule promises?"""
    findings: list[Finding] = []
    if newest is None:
        findings.append(Finding(Level.CRITICAL, "no-backups", "there are no backups yet"))
    elif newest_verified is None:
        findings.append(Finding(Level.CRITICAL, "no-verified-backup", "no backup has verified"))
    for label, info, code in (
        ("newest backup", newest, "backup-age"),
        ("newest verified backup", newest_verified, "verified-backup-age"),
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


def _copy_findings(backups: list[BackupInfo]) -> list[Finding]:
    return [
        Finding(
            Level.WARNING,
            "copies-disagree",
            f"{copy.location} copy of {info.id} is {copy.state}"
            + (f": {copy.detail}" if copy.detail else ""),
        )
        for info in backups
        for copy in info.copies
        if copy.state != CopyStatus.OK
    ]


def _schedule_findings(
    settings: Settings, *, now: datetime, interval: timedelta
) -> tuple[datetime | None, list[Finding]]:
    """When the scheduled run last ran, and whether it failed or seems to have stopped."""
    findings: list[Finding] = []
    status = read_status(settings)
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


def _slot_counts(plan: RetentionPlan) -> dict[str, int]:
    slots: Counter[str] = Counter()
    for decision in plan.keep:
        for reason in decision.reasons:
            slot = reason.split(" ")[0].rstrip(",")
            if slot in ("hourly", "daily", "weekly", "monthly", "yearly", "recent", "pre-restore"):
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


def _checksum_findings(store: BackupStore, recent: list[BackupInfo]) -> list[Finding]:
    findings: list[Finding] = []
    for info in recent:
        if info.metadata is None:
            findings.append(
                Finding(Level.WARNING, "metadata", f"{info.id}: {'; '.join(info.problems)}")
            )
            continue
        sound = 0
        for copy in info.copies:
            if copy.state != CopyStatus.OK:
                continue
            try:
                matches = store.checksum_matches(info, copy.location)
            except BackupError as exc:
                findings.append(Finding(Level.WARNING, "checksum", f"{info.id}: {exc}"))
                continue
            if not matches:
                findings.append(
                    Finding(
                        Level.WARNING,
                        "checksum",
                        f"{copy.location} copy of {info.id} does not match its SHA-256",
                    )
                )
            else:
                sound += 1
        if sound == 0:
            findings.append(
                Finding(
                    Level.CRITICAL, "checksum", f"backup {info.id} has no copy with a good checksum"
                )
            )
    return findings


def _disk(
    settings: Settings, newest: BackupInfo | None
) -> tuple[dict[str, dict[str, int]], list[Finding]]:
    disk: dict[str, dict[str, int]] = {}
    findings: list[Finding] = []
    # A backup needs room for the raw snapshot and the compressed file at the same time. The
    # live database may have grown since the newest backup, so size it from the live file
    # (stat only: opening it outside SQLite would drop a host app's locks).
    needed = 0
    raw = 0
    ratio = 1.0
    if newest is not None and newest.metadata is not None:
        raw = newest.metadata.raw_size
        ratio = newest.metadata.stored_size / max(newest.metadata.raw_size, 1)
    with contextlib.suppress(OSError):  # a missing database is reported by its own check
        raw = max(raw, settings.database.stat().st_size)
    if raw:
        needed = raw + int(raw * ratio)
    for name, directory in zip(("primary", "secondary"), settings.locations, strict=False):
        try:
            usage = shutil.disk_usage(directory)
        except OSError as exc:
            findings.append(
                Finding(Level.CRITICAL, "disk", f"{name} folder {directory}: {exc.strerror}")
            )
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
    return disk, findings


def save_report(settings: Settings, report: HealthReport) -> None:
    """Save the report to the status file and append warnings and worse to the alert log."""
    write_status(
        settings,
        health=report.to_dict(),
        alerts=[dataclasses.asdict(f) for f in report.findings if f.level != Level.OK],
        at=report.checked_at,
    )

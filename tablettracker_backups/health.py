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
from typing import Any

from tablettracker_backups.display import format_age
from tablettracker_backups.errors import BackupError, DatabaseError
from tablettracker_backups.metadata import parse_utc, utc_iso
from tablettracker_backups.offsite.policy import OffsiteLag, offsite_lag
from tablettracker_backups.retention import CLOCK_SKEW, plan_for_backups
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import quick_check_live
from tablettracker_backups.states import CopyStatus, Level
from tablettracker_backups.status import read_status, write_status
from tablettracker_backups.store import BackupInfo, BackupStore

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
    disk, disk_findings = _disk(settings, newest)
    findings += disk_findings
    last_run_at, schedule_findings = _schedule_findings(settings, now=now, interval=interval)
    findings += schedule_findings
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
        slot_counts=_slot_counts(settings, backups, now),
        disk=disk,
        stored_bytes=sum(
            b.stored_size * sum(c.state == CopyStatus.OK for c in b.copies) for b in backups
        ),
        last_run_at=last_run_at,
        next_run_due=None if last_run_at is None else last_run_at + interval,
        offsite=offsite,
    )


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


def _slot_counts(settings: Settings, backups: list[BackupInfo], now: datetime) -> dict[str, int]:
    plan = plan_for_backups(settings, backups, now=now)
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

"""Health checks: is the data safe right now? Exit codes 0 ok, 1 warning, 2 critical.

Each check adds findings; the report's status is the worst of them. ``write_status`` keeps a
status file (JSON) for dashboards and appends warnings and critical findings to an alert log
(JSON lines) that a person or a mail filter can follow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from tablettracker_backups.audit import append_jsonl
from tablettracker_backups.errors import BackupError, DatabaseError
from tablettracker_backups.fsutil import atomic_write_bytes, ensure_private_dir
from tablettracker_backups.metadata import parse_utc, utc_iso
from tablettracker_backups.offsite_state import OffsiteLag, offsite_lag
from tablettracker_backups.retention import CLOCK_SKEW, candidates_from, plan_retention
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import quick_check_live
from tablettracker_backups.store import OK, BackupInfo, BackupStore

logger = logging.getLogger(__name__)

OK_STATUS, WARNING, CRITICAL = "ok", "warning", "critical"
LEVELS = {OK_STATUS: 0, WARNING: 1, CRITICAL: 2}
STATUS_FILE = "status.json"
ALERT_LOG = "alerts.jsonl"
#: Leeway on top of the interval before a late backup counts as missed (scheduling jitter).
GRACE = timedelta(minutes=15)


@dataclass(frozen=True)
class Finding:
    """One thing a health check noticed."""

    level: str
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
    def status(self) -> str:
        """``ok``, ``warning`` or ``critical``: the worst finding."""
        worst = max((LEVELS[f.level] for f in self.findings), default=0)
        return next(name for name, level in LEVELS.items() if level == worst)

    @property
    def exit_code(self) -> int:
        """0 ok, 1 warning, 2 critical."""
        return LEVELS[self.status]

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


def read_status(settings: Settings) -> dict[str, Any]:
    """The status file's content, or ``{}`` when missing or unreadable."""
    try:
        data = json.loads((settings.state_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _update_status(settings: Settings, **changes: Any) -> None:
    ensure_private_dir(settings.state_dir)
    status = read_status(settings)
    status.update(changes)
    atomic_write_bytes(
        settings.state_dir / STATUS_FILE,
        (json.dumps(status, indent=2, sort_keys=True, default=str) + "\n").encode(),
    )


def record_run(settings: Settings, *, at: datetime, result: dict[str, Any]) -> None:
    """Remember when ``run`` last ran, so health can notice a schedule that stopped."""
    _update_status(settings, last_run_at=utc_iso(at), last_run=result)


def format_age(delta: timedelta) -> str:
    """``45 s``, ``12 min``, ``3.2 h``, ``4.5 days``; a negative one ``... in the future``."""
    seconds = delta.total_seconds()
    if seconds < 0:
        return f"{format_age(-delta)} in the future"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


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

    try:
        result = quick_check_live(settings.database, busy_timeout=settings.busy_timeout)
        if result != "ok":
            findings.append(Finding(CRITICAL, "database-corrupt", f"quick_check: {result}"))
    except DatabaseError as exc:
        findings.append(Finding(CRITICAL, "database-unreadable", str(exc)))

    try:
        backups = store.list()
    except BackupError as exc:
        findings.append(Finding(CRITICAL, "backups-unreadable", str(exc)))
        backups = []

    regular = [b for b in backups if b.kind != "pre-restore"]
    newest = regular[0] if regular else None
    newest_verified = next((b for b in regular if b.verified), None)
    if newest is None:
        findings.append(Finding(CRITICAL, "no-backups", "there are no backups yet"))
    elif newest_verified is None:
        findings.append(Finding(CRITICAL, "no-verified-backup", "no backup has verified"))
    for label, info, code in (
        ("newest backup", newest, "backup-age"),
        ("newest verified backup", newest_verified, "verified-backup-age"),
    ):
        if info is None:
            continue
        age = now - info.created_at
        if age < -CLOCK_SKEW:
            findings.append(
                Finding(
                    WARNING,
                    "clock",
                    f"{label} {info.id} is dated {format_age(age)}: check the system clock",
                )
            )
        elif age > 3 * interval + GRACE:
            findings.append(
                Finding(
                    CRITICAL,
                    code,
                    f"{label} is {format_age(age)} old (expected every {format_age(interval)})",
                )
            )
        elif age > interval + interval / 2 + GRACE:
            findings.append(
                Finding(
                    WARNING,
                    code,
                    f"{label} is {format_age(age)} old (expected every {format_age(interval)})",
                )
            )

    findings += _checksum_findings(store, backups[: settings.health_checksum_count])

    for info in backups:
        for copy in info.copies:
            if copy.state != OK:
                findings.append(
                    Finding(
                        WARNING,
                        "copies-disagree",
                        f"{copy.location} copy of {info.id} is {copy.state}"
                        + (f": {copy.detail}" if copy.detail else ""),
                    )
                )

    disk, disk_findings = _disk(settings, newest)
    findings += disk_findings

    status = read_status(settings)
    last_run_at: datetime | None = None
    next_due: datetime | None = None
    if status.get("last_run_at"):
        try:
            last_run_at = parse_utc(status["last_run_at"], "last_run_at")
        except BackupError:
            last_run_at = None
    last_run = status.get("last_run")
    if isinstance(last_run, dict) and last_run.get("ok") is False:
        findings.append(
            Finding(
                CRITICAL,
                "last-run-failed",
                f"the last scheduled run failed: {str(last_run.get('error'))[:300]}",
            )
        )
    if last_run_at is not None:
        next_due = last_run_at + interval
        if now - last_run_at > 2 * interval + GRACE:
            findings.append(
                Finding(
                    WARNING,
                    "schedule-stopped",
                    f"the scheduled run last ran {format_age(now - last_run_at)} ago; is the "
                    "scheduled task still enabled (free PythonAnywhere tasks expire)?",
                )
            )

    offsite: dict[str, Any] = {}
    if settings.s3 is not None:
        lag = offsite_lag(settings, backups, now=now)
        offsite = lag.to_dict()
        findings += _offsite_findings(lag, now)

    plan = plan_retention(candidates_from(backups), settings.retention, now=now)
    slots: Counter[str] = Counter()
    for decision in plan.keep:
        for reason in decision.reasons:
            slot = reason.split(" ")[0]
            if slot in ("hourly", "daily", "weekly", "monthly", "yearly", "pre-restore"):
                slots[slot] += 1

    return HealthReport(
        checked_at=now,
        findings=tuple(findings),
        newest_id=newest.id if newest else None,
        newest_at=newest.created_at if newest else None,
        newest_verified_id=newest_verified.id if newest_verified else None,
        newest_verified_at=newest_verified.created_at if newest_verified else None,
        backup_count=len(backups),
        slot_counts=dict(slots),
        disk=disk,
        stored_bytes=sum(b.stored_size * sum(c.state == OK for c in b.copies) for b in backups),
        last_run_at=last_run_at,
        next_run_due=next_due,
        offsite=offsite,
    )


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
        findings.append(Finding(WARNING, "offsite-behind", message))
    elif lag.last_error and lag.last_sync_at is not None and lag.last_error_at == lag.last_sync_at:
        findings.append(
            Finding(WARNING, "offsite-error", f"the last offsite sync failed: {lag.last_error}")
        )
    for backup_id in lag.damaged:
        findings.append(
            Finding(WARNING, "offsite-damaged", f"offsite copy of {backup_id} is damaged")
        )
    if lag.overdue:
        findings.append(
            Finding(
                WARNING,
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
            findings.append(Finding(WARNING, "metadata", f"{info.id}: {'; '.join(info.problems)}"))
            continue
        sound = 0
        for copy in info.copies:
            if copy.state != OK:
                continue
            try:
                matches = store.checksum_matches(info, copy.location)
            except BackupError as exc:
                findings.append(Finding(WARNING, "checksum", f"{info.id}: {exc}"))
                continue
            if not matches:
                findings.append(
                    Finding(
                        WARNING,
                        "checksum",
                        f"{copy.location} copy of {info.id} does not match its SHA-256",
                    )
                )
            else:
                sound += 1
        if sound == 0:
            findings.append(
                Finding(CRITICAL, "checksum", f"backup {info.id} has no copy with a good checksum")
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
            # No primary folder means no backups; a secondary that is away only means one
            # copy is missing, and every backup still goes to the primary.
            level = CRITICAL if name == "primary" else WARNING
            findings.append(Finding(level, "disk", f"{name} folder {directory}: {exc.strerror}"))
            continue
        disk[name] = {"total": usage.total, "used": usage.used, "free": usage.free}
        for level, threshold in (
            (CRITICAL, settings.disk_critical),
            (WARNING, settings.disk_warning),
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
                        CRITICAL,
                        "disk",
                        f"{name} folder has {usage.free // 2**20} MiB free; the next backup "
                        f"needs about {needed // 2**20 + 1} MiB",
                    )
                )
    return disk, findings


def write_status(settings: Settings, report: HealthReport) -> None:
    """Save the report to the status file and append warnings and worse to the alert log."""
    _update_status(settings, health=report.to_dict())
    alerts = [f for f in report.findings if f.level != OK_STATUS]
    if alerts:
        for finding in alerts:
            append_jsonl(
                settings.state_dir / ALERT_LOG,
                {"at": utc_iso(report.checked_at), **dataclasses.asdict(finding)},
            )

"""The weekly report: how the last seven days went, in a few lines the owner reads.

The verdict, the backups taken and checked, the restore drills (full checks that decompress a
backup into a scratch file and run SQLite's checks on it) and restores, the storage used and
how the database grew, and every warning of the week. The dashboard shows it; with
``BACKUPS_NOTIFY_WEEKLY`` on, the scheduled run also sends it to the notification targets once
a week (:func:`send_if_due`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from tablettracker_backups import audit, notify
from tablettracker_backups.display import human_size, local_time
from tablettracker_backups.errors import BackupError
from tablettracker_backups.evidence import read_warnings
from tablettracker_backups.metadata import id_time, parse_utc, utc_iso
from tablettracker_backups.notifiers import Budget, deliver
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import CopyStatus, Level
from tablettracker_backups.status import ALERT_LOG, read_status, update_status
from tablettracker_backups.store import BackupInfo

logger = logging.getLogger(__name__)

WEEK = timedelta(days=7)
#: A verification this long after the backup was taken is a later full check (a drill), not
#: the check every backup gets when it is written.
DRILL_AFTER = timedelta(minutes=5)
#: The status file's key for when the last weekly report went out.
SENT_KEY = "weekly_report_at"


@dataclass(frozen=True)
class WeeklySummary:
    """What happened in the seven days up to ``end``."""

    start: datetime
    end: datetime
    verdict: Level
    taken: dict[str, int]
    #: Full checks after the backup was written: (ok, failed), and the newest one.
    drills_ok: int
    drills_failed: int
    last_drill: tuple[str, datetime] | None
    restores: int
    stored_bytes: int
    database_now: int | None
    database_before: int | None
    warnings: tuple[str, ...] = field(default=())

    @property
    def taken_total(self) -> int:
        """Backups taken in the week, of every kind."""
        return sum(self.taken.values())

    def growth(self) -> str:
        """How the database's size changed over the week, in words."""
        if self.database_now is None:
            return "no backup yet"
        now = human_size(self.database_now)
        if not self.database_before:
            return f"{now} (no backup from a week ago to compare)"
        change = (self.database_now - self.database_before) / self.database_before
        return f"{now}, {change:+.1%} since a week ago ({human_size(self.database_before)})"

    def lines(self) -> list[tuple[str, str]]:
        """(label, text) pairs: the report as the dashboard and the message show it."""
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.taken.items()))
        drills = f"{self.drills_ok} passed"
        if self.drills_failed:
            drills += f", {self.drills_failed} FAILED"
        if self.last_drill is not None:
            drills += f" (last: {self.last_drill[0]}, {local_time(self.last_drill[1])})"
        return [
            ("Verdict", str(self.verdict).upper()),
            ("Backups taken", f"{self.taken_total}" + (f" ({kinds})" if kinds else "")),
            ("Restore drills", drills if self.drills_ok or self.drills_failed else "none"),
            ("Restores", str(self.restores) if self.restores else "none"),
            ("Storage used", f"{human_size(self.stored_bytes)} in all copies"),
            ("Database", self.growth()),
            ("Warnings", "; ".join(self.warnings) if self.warnings else "none"),
        ]

    def text(self) -> str:
        """The message body."""
        head = f"The week {local_time(self.start)} to {local_time(self.end)}:"
        return "\n".join([head, *(f"- {label}: {text}" for label, text in self.lines())])


def weekly_summary(
    settings: Settings, backups: list[BackupInfo], verdict: Level, *, now: datetime | None = None
) -> WeeklySummary:
    """The seven days up to ``now`` for the listed ``backups`` (newest first) and the current
    health ``verdict``. Reads the audit and alert logs; a log that cannot be read counts as
    empty."""
    end = now or datetime.now(timezone.utc)
    start = end - WEEK
    entries = _entries(settings, start)
    taken: Counter[str] = Counter(b.kind for b in backups if start <= b.created_at <= end)
    # Backups taken this week and already pruned still count: their ids carry their time.
    listed = {b.id for b in backups}
    for entry in entries:
        for backup_id in entry.details.get("deleted") or ():
            try:
                taken_at = id_time(str(backup_id))
            except ValueError:
                continue
            if str(backup_id) not in listed and start <= taken_at <= end:
                taken["pruned since"] += 1
    drills = [
        (b.id, b.metadata.verification)
        for b in backups
        if b.metadata is not None
        and start <= b.metadata.verification.verified_at <= end
        and b.metadata.verification.verified_at - b.created_at > DRILL_AFTER
    ]
    newest_drill = max(drills, key=lambda d: d[1].verified_at, default=None)
    before = [b.metadata.raw_size for b in backups if b.metadata and b.created_at <= start]
    return WeeklySummary(
        start=start,
        end=end,
        verdict=verdict,
        taken=dict(taken),
        drills_ok=sum(1 for _, check in drills if check.ok),
        drills_failed=sum(1 for _, check in drills if not check.ok),
        last_drill=(newest_drill[0], newest_drill[1].verified_at) if newest_drill else None,
        restores=sum(1 for e in entries if e.action == "restore" and e.ok),
        stored_bytes=sum(
            b.stored_size * sum(c.state == CopyStatus.OK for c in b.copies) for b in backups
        ),
        database_now=next((b.metadata.raw_size for b in backups if b.metadata), None),
        database_before=before[0] if before else None,
        warnings=tuple(_warnings(settings, start, end)),
    )


def _entries(settings: Settings, start: datetime) -> list[audit.AuditEntry]:
    try:
        return [e for e in audit.read_entries(settings, limit=5000) if e.at >= start]
    except BackupError as exc:
        logger.warning("weekly report: cannot read the audit log: %s", exc)
        return []


def _warnings(settings: Settings, start: datetime, end: datetime) -> Iterable[str]:
    """Each warning of the week once (its newest message), and the data-loss warnings found."""
    latest: dict[str, str] = {}
    counts: Counter[str] = Counter()
    try:
        lines = (settings.state_dir / ALERT_LOG).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            raw: dict[str, Any] = json.loads(line)
            at = parse_utc(raw.get("at"), "at")
        except (ValueError, BackupError):
            continue
        if start <= at <= end and isinstance(raw.get("code"), str):
            latest[raw["code"]] = f"{raw.get('level', 'warning')}: {str(raw.get('message'))[:200]}"
            counts[raw["code"]] += 1
    for code, text in latest.items():
        yield text + (f" (seen in {counts[code]} checks)" if counts[code] > 1 else "")
    for warning in read_warnings(settings):
        if start <= warning.found_at <= end:
            state = "open" if warning.open else "dismissed"
            yield f"data loss found in backup {warning.backup_id} ({warning.reason}; {state})"


def send_if_due(
    settings: Settings,
    backups: list[BackupInfo],
    verdict: Level,
    *,
    budget: Budget,
    now: datetime | None = None,
) -> bool:
    """Send the weekly report if ``BACKUPS_NOTIFY_WEEKLY`` is on and none went out in the
    last seven days; returns whether one was accepted by a target. Never raises."""
    try:
        if not settings.notify_weekly or not settings.notify:
            return False
        now = now or datetime.now(timezone.utc)
        sent = read_status(settings).get(SENT_KEY)
        if sent:
            try:
                if now - parse_utc(sent, SENT_KEY) < WEEK - timedelta(hours=1):
                    return False
            except BackupError:
                pass  # unreadable: send, and write it again
        summary = weekly_summary(settings, backups, verdict, now=now)
        name = notify.database_name(settings)
        results = deliver(
            settings.notify,
            title=f"[WEEKLY] {name}: {str(verdict).upper()}, {summary.taken_total} backup(s)",
            body=summary.text(),
            notify_type="info" if verdict == Level.OK else "warning",
            timeout=budget.left(),
        )
        if any(r.ok for r in results):
            update_status(settings, **{SENT_KEY: utc_iso(now)})
            return True
        logger.warning("the weekly report reached no target")
        return False
    except Exception:  # a report must never break a run
        logger.exception("weekly report failed")
        return False

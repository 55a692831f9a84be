"""Telling the owner: what happened, whether to say so now, and what to do about it.

Two kinds of news. *Conditions* last: health findings such as low disk or a stopped schedule.
For those :func:`observe` keeps a small state file (``notify-state.json`` in the backup folder,
owner-only, replaced atomically) and speaks on a change only: when a condition appears or its
severity changes, once a day while it lasts, and once more when it clears. *Occurrences*
happen once: a backup or verification failed, a restore ran, an anomaly. :func:`send` passes
them on as they come. Either way the news of one run or action goes out as one message.

``BACKUPS_NOTIFY_ON=problems`` (the default) sends warnings, failures, recoveries and restores;
``all`` also sends each successful backup and the information-only anomalies.

Nothing here raises: a notification that cannot be sent is logged, recorded per target in the
state file, and reported by ``health`` (finding ``notifier-failing``), never a failed backup.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from tablettracker_backups.display import format_age
from tablettracker_backups.errors import BackupError
from tablettracker_backups.fsutil import atomic_write_bytes, ensure_private_dir
from tablettracker_backups.metadata import parse_utc, utc_iso
from tablettracker_backups.notifiers import (
    MISSING_APPRISE,
    Budget,
    TargetResult,
    apprise_available,
    deliver,
    mask_url,
    target_key,
)
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import State
from tablettracker_backups.version import __version__

logger = logging.getLogger(__name__)

STATE_FILE = "notify-state.json"
#: Seconds one run or action may spend on notifications (and pings) in all.
BUDGET_SECONDS = 10.0
#: A reminder while a problem lasts. A little under a day, so that a daily task, which starts
#: a few seconds earlier or later each day, still sends one every day.
REMIND_AFTER = timedelta(hours=23)
#: Longest summary line kept in the state file and a message title.
MAX_SUMMARY = 500


class Severity(State):
    """How bad an event is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 info, 1 warning, 2 critical."""
        return list(Severity).index(self)


class EventKind(State):
    """What an event is about."""

    BACKUP_FAILED = "backup-failed"
    VERIFY_FAILED = "verify-failed"
    RESTORE_DONE = "restore-done"
    RESTORE_FAILED = "restore-failed"
    HEALTH = "health"
    OFFSITE_BEHIND = "offsite-behind"
    DISK_LOW = "disk-low"
    SCHEDULE_STOPPED = "schedule-stopped"
    NOTIFIER_FAILING = "notifier-failing"
    ANOMALY = "anomaly"
    BACKUP_OK = "backup-ok"
    RECOVERED = "recovered"
    TEST = "test"


class NotifyOn(State):
    """``BACKUPS_NOTIFY_ON``."""

    PROBLEMS = "problems"
    ALL = "all"


@dataclass(frozen=True)
class Event:
    """One piece of news: what is wrong, and the command that fixes it."""

    kind: EventKind
    severity: Severity
    summary: str
    fix: str = ""
    details: tuple[str, ...] = ()
    #: A lasting condition's identity (a health finding's code); empty for an occurrence.
    key: str = ""


@dataclass(frozen=True)
class Delivery:
    """One message and how each target took it."""

    title: str
    body: str
    results: tuple[TargetResult, ...]

    @property
    def ok(self) -> bool:
        """At least one target accepted the message."""
        return any(r.ok for r in self.results)


@dataclass(frozen=True)
class TargetStatus:
    """A configured target as the pages and ``health`` show it (masked)."""

    target: str
    last_at: datetime | None
    ok: bool | None
    error: str | None
    failures: int
    failing_since: datetime | None


class FindingLike(Protocol):
    """A health finding, as far as notifications need one (health imports this module)."""

    @property
    def level(self) -> str: ...

    @property
    def code(self) -> str: ...

    @property
    def message(self) -> str: ...


# -- commands and names in messages ------------------------------------------------------------


def database_name(settings: Settings) -> str:
    """The database's name in messages (``BACKUPS_DATABASE_NAME`` where supported)."""
    return str(getattr(settings, "database_name", None) or settings.database.stem)


def command(settings: Settings, *words: str) -> str:
    """The exact command to paste: with ``--config`` when a config file is in use, else with
    the database and folder options, so it works from any directory."""
    return settings.command_line(*words)


_CODE_KINDS = {
    "last-run-failed": EventKind.BACKUP_FAILED,
    "last-backup-failed": EventKind.BACKUP_FAILED,
    "schedule-stopped": EventKind.SCHEDULE_STOPPED,
    "disk": EventKind.DISK_LOW,
    "offsite-behind": EventKind.OFFSITE_BEHIND,
    "offsite-error": EventKind.OFFSITE_BEHIND,
    "notifier-failing": EventKind.NOTIFIER_FAILING,
    "notifier-missing": EventKind.NOTIFIER_FAILING,
}


def _fix(settings: Settings, code: str) -> str:
    """What to do about a health finding, as a command where there is one."""
    if code in ("last-run-failed", "last-backup-failed"):
        return f"fix the error above, then run: {command(settings, 'run', '--force')}"
    if code == "schedule-stopped":
        return (
            "re-enable the scheduled task (PythonAnywhere: Tasks tab; free tasks expire), "
            f"or run now: {command(settings, 'run')}"
        )
    if code == "disk":
        return (
            "free space on that disk or keep fewer backups (BACKUPS_KEEP_*); see what would go: "
            f"{command(settings, 'prune', '--dry-run')}"
        )
    if code.startswith("offsite"):
        return (
            "check the BACKUPS_S3_* settings and credentials; the next run retries, or now: "
            f"{command(settings, 'run')}"
        )
    if code.startswith("notifier"):
        return f"check BACKUPS_NOTIFY, then try each target: {command(settings, 'notify-test')}"
    if code in ("database-unreadable", "database-corrupt", "source-damaged"):
        return (
            f"check the live database {settings.database}; if it is damaged, compare the newest "
            f"backup with it: {command(settings, 'restore', 'latest', '--preview')}"
        )
    if code in ("no-backups", "no-verified-backup", "backup-age", "verified-backup-age"):
        return f"take one now and check the schedule: {command(settings, 'run', '--force')}"
    if code in ("copies-disagree", "checksum", "metadata"):
        return f"see which copies are damaged: {command(settings, 'verify', '--all')}"
    if code == "data-loss":
        return (
            "compare the backup that still has the data with the database now, on the backup "
            f"pages or with: {command(settings, 'restore', '<backup id>', '--preview')}"
        )
    if code == "clock":
        return "check the system clock (timedatectl, or ask the host)"
    return f"see the full report: {command(settings, 'health')}"


def conditions_from(settings: Settings, findings: Iterable[FindingLike]) -> dict[str, Event]:
    """Health findings as lasting conditions, one per finding code, worst level first."""
    grouped: dict[str, list[FindingLike]] = {}
    for finding in findings:
        if str(finding.level) in (Severity.WARNING, Severity.CRITICAL):
            grouped.setdefault(finding.code, []).append(finding)
    conditions: dict[str, Event] = {}
    for code, group in grouped.items():
        severity = max((Severity(str(f.level)) for f in group), key=lambda s: s.rank)
        messages = [f.message for f in group]
        conditions[code] = Event(
            kind=_CODE_KINDS.get(code, EventKind.HEALTH),
            severity=severity,
            summary=messages[0][:MAX_SUMMARY],
            fix=_fix(settings, code),
            details=tuple(m[:MAX_SUMMARY] for m in messages[1:10]),
            key=code,
        )
    return conditions


# -- events the core reports -------------------------------------------------------------------


def backup_failed(settings: Settings, error: str, *, trigger: str) -> Event:
    """A backup (manual, web or init) failed."""
    return Event(
        EventKind.BACKUP_FAILED,
        Severity.CRITICAL,
        f"a backup ({trigger}) failed: {error}"[:MAX_SUMMARY],
        f"fix the error, then back up again: {command(settings, 'backup')}",
    )


def backup_ok(settings: Settings, backup_id: str, size: str) -> Event:
    """A backup was taken and verified (sent only with ``BACKUPS_NOTIFY_ON=all``)."""
    return Event(
        EventKind.BACKUP_OK,
        Severity.INFO,
        f"backup {backup_id} taken and verified ({size})",
        f"list the backups: {command(settings, 'list')}",
    )


def verify_failed(
    settings: Settings, backup_id: str, errors: Sequence[tuple[str, str]], *, usable: bool
) -> Event:
    """A verification found damaged copies: (location, error) pairs; ``usable`` when another
    copy of the backup passed."""
    return Event(
        EventKind.VERIFY_FAILED,
        Severity.WARNING if usable else Severity.CRITICAL,
        f"verification of backup {backup_id} failed",
        f"check every backup: {command(settings, 'verify', '--all')}",
        tuple(f"{location} copy: {error}"[:MAX_SUMMARY] for location, error in errors),
    )


def restore_done(settings: Settings, backup_id: str, target: str, safety: str | None) -> Event:
    """A restore was written and checked."""
    details = (f"the database as it was is kept as backup {safety}",) if safety else ()
    return Event(
        EventKind.RESTORE_DONE,
        Severity.INFO,
        f"backup {backup_id} was restored into {target}",
        (
            f"if this was not intended, undo it: {command(settings, 'restore', safety)}"
            if safety
            else f"nothing was overwritten; the backups: {command(settings, 'list')}"
        ),
        details,
    )


def restore_failed(settings: Settings, backup_id: str, error: str) -> Event:
    """A restore failed (its message says what state the database is in)."""
    return Event(
        EventKind.RESTORE_FAILED,
        Severity.CRITICAL,
        f"restoring backup {backup_id} failed: {error}"[:MAX_SUMMARY],
        f"check the database, then compare: {command(settings, 'restore', backup_id, '--preview')}",
    )


def anomaly(settings: Settings, severity: Severity, message: str, previous_id: str) -> Event:
    """Something changed suspiciously since the previous good backup."""
    return Event(
        EventKind.ANOMALY,
        severity,
        message[:MAX_SUMMARY],
        "compare it with the database now: "
        + command(settings, "restore", previous_id, "--preview"),
    )


def test_event(settings: Settings) -> Event:
    """The message ``notify-test`` and the dashboard's button send."""
    return Event(
        EventKind.TEST,
        Severity.INFO,
        "test message: notifications from tablettracker-backups reach this target",
        f"nothing to do; the health report: {command(settings, 'health')}",
    )


# -- composing ---------------------------------------------------------------------------------


def _label(event: Event) -> str:
    if event.kind == EventKind.RECOVERED:
        return "RECOVERED"
    if event.kind in (EventKind.BACKUP_OK, EventKind.TEST):
        return "OK"
    return event.severity.upper()


def compose(settings: Settings, events: Sequence[Event], *, now: datetime) -> tuple[str, str, str]:
    """(title, body, Apprise type) of one message carrying ``events``, worst first."""
    ordered = sorted(events, key=lambda e: -e.severity.rank)
    first = ordered[0]
    host = socket.gethostname()
    name = database_name(settings)
    more = f" (+{len(ordered) - 1} more)" if len(ordered) > 1 else ""
    title = f"[{_label(first)}] {name} on {host}: {first.summary}"[:200] + more
    lines = [
        f"Database: {name} ({settings.database}) on host {host}",
        f"Backup folder: {settings.backup_dir}",
        "",
    ]
    for event in ordered:
        lines.append(f"{_label(event)}: {event.summary}")
        lines += [f"  - {detail}" for detail in event.details]
        if event.fix:
            lines.append(f"  What to do: {event.fix}")
        lines.append("")
    lines.append(f"-- tablettracker-backups {__version__}, {utc_iso(now)[:19]}Z")
    if first.kind in (EventKind.RECOVERED, EventKind.BACKUP_OK, EventKind.TEST):
        kind = "success" if all(e.severity == Severity.INFO for e in ordered) else "warning"
    else:
        kind = {"critical": "failure", "warning": "warning"}.get(first.severity, "info")
    return title, "\n".join(lines), kind


def wanted(event: Event, notify_on: str) -> bool:
    """Whether ``BACKUPS_NOTIFY_ON`` lets this event out."""
    if notify_on == NotifyOn.ALL or event.kind in (EventKind.RECOVERED, EventKind.TEST):
        return True
    return event.severity != Severity.INFO or event.kind == EventKind.RESTORE_DONE


# -- the state file ----------------------------------------------------------------------------


def read_state(settings: Settings) -> dict[str, Any]:
    """The state file, or an empty state when it is missing or unreadable."""
    try:
        data = json.loads((settings.state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    for key in ("conditions", "targets"):
        if not isinstance(data.get(key), dict):
            data[key] = {}
    return data


def _write_state(settings: Settings, state: dict[str, Any]) -> None:
    try:
        ensure_private_dir(settings.state_dir)
        atomic_write_bytes(
            settings.state_dir / STATE_FILE,
            (json.dumps(state, indent=2, sort_keys=True) + "\n").encode(),
        )
    except BackupError as exc:
        logger.error("could not write the notification state: %s", exc)


def parse_time(value: object) -> datetime | None:
    """A time from the state file, or None when missing or malformed."""
    try:
        return parse_utc(value, "time")
    except BackupError:
        return None


def _record_targets(state: dict[str, Any], results: Iterable[TargetResult], now: datetime) -> None:
    targets: dict[str, Any] = state["targets"]
    for result in results:
        old = targets.get(result.key) if isinstance(targets.get(result.key), dict) else {}
        assert isinstance(old, dict)
        failures = 0 if result.ok else int(old.get("failures") or 0) + 1
        targets[result.key] = {
            "target": result.target,
            "at": utc_iso(now),
            "ok": result.ok,
            "error": result.error,
            "failures": failures,
            "failing_since": None if result.ok else (old.get("failing_since") or utc_iso(now)),
        }


def record_ping(settings: Settings, *, what: str, ok: bool, error: str | None) -> None:
    """Remember the last dead-man ping (shown on the dashboard). Never raises."""
    try:
        state = read_state(settings)
        state["ping"] = {"at": utc_iso(datetime.now(timezone.utc)), "what": what, "ok": ok}
        state["ping"]["error"] = error
        _write_state(settings, state)
    except Exception:  # a ping's bookkeeping must never fail a run
        logger.exception("could not record the ping")


# -- sending -----------------------------------------------------------------------------------


def _dispatch(
    settings: Settings,
    state: dict[str, Any],
    events: Sequence[Event],
    budget: Budget,
    now: datetime,
) -> Delivery:
    title, body, kind = compose(settings, events, now=now)
    results = deliver(
        settings.notify, title=title, body=body, notify_type=kind, timeout=budget.left()
    )
    _record_targets(state, results, now)
    return Delivery(title, body, results)


def send(
    settings: Settings,
    events: Sequence[Event],
    *,
    budget: Budget | None = None,
    now: datetime | None = None,
) -> Delivery | None:
    """Send one-off events now, as one message; ``None`` when nothing was sent (no targets,
    nothing wanted). Never raises."""
    try:
        chosen = [e for e in events if wanted(e, settings.notify_on)]
        if not settings.notify or not chosen:
            return None
        now = now or datetime.now(timezone.utc)
        state = read_state(settings)
        delivery = _dispatch(settings, state, chosen, budget or Budget(BUDGET_SECONDS), now)
        _write_state(settings, state)
        return delivery
    except Exception:  # a notifier must never break a backup
        logger.exception("notification failed")
        return None


def observe(
    settings: Settings,
    findings: Iterable[FindingLike],
    *,
    extra: Sequence[Event] = (),
    budget: Budget | None = None,
    now: datetime | None = None,
) -> Delivery | None:
    """Compare the health findings with what was last said; send what changed (new or changed
    severity), a daily reminder, recoveries, and the one-off ``extra`` events, in one message.

    A condition whose message no target accepted stays pending and is sent again next time.
    ``None`` when nothing was sent. Never raises.
    """
    try:
        if not settings.notify:
            return None
        now = now or datetime.now(timezone.utc)
        state = read_state(settings)
        known: dict[str, Any] = state["conditions"]
        current = conditions_from(settings, findings)
        outgoing: list[Event] = [e for e in extra if wanted(e, settings.notify_on)]
        remembered: dict[str, Any] = {}
        pending: list[str] = []
        for key, event in current.items():
            old = known.get(key) if isinstance(known.get(key), dict) else None
            since = parse_time(old.get("since")) if old else None
            told = parse_time(old.get("notified_at")) if old else None
            entry = {
                "kind": event.kind,
                "severity": event.severity,
                "summary": event.summary,
                "since": utc_iso(since or now),
                "notified_at": utc_iso(told) if told else None,
            }
            if old is None or told is None or old.get("severity") != event.severity:
                outgoing.append(event)
                pending.append(key)
            elif now - told >= REMIND_AFTER:
                outgoing.append(_reminder(event, since or now, now))
                pending.append(key)
            remembered[key] = entry
        for key, old in known.items():
            if key in current or not isinstance(old, dict) or not old.get("notified_at"):
                continue  # never announced, so nothing to call off
            outgoing.append(_recovered(settings, key, old, now))
        state["conditions"] = remembered
        delivery = None
        if outgoing:
            delivery = _dispatch(settings, state, outgoing, budget or Budget(BUDGET_SECONDS), now)
            if delivery.ok:
                for key in pending:
                    remembered[key]["notified_at"] = utc_iso(now)
        _write_state(settings, state)
        return delivery
    except Exception:  # a notifier must never break a backup
        logger.exception("notification failed")
        return None


def _reminder(event: Event, since: datetime, now: datetime) -> Event:
    return replace(
        event,
        summary=f"still: {event.summary}"[:MAX_SUMMARY],
        details=(
            *event.details,
            f"first noticed {utc_iso(since)[:16]}Z, {format_age(now - since)} ago",
        ),
    )


def _recovered(settings: Settings, key: str, old: dict[str, Any], now: datetime) -> Event:
    since = parse_time(old.get("since"))
    lasted = f" after {format_age(now - since)}" if since else ""
    return Event(
        EventKind.RECOVERED,
        Severity.INFO,
        f"cleared{lasted}: {old.get('summary', key)}"[:MAX_SUMMARY],
        f"nothing to do; the health report: {command(settings, 'health')}",
        key=key,
    )


def send_test(settings: Settings, *, budget: Budget | None = None) -> tuple[TargetResult, ...]:
    """Send a test message to every target, whatever ``BACKUPS_NOTIFY_ON`` says; each
    target's result (empty when none is configured). Never raises."""
    if not settings.notify:
        return ()
    delivery = send(
        replace(settings, notify_on=NotifyOn.ALL), [test_event(settings)], budget=budget
    )
    if delivery is None:  # only when sending itself crashed (logged)
        return tuple(
            TargetResult(target_key(u), mask_url(u), False, "could not send (see the log)")
            for u in settings.notify
        )
    return delivery.results


# -- what the pages and health show ------------------------------------------------------------


def target_statuses(settings: Settings) -> list[TargetStatus]:
    """Each configured target (masked) with its last delivery, in configuration order."""
    targets = read_state(settings)["targets"]
    shown = []
    for url in settings.notify:
        entry = targets.get(target_key(url))
        entry = entry if isinstance(entry, dict) else {}
        shown.append(
            TargetStatus(
                target=mask_url(url),
                last_at=parse_time(entry.get("at")),
                ok=entry.get("ok") if isinstance(entry.get("ok"), bool) else None,
                error=str(entry["error"]) if entry.get("error") else None,
                failures=int(entry.get("failures") or 0),
                failing_since=parse_time(entry.get("failing_since")),
            )
        )
    return shown


def last_ping(settings: Settings) -> dict[str, Any] | None:
    """The last dead-man ping: ``{"at", "what", "ok", "error"}``, or None."""
    ping = read_state(settings).get("ping")
    return ping if isinstance(ping, dict) else None


def notifier_problems(settings: Settings) -> list[tuple[str, str]]:
    """(code, message) for each reason the owner may not hear of a problem: ``apprise`` not
    installed while targets are configured, or a target whose last delivery failed."""
    if not settings.notify:
        return []
    if not apprise_available():
        return [("notifier-missing", f"BACKUPS_NOTIFY is set but {MISSING_APPRISE}")]
    problems = []
    for status in target_statuses(settings):
        if status.ok is False:
            since = status.failing_since or status.last_at
            problems.append(
                (
                    "notifier-failing",
                    f"notifications to {status.target} failed {status.failures} time(s) in a "
                    f"row since {utc_iso(since)[:16] + 'Z' if since else 'the last run'}: "
                    f"{status.error}",
                )
            )
    return problems

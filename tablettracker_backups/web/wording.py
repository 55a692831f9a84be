"""How the pages put things into words: retention reasons as short chips, what a restore does
to each table, audit-log entries as sentences, backup ids as links.

Only wording: no I/O, no decisions. The core's strings and states stay as they are (they are
the JSON and CLI output); this module is where the pages make them readable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

from tablettracker_backups.audit import AuditEntry
from tablettracker_backups.display import format_age
from tablettracker_backups.restore import ROLLBACK_NOTE, TableDiff
from tablettracker_backups.states import Level, TableChange

#: A backup id anywhere in a text (the strict form is checked again by the detail page).
ID_IN_TEXT = re.compile(r"\b[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}\b")

#: Retention reasons that start with a slot name, and their chip.
_SLOT_CHIPS = {
    "minutely": "minute",
    "hourly": "hour",
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
    "yearly": "year",
}
#: Whole reasons (or their start) and their chip.
_REASON_CHIPS = (
    ("evidence of a data-loss warning", "evidence"),
    ("pinned", "pinned"),
    ("recent, one per ", "recent"),
    ("recent", "recent"),
    ("newest backup with a good checksum", "checked"),
    ("newest verified backup", "newest verified"),
    ("newest backup", "newest"),
    ("newest safety snapshot", "newest"),
    ("just taken", "just taken"),
    ("dated in the future", "future date"),
    ("retention paused", "paused"),
    ("unreadable", "unreadable"),
)

#: What each kind is called on the pages (the list's filter uses these names too).
KIND_NAMES = {
    "scheduled": "scheduled",
    "manual": "manual",
    "auto": "automatic",
    "pre-restore": "safety snapshot",
}


def reason_chip(reason: str) -> str:
    """A short label for one retention reason (the full text goes in its title)."""
    first, _, rest = reason.partition(" ")
    if first in _SLOT_CHIPS:
        return _SLOT_CHIPS[first]
    if first == "pre-restore":
        return f"safety {rest}".strip()
    if reason.startswith("recent, one per "):
        return f"recent (1 per {reason.removeprefix('recent, one per ')})"
    for start, chip in _REASON_CHIPS:
        if reason.startswith(start):
            return chip
    return reason  # never cut: a chip wraps like any text


def table_change(table: TableDiff) -> str:
    """What restoring does to one table, in words (the CLI's preview says the same)."""
    return table.describe()


def biggest_changes(tables: Iterable[TableDiff], *, share: float = 0.5) -> set[str]:
    """Names of the tables whose change is at least ``share`` of the largest one: the rows the
    restore page makes stand out."""
    changed = [t for t in tables if t.status == TableChange.CHANGED and t.rows_touched]
    if not changed:
        return set()
    largest = max(t.rows_touched for t in changed)
    return {t.name for t in changed if t.rows_touched >= share * largest}


def link_ids(
    text: object, link: Callable[[str], str], *, only: Container[str] | None = None
) -> Markup:
    """``text`` escaped, with every backup id in it made a link to ``link(id)`` (only the
    ids in ``only`` when given: a deleted backup's id stays plain text)."""
    escaped = str(escape(str(text)))

    def one(match: re.Match[str]) -> str:
        found = match.group(0)
        if only is not None and found not in only:
            return f'<span class="ttb-id">{found}</span>'
        return f'<a class="ttb-id" href="{escape(link(found))}">{found}</a>'

    return Markup(ID_IN_TEXT.sub(one, escaped))  # noqa: S704 - escaped; ids are [0-9a-zT-]


#: How an entry's ``via`` detail reads.
_VIA = {
    "web": "from these pages",
    "cli": "from the command line",
    "http": "through the scheduled-task URL",
    "task": "by the scheduled task",
}
#: Lists in an entry's details, and how each is introduced.
_LISTS = {
    "anomalies": "data-loss warning",
    "rebuilt": "copies rebuilt",
    "uploaded": "uploaded offsite",
    "offsite_deleted": "deleted offsite",
    "warnings": "warnings",
}
#: Detail keys the sentence already says, or that mean nothing to a person.
_QUIET = {"via", "job", "remote", "durations", "target", "fell_back"}


def audit_facts(entry: AuditEntry) -> list[str]:
    """The details of an audit entry as short phrases, instead of a raw dictionary."""
    details: dict[str, Any] = dict(entry.details)
    facts: list[str] = []
    via = details.get("via")
    if isinstance(via, str):
        phrase = _VIA.get(via, f"via {via}")
        if via == "http" and details.get("remote"):
            phrase += f" (from {details['remote']})"
        facts.append(phrase)
    backup_id = details.get("backup_id") or details.get("id")
    if isinstance(backup_id, str) and backup_id not in entry.message:
        facts.append(f"backup {backup_id}")
    if details.get("source_location"):
        facts.append(f"read from the {details['source_location']} copy")
    if details.get("safety_snapshot_id"):
        facts.append(f"safety snapshot {details['safety_snapshot_id']} (restore it to undo)")
    fell_back = details.get("fell_back")
    if isinstance(fell_back, list):
        # The restore's own fallbacks, then the rollback's (restore.py prefixes those).
        notes = [str(x) for x in fell_back]
        restore = [n for n in notes if not n.startswith(ROLLBACK_NOTE)]
        rollback = [n.removeprefix(ROLLBACK_NOTE) for n in notes if n.startswith(ROLLBACK_NOTE)]
        if restore:
            facts.append("copies passed over: " + "; ".join(restore))
        if rollback:
            facts.append("putting the safety snapshot back passed over: " + "; ".join(rollback))
    deleted = details.get("deleted")
    if isinstance(deleted, list) and deleted:
        facts.append(f"deleted {len(deleted)} backup(s): " + ", ".join(map(str, deleted)))
    labels = details.get("deleted_labels")
    if isinstance(labels, dict) and labels:
        facts.append(
            "labelled among them: " + ", ".join(f"{k} “{v}”" for k, v in sorted(labels.items()))
        )
    for key, phrase in _LISTS.items():
        value = details.get(key)
        if isinstance(value, list) and value:
            facts.append(f"{phrase}: " + "; ".join(map(str, value)))
    durations = details.get("durations")
    if isinstance(durations, dict) and isinstance(durations.get("total"), int | float):
        facts.append(f"took {_duration(float(durations['total']))}")
    for key, value in sorted(details.items()):
        if key in _QUIET or key in ("backup_id", "id", "source_location", "safety_snapshot_id"):
            continue
        if key in ("deleted", "deleted_labels", *_LISTS) or value in (None, "", [], {}):
            continue
        facts.append(f"{key.replace('_', ' ')}: {_plain(value)}")
    return facts


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else format_age(timedelta(seconds=seconds))


def _plain(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')} {_plain(v)}" for k, v in value.items())
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


#: What the audit log calls each action.
ACTION_NAMES = {
    "backup": "back up",
    "verify": "verify",
    "verify-all": "verify all",
    "restore": "restore",
    "prune": "prune",
    "download": "download",
    "run": "scheduled run",
    "init": "set-up",
    "task-token": "task URL: wrong token",
    "dismiss-warning": "dismiss warning",
}


def action_name(action: str) -> str:
    """The audit log's word for an action."""
    return ACTION_NAMES.get(action, action.replace("-", " "))


# -- the dashboard's verdict and problems -------------------------------------------------------

#: The verdict's first words, by health level.
VERDICT_WORDS = {Level.OK: "Safe", Level.WARNING: "Needs attention", Level.CRITICAL: "At risk"}

#: Findings in plain words, by code: what the owner reads first (the check's own message
#: stays under "Details"). A code not listed is shown by its message.
PROBLEM_WORDS = {
    "no-backups": "There is no backup yet.",
    "no-verified-backup": "No backup is both verified and of sound data.",
    "backup-age": "The newest backup is older than the schedule promises.",
    "verified-backup-age": "The newest good backup is older than the schedule promises.",
    "last-run-failed": "The last scheduled run failed.",
    "last-backup-failed": "The last backup failed.",
    "auto-snapshot-failed": "The last automatic snapshot failed.",
    "database-unreadable": "The live database cannot be read.",
    "database-corrupt": "The live database is damaged: SQLite's quick check failed.",
    "source-damaged": "The newest backup was taken from a damaged database.",
    "checksum": "A stored backup no longer matches its checksum.",
    "checks-overdue": "The newest backups' data has not been fully checked for a while.",
    "metadata": "A backup's description file cannot be read.",
    "copies-disagree": "A copy of a backup is missing, damaged or different from the others.",
    "no-scheduled-run": "Nothing takes backups on a schedule yet.",
    "schedule-stopped": "The scheduled run has stopped running.",
    "disk": "Disk space for backups is running out.",
    "clock": "A backup is dated in the future: the server's clock may be wrong.",
    "foreign-keys-rose": "More rows point at rows that are gone than in the backup before.",
    "offsite-behind": "The offsite copies are behind.",
    "offsite-error": "The last offsite upload failed.",
    "offsite-damaged": "An offsite copy is damaged.",
    "notifier-failing": "Notifications are not getting through.",
    "notifier-missing": "Notifications are set up but cannot be sent.",
    "wal-network": "The database's WAL mode is unsafe on this network file system.",
}

#: The one action that fixes a problem, by finding code (the dashboard draws the button).
PROBLEM_ACTIONS = {
    **dict.fromkeys(
        (
            "no-backups",
            "no-verified-backup",
            "backup-age",
            "verified-backup-age",
            "last-run-failed",
            "last-backup-failed",
            "auto-snapshot-failed",
        ),
        "backup",
    ),
    **dict.fromkeys(("checksum", "metadata", "copies-disagree", "checks-overdue"), "verify"),
    **dict.fromkeys(("database-unreadable", "database-corrupt", "source-damaged"), "restore"),
    **dict.fromkeys(("no-scheduled-run", "schedule-stopped"), "setup"),
    "disk": "prune",
    **dict.fromkeys(("notifier-failing", "notifier-missing"), "test"),
}


def problem_action(code: str, message: str, *, backups: int) -> str | None:
    """The one action that fixes a finding, if there is one to offer now: nothing to verify
    or prune without backups, and pruning frees no space in a folder that is not there."""
    action = PROBLEM_ACTIONS.get(code)
    if action in ("verify", "prune") and not backups:
        return None
    if code == "disk" and "free" not in message:
        return None
    return action


def problem_words(code: str, message: str) -> str:
    """A finding in plain words."""
    if code == "disk" and "free" not in message:
        code = ""  # not low space: a folder that cannot be reached, said as it is
    if code in PROBLEM_WORDS:
        return PROBLEM_WORDS[code]
    first = (message.strip().splitlines() or [""])[0]
    return first[:1].upper() + first[1:] + ("" if first.endswith(".") else ".")


def site_verdict(troubled: list[tuple[str, str]], total: int) -> str:
    """The rest of a site's verdict line: each database with a problem, by name with its
    worst problem, then how many others are safe ("both databases have a good backup ..."
    when none has one)."""
    if not troubled:
        every = "both databases have" if total == 2 else f"all {total} databases have"
        return f"{every} a good backup and no problem."
    said = " ".join(f"{name}: {why.rstrip('.')}." for name, why in troubled)
    others = total - len(troubled)
    if others == 1:
        return f"{said} The other database is safe."
    if others > 1:
        return f"{said} The other {others} databases are safe."
    return said


def recovery_words(recovery: dict[str, Any]) -> str:
    """The recovery point achieved (:func:`health.recovery_summary`), in a few words for a
    table cell: what a lost disk would cost right now."""
    achieved = recovery.get("achieved_seconds")
    if achieved is None:
        return "unknown"
    if achieved == 0:
        return "every write is in a backup"
    return f"{format_age(timedelta(seconds=achieved))} of writes not in a backup yet"


def verdict(
    level: Level,
    *,
    first_problem: str | None,
    good_at: datetime | None,
    checked_at: datetime | None,
    next_run: datetime | None,
    now: datetime,
) -> tuple[str, str]:
    """(headline, the rest) of the one line the dashboard opens with, e.g. ("Safe", "last
    good backup 12 min ago, checked 2 min ago, next in 48 min.")."""
    facts = [
        f"last good backup {format_age(now - good_at)} ago"
        if good_at is not None
        else "no good backup yet",
        f"checked {format_age(now - checked_at)} ago"
        if checked_at is not None
        else "not checked yet",
    ]
    if next_run is None:
        facts.append("no scheduled run set up")
    elif next_run >= now:
        facts.append(f"next in {format_age(next_run - now)}")
    else:
        facts.append(f"next run overdue by {format_age(now - next_run)}")
    rest = ", ".join(facts) + "."
    if level != Level.OK and first_problem:
        rest = f"{first_problem.rstrip('.')}. " + rest[:1].upper() + rest[1:]
    return VERDICT_WORDS[level], rest

"""How the pages put things into words: retention reasons as short chips, what a restore does
to each table, audit-log entries as sentences, backup ids as links.

Only wording: no I/O, no decisions. The core's strings and states stay as they are (they are
the JSON and CLI output); this module is where the pages make them readable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from markupsafe import Markup, escape

from tablettracker_backups.audit import AuditEntry
from tablettracker_backups.display import format_age
from tablettracker_backups.restore import ROLLBACK_NOTE, TableDiff
from tablettracker_backups.states import TableChange

#: A backup id anywhere in a text (the strict form is checked again by the detail page).
ID_IN_TEXT = re.compile(r"\b[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}\b")

#: Retention reasons that start with a slot name, and their chip.
_SLOT_CHIPS = {
    "hourly": "hour",
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
    "yearly": "year",
}
#: Whole reasons (or their start) and their chip.
_REASON_CHIPS = (
    ("newest backup with a good checksum", "checked"),
    ("newest verified backup", "newest verified"),
    ("newest backup", "newest"),
    ("just taken", "just taken"),
    ("dated in the future", "future date"),
    ("retention paused", "paused"),
    ("unreadable", "unreadable"),
)

#: What each kind is called on the pages (the list's filter uses these names too).
KIND_NAMES = {"scheduled": "scheduled", "manual": "manual", "pre-restore": "safety snapshot"}


def reason_chip(reason: str) -> str:
    """A short label for one retention reason (the full text goes in its title)."""
    first, _, rest = reason.partition(" ")
    if first in _SLOT_CHIPS:
        return _SLOT_CHIPS[first]
    if first == "pre-restore":
        return f"safety {rest}".strip()
    for start, chip in _REASON_CHIPS:
        if reason.startswith(start):
            return chip
    return reason[:16]


def table_change(table: TableDiff) -> str:
    """What restoring does to one table, in words."""
    if table.status == TableChange.ADDED:
        return f"will be brought back ({table.backup_rows or 0:,} rows)"
    if table.status == TableChange.REMOVED:
        return f"will be dropped ({table.live_rows or 0:,} rows now)"
    if table.status == TableChange.CHANGED:
        return f"rows: {table.live_rows or 0:,} → {table.backup_rows or 0:,}"
    return f"same row count ({table.live_rows or 0:,})"


def biggest_changes(tables: Iterable[TableDiff], *, share: float = 0.5) -> set[str]:
    """Names of the tables whose change is at least ``share`` of the largest one: the rows the
    restore page makes stand out."""
    changed = [t for t in tables if t.status != TableChange.SAME and t.delta != 0]
    if not changed:
        return set()
    largest = max(abs(t.delta) for t in changed)
    return {t.name for t in changed if abs(t.delta) >= share * largest}


def link_ids(text: object, link: Callable[[str], str]) -> Markup:
    """``text`` escaped, with every backup id in it made a link to ``link(id)``."""
    escaped = str(escape(str(text)))
    return Markup(  # noqa: S704 - the text is escaped above; ids match [0-9a-zT-]
        ID_IN_TEXT.sub(
            lambda m: f'<a class="ttb-id" href="{escape(link(m.group(0)))}">{m.group(0)}</a>',
            escaped,
        )
    )


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

"""The audit log: who or what did which action, when, with what result (JSON lines)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tablettracker_backups.errors import StorageError
from tablettracker_backups.fsutil import describe_os_error, ensure_private_dir
from tablettracker_backups.metadata import utc_iso
from tablettracker_backups.settings import Settings

logger = logging.getLogger(__name__)

AUDIT_LOG = "audit.jsonl"


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    at: datetime
    action: str
    actor: str
    ok: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to an owner-only log file; raises :class:`StorageError`."""
    line = json.dumps(record, sort_keys=True, default=str) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from exc


def record(
    settings: Settings,
    *,
    action: str,
    actor: str,
    ok: bool,
    message: str,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append an entry to the audit log and return it."""
    entry = AuditEntry(datetime.now(timezone.utc), action, actor, ok, message, details or {})
    ensure_private_dir(settings.state_dir)
    append_jsonl(
        settings.state_dir / AUDIT_LOG,
        {
            "at": utc_iso(entry.at),
            "action": action,
            "actor": actor,
            "ok": ok,
            "message": message,
            "details": entry.details,
        },
    )
    return entry


def read_entries(settings: Settings, *, limit: int = 200) -> list[AuditEntry]:
    """The newest ``limit`` entries, newest first; unreadable lines are skipped."""
    path = settings.state_dir / AUDIT_LOG
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from exc
    entries: list[AuditEntry] = []
    for line in reversed(lines):
        if len(entries) >= limit:
            break
        try:
            raw = json.loads(line)
            at = datetime.fromisoformat(str(raw["at"]).replace("Z", "+00:00"))
            entries.append(
                AuditEntry(
                    at,
                    str(raw["action"]),
                    str(raw["actor"]),
                    bool(raw["ok"]),
                    str(raw.get("message", "")),
                    dict(raw.get("details") or {}),
                )
            )
        except (ValueError, KeyError, TypeError):
            logger.warning("skipping an unreadable audit log line")
    return entries


def mentions(entry: AuditEntry, backup_id: str) -> bool:
    """Whether an entry is about ``backup_id`` (its message or any of its details)."""
    return backup_id in entry.message or backup_id in json.dumps(entry.details, default=str)

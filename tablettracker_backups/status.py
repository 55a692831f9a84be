"""The status files in the backup folder: ``status.json`` and the ``alerts.jsonl`` log.

``status.json`` holds what the pages and ``status`` show without redoing the work: when the
scheduled run last ran and how it ended, and the latest health report. Warnings and worse are
also appended to ``alerts.jsonl``, one JSON object a line, for a person or a mail filter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from tablettracker_backups.audit import append_jsonl
from tablettracker_backups.fsutil import atomic_write_bytes, ensure_private_dir
from tablettracker_backups.metadata import utc_iso
from tablettracker_backups.settings import Settings

STATUS_FILE = "status.json"
ALERT_LOG = "alerts.jsonl"


def read_status(settings: Settings) -> dict[str, Any]:
    """The status file's content, or ``{}`` when missing or unreadable."""
    try:
        data = json.loads((settings.state_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_status(settings: Settings, **changes: Any) -> None:
    """Merge ``changes`` into the status file (atomically)."""
    ensure_private_dir(settings.state_dir)
    status = read_status(settings)
    status.update(changes)
    atomic_write_bytes(
        settings.state_dir / STATUS_FILE,
        (json.dumps(status, indent=2, sort_keys=True, default=str) + "\n").encode(),
    )


def record_run(settings: Settings, *, at: datetime, result: dict[str, Any]) -> None:
    """Remember when ``run`` last ran, so health can notice a schedule that stopped."""
    update_status(settings, last_run_at=utc_iso(at), last_run=result)


def write_status(
    settings: Settings,
    *,
    health: Mapping[str, Any],
    alerts: Iterable[Mapping[str, Any]],
    at: datetime,
) -> None:
    """Save a health report (its JSON form) and append its ``alerts`` to the alert log."""
    update_status(settings, health=dict(health))
    for alert in alerts:
        append_jsonl(settings.state_dir / ALERT_LOG, {"at": utc_iso(at), **alert})

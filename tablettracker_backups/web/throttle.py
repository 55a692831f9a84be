"""Wrong tokens at the token endpoints: counted per client address, written to the audit log
at a bounded rate, and refused outright (429 with ``Retry-After``) after too many.

The count lives in ``task-auth.json`` in the backup folder, under a file lock, so every worker
process of the host app sees the same numbers. A token of 16 or more random characters cannot
be guessed at any rate a web server allows; the point is that guessing is seen, and stopped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from tablettracker_backups import audit
from tablettracker_backups.errors import BackupError
from tablettracker_backups.fsutil import atomic_write_bytes, ensure_private_dir
from tablettracker_backups.locking import folder_lock
from tablettracker_backups.metadata import parse_utc, utc_iso
from tablettracker_backups.settings import Settings

logger = logging.getLogger(__name__)

STATE_FILE = "task-auth.json"
LOCK_FILE = "task-auth.lock"
#: Failures from one address within this window count together.
WINDOW = timedelta(minutes=10)
#: From this many failures in a window on, the address is refused until the window ends.
LIMIT = 10
#: At most one audit entry per address per this long (the entry counts what it stands for).
LOG_EVERY = timedelta(minutes=1)
#: Addresses remembered at most (the oldest are forgotten first), so the file stays small.
MAX_ADDRESSES = 500


@dataclass(frozen=True)
class Verdict:
    """What to do with a request from an address."""

    #: Seconds until the address may try again; 0 when it may try now.
    retry_after: int
    failures: int


def _read(settings: Settings) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((settings.state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def _since(entry: dict[str, Any]) -> datetime | None:
    try:
        return parse_utc(entry.get("since"), "since")
    except BackupError:
        return None


def check(settings: Settings, address: str, *, now: datetime | None = None) -> Verdict:
    """Whether ``address`` is refused now (read only; no lock needed for a read)."""
    now = now or datetime.now(timezone.utc)
    entry = _read(settings).get(address)
    since = _since(entry) if entry else None
    if entry is None or since is None or now - since >= WINDOW:
        return Verdict(0, 0)
    failures = int(entry.get("failures") or 0)
    if failures < LIMIT:
        return Verdict(0, failures)
    return Verdict(max(1, int((since + WINDOW - now).total_seconds() + 0.999)), failures)


def record_failure(
    settings: Settings, address: str, *, refused: bool, now: datetime | None = None
) -> Verdict:
    """Count one failed (or refused) attempt from ``address`` and write the audit entry when
    one is due. Never raises: trouble with the file is logged, and the request is refused as
    it would be anyway."""
    now = now or datetime.now(timezone.utc)
    try:
        ensure_private_dir(settings.state_dir)
        with folder_lock(settings, LOCK_FILE, timeout=2.0, busy="task-auth file busy"):
            state = _read(settings)
            entry = state.get(address) or {}
            since = _since(entry)
            if since is None or now - since >= WINDOW:
                entry = {"since": utc_iso(now), "failures": 0, "unlogged": 0, "logged_at": None}
            entry["failures"] = int(entry.get("failures") or 0) + 1
            entry["unlogged"] = int(entry.get("unlogged") or 0) + 1
            logged_at = entry.get("logged_at")
            due = not logged_at or now - parse_utc(logged_at, "logged_at") >= LOG_EVERY
            reached = entry["failures"] == LIMIT
            if due or reached:
                _audit(settings, address, entry, refused=refused, reached=reached)
                entry["logged_at"], entry["unlogged"] = utc_iso(now), 0
            state[address] = entry
            if len(state) > MAX_ADDRESSES:
                newest = sorted(state, key=lambda a: str(state[a].get("since")), reverse=True)
                state = {a: state[a] for a in newest[:MAX_ADDRESSES]}
            atomic_write_bytes(
                settings.state_dir / STATE_FILE, (json.dumps(state, sort_keys=True) + "\n").encode()
            )
    except BackupError as exc:
        logger.error("could not count a failed task-token attempt: %s", exc)
    return check(settings, address, now=now)


def _audit(
    settings: Settings, address: str, entry: dict[str, Any], *, refused: bool, reached: bool
) -> None:
    count = int(entry["unlogged"])
    if reached:
        message = (
            f"{LIMIT} wrong task tokens from {address} within {int(WINDOW.total_seconds() // 60)}"
            " min: the task URL refuses that address until then"
        )
    elif refused:
        message = f"{count} more attempt(s) from {address} refused while it is blocked"
    else:
        message = f"wrong or missing task token from {address}" + (
            f" ({count} attempts since the last entry)" if count > 1 else ""
        )
    audit.record(
        settings,
        action="task-token",
        actor="task endpoint",
        ok=False,
        message=message,
        details={"via": "http", "remote": address, "attempts": count},
    )

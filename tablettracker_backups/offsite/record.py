"""The local record of the offsite store, so ``list``, ``health`` and the dashboard can show
offsite copies without calling the network.

``offsite.json`` in the primary folder remembers, per backup uploaded, when it was uploaded and
how it was checked, when it was last read back in full and whether that passed, plus the last
sync's outcome. It is rewritten atomically after each step of a sync, so an interrupted run
loses at most the step it was in. It never holds credentials. A record made for another bucket
or prefix is ignored (the configuration changed; the next sync rebuilds it from a listing).

What the record means (how far behind, what to upload) is :mod:`.policy`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from tablettracker_backups.errors import BackupError, MetadataError
from tablettracker_backups.fsutil import atomic_write_bytes, ensure_private_dir
from tablettracker_backups.layout import ID_PATTERN
from tablettracker_backups.metadata import id_time, parse_utc, utc_iso
from tablettracker_backups.settings import Settings
from tablettracker_backups.storage.rclone import redact

logger = logging.getLogger(__name__)

STATE_FILE = "offsite.json"
STATE_VERSION = 1


def describe_target(settings: Settings) -> str:
    """Which store a record belongs to: bucket, prefix and endpoint (never credentials)."""
    s3 = settings.s3
    if s3 is None:
        if settings.rclone is not None:
            return f"rclone {redact(settings.rclone.remote)}"
        return ""
    return f"s3://{s3.bucket}/{s3.prefix}" + (f" at {s3.endpoint_url}" if s3.endpoint_url else "")


@dataclass(frozen=True)
class OffsiteCopy:
    """What is known locally about one backup's offsite copy."""

    id: str
    kind: str
    size: int
    sha256: str
    uploaded_at: datetime
    upload_check: str
    #: The last full read-back (download + decompress + integrity check), if any.
    read_back_at: datetime | None = None
    ok: bool = True
    error: str | None = None
    #: Fingerprints of the keys the offsite copy is encrypted to; empty for a plain copy.
    recipients: tuple[str, ...] = ()

    @property
    def created_at(self) -> datetime:
        """When the backup was taken (from its id)."""
        return id_time(self.id)

    @property
    def checked_at(self) -> datetime:
        """The last time the copy's bytes were confirmed (read back, else at upload)."""
        return self.read_back_at or self.uploaded_at

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": self.kind,
            "size": self.size,
            "sha256": self.sha256,
            "uploaded_at": utc_iso(self.uploaded_at),
            "upload_check": self.upload_check,
            "read_back_at": utc_iso(self.read_back_at) if self.read_back_at else None,
            "ok": self.ok,
            "error": self.error,
            "recipients": list(self.recipients),
        }

    @classmethod
    def from_dict(cls, backup_id: str, doc: dict[str, Any]) -> OffsiteCopy:
        """Parse one record; raises :class:`MetadataError` or ``KeyError``/``TypeError``."""
        if not ID_PATTERN.match(backup_id):
            raise MetadataError(f"bad id {backup_id[:40]!r} in the offsite record")
        read_back = doc.get("read_back_at")
        recipients = doc.get("recipients") or []
        if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
            raise MetadataError("bad recipients in the offsite record")
        return cls(
            id=backup_id,
            kind=str(doc["kind"]),
            size=int(doc["size"]),
            sha256=str(doc["sha256"]),
            uploaded_at=parse_utc(doc["uploaded_at"], "uploaded_at"),
            upload_check=str(doc.get("upload_check", "")),
            read_back_at=parse_utc(read_back, "read_back_at") if read_back else None,
            ok=bool(doc.get("ok", True)),
            error=None if doc.get("error") is None else str(doc["error"]),
            recipients=tuple(recipients),
        )


@dataclass(frozen=True)
class OffsiteState:
    """The whole local record."""

    target: str = ""
    copies: dict[str, OffsiteCopy] = field(default_factory=dict)
    last_sync_at: datetime | None = None
    last_sync_ok: bool | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    #: When the store was last listed in full (the record matched the store then).
    listed_at: datetime | None = None
    #: Offsite backups were pruned and their shared objects not yet collected.
    collect_pending: bool = False

    def with_copy(self, copy: OffsiteCopy) -> OffsiteState:
        """A new state with ``copy`` added or replaced."""
        return replace(self, copies={**self.copies, copy.id: copy})

    def without(self, backup_ids: Iterable[str]) -> OffsiteState:
        """A new state without the named copies."""
        gone = set(backup_ids)
        return replace(self, copies={k: v for k, v in self.copies.items() if k not in gone})

    def to_json(self) -> str:
        """The file's text."""

        def iso(moment: datetime | None) -> str | None:
            return utc_iso(moment) if moment else None

        document = {
            "version": STATE_VERSION,
            "target": self.target,
            "copies": {k: v.to_dict() for k, v in sorted(self.copies.items())},
            "last_sync_at": iso(self.last_sync_at),
            "last_sync_ok": self.last_sync_ok,
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "listed_at": iso(self.listed_at),
            "collect_pending": self.collect_pending,
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"


def read_state(settings: Settings) -> OffsiteState:
    """The record for the configured store; empty when missing, unreadable or for another."""
    target = describe_target(settings)
    path = settings.state_dir / STATE_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return OffsiteState(target=target)
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable offsite record %s: %s", path, exc)
        return OffsiteState(target=target)
    if not isinstance(document, dict) or document.get("target") != target:
        return OffsiteState(target=target)
    copies: dict[str, OffsiteCopy] = {}
    raw_copies = document.get("copies")
    for backup_id, doc in (raw_copies if isinstance(raw_copies, dict) else {}).items():
        try:
            copies[backup_id] = OffsiteCopy.from_dict(str(backup_id), doc)
        except (KeyError, TypeError, ValueError, BackupError):
            logger.warning("ignoring a malformed offsite record entry")

    def moment(key: str) -> datetime | None:
        value = document.get(key)
        if not value:
            return None
        try:
            return parse_utc(value, key)
        except MetadataError:
            return None

    ok = document.get("last_sync_ok")
    error = document.get("last_error")
    return OffsiteState(
        target=target,
        copies=copies,
        last_sync_at=moment("last_sync_at"),
        last_sync_ok=ok if isinstance(ok, bool) else None,
        last_error=None if error is None else str(error),
        last_error_at=moment("last_error_at"),
        listed_at=moment("listed_at"),
        collect_pending=document.get("collect_pending") is True,
    )


def write_state(settings: Settings, state: OffsiteState) -> None:
    """Save the record atomically, owner-only; raises :class:`StorageError`."""
    ensure_private_dir(settings.state_dir)
    atomic_write_bytes(settings.state_dir / STATE_FILE, state.to_json().encode())


def record_copy_result(
    state: OffsiteState, backup_id: str, *, ok: bool, error: str | None, at: datetime
) -> OffsiteState:
    """A new state with a full read-back's outcome recorded (no-op for unknown ids)."""
    copy = state.copies.get(backup_id)
    if copy is None:
        return state
    return state.with_copy(replace(copy, read_back_at=at, ok=ok, error=error))

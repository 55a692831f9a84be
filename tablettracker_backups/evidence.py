"""Data-loss warnings, and the backups kept as their evidence.

The day a script deletes rows, the backup itself works perfectly; only the comparison with the
previous good backup (:mod:`tablettracker_backups.anomaly`) shows the loss, and the previous
backup is the one that still holds the rows. So when a backup finds rows lost or foreign-key
violations rising, that previous backup is pinned at once, and a warning is recorded here
(``data-warnings.json`` in the backup folder, owner-only, replaced atomically). Retention keeps
the evidence of every open warning whatever its pin says (:func:`protected`), health reports
each open warning, and the pages offer to preview the restore, keep the backup for good, or
dismiss the warning, which lets retention decide about the evidence again.

Every write happens under the operation lock: recording inside a backup (which holds it),
keeping and dismissing by taking it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from tablettracker_backups import audit
from tablettracker_backups.anomaly import Anomaly, AnomalyKind
from tablettracker_backups.errors import BackupError, BackupNotFound
from tablettracker_backups.fsutil import atomic_write_bytes, ensure_private_dir
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import parse_utc, utc_iso, validate_backup_id
from tablettracker_backups.pins import write_pin
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore

logger = logging.getLogger(__name__)

WARNINGS_FILE = "data-warnings.json"
#: Who the audit log names for what this module does on its own.
AUTOMATIC = "automatic (data-loss warning)"


@dataclass(frozen=True)
class DataWarning:
    """Data that looked lost in one backup, and the backup that still holds it."""

    #: The backup in which the loss was found (also the warning's id).
    backup_id: str
    #: The previous good backup, which still holds the rows.
    evidence_id: str
    found_at: datetime
    #: The anomalies, as :meth:`Anomaly.to_dict` wrote them.
    anomalies: tuple[dict[str, Any], ...]
    #: The evidence was not pinned before: dismissing the warning unpins it again.
    auto_pinned: bool = True
    #: The owner chose to keep the evidence for good: dismissing leaves its pin.
    kept: bool = False
    dismissed_at: datetime | None = None
    dismissed_by: str | None = None

    @property
    def open(self) -> bool:
        """Not dismissed yet."""
        return self.dismissed_at is None

    @property
    def reason(self) -> str:
        """What was lost, in a few words (the evidence's pin reason)."""
        return "; ".join(_short(a) for a in self.anomalies) or "data changed suspiciously"

    def sentences(self) -> list[str]:
        """What was lost, one plain sentence per anomaly."""
        return [_sentence(a, self.evidence_id) for a in self.anomalies]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the warnings file, ``health --json``)."""
        return {
            "backup_id": self.backup_id,
            "evidence_id": self.evidence_id,
            "found_at": utc_iso(self.found_at),
            "anomalies": list(self.anomalies),
            "auto_pinned": self.auto_pinned,
            "kept": self.kept,
            "dismissed_at": utc_iso(self.dismissed_at) if self.dismissed_at else None,
            "dismissed_by": self.dismissed_by,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DataWarning:
        """Read one back; raises ``ValueError``/``KeyError``/``TypeError``/BackupError."""
        dismissed = raw.get("dismissed_at")
        return cls(
            backup_id=validate_backup_id(raw["backup_id"]),
            evidence_id=validate_backup_id(raw["evidence_id"]),
            found_at=parse_utc(raw["found_at"], "found_at"),
            anomalies=tuple(a for a in raw.get("anomalies") or () if isinstance(a, dict)),
            auto_pinned=bool(raw.get("auto_pinned", True)),
            kept=bool(raw.get("kept", False)),
            dismissed_at=parse_utc(dismissed, "dismissed_at") if dismissed else None,
            dismissed_by=str(raw["dismissed_by"]) if raw.get("dismissed_by") else None,
        )


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _short(anomaly: Mapping[str, Any]) -> str:
    before, after = anomaly.get("before"), anomaly.get("after")
    if anomaly.get("kind") == AnomalyKind.ROWS_DROPPED:
        return f"rows lost in {anomaly.get('table')}: {_count(before)} → {_count(after)}"
    if anomaly.get("kind") == AnomalyKind.FOREIGN_KEYS_ROSE:
        return f"foreign-key violations rose: {_count(before)} → {_count(after)}"
    return str(anomaly.get("kind") or "change")


def _sentence(anomaly: Mapping[str, Any], evidence_id: str) -> str:
    before, after = anomaly.get("before"), anomaly.get("after")
    if anomaly.get("kind") == AnomalyKind.ROWS_DROPPED:
        lost = before - after if isinstance(before, int) and isinstance(after, int) else None
        share = f" ({lost / before:.0%})" if lost is not None and before else ""
        return (
            f"Table {anomaly.get('table')} lost {_count(lost)} of its {_count(before)} rows"
            f"{share}. Backup {evidence_id} still has them."
        )
    if anomaly.get("kind") == AnomalyKind.FOREIGN_KEYS_ROSE:
        return (
            f"Rows that point at missing rows rose from {_count(before)} to {_count(after)}: "
            f"rows they belonged to may be gone. Backup {evidence_id} is from before."
        )
    return str(anomaly.get("message") or "")


# -- reading -----------------------------------------------------------------------------------


def read_warnings(settings: Settings) -> list[DataWarning]:
    """Every warning recorded, newest first; a missing or unreadable file reads as none (an
    unreadable entry is skipped and logged)."""
    try:
        document = json.loads((settings.state_dir / WARNINGS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        logger.error("cannot read %s: %s", WARNINGS_FILE, exc)
        return []
    found: list[DataWarning] = []
    entries = document.get("warnings") if isinstance(document, dict) else None
    for raw in entries if isinstance(entries, list) else []:
        try:
            found.append(DataWarning.from_dict(raw))
        except (BackupError, ValueError, KeyError, TypeError, AttributeError):
            logger.error("skipping an unreadable entry in %s", WARNINGS_FILE)
    return sorted(found, key=lambda w: (w.found_at, w.backup_id), reverse=True)


def open_warnings(settings: Settings) -> list[DataWarning]:
    """The warnings the owner has not dismissed, newest first."""
    return [w for w in read_warnings(settings) if w.open]


def protected(settings: Settings) -> dict[str, str]:
    """Evidence backup id -> why it must be kept, for every open warning (retention keeps
    these whatever their pin says)."""
    kept: dict[str, str] = {}
    for warning in reversed(open_warnings(settings)):
        kept[warning.evidence_id] = warning.reason
    return kept


def _write(settings: Settings, warnings: Iterable[DataWarning]) -> None:
    ensure_private_dir(settings.state_dir)
    document = {"warnings": [w.to_dict() for w in warnings]}
    atomic_write_bytes(
        settings.state_dir / WARNINGS_FILE,
        (json.dumps(document, indent=2, sort_keys=True) + "\n").encode(),
    )


def _audit(settings: Settings, **entry: Any) -> None:
    try:
        audit.record(settings, **entry)
    except BackupError as exc:
        logger.error("could not write the audit log: %s", exc)


# -- recording (inside a backup, under its lock) -------------------------------------------------


def record_anomalies(
    settings: Settings, store: BackupStore, backup_id: str, anomalies: Iterable[Anomaly]
) -> DataWarning | None:
    """Record a warning for the data-loss anomalies of a new backup, and pin the backup that
    still holds the data. The caller holds the operation lock.

    Information-only anomalies (a schema change) record nothing. Never raises: the backup
    itself succeeded, and a warning that cannot be written is logged (the notification and the
    backup's own metadata still carry it).
    """
    serious = [a for a in anomalies if not a.info_only]
    if not serious:
        return None
    evidence_id = serious[0].previous_id
    try:
        already = store.get(evidence_id).pinned
    except BackupError:
        already = False
    warning = DataWarning(
        backup_id=backup_id,
        evidence_id=evidence_id,
        found_at=datetime.now(timezone.utc),
        anomalies=tuple(a.to_dict() for a in serious),
        auto_pinned=not already,
    )
    try:
        others = [w for w in read_warnings(settings) if w.backup_id != backup_id]
        _write(settings, [warning, *others])
    except BackupError as exc:
        logger.error("could not record the data-loss warning of %s: %s", backup_id, exc)
    if not already:
        try:
            write_pin(store, evidence_id, pinned=True)
        except BackupError as exc:
            # Retention still keeps it: prune reads the warnings file, not only the pin.
            logger.error("could not pin the evidence backup %s: %s", evidence_id, exc)
        else:
            _audit(
                settings,
                action="pin",
                actor=AUTOMATIC,
                ok=True,
                message=f"pinned backup {evidence_id}: {warning.reason}",
                details={"id": evidence_id, "found_in": backup_id, "reason": warning.reason},
            )
    return warning


# -- the owner's answers -----------------------------------------------------------------------


def _find(settings: Settings, backup_id: str) -> tuple[list[DataWarning], DataWarning]:
    validate_backup_id(backup_id)
    warnings = read_warnings(settings)
    for warning in warnings:
        if warning.backup_id == backup_id and warning.open:
            return warnings, warning
    raise BackupNotFound(f"no open data-loss warning for backup {backup_id}")


def _replace(warnings: list[DataWarning], old: DataWarning, new: DataWarning) -> list[DataWarning]:
    return [new if w is old else w for w in warnings]


def keep(settings: Settings, backup_id: str, *, actor: str) -> DataWarning:
    """Keep the evidence of the warning found in ``backup_id`` for good: it stays pinned after
    the warning is dismissed, until someone unpins it. Returns the updated warning.

    Raises :class:`BackupNotFound` (no such open warning, or its evidence is gone),
    :class:`LockedError`, :class:`MetadataError` or :class:`StorageError`.
    """
    with operation_lock(settings):
        warnings, warning = _find(settings, backup_id)
        store = BackupStore(settings)
        write_pin(store, warning.evidence_id, pinned=True)
        updated = replace(warning, kept=True)
        _write(settings, _replace(warnings, warning, updated))
    _audit(
        settings,
        action="pin",
        actor=actor,
        ok=True,
        message=f"kept backup {warning.evidence_id} for good: {warning.reason}",
        details={"id": warning.evidence_id, "found_in": backup_id},
    )
    return updated


def note_owner_pin(settings: Settings, evidence_id: str) -> None:
    """A person pinned ``evidence_id`` themselves: dismissing its warnings must leave that pin.
    Never raises."""
    try:
        with operation_lock(settings):
            warnings = read_warnings(settings)
            if not any(w.open and w.evidence_id == evidence_id for w in warnings):
                return
            _write(
                settings,
                [
                    replace(w, kept=True) if w.open and w.evidence_id == evidence_id else w
                    for w in warnings
                ],
            )
    except BackupError as exc:
        logger.error("could not note the pin of %s: %s", evidence_id, exc)


def dismiss(settings: Settings, backup_id: str, *, actor: str) -> DataWarning:
    """Dismiss the warning found in ``backup_id`` (the change was intended). The evidence is
    unpinned again if this module pinned it and nobody chose to keep it, so retention decides
    about it as about any backup. Returns the dismissed warning.

    Raises :class:`BackupNotFound` (no such open warning), :class:`LockedError` or
    :class:`StorageError`.
    """
    with operation_lock(settings):
        warnings, warning = _find(settings, backup_id)
        done = replace(warning, dismissed_at=datetime.now(timezone.utc), dismissed_by=actor)
        warnings = _replace(warnings, warning, done)
        # Another open warning may point at the same backup: it keeps the pin.
        still_needed = any(w.open and w.evidence_id == warning.evidence_id for w in warnings)
        unpinned = False
        if warning.auto_pinned and not warning.kept and not still_needed:
            try:
                write_pin(BackupStore(settings), warning.evidence_id, pinned=False)
                unpinned = True
            except BackupNotFound:
                pass  # already gone: nothing left to unpin
        _write(settings, warnings)
    _audit(
        settings,
        action="dismiss-warning",
        actor=actor,
        ok=True,
        message=(
            f"dismissed the data-loss warning of backup {backup_id}"
            + (f"; backup {warning.evidence_id} is no longer pinned" if unpinned else "")
        ),
        details={"id": backup_id, "evidence": warning.evidence_id, "reason": warning.reason},
    )
    return done

"""Anomalies: a new backup compared with the previous good one, at backup time.

Backups exist for the day a bad script or a bug deletes data; that day the backup itself works
perfectly. So each backup's row counts, foreign-key violations and schema are compared with the
previous good backup's, and what looks like lost data is recorded in the new backup's metadata
(``extra["anomalies"]``) and reported, naming the backup that still has the rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tablettracker_backups import store as store_module
from tablettracker_backups.metadata import BackupMetadata
from tablettracker_backups.states import State
from tablettracker_backups.store import BackupInfo

logger = logging.getLogger(__name__)

#: Tables smaller than this in the previous backup are not checked: a few rows coming and going
#: in a small table is ordinary use, not data loss.
MIN_ROWS = 100
#: The key in ``BackupMetadata.extra`` that holds a backup's anomalies.
EXTRA_KEY = "anomalies"


class AnomalyKind(State):
    """What looked wrong."""

    ROWS_DROPPED = "rows-dropped"
    FOREIGN_KEYS_ROSE = "foreign-keys-rose"
    SCHEMA_CHANGED = "schema-changed"


@dataclass(frozen=True)
class Anomaly:
    """One suspicious change since the previous good backup."""

    kind: AnomalyKind
    message: str
    previous_id: str
    table: str | None = None
    before: int | None = None
    after: int | None = None

    @property
    def info_only(self) -> bool:
        """A schema change is worth knowing, not a warning."""
        return self.kind == AnomalyKind.SCHEMA_CHANGED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (metadata ``extra``, ``run --json``)."""
        return {
            "kind": self.kind,
            "message": self.message,
            "previous_id": self.previous_id,
            "table": self.table,
            "before": self.before,
            "after": self.after,
        }


def foreign_key_violations(meta: BackupMetadata) -> int:
    """The snapshot's foreign-key violations: ``findings.foreign_key_violations`` where the
    metadata has findings (the trust issue's field), else the verification's count."""
    findings = getattr(meta, "findings", None)
    value = (
        findings.get("foreign_key_violations")
        if isinstance(findings, dict)
        else getattr(findings, "foreign_key_violations", None)
    )
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return meta.verification.foreign_key_violations


def previous_good(infos: Iterable[BackupInfo]) -> BackupInfo | None:
    """The newest good regular backup (never a pre-restore snapshot) with metadata."""
    infos = [i for i in infos if i.metadata is not None]
    newest_good = getattr(store_module, "newest_good", None)
    if newest_good is not None:
        found = newest_good(infos, regular=True)
        return found if isinstance(found, BackupInfo) else None
    regular = [i for i in infos if i.kind != "pre-restore" and getattr(i, "good", i.verified)]
    return max(regular, key=lambda i: (i.created_at, i.id), default=None)


def find_anomalies(
    previous: BackupMetadata,
    current: BackupMetadata,
    *,
    drop: float,
    command: str = "tablettracker-backups",
) -> tuple[Anomaly, ...]:
    """What changed suspiciously from ``previous`` to ``current``.

    A table of at least :data:`MIN_ROWS` rows that lost more than ``drop`` (a fraction) of
    them, a table that is gone, more foreign-key violations, a different schema (information).
    ``command`` is the tool the hint names (``flask backups`` under a host app).
    """
    found: list[Anomaly] = []
    preview = f"{command} restore {previous.id} --preview"
    for table, before in sorted(previous.row_counts.items()):
        if before < MIN_ROWS:
            continue
        after = current.row_counts.get(table, 0)
        lost = before - after
        if lost <= 0 or lost / before <= drop:
            continue
        gone = "is gone" if table not in current.row_counts else f"has {after:,} rows"
        found.append(
            Anomaly(
                AnomalyKind.ROWS_DROPPED,
                f"table {table} {gone}; backup {previous.id} has {before:,} "
                f"(-{lost / before:.0%}): those rows are still in {previous.id}; "
                f"compare with: {preview}",
                previous.id,
                table,
                before,
                after,
            )
        )
    before_fk, after_fk = foreign_key_violations(previous), foreign_key_violations(current)
    if after_fk > before_fk:
        found.append(
            Anomaly(
                AnomalyKind.FOREIGN_KEYS_ROSE,
                f"foreign-key violations rose from {before_fk:,} (backup {previous.id}) to "
                f"{after_fk:,}: rows point at parents that are gone; compare with: {preview}",
                previous.id,
                None,
                before_fk,
                after_fk,
            )
        )
    if previous.schema_fingerprint != current.schema_fingerprint:
        added = sorted(set(current.row_counts) - set(previous.row_counts))
        removed = sorted(set(previous.row_counts) - set(current.row_counts))
        change = "; ".join(
            part
            for part in (
                f"new tables: {', '.join(added)}" if added else "",
                f"tables gone: {', '.join(removed)}" if removed else "",
            )
            if part
        )
        found.append(
            Anomaly(
                AnomalyKind.SCHEMA_CHANGED,
                f"the schema changed since backup {previous.id}"
                + (f" ({change})" if change else " (tables, columns or indexes)"),
                previous.id,
            )
        )
    return tuple(found)


def recorded_anomalies(meta: BackupMetadata) -> list[dict[str, Any]]:
    """The anomalies recorded in a backup's metadata (an empty list for older backups)."""
    value = meta.extra.get(EXTRA_KEY)
    return [a for a in value if isinstance(a, dict)] if isinstance(value, list) else []

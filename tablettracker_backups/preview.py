"""What a restore would change, computed without changing anything.

Row counts alone say "same" for a table whose every price doubled. So each table's *content* is
compared: a digest of its rows in rowid order (primary-key order for a WITHOUT ROWID table), of
the backup and of the live database; where they differ, the rows the restore would bring back,
take out and change are counted by key, with SQL over the two copies attached side by side.

Both sides are private copies, so the app is held no longer than for a backup: the backup is
decompressed and its SHA-256 checked into a scratch file (as a restore does), and the live
database is copied page by page inside one read transaction. Comparing costs a read of both
copies; past the time budget the remaining tables say only whether their row counts differ
(``not compared``), and a table compared but not counted says only "content differs". Without a
readable local copy of the backup (an encrypted one with no identity, one kept only offsite),
the preview falls back to the row counts in its metadata, and says so.

The scratch files live in a folder of their own inside the backup folder (``.preview-*``): a
preview takes no lock, so the temporary files a backup's clean-up removes are not the place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tablettracker_backups.encryption import Identity, missing_identity, unseal_metadata
from tablettracker_backups.errors import AgeIdentityError, DatabaseError, RestoreError
from tablettracker_backups.fsutil import SCRATCH_DIR_PREFIX, ensure_private_dir
from tablettracker_backups.metadata import BackupMetadata, utc_iso
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import (
    check_sqlite_file,
    connect,
    quote_identifier,
    row_counts,
    schema_fingerprint,
    take_snapshot,
)
from tablettracker_backups.sound_copy import extract_sound_copy, resolve_backup
from tablettracker_backups.states import TableChange
from tablettracker_backups.store import BackupStore

logger = logging.getLogger(__name__)

#: Seconds a preview may spend comparing content before it reports what it has.
DEFAULT_BUDGET = 30.0
#: SQLite virtual-machine steps between two looks at the clock.
_PROGRESS_STEPS = 10_000
_WITHOUT_ROWID = re.compile(r"\bWITHOUT\s+ROWID\s*;?\s*\Z", re.IGNORECASE)


@dataclass(frozen=True)
class TableDiff:
    """One table in the backup and in the live database.

    ``status`` is ``added`` (only in the backup: the restore brings it back), ``removed`` (only
    in the live database: the restore drops it), ``changed`` (its content differs, whatever the
    row counts), ``same`` (identical content) or ``unchecked`` (equal row counts, content not
    compared). ``rows_added``, ``rows_removed`` and ``rows_changed`` count, by rowid or primary
    key, the rows the restore brings back, takes out and rewrites; None where not counted.
    """

    name: str
    backup_rows: int | None
    live_rows: int | None
    status: TableChange
    rows_added: int | None = None
    rows_removed: int | None = None
    rows_changed: int | None = None

    @property
    def delta(self) -> int:
        """Rows the restore adds (positive) or takes out of the live database (negative)."""
        return (self.backup_rows or 0) - (self.live_rows or 0)

    @property
    def rows_touched(self) -> int:
        """Rows the restore adds, removes or rewrites (the count difference when not counted)."""
        if self.rows_added is None or self.rows_removed is None or self.rows_changed is None:
            return abs(self.delta)
        return self.rows_added + self.rows_removed + self.rows_changed

    def describe(self) -> str:
        """What restoring does to this table, in words (the CLI and the pages say this)."""
        if self.status == TableChange.ADDED:
            return f"will be brought back ({self.backup_rows or 0:,} rows)"
        if self.status == TableChange.REMOVED:
            return f"will be dropped ({self.live_rows or 0:,} rows now)"
        if self.status == TableChange.SAME:
            return f"no change: same content ({self.live_rows or 0:,} rows)"
        if self.status == TableChange.UNCHECKED:
            return f"same row count ({self.live_rows or 0:,}); content not compared"
        if self.rows_added is None or self.rows_removed is None or self.rows_changed is None:
            return f"content differs; rows: {self.live_rows or 0:,} -> {self.backup_rows or 0:,}"
        parts = [
            f"{count:,} {what}"
            for count, what in (
                (self.rows_added, "brought back"),
                (self.rows_removed, "taken out"),
                (self.rows_changed, "changed back"),
            )
            if count
        ]
        return "rows " + ", ".join(parts) if parts else "content differs"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RestorePreview:
    """What restoring a backup would change, computed without changing anything.

    ``schema_changed`` is true when the live database exists and its schema fingerprint differs
    from the backup's. ``compared`` is false when the content could not be compared at all
    (only row counts from the backup's metadata), with ``compare_note`` saying why; a budget
    that ran out is noted there too.
    """

    backup_id: str
    created_at: datetime
    tables: tuple[TableDiff, ...]
    schema_changed: bool
    live_exists: bool
    #: Which kind of backup this is: a ``pre-restore`` safety snapshot holds the data as it was
    #: just before an earlier restore, not a scheduled or manual backup.
    kind: str = "unknown"
    label: str | None = None
    #: The snapshot holds damaged data (the live database failed integrity_check then).
    source_damaged: bool = False
    foreign_key_violations: int = 0
    #: Tables the backup could not count, and why (a virtual table's module not loaded).
    not_counted: dict[str, str] = field(default_factory=dict)
    compared: bool = False
    compare_note: str | None = None
    #: Seconds the comparison took.
    seconds: float = 0.0

    def describe(self) -> str:
        """What is being restored, in words: ``manual backup``, ``safety snapshot ...``."""
        if self.kind == "pre-restore":
            return "safety snapshot (the data as it was just before an earlier restore)"
        return f"{self.kind} backup"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``restore ID --preview --json``)."""
        return {
            "backup_id": self.backup_id,
            "created_at": utc_iso(self.created_at),
            "kind": self.kind,
            "label": self.label,
            "source_damaged": self.source_damaged,
            "foreign_key_violations": self.foreign_key_violations,
            "not_counted": dict(self.not_counted),
            "tables": [table.to_dict() for table in self.tables],
            "schema_changed": self.schema_changed,
            "live_exists": self.live_exists,
            "compared": self.compared,
            "compare_note": self.compare_note,
        }

    def by_impact(self) -> list[TableDiff]:
        """The tables, those the restore changes most first (a dropped or brought-back table
        counts with all its rows); tables it leaves as they are last, by name."""
        return sorted(
            self.tables,
            key=lambda t: (t.status == TableChange.SAME, -t.rows_touched, t.name),
        )


def preview_restore(
    settings: Settings,
    backup_id: str,
    *,
    identity: Identity | None = None,
    budget: float = DEFAULT_BUDGET,
) -> RestorePreview:
    """Each table of a backup against the live database: content, row counts, rows changed.

    An encrypted backup known only from the offsite store keeps its row counts sealed:
    ``identity`` opens them. Changes nothing in the live database and the backups, and takes
    no lock. ``budget`` bounds the seconds spent comparing content (see the module's
    docstring). Raises :class:`InvalidBackupId`, :class:`BackupNotFound`,
    :class:`RestoreError` (unreadable metadata), :class:`AgeIdentityError` (sealed counts
    without a fitting identity) or :class:`DatabaseError` (live database unreadable).
    """
    BackupStore(settings).require_folder()  # a typo in the folder: refuse, create nothing
    store = BackupStore(settings)
    info = resolve_backup(store, backup_id)
    meta = info.metadata
    assert meta is not None  # resolve_backup guarantees it
    if meta.encryption is not None and not meta.row_counts and not meta.source.path:
        # The offsite copy's public metadata: without its sealed counts every live table
        # would look "removed".
        if identity is None:
            raise missing_identity(f"offsite backup {meta.id}", meta.encryption)
        meta = unseal_metadata(meta, identity)
    live = settings.database
    live_exists = _has_data(live)
    started = time.monotonic()
    tables: list[TableDiff]
    note: str | None = None
    compared = False
    live_fingerprint: str | None = None
    if not live_exists:
        tables = [
            TableDiff(name, rows, None, TableChange.ADDED, rows_added=rows)
            for name, rows in sorted(meta.row_counts.items())
        ]
        compared = True
    else:
        check_sqlite_file(live)
        try:
            with _scratch_folder(settings) as folder:
                tables, live_fingerprint, note = _compare_copies(
                    settings, store, info.id, meta, identity, folder, started + budget
                )
            compared = True
        except _NoLocalCopy as missing:
            note = f"content not compared ({missing}): row counts from the backup's metadata"
            tables, live_fingerprint = _counts_only(settings, meta)
    return RestorePreview(
        info.id,
        meta.created_at,
        tuple(tables),
        live_exists and live_fingerprint != meta.schema_fingerprint,
        live_exists,
        kind=meta.kind,
        label=meta.label,
        source_damaged=meta.source_damaged,
        foreign_key_violations=meta.findings.foreign_key_violations,
        not_counted=dict(meta.findings.not_counted),
        compared=compared,
        compare_note=note,
        seconds=round(time.monotonic() - started, 4),
    )


class _NoLocalCopy(Exception):
    """No local copy of the backup could be read to compare content."""


class _Deadline(Exception):
    """The comparison's time budget ran out."""


def _compare_copies(
    settings: Settings,
    store: BackupStore,
    backup_id: str,
    meta: BackupMetadata,
    identity: Identity | None,
    folder: Path,
    deadline: float,
) -> tuple[list[TableDiff], str, str | None]:
    notes: list[str] = []
    try:
        backup_copy, _, _ = extract_sound_copy(
            store, backup_id, notes, identity, None, use_offsite=False, scratch_dir=folder
        )
    except (RestoreError, AgeIdentityError) as exc:
        raise _NoLocalCopy(str(exc)) from exc
    live_copy = folder / "live.db"
    take_snapshot(settings.database, live_copy, busy_timeout=settings.busy_timeout)
    with closing(connect(live_copy, uri_mode="ro")) as conn:
        conn.execute("PRAGMA cache_size=-32768")
        conn.execute("ATTACH DATABASE ? AS b", (f"{backup_copy.absolute().as_uri()}?mode=ro",))
        live_fingerprint = schema_fingerprint(conn)
        live_counts = row_counts(conn)
        tables, out_of_time = _table_diffs(conn, meta, live_counts, deadline)
    note = (
        "time budget ran out: tables marked 'unchecked' were compared by row count only"
        if out_of_time
        else None
    )
    return tables, live_fingerprint, note


def _table_diffs(
    conn: sqlite3.Connection, meta: BackupMetadata, live_counts: dict[str, int], deadline: float
) -> tuple[list[TableDiff], bool]:
    """Per table, the diff; True in second place when the budget ran out on the way."""

    def out_of_time() -> int:
        return 1 if time.monotonic() > deadline else 0

    conn.set_progress_handler(out_of_time, _PROGRESS_STEPS)
    tables: list[TableDiff] = []
    ran_out = False
    shapes = {name: _shape(conn, name) for name in set(meta.row_counts) & set(live_counts)}
    for name in sorted(set(meta.row_counts) | set(live_counts)):
        in_backup = meta.row_counts.get(name)
        in_live = live_counts.get(name)
        if in_live is None:
            tables.append(TableDiff(name, in_backup, None, TableChange.ADDED, rows_added=in_backup))
            continue
        if in_backup is None:
            tables.append(TableDiff(name, None, in_live, TableChange.REMOVED, rows_removed=in_live))
            continue
        key, same_columns = shapes[name]
        status = TableChange.CHANGED if in_backup != in_live else TableChange.UNCHECKED
        counted: tuple[int, int, int] | None = None
        ran_out = ran_out or time.monotonic() > deadline
        if not ran_out and key is not None:
            try:
                if same_columns and _digest(conn, "main", name, key) == _digest(
                    conn, "b", name, key
                ):
                    status = TableChange.SAME
                else:
                    status = TableChange.CHANGED
                    if same_columns:
                        counted = _count_changes(conn, name, key)
            except _Deadline:
                ran_out = True
        added, removed, changed = counted if counted is not None else (None, None, None)
        if status == TableChange.SAME:
            added, removed, changed = 0, 0, 0
        tables.append(TableDiff(name, in_backup, in_live, status, added, removed, changed))
    conn.set_progress_handler(None, 0)
    return tables, ran_out


def _shape(conn: sqlite3.Connection, name: str) -> tuple[str | None, bool]:
    """How rows of one table are matched between the two copies (``rowid``, the primary key
    columns, or None for a virtual table), and whether both copies have the same columns."""
    row = conn.execute(
        "SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    sql = str(row[0] or "") if row else ""
    if sql.upper().startswith("CREATE VIRTUAL TABLE"):
        return None, False
    columns = {
        schema: [
            tuple(c) for c in conn.execute(f"PRAGMA {schema}.table_info({quote_identifier(name)})")
        ]
        for schema in ("main", "b")
    }
    same = columns["main"] == columns["b"]
    if not _WITHOUT_ROWID.search(sql):
        return "rowid", same
    keys = sorted((c for c in columns["main"] if int(c[5]) > 0), key=lambda c: int(c[5]))
    return ", ".join(quote_identifier(str(c[1])) for c in keys) or None, same


def _digest(conn: sqlite3.Connection, schema: str, name: str, key: str) -> str:
    """BLAKE2b over the table's rows, key first, in key order."""
    digest = hashlib.blake2b(digest_size=32)
    table = f"{schema}.{quote_identifier(name)}"
    try:
        cursor = conn.execute(f"SELECT {key}, * FROM {table} ORDER BY {key}")
        while rows := cursor.fetchmany(2000):
            digest.update(repr(rows).encode())
    except sqlite3.OperationalError as exc:
        if "interrupt" in str(exc):
            raise _Deadline from exc
        raise
    return digest.hexdigest()


def _count_changes(conn: sqlite3.Connection, name: str, key: str) -> tuple[int, int, int] | None:
    """Rows only in the backup (brought back), only in the live copy (taken out), and in both
    under the same key with other content (rewritten); None when over the budget."""
    live, backup = f"main.{quote_identifier(name)}", f"b.{quote_identifier(name)}"
    keyed = f"({key})"
    try:
        added = conn.execute(
            f"SELECT count(*) FROM {backup} WHERE {keyed} NOT IN (SELECT {key} FROM {live})"
        ).fetchone()[0]
        removed = conn.execute(
            f"SELECT count(*) FROM {live} WHERE {keyed} NOT IN (SELECT {key} FROM {backup})"
        ).fetchone()[0]
        changed = conn.execute(
            f"SELECT count(*) FROM (SELECT {key}, * FROM {backup} WHERE {keyed} IN "
            f"(SELECT {key} FROM {live}) EXCEPT SELECT {key}, * FROM {live})"
        ).fetchone()[0]
    except sqlite3.OperationalError as exc:
        if "interrupt" in str(exc):
            return None
        logger.warning("could not count the changed rows of %s: %s", name, exc)
        return None
    return int(added), int(removed), int(changed)


def _counts_only(settings: Settings, meta: BackupMetadata) -> tuple[list[TableDiff], str]:
    """The old way, when no local copy can be read: the metadata's counts against the live
    database's, read in place (a read transaction, as short as counting)."""
    try:
        with closing(
            connect(settings.database, busy_timeout=settings.busy_timeout, uri_mode="ro")
        ) as conn:
            conn.execute("BEGIN")
            try:
                live_counts = row_counts(conn)
                fingerprint = schema_fingerprint(conn)
            finally:
                conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot read the live database {settings.database}: {exc}") from exc
    tables = []
    for name in sorted(set(meta.row_counts) | set(live_counts)):
        in_backup = meta.row_counts.get(name)
        in_live = live_counts.get(name)
        if in_live is None:
            status = TableChange.ADDED
        elif in_backup is None:
            status = TableChange.REMOVED
        else:
            status = TableChange.CHANGED if in_backup != in_live else TableChange.UNCHECKED
        tables.append(TableDiff(name, in_backup, in_live, status))
    return tables, fingerprint


@contextmanager
def _scratch_folder(settings: Settings) -> Iterator[Path]:
    """A private folder for this preview's copies, removed afterwards (and by a later clean-up
    if this process was killed: its name carries the pid)."""
    ensure_private_dir(settings.backup_dir)
    folder = settings.backup_dir / f"{SCRATCH_DIR_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    try:
        folder.mkdir(mode=0o700)
    except OSError as exc:
        raise _NoLocalCopy(f"cannot make a scratch folder in {settings.backup_dir}: {exc}") from exc
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _has_data(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False

"""Consistent snapshots of a live SQLite database, and checks on a database file.

The snapshot goes through SQLite's online backup API inside one read transaction on the
source, so it is a single consistent state even while the app writes. That read transaction is
the only time the source is held; checking, hashing and compressing happen afterwards on the
copy. In rollback-journal mode writers wait for that read transaction; in WAL mode they don't.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from tablettracker_backups.changes import SourceSignature, source_signature
from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.errors import (
    DatabaseBusy,
    DatabaseError,
    StorageError,
    VerificationError,
)
from tablettracker_backups.fsutil import describe_os_error
from tablettracker_backups.metadata import FK_SAMPLES, NOT_CHECKED, Findings, ForeignKeySample
from tablettracker_backups.pagestore import PageIndex, Written, write_pages
from tablettracker_backups.storage.local import LocalStore

logger = logging.getLogger(__name__)

#: The smallest possible SQLite database: one page of the smallest page size.
MIN_DATABASE_SIZE = 512
#: Pages copied per backup step: small enough for a smooth progress bar, large enough to be fast.
STEP_PAGES = 4096
PageProgress = Callable[[int, int], None]
#: The schema fingerprint recorded when a damaged snapshot's schema cannot be read at all.
UNREADABLE_SCHEMA = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class SnapshotInfo:
    """What the source looked like at the moment of the snapshot."""

    source_size: int
    page_size: int
    page_count: int
    journal_mode: str
    sqlite_version: str
    seconds: float
    #: The database files' ``stat()`` just before the read transaction began: anything written
    #: later changes it, so a match later means "nothing written since" (see :mod:`.changes`).
    signature: SourceSignature | None = None
    #: When the read transaction that pinned this state began: the moment the copy holds the
    #: database as of (a copy that waited for a writer holds that writer's data too).
    began_at: datetime | None = None


@dataclass(frozen=True)
class DatabaseCheck:
    """Result of checking a database file: integrity, foreign keys, row counts, schema.

    Everything here describes the *data*; none of it says whether a stored copy is faithful
    (that is the SHA-256 comparison in :mod:`tablettracker_backups.verify`).
    """

    integrity: str
    foreign_key_violations: int
    row_counts: dict[str, int]
    schema_fingerprint: str
    page_size: int
    page_count: int
    foreign_key_samples: tuple[ForeignKeySample, ...] = ()
    foreign_key_tables: dict[str, int] = field(default_factory=dict)
    #: Tables whose rows could not be counted, and why.
    not_counted: dict[str, str] = field(default_factory=dict)
    #: False for :func:`inspect_header`: the full checks did not run, nothing was looked for.
    checked: bool = True

    @property
    def ok(self) -> bool:
        """True when integrity_check said ``ok`` and no foreign key is violated."""
        return self.integrity == "ok" and self.foreign_key_violations == 0

    def findings(self) -> Findings:
        """The data findings recorded in a backup's metadata."""
        return Findings(
            integrity=self.integrity,
            foreign_key_violations=self.foreign_key_violations,
            foreign_key_samples=self.foreign_key_samples,
            foreign_key_tables=dict(self.foreign_key_tables),
            not_counted=dict(self.not_counted),
            source_damaged=self.checked and self.integrity != "ok",
            checked=self.checked,
        )


class SqliteFailure(str, Enum):
    """What a SQLite error means for us; one classification instead of message matching
    scattered over the modules. Python 3.11+ names the error code; 3.10 has only the text."""

    BUSY = "busy"
    READONLY = "readonly"
    NOT_A_DATABASE = "not-a-database"
    FULL = "full"
    OTHER = "other"


_FAILURE_BY_CODE = {
    "SQLITE_BUSY": SqliteFailure.BUSY,
    "SQLITE_LOCKED": SqliteFailure.BUSY,
    "SQLITE_READONLY": SqliteFailure.READONLY,
    "SQLITE_NOTADB": SqliteFailure.NOT_A_DATABASE,
    "SQLITE_FULL": SqliteFailure.FULL,
}
_FAILURE_BY_TEXT = (
    (("locked", "busy"), SqliteFailure.BUSY),
    (("readonly",), SqliteFailure.READONLY),
    (("not a database", "encrypted"), SqliteFailure.NOT_A_DATABASE),
    (("full", "disk"), SqliteFailure.FULL),
)


def classify_sqlite_error(exc: sqlite3.Error) -> SqliteFailure:
    """What kind of failure ``exc`` is."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    for prefix, failure in _FAILURE_BY_CODE.items():
        if name == prefix or name.startswith(prefix + "_"):
            return failure
    text = str(exc)
    for words, failure in _FAILURE_BY_TEXT:
        if any(word in text for word in words):
            return failure
    return SqliteFailure.OTHER


def check_sqlite_file(path: Path) -> None:
    """Raise :class:`DatabaseError` unless ``path`` is a readable, non-empty SQLite file.

    The file is never opened outside SQLite: closing any descriptor of a file drops every
    POSIX lock this process holds on it, so a plain ``open()``/``close()`` inside a host app
    that has the database open would silently release the app's SQLite locks. Another process
    could then write over a reader, or delete the WAL and shared-memory files under the app
    (its next commits go to an unlinked WAL and are lost). SQLite's own VFS keeps such
    descriptors open until the locks are gone, so the header is read through SQLite.
    """
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise DatabaseError(f"database {path} does not exist") from exc
    except OSError as exc:
        raise DatabaseError(f"cannot read database {path}: {exc.strerror}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise DatabaseError(f"database {path} is a folder, not a SQLite file")
    if not stat.S_ISREG(info.st_mode):
        raise DatabaseError(f"database {path} is not a regular file")
    if info.st_size == 0:
        raise DatabaseError(f"database {path} is empty (0 bytes), not a SQLite database")
    if info.st_size < MIN_DATABASE_SIZE:
        raise DatabaseError(f"{path} is not a SQLite database ({info.st_size} bytes)")
    try:
        conn = sqlite3.connect(
            f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=0, isolation_level=None
        )
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot read database {path}: {exc}") from exc
    try:
        # Reads page 1 (the header); a file that is not SQLite fails with SQLITE_NOTADB.
        conn.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as exc:
        failure = classify_sqlite_error(exc)
        if failure in (SqliteFailure.BUSY, SqliteFailure.READONLY):
            # A writer holds it right now, or a hot journal needs a read-write connection to
            # roll back: the operation itself opens it properly, waits, and reports.
            return
        if failure is SqliteFailure.NOT_A_DATABASE:
            raise DatabaseError(f"{path} is not a SQLite database (or it is encrypted)") from exc
        raise DatabaseError(f"cannot read database {path}: {exc}") from exc
    finally:
        conn.close()


def connect(
    path: Path, *, busy_timeout: float = 10.0, uri_mode: str | None = None
) -> sqlite3.Connection:
    """An autocommit connection (we issue BEGIN ourselves); raises :class:`DatabaseError`."""
    try:
        if uri_mode is not None:
            uri = f"{path.absolute().as_uri()}?mode={uri_mode}"
            conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)
        else:
            conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open database {path}: {exc}") from exc
    return conn


def _sqlite_error(path: Path, exc: sqlite3.Error) -> DatabaseError:
    failure = classify_sqlite_error(exc)
    if failure is SqliteFailure.BUSY:
        return DatabaseBusy(f"database {path} is locked by another process: {exc}")
    if failure is SqliteFailure.NOT_A_DATABASE:
        return DatabaseError(f"{path} is not a SQLite database (or it is encrypted)")
    return DatabaseError(f"database {path}: {exc}")


@contextmanager
def read_transaction(conn: sqlite3.Connection, path: Path) -> Iterator[None]:
    """Hold one read transaction (a consistent snapshot) on ``conn`` for the block."""
    try:
        conn.execute("BEGIN")
        # The first read takes the SHARED lock (or WAL read mark) that pins the snapshot.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise _sqlite_error(path, exc) from exc
    try:
        yield
    finally:
        conn.execute("ROLLBACK")


def copy_database(
    source: sqlite3.Connection,
    dest: sqlite3.Connection,
    *,
    timeout: float,
    progress: PageProgress | None = None,
    label: str = "database",
    stage: Stage | None = None,
    pages: int = STEP_PAGES,
    retry: float = 0.05,
) -> None:
    """Copy every page of ``source`` into ``dest`` with the backup API, ``pages`` a step.

    The caller holds a read transaction on ``source`` so that the steps all see one state. A
    lock that stays busy for ``timeout`` seconds raises :class:`DatabaseError`; a busy step is
    tried again after ``retry`` seconds. ``stage`` names the crash point reached between two
    steps (see :mod:`crashpoints`).
    """
    deadline = time.monotonic() + timeout

    def on_step(status: int, remaining: int, total: int) -> None:
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            if time.monotonic() > deadline:
                raise DatabaseBusy(
                    f"{label} stayed locked by another process for {timeout:g}s; gave up"
                )
            return
        if progress is not None:
            progress(total - remaining, total)
        if stage is not None and remaining > 0:
            crash_point(stage)  # pragma: no mutate

    try:
        source.backup(dest, pages=pages, progress=on_step, sleep=retry)
    except sqlite3.Error as exc:
        if classify_sqlite_error(exc) is SqliteFailure.FULL:
            raise StorageError(f"cannot write the copy: {exc}") from exc
        raise DatabaseError(f"copying {label} failed: {exc}") from exc


def take_snapshot(
    database: Path,
    dest: Path,
    *,
    busy_timeout: float,
    progress: PageProgress | None = None,
) -> SnapshotInfo:
    """Write a consistent copy of the live ``database`` to the new file ``dest``.

    ``dest`` ends up in rollback-journal mode (a self-contained file, no -wal beside it).
    Raises :class:`DatabaseError` for trouble with the source, :class:`StorageError` for
    trouble writing ``dest``.
    """
    check_sqlite_file(database)
    started = time.monotonic()
    # Before our own connection opens: in WAL mode the last connection to close deletes the
    # -wal file, so a signature taken while ours is open would never match again.
    try:
        signature: SourceSignature | None = source_signature(database)
    except OSError:
        signature = None  # the snapshot below reports a missing file properly
    with (
        closing(connect(database, busy_timeout=busy_timeout)) as src,
        read_transaction(src, database),
    ):
        began_at = datetime.now(timezone.utc)
        info = copy_out(
            src,
            dest,
            label=f"database {database}",
            busy_timeout=busy_timeout,
            progress=progress,
            stage=Stage.SNAPSHOT_COPY,  # pragma: no mutate
        )
    return dataclasses.replace(
        info, seconds=time.monotonic() - started, signature=signature, began_at=began_at
    )


def copy_out(
    src: sqlite3.Connection,
    dest: Path,
    *,
    label: str,
    busy_timeout: float,
    progress: PageProgress | None = None,
    stage: Stage | None = None,
    what: str = "snapshot",
) -> SnapshotInfo:
    """Copy the database open on ``src`` page by page into the new file ``dest``.

    The caller holds a lock or read transaction on ``src`` so the copy is one state; this never
    opens a file descriptor on the source outside SQLite. ``dest`` is created owner-only and
    ends up a self-contained rollback-journal file, not yet fsynced. Raises
    :class:`DatabaseError` for the source, :class:`StorageError` for ``dest``.
    """
    started = time.monotonic()
    try:
        dest.touch(mode=0o600, exist_ok=False)
    except OSError as exc:
        raise StorageError(describe_os_error(exc, dest)) from exc
    try:
        journal_mode = str(src.execute("PRAGMA journal_mode").fetchone()[0])
        page_size = int(src.execute("PRAGMA page_size").fetchone()[0])
        page_count = int(src.execute("PRAGMA page_count").fetchone()[0])
    except sqlite3.Error as exc:
        raise DatabaseError(f"{label}: {exc}") from exc
    with closing(connect(dest)) as dst:
        try:
            # The copy is throw-away until checked, so no journal and no fsync inside the
            # source's lock: whoever keeps it fsyncs it.
            dst.execute("PRAGMA journal_mode=OFF")
            dst.execute("PRAGMA synchronous=OFF")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write the copy {dest}: {exc}") from exc
        try:
            copy_database(
                src, dst, timeout=busy_timeout, progress=progress, label=label, stage=stage
            )
        except StorageError as exc:
            # SQLite only says "database or disk is full"; say where, and how much.
            raise StorageError(
                f"no space left on the device holding {dest.parent} for the "
                f"{page_size * page_count // 2**20 + 1} MiB {what} ({exc})"
            ) from exc
        try:
            # A WAL source leaves the WAL flag in the copy's header; make it self-contained.
            dst.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot finish the copy {dest}: {exc}") from exc
    return _copied(page_size, page_count, journal_mode, time.monotonic() - started)


def _copied(page_size: int, page_count: int, journal_mode: str, seconds: float) -> SnapshotInfo:
    return SnapshotInfo(
        source_size=page_size * page_count,
        page_size=page_size,
        page_count=page_count,
        journal_mode=journal_mode,
        sqlite_version=sqlite3.sqlite_version,
        seconds=seconds,
    )


def describe_copy(path: Path, *, journal_mode: str) -> SnapshotInfo:
    """The details of a copy already taken (a restore's safety copy found after a kill), read
    from the file itself; ``journal_mode`` is the source's, which the copy no longer shows."""
    with closing(connect(path, uri_mode="ro")) as conn:
        try:
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
        except sqlite3.Error as exc:
            raise VerificationError(f"{path.name} is not a readable database: {exc}") from exc
    return _copied(page_size, page_count, journal_mode, 0.0)


def quote_identifier(name: str) -> str:
    """Quote a table name for SQL."""
    return '"' + name.replace('"', '""') + '"'


def schema_fingerprint(conn: sqlite3.Connection) -> str:
    """SHA-256 over the schema (type, name, SQL of every object), order-independent."""
    rows = conn.execute(
        "SELECT type, name, coalesce(sql, '') FROM sqlite_master "
        "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ).fetchall()
    digest = hashlib.sha256()
    for row in rows:
        digest.update("\x1f".join(row).encode() + b"\x1e")
    return digest.hexdigest()


def table_names(conn: sqlite3.Connection) -> list[str]:
    """User tables, sorted."""
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    ).fetchall()
    return [str(row[0]) for row in rows]


def count_rows(conn: sqlite3.Connection) -> tuple[dict[str, int], dict[str, str]]:
    """Rows per user table, and the tables that could not be counted with the reason.

    A virtual table whose module is not loaded in this process (SpatiaLite, sqlite-vec, an
    app's own extension) cannot be read here, but its data lives in ordinary shadow tables,
    which are counted (and covered by integrity_check) like any other.
    """
    counts: dict[str, int] = {}
    not_counted: dict[str, str] = {}
    for name in table_names(conn):
        try:
            row = conn.execute(f"SELECT count(*) FROM {quote_identifier(name)}").fetchone()
        except sqlite3.DatabaseError as exc:
            not_counted[name] = _uncountable(str(exc))
            continue
        counts[name] = int(row[0])
    return counts, not_counted


def _uncountable(text: str) -> str:
    module = re.match(r"no such module: (.+)", text)
    if module:
        return f"not counted: module {module.group(1)} not loaded"
    return f"not counted: {text}"


def row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows per user table that can be counted (see :func:`count_rows`)."""
    return count_rows(conn)[0]


def integrity(conn: sqlite3.Connection, *, full: bool = True) -> str:
    """``integrity_check`` (or ``quick_check``): ``"ok"`` or the first problems found."""
    pragma = "integrity_check" if full else "quick_check"
    messages = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}(20)").fetchall()]
    return "ok" if messages == ["ok"] else "; ".join(messages)


@dataclass(frozen=True)
class ForeignKeyCheck:
    """What ``foreign_key_check`` found: the full count, per table, and the first few."""

    violations: int = 0
    tables: dict[str, int] = field(default_factory=dict)
    samples: tuple[ForeignKeySample, ...] = ()


def foreign_keys(conn: sqlite3.Connection) -> ForeignKeyCheck:
    """Run ``foreign_key_check`` over the whole database, streaming (a database with many
    violations is counted without holding them all)."""
    total = 0
    tables: dict[str, int] = {}
    samples: list[ForeignKeySample] = []
    for row in conn.execute("PRAGMA foreign_key_check"):
        table, rowid, parent = str(row[0]), row[1], str(row[2])
        total += 1
        tables[table] = tables.get(table, 0) + 1
        if len(samples) < FK_SAMPLES:
            key = rowid if isinstance(rowid, int) else None  # WITHOUT ROWID tables have none
            samples.append(ForeignKeySample(table, key, parent))
    return ForeignKeyCheck(total, tables, tuple(samples))


def inspect_database(path: Path, *, full: bool = True, parallel: bool = False) -> DatabaseCheck:
    """The one full check of a database file that nobody else is using (a backup copy).

    ``full`` runs ``integrity_check`` and ``foreign_key_check``; otherwise ``quick_check``.
    ``parallel`` runs the integrity check on a second connection in a thread while this one
    does the rest: SQLite releases the GIL, so on two cores the wall time is about the longer
    of the two instead of their sum (worth it when nothing else is running beside it).

    Findings in the data (integrity messages, violations, uncountable tables) are returned,
    never raised. Raises :class:`VerificationError` only when the file cannot be read as a
    database at all.
    """
    try:
        check_sqlite_file(path)
    except DatabaseError as exc:
        raise VerificationError(str(exc)) from exc
    outcome: dict[str, object] = {}

    def run_integrity() -> None:
        try:
            with closing(_private(path)) as conn:
                try:
                    outcome["integrity"] = integrity(conn, full=full)
                except sqlite3.DatabaseError as exc:
                    # Damage bad enough to stop the check is a finding like any other.
                    outcome["integrity"] = f"integrity_check stopped: {exc}"
        except (sqlite3.Error, DatabaseError) as exc:  # reported by the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run_integrity, name="integrity-check", daemon=True)
    if parallel:
        worker.start()
    else:
        run_integrity()
    rest: DatabaseCheck | BaseException
    try:
        with closing(_private(path)) as conn:
            rest = _inspect_rest(conn, full=full)
    except (sqlite3.Error, DatabaseError) as exc:
        rest = exc
    finally:
        if parallel:
            worker.join()
    error = outcome.get("error")
    if isinstance(error, BaseException):
        raise VerificationError(f"{path.name} is not a readable database: {error}") from error
    found = str(outcome["integrity"])
    if isinstance(rest, BaseException):
        # Not even the schema can be read: this does not open as a database.
        raise VerificationError(f"{path.name} is not a readable database: {rest}") from rest
    return dataclasses.replace(rest, integrity=found)


def inspect_header(path: Path) -> DatabaseCheck:
    """The cheap check every snapshot gets when its full checks do not run: it opens as
    SQLite, its header's page size and page count agree with the file's size, and its schema
    can be read (the fingerprint). Reads the first pages only, never the whole file: a
    ``quick_check`` reads every page, as ``integrity_check`` does. Raises
    :class:`VerificationError` when the file does not open as a database."""
    try:
        check_sqlite_file(path)
        with closing(_private(path)) as conn:
            fingerprint = schema_fingerprint(conn)
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
    except (sqlite3.Error, DatabaseError) as exc:
        raise VerificationError(f"{path.name} is not a readable database: {exc}") from exc
    size = path.stat().st_size
    if page_size * page_count != size:
        raise VerificationError(
            f"{path.name} is not a whole database: {page_count} pages of {page_size} B in "
            f"its header, {size} bytes in the file"
        )
    return DatabaseCheck(NOT_CHECKED, 0, {}, fingerprint, page_size, page_count, checked=False)


def _private(path: Path) -> sqlite3.Connection:
    conn = connect(path, uri_mode="ro")
    # A private copy: a bigger page cache makes the checks faster, memory stays bounded.
    conn.execute("PRAGMA cache_size=-32768")
    return conn


def _inspect_rest(conn: sqlite3.Connection, *, full: bool) -> DatabaseCheck:
    """Everything but the integrity check (its field is filled in by the caller)."""
    fingerprint = schema_fingerprint(conn)  # the schema must be readable, else: not a database
    fk = ForeignKeyCheck()
    if full:
        try:
            fk = foreign_keys(conn)
        except sqlite3.DatabaseError as exc:
            # Damaged pages can stop the scan; integrity_check reports the damage itself.
            logger.warning("foreign_key_check stopped: %s", exc)
    counts, not_counted = count_rows(conn)
    return DatabaseCheck(
        integrity="",
        foreign_key_violations=fk.violations,
        row_counts=counts,
        schema_fingerprint=fingerprint,
        page_size=int(conn.execute("PRAGMA page_size").fetchone()[0]),
        page_count=int(conn.execute("PRAGMA page_count").fetchone()[0]),
        foreign_key_samples=fk.samples,
        foreign_key_tables=fk.tables,
        not_counted=not_counted,
    )


def quick_check_live(path: Path, *, busy_timeout: float) -> str:
    """``PRAGMA quick_check`` on the live database: ``"ok"`` or the first problems found."""
    check_sqlite_file(path)
    with closing(connect(path, busy_timeout=busy_timeout)) as conn:
        try:
            messages = [str(r[0]) for r in conn.execute("PRAGMA quick_check(20)").fetchall()]
        except sqlite3.Error as exc:
            raise _sqlite_error(path, exc) from exc
    return "ok" if messages == ["ok"] else "; ".join(messages)


def live_journal_mode(path: Path) -> str | None:
    """The live database's journal mode (``wal``, ``delete`` ...) from ``PRAGMA journal_mode``,
    which reads the header and writes nothing; None when it cannot be read.

    Through SQLite, so no lock a host app in this process holds is dropped; and on an
    ordinary connection, which as the last one to close removes the -wal and -shm files it
    made (a read-only one would leave them, and the database would look changed).
    """
    try:
        with closing(connect(path, busy_timeout=1.0)) as conn:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    except (sqlite3.Error, DatabaseError):
        return None


@dataclass(frozen=True)
class LivePages:
    """What :func:`read_live_pages` stored, and the live database's facts at that instant."""

    written: Written
    journal_mode: str
    schema_fingerprint: str
    #: Seconds the read transaction was held (reading, hashing and storing the pages).
    seconds: float
    began_at: datetime
    signature: SourceSignature | None


def read_live_pages(
    store: LocalStore,
    database: Path,
    *,
    busy_timeout: float,
    parent: PageIndex | None = None,
    level: int = 6,
    progress: PageProgress | None = None,
) -> LivePages | None:
    """Store the pages of the live ``database`` read straight from its file, under one read
    transaction: its SHARED lock keeps every writer out of the file until the last page is
    read (a rollback-journal writer changes the file only under EXCLUSIVE), so the pages are
    one state. Returns None, having stored nothing, in WAL mode (committed pages live in the
    -wal file too: they are read through SQLite instead).

    Only in a process that is not the host app's (the CLI, the detached worker): the file's
    descriptor is opened inside the read transaction and closed only after it ended and its
    connection closed, because closing any descriptor of a file drops every POSIX lock the
    process holds on it, and with it this transaction's SHARED lock. Raises
    :class:`DatabaseError` for the source and what :func:`.pagestore.write_pages` raises.
    """
    try:
        signature: SourceSignature | None = source_signature(database)
    except OSError:
        signature = None
    started = time.monotonic()
    fd: int | None = None
    try:
        with closing(connect(database, busy_timeout=busy_timeout)) as conn:
            with read_transaction(conn, database):
                began_at = datetime.now(timezone.utc)
                try:
                    mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
                    if mode == "wal":
                        return None
                    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                    page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
                    fingerprint = schema_fingerprint(conn)
                except sqlite3.Error as exc:
                    raise DatabaseError(f"database {database}: {exc}") from exc
                try:
                    fd = os.open(database, os.O_RDONLY)
                except OSError as exc:
                    raise DatabaseError(describe_os_error(exc, database)) from exc
                written = write_pages(
                    store,
                    fd,
                    page_size=page_size,
                    page_count=page_count,
                    parent=parent,
                    level=level,
                    progress=progress,
                    stage=Stage.RAW_READ,
                )
            seconds = time.monotonic() - started
    finally:
        # Only now: the read transaction has ended and its connection is closed.
        if fd is not None:
            os.close(fd)
    return LivePages(written, mode, fingerprint, seconds, began_at, signature)

"""The snapshot module on its own, with real SQLite files: how errors are classified and worded,
how the copy reports progress and honours its lock timeout, and what the copy file is.

Fast on purpose: mutation testing (bench/mutation.py) runs these first for every snapshot
mutant; the backup, restore and CLI tests cover the same code end to end."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tablettracker_backups.errors import DatabaseError, StorageError, VerificationError
from tablettracker_backups.metadata import ForeignKeySample
from tablettracker_backups.snapshot import (
    STEP_PAGES,
    SqliteFailure,
    check_sqlite_file,
    classify_sqlite_error,
    connect,
    inspect_database,
    live_journal_mode,
    quick_check_live,
    quote_identifier,
    take_snapshot,
)


def make_database(path: Path, *, rows: int = 10, blob: int = 100) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        conn.executemany("INSERT INTO t (body) VALUES (?)", [(os.urandom(blob),)] * rows)
        conn.commit()
    return path


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Another connection holds an EXCLUSIVE lock (rollback journal mode): nobody may read."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def error(text: str, name: str | None = None) -> sqlite3.Error:
    exc = sqlite3.OperationalError(text)
    if name is not None:
        exc.sqlite_errorname = name
    return exc


# -- classification --------------------------------------------------------------------------


def test_real_errors_are_classified_by_their_code(tmp_path: Path) -> None:
    db = make_database(tmp_path / "a.db")
    with (
        exclusive_lock(db),
        contextlib.closing(sqlite3.connect(db, timeout=0)) as other,
        pytest.raises(sqlite3.Error) as busy,
    ):
        other.execute("SELECT * FROM t").fetchall()
    assert classify_sqlite_error(busy.value) is SqliteFailure.BUSY
    with (
        contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as ro,
        pytest.raises(sqlite3.Error) as readonly,
    ):
        ro.execute("DELETE FROM t")
    assert classify_sqlite_error(readonly.value) is SqliteFailure.READONLY
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with contextlib.closing(sqlite3.connect(junk)) as conn, pytest.raises(sqlite3.Error) as notadb:
        conn.execute("SELECT * FROM sqlite_master").fetchall()
    assert classify_sqlite_error(notadb.value) is SqliteFailure.NOT_A_DATABASE


@pytest.mark.parametrize(
    ("name", "failure"),
    [
        ("SQLITE_BUSY", SqliteFailure.BUSY),
        ("SQLITE_BUSY_SNAPSHOT", SqliteFailure.BUSY),  # extended codes keep their family
        ("SQLITE_LOCKED_SHAREDCACHE", SqliteFailure.BUSY),
        ("SQLITE_READONLY_DBMOVED", SqliteFailure.READONLY),
        ("SQLITE_NOTADB", SqliteFailure.NOT_A_DATABASE),
        ("SQLITE_FULL", SqliteFailure.FULL),
        ("SQLITE_BUSYNESS", SqliteFailure.OTHER),  # a prefix alone is not the family
        ("SQLITE_IOERR", SqliteFailure.OTHER),
    ],
)
def test_the_code_decides_whatever_the_text_says(name: str, failure: SqliteFailure) -> None:
    assert classify_sqlite_error(error("something went wrong", name)) is failure


@pytest.mark.parametrize(
    ("text", "failure"),
    [
        ("database is locked", SqliteFailure.BUSY),
        ("database table is busy", SqliteFailure.BUSY),
        ("attempt to write a readonly database", SqliteFailure.READONLY),
        ("file is not a database", SqliteFailure.NOT_A_DATABASE),
        ("file is encrypted or is not a database", SqliteFailure.NOT_A_DATABASE),
        ("database or disk is full", SqliteFailure.FULL),
        ("no such table: t", SqliteFailure.OTHER),
    ],
)
def test_without_a_code_the_text_decides(text: str, failure: SqliteFailure) -> None:
    # Python 3.10 names no code; an empty name is no code either.
    assert classify_sqlite_error(error(text)) is failure
    assert classify_sqlite_error(error(text, "")) is failure


# -- take_snapshot ---------------------------------------------------------------------------


def test_the_copy_is_owner_only_and_reports_every_step(tmp_path: Path) -> None:
    # Several backup-API steps: more pages than one step copies.
    rows = STEP_PAGES + STEP_PAGES // 4  # a row of 4000 bytes fills about one page
    db = make_database(tmp_path / "big.db", rows=rows, blob=4000)
    dest = tmp_path / "copy.db"
    steps: list[tuple[int, int]] = []
    info = take_snapshot(
        db, dest, busy_timeout=1.0, progress=lambda done, total: steps.append((done, total))
    )
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert len(steps) >= 2
    assert all(total == info.page_count for _, total in steps)
    assert [done for done, _ in steps] == sorted({done for done, _ in steps})
    assert steps[0][0] == STEP_PAGES and steps[-1] == (info.page_count, info.page_count)
    with contextlib.closing(sqlite3.connect(dest)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == rows
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert info.signature is not None and info.signature.database.size == db.stat().st_size


def test_an_existing_copy_file_is_never_overwritten(tmp_path: Path) -> None:
    db = make_database(tmp_path / "a.db")
    dest = tmp_path / "taken.db"
    dest.write_bytes(b"somebody else's file")
    with pytest.raises(StorageError) as caught:
        take_snapshot(db, dest, busy_timeout=1.0)
    assert str(caught.value) == f"File exists ({dest})"
    assert dest.read_bytes() == b"somebody else's file"


def test_a_locked_database_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    db = make_database(tmp_path / "a.db")
    dest = tmp_path / "copy.db"
    started = time.monotonic()
    with exclusive_lock(db), pytest.raises(DatabaseError) as caught:
        take_snapshot(db, dest, busy_timeout=0.2)
    # Not the 10 s default: the caller's timeout is the one used (a generous bound, not speed).
    assert time.monotonic() - started < 5
    assert str(caught.value) == f"database {db} is locked by another process: database is locked"


def test_a_full_disk_names_the_folder_and_the_size_needed(full_fs: Path, tmp_path: Path) -> None:
    # 8 MiB of incompressible rows into a 6 MiB file system.
    db = make_database(tmp_path / "big.db", rows=2048, blob=4000)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        count = conn.execute("PRAGMA page_count").fetchone()[0]
    with pytest.raises(StorageError) as caught:
        take_snapshot(db, full_fs / "copy.db", busy_timeout=1.0)
    assert str(caught.value).startswith(
        f"no space left on the device holding {full_fs} for the "
        f"{size * count // 2**20 + 1} MiB snapshot ("
    )


# -- quick_check_live ------------------------------------------------------------------------


def test_quick_check_of_the_live_database(tmp_path: Path) -> None:
    db = make_database(tmp_path / "a.db")
    assert quick_check_live(db, busy_timeout=1.0) == "ok"
    # NULLs under a NOT NULL added later by editing the schema (as some migration tools do):
    # quick_check reports each one on a row of its own.
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO people (name) VALUES (?)", [(None,), ("x",), (None,)])
        conn.execute("PRAGMA writable_schema=ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = ? WHERE name = 'people'",
            ("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",),
        )
    assert quick_check_live(db, busy_timeout=1.0) == (
        "NULL value in people.name; NULL value in people.name"
    )


def test_quick_check_of_a_locked_database_says_so(tmp_path: Path) -> None:
    db = make_database(tmp_path / "a.db")
    started = time.monotonic()
    with exclusive_lock(db), pytest.raises(DatabaseError) as caught:
        quick_check_live(db, busy_timeout=0.2)
    assert time.monotonic() - started < 5
    assert str(caught.value) == f"database {db} is locked by another process: database is locked"


# -- what a check finds in the data ---------------------------------------------------------------


def test_the_findings_of_a_database_as_real_apps_leave_it(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, "
            "customer INTEGER REFERENCES customers(id))"
        )
        # Seven orders of customers that are gone (and one with none): more than the samples.
        conn.executemany(
            "INSERT INTO orders (customer) VALUES (?)", [(c,) for c in range(100, 107)] + [(None,)]
        )
        conn.execute(
            "CREATE TABLE lines (sku TEXT PRIMARY KEY, po INTEGER REFERENCES orders(id)) "
            "WITHOUT ROWID"
        )
        conn.execute("INSERT INTO lines VALUES ('A-1', 999)")
        conn.execute("CREATE TABLE zebra (id INTEGER PRIMARY KEY, note TEXT)")
        conn.executemany("INSERT INTO zebra (note) VALUES (?)", [(None,), ("x",), (None,)])
        conn.execute("PRAGMA writable_schema=ON")
        # A NOT NULL added over rows that hold NULL (integrity_check reports each row) ...
        conn.execute(
            "UPDATE sqlite_master SET sql = ? WHERE name = 'zebra'",
            ("CREATE TABLE zebra (id INTEGER PRIMARY KEY, note TEXT NOT NULL)",),
        )
        # ... and a virtual table of a module this process does not have (sqlite-vec):
        # it sorts first, so every table after it must still be counted.
        conn.execute(
            "INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES "
            "('table', 'a_vectors', 'a_vectors', 0, 'CREATE VIRTUAL TABLE a_vectors USING vec0(x)')"
        )
    check = inspect_database(db)
    assert check.row_counts == {"customers": 0, "lines": 1, "orders": 8, "zebra": 3}
    assert check.not_counted == {"a_vectors": "not counted: module vec0 not loaded"}
    found = check.findings()
    assert found.integrity == "NULL value in zebra.note; NULL value in zebra.note"
    assert found.source_damaged is True
    assert found.foreign_key_violations == 8
    assert found.foreign_key_tables == {"lines": 1, "orders": 7}
    assert len(found.foreign_key_samples) == 5
    assert ForeignKeySample("lines", None, "orders") in found.foreign_key_samples  # no rowid
    assert ForeignKeySample("orders", 1, "customers") in found.foreign_key_samples
    assert found.not_counted == check.not_counted


def test_the_live_journal_mode(tmp_path: Path) -> None:
    plain = make_database(tmp_path / "plain.db")
    wal = make_database(tmp_path / "wal.db")
    with contextlib.closing(sqlite3.connect(wal)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"x" * 4096)
    assert live_journal_mode(plain) == "delete"
    assert live_journal_mode(wal) == "wal"
    assert live_journal_mode(junk) is None


def test_the_smallest_database_is_one_512_byte_page(tmp_path: Path) -> None:
    """SQLite's smallest page is 512 bytes: a database of one such page (no tables yet) is a
    database, and is checked like one; a byte less cannot be."""
    db = tmp_path / "small.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA page_size=512")
        conn.execute("PRAGMA user_version=7")  # writes page 1
    assert db.stat().st_size == 512
    check_sqlite_file(db)
    found = inspect_database(db)
    assert (found.integrity, found.page_size, found.page_count, found.row_counts) == (
        "ok",
        512,
        1,
        {},
    )
    db.write_bytes(db.read_bytes()[:511])
    with pytest.raises(DatabaseError) as caught:
        check_sqlite_file(db)
    assert str(caught.value) == f"{db} is not a SQLite database (511 bytes)"


@pytest.mark.parametrize("uri_mode", [None, "rw"])
def test_connections_are_autocommit(tmp_path: Path, uri_mode: str | None) -> None:
    """connect() promises autocommit (BEGIN is always ours): a write is seen by another
    connection at once, and closing commits nothing behind anyone's back."""
    db = make_database(tmp_path / "app.db", rows=1)
    with contextlib.closing(connect(db, uri_mode=uri_mode)) as conn:
        assert conn.in_transaction is False
        conn.execute("INSERT INTO t (body) VALUES (x'00')")
        assert conn.in_transaction is False
        with contextlib.closing(sqlite3.connect(db, timeout=0)) as other:
            assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 2


def test_identifiers_are_quoted_with_their_quotes_doubled() -> None:
    assert quote_identifier('odd "name"') == '"odd ""name"""'
    assert quote_identifier("plain") == '"plain"'


@pytest.mark.parametrize("parallel", [False, True])
def test_a_copy_whose_schema_page_is_damaged_is_not_a_database(
    tmp_path: Path, parallel: bool
) -> None:
    db = make_database(tmp_path / "copy.db", rows=400, blob=300)
    healthy = inspect_database(db, parallel=parallel)
    assert (healthy.integrity, healthy.page_size) == ("ok", 4096)
    assert healthy.page_count * healthy.page_size == db.stat().st_size
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xaa" * (4096 - 100)  # page 1 past the file header: the schema
    db.write_bytes(bytes(data))
    with pytest.raises(VerificationError) as caught:
        inspect_database(db, parallel=parallel)
    assert (
        str(caught.value) == "copy.db is not a readable database: database disk image is malformed"
    )

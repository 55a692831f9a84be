"""Databases as real apps leave them, built on the spot: the corpus the trust tests back up.

Each builder writes one SQLite file and returns what the tests should then find in it. None of
them is exotic: apps that never turn foreign keys on, extensions this process has not loaded,
full-text and spatial indexes, strict and WITHOUT ROWID tables, big pages, header fields, odd
table names, a file with one damaged index page (integrity_check stops on it), and one whose
index is out of step with its table (integrity_check lists it and runs on).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Expected:
    """What a backup of a corpus database must record and what a restore must give back."""

    #: Rows per table, for the tables that can be counted here.
    rows: dict[str, int]
    foreign_key_violations: int = 0
    foreign_key_tables: dict[str, int] = field(default_factory=dict)
    not_counted: dict[str, str] = field(default_factory=dict)
    source_damaged: bool = False
    #: The damage makes integrity_check give up (an error, not a list of problems).
    integrity_stops: bool = False
    #: integrity_check's report word for word, where the test knows it.
    integrity: str | None = None
    page_size: int = 4096
    user_version: int = 0
    application_id: int = 0


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def foreign_key_violations(path: Path) -> Expected:
    """An app that declares foreign keys but never runs ``PRAGMA foreign_keys=ON``."""
    with closing(_connect(path)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, "
            "customer_id INTEGER REFERENCES customers(id), total REAL)"
        )
        conn.execute(
            "CREATE TABLE lines (order_id INTEGER REFERENCES orders(id), sku TEXT, "
            "PRIMARY KEY (order_id, sku)) WITHOUT ROWID"
        )
        conn.executemany("INSERT INTO customers VALUES (?, ?)", [(i, f"c{i}") for i in range(10)])
        # 40 orders of customers deleted long ago, 60 good ones.
        conn.executemany(
            "INSERT INTO orders VALUES (?, ?, ?)",
            [(i, 100 + i if i < 40 else i % 10, 9.5) for i in range(100)],
        )
        # 7 lines of orders that never existed (a WITHOUT ROWID child: no rowid to report).
        conn.executemany("INSERT INTO lines VALUES (?, 'sku')", [(1000 + i,) for i in range(7)])
    return Expected(
        rows={"customers": 10, "orders": 100, "lines": 7},
        foreign_key_violations=47,
        foreign_key_tables={"orders": 40, "lines": 7},
    )


def unloaded_module(path: Path) -> Expected:
    """A virtual table of an extension this process has not loaded (sqlite-vec, SpatiaLite,
    an app's own): its schema row, and the ordinary shadow tables holding its data."""
    with closing(_connect(path)) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO notes (body) VALUES (?)", [(f"n{i}",) for i in range(5)])
        conn.execute("CREATE TABLE vec_items_chunks (chunk_id INTEGER PRIMARY KEY, data BLOB)")
        conn.executemany(
            "INSERT INTO vec_items_chunks (data) VALUES (?)", [(bytes(64),) for _ in range(3)]
        )
        conn.execute("PRAGMA writable_schema=ON")
        conn.execute(
            "INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES "
            "('table', 'vec_items', 'vec_items', 0, "
            "'CREATE VIRTUAL TABLE vec_items USING vec0(embedding float[4])')"
        )
        conn.execute("PRAGMA writable_schema=OFF")
    return Expected(
        rows={"notes": 5, "vec_items_chunks": 3},
        not_counted={"vec_items": "not counted: module vec0 not loaded"},
    )


def fts5_and_rtree(path: Path) -> Expected:
    """Full-text search and a spatial index, modules this Python's SQLite has built in."""
    with closing(_connect(path)) as conn:
        conn.execute("CREATE VIRTUAL TABLE docs USING fts5(title, body)")
        conn.executemany(
            "INSERT INTO docs VALUES (?, ?)",
            [(f"title {i}", f"tablet count {i} blister pack") for i in range(20)],
        )
        conn.execute("CREATE VIRTUAL TABLE places USING rtree(id, min_x, max_x, min_y, max_y)")
        conn.executemany(
            "INSERT INTO places VALUES (?, ?, ?, ?, ?)",
            [(i, i, i + 1, i, i + 2) for i in range(15)],
        )
        rows = {
            str(name): int(conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0])
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        }
    assert rows["docs"] == 20 and rows["places"] == 15
    assert "docs_data" in rows and "places_node" in rows  # the shadow tables are counted too
    return Expected(rows=rows)


def without_rowid_and_strict(path: Path) -> Expected:
    with closing(_connect(path)) as conn:
        conn.execute(
            "CREATE TABLE stock (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL) WITHOUT ROWID"
        )
        conn.execute("CREATE TABLE prices (id INTEGER PRIMARY KEY, cents INTEGER) STRICT")
        conn.executemany("INSERT INTO stock VALUES (?, ?)", [(f"s{i}", i) for i in range(12)])
        conn.executemany("INSERT INTO prices (cents) VALUES (?)", [(i * 10,) for i in range(8)])
    return Expected(rows={"stock": 12, "prices": 8})


def big_pages(path: Path) -> Expected:
    with closing(_connect(path)) as conn:
        conn.execute("PRAGMA page_size=65536")
        conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
        conn.executemany(
            "INSERT INTO blobs (data) VALUES (?)", [(bytes(50_000),) for _ in range(6)]
        )
    return Expected(rows={"blobs": 6}, page_size=65536)


def header_fields(path: Path) -> Expected:
    """``user_version`` (an app's schema version) and ``application_id`` live in the header."""
    with closing(_connect(path)) as conn:
        conn.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO settings VALUES ('theme', 'dark')")
        conn.execute("PRAGMA user_version=42")
        conn.execute("PRAGMA application_id=1414807636")  # 'TTBT'
    return Expected(rows={"settings": 1}, user_version=42, application_id=1414807636)


QUOTED = 'order "lines" of Mo\'s shop'


def odd_table_names(path: Path) -> Expected:
    with closing(_connect(path)) as conn:
        conn.execute('CREATE TABLE "order ""lines"" of Mo\'s shop" (id INTEGER PRIMARY KEY, x)')
        conn.execute('CREATE TABLE "with space" (id INTEGER PRIMARY KEY)')
        conn.executemany(
            'INSERT INTO "order ""lines"" of Mo\'s shop" (x) VALUES (?)', [(i,) for i in range(3)]
        )
        conn.execute('INSERT INTO "with space" DEFAULT VALUES')
    return Expected(rows={QUOTED: 3, "with space": 1})


def damaged_index(path: Path) -> Expected:
    """One index page scribbled over: the table's rows are intact; integrity_check stops
    ("database disk image is malformed")."""
    with closing(_connect(path)) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("CREATE INDEX people_name ON people(name)")
        conn.executemany(
            "INSERT INTO people (name) VALUES (?)", [(f"name-{i:05d}",) for i in range(2000)]
        )
        root = int(
            conn.execute("SELECT rootpage FROM sqlite_master WHERE name='people_name'").fetchone()[
                0
            ]
        )
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    damage_page(path, root, page_size)
    return Expected(rows={"people": 2000}, source_damaged=True, integrity_stops=True)


def change_table_copy_only(path: Path, page_size: int) -> None:
    """Change ``name-00042`` in the table's leaf page and not in its index's copy."""
    data = bytearray(path.read_bytes())
    at = -1
    while True:
        at = data.index(b"name-00042", at + 1)
        if data[at - at % page_size] == 0x0D:  # a table leaf page, not the index's copy
            break
    data[at + 5] = ord("X")
    path.write_bytes(bytes(data))


def index_out_of_step(path: Path) -> Expected:
    """One name changed inside the table's page and not in its index: integrity_check lists
    the row missing from the index (a finding, the check runs to the end), rows still count."""
    with closing(_connect(path)) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("CREATE INDEX people_name ON people(name)")
        conn.executemany(
            "INSERT INTO people (name) VALUES (?)", [(f"name-{i:05d}",) for i in range(2000)]
        )
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    change_table_copy_only(path, page_size)
    return Expected(
        rows={"people": 2000},
        source_damaged=True,
        integrity="row 43 missing from index people_name",
    )


def damage_page(path: Path, page: int, page_size: int) -> None:
    """Flip the cell content at the end of one b-tree page (its header stays readable)."""
    data = bytearray(path.read_bytes())
    start = (page - 1) * page_size
    for index in range(start + page_size - 300, start + page_size - 100):
        data[index] ^= 0x55
    path.write_bytes(bytes(data))


CORPUS: dict[str, Callable[[Path], Expected]] = {
    "foreign-key-violations": foreign_key_violations,
    "unloaded-module": unloaded_module,
    "fts5-and-rtree": fts5_and_rtree,
    "without-rowid-and-strict": without_rowid_and_strict,
    "page-size-65536": big_pages,
    "user-version-and-application-id": header_fields,
    "odd-table-names": odd_table_names,
    "damaged-index": damaged_index,
    "index-out-of-step": index_out_of_step,
}

"""TabletTracker's tables, and seed data shaped like the real thing.

Used by the demo app, the tests' fixtures and the benchmark's generator, so all three exercise
the same schema: purchase orders and their lines, tablet types, product details, employees and
count sessions, tied together by foreign keys.
"""

from __future__ import annotations

import random
import sqlite3
from datetime import datetime, timedelta, timezone

SCHEMA = """
CREATE TABLE IF NOT EXISTS employees (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    full_name TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'staff' CHECK (role IN ('admin', 'manager', 'staff')),
    password_hash TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS tablet_types (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    strength_mg REAL NOT NULL,
    tablets_per_bottle INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS product_details (
    id INTEGER PRIMARY KEY,
    tablet_type_id INTEGER NOT NULL REFERENCES tablet_types(id),
    sku TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    unit_cost_cents INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS purchase_orders (
    id INTEGER PRIMARY KEY,
    po_number TEXT NOT NULL UNIQUE,
    supplier TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    created_by INTEGER REFERENCES employees(id),
    created_at TEXT NOT NULL,
    notes TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS po_lines (
    id INTEGER PRIMARY KEY,
    po_id INTEGER NOT NULL REFERENCES purchase_orders(id) ON DELETE CASCADE,
    product_id INTEGER NOT NULL REFERENCES product_details(id),
    quantity_ordered INTEGER NOT NULL,
    quantity_received INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS po_lines_po ON po_lines(po_id);
CREATE TABLE IF NOT EXISTS count_sessions (
    id INTEGER PRIMARY KEY,
    po_line_id INTEGER NOT NULL REFERENCES po_lines(id) ON DELETE CASCADE,
    employee_id INTEGER NOT NULL REFERENCES employees(id),
    counted_at TEXT NOT NULL,
    tablets_counted INTEGER NOT NULL,
    damaged INTEGER NOT NULL DEFAULT 0,
    notes TEXT NOT NULL DEFAULT ''
);
"""

SUPPLIERS = ("Acme Pharma", "Northwind Labs", "Contoso Health", "Globex Generics", "Initech Rx")
TABLET_NAMES = ("Ibuprofen", "Paracetamol", "Aspirin", "Metformin", "Amoxicillin", "Vitamin D")


def create_schema(conn: sqlite3.Connection) -> None:
    """Create TabletTracker's tables if they do not exist."""
    conn.executescript(SCHEMA)


def seed(
    conn: sqlite3.Connection,
    *,
    purchase_orders: int = 40,
    lines_per_order: int = 4,
    sessions_per_line: int = 2,
    note_bytes: int = 40,
    password_hash: str = "",
    seed_value: int = 7,
) -> None:
    """Fill an empty database with reproducible, realistic-looking data."""
    rng = random.Random(seed_value)  # noqa: S311 - reproducible demo data, not secrets
    create_schema(conn)
    employees = [
        ("admin", "Ada Admin", "admin"),
        ("manager", "Max Manager", "manager"),
        ("staff", "Sam Staff", "staff"),
        ("counter", "Cory Counter", "staff"),
    ]
    conn.executemany(
        "INSERT INTO employees (username, full_name, role, password_hash) VALUES (?, ?, ?, ?)",
        [(u, n, r, password_hash) for u, n, r in employees],
    )
    for index, name in enumerate(TABLET_NAMES, start=1):
        conn.execute(
            "INSERT INTO tablet_types (name, strength_mg, tablets_per_bottle) VALUES (?, ?, ?)",
            (name, rng.choice((100, 200, 250, 500)), rng.choice((30, 60, 100))),
        )
        for variant in range(3):
            conn.execute(
                "INSERT INTO product_details (tablet_type_id, sku, description, unit_cost_cents)"
                " VALUES (?, ?, ?, ?)",
                (
                    index,
                    f"{name[:3].upper()}-{index:02d}{variant}",
                    f"{name} pack {variant + 1}",
                    rng.randint(50, 5000),
                ),
            )
    products = conn.execute("SELECT count(*) FROM product_details").fetchone()[0]
    start = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    filler = "x" * note_bytes
    for po in range(1, purchase_orders + 1):
        created = start + timedelta(hours=po * 7)
        cursor = conn.execute(
            "INSERT INTO purchase_orders (po_number, supplier, status, created_by, created_at,"
            " notes) VALUES (?, ?, ?, ?, ?, ?)",
            (
                f"PO-{po:06d}",
                rng.choice(SUPPLIERS),
                rng.choice(("open", "received", "closed")),
                rng.randint(1, len(employees)),
                created.isoformat(),
                filler,
            ),
        )
        po_id = cursor.lastrowid
        for _ in range(lines_per_order):
            ordered = rng.randint(1, 200) * 10
            line = conn.execute(
                "INSERT INTO po_lines (po_id, product_id, quantity_ordered, quantity_received)"
                " VALUES (?, ?, ?, ?)",
                (po_id, rng.randint(1, products), ordered, rng.randint(0, ordered)),
            ).lastrowid
            for session in range(sessions_per_line):
                conn.execute(
                    "INSERT INTO count_sessions (po_line_id, employee_id, counted_at,"
                    " tablets_counted, damaged, notes) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        line,
                        rng.randint(1, len(employees)),
                        (created + timedelta(days=1, minutes=session)).isoformat(),
                        rng.randint(0, 5000),
                        rng.randint(0, 20),
                        filler,
                    ),
                )
    conn.commit()


def create_demo_database(path: str, **kwargs: object) -> None:
    """Create and seed a TabletTracker database file at ``path``."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        seed(conn, **kwargs)  # type: ignore[arg-type]
    finally:
        conn.close()


#: The demo's second database: who changed what, written in the same transaction as the
#: change itself (the app ATTACHes it), so the two databases always agree.
AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS change_log (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    po_id INTEGER,
    detail TEXT NOT NULL DEFAULT ''
);
"""


def create_audit_database(path: str) -> None:
    """The demo's audit-log database, empty (idempotent)."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(AUDIT_SCHEMA)
        conn.commit()
    finally:
        conn.close()

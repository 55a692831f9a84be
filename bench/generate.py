"""Generate a TabletTracker-shaped SQLite database of a chosen size, fast.

Usage::

    python bench/generate.py --size 1GB --out /tmp/tt.db [--wal] [--seed 7]

The schema (tables, foreign keys, indexes) is the app's own, from
``tablettracker_backups.demo.schema``. Rows are shaped like the real data: a few dozen
employees, tablet types and product SKUs, then purchase orders with several lines each and a
few count sessions per line, with free-text notes built from a pharmacy-stock vocabulary (so the
file compresses like real text does, neither like random bytes nor like one repeated string).

Speed matters because the benchmark wants gigabytes: everything is inserted with
``executemany`` in one transaction, with ``synchronous=OFF`` and a large page cache while
generating (the file is rebuilt from scratch if anything goes wrong, so nothing is lost by
skipping fsync). Other benchmarks import :func:`generate` and :func:`parse_size`.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable from a clone
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tablettracker_backups.demo.schema import SUPPLIERS, create_schema

logger = logging.getLogger(__name__)

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1024,
    "KB": 1024,
    "KIB": 1024,
    "M": 1024**2,
    "MB": 1024**2,
    "MIB": 1024**2,
    "G": 1024**3,
    "GB": 1024**3,
    "GIB": 1024**3,
}

#: Purchase orders inserted between two size checks: big enough to amortise the check.
BATCH_ORDERS = 5000

EMPLOYEE_FIRST = (
    "Ada", "Max", "Sam", "Cory", "Priya", "Tomás", "Lena", "Yusuf", "Mei", "Olu", "Sara",
    "Jonas", "Ines", "Ravi", "Nadia", "Kofi", "Elif", "Marta", "Dev", "Hana",
)  # fmt: skip
EMPLOYEE_LAST = (
    "Admin", "Okafor", "Nguyen", "Schmidt", "Haddad", "Kowalski", "Tanaka", "Silva", "Moreau",
    "Ivanova", "Patel", "Larsen", "Costa", "Mensah", "Yilmaz", "Fischer",
)  # fmt: skip
TABLETS = (
    "Ibuprofen", "Paracetamol", "Aspirin", "Metformin", "Amoxicillin", "Vitamin D",
    "Atorvastatin", "Lisinopril", "Omeprazole", "Cetirizine", "Loratadine", "Simvastatin",
    "Amlodipine", "Levothyroxine", "Folic acid", "Iron sulfate", "Magnesium", "Zinc",
    "Vitamin C", "Vitamin B12", "Melatonin", "Naproxen", "Ranitidine", "Prednisolone",
)  # fmt: skip
EXTRA_SUPPLIERS = (
    "Umbrella Pharmaceuticals", "Stark Medical Supply", "Wayne Wholesale Pharma",
    "Cyberdyne Compounding", "Tyrell Therapeutics", "Soylent Nutrition", "Hooli Health",
)  # fmt: skip
NOTE_WORDS = (
    "bottle", "bottles", "carton", "cartons", "pallet", "blister", "pack", "packs", "lot",
    "batch", "seal", "label", "labels", "cap", "caps", "damaged", "crushed", "missing",
    "short", "over", "recount", "recounted", "verified", "checked", "received", "shipped",
    "backorder", "backordered", "invoice", "credit", "supplier", "courier", "dock", "shelf",
    "bin", "aisle", "cold", "room", "expiry", "expires", "expired", "date", "printed",
    "smudged", "torn", "wet", "box", "boxes", "count", "counted", "tablets", "capsules",
    "loose", "split", "broken", "chipped", "discoloured", "sample", "samples", "quarantine",
    "released", "returned", "return", "manager", "signed", "approved", "pending", "QA",
    "stock", "inventory", "scan", "scanned", "barcode", "mismatch", "matches", "the", "a",
    "and", "of", "in", "on", "for", "with", "to", "from", "per", "at", "not", "no", "two",
    "three", "one", "all", "some", "top", "bottom", "left", "right", "outer", "inner",
)  # fmt: skip
NOTE_OPENERS = (
    "Received", "Counted", "Recount after", "Short shipment:", "Over shipment:", "Note:",
    "Checked by QA,", "Supplier called:", "Left on dock,", "Moved to quarantine,",
    "Label issue:", "Damaged in transit:", "Invoice mismatch,", "Approved by manager,",
)  # fmt: skip
STATUSES = ("open", "open", "received", "received", "received", "closed", "closed", "cancelled")


@dataclass(frozen=True)
class GenerateResult:
    """What :func:`generate` wrote."""

    path: Path
    size: int
    rows: dict[str, int]
    seconds: float
    journal_mode: str


def parse_size(text: str) -> int:
    """Bytes in a size such as ``1GB``, ``500MB``, ``64MiB`` or ``1048576`` (binary units)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if match is None or match.group(2).upper() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 1GB, 500MB, 64MiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


class _Notes:
    """Free-text notes like a stock clerk writes: an opener, some words, a lot or a count."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def note(self, words_low: int, words_high: int) -> str:
        rng = self.rng
        words = rng.choices(NOTE_WORDS, k=rng.randint(words_low, words_high))
        detail = rng.random()
        if detail < 0.35:
            words.append(f"lot {rng.choice('ABCDEFGHJK')}{rng.randint(10000, 99999)}")
        elif detail < 0.6:
            words.append(f"{rng.randint(1, 480)} {rng.choice(('short', 'over', 'damaged'))}")
        return f"{rng.choice(NOTE_OPENERS)} {' '.join(words)}."

    def maybe(self, probability: float, words_low: int, words_high: int) -> str:
        return self.note(words_low, words_high) if self.rng.random() < probability else ""


def _reference_rows(conn: sqlite3.Connection, rng: random.Random) -> tuple[int, int]:
    """Employees, tablet types and product SKUs; returns (employee count, product count)."""
    employees = []
    for index in range(60):
        first = EMPLOYEE_FIRST[index % len(EMPLOYEE_FIRST)]
        last = EMPLOYEE_LAST[(index * 7) % len(EMPLOYEE_LAST)]
        role = "admin" if index == 0 else ("manager" if index % 10 == 1 else "staff")
        # A realistic password-hash length (scrypt/pbkdf2 strings), not a real hash.
        fake_hash = f"pbkdf2:sha256:600000${rng.getrandbits(64):016x}${rng.getrandbits(256):064x}"
        employees.append((f"{first.lower()}.{last.lower()}{index}", f"{first} {last}", role,
                          fake_hash, int(rng.random() > 0.15)))  # fmt: skip
    conn.executemany(
        "INSERT INTO employees (username, full_name, role, password_hash, active)"
        " VALUES (?, ?, ?, ?, ?)",
        employees,
    )
    types = [
        (f"{name} {strength:g}mg", strength, per_bottle)
        for name in TABLETS
        for strength, per_bottle in ((100, 30), (250, 60), (500, 100))
    ]
    conn.executemany(
        "INSERT INTO tablet_types (name, strength_mg, tablets_per_bottle) VALUES (?, ?, ?)",
        types,
    )
    products = [
        (
            type_id,
            f"{name[:3].upper()}-{type_id:03d}-{pack}",
            f"{name}, pack of {pack * 30}, {rng.choice(('blister', 'bottle', 'carton'))}",
            rng.randint(50, 9000),
        )
        for type_id, (name, _strength, _per) in enumerate(types, start=1)
        for pack in range(1, 5)
    ]
    conn.executemany(
        "INSERT INTO product_details (tablet_type_id, sku, description, unit_cost_cents)"
        " VALUES (?, ?, ?, ?)",
        products,
    )
    return len(employees), len(products)


def _batch(
    rng: random.Random,
    notes: _Notes,
    first_po: int,
    first_line: int,
    orders: int,
    employees: int,
    products: int,
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Rows for ``orders`` purchase orders with their lines and count sessions."""
    start = datetime(2019, 1, 2, 8, 0, tzinfo=timezone.utc)
    suppliers = SUPPLIERS + EXTRA_SUPPLIERS
    pos: list[tuple[object, ...]] = []
    lines: list[tuple[object, ...]] = []
    sessions: list[tuple[object, ...]] = []
    line_id = first_line
    for po_id in range(first_po, first_po + orders):
        created = start + timedelta(minutes=po_id * 3 + rng.randint(0, 2))
        pos.append(
            (po_id, f"PO-{po_id:08d}", rng.choice(suppliers), rng.choice(STATUSES),
             rng.randint(1, employees), created.isoformat(timespec="seconds"),
             notes.maybe(0.8, 8, 40))
        )  # fmt: skip
        for _ in range(rng.randint(2, 8)):
            ordered = rng.randint(1, 300) * 10
            lines.append(
                (line_id, po_id, rng.randint(1, products), ordered, rng.randint(0, ordered))
            )
            counted = created + timedelta(days=rng.randint(1, 6), minutes=rng.randint(0, 600))
            for session in range(rng.randint(1, 4)):
                when = counted + timedelta(minutes=session * rng.randint(5, 90))
                sessions.append(
                    (line_id, rng.randint(1, employees), when.isoformat(timespec="seconds"),
                     rng.randint(0, 5000), rng.choice((0, 0, 0, 0, 1, 2, 5)),
                     notes.maybe(0.45, 3, 16))
                )  # fmt: skip
            line_id += 1
    return pos, lines, sessions


def _size(conn: sqlite3.Connection) -> int:
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    return page_size * int(conn.execute("PRAGMA page_count").fetchone()[0])


def _rows(conn: sqlite3.Connection) -> Iterator[tuple[str, int]]:
    for table in ("employees", "tablet_types", "product_details", "purchase_orders",
                  "po_lines", "count_sessions"):  # fmt: skip
        yield table, int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def generate(
    out: Path, size: int, *, wal: bool = False, seed: int = 7, overwrite: bool = True
) -> GenerateResult:
    """Write a TabletTracker-shaped database of about ``size`` bytes (never much less) to ``out``.

    The file is built under ``out`` + ``.partial`` and renamed when complete. ``wal`` leaves it
    in WAL mode, otherwise rollback-journal (DELETE) mode. Raises ``FileExistsError`` when
    ``out`` exists and ``overwrite`` is false.
    """
    started = time.monotonic()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists")
    partial = out.with_name(out.name + ".partial")
    for leftover in (partial, partial.with_name(partial.name + "-journal")):
        leftover.unlink(missing_ok=True)
    rng = random.Random(seed)  # reproducible test data, not secrets
    notes = _Notes(rng)
    conn = sqlite3.connect(partial, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA journal_mode=OFF")  # a fresh file: nothing to roll back to
        conn.execute("PRAGMA cache_size=-262144")  # 256 MiB keeps the indexes in memory
        create_schema(conn)  # executescript commits on its own, so before BEGIN
        conn.execute("BEGIN")
        employees, products = _reference_rows(conn, rng)
        po_id, line_id = 1, 1
        while _size(conn) < size:
            pos, lines, sessions = _batch(
                rng, notes, po_id, line_id, BATCH_ORDERS, employees, products
            )
            conn.executemany(
                "INSERT INTO purchase_orders (id, po_number, supplier, status, created_by,"
                " created_at, notes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                pos,
            )
            conn.executemany(
                "INSERT INTO po_lines (id, po_id, product_id, quantity_ordered,"
                " quantity_received) VALUES (?, ?, ?, ?, ?)",
                lines,
            )
            conn.executemany(
                "INSERT INTO count_sessions (po_line_id, employee_id, counted_at,"
                " tablets_counted, damaged, notes) VALUES (?, ?, ?, ?, ?, ?)",
                sessions,
            )
            po_id += len(pos)
            line_id += len(lines)
            logger.info("%d orders, %.0f MiB", po_id - 1, _size(conn) / 2**20)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL" if wal else "PRAGMA journal_mode=DELETE")
        rows = dict(_rows(conn))
        journal_mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()
    partial.replace(out)
    final_size = out.stat().st_size
    return GenerateResult(out, final_size, rows, time.monotonic() - started, journal_mode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", default="1GB", help="target size, e.g. 1GB, 200MB (binary)")
    parser.add_argument("--out", type=Path, required=True, help="database file to write")
    parser.add_argument("--wal", action="store_true", help="leave the database in WAL mode")
    parser.add_argument("--seed", type=int, default=7, help="random seed (reproducible data)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        size = parse_size(args.size)
        result = generate(args.out, size, wal=args.wal, seed=args.seed)
    except (ValueError, OSError, sqlite3.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = ", ".join(f"{name} {count:,}" for name, count in result.rows.items())
    print(
        f"wrote {result.path} ({result.size / 2**20:.0f} MiB, {result.journal_mode}) "
        f"in {result.seconds:.1f}s: {rows}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

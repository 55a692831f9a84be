"""Taking backups: consistent, verified, stored in both folders, committed last."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from tablettracker_backups.backup import cleanup_debris, copy_between, create_backup
from tablettracker_backups.errors import DatabaseError, StorageError, VerificationError
from tablettracker_backups.extract import extract_verified
from tablettracker_backups.settings import Settings, settings_from_mapping
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup
from tests.conftest import flip_byte, make_db

#: What a backup folder holds besides backups: the run lock, the listing's catalog.
NOT_BACKUPS = (".lock", ".catalog")


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_backup_round_trip(tmp_path: Path, journal_mode: str, compression: str) -> None:
    from tablettracker_backups.settings import settings_from_mapping

    db = make_db(tmp_path / "t.db", wal=journal_mode == "wal")
    settings = settings_from_mapping(
        {
            "database": db,
            "dir": tmp_path / "b",
            "secondary_dir": tmp_path / "s",
            "compression": compression,
        }
    )
    result = create_backup(settings)
    meta = result.metadata
    assert result.locations == ("primary", "secondary")
    assert meta.source.journal_mode == journal_mode
    with sqlite3.connect(db) as conn:
        expected = conn.execute("SELECT count(*) FROM po_lines").fetchone()[0]
    assert meta.row_counts["po_lines"] == expected
    info = BackupStore(settings).get(meta.id)
    assert info.verified
    assert [c.state for c in info.copies] == ["ok", "ok"]
    assert verify_backup(BackupStore(settings), meta.id).ok
    for folder in settings.locations:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for entry in folder.iterdir():
            if entry.name == ".catalog":
                # The listing's catalog: owner-only too, the folder and what is in it.
                assert stat.S_IMODE(entry.stat().st_mode) == 0o700, entry
                for item in entry.iterdir():
                    assert stat.S_IMODE(item.stat().st_mode) == 0o600, item
            elif not entry.name.startswith(".lock"):
                assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry
        assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_missing_database_creates_nothing(tmp_path: Path) -> None:
    from tablettracker_backups.settings import settings_from_mapping

    settings = settings_from_mapping({"database": tmp_path / "nope" / "x.db"})
    with pytest.raises(DatabaseError, match="does not exist"):
        create_backup(settings)
    assert not (tmp_path / "nope").exists()


# -- consistency under a concurrent writer ----------------------------------------------------

WRITER = r"""
import sqlite3, sys, pathlib, time
db, stop = sys.argv[1], pathlib.Path(sys.argv[2])
conn = sqlite3.connect(db, timeout=30, isolation_level=None)
conn.execute("PRAGMA synchronous=OFF")  # test speed only; durability is not under test
n = 0
while not stop.exists():
    time.sleep(0.002)  # an app-like pace; a tight loop would starve every reader
    n += 1
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO ledger_a (qty) VALUES (?)", (n,))
    conn.execute("INSERT INTO ledger_b (qty) VALUES (?)", (n,))
    if n % 7 == 0:
        # Move quantity between rows inside one transaction: sums stay equal.
        conn.execute("UPDATE ledger_a SET qty = qty + 5 WHERE id = (SELECT min(id) FROM ledger_a)")
        conn.execute("UPDATE ledger_b SET qty = qty + 5 WHERE id = (SELECT max(id) FROM ledger_b)")
    conn.execute("COMMIT")
conn.close()
"""


def _ledger_rows(db: Path) -> int:
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        return int(conn.execute("SELECT count(*) FROM ledger_a").fetchone()[0])


def test_backups_taken_during_writes_are_consistent(tmp_path: Path, journal_mode: str) -> None:
    """A writer keeps sum(qty) equal across two tables in every transaction; every backup
    taken meanwhile, restored, satisfies that invariant (a torn copy would not)."""
    db = make_db(tmp_path / "live.db", wal=journal_mode == "wal")
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript(
            "CREATE TABLE ledger_a (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL);"
            "CREATE TABLE ledger_b (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL);"
            # ~20 MB of padding: the backup API then needs several steps (4096 pages each).
            "CREATE TABLE padding (blob BLOB);"
        )
        conn.executemany(
            "INSERT INTO padding VALUES (randomblob(?))", [(1024 * 1024,) for _ in range(20)]
        )
        conn.commit()
    settings = settings_from_mapping({"database": db, "dir": tmp_path / "b"})
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(stop)])
    ids = []
    try:
        seen = 0
        for _ in range(4):
            # Wait (bounded) until the writer has committed more since the last backup.
            deadline = time.monotonic() + 30
            while _ledger_rows(db) <= seen and time.monotonic() < deadline:
                assert writer.poll() is None, "writer died"
            seen = _ledger_rows(db)
            ids.append(create_backup(settings).metadata.id)
        assert writer.poll() is None, "writer died"
    finally:
        stop.touch()
        writer.wait(timeout=30)
    assert writer.returncode == 0
    store = BackupStore(settings)
    counts = []
    for backup_id in ids:
        meta = store.get(backup_id).metadata
        assert meta is not None
        restored = tmp_path / f"{backup_id}.db"
        extract_verified(store.data_path("primary", backup_id, meta.compression), meta, restored)
        with closing(sqlite3.connect(restored)) as conn:
            a_rows, a_sum = conn.execute("SELECT count(*), sum(qty) FROM ledger_a").fetchone()
            b_rows, b_sum = conn.execute("SELECT count(*), sum(qty) FROM ledger_b").fetchone()
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert (a_rows, a_sum) == (b_rows, b_sum)
        assert meta.row_counts["ledger_a"] == a_rows
        assert mode == "delete"  # self-contained: no -wal needed beside it
        counts.append(a_rows)
    assert counts == sorted(counts) and counts[0] > 0 and counts[-1] > counts[0]


# -- failures leave nothing that lists ---------------------------------------------------------


def test_not_a_database_and_empty_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("hello, this is not SQLite at all")
    empty = tmp_path / "empty.db"
    empty.touch()
    for path, needle in ((text, "not a SQLite database"), (empty, "empty")):
        settings = settings_from_mapping({"database": path, "dir": tmp_path / "b"})
        with pytest.raises(DatabaseError, match=needle):
            create_backup(settings)
        assert BackupStore(settings).list() == []


def test_unwritable_primary_folder_is_a_storage_error(db_path: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    settings = settings_from_mapping({"database": db_path, "dir": blocker / "backups"})
    with pytest.raises(StorageError):
        create_backup(settings)


def test_failed_secondary_copy_is_a_warning_and_primary_stays(
    db_path: Path, tmp_path: Path
) -> None:
    settings = settings_from_mapping({"database": db_path, "dir": tmp_path / "b"})
    first = create_backup(settings)
    # A file now stands where the secondary folder should be (its disk is away).
    blocker = tmp_path / "mirror"
    blocker.write_text("not a folder")
    with_secondary = settings_from_mapping(
        {"database": db_path, "dir": tmp_path / "b", "secondary_dir": blocker}
    )
    second = create_backup(with_secondary)
    assert second.locations == ("primary",)
    (warning,) = second.warnings
    assert warning.startswith("secondary copy failed: ") and str(blocker) in warning
    # The new backup is committed and sound in the primary folder; its copy lists as missing.
    store = BackupStore(with_secondary)
    assert [i.id for i in store.list()] == [second.metadata.id, first.metadata.id]
    assert store.get(second.metadata.id).copy_state("secondary") == "missing"
    assert verify_backup(BackupStore(settings), second.metadata.id).ok
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".tmp-")]
    assert blocker.read_text() == "not a folder"


def test_debris_from_a_killed_run_is_removed_by_the_next(settings: Settings) -> None:
    first = create_backup(settings)
    store = BackupStore(settings)
    meta = first.metadata
    # A crash between data commit and metadata commit: data file, no metadata.
    orphan_id = "20200101T000000Z-abcdef"
    for folder in settings.locations:
        (folder / f"{orphan_id}.db.zst").write_bytes(b"half a backup")
        (folder / ".tmp-1234abcd-x.db").write_bytes(b"temp")
    assert [i.id for i in store.list()] == [meta.id]
    second = create_backup(settings)
    for folder in settings.locations:
        names = sorted(p.name for p in folder.iterdir() if not p.name.startswith(NOT_BACKUPS))
        assert names == sorted(
            [
                "database.json",
                f"{meta.id}.db.zst",
                f"{meta.id}.json",
                f"{second.metadata.id}.db.zst",
                f"{second.metadata.id}.json",
            ]
        )


def test_cleanup_reports_every_file_it_removed(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    kept = create_backup(settings).metadata
    expected = []
    for folder in settings.locations:
        for name in (".tmp-1234abcd-x.db", "20200101T000000Z-abcdef.db.zst"):
            (folder / name).write_bytes(b"debris")
            expected.append(folder / name)
    with caplog.at_level("INFO", logger="tablettracker_backups.backup"):
        assert sorted(cleanup_debris(settings)) == sorted(expected)
    logged = [r.getMessage() for r in caplog.records if r.name == "tablettracker_backups.backup"]
    assert "removed 4 leftover temporary files" in logged
    assert not any(p.exists() for p in expected)
    assert BackupStore(settings).get(kept.id).good
    assert cleanup_debris(settings) == []


def _secondary_files(settings: Settings) -> list[str]:
    assert settings.secondary_dir is not None
    return sorted(
        p.name for p in settings.secondary_dir.iterdir() if not p.name.startswith(NOT_BACKUPS)
    )


def test_a_copy_from_a_damaged_source_is_refused_and_leaves_nothing(settings: Settings) -> None:
    meta = create_backup(settings).metadata
    store = BackupStore(settings)
    store.data_path_for("secondary", meta).unlink()
    store.metadata_path("secondary", meta.id).unlink()
    before = _secondary_files(settings)
    # One flipped byte: the size is right, only the SHA-256 tells.
    flip_byte(store.data_path_for("primary", meta))
    with pytest.raises(VerificationError) as caught:
        copy_between(store, "primary", "secondary", meta)
    assert str(caught.value) == (
        f"the secondary copy of {meta.id} does not match its metadata "
        "(the primary copy it came from is damaged)"
    )
    assert _secondary_files(settings) == before  # no data file, no temporary file


def test_a_copy_whose_metadata_cannot_be_written_takes_its_data_back(settings: Settings) -> None:
    meta = create_backup(settings).metadata
    store = BackupStore(settings)
    store.data_path_for("secondary", meta).unlink()
    metadata = store.metadata_path("secondary", meta.id)
    metadata.unlink()
    metadata.mkdir()  # something in the way of the commit marker
    with pytest.raises(StorageError):
        copy_between(store, "primary", "secondary", meta)
    assert not store.data_path_for("secondary", meta).exists()
    assert _secondary_files(settings) == sorted(["database.json", metadata.name])
    metadata.rmdir()
    copy_between(store, "primary", "secondary", meta)  # once it is out of the way
    assert store.get(meta.id).copy_state("secondary") == "ok"


@pytest.mark.parametrize(("kind", "trigger"), [("manual", "web:admin"), ("auto", "web")])
def test_a_failed_manual_or_automatic_backup_is_remembered_until_one_succeeds(
    settings: Settings, kind: str, trigger: str
) -> None:
    import json

    from tablettracker_backups.status import STATUS_FILE

    create_backup(settings)  # the folder exists: a failure has somewhere to be noted
    live = settings.database.read_bytes()
    settings.database.write_bytes(b"")  # an empty file is no database
    with pytest.raises(DatabaseError) as caught:
        create_backup(settings, kind=kind, trigger=trigger)
    status = json.loads((settings.backup_dir / STATUS_FILE).read_text())
    noted = status["last_backup_failure"]
    assert {k: noted[k] for k in ("kind", "trigger", "error")} == {
        "kind": kind,
        "trigger": trigger,
        "error": str(caught.value),
    }
    assert noted["at"].endswith("Z")
    settings.database.write_bytes(live)
    create_backup(settings, kind=kind, trigger=trigger)
    status = json.loads((settings.backup_dir / STATUS_FILE).read_text())
    assert status.get("last_backup_failure") is None


def test_a_failed_scheduled_backup_is_left_to_the_run_to_note(settings: Settings) -> None:
    import json

    from tablettracker_backups.status import STATUS_FILE

    create_backup(settings)
    settings.database.write_bytes(b"")
    with pytest.raises(DatabaseError):
        create_backup(settings, kind="scheduled", trigger="run")
    status_file = settings.backup_dir / STATUS_FILE
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    assert status.get("last_backup_failure") is None


def test_the_read_back_proof_checks_the_stored_bytes_not_only_what_they_decompress_to(
    tmp_path: Path,
) -> None:
    """A gzip header byte (its mtime) can change and the file still decompresses to the same
    snapshot: the proof after writing compares the stored file's own SHA-256 too."""
    from tablettracker_backups.backup import _prove_stored
    from tablettracker_backups.compression import compress_file

    raw = make_db(tmp_path / "snapshot.db")
    stored = tmp_path / "snapshot.db.gz"
    stream = compress_file(raw, stored, algorithm="gzip", level=6)
    _prove_stored(stored, "gzip", stream)  # as written: proven
    flip_byte(stored, offset=5)
    with pytest.raises(VerificationError, match="SHA-256 does not match its metadata"):
        _prove_stored(stored, "gzip", stream)


def test_a_backups_durations_are_seconds_to_a_tenth_of_a_millisecond(settings: Settings) -> None:
    durations = create_backup(settings).metadata.durations
    assert {"snapshot", "total"} <= set(durations)
    assert all(isinstance(v, float) and round(v, 4) == v for v in durations.values()), durations
    assert all(0 <= v <= durations["total"] < 60 for v in durations.values()), durations


def test_a_label_and_pin_are_kept_and_the_log_names_each_backup_stored(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="tablettracker_backups.backup"):
        meta = create_backup(settings, label="before the count", pinned=True).metadata
    assert (meta.label, meta.pinned) == ("before the count", True)
    listed = BackupStore(settings).get(meta.id).metadata
    assert listed is not None and (listed.label, listed.pinned) == ("before the count", True)
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "tablettracker_backups.backup" and r.levelno == logging.INFO
    ]
    # The scheduled task's log names each backup, its size and where it went.
    [stored] = [line for line in lines if line.startswith(f"backup {meta.id} stored ")]
    assert stored.startswith(f"backup {meta.id} stored ({meta.stored_size} bytes) in ")
    assert "primary" in stored and "secondary" in stored

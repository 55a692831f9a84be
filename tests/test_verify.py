"""Verification checks both hashes: the stored file's and the decompressed database's.

Each test damages a backup in a way that only one comparison can see, so removing that
comparison from ``verify.extract_verified`` or ``compression.decompress_file`` makes it fail.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.compression import compress_file, decompress_file
from tablettracker_backups.errors import RestoreError
from tablettracker_backups.restore import restore_backup
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup, verify_copy
from tests.conftest import flip_byte, rewrite_metadata

#: Offsets of the gzip header's MTIME (4-7), XFL (8) and OS (9) bytes: gzip itself never
#: checks them, so a flip there still decompresses to the right database. Only the stored
#: file's SHA-256 can tell.
GZIP_UNCHECKED_HEADER = [4, 5, 6, 7, 8, 9]


@pytest.fixture
def gzip_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(compression="gzip")


def dump(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        return "\n".join(conn.iterdump())


@pytest.mark.parametrize("offset", GZIP_UNCHECKED_HEADER)
def test_flipped_gzip_header_byte_fails_verify(
    gzip_settings: Settings, tmp_path: Path, offset: int
) -> None:
    backup = create_backup(gzip_settings).metadata
    store = BackupStore(gzip_settings)
    data = store.data_path("primary", backup.id, "gzip")
    flip_byte(data, offset)
    # The damage is invisible to gzip: the file still decompresses to the same database.
    out = decompress_file(data, tmp_path / "plain.db", algorithm="gzip")
    assert out.raw_sha256 == backup.raw_sha256
    result = verify_backup(store, backup.id)
    assert not result.ok
    primary, secondary = result.copies
    assert not primary.ok and "SHA-256 does not match" in (primary.error or "")
    assert secondary.ok
    info = store.get(backup.id)
    assert info.copy_state("primary") == "damaged"


def swap_in_another_database(settings: Settings, backup_id: str, scratch: Path) -> None:
    """Replace every copy's data file with a sound compressed database that differs from the
    one the metadata describes by one cell only: same tables, same row counts, same schema,
    passes integrity_check. The stored hash and size in the metadata are updated to match,
    so only the decompressed database's SHA-256 (raw_sha256) can catch the swap."""
    store = BackupStore(settings)
    meta = store.get(backup_id).metadata
    assert meta is not None
    source = store.data_path("primary", backup_id, meta.compression)
    plain = scratch / "plain.db"
    decompress_file(source, plain, algorithm=meta.compression)
    with closing(sqlite3.connect(plain)) as conn:
        conn.execute("UPDATE count_sessions SET notes = 'tampered' WHERE id = 1")
        conn.commit()
    packed = scratch / "packed"
    stream = compress_file(plain, packed, algorithm=meta.compression, level=meta.compression_level)
    assert stream.raw_sha256 != meta.raw_sha256
    for location in store.locations:
        shutil.copyfile(packed, store.data_path(location, backup_id, meta.compression))
    rewrite_metadata(settings, backup_id, sha256=stream.sha256, stored_size=stream.stored_size)


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_decompressed_hash_mismatch_fails_verify(
    make_settings: Callable[..., Settings], tmp_path: Path, compression: str
) -> None:
    settings = make_settings(compression=compression)
    backup = create_backup(settings).metadata
    swap_in_another_database(settings, backup.id, tmp_path)
    store = BackupStore(settings)
    assert store.get(backup.id).verified  # the cheap look (sizes) cannot see it
    result = verify_backup(store, backup.id)
    assert not result.usable
    for copy in result.copies:
        assert copy.error == "decompressed database's SHA-256 does not match its metadata"


def test_decompressed_hash_mismatch_refuses_restore(settings: Settings, tmp_path: Path) -> None:
    backup = create_backup(settings).metadata
    with closing(sqlite3.connect(settings.database)) as conn:
        conn.execute("DELETE FROM count_sessions WHERE id = 2")
        conn.commit()
    live_before = dump(settings.database)
    swap_in_another_database(settings, backup.id, tmp_path)
    with pytest.raises(RestoreError) as caught:
        restore_backup(settings, backup.id)
    message = str(caught.value)
    assert "nothing was changed" in message
    assert message.count("decompressed database's SHA-256 does not match") == 2  # both copies
    assert dump(settings.database) == live_before


# -- each later check, reached by a backup whose hashes all match its metadata ---------------


def corrupt_an_index(conn: sqlite3.Connection) -> None:
    """Point the po_lines_po index's definition at another column: the index's entries no
    longer match its table, which only integrity_check sees (the file opens and reads fine)."""
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute(
        "UPDATE sqlite_master SET sql = 'CREATE INDEX po_lines_po ON po_lines(product_id)' "
        "WHERE name = 'po_lines_po'"
    )
    conn.execute("PRAGMA writable_schema=OFF")


def break_a_foreign_key(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("UPDATE count_sessions SET employee_id = 999999 WHERE id IN (1, 2)")


def drop_a_row(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM count_sessions WHERE id = 3")


def add_an_index(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE INDEX sneaky ON count_sessions(notes)")


def not_a_database(conn: sqlite3.Connection) -> None:
    """Marker: the stored file decompresses to text, not a database (handled below)."""


CRAFTED: dict[str, tuple[Callable[[sqlite3.Connection], None], str]] = {
    "an index out of step with its table": (corrupt_an_index, "integrity_check failed: "),
    "two broken foreign keys": (break_a_foreign_key, "foreign_key_check found 2 violations"),
    "one row fewer": (drop_a_row, "row counts differ from its metadata"),
    "one more index": (add_an_index, "schema differs from its metadata"),
    "text, not a database": (not_a_database, "is not a SQLite database"),
}


def replace_backup(
    settings: Settings, backup_id: str, scratch: Path, change: Callable[..., None]
) -> None:
    """Store, in every copy, a changed database whose stored AND raw SHA-256 are written into
    the metadata: the hashes pass, so only the check named by the case can catch it."""
    store = BackupStore(settings)
    meta = store.get(backup_id).metadata
    assert meta is not None
    plain = scratch / "plain.db"
    decompress_file(
        store.data_path("primary", backup_id, meta.compression), plain, algorithm=meta.compression
    )
    if change is not_a_database:
        plain.write_text("id,name\n" * 200)
    else:
        with closing(sqlite3.connect(plain, isolation_level=None)) as conn:
            change(conn)
    packed = scratch / "packed"
    stream = compress_file(plain, packed, algorithm=meta.compression, level=1)
    for location in store.locations:
        shutil.copyfile(packed, store.data_path(location, backup_id, meta.compression))
    rewrite_metadata(
        settings,
        backup_id,
        sha256=stream.sha256,
        stored_size=stream.stored_size,
        raw_sha256=stream.raw_sha256,
    )


@pytest.mark.parametrize("case", list(CRAFTED))
def test_each_database_check_fails_verify_and_restore(
    settings: Settings, tmp_path: Path, case: str
) -> None:
    change, message = CRAFTED[case]
    backup = create_backup(settings).metadata
    live_before = dump(settings.database)
    replace_backup(settings, backup.id, tmp_path, change)
    store = BackupStore(settings)
    result = verify_backup(store, backup.id)
    assert [c.ok for c in result.copies] == [False, False]
    for copy in result.copies:
        assert copy.error is not None and message in copy.error, copy.error
        if message.endswith("from its metadata"):
            assert copy.error == message  # word for word: nothing else went wrong
        if case == "an index out of step with its table":
            assert "po_lines_po" in copy.error  # integrity_check's own words are passed on
    # No scratch file is left behind by a failed check.
    for folder in settings.locations:
        assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]
    # Since the trust issue a restore whose stored and decompressed hashes both match does not
    # repeat the full checks before the write (verify is the drill); what they would catch is
    # caught by the check after the write, which puts the safety snapshot back. Foreign-key
    # violations are findings, not failures: faithful bytes are restored as they are.
    if case == "two broken foreign keys":
        restore_backup(settings, backup.id)
        return
    # A file that does not even open as SQLite is refused before anything is written (the
    # light check on the chosen copy); the rest are caught by the check after the write.
    expected = (
        "nothing was changed" if change is not_a_database else "nothing was changed|was put back"
    )
    with pytest.raises(RestoreError, match=expected):
        restore_backup(settings, backup.id)
    assert dump(settings.database) == live_before


def test_verify_records_each_outcome_in_that_copy(settings: Settings) -> None:
    backup = create_backup(settings).metadata
    store = BackupStore(settings)
    # A stale record, to see that a passing check writes its own.
    rewrite_metadata(
        settings,
        backup.id,
        verification={**json.loads(backup.to_json())["verification"], "integrity_check": "old"},
    )
    flip_byte(store.data_path("primary", backup.id, "zstd"))
    before = datetime.now(timezone.utc)
    result = verify_backup(store, backup.id)
    primary = store.read_metadata("primary", backup.id).verification
    secondary = store.read_metadata("secondary", backup.id).verification
    assert result.copies[0].error is not None
    assert (primary.ok, primary.error, primary.integrity_check) == (
        False,
        result.copies[0].error,
        "old",  # a failed check does not claim integrity_check ran
    )
    assert (secondary.ok, secondary.error, secondary.integrity_check) == (True, None, "ok")
    for record in (primary, secondary):
        assert record.verified_at >= before and record.verified_at.tzinfo is not None
    assert result.to_dict() == {
        "id": backup.id,
        "ok": False,
        "copies": [
            # depth: how far the check went (an encrypted copy without its key stops short).
            {
                "location": "primary",
                "ok": False,
                "error": result.copies[0].error,
                "depth": "full",
                "note": None,
            },
            {"location": "secondary", "ok": True, "error": None, "depth": "full", "note": None},
        ],
    }


def test_a_missing_copy_is_reported_and_the_other_still_checked(settings: Settings) -> None:
    backup = create_backup(settings).metadata
    store = BackupStore(settings)
    store.metadata_path("primary", backup.id).unlink()
    result = verify_backup(store, backup.id)
    assert [(c.location, c.ok, c.error) for c in result.copies] == [
        ("primary", False, "copy is missing"),
        ("secondary", True, None),
    ]
    assert not result.ok and result.usable


def test_unreadable_metadata_is_reported_by_location(settings: Settings) -> None:
    backup = create_backup(settings).metadata
    store = BackupStore(settings)
    store.metadata_path("secondary", backup.id).write_text("{not json")
    copy = verify_copy(store, "secondary", backup.id)
    assert not copy.ok and copy.location == "secondary"
    assert copy.error is not None and copy.error.startswith(f"secondary copy of {backup.id}: ")


def test_missing_and_truncated_data_files_are_named(settings: Settings) -> None:
    backup = create_backup(settings).metadata
    store = BackupStore(settings)
    data = store.data_path("primary", backup.id, "zstd")
    data.write_bytes(data.read_bytes()[:-10])
    assert verify_copy(store, "primary", backup.id).error == (
        f"data file is {backup.stored_size - 10} bytes, metadata says {backup.stored_size}"
    )
    data.unlink()
    assert verify_copy(store, "primary", backup.id).error == "data file is missing"


def test_progress_counts_every_decompressed_byte(settings: Settings) -> None:
    backup = create_backup(settings).metadata
    seen: list[int] = []
    result = verify_backup(BackupStore(settings), backup.id, progress=seen.append)
    assert result.ok
    assert sum(seen) == 2 * backup.raw_size  # both copies


def test_a_copy_that_cannot_be_checked_is_not_marked_damaged(
    make_settings: Callable[..., Settings], full_fs: Path
) -> None:
    settings = make_settings(dir=full_fs / "backups", secondary_dir=None)
    backup = create_backup(settings).metadata
    # No room left for the scratch copy.
    with (full_fs / "filler").open("wb") as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 65536)
    store = BackupStore(settings)
    copy = verify_copy(store, "primary", backup.id)
    assert (copy.location, copy.ok) == ("primary", False)
    assert copy.error is not None and copy.error.startswith("could not check: no space left")
    (full_fs / "filler").unlink()
    assert store.read_metadata("primary", backup.id).verification.ok  # not recorded as damaged


def test_restore_passes_over_a_copy_that_does_not_open_as_sqlite(
    settings: Settings, tmp_path: Path
) -> None:
    """The light check restore runs on the copy it chose (its hashes all match): a file that
    is not a database is passed over in those words, before a restore could start with it.
    (restore_backup alone cannot tell this check apart: the write step refuses such a file
    too, later.)"""
    from tablettracker_backups.sound_copy import extract_sound_copy

    backup = create_backup(settings).metadata
    replace_backup(settings, backup.id, tmp_path, not_a_database)
    notes: list[str] = []
    with pytest.raises(RestoreError, match="no sound copy"):
        extract_sound_copy(BackupStore(settings), backup.id, notes, None, None, use_offsite=False)
    assert len(notes) == 2 and all("is not a SQLite database" in note for note in notes), notes
    for folder in settings.locations:
        assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]

"""Verification checks both hashes: the stored file's and the decompressed database's.

Each test damages a backup in a way that only one comparison can see, so removing that
comparison from ``verify.extract_verified`` or ``compression.decompress_file`` makes it fail.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.compression import compress_file, decompress_file
from tablettracker_backups.errors import RestoreError
from tablettracker_backups.restore import restore_backup
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup
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

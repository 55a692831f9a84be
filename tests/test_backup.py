"""Taking backups: consistent, verified, stored in both folders, committed last."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.errors import DatabaseError
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup
from tests.conftest import make_db


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
            if not entry.name.startswith(".lock"):
                assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry
        assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_missing_database_creates_nothing(tmp_path: Path) -> None:
    from tablettracker_backups.settings import settings_from_mapping

    settings = settings_from_mapping({"database": tmp_path / "nope" / "x.db"})
    with pytest.raises(DatabaseError, match="does not exist"):
        create_backup(settings)
    assert not (tmp_path / "nope").exists()

"""The format seam: version 1 behind it, a version this code does not know refused by name."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.errors import NewerFormat, VerificationError
from tablettracker_backups.formats import FILES, format_of
from tablettracker_backups.settings import Settings
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.storage.rclone import RcloneStore
from tests.conftest import flip_byte


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM po_lines").fetchone()[0])


def test_version_1_names_its_one_object_and_every_name_it_may_have(settings: Settings) -> None:
    meta = create_backup(settings).metadata
    assert format_of(meta) is FILES and FILES.version == meta.format_version == 1
    [part] = FILES.parts(LocalStore(settings.backup_dir), meta)
    assert (part.key, part.sha256) == (meta.data_file, meta.sha256)
    assert meta.data_file in FILES.owned_keys(meta)
    assert f"{meta.id}.db.gz.age" in FILES.owned_keys(meta)


def test_a_format_this_code_does_not_know_is_refused_by_name(settings: Settings) -> None:
    meta = create_backup(settings).metadata
    newer = dataclasses.replace(meta, format_version=3)
    with pytest.raises(NewerFormat, match="format 3, written by a newer version"):
        format_of(newer)


def test_version_1_extracts_from_a_folder_and_from_a_remote_store_checked(
    settings: Settings, db_path: Path, tmp_path: Path
) -> None:
    meta = create_backup(settings).metadata
    local = LocalStore(settings.backup_dir)
    out = tmp_path / "from-folder.db"
    FILES.extract(local, meta, out, scratch=tmp_path)
    assert _rows(out) == _rows(db_path)
    if shutil.which("rclone") is None:
        pytest.skip("rclone is not installed")
    config = tmp_path / "rclone.conf"
    config.write_text("[disk]\ntype = local\n")
    remote_root = tmp_path / "remote"
    remote_root.mkdir()
    shutil.copyfile(settings.backup_dir / meta.data_file, remote_root / meta.data_file)
    remote = RcloneStore(f"disk:{remote_root}", config=config)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "from-remote.db"
    FILES.extract(remote, meta, out, scratch=scratch)
    assert _rows(out) == _rows(db_path)
    assert list(scratch.iterdir()) == []
    # A changed byte in the remote copy: refused, and neither the result nor the download stays.
    flip_byte(remote_root / meta.data_file)
    damaged = tmp_path / "damaged.db"
    with pytest.raises(VerificationError, match=f"{meta.data_file} in rclone"):
        FILES.extract(remote, meta, damaged, scratch=scratch)
    assert not damaged.exists() and list(scratch.iterdir()) == []

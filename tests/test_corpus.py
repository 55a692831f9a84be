"""Databases as apps really leave them: each is backed up, verified and restored, and what the
checks found in its data is recorded as findings, never a reason to throw the copy away."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from tablettracker_backups.backup import create_backup
from tablettracker_backups.cli import cli
from tablettracker_backups.errors import BackupNotFound
from tablettracker_backups.formats import format_of
from tablettracker_backups.health import check_health
from tablettracker_backups.restore import preview_restore, restore_backup
from tablettracker_backups.settings import Settings, settings_from_mapping
from tablettracker_backups.snapshot import count_rows
from tablettracker_backups.states import Level
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup
from tests.conftest import rewrite_metadata
from tests.corpus import CORPUS, Expected, damage_page


def corpus_settings(
    tmp_path: Path, name: str, backup_format: str = "files", journal: str = "delete"
) -> tuple[Settings, Expected]:
    (tmp_path / "app").mkdir()
    db = tmp_path / "app" / f"{name}.db"
    expected = CORPUS[name](db)
    if journal != "delete":
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute(f"PRAGMA journal_mode={journal}").fetchone()[0] == journal
    settings = settings_from_mapping(
        {
            "database": db,
            "dir": tmp_path / "backups",
            "secondary_dir": tmp_path / "mirror",
            "disk_warning": "1MB",
            "disk_critical": "1MB",
            "format": backup_format,
        }
    )
    return settings, expected


def header(path: Path) -> tuple[int, int, int]:
    with closing(sqlite3.connect(path)) as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.execute(f"PRAGMA {name}").fetchone()[0])
            for name in ("page_size", "user_version", "application_id")
        )


def schema(path: Path) -> list[tuple[str, str, str]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()


def integrity(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        try:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        except sqlite3.DatabaseError as exc:  # damage bad enough to stop the check
            return str(exc)


def assert_holds(
    path: Path, expected: Expected, original_schema: list[tuple[str, str, str]]
) -> None:
    """A restored file holds what the corpus database held: rows, header fields, schema."""
    with closing(sqlite3.connect(path)) as conn:
        counts, not_counted = count_rows(conn)
    assert counts == expected.rows
    assert not_counted == expected.not_counted
    assert header(path) == (expected.page_size, expected.user_version, expected.application_id)
    assert schema(path) == original_schema
    assert (integrity(path) == "ok") is not expected.source_damaged


def change(path: Path) -> None:
    """Move a live database on, so that a restore has something to replace."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE written_after_the_backup (x)")
        conn.execute("INSERT INTO written_after_the_backup VALUES (1)")


@pytest.mark.parametrize(
    ("backup_format", "journal"), [("files", "delete"), ("pages", "delete"), ("pages", "wal")]
)
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_database_is_backed_up_verified_and_restored(
    name: str, backup_format: str, journal: str, tmp_path: Path
) -> None:
    """Every corpus database round-trips through either format (version 2 in both journal
    modes): checked, verified, restored into a new file and over the live one."""
    settings, expected = corpus_settings(tmp_path, name, backup_format, journal)
    original_schema = schema(settings.database)

    meta = create_backup(settings).metadata
    assert meta.format_version == (2 if backup_format == "pages" else 1)
    found = meta.findings
    assert meta.row_counts == expected.rows
    assert found.foreign_key_violations == expected.foreign_key_violations
    assert found.foreign_key_tables == expected.foreign_key_tables
    assert len(found.foreign_key_samples) == min(5, expected.foreign_key_violations)
    assert {s.table for s in found.foreign_key_samples} <= set(expected.foreign_key_tables)
    assert found.not_counted == expected.not_counted
    assert found.source_damaged is expected.source_damaged
    assert (found.integrity == "ok") is not expected.source_damaged
    stopped = found.integrity.startswith("integrity_check stopped: database disk image")
    assert stopped is expected.integrity_stops, found.integrity
    if expected.integrity is not None:
        assert found.integrity == expected.integrity
    assert meta.source.page_size == expected.page_size

    store = BackupStore(settings)
    info = store.get(meta.id)
    assert info.verified, info.problems  # the copy is faithful whatever the data holds
    assert info.good is not expected.source_damaged
    assert info.copies and all(c.state == "ok" for c in info.copies)

    checked = verify_backup(store, meta.id)
    assert checked.ok, checked

    # Into a new file: exactly the snapshot's bytes.
    fresh = tmp_path / "restored" / "fresh.db"
    restore_backup(settings, meta.id, to=fresh)
    if journal == "wal":
        # A new file is put back in WAL mode through SQLite, which rewrites header fields;
        # the snapshot itself, as the format builds it, is byte for byte what was taken.
        with closing(sqlite3.connect(fresh)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        built = tmp_path / "built.db"
        store_copy = LocalStore(settings.backup_dir)
        format_of(meta).extract(store_copy, meta, built, scratch=tmp_path)
        assert hashlib.sha256(built.read_bytes()).hexdigest() == meta.raw_sha256
    else:
        assert hashlib.sha256(fresh.read_bytes()).hexdigest() == meta.raw_sha256
    assert_holds(fresh, expected, original_schema)

    # Over the live database, whatever it holds now: the safety snapshot is always kept.
    if not expected.source_damaged:
        change(settings.database)
    preview = preview_restore(settings, meta.id)
    assert preview.kind == "manual" and preview.source_damaged is expected.source_damaged
    assert preview.foreign_key_violations == expected.foreign_key_violations
    assert preview.not_counted == expected.not_counted
    done = restore_backup(settings, meta.id)
    assert_holds(settings.database, expected, original_schema)
    assert done.safety_snapshot_id is not None
    safety = BackupStore(settings).get(done.safety_snapshot_id)
    assert safety.kind == "pre-restore" and safety.verified
    assert safety.source_damaged is expected.source_damaged

    # latest: the newest good regular backup, never the safety snapshot just taken.
    if expected.source_damaged:
        with pytest.raises(BackupNotFound, match="source-damaged"):
            BackupStore(settings).latest()
    else:
        assert BackupStore(settings).latest().id == meta.id


def test_findings_are_shown_by_list_and_show(tmp_path: Path) -> None:
    settings, _ = corpus_settings(tmp_path, "foreign-key-violations")
    backup_id = create_backup(settings).metadata.id
    where = ["--database", str(settings.database), "--backup-dir", str(settings.backup_dir)]
    runner = CliRunner()
    listed = json.loads(runner.invoke(cli, ["list", "--json", *where]).stdout)
    assert listed[0]["findings"]["foreign_key_violations"] == 47
    assert listed[0]["good"] is True and listed[0]["latest"] is True
    text = runner.invoke(cli, ["list", *where]).stdout
    assert "fk:47" in text
    shown = runner.invoke(cli, ["show", "latest", *where])
    assert shown.exit_code == 0, shown.output
    assert backup_id in shown.stdout and "47 foreign-key violation(s)" in shown.stdout
    assert "e.g. lines -> orders" in shown.stdout  # a sample names the table and its parent


def test_virtual_table_module_not_loaded_is_listed_as_not_counted(tmp_path: Path) -> None:
    settings, _ = corpus_settings(tmp_path, "unloaded-module")
    create_backup(settings)
    where = ["--database", str(settings.database), "--backup-dir", str(settings.backup_dir)]
    shown = CliRunner().invoke(cli, ["show", "latest", *where])
    assert shown.exit_code == 0, shown.output
    assert "vec_items: not counted: module vec0 not loaded" in shown.stdout
    preview = preview_restore(settings, "latest")
    assert preview.not_counted == {"vec_items": "not counted: module vec0 not loaded"}


def test_foreign_key_count_rising_warns_and_names_the_table(tmp_path: Path) -> None:
    settings, _ = corpus_settings(tmp_path, "foreign-key-violations")
    create_backup(settings)
    steady = [f for f in check_health(settings).findings if f.code.startswith("foreign-keys")]
    assert [(f.level, f.code) for f in steady] == [(Level.OK, "foreign-keys")]
    assert "47 foreign-key violation(s)" in steady[0].message

    create_backup(settings)  # the same count again: still only reported
    report = check_health(settings)
    assert {f.code for f in report.findings if f.level != Level.OK} == set()

    with closing(sqlite3.connect(settings.database)) as conn:
        conn.execute("INSERT INTO lines VALUES (5000, 'orphan')")
        conn.commit()
    create_backup(settings)
    rose = [f for f in check_health(settings).findings if f.code == "foreign-keys-rose"]
    assert len(rose) == 1 and rose[0].level == Level.WARNING
    assert "from 47 to 48" in rose[0].message and "in lines" in rose[0].message
    assert "orders" not in rose[0].message  # only the table whose count rose


def test_live_database_damage_points_to_the_newest_good_backup(tmp_path: Path) -> None:
    settings, _ = corpus_settings(tmp_path, "foreign-key-violations")
    good = create_backup(settings).metadata.id
    with closing(sqlite3.connect(settings.database)) as conn:
        conn.execute("CREATE INDEX orders_total ON orders(total, customer_id)")
        conn.commit()
        root = int(
            conn.execute("SELECT rootpage FROM sqlite_master WHERE name='orders_total'").fetchone()[
                0
            ]
        )
    damage_page(settings.database, root, 4096)
    damaged = create_backup(settings).metadata
    assert damaged.source_damaged

    store = BackupStore(settings)
    assert store.list()[0].id == damaged.id and store.latest().id == good
    report = check_health(settings)
    [finding] = [f for f in report.findings if f.code == "source-damaged"]
    assert finding.level == Level.CRITICAL
    assert damaged.id in finding.message and good in finding.message
    command = finding.message.split("restore it with: ")[1]
    assert command.startswith(f"tablettracker-backups restore {good} --database ")
    assert report.newest_good_id == good and report.newest_id == damaged.id

    # The command health prints works as it is (here through click, without a shell).
    argv = command.split()[1:]
    result = CliRunner().invoke(cli, [*argv, "--yes"])
    assert result.exit_code == 0, result.output
    assert integrity(settings.database) == "ok"


def test_verify_compares_the_data_checks_but_restore_trusts_equal_hashes(tmp_path: Path) -> None:
    """Planted: metadata whose recorded foreign-key count is wrong. The bytes are unchanged,
    so restore (which trusts equal SHA-256s and skips foreign_key_check) goes ahead; verify,
    the drill, runs the check again and reports the disagreement."""
    settings, _ = corpus_settings(tmp_path, "foreign-key-violations")
    meta = create_backup(settings).metadata
    document = json.loads((settings.backup_dir / f"{meta.id}.json").read_text())
    findings = dict(document["findings"], foreign_key_violations=3)
    rewrite_metadata(settings, meta.id, findings=findings)
    result = verify_backup(BackupStore(settings), meta.id)
    assert not result.ok
    assert "foreign_key_check found 47 violations; the backup recorded 3" in str(result.copies)
    restored = restore_backup(settings, meta.id, to=tmp_path / "out.db")
    assert restored.backup_id == meta.id

"""Restoring: checked first, safety snapshot, written through SQLite, checked after, undone on
failure. Real database files, real backup folders, real reader and writer processes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pty
import select
import shlex
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from tablettracker_backups.audit import AUDIT_LOG, read_entries
from tablettracker_backups.backup import create_backup
from tablettracker_backups.cli import cli
from tablettracker_backups.errors import (
    BackupNotFound,
    DatabaseError,
    InvalidBackupId,
    RestoreError,
    VerificationError,
)
from tablettracker_backups.restore import (
    RestorePreview,
    TableDiff,
    preview_restore,
    restore_backup,
)
from tablettracker_backups.settings import Settings, settings_from_mapping
from tablettracker_backups.states import TableChange
from tablettracker_backups.store import BackupStore
from tests.conftest import make_db
from tests.faultkit import assert_no_debris

ROOT = Path(__file__).resolve().parent.parent
#: Upper bound for waiting on a helper process; a hang fails the test instead of blocking CI.
PROCESS_WAIT = 60.0


def dump(path: Path) -> str:
    """The whole content of a database as SQL text (schema and rows)."""
    with closing(sqlite3.connect(path)) as conn:
        return "\n".join(conn.iterdump())


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def change(path: Path) -> None:
    """Move the database to a different state (the one a restore should replace)."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DELETE FROM count_sessions WHERE id % 3 = 0")
        conn.execute("UPDATE po_lines SET quantity_received = 0")
        conn.execute(
            "INSERT INTO employees (username, full_name, password_hash) VALUES ('new', 'N', '')"
        )
        conn.commit()


def journal(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


def flip_byte(path: Path) -> None:
    """Flip one byte in the middle of a stored backup (same size, so only a full check sees it)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def data_file(settings: Settings, location: str, backup_id: str) -> Path:
    return BackupStore(settings).data_path(location, backup_id, settings.compression)


def side_files(path: Path) -> list[str]:
    return [s for s in ("-wal", "-shm", "-journal") if Path(f"{path}{s}").exists()]


@pytest.fixture
def wal_settings(tmp_path: Path, journal_mode: str) -> Settings:
    """A seeded database in the parametrised journal mode, with two backup folders."""
    db = make_db(tmp_path / "live.db", wal=journal_mode == "wal")
    return settings_from_mapping(
        {"database": db, "dir": tmp_path / "b", "secondary_dir": tmp_path / "s"}
    )


# -- the core ----------------------------------------------------------------------------------


def test_restore_round_trip(wal_settings: Settings, journal_mode: str) -> None:
    db = wal_settings.database
    backup = create_backup(wal_settings).metadata
    before = dump(db)
    change(db)
    changed = dump(db)
    assert changed != before

    result = restore_backup(wal_settings, backup.id, actor="tester")

    assert dump(db) == before
    assert journal(db) == journal_mode
    assert side_files(db) == []
    assert result.backup_id == backup.id
    assert result.source_location == "primary"
    assert result.fell_back == ()
    assert result.target == db
    assert set(result.durations) >= {"verify", "safety_snapshot", "write", "post_check", "total"}
    # Seconds to a tenth of a millisecond: enough to compare, short in the audit log.
    assert all(isinstance(v, float) and round(v, 4) == v for v in result.durations.values())
    # The safety snapshot holds exactly what was there before, and restores like any backup.
    assert result.safety_snapshot_id is not None
    safety = BackupStore(wal_settings).get(result.safety_snapshot_id)
    assert safety.kind == "pre-restore" and safety.verified
    assert safety.metadata is not None and safety.metadata.trigger == "tester"
    undo = restore_backup(wal_settings, result.safety_snapshot_id)
    assert dump(db) == changed
    assert undo.safety_snapshot_id not in (None, result.safety_snapshot_id)
    entry = read_entries(wal_settings)[1]
    assert (entry.action, entry.actor, entry.ok) == ("restore", "tester", True)
    assert entry.details["backup_id"] == backup.id
    assert entry.details["safety_snapshot_id"] == result.safety_snapshot_id
    assert entry.details["durations"]["write"] >= 0
    assert json.loads(json.dumps(result.to_dict()))["target"] == str(db)


def test_a_restore_into_a_wal_database_reports_pages_and_leaves_no_wal_to_replay(
    tmp_path: Path,
) -> None:
    # Another connection of the app stays open, so SQLite does not fold the -wal back on
    # close: the restore must checkpoint it itself, or the whole restored database sits in
    # the -wal for every reader to replay.
    db = make_db(tmp_path / "live.db", wal=True)
    settings = settings_from_mapping({"database": db, "dir": tmp_path / "b"})
    backup = create_backup(settings).metadata
    change(db)
    steps: list[tuple[str, int, int]] = []
    with closing(sqlite3.connect(db)) as app:
        app.execute("SELECT count(*) FROM employees").fetchone()
        restore_backup(settings, backup.id, progress=lambda *step: steps.append(step))
        assert Path(f"{db}-wal").stat().st_size == 0
        rows = app.execute("SELECT count(*) FROM count_sessions").fetchone()[0]
        assert rows == backup.row_counts["count_sessions"]
    writes = [(done, total) for stage, done, total in steps if stage == "write"]
    assert len(writes) >= 1 and writes[-1][0] == writes[-1][1] > 1  # every page, counted
    assert steps[-1] == ("check", 1, 1)  # the check afterwards, done, is the last step
    # The safety snapshot's own stages come first, named apart, with their counts.
    safety = [step for step in steps if step[0].startswith("safety-")]
    assert safety and steps.index(safety[-1]) < steps.index(("write", *writes[0]))
    assert all(isinstance(done, int) and isinstance(total, int) for _, done, total in safety)


READER = textwrap.dedent(
    """
    import json, sqlite3, sys, os
    db, out, stop = sys.argv[1:4]
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    with open(out, "a") as log:
        while not os.path.exists(stop):
            conn.execute("BEGIN")
            state = [
                conn.execute("SELECT count(*) FROM count_sessions").fetchone()[0],
                conn.execute("SELECT total(tablets_counted) FROM count_sessions").fetchone()[0],
                conn.execute("SELECT total(quantity_received) FROM po_lines").fetchone()[0],
                conn.execute("SELECT count(*) FROM employees").fetchone()[0],
            ]
            conn.execute("COMMIT")
            log.write(json.dumps(state) + "\\n")
            log.flush()
    """
)


def state_of(path: Path) -> list[object]:
    with closing(sqlite3.connect(path)) as conn:
        return [
            conn.execute("SELECT count(*) FROM count_sessions").fetchone()[0],
            conn.execute("SELECT total(tablets_counted) FROM count_sessions").fetchone()[0],
            conn.execute("SELECT total(quantity_received) FROM po_lines").fetchone()[0],
            conn.execute("SELECT count(*) FROM employees").fetchone()[0],
        ]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PROCESS_WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def test_open_connection_in_another_process_sees_old_then_new(
    tmp_path: Path, wal_settings: Settings
) -> None:
    db = wal_settings.database
    backup = create_backup(wal_settings).metadata
    restored_state = state_of(db)
    change(db)
    changed_state = state_of(db)
    log, stop = tmp_path / "reads.jsonl", tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(db), str(log), str(stop)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def reads() -> list[list[object]]:
            if not log.exists():
                return []
            # Only whole lines: the reader may be half-way through writing the last one.
            text = log.read_text()
            return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]

        wait_for(lambda: len(reads()) >= 20, "the reader's first reads")
        restore_backup(wal_settings, backup.id)
        wait_for(lambda: restored_state in reads(), "the reader to see the restored data")
        stop.touch()
        _, errors = reader.communicate(timeout=PROCESS_WAIT)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert reader.returncode == 0, errors
    seen = reads()
    # Every read saw one whole state, and the reader's one connection went from old to new.
    assert all(state in (changed_state, restored_state) for state in seen)
    first_new = seen.index(restored_state)
    assert seen[:first_new] == [changed_state] * first_new
    assert seen[first_new:] == [restored_state] * (len(seen) - first_new)
    assert first_new >= 20


def test_flipped_byte_in_primary_falls_back_to_secondary(settings: Settings) -> None:
    backup = create_backup(settings).metadata
    before = dump(settings.database)
    change(settings.database)
    flip_byte(data_file(settings, "primary", backup.id))

    result = restore_backup(settings, backup.id)

    assert result.source_location == "secondary"
    assert len(result.fell_back) == 1
    assert result.fell_back[0].startswith("primary copy skipped")
    assert "does not decompress" in result.fell_back[0] or "SHA-256" in result.fell_back[0]
    assert dump(settings.database) == before


@pytest.mark.parametrize("loss", ["missing", "unreadable"])
def test_a_primary_copy_without_usable_metadata_falls_back_to_secondary(
    settings: Settings, loss: str
) -> None:
    with closing(sqlite3.connect(settings.database)) as conn:  # a few MiB: several chunks
        conn.execute("CREATE TABLE scans (id INTEGER PRIMARY KEY, image BLOB)")
        conn.executemany("INSERT INTO scans (image) VALUES (?)", [(os.urandom(2**20),)] * 3)
        conn.commit()
    backup = create_backup(settings).metadata
    before = dump(settings.database)
    change(settings.database)
    meta = BackupStore(settings).metadata_path("primary", backup.id)
    if loss == "missing":
        meta.unlink()
        data_file(settings, "primary", backup.id).unlink()
    else:
        meta.write_text("{")
    steps: list[tuple[str, int, int]] = []

    result = restore_backup(settings, backup.id, progress=lambda *step: steps.append(step))

    assert result.source_location == "secondary"
    if loss == "missing":
        assert result.fell_back == ("primary copy is missing",)
    else:
        (reason,) = result.fell_back
        assert reason.startswith("primary copy skipped: ")
    assert dump(settings.database) == before
    # Reading the copy back reports its bytes as they go, up to the snapshot's size.
    read = [(done, total) for stage, done, total in steps if stage == "verify"]
    assert read and all(total == backup.raw_size for _, total in read)
    assert len(read) >= 3
    assert [done for done, _ in read] == sorted({done for done, _ in read})
    assert read[-1][0] == backup.raw_size


def test_an_empty_file_at_the_target_needs_no_safety_snapshot(
    settings: Settings, tmp_path: Path
) -> None:
    backup = create_backup(settings).metadata
    target = tmp_path / "empty.db"
    target.touch()
    result = restore_backup(settings, backup.id, to=target)
    assert result.safety_snapshot_id is None
    assert dump(target) == dump(settings.database)


def test_flipped_byte_in_both_copies_refuses_and_touches_nothing(settings: Settings) -> None:
    backup = create_backup(settings).metadata
    change(settings.database)
    for location in ("primary", "secondary"):
        flip_byte(data_file(settings, location, backup.id))
    sha = file_sha(settings.database)
    ids = BackupStore(settings).ids()

    with pytest.raises(RestoreError, match="no sound copy") as caught:
        restore_backup(settings, backup.id)

    assert "primary copy skipped" in str(caught.value)
    assert "secondary copy skipped" in str(caught.value)
    assert file_sha(settings.database) == sha
    assert BackupStore(settings).ids() == ids  # no safety snapshot either
    for folder in settings.locations:
        assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]
    entry = read_entries(settings)[0]
    assert (entry.action, entry.ok) == ("restore", False)
    assert "no sound copy" in entry.message


def _on(target: Path, held: sqlite3.Connection | None, *sql: str) -> None:
    """Run ``sql`` on the restore's own connection when it holds the lock (no other one can
    write then), else on a new one."""
    if held is not None:
        for statement in sql:
            held.execute(statement)
        return
    with closing(sqlite3.connect(target)) as conn:
        for statement in sql:
            conn.execute(statement)
        conn.commit()


def delete_rows(target: Path, held: sqlite3.Connection | None = None) -> None:
    """A real fault after the write: rows the check will count are removed."""
    _on(target, held, "DELETE FROM count_sessions WHERE id % 2 = 0")


def smash_a_page(target: Path, held: sqlite3.Connection | None = None) -> None:
    """A real fault after the write: page 2 of the file overwritten with garbage on disk."""
    relocked = held is not None and held.in_transaction
    if relocked:
        assert held is not None
        held.execute("ROLLBACK")  # WAL: a checkpoint cannot run in the check's transaction
    _on(target, held, "PRAGMA wal_checkpoint(TRUNCATE)")
    if relocked:
        assert held is not None
        held.execute("BEGIN IMMEDIATE")
    with closing(sqlite3.connect(target)) as conn:
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
    with target.open("r+b") as handle:
        handle.seek(page)
        handle.write(b"\xff" * page)
    if held is not None:
        held.execute("PRAGMA shrink_memory")  # read the page from disk again


def swap_a_table(target: Path, held: sqlite3.Connection | None = None) -> None:
    """A real fault after the write: one table dropped, another one created."""
    _on(
        target,
        held,
        "DROP TABLE tablet_types",
        "CREATE TABLE extra (x)",
        "INSERT INTO extra VALUES (1)",
    )


def add_an_index(target: Path, held: sqlite3.Connection | None = None) -> None:
    """A real fault after the write: the schema changes while every row count stays."""
    _on(target, held, "CREATE INDEX extra_index ON tablet_types (name)")


@pytest.mark.parametrize(
    ("fault", "reported"),
    [
        (add_an_index, "check afterwards failed: schema differs from the backup's;"),
        (
            delete_rows,
            "check afterwards failed: row counts differ from the backup's in count_sessions;",
        ),
        (
            swap_a_table,
            "check afterwards failed: row counts differ from the backup's in extra, tablet_types;",
        ),
        (smash_a_page, "check afterwards failed: "),
    ],
)
@pytest.mark.parametrize("raw", [False, True], ids=["sqlite-reads", "raw-reads"])
def test_failed_check_after_write_puts_the_safety_snapshot_back(
    wal_settings: Settings,
    journal_mode: str,
    fault: Callable[[Path], None],
    reported: str,
    raw: bool,
) -> None:
    """Each fault fails the check, in its own words, whether the check compares the file's
    bytes (raw reads: the command line, the worker) or reads through SQLite only."""
    db = wal_settings.database
    backup = create_backup(wal_settings).metadata
    change(db)
    before_restore = dump(db)

    with pytest.raises(RestoreError) as caught:
        restore_backup(wal_settings, backup.id, _after_write=fault, raw_reads=raw)

    message = str(caught.value)
    assert reported in message
    assert "safety snapshot" in message and "was put back" in message
    assert dump(db) == before_restore
    assert journal(db) == journal_mode
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    entry = read_entries(wal_settings)[0]
    assert entry.ok is False
    assert entry.details["safety_snapshot_id"] is not None
    assert "rollback" in entry.details["durations"]
    assert all(
        isinstance(v, float) and round(v, 4) == v for v in entry.details["durations"].values()
    )
    # The log is JSON lines others may read: a failure is written as false, not null.
    last = (wal_settings.state_dir / AUDIT_LOG).read_text().splitlines()[-1]
    assert json.loads(last)["ok"] is False


def test_the_rollback_is_checked_too_and_a_bad_one_says_where_things_stand(
    wal_settings: Settings, journal_mode: str
) -> None:
    """The safety copy is written back under the same hold and checked like the restore; when
    that check fails too, the message says so, names the safety snapshot it is filed as, and
    does not claim the database is as it was."""
    db = wal_settings.database
    backup = create_backup(wal_settings).metadata
    change(db)
    progress: list[tuple[str, int, int]] = []

    def fault(target: Path, held: sqlite3.Connection | None) -> None:
        (copy,) = wal_settings.backup_dir.glob(".restore-safety-*-before.db")
        with closing(sqlite3.connect(copy)) as conn:
            page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        with copy.open("r+b") as handle:  # our scratch copy, not the live database
            handle.seek(page)
            handle.write(b"\xff" * page)
        delete_rows(target, held)

    started = time.monotonic()
    with pytest.raises(RestoreError) as caught:
        restore_backup(
            wal_settings,
            backup.id,
            _after_write=fault,
            progress=lambda *step: progress.append(step),
        )
    took = time.monotonic() - started
    message = str(caught.value)
    kept = [i for i in BackupStore(wal_settings).list() if i.kind == "pre-restore"]
    # In WAL mode what the rollback overwrote is kept too (an app write may have slipped in
    # between the write's commit and the check); the older one is the safety snapshot.
    assert len(kept) == (2 if journal_mode == "wal" else 1)
    safety = kept[-1]
    assert message.startswith(
        f"backup {backup.id} was written into {db} but the check afterwards failed: row counts "
        "differ from the backup's in count_sessions; putting the safety snapshot "
        f"{safety.id} back ALSO failed: "
    )
    assert message.endswith(
        f"{db} may be damaged: restore it by hand "
        f"({wal_settings.command_line('restore', safety.id)})"
    )
    assert "as it was before" not in message
    details = read_entries(wal_settings)[0].details
    assert 0 < details["durations"]["rollback"] <= took
    assert any(step[0] == "rollback" for step in progress)  # the owner sees the rollback
    assert_no_debris(*wal_settings.locations)  # the scratch copies are gone


def test_a_failed_check_in_an_empty_database_empties_it_again(
    wal_settings: Settings, journal_mode: str, tmp_path: Path
) -> None:
    # An empty file has nothing to keep, so no safety snapshot: undoing means emptying it.
    backup = create_backup(wal_settings).metadata
    target = tmp_path / "empty.db"
    target.touch(mode=0o600)
    with pytest.raises(RestoreError) as caught:
        restore_backup(wal_settings, backup.id, to=target, _after_write=delete_rows)
    assert str(caught.value).endswith(f"; {target} was emptied again, as it was before")
    assert target.stat().st_size == 0
    assert side_files(target) == []
    assert read_entries(wal_settings)[0].details["safety_snapshot_id"] is None


def test_restore_into_a_database_that_does_not_exist_yet(
    tmp_path: Path, wal_settings: Settings, journal_mode: str
) -> None:
    backup = create_backup(wal_settings).metadata
    expected = dump(wal_settings.database)
    fresh = settings_from_mapping(
        {
            "database": tmp_path / "new" / "instance" / "tablet_counter.db",
            "dir": wal_settings.backup_dir,
        }
    )

    result = restore_backup(fresh, "latest")

    assert result.backup_id == backup.id
    assert result.safety_snapshot_id is None
    assert dump(fresh.database) == expected
    assert journal(fresh.database) == journal_mode  # the mode the backup was taken in
    assert stat.S_IMODE(fresh.database.stat().st_mode) == 0o600
    assert side_files(fresh.database) == []


def test_failed_check_on_a_new_file_removes_it(tmp_path: Path, settings: Settings) -> None:
    backup = create_backup(settings).metadata
    target = tmp_path / "inspect.db"
    with pytest.raises(RestoreError, match="the new file was removed"):
        restore_backup(settings, backup.id, to=target, _after_write=delete_rows)
    assert not target.exists()
    assert side_files(target) == []


def test_to_leaves_the_live_database_alone(tmp_path: Path, settings: Settings) -> None:
    backup = create_backup(settings).metadata
    expected = dump(settings.database)
    change(settings.database)
    live_sha = file_sha(settings.database)
    ids = BackupStore(settings).ids()

    result = restore_backup(settings, backup.id, to=tmp_path / "copy.db")

    assert result.safety_snapshot_id is None
    assert dump(tmp_path / "copy.db") == expected
    assert file_sha(settings.database) == live_sha
    assert BackupStore(settings).ids() == ids

    # Overwriting an existing file goes the same safe way: what it held is kept beside it, as
    # a plain SQLite file, and never filed as a backup of the live database (whose --undo,
    # --at and retention would otherwise pick it up).
    change(tmp_path / "copy.db")
    changed = dump(tmp_path / "copy.db")
    again = restore_backup(settings, backup.id, to=tmp_path / "copy.db")
    assert again.safety_snapshot_id is None
    assert again.safety_kept is not None
    kept = Path(again.safety_kept)
    assert kept.parent == tmp_path and kept.name.startswith("copy.db.before-restore-")
    assert dump(kept) == changed
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert dump(tmp_path / "copy.db") == expected
    assert file_sha(settings.database) == live_sha
    assert BackupStore(settings).ids() == ids


@pytest.mark.parametrize("content", ["my notes\n", "x"], ids=["notes", "one-byte"])
def test_refuses_to_overwrite_a_file_that_is_not_a_database(
    tmp_path: Path, settings: Settings, content: str
) -> None:
    """However small: only an empty file counts as no data (SQLite's own new database)."""
    backup = create_backup(settings).metadata
    notes = tmp_path / "notes.txt"
    notes.write_text(content)
    with pytest.raises(RestoreError, match=f"^refusing to overwrite {notes}: "):
        restore_backup(settings, backup.id, to=notes)
    assert notes.read_text() == content


def test_refuses_a_stale_wal_beside_a_missing_database(tmp_path: Path, settings: Settings) -> None:
    backup = create_backup(settings).metadata
    gone = tmp_path / "gone.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{gone}{suffix}").write_bytes(b"leftover")
    with pytest.raises(RestoreError) as caught:
        restore_backup(settings, backup.id, to=gone)
    assert str(caught.value) == (
        f"{gone} does not exist but {gone}-wal, {gone}-shm does; SQLite could mix that "
        "leftover into the restored database: move it aside first"
    )
    assert not (tmp_path / "gone.db").exists()


HOLDER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute(f"BEGIN {sys.argv[2] if len(sys.argv) > 2 else 'IMMEDIATE'}")
    conn.execute("INSERT INTO employees (username, full_name, password_hash) VALUES ('w','W','')")
    print("holding", flush=True)
    sys.stdin.readline()
    conn.execute("ROLLBACK")
    """
)


def test_a_writer_holding_the_database_gets_a_clear_error(tmp_path: Path) -> None:
    db = make_db(tmp_path / "live.db", wal=True)
    settings = settings_from_mapping({"database": db, "dir": tmp_path / "b", "busy_timeout": 0.3})
    backup = create_backup(settings).metadata
    change(db)
    before = dump(db)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        started = time.monotonic()
        with pytest.raises(RestoreError) as caught:
            restore_backup(settings, backup.id)
        # The owner's busy timeout (0.3 s) is what it waits, not SQLite's default (10 s);
        # the bound is loose on purpose: a shared machine is slow, never 10 s slow here.
        assert time.monotonic() - started < 8
        assert str(caught.value) == (
            f"{db} stayed locked by another process for 0.3s; gave up; nothing was changed: "
            "try again when the app is less busy (or raise BACKUPS_BUSY_TIMEOUT)"
        )
    finally:
        holder.communicate("\n", timeout=PROCESS_WAIT)
    assert dump(db) == before


def test_a_database_nobody_may_read_gets_no_restore_and_says_what_to_do(tmp_path: Path) -> None:
    # A rollback-journal database held in an exclusive transaction cannot even be read: no
    # safety snapshot, so no restore. (move-aside is the way out for a damaged one.)
    db = make_db(tmp_path / "live.db")
    settings = settings_from_mapping({"database": db, "dir": tmp_path / "b", "busy_timeout": 0.3})
    backup = create_backup(settings).metadata
    change(db)
    before = dump(db)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), "EXCLUSIVE"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        with pytest.raises(RestoreError) as caught:
            restore_backup(settings, backup.id)
        started = time.monotonic()  # the preview, too, waits the owner's busy timeout
        with pytest.raises(DatabaseError, match="locked"):
            preview_restore(settings, backup.id)
        assert time.monotonic() - started < 8  # not SQLite's default 10 s (loose bound)
    finally:
        holder.communicate("\n", timeout=PROCESS_WAIT)
    message = str(caught.value)
    # Busy is not damage: the owner is told to retry, never to move a live database aside.
    assert message == (
        f"{db} stayed locked by another connection for 0.3s; nothing was changed: try again "
        "when the app is less busy (or raise BACKUPS_BUSY_TIMEOUT)"
    )
    assert dump(db) == before
    assert [i.kind for i in BackupStore(settings).list()] == ["manual"]


def dump_of_backup(settings: Settings, backup_id: str, scratch: Path) -> str:
    """The content of a backup, restored into a new file of its own."""
    copy = scratch / f"copy-{backup_id}.db"
    restore_backup(settings, backup_id, to=copy)
    return dump(copy)


def test_tables_by_impact_the_biggest_change_first() -> None:
    tables = (
        TableDiff("a_same", 5, 5, TableChange.SAME),
        TableDiff("b_small", 10, 8, TableChange.CHANGED),
        TableDiff("c_dropped", None, 40, TableChange.REMOVED),
        TableDiff("d_back", 40, None, TableChange.ADDED),
        TableDiff("e_big", 1000, 10, TableChange.CHANGED),
        TableDiff("f_empty_same", 0, 0, TableChange.SAME),
    )
    preview = RestorePreview("x", datetime.now(timezone.utc), tables, False, True)
    assert [t.name for t in preview.by_impact()] == [
        "e_big",  # 990 rows
        "c_dropped",  # 40 rows go
        "d_back",  # 40 rows come back (a tie: by name)
        "b_small",
        "a_same",  # unchanged counts last, by name
        "f_empty_same",
    ]


def test_bad_ids_and_missing_backups(settings: Settings) -> None:
    with pytest.raises(InvalidBackupId):
        restore_backup(settings, "../../etc/passwd")
    with pytest.raises(BackupNotFound, match="no backup folder"):
        restore_backup(settings, "latest")
    create_backup(settings)
    with pytest.raises(BackupNotFound):
        restore_backup(settings, "20200101T000000Z-abcdef")


def test_preview_compares_row_counts_and_schema(settings: Settings) -> None:
    backup = create_backup(settings).metadata
    with closing(sqlite3.connect(settings.database)) as conn:
        conn.execute("DELETE FROM count_sessions WHERE id > 10")
        conn.execute("CREATE TABLE scratch (x)")
        conn.execute("DROP TABLE tablet_types")
        conn.commit()
    sha = file_sha(settings.database)

    preview = preview_restore(settings, "latest")

    assert preview.backup_id == backup.id
    assert preview.live_exists and preview.schema_changed
    by_name = {t.name: t for t in preview.tables}
    assert by_name["count_sessions"].status == "changed"
    assert by_name["count_sessions"].live_rows == 10
    assert by_name["count_sessions"].backup_rows == backup.row_counts["count_sessions"]
    assert (by_name["scratch"].status, by_name["scratch"].backup_rows) == ("removed", None)
    assert (by_name["tablet_types"].status, by_name["tablet_types"].live_rows) == ("added", None)
    assert by_name["employees"].status == "same"
    assert file_sha(settings.database) == sha
    assert read_entries(settings) == []
    document = json.loads(json.dumps(preview.to_dict()))
    assert document["tables"][0]["name"] == "count_sessions"
    # Its scratch copies are gone, and it took no lock and wrote no record.
    hidden = sorted(p.name for p in settings.backup_dir.iterdir() if p.name.startswith("."))
    assert hidden == [".catalog", ".lock"]  # the listing's catalog and the run lock only


def test_preview_tells_changed_content_from_the_same_row_count(settings: Settings) -> None:
    """Every received quantity doubled: the same row counts, different content. The preview
    says the table changed and how many rows the restore changes back, brings back and takes
    out, by rowid; a table whose content is identical is "same"."""
    backup = create_backup(settings).metadata
    with closing(sqlite3.connect(settings.database)) as conn:
        changed = conn.execute(
            "UPDATE po_lines SET quantity_received = quantity_received * 2 + 1"
        ).rowcount
        conn.execute("DELETE FROM count_sessions WHERE id % 7 = 0")
        conn.execute(
            "INSERT INTO employees (username, full_name, password_hash) VALUES ('z', 'Z', '')"
        )
        deleted = conn.execute("SELECT count(*) FROM count_sessions").fetchone()[0]
        conn.commit()
    by_name = {t.name: t for t in preview_restore(settings, backup.id).tables}
    lines = by_name["po_lines"]
    assert lines.backup_rows == lines.live_rows  # the row counts alone would say "same"
    assert lines.status == "changed"
    assert (lines.rows_added, lines.rows_removed, lines.rows_changed) == (0, 0, changed)
    sessions = by_name["count_sessions"]
    back = backup.row_counts["count_sessions"] - deleted
    assert (sessions.rows_added, sessions.rows_removed, sessions.rows_changed) == (back, 0, 0)
    assert sessions.describe() == f"rows {back:,} brought back"
    staff = by_name["employees"]
    assert (staff.rows_added, staff.rows_removed, staff.rows_changed) == (0, 1, 0)
    assert by_name["purchase_orders"].status == "same"
    assert by_name["purchase_orders"].describe().startswith("no change: same content")


def test_a_change_in_one_row_is_seen_and_a_table_without_rowid_too(
    settings: Settings, tmp_path: Path
) -> None:
    """The smallest change there is (one value in one row) is "changed", in a rowid table
    and in a WITHOUT ROWID table matched by its primary key."""
    with closing(sqlite3.connect(settings.database)) as conn:
        conn.execute(
            "CREATE TABLE prices (sku TEXT, shop TEXT, cents INT, "
            "PRIMARY KEY (sku, shop)) WITHOUT ROWID"
        )
        conn.executemany(
            "INSERT INTO prices VALUES (?, ?, ?)", [(f"s{i}", "a", i) for i in range(50)]
        )
        conn.commit()
    backup = create_backup(settings).metadata
    with closing(sqlite3.connect(settings.database)) as conn:
        conn.execute("UPDATE prices SET cents = 999 WHERE sku = 's7'")
        conn.execute("UPDATE tablet_types SET name = name || ' ' WHERE id = 1")
        conn.commit()
    by_name = {t.name: t for t in preview_restore(settings, backup.id).tables}
    assert (by_name["prices"].status, by_name["prices"].rows_changed) == ("changed", 1)
    assert (by_name["tablet_types"].status, by_name["tablet_types"].rows_changed) == ("changed", 1)
    assert by_name["product_details"].status == "same"


def test_past_its_time_budget_the_preview_says_what_it_did_not_compare(
    settings: Settings,
) -> None:
    backup = create_backup(settings).metadata
    preview = preview_restore(settings, backup.id, budget=0.0)
    assert preview.compared
    assert preview.compare_note is not None and "time budget ran out" in preview.compare_note
    # Equal counts cannot be called "same" without comparing the rows.
    assert {t.status for t in preview.tables} == {"unchecked"}
    assert {t.describe().split(";")[1].strip() for t in preview.tables} == {"content not compared"}
    assert {t.status for t in preview_restore(settings, backup.id, budget=60).tables} == {"same"}


def test_without_a_readable_local_copy_the_preview_falls_back_to_row_counts(
    settings: Settings,
) -> None:
    backup = create_backup(settings).metadata
    for folder in settings.locations:
        flip_byte(folder / backup.data_file)
    change(settings.database)
    preview = preview_restore(settings, backup.id)
    assert not preview.compared
    assert preview.compare_note is not None
    assert preview.compare_note.startswith("content not compared (no sound copy of backup ")
    by_name = {t.name: t for t in preview.tables}
    assert by_name["count_sessions"].status == "changed"
    assert by_name["tablet_types"].status == "unchecked"


def test_preview_without_a_live_database(tmp_path: Path, settings: Settings) -> None:
    create_backup(settings)
    fresh = settings_from_mapping({"database": tmp_path / "none.db", "dir": settings.backup_dir})
    preview = preview_restore(fresh, "latest")
    assert (preview.live_exists, preview.schema_changed) == (False, False)
    assert {t.status for t in preview.tables} == {"added"}
    assert not (tmp_path / "none.db").exists()


# -- recovery on a fresh machine, as a real process ----------------------------------------------


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPS_")}
    env["HOME"] = str(home)  # no default config file from the machine running the tests
    return env


@pytest.mark.parametrize("folder", ["primary", "secondary"])
def test_fresh_machine_recovery_from_one_backup_folder(
    tmp_path: Path, settings: Settings, folder: str
) -> None:
    create_backup(settings)
    expected = dump(settings.database)
    machine = tmp_path / "fresh-machine"
    machine.mkdir()
    source = settings.backup_dir if folder == "primary" else settings.secondary_dir
    assert source is not None
    shutil.copytree(source, machine / "backups")
    target = machine / "instance" / "tablet_counter.db"

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tablettracker_backups",
            "restore",
            "latest",
            "--backup-dir",
            str(machine / "backups"),
            "--to",
            str(target),
        ],
        cwd=ROOT,
        env=clean_env(machine),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PROCESS_WAIT,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "Restored" in done.stdout
    assert dump(target) == expected


# -- the CLI -----------------------------------------------------------------------------------


def cli_args(settings: Settings, *args: str) -> list[str]:
    assert settings.secondary_dir is not None
    return [
        "restore",
        *args,
        "--database",
        str(settings.database),
        "--backup-dir",
        str(settings.backup_dir),
        "--secondary-dir",
        str(settings.secondary_dir),
    ]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in list(os.environ):
        if name.startswith("BACKUPS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    return CliRunner()


def test_cli_refuses_without_a_terminal_and_without_yes(
    runner: CliRunner, settings: Settings
) -> None:
    create_backup(settings)
    change(settings.database)
    sha = file_sha(settings.database)
    ids = BackupStore(settings).ids()

    result = runner.invoke(cli, cli_args(settings, "latest"))

    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: refusing to restore without confirmation: standard input is not a terminal; "
        "pass --yes to confirm"
    ]
    assert file_sha(settings.database) == sha
    assert BackupStore(settings).ids() == ids


def test_cli_restore_with_yes(runner: CliRunner, settings: Settings) -> None:
    backup = create_backup(settings).metadata
    expected = dump(settings.database)
    change(settings.database)

    result = runner.invoke(cli, cli_args(settings, backup.id, "--yes"))

    assert result.exit_code == 0, result.output
    assert f"Restored {backup.id}" in result.stdout
    assert "Safety snapshot" in result.stdout
    assert dump(settings.database) == expected


def test_cli_the_undo_hint_repeats_the_options_and_works_as_pasted(
    runner: CliRunner, settings: Settings
) -> None:
    # The printed undo command names every folder option given, so pasted as it is (from any
    # folder, with no environment) it finds the safety snapshot and puts the database back.
    backup = create_backup(settings).metadata
    change(settings.database)
    before = dump(settings.database)

    result = runner.invoke(cli, cli_args(settings, backup.id, "--yes"))

    assert result.exit_code == 0, result.output
    snapshot = BackupStore(settings).newest_safety_snapshot().id
    undo = shlex.join(["tablettracker-backups", *cli_args(settings, snapshot)])
    assert f"(undo with: {undo})" in result.stdout
    pasted = runner.invoke(cli, [*shlex.split(undo)[1:], "--yes"])
    assert pasted.exit_code == 0, pasted.output
    assert dump(settings.database) == before


def test_cli_restore_json_and_fallback_warning(runner: CliRunner, settings: Settings) -> None:
    backup = create_backup(settings).metadata
    flip_byte(data_file(settings, "primary", backup.id))
    result = runner.invoke(cli, cli_args(settings, "latest", "--yes", "--json"))
    assert result.exit_code == 1  # restored, but a copy is damaged: attention needed
    document = json.loads(result.stdout)
    assert document["source_location"] == "secondary"
    assert document["backup_id"] == backup.id


def test_cli_preview_changes_nothing(runner: CliRunner, settings: Settings) -> None:
    backup = create_backup(settings).metadata
    change(settings.database)
    sha = file_sha(settings.database)

    text = runner.invoke(cli, cli_args(settings, backup.id, "--preview"))
    as_json = runner.invoke(cli, cli_args(settings, "latest", "--preview", "--json"))

    assert text.exit_code == 0, text.output
    assert "count_sessions" in text.stdout and "changed" in text.stdout
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert document["backup_id"] == backup.id
    assert {t["name"]: t["status"] for t in document["tables"]}["employees"] == "changed"
    assert file_sha(settings.database) == sha


def test_cli_bad_input_is_one_line(runner: CliRunner, settings: Settings) -> None:
    create_backup(settings)
    bad = runner.invoke(cli, cli_args(settings, "nonsense", "--yes"))
    assert bad.exit_code == 2
    assert bad.stderr.strip().startswith("Error: invalid backup id")
    assert len(bad.stderr.strip().splitlines()) == 1
    no_id = runner.invoke(cli, cli_args(settings))
    assert no_id.exit_code == 2
    assert "give a backup ID, 'latest' or --undo" in no_id.stderr


def test_cli_to_a_new_file_needs_no_confirmation(
    runner: CliRunner, tmp_path: Path, settings: Settings
) -> None:
    create_backup(settings)
    expected = dump(settings.database)
    result = runner.invoke(cli, cli_args(settings, "latest", "--to", str(tmp_path / "x.db")))
    assert result.exit_code == 0, result.output
    assert dump(tmp_path / "x.db") == expected


@contextmanager
def terminal_process(
    args: list[str], env: dict[str, str]
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A real process whose standard input and output are a pseudo-terminal."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        args, stdin=follower, stdout=follower, stderr=follower, cwd=ROOT, env=env
    )
    os.close(follower)
    try:
        yield leader, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=PROCESS_WAIT)
        os.close(leader)


def read_until_exit(leader: int, process: subprocess.Popen[bytes]) -> str:
    output = b""
    deadline = time.monotonic() + PROCESS_WAIT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the process exited and closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    return output.decode(errors="replace")


@pytest.mark.parametrize(("answer", "restored"), [(b"y\n", True), (b"n\n", False)])
def test_interactive_choice_and_confirmation_on_a_terminal(
    tmp_path: Path, settings: Settings, answer: bytes, restored: bool
) -> None:
    older = create_backup(settings).metadata
    expected = dump(settings.database)
    change(settings.database)
    newer = create_backup(settings).metadata
    changed = dump(settings.database)
    # The list is in the store's order (newest first by metadata time).
    order = [info.id for info in BackupStore(settings).list()]
    assert sorted(order) == sorted([older.id, newer.id])
    choice = str(order.index(older.id) + 1).encode()
    with terminal_process(
        [sys.executable, "-m", "tablettracker_backups", *cli_args(settings)], clean_env(tmp_path)
    ) as (leader, process):
        os.write(leader, choice + b"\n" + answer)
        output = read_until_exit(leader, process)
    assert output.index(order[0]) < output.index(order[1])
    assert "Replace the LIVE database" in output
    if restored:
        assert process.returncode == 0, output
        assert f"Restored {older.id}" in output
        assert dump(settings.database) == expected
    else:
        assert process.returncode == 1, output
        assert "Cancelled; nothing was changed." in output
        assert dump(settings.database) == changed


LOCK_HOLDER = textwrap.dedent(
    """
    import sys
    from tablettracker_backups.locking import operation_lock
    from tablettracker_backups.settings import settings_from_mapping
    settings = settings_from_mapping({"database": sys.argv[1], "dir": sys.argv[2]})
    with operation_lock(settings):
        print("holding", flush=True)
        sys.stdin.readline()
    """
)


def test_restore_waits_for_the_shared_lock_then_gives_up(
    runner: CliRunner, settings: Settings
) -> None:
    create_backup(settings)
    change(settings.database)
    before = dump(settings.database)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(settings.database), str(settings.backup_dir)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        result = runner.invoke(
            cli, cli_args(settings, "latest", "--yes"), env={"BACKUPS_LOCK_TIMEOUT": "0.2"}
        )
    finally:
        holder.communicate("\n", timeout=PROCESS_WAIT)
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("Busy: ")
    assert dump(settings.database) == before


def test_gzip_backups_restore_too(tmp_path: Path, settings: Settings) -> None:

    gzip_settings = dataclasses.replace(settings, compression="gzip", compression_level=6)
    backup = create_backup(gzip_settings).metadata
    assert backup.compression == "gzip"
    expected = dump(settings.database)
    restore_backup(settings, backup.id, to=tmp_path / "from-gzip.db")
    assert dump(tmp_path / "from-gzip.db") == expected


def test_wal_target_with_another_page_size_is_refused_unchanged(
    tmp_path: Path, settings: Settings
) -> None:
    backup = create_backup(settings).metadata
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("PRAGMA page_size=8192")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE keep (x)")
        conn.execute("INSERT INTO keep VALUES (1)")
        conn.commit()
    before = dump(other)
    with pytest.raises(RestoreError, match="journal_mode=DELETE first"):
        restore_backup(settings, backup.id, to=other)
    assert dump(other) == before


@contextmanager
def other_file_system(path: Path) -> Iterator[Path]:
    """A small tmpfs at ``path`` (another device than the backup folder); skips if not root."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("where", ["same file system", "another file system"])
def test_new_file_is_the_checked_copy_or_a_page_copy(
    wal_settings: Settings, journal_mode: str, tmp_path: Path, where: str
) -> None:
    # A new file gets the checked scratch file itself (a hard link) when it can, and a
    # page-by-page copy when the target is on another file system; both end up the same.
    backup = create_backup(wal_settings).metadata
    expected = dump(wal_settings.database)
    steps: list[tuple[str, int, int]] = []

    def progress(*step: object) -> None:
        steps.append(step)  # type: ignore[arg-type]

    if where == "same file system":
        folder = tmp_path / "restored"
        result = restore_backup(wal_settings, backup.id, to=folder / "new.db", progress=progress)
        # The write stage is still reported, as one step: nothing was copied page by page.
        assert [step for step in steps if step[0] == "write"] == [("write", 1, 1)]
    else:
        with other_file_system(tmp_path / "elsewhere") as folder:
            result = restore_backup(
                wal_settings, backup.id, to=folder / "new.db", progress=progress
            )
            writes = [(done, total) for stage, done, total in steps if stage == "write"]
            assert writes and writes[-1][0] == writes[-1][1] > 1  # every page, counted
            assert dump(folder / "new.db") == expected
            assert journal(folder / "new.db") == journal_mode
            assert result.safety_snapshot_id is None
            assert os.stat(folder / "new.db").st_dev != os.stat(wal_settings.backup_dir).st_dev
            assert stat.S_IMODE(os.stat(folder / "new.db").st_mode) == 0o600
        return
    target = folder / "new.db"
    assert result.safety_snapshot_id is None
    assert dump(target) == expected
    assert journal(target) == journal_mode
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    # Nothing else holds the file: the scratch name in the backup folder is gone.
    assert target.stat().st_nlink == 1
    for folder in wal_settings.locations:  # the scratch copies are gone
        assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_the_json_of_a_preview_and_a_restore_names_every_field(settings: Settings) -> None:
    backup = create_backup(settings, label="before the count", pinned=True).metadata
    change(settings.database)
    preview = preview_restore(settings, backup.id).to_dict()
    tables = preview.pop("tables")
    assert preview == {
        "backup_id": backup.id,
        "created_at": backup.created_at.isoformat().replace("+00:00", "Z"),
        "kind": "manual",
        "label": "before the count",
        "source_damaged": False,
        "foreign_key_violations": 0,
        "not_counted": {},
        "schema_changed": False,
        "live_exists": True,
        "compared": True,
        "compare_note": None,
    }
    assert {t["name"] for t in tables} == set(backup.row_counts)
    assert set(tables[0]) == {
        "name",
        "backup_rows",
        "live_rows",
        "status",
        "rows_added",
        "rows_removed",
        "rows_changed",
    }
    result = restore_backup(settings, backup.id)
    done = result.to_dict()
    durations = done.pop("durations")
    assert done == {
        "backup_id": backup.id,
        "source_location": "primary",
        "target": str(settings.database),
        "safety_snapshot_id": result.safety_snapshot_id,
        "safety_kept": None,
        "fell_back": [],
        "warnings": [],
    }
    assert result.safety_snapshot_id is not None
    # Seconds each step took: measured from its own start, to 0.1 ms. The hold spans the
    # safety snapshot, the write and the check; filing the safety snapshot comes after it.
    assert set(durations) == {
        "verify",
        "safety_snapshot",
        "write",
        "post_check",
        "hold",
        "safety_file",
        "total",
    }
    assert durations["hold"] >= durations["write"] + durations["post_check"]
    assert all(isinstance(v, float) and 0 <= v < 60 for v in durations.values()), durations
    # Where the live database was last restored from, for the dashboard.
    status = json.loads((settings.backup_dir / "status.json").read_text())
    assert {k: v for k, v in status["last_restore"].items() if k != "at"} == {
        "backup_id": backup.id,
        "actor": "cli",
        "safety_snapshot_id": result.safety_snapshot_id,
    }
    assert status["last_restore"]["at"].endswith("Z")


def test_the_audit_page_tells_the_restores_fallbacks_from_the_rollbacks() -> None:
    from tablettracker_backups.audit import AuditEntry
    from tablettracker_backups.web.wording import audit_facts

    entry = AuditEntry(
        datetime.now(timezone.utc),
        "restore",
        "admin",
        False,
        "the check afterwards failed",
        {
            "fell_back": [
                "primary copy skipped: SHA-256 does not match",
                "rollback: primary copy skipped: data file is missing",
            ]
        },
    )
    facts = audit_facts(entry)
    assert "copies passed over: primary copy skipped: SHA-256 does not match" in facts
    assert (
        "putting the safety snapshot back passed over: primary copy skipped: data file is missing"
        in facts
    )


def test_the_check_after_a_restore_tells_damage_from_a_lock(
    tmp_path: Path, settings: Settings
) -> None:
    """Only a busy or locked database is "stayed locked" (the owner may retry); a file that
    does not read as a database is damage, and that is what triggers the rollback."""
    from tablettracker_backups.restore import _check_after

    meta = create_backup(settings).metadata
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x07" * 4096)
    with pytest.raises(VerificationError, match=f"^{garbage} is not readable: file is not a"):
        _check_after(garbage, meta, timeout=0.1)


def test_the_live_database_named_through_a_link_is_snapshotted_as_the_live_database(
    tmp_path: Path, settings: Settings
) -> None:
    """``--to`` may name the live database by another path (here a symbolic link): it is
    still the live database, so its safety snapshot is taken of the configured path."""
    backup = create_backup(settings).metadata
    change(settings.database)
    alias = tmp_path / "alias.db"
    alias.symlink_to(settings.database)
    result = restore_backup(settings, backup.id, to=alias)
    assert result.safety_snapshot_id is not None
    safety = BackupStore(settings).get(result.safety_snapshot_id).metadata
    assert safety is not None and safety.source.path == str(settings.database)
    assert dump(settings.database) == dump_of_backup(settings, backup.id, tmp_path / "scratch")


def test_when_no_copy_can_be_checked_for_want_of_room_every_copy_is_named(
    full_fs: Path, tmp_path: Path
) -> None:
    db = make_db(tmp_path / "live.db")
    settings = settings_from_mapping(
        {"database": db, "dir": full_fs / "one", "secondary_dir": full_fs / "two"}
    )
    backup = create_backup(settings).metadata
    change(db)
    before = file_sha(db)
    # No room left for a scratch copy of the backup in either folder; room for the restore's
    # small record (a full disk stops the restore at its record: test_faults.py).
    with (full_fs / "filler").open("wb") as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 65536)
    os.truncate(full_fs / "filler", (full_fs / "filler").stat().st_size - 65536)
    with pytest.raises(RestoreError) as caught:
        restore_backup(settings, backup.id)
    message = str(caught.value)
    assert message.startswith(f"could not check backup {backup.id} (no room or I/O trouble; ")
    assert "nothing was changed (primary copy " in message
    assert "; secondary copy " in message and "\n" not in message
    assert file_sha(db) == before


@pytest.mark.parametrize("to", ["bad\x00name.db", "   "], ids=["nul", "blank"])
def test_an_invalid_target_path_is_refused_in_one_line(settings: Settings, to: str) -> None:
    backup = create_backup(settings).metadata
    with pytest.raises(RestoreError) as caught:
        restore_backup(settings, backup.id, to=Path(to))
    assert str(caught.value) == f"invalid target path {to!r}"


def test_a_backup_with_no_readable_metadata_is_refused_naming_each_copys_problem(
    settings: Settings,
) -> None:
    backup = create_backup(settings).metadata
    for folder in settings.locations:
        (folder / f"{backup.id}.json").write_text("{")
    before = file_sha(settings.database)
    with pytest.raises(RestoreError) as caught:
        restore_backup(settings, backup.id)
    message = str(caught.value)
    assert message.startswith(
        f"backup {backup.id} cannot be restored: no copy has readable metadata "
        f"(primary copy of {backup.id}: "
    )
    assert f"; secondary copy of {backup.id}: " in message and message.endswith(")")
    assert file_sha(settings.database) == before


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_target_that_is_not_a_regular_file_is_refused_and_nothing_is_made_beside_it(
    settings: Settings, tmp_path: Path, kind: str
) -> None:
    backup = create_backup(settings).metadata
    if kind == "device":
        target = Path("/dev/null")
    else:
        target = tmp_path / "pipe.db"
        os.mkfifo(target)
    before = set(target.parent.iterdir())
    with pytest.raises(RestoreError) as caught:
        restore_backup(settings, backup.id, to=target)
    assert str(caught.value) == (
        f"refusing to restore into {target}: it is not a regular file (a device, pipe or "
        "socket); give a database file's path"
    )
    assert set(target.parent.iterdir()) == before  # no -journal beside it
    assert read_entries(settings) == []  # refused before it started


def test_a_read_only_wal_database_says_what_to_fix(settings: Settings, tmp_path: Path) -> None:
    """SQLite says only "unable to open database file" (it cannot make its -shm); the owner
    is told which file or folder is not writable, and nothing is changed."""
    from tests.faultkit import mount_tmpfs, unmount

    backup = create_backup(settings).metadata
    mount = tmp_path / "ro"
    mount.mkdir()
    if not mount_tmpfs(mount, "size=8m,mode=0700"):
        pytest.skip("needs a tmpfs mount (root)")
    try:
        target = mount / "live.db"
        make_db(target, wal=True)
        change(target)
        before = file_sha(target)
        done = subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=False)
        assert done.returncode == 0
        with pytest.raises(RestoreError) as caught:
            restore_backup(settings, backup.id, to=target)
        assert str(caught.value) == (
            f"cannot restore into {target}: {target} is not writable (a read-only file system, "
            "or permissions; SQLite also needs to create its -journal, -wal and -shm files "
            "beside it); nothing was changed"
        )
        assert file_sha(target) == before
    finally:
        unmount(mount)


def test_whatever_goes_wrong_after_the_write_the_data_it_replaced_is_kept(
    wal_settings: Settings, journal_mode: str
) -> None:
    """An error that is no restore failure (a bug, an interrupt) after the write committed:
    the safety copy is still filed, so the data the write replaced is never lost."""
    db = wal_settings.database
    backup = create_backup(wal_settings).metadata
    change(db)
    before = dump(db)

    def explode(target: Path, held: sqlite3.Connection | None) -> None:
        raise RuntimeError("a bug after the write")

    with pytest.raises(RuntimeError, match="a bug after the write"):
        restore_backup(wal_settings, backup.id, _after_write=explode)
    (safety,) = [i for i in BackupStore(wal_settings).list() if i.kind == "pre-restore"]
    assert dump_of_backup(wal_settings, safety.id, db.parent) == before
    assert_no_debris(*wal_settings.locations)
    (entry,) = [e for e in read_entries(wal_settings) if e.details.get("target") == str(db)]
    assert entry.ok is False and entry.message.startswith("interrupted: RuntimeError")


def test_a_folder_of_another_database_is_refused_unless_named(
    settings: Settings, tmp_path: Path
) -> None:
    """The issue's example: a backup folder of the tablets database, restored into shop.db by
    a mistyped option, is refused in one line naming both; --from-database makes it
    deliberate, and shop.db's safety snapshot then goes to shop.db's own folder."""
    tablets = create_backup(settings).metadata
    (tmp_path / "shop").mkdir()
    shop = make_db(tmp_path / "shop" / "shop.db")
    change(shop)
    before = dump(shop)
    mixed = settings_from_mapping({"database": shop, "dir": settings.backup_dir})
    with pytest.raises(RestoreError) as caught:
        restore_backup(mixed, "latest")
    assert str(caught.value) == (
        f"backup folder {settings.backup_dir} belongs to database 'tablet_counter' "
        f"({settings.database}), not 'shop' ({shop}); nothing was changed. To restore a backup "
        "of 'tablet_counter' into it on purpose: add --from-database tablet_counter"
    )
    assert dump(shop) == before
    with pytest.raises(RestoreError, match=r"^--from-database shop: backup folder .* belongs to"):
        restore_backup(mixed, "latest", from_database="shop")
    assert [i.kind for i in BackupStore(settings).list()] == ["manual"]  # nothing filed there

    result = restore_backup(mixed, "latest", from_database="tablet_counter")
    assert result.backup_id == tablets.id
    assert dump(shop) == dump(settings.database)
    # The safety snapshot is shop.db's, in shop.db's own (default) folder, under its name.
    own = BackupStore(settings_from_mapping({"database": shop}))
    (safety,) = own.list()
    assert safety.id == result.safety_snapshot_id and safety.kind == "pre-restore"
    assert safety.metadata is not None and safety.metadata.source.path == str(shop)
    assert dump_of_backup(settings_from_mapping({"database": shop}), safety.id, tmp_path) == before
    assert [i.kind for i in BackupStore(settings).list()] == ["manual"]

    # From the command line, as the issue typed it.
    change(shop)
    done = CliRunner().invoke(
        cli,
        [
            "restore",
            "latest",
            "--database",
            str(shop),
            "--backup-dir",
            str(settings.backup_dir),
            "--yes",
        ],
    )
    assert done.exit_code == 2 and "add --from-database tablet_counter" in done.stderr
    done = CliRunner().invoke(
        cli,
        [
            "restore",
            "latest",
            "--database",
            str(shop),
            "--backup-dir",
            str(settings.backup_dir),
            "--from-database",
            "tablet_counter",
            "--yes",
        ],
    )
    assert done.exit_code == 0, done.output
    assert len(own.list()) == 2


def test_with_raw_reads_a_changed_value_fails_the_check_though_counts_and_schema_match(
    settings: Settings,
) -> None:
    """The byte comparison on its own: one value changed after the write (row counts, schema
    and quick_check all still fine) is caught, and the safety copy is put back."""
    db = settings.database
    backup = create_backup(settings).metadata
    change(db)
    before = dump(db)

    def edit(target: Path, held: sqlite3.Connection | None) -> None:
        assert held is not None
        held.execute("UPDATE purchase_orders SET notes = 'edited' WHERE id = 1")

    with pytest.raises(RestoreError) as caught:
        restore_backup(settings, backup.id, _after_write=edit, raw_reads=True)
    assert (
        f"check afterwards failed: {db} does not hold the backup's bytes (its row counts and "
        "schema match)"
    ) in str(caught.value)
    assert dump(db) == before
    # Through SQLite alone the same edit passes: the byte check is what caught it.
    restored = restore_backup(settings, backup.id, _after_write=edit)
    assert restored.backup_id == backup.id

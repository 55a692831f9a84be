"""The catalog: a listing through it is the listing the manifests give, however the catalog
was lost, damaged or left behind by other processes; and it parses only what changed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from tablettracker_backups import catalog
from tablettracker_backups.backup import create_backup
from tablettracker_backups.crashpoints import ENV, Stage
from tablettracker_backups.metadata import BackupMetadata, BackupState, Verification
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupInfo, BackupStore
from tests.catalogkit import (
    START,
    edit_manifest,
    sample_meta,
    write_manifest,
    write_points,
    write_raw,
    write_state,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _trust_fresh_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by a test are seconds old at most: trust their ``stat`` at once (the
    window for a coarse clock is tested on its own)."""
    monkeypatch.setattr(catalog, "SETTLE_NS", 0)


class CountingStore(BackupStore):
    """A store that counts the manifests it parses (through the catalog or not)."""

    parsed = 0

    def read_metadata(self, location: str, backup_id: str) -> BackupMetadata:
        CountingStore.parsed += 1
        return super().read_metadata(location, backup_id)


def parses(settings: Settings) -> tuple[list[BackupInfo], int]:
    CountingStore.parsed = 0
    infos = CountingStore(settings).list()
    return infos, CountingStore.parsed


def truth(settings: Settings) -> list[BackupInfo]:
    return BackupStore(settings, catalog=False).list()


def catalog_path(folder: Path) -> Path:
    return folder / ".catalog" / "catalog.sqlite"


def catalog_rows(folder: Path) -> int:
    with sqlite3.connect(catalog_path(folder)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA application_id").fetchone() == (catalog.APPLICATION_ID,)
        (count,) = conn.execute("SELECT count(*) FROM entries").fetchone()
        return int(count)


@pytest.fixture
def mixed(settings: Settings) -> Settings:
    """Both folders holding every kind of backup a listing must show as it is."""
    primary, secondary = settings.backup_dir, settings.secondary_dir
    assert secondary is not None
    create_backup(settings)  # a real one, in both folders
    create_backup(settings, kind="pre-restore", trigger="restore")
    ids = write_points(primary, 6, start=START, step=timedelta(minutes=7))
    write_points(secondary, 2, start=START, step=timedelta(minutes=7))  # same ids: two copies
    # Pinned and labelled by a state document; a failed verification by another.
    meta = sample_meta(ids[1], START + timedelta(minutes=7))
    write_state(primary, replace(BackupState.of(meta), pinned=True, label="before the move"))
    failed = Verification(False, START + timedelta(hours=1), "ok", 0, "checksum mismatch")
    write_state(secondary, replace(BackupState.of(meta), verification=failed))
    write_raw(primary / f"{ids[2]}.json", "{ not json")  # damaged manifest
    edit_manifest(primary, ids[3], format_version=99)  # written by a newer version
    write_raw(primary / f"{ids[4]}.state.json", '{"state_version": 1}')  # damaged state
    (primary / f"{ids[5]}.db.zst").write_bytes(b"grown in place")  # wrong size
    os.unlink(primary / f"{ids[0]}.db.zst")  # data file missing
    write_raw(primary / "20261399T999999Z-3f9a1c.json", "{}")  # impossible date: no backup
    pre = sample_meta("20261202T000000Z-aaaaaa", START + timedelta(days=1), kind="pre-restore")
    write_manifest(primary, pre)
    differs = replace(sample_meta(ids[0], START), sha256="d" * 64)
    write_manifest(secondary, differs)  # the secondary's copy of ids[0] differs
    return settings


def test_listing_through_the_catalog_is_the_manifests_listing(mixed: Settings) -> None:
    expected = truth(mixed)
    assert len(expected) == 9 and any(i.problems for i in expected)
    assert {i.kind for i in expected} >= {"manual", "pre-restore", "auto", "unknown"}
    assert any(i.newer for i in expected) and any(i.pinned and i.label for i in expected)
    first, parsed_first = parses(mixed)
    again, parsed_again = parses(mixed)
    assert first == again == expected
    # The first listing parsed every copy; the second none: it read the catalog.
    assert parsed_first >= 9 and parsed_again == 0
    # Rows for every manifest the folder holds (damaged and newer ones too), not the stray.
    assert catalog_rows(mixed.backup_dir) == 9
    assert catalog_rows(mixed.secondary_dir) == 4  # type: ignore[arg-type]


def test_a_warm_catalog_answers_every_hot_path_the_same(mixed: Settings) -> None:
    BackupStore(mixed).list()
    warm, cold = BackupStore(mixed), BackupStore(mixed, catalog=False)
    assert warm.newest() == cold.newest()
    assert warm.newest_safety_snapshot() == cold.newest_safety_snapshot()
    assert warm.latest() == cold.latest()


def plant_blob(folder: Path, backup_id: str, blob: bytes, *, sound: bool = True) -> None:
    """Put ``blob`` in a backup's catalog row; with ``sound``, with the row's check updated
    to match (a deliberate row, not a torn one)."""
    path = catalog_path(folder)
    with sqlite3.connect(path) as conn:
        columns = conn.execute(
            "SELECT manifest_sig, state_sig, outcome, detail, meta, created_at, kind, row_check"
            " FROM entries WHERE id = ?",
            (backup_id,),
        ).fetchone()
    row = catalog._Row(*columns)
    planted = replace(row, meta=blob)
    check = catalog._row_check(backup_id, planted) if sound else row.row_check
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE entries SET meta = ?, row_check = ? WHERE id = ?", (blob, check, backup_id)
        )


def test_the_catalog_is_read_when_the_files_are_unchanged(settings: Settings) -> None:
    """A row whose files' ``stat`` still matches is believed: proof that the listing reads
    it (a planted label shows), and that touching the files ends the belief."""
    [backup_id] = write_points(settings.backup_dir, 1)
    BackupStore(settings).list()
    planted = replace(sample_meta(backup_id, START), label="from the catalog")
    plant_blob(settings.backup_dir, backup_id, catalog.pickle.dumps(planted))
    assert BackupStore(settings).list()[0].label == "from the catalog"
    edit_manifest(settings.backup_dir, backup_id)  # the same text, a new file
    assert BackupStore(settings).list()[0].label is None


def test_a_torn_row_is_parsed_again(settings: Settings) -> None:
    """After a power cut (the catalog is written without fsync) a row may hold its
    signatures from one version and its pickle from another: its check refuses it."""
    [backup_id] = write_points(settings.backup_dir, 1)
    BackupStore(settings).list()
    older = replace(sample_meta(backup_id, START), pinned=True, label="an older version")
    plant_blob(settings.backup_dir, backup_id, catalog.pickle.dumps(older), sound=False)
    infos, parsed = parses(settings)
    assert infos == truth(settings) and parsed == 1
    assert not infos[0].pinned and infos[0].label is None


def test_a_row_naming_any_other_class_is_parsed_again(settings: Settings) -> None:
    [backup_id] = write_points(settings.backup_dir, 1)
    BackupStore(settings).list()
    plant_blob(settings.backup_dir, backup_id, catalog.pickle.dumps(Path("/etc/passwd")))
    infos, parsed = parses(settings)
    assert infos == truth(settings) and parsed == 1


class _Planted:
    """A pickle that makes a folder when loaded by an unpickler that builds any global."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.path),))


def test_a_planted_row_cannot_run_code(settings: Settings, tmp_path: Path) -> None:
    [backup_id] = write_points(settings.backup_dir, 1)
    BackupStore(settings).list()
    plant_blob(settings.backup_dir, backup_id, catalog.pickle.dumps(_Planted(tmp_path / "ran")))
    infos, parsed = parses(settings)
    assert infos == truth(settings) and parsed == 1
    assert not (tmp_path / "ran").exists()


def _damage_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damage_garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _damage_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in range(4096, len(data), 997):  # every page but the header's
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage_schema(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 0")


def _damage_newer_schema(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {catalog.SCHEMA_VERSION + 1}")


def _damage_foreign(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE entries (id TEXT PRIMARY KEY, other TEXT)")


def _damage_table(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE entries")


def _damage_rows(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE entries SET meta = x'00ff00', outcome = 'ok'")
        conn.execute(
            "INSERT INTO entries VALUES ('nonsense', '', '', 'ok', '', NULL, NULL, NULL, 0)"
        )


@pytest.mark.parametrize(
    "damage",
    [
        Path.unlink,
        lambda p: p.write_bytes(b""),
        _damage_truncate,
        _damage_garbage,
        _damage_pages,
        _damage_schema,
        _damage_newer_schema,
        _damage_foreign,
        _damage_table,
        _damage_rows,
    ],
    ids=[
        "deleted",
        "empty",
        "truncated",
        "garbage",
        "damaged-pages",
        "old-schema",
        "newer-schema",
        "foreign",
        "table-dropped",
        "rows-garbled",
    ],
)
def test_a_lost_or_damaged_catalog_is_rebuilt(settings: Settings, damage: object) -> None:
    write_points(settings.backup_dir, 300, step=timedelta(minutes=1))
    expected = truth(settings)
    assert BackupStore(settings).list() == expected
    assert catalog_path(settings.backup_dir).stat().st_size > 8192
    damage(catalog_path(settings.backup_dir))  # type: ignore[operator]
    assert BackupStore(settings).list() == expected  # nothing twice, nothing missed
    assert catalog_rows(settings.backup_dir) == 300  # rebuilt (or mended row by row)
    assert parses(settings) == (expected, 0)


def test_a_file_where_the_catalog_folder_goes_is_no_error(settings: Settings) -> None:
    write_points(settings.backup_dir, 3)
    (settings.backup_dir / ".catalog").write_text("not a folder")
    expected = truth(settings)
    assert BackupStore(settings).list() == expected
    assert (settings.backup_dir / ".catalog").read_text() == "not a folder"


def test_a_missing_folder_is_not_created_by_listing(tmp_path: Path, settings: Settings) -> None:
    gone = replace(settings, backup_dir=tmp_path / "nowhere", secondary_dir=None)
    assert BackupStore(gone).list() == []
    assert not (tmp_path / "nowhere").exists()


def test_changes_behind_the_catalogs_back_show_at_the_next_listing(settings: Settings) -> None:
    folder = settings.backup_dir
    ids = write_points(folder, 5)
    BackupStore(settings).list()
    # Added, removed, pinned, relabelled in the manifest, damaged: by other writers.
    write_points(folder, 1, start=START + timedelta(days=1))
    for name in (f"{ids[0]}.json", f"{ids[0]}.db.zst"):
        (folder / name).unlink()
    meta = sample_meta(ids[1], START + timedelta(seconds=1))
    write_state(folder, replace(BackupState.of(meta), pinned=True))
    edit_manifest(folder, ids[2], label="edited")
    write_raw(folder / f"{ids[3]}.json", "[]")
    infos, parsed = parses(settings)
    assert infos == truth(settings)
    assert parsed == 4  # only what changed: the new one, the pinned, the edited, the damaged
    shown = {i.id: i for i in infos}
    assert ids[0] not in shown and len(infos) == 5
    assert shown[ids[1]].pinned and shown[ids[2]].label == "edited" and shown[ids[3]].problems
    assert catalog_rows(folder) == 5


def test_a_backup_written_by_another_process_lists_next(settings: Settings) -> None:
    write_points(settings.backup_dir, 2)
    BackupStore(settings).list()
    code = (
        "import sys; from tests.catalogkit import write_points, START;"
        "from datetime import timedelta; from pathlib import Path;"
        "write_points(Path(sys.argv[1]), 1, start=START + timedelta(days=2))"
    )
    subprocess.run([sys.executable, "-c", code, str(settings.backup_dir)], cwd=ROOT, check=True)
    infos, parsed = parses(settings)
    assert len(infos) == 3 and infos == truth(settings) and parsed == 1


def test_a_file_changed_within_the_settle_window_is_parsed_every_time(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writes within one tick of a coarse clock can leave the same ``stat``: a file that
    new is never believed from the catalog, and no row is kept for it. (A window of a minute
    here, so a loaded machine's pauses cannot move a file across the edge.)"""
    monkeypatch.setattr(catalog, "SETTLE_NS", 60_000_000_000)
    [old, new] = write_points(settings.backup_dir, 2)
    now = time.time()
    os.utime(settings.backup_dir / f"{old}.json", (now - 70, now - 70))  # outside
    os.utime(settings.backup_dir / f"{new}.json", (now - 50, now - 50))  # inside
    assert parses(settings)[1] == 2
    infos, parsed = parses(settings)
    assert infos == truth(settings) and parsed == 1
    assert catalog_rows(settings.backup_dir) == 1


def _list_in_child(settings: Settings, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; from pathlib import Path;"
        "from tablettracker_backups.settings import settings_from_mapping;"
        "from tablettracker_backups.store import BackupStore;"
        "s = settings_from_mapping({'database': Path(sys.argv[1]), 'dir': Path(sys.argv[2])});"
        "print(len(BackupStore(s).list()))"
    )
    args = [sys.executable, "-c", code, str(settings.database), str(settings.backup_dir)]
    return subprocess.run(
        args, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def _backdate_all(folder: Path) -> None:
    old = time.time() - 60
    for entry in folder.iterdir():
        if entry.is_file():
            os.utime(entry, (old, old))


@pytest.mark.parametrize("stage", [Stage.CATALOG_WRITE, Stage.CATALOG_REBUILD])
def test_a_listing_killed_while_writing_the_catalog_leaves_it_sound(
    settings: Settings, stage: Stage
) -> None:
    settings = replace(settings, secondary_dir=None)
    folder = settings.backup_dir
    write_points(folder, 50)
    if stage is Stage.CATALOG_WRITE:
        BackupStore(settings).list()  # a catalog to update
        write_points(folder, 20, start=START + timedelta(days=1))
    _backdate_all(folder)
    child = _list_in_child(settings, {ENV: stage.value})
    assert child.returncode == -signal.SIGKILL, child.stderr
    leftover = {p.name for p in (folder / ".catalog").iterdir()}
    if stage is Stage.CATALOG_WRITE:
        assert "catalog.sqlite-journal" in leftover  # a hot journal: rows half written
    else:
        assert any(n.startswith(".tmp-") for n in leftover)  # built aside, never renamed
        assert "catalog.sqlite" not in leftover
    expected = truth(settings)
    assert BackupStore(settings).list() == expected
    assert catalog_rows(folder) == len(expected)
    assert parses(settings) == (expected, 0)


def test_listers_and_a_writer_at_once_never_miss_or_repeat(settings: Settings) -> None:
    """Two processes list while a third adds and deletes backups: every listing holds every
    backup that existed throughout, each once; afterwards the catalog is sound and exact."""
    settings = replace(settings, secondary_dir=None)
    folder = settings.backup_dir
    stable = write_points(folder, 40)
    _backdate_all(folder)
    started, stop = folder.parent / "writer-started", folder.parent / "writer-stop"
    # Each lister waits for the writer's first round, then lists 5 times while it goes on.
    lister = (
        "import sys, time; from pathlib import Path;"
        "from tablettracker_backups.settings import settings_from_mapping;"
        "from tablettracker_backups.store import BackupStore;"
        "s = settings_from_mapping({'database': Path(sys.argv[1]), 'dir': Path(sys.argv[2])});"
        "stable = set(sys.argv[4].split(','))\n"
        "limit = time.time() + 30\n"
        "while not Path(sys.argv[3]).exists() and time.time() < limit: time.sleep(0.01)\n"
        "for n in range(5):\n"
        "    ids = [i.id for i in BackupStore(s).list()]\n"
        "    assert len(ids) == len(set(ids)), 'listed twice'\n"
        "    assert stable <= set(ids), sorted(stable - set(ids))\n"
        "print(n + 1)"
    )
    writer = (
        "import os, sys, time; from pathlib import Path; from datetime import timedelta;"
        "from tests.catalogkit import write_points, START; folder = Path(sys.argv[1]); n = 0\n"
        "limit = time.time() + 30\n"
        "while not Path(sys.argv[3]).exists() and time.time() < limit:\n"
        "    n += 1; ids = write_points(folder, 3, start=START + timedelta(days=n))\n"
        "    old = time.time() - 60\n"
        "    for i in ids: os.utime(folder / f'{i}.json', (old, old))\n"
        "    if n % 2:\n"
        "        for i in ids[:2]:\n"
        "            os.unlink(folder / f'{i}.json'); os.unlink(folder / f'{i}.db.zst')\n"
        "    Path(sys.argv[2]).touch()\n"
        "print(n)"
    )
    pipes = {"cwd": ROOT, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    base = [str(settings.database), str(folder), str(started)]
    listers = [
        subprocess.Popen([sys.executable, "-c", lister, *base, ",".join(stable)], **pipes)  # type: ignore[call-overload]
        for _ in range(2)
    ]
    writing = subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-c", writer, str(folder), str(started), str(stop)], **pipes
    )
    try:
        for proc in listers:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert int(out) == 5
    finally:
        stop.touch()
        out, err = writing.communicate(timeout=60)
    assert writing.returncode == 0, err
    assert int(out) >= 1
    expected = truth(settings)
    assert BackupStore(settings).list() == expected
    assert catalog_rows(folder) == len(expected)


def test_a_rebuild_over_a_hot_journal_keeps_the_new_catalog(settings: Settings) -> None:
    """A killed writer's journal belongs to the catalog it was writing: when that catalog is
    lost and rebuilt, the journal must not be rolled back into the new one."""
    settings = replace(settings, secondary_dir=None)
    folder = settings.backup_dir
    write_points(folder, 200)
    BackupStore(settings).list()
    # More rows than SQLite's page cache holds: the writer spills pages into the file before
    # its commit, so the journal it leaves is hot (it would be rolled back into the file).
    write_points(folder, 2000, start=START + timedelta(days=1))
    _backdate_all(folder)
    child = _list_in_child(settings, {ENV: Stage.CATALOG_WRITE.value})
    assert child.returncode == -signal.SIGKILL, child.stderr
    journal = folder / ".catalog" / "catalog.sqlite-journal"
    assert journal.read_bytes()[:8] == bytes.fromhex("d9d505f920a163d7")  # hot
    catalog_path(folder).unlink()  # lost; its hot journal is still there
    expected = truth(settings)
    assert BackupStore(settings).list() == expected  # rebuilt
    assert parses(settings) == (expected, 0)
    assert catalog_rows(folder) == 2200


def test_a_busy_catalog_is_read_around_and_left_alone(settings: Settings) -> None:
    """Another process holding the catalog (a long write) costs a listing at most the busy
    timeout: it reads the manifests itself and neither waits longer nor replaces the file."""
    settings = replace(settings, secondary_dir=None)
    folder = settings.backup_dir
    write_points(folder, 20)
    BackupStore(settings).list()
    write_points(folder, 5, start=START + timedelta(days=1))
    before = catalog_path(folder).stat().st_ino
    holder = sqlite3.connect(catalog_path(folder), isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        infos, parsed = parses(settings)
        assert infos == truth(settings) and parsed == 25  # every manifest, read directly
        assert catalog_path(folder).stat().st_ino == before
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert parses(settings)[1] == 5  # free again: only the new ones are parsed, and kept
    assert parses(settings) == (truth(settings), 0)


def test_a_symbolic_link_where_the_catalog_folder_goes_is_not_followed(
    settings: Settings, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_points(settings.backup_dir, 3)
    (settings.backup_dir / ".catalog").symlink_to(elsewhere)
    assert BackupStore(settings).list() == truth(settings)
    assert list(elsewhere.iterdir()) == []

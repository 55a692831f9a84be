"""Format version 2, the page store: each backup stores only the pages that changed, and is
still a whole, checked database when it is read back.

The corpus round trip (both journal modes) is in test_corpus.py; here: what an incremental
backup stores, a damaged pack found and named and healed, a kill between packs and manifest,
the host app's own lock surviving an in-process snapshot, and a version 1 folder beside it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.crashpoints import ENV, Stage
from tablettracker_backups.errors import ConfigError, MetadataError, VerificationError
from tablettracker_backups.formats import FILES, PAGES, choose_format, format_of, page_index
from tablettracker_backups.heal import heal_copies
from tablettracker_backups.layout import content_sha256, node_key, pack_key
from tablettracker_backups.pagestore import (
    PAGES_PER_LEAF,
    PageIndex,
    build_database,
    read_tree,
)
from tablettracker_backups.restore import restore_backup
from tablettracker_backups.settings import Settings
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_copy
from tests.conftest import flip_byte, make_db
from tests.faultkit import cli_env, run_cli


@pytest.fixture
def pages(make_settings: Callable[..., Settings]) -> Settings:
    """Settings that write format 2, with a secondary folder."""
    return make_settings(format="pages")


def _objects(folder: Path) -> set[str]:
    root = folder / "pages"
    return {p.relative_to(folder).as_posix() for p in root.rglob("*") if p.is_file()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _change_one_row(db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE po_lines SET quantity_received = quantity_received + 1 WHERE id = 1")
        conn.commit()


def test_an_incremental_backup_stores_only_the_changed_pages_and_copies_only_them(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    db_path = make_db(tmp_path / "big.db", purchase_orders=600, note_bytes=300)
    pages = make_settings(database=db_path, format="pages")
    first = create_backup(pages).metadata
    assert page_index(first).depth == 1  # more than one leaf: a tree to reuse
    assert format_of(first) is PAGES and first.format_version == 2 and first.compression == "zstd"
    full = page_index(first)
    assert full.page_count == first.source.page_count and full.added == first.stored_size
    secondary = pages.secondary_dir
    assert secondary is not None
    before = _objects(secondary)
    assert before == _objects(pages.backup_dir)
    inodes = {key: (secondary / key).stat().st_ino for key in before if "/key" not in key}

    _change_one_row(db_path)
    second = create_backup(pages).metadata
    added = page_index(second)
    # A row and the header page changed: one small pack, and one node pack with a leaf or
    # two and the path to them.
    assert added.new_packs == 1 and 2 <= added.new_nodes <= 2 * (added.depth + 1)
    assert added.added < full.added / 10
    # The secondary got exactly the new objects, nothing it already held.
    new = _objects(secondary) - before
    assert len(new) == added.new_packs + 1
    assert _objects(secondary) == _objects(pages.backup_dir)
    # and what it held was not written again (a put replaces the file: a new inode).
    assert {key: (secondary / key).stat().st_ino for key in inodes} == inodes

    # Each backup builds its own snapshot, from either folder.
    for meta in (first, second):
        for folder in pages.locations:
            out = tmp_path / f"{meta.id}-{folder.name}.db"
            PAGES.extract(LocalStore(folder), meta, out, scratch=tmp_path)
            assert _sha(out) == meta.raw_sha256
    assert first.raw_sha256 != second.raw_sha256
    store = BackupStore(pages)
    assert [info.verified for info in store.list()] == [True, True]
    assert all(verify_copy(store, loc, second.id).ok for loc in ("primary", "secondary"))


def test_a_damaged_pack_is_found_on_read_named_and_healed_from_the_other_copy(
    pages: Settings, tmp_path: Path
) -> None:
    meta = create_backup(pages).metadata
    primary = LocalStore(pages.backup_dir)
    [pack] = read_tree(primary, page_index(meta)).packs
    flip_byte(primary.path_of(pack_key(pack)))

    # Building the database reads the pack, checks it against its name, and says which.
    with pytest.raises(VerificationError, match=f"{pack_key(pack)} in local folder .* damaged"):
        PAGES.extract(primary, meta, tmp_path / "out.db", scratch=tmp_path)
    assert not (tmp_path / "out.db").exists()
    store = BackupStore(pages)
    result = verify_copy(store, "primary", meta.id)
    assert not result.ok and pack_key(pack) in (result.error or "")
    info = store.get(meta.id)
    assert not store.checksum_matches(info, "primary")
    assert store.checksum_matches(info, "secondary")

    # The copy holds the pack under the same name: a repair replaces it, not trusts it.
    [repair] = heal_copies(BackupStore(pages), recheck=1)
    assert repair.ok and repair.source == "secondary", repair
    assert store.checksum_matches(store.get(meta.id), "primary")
    out = tmp_path / "healed.db"
    PAGES.extract(primary, meta, out, scratch=tmp_path)
    assert _sha(out) == meta.raw_sha256


def test_a_page_that_does_not_match_its_hash_is_refused(pages: Settings, tmp_path: Path) -> None:
    """Packs and nodes all hash to their names, but the pages do not match their keyed hashes
    (the folder's key replaced): only the page check stands in the way."""
    meta = create_backup(pages).metadata
    store = LocalStore(pages.backup_dir)
    other = bytes(32)
    store.put("pages/key", other, sha256=hashlib.sha256(other).hexdigest())
    assert not BackupStore(pages).get(meta.id).problems
    with pytest.raises(VerificationError, match="page 1 does not match its hash"):
        build_database(store, page_index(meta), tmp_path / "forged.db")
    assert not (tmp_path / "forged.db").exists()


@pytest.mark.parametrize("stage", [Stage.PACK_WRITE, Stage.NODE_WRITE, Stage.METADATA_WRITE])
@pytest.mark.parametrize("nth", ["first", "incremental"])
def test_a_kill_between_packs_and_manifest_lists_no_half_backup(
    pages: Settings, db_path: Path, tmp_path: Path, stage: Stage, nth: str
) -> None:
    if nth == "incremental":
        create_backup(pages)
        _change_one_row(db_path)
    before = {info.id for info in BackupStore(pages).list()}
    env = cli_env(db_path, pages.backup_dir, pages.secondary_dir, home=tmp_path)
    env["BACKUPS_FORMAT"] = "pages"
    killed = run_cli(["backup"], {**env, ENV: stage.value})
    assert killed.returncode == -9, (killed.stdout, killed.stderr)
    assert {info.id for info in BackupStore(pages).list()} == before

    if stage is not Stage.METADATA_WRITE:
        assert any(p.name.startswith(".tmp-") for p in (pages.backup_dir / "pages").rglob("*"))

    # The next backup is whole, and every listed one builds its snapshot; the debris is gone.
    done = run_cli(["backup"], env)
    assert done.returncode == 0, done.stderr
    assert not any(p.name.startswith(".tmp-") for p in pages.backup_dir.rglob("*"))
    infos = BackupStore(pages).list()
    assert len(infos) == len(before) + 1
    for info in infos:
        assert info.verified and info.metadata is not None
        result = verify_copy(BackupStore(pages), "primary", info.id)
        assert result.ok, result.error


HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
try:
    conn.execute("BEGIN IMMEDIATE")
except sqlite3.OperationalError as exc:
    print("refused", exc)
else:
    print("wrote")
"""


def _other_process_can_write(db: Path) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", HOLDER, str(db)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.startswith("wrote")


@pytest.mark.parametrize("budget", [5.0, 0.0])
def test_the_host_apps_own_lock_survives_a_snapshot_taken_in_its_process(
    make_settings: Callable[..., Settings], db_path: Path, journal_mode: str, budget: float
) -> None:
    """Closing any descriptor on a file drops every POSIX lock the process holds on it: a
    snapshot in the host app's process must never open the live database outside SQLite,
    also when its full checks wait (budget 0), where the CLI would read the file itself."""
    if journal_mode == "wal":
        with closing(sqlite3.connect(db_path)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    settings = make_settings(format="pages", check_budget=budget)
    create_backup(settings)
    _change_one_row(db_path)
    app = sqlite3.connect(db_path, isolation_level=None)
    try:
        app.execute("BEGIN IMMEDIATE")  # the app is in the middle of a write
        app.execute("UPDATE po_lines SET quantity_received = 0 WHERE id = 2")
        assert not _other_process_can_write(db_path)
        meta = create_backup(settings).metadata
        assert meta.format_version == 2
        assert not _other_process_can_write(db_path), "the app's lock was dropped"
        app.execute("COMMIT")
    finally:
        app.close()
    assert _other_process_can_write(db_path)


def test_a_version_1_folder_keeps_its_format_until_told_and_both_stay_readable(
    make_settings: Callable[..., Settings], db_path: Path, tmp_path: Path
) -> None:
    old = create_backup(make_settings(format="files")).metadata
    unset = make_settings()
    kept = create_backup(unset).metadata
    assert (old.format_version, kept.format_version) == (1, 1)
    _change_one_row(db_path)
    new = create_backup(make_settings(format="pages")).metadata
    _change_one_row(db_path)
    after = create_backup(unset).metadata  # the newest is format 2 now: the folder keeps it
    assert (new.format_version, after.format_version) == (2, 2)
    store = BackupStore(unset)
    infos = store.list()
    assert [i.id for i in infos] == [after.id, new.id, kept.id, old.id]
    assert all(i.verified and not i.problems for i in infos)
    for meta in (old, new):
        target = tmp_path / f"{meta.id}.db"
        restore_backup(unset, meta.id, to=target)
        assert _sha(target) == meta.raw_sha256


def test_the_format_chosen_for_a_new_backup(
    make_settings: Callable[..., Settings],
) -> None:
    def chosen(setting: str | None, **given: bool) -> object:
        flags = {"encrypted_locally": False, "offsite": False, **given}
        return choose_format(setting, newest=None, **flags)

    assert chosen("pages") is PAGES and chosen("files") is FILES
    assert chosen(None, encrypted_locally=True) is FILES
    assert chosen(None, offsite=True) is FILES and chosen(None, gzip=True) is FILES
    with pytest.raises(ConfigError, match="BACKUPS_COMPRESSION=gzip is for BACKUPS_FORMAT=files"):
        make_settings(format="pages", compression="gzip")
    # Offsite copies take format 2 (object by object): an offsite place no longer decides.
    offsite = make_settings(format="pages", s3_bucket="b", s3_endpoint_url="http://127.0.0.1:9")
    assert offsite.backup_format == "pages"
    with pytest.raises(ConfigError, match="BACKUPS_FORMAT must be one of pages, files"):
        make_settings(format="page")
    assert make_settings(format=" Pages ").backup_format == "pages"
    assert make_settings().backup_format is None


def test_a_manifests_page_index_is_validated() -> None:
    place = {"root_pack": "cd" * 32, "root_offset": 0, "root_length": 700}
    good = PageIndex(root="ab" * 32, depth=0, page_size=4096, page_count=PAGES_PER_LEAF, **place)
    assert PageIndex.from_dict(good.to_dict()) == good
    deeper = PageIndex(
        root="ab" * 32, depth=1, page_size=4096, page_count=PAGES_PER_LEAF + 1, **place
    )
    assert PageIndex.from_dict(deeper.to_dict()) == deeper
    for change in (
        {"root": "AB" * 32},
        {"root": "ab" * 31},
        {"root_pack": ""},
        {"root_length": 0},
        {"root_length": 64 * 1024 + 1},
        {"hash": "sha1"},
        {"depth": 1},
        {"page_size": 256},
        {"page_count": -1},
        {"added": True},
    ):
        with pytest.raises(MetadataError):
            PageIndex.from_dict({**good.to_dict(), **change})


def test_only_hash_named_objects_count_as_held_by_name() -> None:
    sha = "0f" * 32
    assert content_sha256(pack_key(sha)) == sha and content_sha256(node_key(sha)) == sha
    assert content_sha256(f"pages/packs/aa/{sha}") is None  # the folder must match
    assert content_sha256("pages/key") is None
    assert content_sha256(f"20261123T201500Z-3f9a1c.db.zst{sha}") is None


@pytest.mark.parametrize("backup_format", ["files", "pages"])
def test_export_writes_a_plain_sqlite_file_sqlite3_opens(
    make_settings: Callable[..., Settings], db_path: Path, tmp_path: Path, backup_format: str
) -> None:
    settings = make_settings(format=backup_format)
    meta = create_backup(settings).metadata
    env = cli_env(db_path, settings.backup_dir, settings.secondary_dir, home=tmp_path)
    plain, packed = tmp_path / "copy.db", tmp_path / "copy.db.zst"
    done = run_cli(["export", "latest", "--to", str(plain)], env)
    assert done.returncode == 0, done.stderr
    assert f"Exported backup {meta.id} from its primary copy" in done.stdout
    assert _sha(plain) == meta.raw_sha256 and (plain.stat().st_mode & 0o777) == 0o600
    shell = subprocess.run(
        ["sqlite3", str(plain), "SELECT count(*) FROM po_lines; PRAGMA integrity_check;"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.split() == [str(meta.row_counts["po_lines"]), "ok"]
    done = run_cli(["export", meta.id, "--to", str(packed), "--compress"], env)
    assert done.returncode == 0, done.stderr
    unpacked = tmp_path / "unpacked.db"
    subprocess.run(["zstd", "-q", "-d", str(packed), "-o", str(unpacked)], check=True)
    assert _sha(unpacked) == meta.raw_sha256
    # An existing file is never overwritten; the line says so, with no traceback.
    again = run_cli(["export", meta.id, "--to", str(plain)], env)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr and _sha(plain) == meta.raw_sha256
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_missing_pack_is_stored_again_by_the_next_backup_not_inherited(
    pages: Settings, db_path: Path, tmp_path: Path
) -> None:
    first = create_backup(pages).metadata
    primary = LocalStore(pages.backup_dir)
    [pack] = read_tree(primary, page_index(first)).packs
    primary.delete(pack_key(pack))
    _change_one_row(db_path)
    second = create_backup(pages).metadata
    assert page_index(second).added > page_index(first).added / 2  # every page again
    out = tmp_path / "second.db"
    PAGES.extract(primary, second, out, scratch=tmp_path)
    assert _sha(out) == second.raw_sha256


def test_a_database_that_shrinks_and_changes_page_size_round_trips(
    pages: Settings, db_path: Path, tmp_path: Path
) -> None:
    metas = [create_backup(pages).metadata]
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("DELETE FROM count_sessions WHERE id % 2 = 0")
        conn.execute("VACUUM")  # fewer pages, moved
    metas.append(create_backup(pages).metadata)
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("PRAGMA page_size=1024")
        conn.execute("VACUUM")
    metas.append(create_backup(pages).metadata)
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("PRAGMA page_size=65536")
        conn.execute("VACUUM")
    metas.append(create_backup(pages).metadata)
    sizes = [page_index(m).page_size for m in metas]
    assert sizes == [4096, 4096, 1024, 65536]
    assert page_index(metas[1]).page_count < page_index(metas[0]).page_count
    for meta in metas:
        out = tmp_path / f"{meta.id}.db"
        restore_backup(pages, meta.id, to=out)
        assert _sha(out) == meta.raw_sha256
        assert verify_copy(BackupStore(pages), "secondary", meta.id).ok

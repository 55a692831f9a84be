"""Garbage collection of format 2's packs and node packs (tablettracker_backups/garbage.py).

Real backups in real folders (primary and secondary); a backup is dropped the way prune drops
one (its manifests deleted), then collection runs; kills are real SIGKILLs of the CLI.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.crashpoints import ENV, SIGNAL_ENV, Stage
from tablettracker_backups.formats import page_index
from tablettracker_backups.garbage import GRACE, collect
from tablettracker_backups.layout import node_key, pack_key
from tablettracker_backups.metadata import BackupMetadata
from tablettracker_backups.pagestore import folder_key, read_tree, walk_index, write_file_pages
from tablettracker_backups.prune import prune
from tablettracker_backups.settings import Settings
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_copy
from tests.faultkit import cli_env, resume, run_cli, spawn_cli, stopped_at


@pytest.fixture
def pages(make_settings: Callable[..., Settings]) -> Settings:
    """Settings that write format 2, with a secondary folder."""
    return make_settings(format="pages")


def _change(db: Path, row: int = 1) -> None:
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(
            "UPDATE po_lines SET quantity_received = quantity_received + 1 WHERE id = ?", (row,)
        )
        conn.commit()


def _age(folder: Path, seconds: float) -> None:
    """Date every object of the page store ``seconds`` ago."""
    then = time.time() - seconds
    for path in (folder / "pages").rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


def _needs(folder: Path, meta: BackupMetadata) -> set[str]:
    tree = read_tree(LocalStore(folder), page_index(meta))
    return {node_key(s) for s in tree.node_packs} | {pack_key(s) for s in tree.packs}


def _objects(folder: Path) -> set[str]:
    root = folder / "pages"
    return {
        p.relative_to(folder).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "key"
    }


def _three(pages: Settings, db: Path) -> list[BackupMetadata]:
    """Three backups, each changing the same row (so the middle one's new objects are its own)."""
    metas = [create_backup(pages).metadata]
    for _ in range(2):
        _change(db)
        metas.append(create_backup(pages).metadata)
    return metas


def _drop_middle(
    pages: Settings, db: Path
) -> tuple[BackupMetadata, BackupMetadata, BackupMetadata]:
    """Three backups, the middle one dropped as prune drops one (its manifests deleted), every
    object dated outside the grace period."""
    first, middle, last = _three(pages, db)
    store = BackupStore(pages)
    store.delete(middle.id)
    for folder in store.locations.values():
        _age(folder, GRACE.total_seconds() + 60)
    return [first, middle, last]


def _all_verify(pages: Settings, ids: list[str]) -> None:
    store = BackupStore(pages)
    for backup_id in ids:
        for location in store.locations:
            result = verify_copy(store, location, backup_id)
            assert result.ok, (location, backup_id, result.error)


def test_collection_frees_exactly_what_no_kept_backup_needs_and_the_dry_run_says_so(
    pages: Settings, db_path: Path
) -> None:
    first, middle, last = _three(pages, db_path)
    _age(pages.backup_dir, GRACE.total_seconds() + 60)
    assert pages.secondary_dir is not None
    _age(pages.secondary_dir, GRACE.total_seconds() + 60)
    store = BackupStore(pages)
    kept_needs = {loc: _needs(f, first) | _needs(f, last) for loc, f in store.locations.items()}
    middle_needs = _needs(pages.backup_dir, middle)
    shared = middle_needs & kept_needs["primary"]
    assert shared  # a pack the dropped backup shares with a kept one: it must stay
    expected = {loc: _objects(folder) - kept_needs[loc] for loc, folder in store.locations.items()}
    assert expected["primary"] == middle_needs - kept_needs["primary"] != set()

    dry = collect(store.locations, dry_run=True, dropped=[middle.id])
    assert all(f.exists() for f in store.locations.values())
    before = {loc: _objects(f) for loc, f in store.locations.items()}

    store.delete(middle.id)  # what prune does
    done = collect(store.locations)
    assert not done.problems
    assert {f"{loc}:{key}" for loc, keys in expected.items() for key in keys} == set(done.deleted)
    # The dry run's numbers are what the real run freed, and nothing was deleted by it.
    assert (dry.planned_objects, dry.planned_bytes) == (len(done.deleted), done.freed_bytes)
    assert done.freed_bytes > 0
    for loc, folder in store.locations.items():
        assert _objects(folder) == before[loc] - expected[loc]
        assert {k for k in shared} <= _objects(folder)
    _all_verify(pages, [first.id, last.id])
    # Nothing left to do: a second run frees nothing.
    assert collect(store.locations).deleted == ()


def test_objects_inside_the_grace_period_survive_and_just_outside_are_collected(
    pages: Settings, db_path: Path
) -> None:
    create_backup(pages)
    _age(pages.backup_dir, GRACE.total_seconds() + 60)
    # A backup in progress: its packs and node pack are written, its manifest is not yet.
    _change(db_path, row=2)
    scratch = db_path.with_name("scratch.db")
    with closing(sqlite3.connect(db_path)) as src, closing(sqlite3.connect(scratch)) as dst:
        src.backup(dst)
    store = LocalStore(pages.backup_dir)
    before = _objects(pages.backup_dir)
    write_file_pages(store, scratch)
    in_flight = _objects(pages.backup_dir) - before
    assert in_flight
    locations = {"primary": pages.backup_dir}

    _age_only(pages.backup_dir, in_flight, GRACE.total_seconds() - 60)
    kept = collect(locations)
    assert kept.deleted == () and kept.plans[0].young == len(in_flight)
    assert in_flight <= _objects(pages.backup_dir)

    _age_only(pages.backup_dir, in_flight, GRACE.total_seconds() + 60)
    gone = collect(locations)
    assert {k.partition(":")[2] for k in gone.deleted} == in_flight
    assert _objects(pages.backup_dir) == before


def _age_only(folder: Path, keys: set[str], seconds: float) -> None:
    then = time.time() - seconds
    for key in keys:
        os.utime(folder / key, (then, then))


def test_liveness_comes_from_every_manifest_not_only_the_newest(
    pages: Settings, db_path: Path
) -> None:
    first = create_backup(pages).metadata
    _change(db_path)
    middle = create_backup(pages).metadata
    _change(db_path, row=3)
    last = create_backup(pages).metadata
    _age(pages.backup_dir, GRACE.total_seconds() + 60)
    done = collect({"primary": pages.backup_dir})
    assert done.deleted == ()  # every backup is kept: nothing is garbage
    store = BackupStore(pages)
    for meta in (first, middle, last):
        assert verify_copy(store, "primary", meta.id).ok


@pytest.mark.parametrize("damage", ["manifest", "node-pack", "newer-format"])
def test_a_manifest_or_index_that_cannot_be_read_stops_all_collection_in_its_folder(
    pages: Settings, db_path: Path, damage: str
) -> None:
    first, _middle, _last = _drop_middle(pages, db_path)
    folder = pages.backup_dir
    if damage == "manifest":
        (folder / f"{first.id}.json").write_text("{not json")
    elif damage == "newer-format":
        doc = json.loads((folder / f"{first.id}.json").read_text())
        doc["format_version"] = 99
        (folder / f"{first.id}.json").write_text(json.dumps(doc))
    else:
        key = node_key(page_index(first).root_pack)
        path = folder / key
        path.write_bytes(b"x" + path.read_bytes()[1:])
    before = _objects(folder)
    done = collect({"primary": folder})
    assert done.deleted == () and done.plans[0].refused
    assert _objects(folder) == before


@pytest.mark.parametrize(
    "crash",
    [Stage.GC_PLANNED.value, f"{Stage.GC_DELETE.value}:1", f"{Stage.GC_DELETE.value}:3"],
)
def test_a_kill_at_each_collection_stage_loses_no_kept_page_and_the_next_run_finishes(
    pages: Settings, db_path: Path, tmp_path: Path, crash: str
) -> None:
    first, _middle, last = _drop_middle(pages, db_path)
    store = BackupStore(pages)
    planned = collect(store.locations, dry_run=True)
    assert planned.planned_objects >= 4  # enough to be killed between two deletes
    env = cli_env(db_path, pages.backup_dir, pages.secondary_dir, home=tmp_path)
    env["BACKUPS_FORMAT"] = "pages"
    killed = run_cli(["prune"], {**env, ENV: crash})
    assert killed.returncode == -9, (killed.stdout, killed.stderr)
    _all_verify(pages, [first.id, last.id])

    again = run_cli(["prune", "--json"], env)
    assert again.returncode == 0, again.stderr
    garbage = json.loads(again.stdout)["garbage"]
    left = planned.planned_objects - (0 if crash == Stage.GC_PLANNED.value else int(crash[-1]))
    assert garbage["freed_objects"] == left
    _all_verify(pages, [first.id, last.id])
    for location, folder in store.locations.items():
        expected = _needs(folder, first) | _needs(folder, last)
        assert _objects(folder) == expected, location


def test_prune_dry_run_shows_the_plan_in_bytes_and_deletes_nothing(
    pages: Settings, db_path: Path, tmp_path: Path
) -> None:
    _drop_middle(pages, db_path)
    store = BackupStore(pages)
    before = {loc: _objects(f) for loc, f in store.locations.items()}
    env = cli_env(db_path, pages.backup_dir, pages.secondary_dir, home=tmp_path)
    dry = run_cli(["prune", "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    plan = collect(store.locations, dry_run=True)
    line = f"would free {plan.planned_objects} object(s), {plan.planned_bytes} bytes"
    assert line in dry.stdout and plan.planned_bytes > 0
    assert {loc: _objects(f) for loc, f in store.locations.items()} == before
    real = run_cli(["prune"], env)
    assert real.returncode == 0, real.stderr
    assert f"freed {plan.planned_objects} object(s), {plan.planned_bytes} bytes" in real.stdout


def test_the_plan_is_checked_again_before_anything_is_deleted(
    pages: Settings, db_path: Path, tmp_path: Path
) -> None:
    """A backup that comes to need the garbage between the plan and the deletes keeps it:
    here the dropped backup's manifests come back while prune is stopped at its plan."""
    first, middle, last = _three(pages, db_path)
    store = BackupStore(pages)
    manifests = {
        loc: (folder / f"{middle.id}.json").read_bytes() for loc, folder in store.locations.items()
    }
    store.delete(middle.id)
    for folder in store.locations.values():
        _age(folder, GRACE.total_seconds() + 60)
    assert collect(store.locations, dry_run=True).planned_objects > 0
    env = cli_env(db_path, pages.backup_dir, pages.secondary_dir, home=tmp_path)
    proc = spawn_cli(["prune", "--json"], {**env, ENV: Stage.GC_PLANNED.value, SIGNAL_ENV: "STOP"})
    assert stopped_at(proc), "prune never reached its plan"
    for loc, folder in store.locations.items():
        (folder / f"{middle.id}.json").write_bytes(manifests[loc])
    code, out, err = resume(proc)
    assert code == 0, err
    assert json.loads(out)["garbage"]["freed_objects"] == 0
    _all_verify(pages, [first.id, middle.id, last.id])


def test_prune_by_retention_frees_what_its_dry_run_said_and_the_kept_backup_still_builds(
    make_settings: Callable[..., Settings], db_path: Path
) -> None:
    tight = make_settings(
        format="pages",
        keep_hourly=1,
        keep_daily=0,
        keep_weekly=0,
        keep_monthly=0,
        keep_yearly=0,
        keep_recent="0",
    )
    _first, _middle, last = _three(tight, db_path)
    store = BackupStore(tight)
    for folder in store.locations.values():
        _age(folder, GRACE.total_seconds() + 60)
    dry = prune(store, dry_run=True)
    assert dry.garbage is not None and len(dry.plan.delete) == 2
    real = prune(BackupStore(tight))
    assert len(real.deleted) == 2 and real.garbage is not None
    assert (len(real.garbage.deleted), real.garbage.freed_bytes) == (
        dry.garbage.planned_objects,
        dry.garbage.planned_bytes,
    )
    assert real.garbage.freed_bytes > 0
    for location, folder in store.locations.items():
        assert _objects(folder) == _needs(folder, last), location
    _all_verify(tight, [last.id])


def test_a_needed_pack_that_mostly_holds_unneeded_pages_is_reported_not_deleted(
    pages: Settings, db_path: Path
) -> None:
    first = create_backup(pages).metadata
    with closing(sqlite3.connect(db_path)) as conn:
        for table, column in _text_columns(conn):
            try:
                conn.execute(f"UPDATE {table} SET {column} = {column} || 'x'")
            except sqlite3.IntegrityError:
                continue  # a checked column (a role, a state): leave it
        conn.commit()
    second = create_backup(pages).metadata
    BackupStore(pages).delete(first.id)
    _age(pages.backup_dir, GRACE.total_seconds() + 60)
    plan = collect({"primary": pages.backup_dir}, dry_run=True).plans[0]
    old = set(read_tree(LocalStore(pages.backup_dir), page_index(first)).packs)
    still = old & set(read_tree(LocalStore(pages.backup_dir), page_index(second)).packs)
    assert still  # the first backup's pack still holds pages the second needs
    sizes = sum((pages.backup_dir / pack_key(sha)).stat().st_size for sha in still)
    assert (plan.mostly_dead, plan.mostly_dead_bytes) == (len(still), sizes)
    assert all(pack_key(sha) not in dict(plan.garbage) for sha in still)


def _text_columns(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    found = []
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        if table.startswith("sqlite_"):
            continue
        for row in conn.execute(f"PRAGMA table_info({table})"):
            if str(row[2]).upper().startswith("TEXT") and not row[5]:
                found.append((table, row[1]))
    return found


def test_a_shared_walk_reads_each_node_once_and_needs_what_every_full_walk_needs(
    tmp_path: Path,
) -> None:
    """Collection walks every kept backup with one set of nodes already walked: a backup's
    unchanged subtrees are skipped, yet the packs and pages it needs are what walking each
    index in full finds (a skipped node's pages were given by the walk that first read it)."""
    db = tmp_path / "big.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA page_size=1024")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        conn.executemany("INSERT INTO t (body) VALUES (randomblob(900))", [()] * 3000)
        conn.commit()
    (tmp_path / "folder").mkdir()
    store = LocalStore(tmp_path / "folder")
    folder_key(store, create=True)
    indexes = [write_file_pages(store, db).index]
    for row in (10, 1500, 2990):  # one page changed each time, in three different leaves
        with closing(sqlite3.connect(db)) as conn:
            conn.execute("UPDATE t SET body = randomblob(900) WHERE id = ?", (row,))
            conn.commit()
        indexes.append(write_file_pages(store, db, parent=indexes[-1]).index)
    assert indexes[0].depth >= 1  # enough pages for inner nodes to share

    full_pages: set[tuple[str, int]] = set()
    full_nodes: set[str] = set()
    for index in indexes:
        tree = read_tree(store, index)
        full_pages |= {(pack, offset) for _, pack, offset in tree.pages}
        full_nodes |= set(tree.node_packs)

    seen: set[str] = set()
    walked: list[int] = []
    shared_pages: set[tuple[str, int]] = set()
    shared_nodes: set[str] = set()
    for index in indexes:
        given: list[tuple[str, int]] = []

        def page(_hash: bytes, pack: str, offset: int, given: list = given) -> None:
            given.append((pack, offset))

        shared_nodes |= set(walk_index(store, index, page, seen=seen))
        walked.append(len(given))
        shared_pages |= set(given)
    assert shared_pages == full_pages and shared_nodes == full_nodes
    assert walked[0] == indexes[0].page_count
    # Each later backup changed one leaf (and its row count pages): its walk gives a few
    # leaves' pages, not the whole database again.
    assert all(0 < n <= 4 * 32 for n in walked[1:]), walked
    # Walked again, nothing is new.
    again: list[object] = []
    assert walk_index(store, indexes[-1], lambda *a: again.append(a), seen=seen) == []
    assert again == []

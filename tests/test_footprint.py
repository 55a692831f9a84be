"""What each backup takes on disk (tablettracker_backups/footprint.py), and what retention's
recent tier weighs with it: real format 2 backups in real folders."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.display import human_size
from tablettracker_backups.footprint import folder_bytes, measure
from tablettracker_backups.formats import page_index
from tablettracker_backups.garbage import GRACE, collect
from tablettracker_backups.health import check_health
from tablettracker_backups.layout import node_key, pack_key
from tablettracker_backups.metadata import BackupMetadata
from tablettracker_backups.pagestore import read_tree
from tablettracker_backups.retention import plan_for_backups
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import Level
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.store import BackupStore
from tests.faultkit import cli_env, run_cli
from tests.test_garbage import _age, _change

NO_SLOTS = {
    "keep_hourly": "0",
    "keep_daily": "0",
    "keep_weekly": "0",
    "keep_monthly": "0",
    "keep_yearly": "0",
}


def _pages_on_disk(folder: Path) -> int:
    """Bytes of every pack and node pack in the folder's page store, from the files."""
    pages = folder / "pages"
    return sum(p.stat().st_size for p in pages.rglob("*") if p.is_file()) - (
        (pages / "key").stat().st_size
    )


def _backups(settings: Settings, db: Path, count: int) -> list[BackupMetadata]:
    metas = [create_backup(settings).metadata]
    for row in range(1, count):
        _change(db, row)
        metas.append(create_backup(settings).metadata)
    return metas


@pytest.fixture
def pages(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def build(**overrides: object) -> Settings:
        return make_settings(format="pages", secondary_dir=None, **overrides)

    return build


def test_own_bytes_are_exactly_what_deleting_that_backup_alone_frees(
    pages: Callable[..., Settings], db_path: Path
) -> None:
    settings = pages()
    metas = _backups(settings, db_path, 4)
    found = measure(settings.backup_dir, metas)
    _age(settings.backup_dir, GRACE.total_seconds() + 60)
    for meta in metas:
        fp = found[meta.id]
        assert fp.logical == meta.raw_size and fp.added == meta.stored_size and fp.measured
        assert fp.own <= fp.stored
        plan = collect({"primary": settings.backup_dir}, dry_run=True, dropped=[meta.id])
        assert plan.planned_bytes == fp.own, meta.id
    # The incrementals hold little of their own; a whole copy is the database's pages.
    assert all(found[m.id].own < found[metas[0].id].stored / 4 for m in metas[1:])
    assert all(found[m.id].stored > found[m.id].own for m in metas)
    # The folder holds each shared object once.
    on_disk = _pages_on_disk(settings.backup_dir)
    assert folder_bytes(settings.backup_dir, metas) == on_disk


def _plan(settings: Settings) -> tuple[dict[str, tuple[str, ...]], object]:
    infos = BackupStore(settings).list()
    plan = plan_for_backups(settings, infos, now=datetime.now(timezone.utc))
    return {d.id: d.reasons for d in plan.decisions}, plan.recent


def test_the_recent_tier_weighs_the_bytes_only_each_snapshot_holds_at_its_budgets_edge(
    pages: Callable[..., Settings], db_path: Path
) -> None:
    settings = pages(keep_recent="1h", **NO_SLOTS)
    metas = _backups(settings, db_path, 5)
    found = measure(settings.backup_dir, metas)
    # The newest is kept for being the newest; the four before it cost the tier their own.
    free = metas[:-1]
    wanted = sum(found[m.id].own for m in free)
    whole = sum(found[m.id].stored for m in free)
    assert 0 < wanted < whole / 4  # dense snapshots for far less than full copies

    just_inside = pages(keep_recent="1h", recent_budget=f"{wanted}B", **NO_SLOTS)
    reasons, recent = _plan(just_inside)
    assert recent is not None and recent.wanted == wanted and not recent.thinned  # type: ignore[attr-defined]
    assert all(reasons[m.id] for m in metas)

    just_outside = pages(keep_recent="1h", recent_budget=f"{wanted - 1}B", **NO_SLOTS)
    reasons, recent = _plan(just_outside)
    assert recent is not None and recent.thinned  # type: ignore[attr-defined]
    assert not all(reasons[m.id] for m in metas)


def test_the_default_budget_is_ten_whole_copies_of_the_newest(
    pages: Callable[..., Settings], db_path: Path
) -> None:
    settings = pages(keep_recent="1h", **NO_SLOTS)
    metas = _backups(settings, db_path, 3)
    found = measure(settings.backup_dir, metas)
    _, recent = _plan(settings)
    assert recent is not None
    assert recent.budget == 10 * found[metas[-1].id].stored  # type: ignore[attr-defined]


def test_a_backup_whose_index_cannot_be_read_costs_what_it_added(
    pages: Callable[..., Settings], db_path: Path
) -> None:
    settings = pages()
    first, second = _backups(settings, db_path, 2)
    index = second.extra["pages"]
    node = settings.backup_dir / "pages" / "nodes" / index["root_pack"][:2] / index["root_pack"]
    node.write_bytes(b"not a node pack")
    found = measure(settings.backup_dir, [first, second])
    assert not found[second.id].measured
    assert found[second.id].own == second.stored_size
    assert found[first.id].measured and found[first.id].own == found[first.id].stored


def _objects(folder: Path, meta: BackupMetadata) -> set[str]:
    """Every pack and node pack the backup's index reaches."""
    tree = read_tree(LocalStore(folder), page_index(meta))
    return {node_key(s) for s in tree.node_packs} | {pack_key(s) for s in tree.packs}


def _whole_copy_bytes(folder: Path, meta: BackupMetadata) -> int:
    """Bytes of every pack and node pack the backup's index reaches, from the files."""
    return sum((folder / key).stat().st_size for key in _objects(folder, meta))


def _grow(db: Path, size: int) -> None:
    """Add ``size`` bytes of random (incompressible) data to the database."""
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, body BLOB)")
        for _ in range(size // 8192):
            conn.execute("INSERT INTO attachments (body) VALUES (randomblob(8192))")
        conn.commit()


def test_health_shows_the_real_sizes_and_sizes_the_next_backup_by_a_whole_copy(
    pages: Callable[..., Settings], db_path: Path
) -> None:
    _grow(db_path, 256 * 1024)
    settings = pages()
    metas = _backups(settings, db_path, 3)
    newest = metas[-1]
    report = check_health(settings)
    sizes = report.sizes
    whole = _whole_copy_bytes(settings.backup_dir, newest)
    assert sizes["logical"] == newest.raw_size and sizes["added"] == newest.stored_size
    assert sizes["stored"] == whole and sizes["own"] < whole / 4
    on_disk = _pages_on_disk(settings.backup_dir)
    assert report.stored_bytes == on_disk
    raw = max(newest.raw_size, db_path.stat().st_size)
    # A whole copy, not the few KiB the newest added: after a VACUUM every page is new.
    assert sizes["next_backup_needs"] == raw + int(raw * whole / newest.raw_size)
    assert sizes["next_backup_needs"] > raw + int(raw * newest.stored_size / newest.raw_size)
    shown = run_cli(["health"], cli_env(db_path, settings.backup_dir, BACKUPS_FORMAT="pages"))
    assert f"the newest added {human_size(newest.stored_size)}" in shown.stdout


@pytest.mark.parametrize("margin", [256 * 1024, -256 * 1024], ids=["room", "short"])
def test_the_disk_space_check_at_its_edge_for_an_incremental_backup(
    pages: Callable[..., Settings], full_fs: Path, db_path: Path, margin: int
) -> None:
    """A folder on a small real file system, free space just above and just below what the
    next backup needs (a whole copy of the newest: about twice what the old estimate said)."""
    _grow(db_path, 1536 * 1024)
    settings = pages(dir=full_fs / "backups", disk_warning="2kB", disk_critical="1kB")
    newest = _backups(settings, db_path, 2)[-1]
    raw = max(newest.raw_size, db_path.stat().st_size)
    needed = raw + int(raw * _whole_copy_bytes(settings.backup_dir, newest) / newest.raw_size)
    check_health(settings)  # the folder's catalog brought up to date (it takes some room)
    free = shutil.disk_usage(full_fs).free
    assert free > needed + margin, "the test's database is too large for its file system"
    filler = full_fs / "filler"
    filler.write_bytes(b"\0" * (free - (needed + margin)))
    assert abs(shutil.disk_usage(full_fs).free - (needed + margin)) < 64 * 1024
    disk = [f for f in check_health(settings).findings if f.code == "disk"]
    if margin > 0:
        assert disk == []
    else:
        assert [f.level for f in disk] == [Level.CRITICAL]
        assert "the next backup needs about" in disk[0].message


def test_metrics_show_the_real_sizes_of_format_2_backups(
    pages: Callable[..., Settings], db_path: Path
) -> None:
    """With the middle backup dropped (its objects not collected yet), the folder's bytes are
    what the kept backups need, each shared object once: the newest needs the page the middle
    one wrote, which is counted in neither's ``added``."""
    from prometheus_client.parser import text_string_to_metric_families

    from tablettracker_backups import metrics

    settings = pages()
    first, middle = _backups(settings, db_path, 2)
    _grow(db_path, 64 * 1024)  # new pages at the end: the middle one's page stays as it was
    last = create_backup(settings).metadata
    BackupStore(settings).delete(middle.id)
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics.render(settings).decode())
        for sample in family.samples
    }
    needed = _objects(settings.backup_dir, first) | _objects(settings.backup_dir, last)
    expected = sum((settings.backup_dir / key).stat().st_size for key in needed)
    assert values["tablettracker_backups_stored_bytes"] == expected
    assert expected > first.stored_size + last.stored_size
    assert values["tablettracker_backups_logical_bytes"] == last.raw_size
    assert values["tablettracker_backups_last_added_bytes"] == last.stored_size


def test_list_and_show_give_each_backups_real_sizes(
    pages: Callable[..., Settings], db_path: Path
) -> None:
    settings = pages()
    first, second = _backups(settings, db_path, 2)
    found = measure(settings.backup_dir, [first, second])
    env = cli_env(db_path, settings.backup_dir, BACKUPS_FORMAT="pages")
    rows = {r["id"]: r for r in json.loads(run_cli(["list", "--json"], env).stdout)}
    for meta in (first, second):
        assert rows[meta.id]["sizes"] == found[meta.id].to_dict()
    text = run_cli(["list"], env).stdout
    assert f"+{human_size(second.stored_size)}" in text and "SIZE: what the backup added" in text
    shown = run_cli(["show", second.id], env).stdout
    assert (
        f"{human_size(second.raw_size)} database; added {human_size(second.stored_size)} when "
        f"taken; holds {human_size(found[second.id].own)} no other backup needs; a whole copy "
        f"(shared pages included) is {human_size(found[second.id].stored)}"
    ) in shown
    document = json.loads(run_cli(["show", second.id, "--json"], env).stdout)
    assert document["sizes"] == found[second.id].to_dict()


def test_the_backup_pages_show_what_each_format_2_backup_added_and_holds(
    tmp_path: Path,
) -> None:
    from tablettracker_backups.demo import create_app
    from tests.conftest import login
    from tests.test_web import P, settings_of

    app = create_app(
        {"INSTANCE_PATH": tmp_path / "pages-app", "TESTING": True, "BACKUPS_FORMAT": "pages"}
    )
    settings = settings_of(app)
    first = create_backup(settings, trigger="test").metadata
    _change(settings.database, 1)
    second = create_backup(settings, trigger="test").metadata
    found = measure(settings.backup_dir, [first, second])
    client = app.test_client()
    login(client, "admin", app.config["DEMO_PASSWORD"])
    page = client.get(f"{P}/backups").get_data(as_text=True)
    for meta in (first, second):
        assert (
            f"+{human_size(meta.stored_size)} added · {human_size(found[meta.id].own)} its own"
        ) in page
    dashboard = client.get(f"{P}/").get_data(as_text=True)
    assert (
        f"the newest added {human_size(second.stored_size)} and holds "
        f"{human_size(found[second.id].own)} alone, of a {human_size(second.raw_size)} database"
    ) in dashboard
    assert "added to the folder" in dashboard  # the chart's series
    detail = client.get(f"{P}/backups/{second.id}").get_data(as_text=True)
    assert (
        f"{human_size(found[second.id].own)} that no other backup needs; a whole copy, pages "
        f"shared with other backups included, is {human_size(found[second.id].stored)}"
    ) in detail

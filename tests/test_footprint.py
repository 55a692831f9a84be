"""What each backup takes on disk (tablettracker_backups/footprint.py), and what retention's
recent tier weighs with it: real format 2 backups in real folders."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.footprint import folder_bytes, measure
from tablettracker_backups.garbage import GRACE, collect
from tablettracker_backups.metadata import BackupMetadata
from tablettracker_backups.retention import plan_for_backups
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore

NO_SLOTS = {
    "keep_hourly": "0",
    "keep_daily": "0",
    "keep_weekly": "0",
    "keep_monthly": "0",
    "keep_yearly": "0",
}


def _change(db: Path, row: int) -> None:
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(
            "UPDATE po_lines SET quantity_received = quantity_received + 7 WHERE id = ?", (row,)
        )
        conn.commit()


def _age(folder: Path, seconds: float) -> None:
    then = time.time() - seconds
    for path in (folder / "pages").rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


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
    on_disk = (
        sum(p.stat().st_size for p in (settings.backup_dir / "pages").rglob("*") if p.is_file())
        - (settings.backup_dir / "pages" / "key").stat().st_size
    )
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

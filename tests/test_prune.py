"""Prune on real backup folders: what a dry run reports, what a real one deletes, and the
sound backup it insists on first (a copy damaged in place must not count as good)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.prune import current_plan, newest_sound_backup, prune
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore, ListingCache
from tests.conftest import flip_byte

ONE_SLOT = {
    "keep_minutely": 0,
    "keep_hourly": 1,
    "keep_daily": 0,
    "keep_weekly": 0,
    "keep_monthly": 0,
    "keep_yearly": 0,
    "keep_recent": "0",
}


@pytest.fixture
def tight(make_settings: Callable[..., Settings]) -> Settings:
    """Keep one hourly slot and nothing else: three backups in one hour leave one."""
    return make_settings(**ONE_SLOT)


def take(settings: Settings, count: int) -> list[str]:
    """Backup ids, oldest first."""
    return [create_backup(settings).metadata.id for _ in range(count)]


def damage_every_copy(store: BackupStore, ids: list[str]) -> None:
    """One flipped byte in every copy: nothing left matches its checksum."""
    for backup_id in ids:
        for location in store.locations:
            flip_byte(store.data_path(location, backup_id, "zstd"))


def test_a_dry_run_says_what_it_would_delete_and_deletes_nothing(tight: Settings) -> None:
    first, second, newest = take(tight, 3)
    result = prune(BackupStore(tight), dry_run=True)
    assert result.to_dict() == {
        "dry_run": True,
        "deleted": [],
        "would_delete": [second, first],
        "kept": [{"id": newest, "reasons": [result.plan.reasons(newest)[0], "newest backup"]}],
        "garbage": None,  # a version 1 folder: no page store to collect
    }
    assert result.plan.reasons(newest)[0].startswith("hourly ")
    # (Ids of one second sort by their random tail: compare them as a set.)
    assert set(BackupStore(tight).ids()) == {newest, second, first}


def logged(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    """What prune logged at ``level``: the lines a scheduled task's log shows the owner."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "tablettracker_backups.prune" and r.levelno == level
    ]


def test_a_real_prune_deletes_every_copy_of_what_retention_drops(
    tight: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    first, second, newest = take(tight, 3)
    with caplog.at_level(logging.INFO, logger="tablettracker_backups.prune"):
        result = prune(BackupStore(tight))
    # The task's log names every backup it deleted.
    assert logged(caplog, logging.INFO) == [f"pruned backup {second}", f"pruned backup {first}"]
    assert result.to_dict()["deleted"] == [second, first]
    assert result.to_dict()["would_delete"] == []
    assert BackupStore(tight).ids() == [newest]
    for folder in tight.locations:
        assert sorted(p.name.split(".")[0] for p in folder.iterdir() if p.name[0] == "2") == [
            newest,
            newest,
        ]


def test_a_copy_damaged_in_place_does_not_make_a_backup_sound(
    tight: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    store = BackupStore(tight)
    older, newest = take(tight, 2)
    flip_byte(store.data_path("primary", newest, "zstd"))
    # One copy still matches: the newest is sound.
    assert newest_sound_backup(store) == newest
    flip_byte(store.data_path("secondary", newest, "zstd"))
    # No copy matches: the failure is recorded, and the older backup is the sound one.
    with caplog.at_level(logging.WARNING, logger="tablettracker_backups.prune"):
        assert newest_sound_backup(store) == older
    assert logged(caplog, logging.WARNING) == [
        f"backup {newest} looked verified but no copy matches its checksum"
    ]
    assert store.get(newest).verified is False
    assert store.get(newest).good is False


def test_with_no_sound_backup_nothing_is_deleted(
    tight: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    store = BackupStore(tight)
    ids = take(tight, 3)
    damage_every_copy(store, ids)
    with caplog.at_level(logging.INFO, logger="tablettracker_backups.prune"):
        result = prune(store)
    assert result.deleted == ()
    assert logged(caplog, logging.INFO) == []
    assert logged(caplog, logging.WARNING)[-1] == (
        "no backup has a copy matching its checksum; pruned nothing"
    )
    assert sorted(store.ids()) == sorted(ids)


def test_a_safety_snapshot_is_never_the_sound_backup(tight: Settings) -> None:
    store = BackupStore(tight)
    (regular,) = take(tight, 1)
    create_backup(tight, kind="pre-restore")
    assert store.list()[0].kind == "pre-restore"
    assert newest_sound_backup(store) == regular


def test_protected_backups_stay_and_the_sound_one_is_named(tight: Settings) -> None:
    first, second, newest = take(tight, 3)
    store = BackupStore(tight)
    dry = prune(store, dry_run=True, protect=[first])
    assert [d.id for d in dry.plan.delete] == [second]
    assert "just taken" in dry.plan.reasons(first)
    result = prune(store, protect=[first])
    assert result.deleted == (second,)
    assert result.plan.reasons(newest)[-1] == "newest backup with a good checksum"
    assert "just taken" in result.plan.reasons(first)
    assert set(store.ids()) == {first, newest}


def test_a_clock_that_went_back_pauses_prune(tight: Settings) -> None:
    ids = take(tight, 3)
    earlier = datetime.now(timezone.utc) - timedelta(hours=1)
    assert prune(BackupStore(tight), dry_run=True, now=earlier).plan.delete == []
    result = prune(BackupStore(tight), now=earlier)
    assert result.deleted == ()
    assert set(BackupStore(tight).ids()) == set(ids)
    assert all(result.plan.reasons(i)[0] == "dated in the future" for i in ids)


def test_a_prune_that_finds_nothing_sound_still_reports_its_plan(tight: Settings) -> None:
    store = BackupStore(tight)
    ids = take(tight, 2)
    damage_every_copy(store, ids)
    result = prune(store)
    assert (result.deleted, result.dry_run) == ((), False)
    assert [d.id for d in result.plan.delete] == [ids[0]]  # what it would have deleted
    assert result.to_dict()["deleted"] == []


def test_a_missing_copy_is_passed_over_for_the_next(tight: Settings) -> None:
    store = BackupStore(tight)
    _, newest = take(tight, 2)
    store.data_path("primary", newest, "zstd").unlink()
    assert newest_sound_backup(store) == newest  # its secondary copy matches


def test_the_current_plan_is_computed_once_a_minute(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(**{**ONE_SLOT, "keep_recent": "24h"})
    take(settings, 2)
    for folder in settings.locations:  # settled: a listing younger than 2 s is not cached
        os.utime(folder, (time.time() - 10, time.time() - 10))
    store = BackupStore(settings, cache=ListingCache())
    minute = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    plan = current_plan(store, now=minute + timedelta(seconds=10, microseconds=123))
    assert current_plan(store, now=minute + timedelta(seconds=50, microseconds=456)) is plan
    later = current_plan(store, now=minute + timedelta(minutes=1))
    assert later is not plan
    assert plan.recent is not None and plan.recent.total == 2  # the tier, as of that minute


def test_both_plans_of_a_prune_are_as_of_the_same_moment(
    make_settings: Callable[..., Settings],
) -> None:
    # Seen from two hours on, the last hour's snapshots are no longer "recent": the one
    # hourly slot keeps the newest, the others go. Both plans (before and after the sound
    # backup is found) must look from that moment, or the second keeps them all.
    settings = make_settings(**{**ONE_SLOT, "keep_recent": "1h"})
    first, second, newest = take(settings, 3)
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    assert prune(BackupStore(settings)).deleted == ()  # now: all three are recent
    result = prune(BackupStore(settings), now=later)
    assert result.deleted == (second, first)
    assert BackupStore(settings).ids() == [newest]

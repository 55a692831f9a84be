"""Format 2 (pages) offsite, against a real S3 server (SeaweedFS, as in test_offsite.py).

Incremental uploads (only the objects the store lacks, the manifest last, from one listing),
sealed packs with offsite encryption, recovery on a machine with nothing but the settings,
retention and collection of shared objects, two folders sharing one prefix, damage found by
the read-back, and a real SIGKILL at each upload stage.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.encryption import AGE_HEADER
from tablettracker_backups.encryption import load_identity as open_key
from tablettracker_backups.errors import AgeIdentityError, VerificationError
from tablettracker_backups.formats import page_index
from tablettracker_backups.garbage import GRACE
from tablettracker_backups.heal import heal_copies
from tablettracker_backups.layout import OWNER_KEY, PAGE_KEY_KEY, node_key, pack_key
from tablettracker_backups.metadata import BackupMetadata
from tablettracker_backups.offsite.client import OffsiteStore
from tablettracker_backups.offsite.pages import collect_remote
from tablettracker_backups.offsite.record import read_state
from tablettracker_backups.offsite.sync import sync_offsite, verify_offsite
from tablettracker_backups.pagestore import read_tree
from tablettracker_backups.restore import recover_from_offsite
from tablettracker_backups.runner import run
from tablettracker_backups.settings import Settings
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup
from tests import faultkit, test_offsite
from tests.netkit import recording_proxy
from tests.test_offsite import BUCKET, SeaweedServer, _row_counts, fresh_machine_env
from tests.test_offsite_encryption import assert_provider_sees_no_plaintext, cli_env

s3_server = test_offsite.s3_server
s3_settings = test_offsite.s3_settings
_no_ambient_aws = test_offsite._no_ambient_aws

MiB = 1024 * 1024


def stored(server: SeaweedServer, settings: Settings) -> dict[str, bytes]:
    """Every object under the prefix (without it), as the provider holds it."""
    assert settings.s3 is not None
    prefix = settings.s3.prefix
    client = server.client()
    found: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            found[item["Key"][len(prefix) :]] = body
    return found


def put_raw(server: SeaweedServer, settings: Settings, key: str, body: bytes) -> None:
    assert settings.s3 is not None
    server.client().put_object(Bucket=BUCKET, Key=settings.s3.prefix + key, Body=body)


def write_rows(db: Path, count: int, tag: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany(
            "INSERT INTO notes (body) VALUES (?)",
            [(f"{tag}-{n}-" + "x" * 200,) for n in range(count)],
        )


def pages_settings(s3_settings: Callable[..., Settings], **more: object) -> Settings:
    return s3_settings(format="pages", secondary_dir=None, **more)


# -- incremental upload ------------------------------------------------------------------------


def test_an_incremental_sends_only_new_objects_from_one_listing(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings], db_path: Path
) -> None:
    with recording_proxy(s3_server.endpoint) as proxy:
        settings = pages_settings(s3_settings, s3_endpoint_url=f"http://{proxy.base}")
        write_rows(db_path, 1, "first")
        pinned = create_backup(settings, pinned=True).metadata  # offsite retention keeps it
        first = sync_offsite(settings)
        assert first.ok and [u.id for u in first.uploaded] == [pinned.id], first
        before = stored(s3_server, settings)
        assert OWNER_KEY in before and PAGE_KEY_KEY in before
        write_rows(db_path, 20, "second")
        proxy.requests.clear()
        second = run(settings, force=True)
        assert second.offsite is not None and second.offsite.ok, second.offsite
        assert second.backup is not None
        new_id = second.backup.metadata.id
        puts = [r.path for r in proxy.requests if r.method == "PUT"]
        heads = [r.path for r in proxy.requests if r.method == "HEAD"]
    after = stored(s3_server, settings)
    added = sorted(set(after) - set(before))
    # Only what the store lacked went: one new pack, one node pack, the manifest.
    assert [k.split("/")[1] for k in added if "/" in k] == ["nodes", "packs"]
    assert f"{new_id}.json" in added and len(added) == 3
    assert all(after[k] == before[k] for k in before)  # nothing held was sent again
    assert len(puts) == 3 and puts[-1].endswith(f"{new_id}.json")  # the manifest last
    # What the store holds came from the listing: no object it held was asked about (the
    # store's own check after each put is the only HEAD).
    assert set(heads) <= set(puts)
    # Each upload reports the objects it sent.
    assert [u.parts for u in second.offsite.uploaded] == [2]
    direct = pages_settings(s3_settings)  # the same prefix, without the proxy
    offsite = OffsiteStore.from_settings(direct)
    assert {o.id for o in offsite.list()} == {pinned.id, new_id}
    assert all(o.complete for o in offsite.list())
    assert read_state(settings).copies[new_id].ok


def test_a_fresh_machine_recovers_downloading_only_the_packs_it_needs(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings], db_path: Path, tmp_path: Path
) -> None:
    settings = pages_settings(s3_settings)
    first = create_backup(settings, pinned=True)
    expected_first = _row_counts(db_path)
    write_rows(db_path, 400, "later")
    second = run(settings, force=True)
    assert second.offsite is not None and second.offsite.ok and second.backup is not None
    tree = read_tree(LocalStore(settings.backup_dir), page_index(first.metadata))
    held = [k for k in stored(s3_server, settings) if k.startswith("pages/packs/")]
    assert len(held) > len(tree.packs)

    s3 = settings.s3
    assert s3 is not None
    with recording_proxy(s3_server.endpoint) as proxy:
        fresh = dataclasses.replace(
            settings,
            backup_dir=tmp_path / "nothing-here",
            s3=dataclasses.replace(s3, endpoint_url=f"http://{proxy.base}"),
        )
        target = tmp_path / "machine" / "old.db"
        done = recover_from_offsite(fresh, first.metadata.id, to=target)
        fetched = sorted(
            r.path.split("/pages/packs/")[1].split("/")[1].split("?")[0]
            for r in proxy.requests
            if r.method == "GET" and "/pages/packs/" in r.path
        )
    assert done.id == first.metadata.id
    assert _row_counts(target) == expected_first
    assert fetched == sorted(tree.packs)
    assert not (tmp_path / "nothing-here").exists()

    # The real command on a machine with only the offsite settings (by id: both backups may
    # share one second, and "latest" goes by id).
    machine = tmp_path / "new-machine"
    (machine / "home").mkdir(parents=True)
    assert settings.s3 is not None
    latest = machine / "instance" / "tablet_counter.db"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tablettracker_backups",
            "restore",
            second.backup.metadata.id,
            "--from-offsite",
            "--to",
            str(latest),
        ],
        cwd=machine,
        env=fresh_machine_env(machine, s3_server, settings.s3.prefix),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert second.backup.metadata.id in result.stdout
    assert _row_counts(latest) == _row_counts(db_path)


# -- encryption --------------------------------------------------------------------------------


def sealed_offsite_backup(
    s3_settings: Callable[..., Settings], keys: Callable[[str], tuple[Path, str]]
) -> tuple[Settings, Path, BackupMetadata]:
    """A pinned format 2 backup synced to a prefix with encryption: the settings, the owner's
    identity file, the backup."""
    identity_file, recipient = keys("owner")
    settings = pages_settings(s3_settings, encrypt_to=recipient)
    taken = create_backup(settings, pinned=True).metadata
    assert sync_offsite(settings).ok
    return settings, identity_file, taken


def test_sealed_packs_round_trip_and_the_key_never_goes_in_the_clear(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    db_path: Path,
    tmp_path: Path,
) -> None:
    identity_file, recipient = keys("owner")
    settings = pages_settings(s3_settings, encrypt_to=recipient)
    create_backup(settings, pinned=True)  # kept offsite beside the next one
    write_rows(db_path, 30, "sealed")
    second = run(settings, force=True)
    assert second.offsite is not None and second.offsite.ok and second.backup is not None
    objects = stored(s3_server, settings)
    assert PAGE_KEY_KEY not in objects and f"{PAGE_KEY_KEY}.age" in objects
    local_key = (settings.backup_dir / PAGE_KEY_KEY).read_bytes()
    assert not [k for k, body in objects.items() if local_key in body]
    assert_provider_sees_no_plaintext({k: v for k, v in objects.items() if k != OWNER_KEY}, db_path)
    assert all(objects[k].startswith(AGE_HEADER) for k in objects if k.startswith("pages/packs/"))
    assert not [
        k for k in objects if k.startswith("pages/") and k != OWNER_KEY and not k.endswith(".age")
    ]

    fresh = dataclasses.replace(settings, backup_dir=tmp_path / "empty")
    with pytest.raises(AgeIdentityError):
        recover_from_offsite(fresh, "latest", to=tmp_path / "no.db")
    assert not (tmp_path / "no.db").exists()
    done = recover_from_offsite(
        fresh, second.backup.metadata.id, to=tmp_path / "yes.db", identity=open_key(identity_file)
    )
    assert done.id == second.backup.metadata.id
    assert _row_counts(tmp_path / "yes.db") == _row_counts(db_path)
    # Without the identity the read-back checks what it can: every object there, sealed.
    plain = verify_offsite(settings)
    assert plain and all(v.ok and v.depth == "sealed" for v in plain), plain
    full = verify_offsite(settings, identity=open_key(identity_file))
    assert all(v.ok and v.depth == "full" for v in full), full


# -- retention and collection ------------------------------------------------------------------


def safety_of_a_passing_table(settings: Settings, db_path: Path) -> BackupMetadata:
    """A safety snapshot of a table that is then dropped (and the database vacuumed): its
    pages are in a pack of its own, which no later backup needs."""
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE scratch (body TEXT)")
        conn.executemany("INSERT INTO scratch VALUES (?)", [("y" * 500,)] * 300)
    safety = create_backup(settings, kind="pre-restore", trigger="test").metadata
    with sqlite3.connect(db_path) as conn:
        conn.execute("DROP TABLE scratch")
    with sqlite3.connect(db_path) as conn:
        conn.execute("VACUUM")
    return safety


def test_prune_keeps_shared_objects_and_collects_the_rest_after_the_grace(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings], db_path: Path
) -> None:
    settings = pages_settings(s3_settings)
    old = create_backup(settings, pinned=True)
    middle = safety_of_a_passing_table(settings, db_path)
    newest = run(settings, force=True)
    assert newest.backup is not None and newest.offsite is not None and newest.offsite.ok
    local = LocalStore(settings.backup_dir)
    needed = {
        pack_key(p)
        for m in (old.metadata, newest.backup.metadata)
        for p in read_tree(local, page_index(m)).packs
    }
    only_middle = {pack_key(p) for p in read_tree(local, page_index(middle)).packs} - needed
    assert only_middle, "the middle backup has a pack of its own"

    # Offsite retention drops the safety snapshot: its manifest goes, its objects wait.
    stricter = pages_settings(s3_settings, s3_keep_pre_restore=0)
    young = run(stricter)
    assert young.offsite is not None and young.offsite.ok, young.offsite
    assert young.offsite.pruned == (middle.id,)
    assert young.offsite.collected_objects == 0
    assert only_middle <= set(stored(s3_server, settings))
    assert read_state(settings).collect_pending
    offsite = OffsiteStore.from_settings(settings)
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    done = collect_remote(offsite.objects, [settings.backup_dir], now=later)
    assert done.refused is None
    assert {k for k in done.deleted if k.startswith("pages/packs/")} == only_middle
    left = set(stored(s3_server, settings))
    assert not only_middle & left
    assert needed <= left
    checked = verify_offsite(settings)
    assert {v.id for v in checked} == {old.metadata.id, newest.backup.metadata.id}
    assert all(v.ok for v in checked), checked


def test_an_unreadable_remote_manifest_stops_collection(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings]
) -> None:
    settings = pages_settings(s3_settings)
    taken = run(settings, force=True)
    assert taken.backup is not None
    put_raw(s3_server, settings, "20990101T000000Z-abcdef.json", b"{not json")
    before = set(stored(s3_server, settings))
    done = collect_remote(
        OffsiteStore.from_settings(settings).objects,
        [settings.backup_dir],
        now=datetime.now(timezone.utc) + timedelta(days=1),
    )
    assert done.refused is not None and "20990101T000000Z-abcdef" in done.refused
    assert set(stored(s3_server, settings)) == before


# -- one prefix, one folder --------------------------------------------------------------------


def test_two_databases_or_two_sites_sharing_a_prefix_are_refused(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = pages_settings(s3_settings)
    taken = run(settings, force=True)
    assert taken.offsite is not None and taken.offsite.ok
    before = stored(s3_server, settings)

    other_db = faultkit_db(tmp_path / "other" / "inventory.db")
    other = pages_settings(s3_settings, database=other_db, dir=tmp_path / "other-backups")
    refused = run(other, force=True)
    assert refused.offsite is not None and not refused.offsite.ok
    (line,) = refused.offsite.errors
    assert "holds the backups of database" in line and "its own prefix" in line, line
    assert "\n" not in line

    site_b = pages_settings(s3_settings, dir=tmp_path / "site-b-backups")
    again = run(site_b, force=True)
    assert again.offsite is not None
    (line,) = again.offsite.errors
    assert "another backup folder" in line and "its own prefix" in line, line
    assert stored(s3_server, settings) == before  # nothing sent, nothing deleted


def faultkit_db(path: Path) -> Path:
    from tests.conftest import make_db

    path.parent.mkdir(parents=True)
    return make_db(path)


# -- damage ------------------------------------------------------------------------------------


def test_a_damaged_remote_pack_is_named_removed_and_uploaded_again(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = pages_settings(s3_settings)
    taken = run(settings, force=True)
    assert taken.backup is not None
    objects = stored(s3_server, settings)
    (pack,) = [k for k in objects if k.startswith("pages/packs/")]
    body = bytearray(objects[pack])
    body[len(body) // 2] ^= 0xFF
    put_raw(s3_server, settings, pack, bytes(body))

    (outcome,) = verify_offsite(settings)
    assert not outcome.ok and pack in (outcome.error or ""), outcome
    assert pack not in stored(s3_server, settings)
    with pytest.raises(VerificationError):
        recover_from_offsite(settings, taken.backup.metadata.id, to=tmp_path / "bad.db")
    healed = sync_offsite(settings)
    assert healed.ok, healed
    assert stored(s3_server, settings)[pack] == objects[pack]
    assert all(v.ok for v in verify_offsite(settings))


# -- kill -9 at each upload stage --------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "sealed"),
    [
        ("offsite-object:1", False),
        ("offsite-object:3", False),
        ("offsite-manifest", False),
        ("offsite-object:2", True),
    ],
)
def test_a_kill_at_each_upload_stage_lists_no_half_backup(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    stage: str,
    sealed: bool,
    tmp_path: Path,
) -> None:
    identity_file, recipient = keys("owner")
    more = {"encrypt_to": recipient} if sealed else {}
    settings = pages_settings(s3_settings, **more)
    assert settings.s3 is not None
    extra = {"BACKUPS_ENCRYPT_TO": recipient} if sealed else {}
    env = faultkit.cli_env(
        None,
        **cli_env(settings, s3_server, BACKUPS_FORMAT="pages", TTB_CRASH_AT=stage, **extra),
    )
    killed = faultkit.run_cli(["run"], env)
    assert killed.returncode == -9, killed.stderr
    offsite = OffsiteStore.from_settings(settings)
    assert offsite.list() == []
    assert not [k for k in stored(s3_server, settings) if k.endswith(".json")]
    left = [k for k in stored(s3_server, settings) if k.startswith("pages/") and k != OWNER_KEY]
    assert left and all(k.endswith(".age") == sealed for k in left)

    again = run(settings)
    assert again.offsite is not None and again.offsite.ok, again.offsite
    objects = [k for k in stored(s3_server, settings) if k.startswith("pages/") and k != OWNER_KEY]
    # The next run sends only what the killed one had not: the rest, then the manifest.
    assert [u.parts for u in again.offsite.uploaded] == [len(objects) - len(left)]
    (listed,) = offsite.list()
    identity = open_key(identity_file) if sealed else None
    done = recover_from_offsite(settings, listed.id, to=tmp_path / "after.db", identity=identity)
    assert done.id == listed.id


def _age_remote(root: Path, seconds: float) -> None:
    then = datetime.now(timezone.utc).timestamp() - seconds
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed")
@pytest.mark.parametrize("stage", ["offsite-pruned", "offsite-gc-delete:1"])
def test_a_kill_while_pruning_keeps_every_kept_backup_and_the_next_sync_finishes(
    make_settings: Callable[..., Settings], stage: str, tmp_path: Path, db_path: Path
) -> None:
    """rclone's local backend: its objects can be aged past the grace period for real."""
    root = tmp_path / "remote"
    config = tmp_path / "rclone.conf"
    config.write_text("[disk]\ntype = local\n")
    values: dict[str, object] = {
        "rclone_remote": f"disk:{root}",
        "rclone_config": str(config),
        "format": "pages",
        "secondary_dir": None,
        "disk_warning": "1MB",
        "disk_critical": "1MB",
    }
    settings = make_settings(**values)
    pinned = create_backup(settings, pinned=True).metadata
    safety = safety_of_a_passing_table(settings, db_path)
    first = run(settings, force=True)
    assert first.offsite is not None and first.offsite.ok and first.backup is not None
    local = LocalStore(settings.backup_dir)
    kept: set[str] = set()
    for meta in (pinned, first.backup.metadata):
        tree = read_tree(local, page_index(meta))
        kept |= {pack_key(p) for p in tree.packs} | {node_key(n) for n in tree.node_packs}
    mine = read_tree(local, page_index(safety))
    only_safety = (
        {pack_key(p) for p in mine.packs} | {node_key(n) for n in mine.node_packs}
    ) - kept
    assert [k for k in only_safety if k.startswith("pages/packs/")]
    _age_remote(root, GRACE.total_seconds() + 60)
    before = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    env = faultkit.cli_env(
        db_path,
        settings.backup_dir,
        BACKUPS_RCLONE_REMOTE=f"disk:{root}",
        BACKUPS_RCLONE_CONFIG=str(config),
        BACKUPS_RCLONE_KEEP_PRE_RESTORE="0",
        BACKUPS_FORMAT="pages",
        BACKUPS_DISK_WARNING="1MB",
        BACKUPS_DISK_CRITICAL="1MB",
        TTB_CRASH_AT=stage,
    )
    killed = faultkit.run_cli(["run"], env)
    assert killed.returncode == -9, killed.stderr
    offsite = OffsiteStore.from_settings(settings)
    assert {o.id for o in offsite.list()} == {first.backup.metadata.id, pinned.id}
    assert recover_from_offsite(settings, first.backup.metadata.id, to=tmp_path / "a.db")
    assert recover_from_offsite(settings, pinned.id, to=tmp_path / "b.db")

    env.pop("TTB_CRASH_AT")
    finished = faultkit.run_cli(["run"], env)
    assert finished.returncode in (0, 1), finished.stderr
    assert not read_state(settings).collect_pending
    after = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert only_safety <= before and not only_safety & after
    assert kept <= after
    assert [v.ok for v in verify_offsite(settings)] == [True, True]
    assert safety.id not in {o.id for o in offsite.list()}


def test_a_lost_local_pack_heals_from_the_sealed_offsite_copy_with_the_identity(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
) -> None:
    settings, identity_file, taken = sealed_offsite_backup(s3_settings, keys)
    tree = read_tree(LocalStore(settings.backup_dir), page_index(taken))
    lost = settings.backup_dir / pack_key(tree.packs[0])
    lost.unlink()
    store = BackupStore(settings)

    (failed,) = heal_copies(store, recheck=1)
    assert not failed.ok and failed.source == "offsite", failed
    assert "--identity FILE" in (failed.error or ""), failed
    assert not lost.exists()
    (healed,) = heal_copies(store, recheck=1, identity=open_key(identity_file))
    assert healed.ok and healed.source == "offsite", healed
    assert lost.exists()
    assert verify_backup(store, taken.id).ok


def test_a_sealed_prefix_is_collected_from_the_local_nodes_or_with_the_identity(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    db_path: Path,
) -> None:
    identity_file, recipient = keys("owner")
    settings = pages_settings(s3_settings, encrypt_to=recipient)
    old = create_backup(settings, pinned=True).metadata
    middle = safety_of_a_passing_table(settings, db_path)
    newest = run(settings, force=True)
    assert newest.offsite is not None and newest.offsite.ok and newest.backup is not None
    local = LocalStore(settings.backup_dir)
    needed = {
        pack_key(p)
        for m in (old, newest.backup.metadata)
        for p in read_tree(local, page_index(m)).packs
    }
    only_middle = {pack_key(p) for p in read_tree(local, page_index(middle)).packs} - needed
    assert only_middle
    offsite = OffsiteStore.from_settings(settings)
    offsite.delete(middle.id)
    later = datetime.now(timezone.utc) + timedelta(hours=2)

    # The local folder holds no node pack: without the identity nothing can be walked.
    hidden = settings.backup_dir.parent / "nodes-away"
    (settings.backup_dir / "pages" / "nodes").rename(hidden)
    refused = collect_remote(offsite.objects, [settings.backup_dir], now=later)
    assert refused.refused is not None and "--identity" in refused.refused
    assert refused.deleted == ()
    # The local nodes are the same objects: they walk the sealed indexes without the key.
    hidden.rename(settings.backup_dir / "pages" / "nodes")
    done = collect_remote(offsite.objects, [settings.backup_dir], now=later)
    assert done.refused is None
    assert {k for k in done.deleted if k.startswith("pages/packs/")} == {
        f"{k}.age" for k in only_middle
    }
    left = set(stored(s3_server, settings))
    assert {f"{k}.age" for k in needed} <= left
    # With the identity and no local folder at all, the same plan.
    again = collect_remote(offsite.objects, [], identity=open_key(identity_file), now=later)
    assert again.refused is None and again.deleted == ()
    checked = verify_offsite(settings, identity=open_key(identity_file))
    assert [v.ok for v in checked] == [True, True], checked


# -- rclone (WebDAV: no hash kept by the server, every put read back) -------------------------


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed")
def test_an_incremental_through_rclone_webdav_and_recovery_from_it(
    make_settings: Callable[..., Settings], db_path: Path, tmp_path: Path
) -> None:
    from tests.storage_conformance import rclone_webdav

    (tmp_path / "dav").mkdir()
    with rclone_webdav(tmp_path / "dav") as dav:
        settings = make_settings(
            rclone_remote="srv:pages",
            rclone_config=str(dav.config),
            format="pages",
            secondary_dir=None,
            disk_warning="1MB",
            disk_critical="1MB",
        )
        write_rows(db_path, 1, "first")
        pinned = create_backup(settings, pinned=True).metadata
        assert sync_offsite(settings).ok
        before = {p for p in dav.folder.rglob("*") if p.is_file()}
        write_rows(db_path, 20, "second")
        second = run(settings, force=True)
        assert second.offsite is not None and second.offsite.ok and second.backup is not None
        new = sorted(p.name for p in dav.folder.rglob("*") if p.is_file() and p not in before)
        assert len(new) == 3 and f"{second.backup.metadata.id}.json" in new, new
        for backup_id in (pinned.id, second.backup.metadata.id):
            done = recover_from_offsite(settings, backup_id, to=tmp_path / f"{backup_id}.db")
            assert done.id == backup_id
        assert _row_counts(tmp_path / f"{second.backup.metadata.id}.db") == _row_counts(db_path)


def test_a_prefix_with_format_1_backups_takes_format_2_beside_them(
    s3_settings: Callable[..., Settings], db_path: Path, tmp_path: Path
) -> None:
    files = s3_settings(secondary_dir=None)
    old = create_backup(files, pinned=True).metadata
    assert sync_offsite(files).ok
    pages = pages_settings(s3_settings)  # the same folder and prefix, now format 2
    write_rows(db_path, 10, "switched")
    new = create_backup(pages, pinned=True).metadata
    assert new.format_version == 2 and old.format_version == 1
    synced = sync_offsite(pages)
    assert synced.ok and [u.id for u in synced.uploaded] == [new.id], synced
    listed = {o.id: o for o in OffsiteStore.from_settings(pages).list()}
    assert set(listed) == {old.id, new.id}
    assert listed[old.id].data_key is not None and listed[new.id].paged
    for meta in (old, new):
        assert recover_from_offsite(pages, meta.id, to=tmp_path / f"{meta.id}.db").id == meta.id
    assert all(v.ok for v in verify_offsite(pages))


def test_a_sealed_object_that_is_no_age_file_fails_the_check_without_the_identity(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
) -> None:
    settings, identity_file, taken = sealed_offsite_backup(s3_settings, keys)
    (pack,) = [k for k in stored(s3_server, settings) if k.startswith("pages/packs/")]
    put_raw(s3_server, settings, pack, b"plain bytes where an age file belongs")

    (outcome,) = verify_offsite(settings)
    assert not outcome.ok and outcome.depth == "sealed", outcome
    assert pack in (outcome.error or "") and "not an age file" in (outcome.error or "")
    assert pack not in stored(s3_server, settings)  # dropped: the next sync sends it again
    assert sync_offsite(settings).ok
    (again,) = verify_offsite(settings, identity=open_key(identity_file))
    assert again.ok and again.id == taken.id, again


def test_export_of_a_sealed_backup_kept_only_offsite(
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    db_path: Path,
    tmp_path: Path,
) -> None:
    from tablettracker_backups.export import export_backup

    settings, identity_file, taken = sealed_offsite_backup(s3_settings, keys)
    # A new machine with the same settings and an empty backup folder.
    fresh = dataclasses.replace(settings, backup_dir=tmp_path / "new-folder")
    done = export_backup(
        BackupStore(fresh), taken.id, tmp_path / "out.db", identity=open_key(identity_file)
    )
    assert done.id == taken.id and done.location == "offsite"
    assert _row_counts(tmp_path / "out.db") == _row_counts(db_path)

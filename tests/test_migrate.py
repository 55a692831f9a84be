"""``migrate``: version 1 backups turned into version 2 in real folders (primary and secondary),
through the real CLI; kills are real SIGKILLs at each named crash point."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.crashpoints import ENV, SIGNAL_ENV, Stage
from tablettracker_backups.errors import ConfigError
from tablettracker_backups.export import export_backup
from tablettracker_backups.layout import DATA_SUFFIXES
from tablettracker_backups.migrate import MIGRATED_KEY, Outcome, migrate
from tablettracker_backups.settings import Settings, settings_from_mapping
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup, verify_copy
from tests.conftest import flip_byte, rewrite_metadata
from tests.corpus import CORPUS
from tests.faultkit import cli_env, resume, run_cli, spawn_cli, stopped_at
from tests.test_garbage import _change


def _v1_backups(settings: Settings, db: Path, count: int = 3) -> list[str]:
    """``count`` version 1 backups, the database changed between them."""
    ids = []
    for number in range(count):
        if number:
            _change(db, number)
        ids.append(create_backup(settings).metadata.id)
    return ids


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of a folder (the catalog and the lock aside), by its path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and ".catalog" not in p.parts
        and p.name not in (".lock", "audit.jsonl", "status.json")
    }


def _v1_files(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(DATA_SUFFIXES))


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return cli_env(settings.database, settings.backup_dir, settings.secondary_dir, **extra)


def _built_sha(settings: Settings, backup_id: str, dest: Path) -> str:
    export_backup(BackupStore(settings), backup_id, dest)
    return hashlib.sha256(dest.read_bytes()).hexdigest()


def test_migrate_keeps_every_backup_as_it_was_and_deletes_the_version_1_files(
    settings: Settings, db_path: Path, tmp_path: Path
) -> None:
    assert settings.secondary_dir is not None
    first = create_backup(settings, label="before the stock count").metadata
    _change(db_path)
    second = create_backup(settings, pinned=True).metadata
    _change(db_path, 2)
    safety = create_backup(settings, kind="pre-restore", trigger="restore").metadata
    # A coordinated snapshot's group rides in the manifest's extra; a verification result in
    # the state document.
    group = {"id": "20261208T000000Z-aaaaaa", "members": {"main": first.id}}
    rewrite_metadata(settings, first.id, extra={GROUP: group})
    assert verify_backup(BackupStore(settings), second.id).ok
    before = {i.id: i for i in BackupStore(settings).list()}
    states = {
        (f, i): (f / f"{i}.state.json").read_bytes()
        for f in settings.locations
        for i in before
        if (f / f"{i}.state.json").exists()
    }
    assert states  # the verification above wrote one per copy

    done = run_cli(["migrate", "--json"], _env(settings))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["migrated"] == 6 and report["left"] == 0
    assert {(s["location"], s["id"]) for s in report["steps"]} == {
        (loc, i) for loc in ("primary", "secondary") for i in before
    }

    for (folder, backup_id), text in states.items():
        assert (folder / f"{backup_id}.state.json").read_bytes() == text
    after = {i.id: i for i in BackupStore(settings).list()}
    assert set(after) == set(before)
    for backup_id, info in after.items():
        old = before[backup_id]
        assert info.metadata is not None and old.metadata is not None
        meta, was = info.metadata, old.metadata
        assert meta.format_version == 2
        assert (meta.created_at, meta.kind, meta.label, meta.pinned) == (
            was.created_at,
            was.kind,
            was.label,
            was.pinned,
        )
        assert meta.verification == was.verification
        assert meta.raw_sha256 == was.raw_sha256 and meta.row_counts == was.row_counts
        assert meta.extra[MIGRATED_KEY]["sha256"] == was.sha256
        assert info.verified and all(c.state == "ok" for c in info.copies)
        for location in ("primary", "secondary"):
            assert verify_copy(BackupStore(settings), location, backup_id).ok
        assert _built_sha(settings, backup_id, tmp_path / f"{backup_id}.db") == was.raw_sha256
    assert after[first.id].metadata.extra[GROUP] == group  # type: ignore[union-attr]
    assert after[safety.id].kind == "pre-restore"
    for folder in settings.locations:
        assert _v1_files(folder) == []
        assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]
    # Audited; the next run has nothing left to do.
    audit = (settings.state_dir / "audit.jsonl").read_text().splitlines()
    entry = json.loads(audit[-1])
    assert entry["action"] == "migrate" and entry["ok"] and len(entry["details"]["migrated"]) == 6
    again = run_cli(["migrate"], _env(settings))
    assert again.returncode == 0 and "6 already version 2" in again.stdout


GROUP = "group"


def test_each_backup_stores_only_the_pages_the_one_before_it_did_not(
    make_settings: Callable[..., Settings], db_path: Path
) -> None:
    settings = make_settings(secondary_dir=None)
    ids = _v1_backups(settings, db_path, 3)
    result = migrate(settings)
    added = {s.id: s.added for s in result.done}
    # One changed row: the later backups add a pack of a page or two and their nodes.
    assert added[ids[1]] < added[ids[0]] / 2 and added[ids[2]] < added[ids[0]] / 2


def test_dry_run_changes_nothing_and_lists_every_copy(settings: Settings, db_path: Path) -> None:
    ids = _v1_backups(settings, db_path, 2)
    files = {f: _files(f) for f in settings.locations}
    done = run_cli(["migrate", "--dry-run", "--json"], _env(settings))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dry_run"] and report["migrated"] == 4
    assert {s["outcome"] for s in report["steps"]} == {"would-migrate"}
    assert report["freed"] == sum(
        (f / n).stat().st_size for f in settings.locations for n in _v1_files(f)
    )
    assert {f: _files(f) for f in settings.locations} == files
    assert all(BackupStore(settings).get(i).metadata.format_version == 1 for i in ids)  # type: ignore[union-attr]
    text = run_cli(["migrate", "--dry-run"], _env(settings))
    assert "Would migrate 4 copy(ies)" in text.stdout and "Would delete" in text.stdout


def test_damaged_and_encrypted_backups_are_left_as_they_are_and_reported(
    make_settings: Callable[..., Settings], db_path: Path, keys: Callable[[str], tuple[Path, str]]
) -> None:
    _, public = keys("owner")
    sealed = make_settings(encrypt="all", encrypt_to=public)
    encrypted = create_backup(sealed).metadata.id
    settings = make_settings()
    _change(db_path)
    damaged, sound = _v1_backups(settings, db_path, 2)
    assert settings.secondary_dir is not None
    flip_byte(settings.backup_dir / f"{damaged}.db.zst")
    secondary_damaged = create_backup(settings).metadata.id
    flip_byte(settings.secondary_dir / f"{secondary_damaged}.db.zst")
    kept = {
        f / n: (f / n).read_bytes()
        for f in settings.locations
        for n in _v1_files(f)
        if n.startswith((encrypted, damaged))
    }

    done = run_cli(["migrate", "--json"], _env(settings))
    assert done.returncode == 1, done.stderr  # a warning: some stay version 1
    steps = {(s["location"], s["id"]): s for s in json.loads(done.stdout)["steps"]}
    assert steps[("primary", encrypted)]["outcome"] == "encrypted"
    assert steps[("secondary", encrypted)]["outcome"] == "encrypted"
    assert steps[("primary", damaged)]["outcome"] == "damaged"
    assert "SHA-256 does not match its metadata" in steps[("primary", damaged)]["detail"]
    # Its secondary copy is sound but waits for the primary (a copy is never ahead of it).
    assert steps[("secondary", damaged)]["outcome"] == "waiting"
    assert steps[("primary", sound)]["outcome"] == "migrated"
    assert steps[("primary", secondary_damaged)]["outcome"] == "migrated"
    assert steps[("secondary", secondary_damaged)]["outcome"] == "damaged"
    for path, data in kept.items():
        assert path.read_bytes() == data  # left exactly as they were
    store = BackupStore(settings)
    assert store.get(sound).metadata.format_version == 2  # type: ignore[union-attr]
    assert store.get(damaged).metadata.format_version == 1  # type: ignore[union-attr]
    assert (settings.secondary_dir / f"{secondary_damaged}.db.zst").exists()
    text = run_cli(["migrate"], _env(settings))
    assert text.returncode == 1
    assert f"encrypted      primary   {encrypted}" in text.stdout


@pytest.mark.parametrize(
    ("setting", "value", "needle"),
    [
        ("BACKUPS_FORMAT", "files", "BACKUPS_FORMAT=files keeps this folder on version 1"),
        ("BACKUPS_COMPRESSION", "gzip", "BACKUPS_COMPRESSION=gzip"),
    ],
)
def test_settings_that_keep_version_1_refuse_and_change_nothing(
    settings: Settings, db_path: Path, setting: str, value: str, needle: str
) -> None:
    _v1_backups(settings, db_path, 1)
    files = {f: _files(f) for f in settings.locations}
    done = run_cli(["migrate"], _env(settings, **{setting: value}))
    assert done.returncode == 2
    assert needle in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert {f: _files(f) for f in settings.locations} == files


def test_refusal_for_offsite_and_local_encryption(
    make_settings: Callable[..., Settings], keys: Callable[[str], tuple[Path, str]]
) -> None:
    _, public = keys("owner")
    with pytest.raises(ConfigError, match="BACKUPS_ENCRYPT=all"):
        migrate(make_settings(encrypt="all", encrypt_to=public))
    with pytest.raises(ConfigError, match="offsite place"):
        migrate(make_settings(s3_bucket="backups", s3_endpoint_url="http://127.0.0.1:1"))


#: Each stage once in the primary (count 1) and once in the secondary (count 2: the first
#: backup's secondary copy reaches each stage right after its primary copy).
KILLS = [
    (stage, hit)
    for stage in (
        Stage.MIGRATE_PAGES,
        Stage.MIGRATE_VERIFIED,
        Stage.MIGRATE_MANIFEST,
        Stage.MIGRATE_DELETED,
    )
    for hit in (1, 2)
] + [(Stage.MIGRATE_MANIFEST, 3), (Stage.PACK_WRITE, 1)]


@pytest.mark.parametrize(("stage", "hit"), KILLS, ids=lambda v: str(getattr(v, "value", v)))
def test_a_kill_at_any_stage_loses_nothing_lists_nothing_twice_and_the_next_run_finishes(
    settings: Settings, db_path: Path, tmp_path: Path, stage: Stage, hit: int
) -> None:
    ids = _v1_backups(settings, db_path, 2)
    before = {i.id: i.metadata for i in BackupStore(settings).list()}
    killed = run_cli(["migrate"], _env(settings, **{ENV: f"{stage.value}:{hit}"}))
    assert killed.returncode == -9, killed.stderr

    store = BackupStore(settings)
    listed = [i.id for i in store.list()]
    assert sorted(listed) == sorted(ids)  # every backup, each once
    for backup_id in ids:
        for location in store.locations:
            # Each copy is whole: the version 1 one or its verified version 2 twin.
            result = verify_copy(store, location, backup_id)
            assert result.ok, (location, backup_id, result.error)

    done = run_cli(["migrate", "--json"], _env(settings))
    assert done.returncode == 0, done.stderr
    outcomes = {(s["location"], s["id"]): s["outcome"] for s in json.loads(done.stdout)["steps"]}
    if stage is Stage.MIGRATE_MANIFEST:
        # The copy whose manifest was replaced has its version 1 file deleted now.
        assert "finished" in outcomes.values()
    for info in BackupStore(settings).list():
        assert info.metadata is not None and info.metadata.format_version == 2
        assert info.verified and all(c.state == "ok" for c in info.copies), info.copies
        was = before[info.id]
        assert was is not None and info.metadata.raw_sha256 == was.raw_sha256
        built = _built_sha(settings, info.id, tmp_path / f"{info.id}.db")
        assert built == was.raw_sha256
    for folder in settings.locations:
        assert _v1_files(folder) == []
        assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]


def test_a_copy_whose_twin_does_not_verify_keeps_its_version_1_file(
    settings: Settings, db_path: Path
) -> None:
    """Killed after the manifest was replaced, then a pack damaged: the next run must not
    delete the version 1 file of a copy whose twin does not verify."""
    (backup_id,) = _v1_backups(settings, db_path, 1)
    killed = run_cli(["migrate"], _env(settings, **{ENV: f"{Stage.MIGRATE_MANIFEST.value}:1"}))
    assert killed.returncode == -9
    packs = sorted((settings.backup_dir / "pages" / "packs").rglob("*"))
    flip_byte(next(p for p in packs if p.is_file()))
    done = run_cli(["migrate", "--json"], _env(settings))
    assert done.returncode == 2
    steps = {(s["location"], s["id"]): s for s in json.loads(done.stdout)["steps"]}
    assert steps[("primary", backup_id)]["outcome"] == "failed"
    assert (settings.backup_dir / f"{backup_id}.db.zst").exists()


def test_every_database_of_a_site_or_the_one_named(tmp_path: Path) -> None:
    from tests.conftest import make_db

    (tmp_path / "app").mkdir()
    dbs = {name: make_db(tmp_path / "app" / f"{name}.db") for name in ("shop", "stock")}
    folders = {name: tmp_path / f"backups-{name}" for name in dbs}
    for name, db in dbs.items():
        create_backup(settings_from_mapping({"database": db, "dir": folders[name]}))
    config = tmp_path / "site.toml"
    config.write_text(
        "".join(
            f'[databases.{name}]\ndatabase = "{db}"\ndir = "{folders[name]}"\n\n'
            for name, db in dbs.items()
        )
    )
    env = cli_env(None, home=tmp_path / "home")
    one = run_cli(["migrate", "--config", str(config), "--database", "shop", "--json"], env)
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["migrated"] == 1
    assert _v1_files(folders["shop"]) == [] and len(_v1_files(folders["stock"])) == 1
    every = run_cli(["migrate", "--config", str(config)], env)
    assert every.returncode == 0, every.stderr
    assert "== shop" in every.stdout and "== stock" in every.stdout
    assert _v1_files(folders["stock"]) == []


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_corpus_round_trips_through_migrate(name: str, tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    db = tmp_path / "app" / f"{name}.db"
    CORPUS[name](db)
    settings = settings_from_mapping(
        {"database": db, "dir": tmp_path / "backups", "secondary_dir": tmp_path / "mirror"}
    )
    was = create_backup(settings).metadata
    result = migrate(settings)
    assert [s.outcome for s in result.steps] == [Outcome.MIGRATED, Outcome.MIGRATED]
    store = BackupStore(settings)
    info = store.get(was.id)
    assert info.metadata is not None and info.metadata.format_version == 2
    assert info.metadata.findings == was.findings and info.verified
    assert info.good is not was.source_damaged
    for location in store.locations:
        assert verify_copy(store, location, was.id).ok
    assert _built_sha(settings, was.id, tmp_path / "built.db") == was.raw_sha256


@pytest.mark.parametrize(("location", "hit"), [("primary", 1), ("secondary", 2)])
def test_a_twin_damaged_after_its_pages_were_written_is_never_trusted(
    settings: Settings, db_path: Path, location: str, hit: int
) -> None:
    """The process stops itself just after a copy's pages are stored (their hashes checked
    as they were written); a pack is damaged there; the twin built from them must not
    verify: in the primary the copy's version 1 manifest and file stay exactly as they were;
    in the secondary the damaged pack is replaced from the primary and checked again."""
    (backup_id,) = _v1_backups(settings, db_path, 1)
    folder = settings.locations[0 if location == "primary" else 1]
    manifest = (folder / f"{backup_id}.json").read_bytes()
    data = (folder / f"{backup_id}.db.zst").read_bytes()
    env = _env(settings, **{ENV: f"{Stage.MIGRATE_PAGES.value}:{hit}", SIGNAL_ENV: "STOP"})
    proc = spawn_cli(["migrate", "--json"], env)
    assert stopped_at(proc)
    packs = sorted(p for p in (folder / "pages" / "packs").rglob("*") if p.is_file())
    flip_byte(packs[0])
    code, out, err = resume(proc)
    steps = {(s["location"], s["id"]): s for s in json.loads(out)["steps"]}
    step = steps[(location, backup_id)]
    if location == "secondary":
        # The primary's twin verified: its sound object replaces the damaged one, once.
        assert code == 0, err
        assert step["outcome"] == "migrated"
        assert step["detail"] == "replaced 1 damaged object(s) from the primary folder"
        assert not (folder / f"{backup_id}.db.zst").exists()
    else:
        assert code == 2, err
        assert step["outcome"] == "failed" and "damaged" in step["detail"]
        assert (folder / f"{backup_id}.json").read_bytes() == manifest
        assert (folder / f"{backup_id}.db.zst").read_bytes() == data
    assert verify_copy(BackupStore(settings), location, backup_id).ok


def test_flask_backups_migrate_works_over_the_apps_databases(tmp_path: Path) -> None:
    """``flask backups migrate``: the host app's config, every database of its site."""
    from tablettracker_backups.demo import create_app
    from tablettracker_backups.web.state import get_state

    app = create_app({"INSTANCE_PATH": tmp_path / "instance", "TESTING": True})
    with app.app_context():
        members = [m.settings for m in get_state().members.values()] or [get_state().settings]
    for settings in members:
        create_backup(settings)
    runner = app.test_cli_runner()
    dry = runner.invoke(args=["backups", "migrate", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert all(_v1_files(s.backup_dir) for s in members)
    done = runner.invoke(args=["backups", "migrate"])
    assert done.exit_code == 0, done.output
    for settings in members:
        assert _v1_files(settings.backup_dir) == []
        (info,) = BackupStore(settings).list()
        assert info.metadata is not None and info.metadata.format_version == 2 and info.verified


def test_gzip_and_wal_backups_migrate_and_a_snapshot_that_is_not_sqlite_stays(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from tablettracker_backups.snapshot import UNREADABLE_SCHEMA
    from tests.conftest import make_db

    (tmp_path / "wal").mkdir()
    db = make_db(tmp_path / "wal" / "tablet_counter.db", wal=True)
    gzip = make_settings(database=db, compression="gzip")
    first, kept = (create_backup(gzip).metadata.id for _ in range(2))
    # What a killed restore files when the target never opened as SQLite (kept whatever it
    # held): its manifest's schema says so.
    rewrite_metadata(gzip, kept, schema_fingerprint=UNREADABLE_SCHEMA)
    settings = make_settings(database=db)
    result = migrate(settings)
    outcomes = {(s.location, s.id): s.outcome for s in result.steps}
    assert outcomes[("primary", first)] is outcomes[("secondary", first)] is Outcome.MIGRATED
    assert outcomes[("primary", kept)] is outcomes[("secondary", kept)] is Outcome.NOT_SQLITE
    assert result.exit_code == 1
    for folder in settings.locations:
        assert _v1_files(folder) == [f"{kept}.db.gz"]
    assert verify_backup(BackupStore(settings), first).ok
    assert _built_sha(settings, first, tmp_path / "built.db") == (
        BackupStore(settings).get(first).metadata.raw_sha256  # type: ignore[union-attr]
    )

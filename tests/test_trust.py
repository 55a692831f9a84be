"""Restoring the right thing, one folder per database, pinned backups, copies that heal, and
health that shows every failed backup. Real files, real folders, the real CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tablettracker_backups.backup import create_backup
from tablettracker_backups.cli import cli
from tablettracker_backups.errors import IdentityError
from tablettracker_backups.health import check_health
from tablettracker_backups.identity import IDENTITY_FILE, read_identity
from tablettracker_backups.prune import prune
from tablettracker_backups.restore import restore_backup
from tablettracker_backups.runner import run
from tablettracker_backups.settings import Settings, settings_from_mapping
from tablettracker_backups.states import CopyStatus
from tablettracker_backups.store import BackupStore
from tests import faultkit
from tests.conftest import backdate, flip_byte, make_db

ROOT = Path(__file__).resolve().parent.parent
ROOMY = {"disk_warning": "1MB", "disk_critical": "1MB"}


@pytest.fixture
def roomy(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**ROOMY)


def where(settings: Settings) -> list[str]:
    options = ["--database", str(settings.database), "--backup-dir", str(settings.backup_dir)]
    if settings.secondary_dir is not None:
        options += ["--secondary-dir", str(settings.secondary_dir)]
    return options


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    roomy = {"BACKUPS_DISK_WARNING": "1MB", "BACKUPS_DISK_CRITICAL": "1MB"}
    return CliRunner().invoke(cli, list(args), env={**roomy, **(env or {})})


def rows(path: Path, table: str = "employees") -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def add_employee(path: Path, name: str) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "INSERT INTO employees (username, full_name, password_hash) VALUES (?, ?, '')",
            (name, name),
        )
        conn.commit()


# -- latest, --undo, previews --------------------------------------------------------------------


def test_latest_is_never_the_safety_snapshot_and_undo_restores_it(roomy: Settings) -> None:
    """The issue's case: after a restore, `restore latest` picked the pre-restore snapshot,
    which holds the bad data the owner had just restored away from."""
    good = create_backup(roomy).metadata.id
    before = rows(roomy.database)
    add_employee(roomy.database, "mistake")  # the bad data
    restored = restore_backup(roomy, "latest")
    assert restored.backup_id == good and rows(roomy.database) == before
    safety = restored.safety_snapshot_id
    assert safety is not None

    # status, list, show latest and restore latest agree: the good backup, not the snapshot.
    status = json.loads(invoke("status", "--json", *where(roomy)).stdout)
    assert status["newest_good_backup"]["id"] == good
    listed = json.loads(invoke("list", "--json", *where(roomy)).stdout)
    assert [e["id"] for e in listed if e["latest"]] == [good]
    assert listed[0]["id"] == safety and listed[0]["kind"] == "pre-restore"
    text = invoke("list", *where(roomy)).stdout
    assert f"* {good}" in text and f"* latest: {good}" in text
    assert json.loads(invoke("show", "latest", "--json", *where(roomy)).stdout)["id"] == good
    preview = json.loads(invoke("restore", "latest", "--preview", "--json", *where(roomy)).stdout)
    assert preview["backup_id"] == good and preview["kind"] == "manual"

    # --undo restores the newest safety snapshot, and its preview says what it is.
    undo = invoke("restore", "--undo", "--preview", *where(roomy))
    assert undo.exit_code == 0, undo.output
    assert undo.stdout.startswith(
        f"Safety snapshot (the data as it was just before an earlier restore) {safety}"
    )
    done = invoke("restore", "--undo", "--yes", "--json", *where(roomy))
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["backup_id"] == safety
    assert rows(roomy.database) == before + 1  # the mistake is back, as asked
    both = invoke("restore", good, "--undo", *where(roomy))
    assert both.exit_code == 2 and "give an ID or --undo, not both" in both.stderr


def test_undo_without_any_restore_is_one_line(roomy: Settings) -> None:
    create_backup(roomy)
    result = invoke("restore", "--undo", "--yes", *where(roomy))
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: there is no verified safety snapshot: no restore has been made"
    )


def test_fresh_machine_runbook_restores_the_good_backup(roomy: Settings, tmp_path: Path) -> None:
    """The README's runbook after a restore happened: `restore latest --to` must not take the
    safety snapshot (newer, holding the replaced data) but the newest good backup."""
    good = create_backup(roomy).metadata.id
    add_employee(roomy.database, "bad")
    restore_backup(roomy, good)
    copied = tmp_path / "usb" / "backups"
    shutil.copytree(roomy.backup_dir, copied)
    target = tmp_path / "new-machine" / "tablet_counter.db"
    result = invoke("restore", "latest", "--backup-dir", str(copied), "--to", str(target))
    assert result.exit_code == 0, result.output
    assert f"Restored {good}" in result.stdout
    assert rows(target) == rows(roomy.database)


# -- one folder per database ---------------------------------------------------------------------


def test_a_folder_belongs_to_one_database(roomy: Settings, tmp_path: Path) -> None:
    create_backup(roomy)
    for folder in roomy.locations:
        recorded = read_identity(folder)
        assert recorded is not None and recorded.name == "tablet_counter"
        assert recorded.path == str(roomy.database)

    (tmp_path / "shop").mkdir()
    other_db = make_db(tmp_path / "shop" / "shop.db")
    # The case: a copied config (same folders) pointed at another database.
    other = settings_from_mapping(
        {
            "database": other_db,
            "dir": roomy.backup_dir,
            "secondary_dir": roomy.secondary_dir,
            **ROOMY,
        }
    )
    ids_before = BackupStore(roomy).ids()
    with pytest.raises(IdentityError) as refused:
        create_backup(other)
    message = str(refused.value)
    assert "'tablet_counter'" in message and "'shop'" in message
    assert str(roomy.database) in message and str(other_db) in message
    assert "tablettracker-backups adopt --database" in message
    with pytest.raises(IdentityError):
        prune(BackupStore(other))
    result = run(other)
    assert result.error is not None and "belongs to database 'tablet_counter'" in result.error
    assert result.exit_code == 2
    assert BackupStore(roomy).ids() == ids_before  # nothing written, nothing pruned
    cli_result = invoke("backup", *where(other))
    assert cli_result.exit_code == 2 and len(cli_result.stderr.strip().splitlines()) == 1
    # health of the other database says why its backups stop
    assert "folder-identity" in {f.code for f in check_health(other).findings}


def test_same_name_at_another_path_needs_adopt(roomy: Settings, tmp_path: Path) -> None:
    create_backup(roomy)
    moved = tmp_path / "moved" / "tablet_counter.db"
    moved.parent.mkdir()
    shutil.copy(roomy.database, moved)
    settings = settings_from_mapping(
        {"database": moved, "dir": roomy.backup_dir, "secondary_dir": roomy.secondary_dir, **ROOMY}
    )
    with pytest.raises(IdentityError):
        create_backup(settings)
    adopted = invoke("adopt", *where(settings))
    assert adopted.exit_code == 0, adopted.output
    assert f"now belongs to 'tablet_counter' ({moved})" in adopted.stdout
    assert create_backup(settings).metadata.source.path == str(moved)
    assert len(BackupStore(settings).ids()) == 2  # the old backups stayed


def test_database_name_option_and_environment(roomy: Settings) -> None:
    made = invoke("backup", "--json", *where(roomy), env={"BACKUPS_DATABASE_NAME": "tt-prod"})
    # The folder was never used: it is claimed for the name given.
    assert made.exit_code == 0, made.output
    recorded = read_identity(roomy.backup_dir)
    assert recorded is not None and recorded.name == "tt-prod"
    plain = invoke("backup", *where(roomy))  # default name (the stem) is another database
    assert plain.exit_code == 2 and "'tt-prod'" in plain.stderr
    named = invoke("backup", "--database-name", "tt-prod", *where(roomy))
    assert named.exit_code == 0, named.output
    bad = invoke("backup", "--database-name", "a/b", *where(roomy))
    assert bad.exit_code == 2 and "BACKUPS_DATABASE_NAME" in bad.stderr


def test_a_folder_from_an_older_version_is_adopted_without_moving_anything(
    roomy: Settings, tmp_path: Path
) -> None:
    first = create_backup(roomy).metadata.id
    for folder in roomy.locations:
        (folder / IDENTITY_FILE).unlink()  # as an older version left it
    before = sorted(p.name for p in roomy.backup_dir.iterdir())
    second = create_backup(roomy).metadata.id
    after = sorted(p.name for p in roomy.backup_dir.iterdir())
    assert sorted(set(after) - set(before)) == sorted(
        [IDENTITY_FILE, f"{second}.db.zst", f"{second}.json"]
    )
    assert BackupStore(roomy).get(first).verified
    # ...but an old folder whose backups came from another database is refused.
    for folder in roomy.locations:
        (folder / IDENTITY_FILE).unlink()
    other_db = make_db(tmp_path / "other.db")
    other = settings_from_mapping({"database": other_db, "dir": roomy.backup_dir, **ROOMY})
    with pytest.raises(IdentityError, match="'tablet_counter'"):
        create_backup(other)


# -- pinned backups ------------------------------------------------------------------------------


def test_pinned_backup_is_never_pruned(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        keep_minutely=0,
        keep_hourly=1,
        keep_daily=1,
        keep_weekly=0,
        keep_monthly=0,
        keep_yearly=0,
        **ROOMY,
    )
    made = invoke("backup", "--label", "before the migration", "--keep", "--json", *where(settings))
    assert made.exit_code == 0, made.output
    pinned = json.loads(made.stdout)
    assert pinned["pinned"] is True and pinned["label"] == "before the migration"
    backdate(settings, pinned["id"], timedelta(days=400))
    plain = create_backup(settings).metadata.id
    backdate(settings, plain, timedelta(days=300))
    create_backup(settings)
    result = prune(BackupStore(settings))
    assert result.deleted == (plain,)
    assert result.plan.reasons(pinned["id"]) == ("pinned",)
    listed = json.loads(invoke("list", "--json", *where(settings)).stdout)
    entry = next(e for e in listed if e["id"] == pinned["id"])
    assert entry["label"] == "before the migration" and "pinned" in entry["kept_because"]
    assert "label: before the migration (pinned)" in invoke("list", *where(settings)).stdout

    # unpin: retention decides again (and deletes it); the label stays until then.
    unpinned = invoke("unpin", pinned["id"], "--json", *where(settings))
    assert json.loads(unpinned.stdout) == {
        "id": pinned["id"],
        "pinned": False,
        "label": "before the migration",
    }
    assert prune(BackupStore(settings)).deleted == (pinned["id"],)


def test_pin_an_existing_backup_with_a_label(roomy: Settings) -> None:
    backup_id = create_backup(roomy).metadata.id
    result = invoke("pin", "latest", "--label", "year end", *where(roomy))
    assert result.exit_code == 0, result.output
    for location in BackupStore(roomy).locations:
        meta = BackupStore(roomy).read_metadata(location, backup_id)
        assert meta.pinned and meta.label == "year end"
    shown = invoke("show", backup_id, *where(roomy)).stdout
    assert "label:       year end" in shown and "pinned" in shown
    bad = invoke("pin", backup_id, "--label", "two\nlines", *where(roomy))
    assert bad.exit_code == 2 and "control characters" in bad.stderr


# -- copies heal ---------------------------------------------------------------------------------


def test_run_rebuilds_a_missing_secondary_copy(roomy: Settings) -> None:
    """The issue's case: a backup killed between its copies lists as verified, and verify
    reports the missing copy on every run until it ages out. Now the next run rebuilds it."""
    backup_id = create_backup(roomy).metadata.id
    assert roomy.secondary_dir is not None
    for name in (f"{backup_id}.db.zst", f"{backup_id}.json"):
        (roomy.secondary_dir / name).unlink()
    result = run(roomy)
    repaired = [r for r in result.repaired if r.id == backup_id]
    assert [(r.location, r.source, r.ok) for r in repaired] == [("secondary", "primary", True)]
    assert result.to_dict()["repaired"][0]["location"] == "secondary"
    info = BackupStore(roomy).get(backup_id)
    assert [c.state for c in info.copies] == [CopyStatus.OK, CopyStatus.OK]
    assert BackupStore(roomy).checksum_matches(info, "secondary")
    assert not [f for f in result.health.findings if f.code.startswith("copies")]


def test_run_rebuilds_a_damaged_primary_copy_from_the_secondary(roomy: Settings) -> None:
    backup_id = create_backup(roomy).metadata.id
    flip_byte(roomy.backup_dir / f"{backup_id}.db.zst")  # same size: only a hash finds it
    result = run(roomy)
    assert [(r.id, r.location, r.source, r.ok) for r in result.repaired] == [
        (backup_id, "primary", "secondary", True)
    ]
    info = BackupStore(roomy).get(backup_id)
    assert BackupStore(roomy).checksum_matches(info, "primary")
    assert result.health.exit_code == 0, result.health.findings


def test_a_rebuilt_copy_damaged_before_its_rename_is_not_kept(
    roomy: Settings, tmp_path: Path
) -> None:
    """heal's last check on its own: the rebuilt file is hashed again from disk. The copy is
    damaged after it was written and its own hash (taken while copying) matched, just before
    its rename: only that re-hash can see it. A copy that fails it is taken away again."""
    backup_id = create_backup(roomy).metadata.id
    assert roomy.secondary_dir is not None
    for name in (f"{backup_id}.db.zst", f"{backup_id}.json"):
        (roomy.secondary_dir / name).unlink()
    env = faultkit.cli_env(
        roomy.database,
        roomy.backup_dir,
        roomy.secondary_dir,
        home=tmp_path / "home",
        BACKUPS_DISK_WARNING="1MB",
        BACKUPS_DISK_CRITICAL="1MB",
        TTB_CRASH_AT="secondary-copy",
        TTB_CRASH_SIGNAL="STOP",
    )
    proc = faultkit.spawn_cli(["run", "--json"], env)
    try:
        assert faultkit.stopped_at(proc), "the run never reached the rebuilt copy's rename"
        [written] = [p for p in roomy.secondary_dir.iterdir() if p.name.startswith(".tmp-")]
        flip_byte(written)  # same size: the listing cannot tell
    finally:
        code, out, err = faultkit.resume(proc)
    report = json.loads(out)
    assert [(r["location"], r["ok"]) for r in report["repaired"]] == [("secondary", False)], err
    assert "does not match" in report["repaired"][0]["error"]
    assert code == 1
    # Not left behind looking sound: the copy is missing again, and health says why.
    info = BackupStore(roomy).get(backup_id)
    assert info.copy_state("secondary") == CopyStatus.MISSING
    assert any(
        f.code == "copies-disagree" and "rebuilding it failed" in f.message
        for f in check_health(roomy).findings
    )
    # The next run, with nothing in the way, rebuilds it.
    healed = run(roomy)
    assert [(r.location, r.ok) for r in healed.repaired] == [("secondary", True)]
    assert BackupStore(roomy).checksum_matches(BackupStore(roomy).get(backup_id), "secondary")


def test_a_repair_never_creates_the_folder_of_a_disk_that_is_away(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The secondary folder's parent is gone (its disk unplugged): a copy rebuilt into a
    folder made in its place would be on the system disk, no second copy at all."""
    disk = tmp_path / "usb-disk"
    disk.mkdir()
    settings = make_settings(secondary_dir=disk / "mirror", **ROOMY)
    backup_id = create_backup(settings).metadata.id
    shutil.rmtree(disk)
    result = run(settings)
    assert [(r.id, r.location, r.ok) for r in result.repaired] == [(backup_id, "secondary", False)]
    assert "is not there (is its disk mounted?)" in (result.repaired[0].error or "")
    assert not disk.exists()


def test_a_copy_that_differs_is_left_for_a_person(roomy: Settings) -> None:
    """Two copies under one id, each a faithful copy of what its own metadata describes,
    but of different data: neither is known to be wrong, so a run rebuilds neither, changes
    neither, and health warns."""
    backup_id = create_backup(roomy).metadata.id
    with closing(sqlite3.connect(roomy.database)) as conn:
        conn.execute(
            "DELETE FROM count_sessions WHERE id IN (SELECT id FROM count_sessions LIMIT 3)"
        )
        conn.commit()
    other = create_backup(roomy).metadata
    assert roomy.secondary_dir is not None
    # The secondary copy of the first backup becomes the other backup's data, under its id.
    document = json.loads((roomy.secondary_dir / f"{other.id}.json").read_text())
    mine = json.loads((roomy.secondary_dir / f"{backup_id}.json").read_text())
    document.update(id=backup_id, created_at=mine["created_at"], data_file=mine["data_file"])
    (roomy.secondary_dir / f"{backup_id}.json").write_text(json.dumps(document))
    shutil.copy(
        roomy.secondary_dir / f"{other.id}.db.zst", roomy.secondary_dir / f"{backup_id}.db.zst"
    )
    data = roomy.secondary_dir / f"{backup_id}.db.zst"
    before = data.read_bytes()
    info = BackupStore(roomy).get(backup_id)
    assert info.copy_state("secondary") == CopyStatus.DIFFERS, info.problems
    result = run(roomy)
    assert [r for r in result.repaired if r.id == backup_id] == []
    assert data.read_bytes() == before  # (a re-verify may note its result in the metadata)
    assert BackupStore(roomy).get(backup_id).copy_state("secondary") == CopyStatus.DIFFERS
    assert any(f.code == "copies-disagree" for f in result.health.findings)


def test_health_warns_while_a_repair_is_impossible(roomy: Settings) -> None:
    backup_id = create_backup(roomy).metadata.id
    assert roomy.secondary_dir is not None
    (roomy.secondary_dir / f"{backup_id}.json").unlink()
    os.chmod(roomy.secondary_dir, 0o500)  # the folder cannot be written: no repair possible
    try:
        if os.access(roomy.secondary_dir, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        result = run(roomy)
    finally:
        os.chmod(roomy.secondary_dir, 0o700)
    [failed] = [r for r in result.repaired if not r.ok]
    assert failed.location == "secondary" and "permission denied" in (failed.error or "")
    assert any(
        f.code == "copies-disagree" and f.level == "warning" and "rebuilding it failed" in f.message
        for f in result.health.findings
    )
    # With the folder writable again, the next run rebuilds it and the warning is gone.
    healed = run(roomy)
    assert [r.ok for r in healed.repaired] == [True]
    assert healed.health.exit_code == 0, healed.health.findings


def test_health_warns_when_no_copy_is_left_to_rebuild_from(roomy: Settings) -> None:
    create_backup(roomy)  # a good backup, so no new one is due
    backup_id = create_backup(roomy).metadata.id  # the newest: retention keeps it
    assert roomy.secondary_dir is not None
    (roomy.secondary_dir / f"{backup_id}.json").unlink()
    data = roomy.backup_dir / f"{backup_id}.db.zst"
    data.write_bytes(data.read_bytes()[:-10])  # truncated: the listing sees it damaged
    result = run(roomy)
    assert sorted((r.location, r.ok) for r in result.repaired) == [
        ("primary", False),
        ("secondary", False),
    ]
    assert all(r.error == "no other copy checks out" for r in result.repaired)
    warnings = [f for f in result.health.findings if f.code == "copies-disagree"]
    assert len(warnings) == 2 and all(f.level == "warning" for f in warnings)
    assert all("rebuilding it failed: no other copy checks out" in f.message for f in warnings)


# -- health shows failed manual and web backups --------------------------------------------------


def test_a_failed_manual_backup_is_critical_until_one_succeeds(roomy: Settings) -> None:
    create_backup(roomy)
    assert check_health(roomy).exit_code == 0
    saved = roomy.database.read_bytes()
    roomy.database.write_bytes(b"x" * 4096)  # not a database any more
    failed = invoke("backup", *where(roomy))
    assert failed.exit_code == 2
    roomy.database.write_bytes(saved)
    health = invoke("health", "--json", *where(roomy))
    status = invoke("status", "--json", *where(roomy))
    for result in (health, status):
        document = json.loads(result.stdout)
        assert result.exit_code == 2 and document["status"] == "critical"
        [finding] = [f for f in document["findings"] if f["code"] == "last-backup-failed"]
        assert "the last manual backup (cli) failed" in finding["message"]
        assert "not a SQLite database" in finding["message"]
    assert json.loads(health.stdout)["findings"] == json.loads(status.stdout)["findings"]
    assert invoke("backup", *where(roomy)).exit_code == 0
    assert invoke("health", *where(roomy)).exit_code == 0


# -- first-hour friction -------------------------------------------------------------------------


def test_json_errors_are_json(roomy: Settings, tmp_path: Path) -> None:
    for args in (
        ("show", "nope", "--json"),
        ("show", "latest", "--json"),
        ("restore", "--json"),  # a usage error inside the command
        ("list", "--json", "--backup-dir", str(tmp_path / "typo")),
    ):
        result = invoke(*args, *where(roomy)[:2])
        assert result.exit_code == 2, (args, result.output)
        document = json.loads(result.stdout)
        assert set(document) == {"error", "exit_code"} and document["exit_code"] == 2
        assert document["error"] and "Traceback" not in result.output


def test_a_closed_pipe_exits_quietly(roomy: Settings) -> None:
    for _ in range(3):
        create_backup(roomy)
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "PYTHONPATH": str(ROOT),
        "BACKUPS_DATABASE": str(roomy.database),
        "BACKUPS_DIR": str(roomy.backup_dir),
    }
    for command in ("show latest", "list", "--help"):
        shell = f"{sys.executable} -m tablettracker_backups {command} | head -1"
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", shell],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.stderr == "", (command, result.stderr)
        assert result.stdout.count("\n") == 1
        assert result.returncode in (0, 141), (command, result.returncode)


def test_unknown_toml_section_and_key_suggest_the_right_one(
    roomy: Settings, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[backup]\ndatabase = "{roomy.database}"\n')
    result = invoke("list", "--config", str(config))
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"Error: config file {config}: unknown section [backup]; did you mean [backups]?"
    )
    config.write_text(f'[backups]\ndatabase = "{roomy.database}"\nbackupdir = "x"\n')
    result = invoke("list", "--config", str(config))
    assert "unknown setting 'backupdir' in [backups]; did you mean 'backup_dir'?" in result.stderr
    config.write_text(f'database = "{roomy.database}"\n')
    assert "must be under a [backups] section" in invoke("list", "--config", str(config)).stderr
    config.write_text("[backups]\nkeep_daily = 3\n")
    result = invoke("list", "--config", str(config))
    assert f"config file {config} names no database" in result.stderr
    assert "pass --database PATH or --config FILE" not in result.stderr


def test_toml_keys_follow_the_option_names(roomy: Settings, tmp_path: Path) -> None:
    create_backup(roomy)
    config = tmp_path / "config.toml"
    for key in ("backup_dir", "dir"):  # the option's name, and the older one
        config.write_text(
            f'[backups]\ndatabase = "{roomy.database}"\n{key} = "{roomy.backup_dir}"\n'
            f'secondary_dir = "{roomy.secondary_dir}"\n'
        )
        listed = invoke("list", "--json", "--config", str(config))
        assert listed.exit_code == 0, listed.output
        assert len(json.loads(listed.stdout)) == 1


def test_init_writes_its_config_only_after_the_first_backup(
    roomy: Settings, tmp_path: Path
) -> None:
    config = tmp_path / "elsewhere" / "backups.toml"
    # A first backup that fails after the database was found readable: the folder given
    # belongs to another database.
    other = make_db(tmp_path / "other.db")
    create_backup(settings_from_mapping({"database": other, "dir": tmp_path / "taken", **ROOMY}))
    failed = invoke(
        "init",
        "--database",
        str(roomy.database),
        "--backup-dir",
        str(tmp_path / "taken"),
        "--config",
        str(config),
    )
    assert failed.exit_code == 2 and "belongs to database 'other'" in failed.stderr
    assert not config.exists()
    made = invoke("init", *where(roomy), "--config", str(config), "--interval", "1d")
    assert made.exit_code == 0, made.output
    assert f"Config written:  {config}" in made.stdout
    listed = invoke("list", "--json", "--config", str(config))
    assert len(json.loads(listed.stdout)) == 1
    again = invoke("init", *where(roomy), "--config", str(config))
    assert again.exit_code == 2 and "pass --overwrite" in again.stderr


def test_list_names_the_zone_its_times_and_slots_use(roomy: Settings) -> None:
    create_backup(roomy)
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "PYTHONPATH": str(ROOT),
        "BACKUPS_DATABASE": str(roomy.database),
        "BACKUPS_DIR": str(roomy.backup_dir),
    }

    def listing(zone: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "tablettracker_backups", "list"],
            env={**env, "TZ": zone},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout

    berlin = listing("Europe/Berlin")
    assert "Times are local (CET, UTC+0100)" in berlin or "(CEST, UTC+0200)" in berlin
    assert "slot names (hourly/daily/...) use UTC" in berlin
    assert "Times are local" not in listing("UTC")


# -- the pages -----------------------------------------------------------------------------------


def test_detail_page_shows_findings_and_pins(demo_app: Any, admin_client: Any) -> None:
    from tests.conftest import csrf_from
    from tests.test_web import P, settings_of

    settings = settings_of(demo_app)
    with closing(sqlite3.connect(settings.database)) as conn:
        # The demo declares its foreign keys; an app that never enforces them leaves orphans.
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("UPDATE po_lines SET po_id = 9999 WHERE id = 1")
        conn.commit()
    backup_id = create_backup(settings, trigger="test").metadata.id
    page = admin_client.get(f"{P}/backups/{backup_id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "1 foreign-key violation(s) in the data" in html and "(latest)" in html
    token = csrf_from(html)
    response = admin_client.post(
        f"{P}/backups/{backup_id}/pin", data={"csrf_token": token, "label": "before the move"}
    )
    assert response.status_code == 303
    info = BackupStore(settings).get(backup_id)
    assert info.pinned and info.label == "before the move"
    html = admin_client.get(f"{P}/backups/{backup_id}").get_data(as_text=True)
    assert "before the move (pinned)" in html and "Unpin" in html
    listing = admin_client.get(f"{P}/backups").get_data(as_text=True)
    assert "before the move · pinned" in listing
    too_long = admin_client.post(
        f"{P}/backups/{backup_id}/pin", data={"csrf_token": token, "label": "x" * 201}
    )
    assert too_long.status_code == 400
    assert (
        admin_client.post(f"{P}/backups/{backup_id}/unpin", data={"csrf_token": token}).status_code
        == 303
    )
    info = BackupStore(settings).get(backup_id)
    assert not info.pinned and info.label == "before the move"
    entries = [(e.action, e.actor) for e in audit_entries(settings)]
    assert ("pin", "admin") in entries and ("unpin", "admin") in entries


def audit_entries(settings: Settings) -> list[Any]:
    from tablettracker_backups.audit import read_entries

    return read_entries(settings)


def test_a_failed_web_backup_shows_on_the_dashboard(demo_app: Any, admin_client: Any) -> None:
    from tests.conftest import csrf_from, wait_for_job
    from tests.test_web import P, settings_of

    settings = settings_of(demo_app)
    create_backup(settings, trigger="test")
    # A real reason for the worker's backup to fail: the folder now names another database.
    identity = settings.backup_dir / IDENTITY_FILE
    saved = identity.read_text()
    identity.write_text(saved.replace(str(settings.database), "/elsewhere/other.db"))
    token = csrf_from(admin_client.get(f"{P}/").get_data(as_text=True))
    response = admin_client.post(f"{P}/backup-now", data={"csrf_token": token})
    job = wait_for_job(settings, response.location.rsplit("/", 1)[1])
    assert job.state == "failed"
    identity.write_text(saved)
    html = admin_client.get(f"{P}/").get_data(as_text=True)
    assert "the last manual backup (web:admin) failed" in html
    report = check_health(settings)
    assert {f.code for f in report.findings if f.level == "critical"} == {"last-backup-failed"}
    create_backup(settings, trigger="test")
    assert "last-backup-failed" not in {f.code for f in check_health(settings).findings}


def test_a_stored_file_that_does_not_decompress_to_the_snapshot_is_not_kept(
    roomy: Settings, tmp_path: Path
) -> None:
    """The proof a backup makes before it counts: its stored file, read back, must decompress
    to exactly the snapshot (here a real stored file with one flipped byte, and a real one
    checked against another snapshot's hash)."""
    from tablettracker_backups.backup import _prove_stored
    from tablettracker_backups.compression import compress_file
    from tablettracker_backups.errors import VerificationError

    stored = tmp_path / "x.db.zst"
    stream = compress_file(roomy.database, stored, algorithm="zstd", level=3)
    _prove_stored(stored, "zstd", stream)  # the control: a faithful file passes
    other = dataclasses.replace(stream, raw_sha256="0" * 64)
    with pytest.raises(VerificationError, match="does not decompress to the snapshot"):
        _prove_stored(stored, "zstd", other)
    flip_byte(stored)
    with pytest.raises(VerificationError):
        _prove_stored(stored, "zstd", stream)

"""Where settings come from: precedence and origins, relative paths, the per-database default
folder (and an earlier version's folder kept), the user config file read only when named, and
the cosmetic promises of ``status`` (a restore's recovery point, "newest")."""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tablettracker_backups.backup import create_backup
from tablettracker_backups.cli import cli
from tablettracker_backups.errors import ConfigError, IdentityError
from tablettracker_backups.identity import IDENTITY_FILE
from tablettracker_backups.restore import restore_backup
from tablettracker_backups.settings import settings_from_mapping
from tablettracker_backups.sources import (
    app_layer,
    environment_layer,
    file_layer,
    load_settings,
    merge,
    option_layer,
    resolve,
)
from tests.conftest import make_db

ROOMY = {"BACKUPS_DISK_WARNING": "1MB", "BACKUPS_DISK_CRITICAL": "1MB"}


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={**ROOMY, **(env or {})})


# -- precedence and origins --------------------------------------------------------------------


def test_each_source_in_its_place_and_each_value_knows_where_it_came_from(
    tmp_path: Path,
) -> None:
    config = tmp_path / "conf" / "backups.toml"
    config.parent.mkdir()
    config.write_text(
        '[backups]\ndatabase = "../data/t.db"\nbackup_dir = "b"\ninterval = "1d"\nkeep_daily = 7\n'
    )
    settings = load_settings(
        config_file=config,
        options={"secondary_dir": "/srv/mirror", "database_name": None},
        environ={"BACKUPS_INTERVAL": "2h", "BACKUPS_KEEP_DAILY": "", "OTHER": "x"},
    )
    # TOML paths are relative to the file, not to the folder the command runs in.
    assert settings.database == tmp_path / "conf" / ".." / "data" / "t.db"
    assert settings.backup_dir == tmp_path / "conf" / "b"
    assert settings.interval == 7200 and settings.retention.daily == 7
    assert settings.config_file == config
    assert dict(settings.origins) == {
        "database": (str(tmp_path / "conf" / ".." / "data" / "t.db"), f"file:{config} database"),
        "dir": (str(tmp_path / "conf" / "b"), f"file:{config} backup_dir"),
        "interval": ("2h", "environment BACKUPS_INTERVAL"),
        "keep_daily": ("7", f"file:{config} keep_daily"),
        "secondary_dir": ("/srv/mirror", "command line --secondary-dir"),
    }
    # The hints repeat the file, so they work pasted anywhere.
    assert settings.command_line("status") == f"tablettracker-backups status --config {config}"


def test_under_a_host_app_options_beat_the_environment_which_beats_the_app(
    tmp_path: Path,
) -> None:
    app = app_layer(
        {"BACKUPS_DATABASE": "instance/t.db", "BACKUPS_INTERVAL": "1d", "BACKUPS_DIR": None},
        instance_path=tmp_path / "inst",
    )
    env = environment_layer({"BACKUPS_INTERVAL": "2h", "BACKUPS_KEEP_DAILY": "5"})
    options = option_layer({"database_name": "tt"})
    settings = resolve(merge(app, env, options), command="flask backups")
    assert settings.database == tmp_path / "inst" / "t.db"
    assert (settings.interval, settings.retention.daily, settings.database_name) == (7200, 5, "tt")
    assert settings.origins["interval"] == ("2h", "environment BACKUPS_INTERVAL")
    assert settings.origins["database"][1] == "app config BACKUPS_DATABASE"
    assert settings.origins["database_name"] == ("tt", "command line --database-name")
    # A None in the app's config is "not set": the default folder, which says so.
    assert settings.origins["dir"] == (
        str(tmp_path / "inst" / "backups" / "tt"),
        "default (backups/<name>/ beside the database)",
    )
    assert settings.command_line("restore", "latest") == "flask backups restore latest"


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("instance/tablet_counter.db", "inst/tablet_counter.db"),
        ("tablet_counter.db", "inst/tablet_counter.db"),
        ("instance/sub/t.db", "inst/sub/t.db"),
        ("instances/t.db", "inst/instances/t.db"),
        ("../data/t.db", "inst/../data/t.db"),
    ],
)
def test_relative_paths_in_the_app_config_are_inside_the_instance_folder(
    tmp_path: Path, written: str, meant: str
) -> None:
    layer = app_layer({"BACKUPS_DATABASE": written}, instance_path=tmp_path / "inst")
    assert resolve(layer).database == tmp_path / meant


def test_absolute_and_home_paths_in_the_app_config_are_kept(tmp_path: Path) -> None:
    layer = app_layer(
        {"BACKUPS_DATABASE": str(tmp_path / "t.db"), "BACKUPS_DIR": Path("~/b")},
        instance_path=tmp_path / "inst",
    )
    settings = resolve(layer)
    assert settings.database == tmp_path / "t.db"
    assert settings.backup_dir == Path.home() / "b"


def test_a_relative_path_in_a_host_apps_environment_is_refused_naming_what_it_would_mean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        environment_layer({"BACKUPS_SECONDARY_DIR": "mirror"}, relative="refuse")
    assert str(caught.value).startswith(
        f"BACKUPS_SECONDARY_DIR='mirror' in the environment is a relative path: from this "
        f"process's folder it means {tmp_path / 'mirror'}, "
    )
    # Absolute ones pass; the standalone command means the current folder, as an option does.
    assert environment_layer({"BACKUPS_DIR": "/srv/b"}, relative="refuse")["dir"][0] == "/srv/b"
    assert environment_layer({"BACKUPS_DIR": "b"})["dir"][0] == str(tmp_path / "b")


def test_unknown_keys_in_the_app_config_name_the_nearest_known_one(tmp_path: Path) -> None:
    def refused(config: dict[str, object]) -> str:
        with pytest.raises(ConfigError) as caught:
            app_layer(config, instance_path=tmp_path, other_keys={"task_token"})
        return str(caught.value)

    assert refused({"BACKUPS_SECONDARY_DIRECTORY": "/x"}) == (
        "unknown setting BACKUPS_SECONDARY_DIRECTORY in the app's config; did you mean "
        "BACKUPS_SECONDARY_DIR?"
    )
    assert refused({"BACKUPS_TASK_TOKN": "x"}).endswith("did you mean BACKUPS_TASK_TOKEN?")
    assert refused({"BACKUPS_WHATEVER": 1}) == (
        "unknown setting BACKUPS_WHATEVER in the app's config"
    )
    assert "standalone command" in refused({"BACKUPS_CONFIG": "/x.toml"})
    # The extension's own keys and other apps' keys pass; so does a known key set to None.
    assert (
        app_layer(
            {"BACKUPS_TASK_TOKEN": "x" * 20, "SQLALCHEMY_URI": "x", "BACKUPS_DIR": None},
            instance_path=tmp_path,
            other_keys={"task_token"},
        )
        == {}
    )


def test_a_bad_value_says_where_it_was_set(tmp_path: Path) -> None:
    layers = merge(
        file_layer(_toml(tmp_path, 'database = "/srv/t.db"\ninterval = "1h"\n')),
        environment_layer({"BACKUPS_INTERVAL": "bogus"}),
    )
    with pytest.raises(ConfigError, match=r"BACKUPS_INTERVAL .* \(set in environment "):
        resolve(layers)
    with pytest.raises(ConfigError, match=r"BACKUPS_KEEP_HOURLY .* \(set in file:.*keep_hourly\)"):
        resolve(merge(file_layer(_toml(tmp_path, 'database = "/a.db"\nkeep_hourly = -1\n'))))


def _toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text("[backups]\n" + body)
    return path


# -- the user config file: read only when named ------------------------------------------------


def test_the_user_config_file_is_not_read_unless_named_and_the_command_says_so(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    user_file = xdg / "tablettracker-backups" / "config.toml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text(f'[backups]\ndatabase = "{db_path}"\n')
    hint = (
        f"{user_file} is no longer read unless named: pass --config {user_file}, or set "
        f"BACKUPS_CONFIG={user_file}"
    )
    missing = invoke("status")
    assert missing.exit_code == 2
    assert missing.stderr.strip() == (
        "Error: no database configured: pass --database PATH or --config FILE, or set "
        f"BACKUPS_DATABASE; {hint}"
    )
    other = make_db(tmp_path / "other.db")
    given = invoke("backup", "--database", str(other))
    assert given.exit_code == 0, given.output
    assert given.stderr.splitlines()[0] == f"Note: {hint}"
    assert (tmp_path / "backups" / "other").is_dir()
    assert not (db_path.parent / "backups").exists()  # the file's database was not touched
    named = invoke("status", "--json", env={"BACKUPS_CONFIG": str(user_file)})
    assert "Note:" not in named.stderr
    origin = json.loads(named.stdout)["settings"]["BACKUPS_DATABASE"]
    assert origin == {"value": str(db_path), "origin": f"file:{user_file} database"}


def test_standalone_init_writes_the_file_and_a_task_that_names_it(
    tmp_path: Path, db_path: Path
) -> None:
    config = tmp_path / "c" / "backups.toml"
    made = invoke("init", "--database", str(db_path), "--config", str(config))
    assert made.exit_code == 0, made.output
    assert f"run --config {config}\n" in made.stdout
    assert f"  export BACKUPS_CONFIG={config}\n" in made.stdout
    assert "is no longer read" not in made.output


# -- the default folder: one per database, an earlier version's folder kept --------------------


def test_two_databases_in_one_folder_each_get_their_own_default_folder(tmp_path: Path) -> None:
    first = make_db(tmp_path / "tablet_counter.db")
    second = make_db(tmp_path / "shop.db")
    for database in (first, second):
        made = invoke("backup", "--database", str(database))
        assert made.exit_code == 0, made.output
    assert len(list((tmp_path / "backups" / "tablet_counter").glob("*.db.zst"))) == 1
    assert len(list((tmp_path / "backups" / "shop").glob("*.db.zst"))) == 1


def test_an_earlier_versions_default_folder_of_this_database_is_kept_and_status_says_so(
    tmp_path: Path, db_path: Path
) -> None:
    earlier = db_path.parent / "backups"
    old = create_backup(settings_from_mapping({"database": db_path, "dir": earlier, **_roomy()}))
    settings = load_settings(options={"database": db_path}, environ={})
    assert settings.backup_dir == earlier
    assert settings.origins["dir"] == (
        str(earlier),
        "default (the folder this database's backups were already in; new set-ups use "
        "backups/<name>/)",
    )
    shown = invoke("status", "--database", str(db_path))
    assert re.search(
        rf"\n  BACKUPS_DIR +{re.escape(f'= {earlier}  [default (the folder this database')}",
        shown.stdout,
    ), shown.stdout
    listed = json.loads(invoke("list", "--json", "--database", str(db_path)).stdout)
    assert [b["id"] for b in listed] == [old.metadata.id]
    # Older still (no database.json): kept when its newest backup came from this database.
    (earlier / IDENTITY_FILE).unlink()
    assert load_settings(options={"database": db_path}, environ={}).backup_dir == earlier


def test_an_earlier_folder_of_another_database_is_left_to_it(tmp_path: Path, db_path: Path) -> None:
    earlier = db_path.parent / "backups"
    shop = make_db(db_path.parent / "shop.db")
    create_backup(settings_from_mapping({"database": shop, "dir": earlier, **_roomy()}))
    settings = load_settings(options={"database": db_path}, environ={})
    assert settings.backup_dir == earlier / "tablet_counter"
    create_backup(settings)  # not refused: its own folder
    # A moved database (same name, another path) keeps its folder, to be told to adopt it.
    (tmp_path / "moved").mkdir()
    moved = make_db(tmp_path / "moved" / "shop.db")
    (tmp_path / "moved" / "backups").symlink_to(earlier)
    kept = load_settings(options={"database": moved}, environ={})
    assert kept.backup_dir == tmp_path / "moved" / "backups"
    with pytest.raises(IdentityError, match="adopt --database"):
        create_backup(kept)


def _roomy() -> dict[str, str]:
    return {"disk_warning": "1MB", "disk_critical": "1MB"}


# -- status: the recovery point after a restore, "newest", the labels ---------------------------


def test_after_a_restore_status_says_the_data_is_in_a_backup(tmp_path: Path, db_path: Path) -> None:
    where = ["--database", str(db_path)]
    first = json.loads(invoke("backup", "--json", *where).stdout)["id"]
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE purchase_orders SET notes = 'later' WHERE id = 1")
    conn.close()
    assert invoke("backup", *where).exit_code == 0
    restored = invoke("restore", first, "--yes", *where)
    assert restored.exit_code == 0, restored.output
    text = invoke("status", *where).stdout
    assert (
        "Recovery point:  every write so far is in a backup (the database is as restored from "
        f"backup {first})\n"
    ) in text
    assert "Automatic snapshots: after web writes" in text
    # A write after the restore is not in a backup, and status says so again.
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE purchase_orders SET notes = 'after' WHERE id = 1")
    conn.close()
    assert "is not in a backup yet" in invoke("status", *where).stdout
    # "Newest" is the newest regular backup everywhere: verify without an ID checks it, not
    # the safety snapshot the restore took.
    status = json.loads(invoke("status", "--json", *where).stdout)
    checked = invoke("verify", *where).stdout
    assert checked.startswith(f"[1/1] {status['newest_backup']['id']}: ok")
    listed = json.loads(invoke("list", "--json", *where).stdout)
    assert listed[0]["kind"] == "pre-restore" and listed[0]["id"] != status["newest_backup"]["id"]


def test_the_restore_undo_hint_names_the_command_in_use(db_path: Path) -> None:
    settings = load_settings(options={"database": db_path}, environ={})
    backup_id = create_backup(settings).metadata.id
    result = restore_backup(settings, backup_id, actor="test")
    assert result.safety_snapshot_id
    undo = invoke("restore", backup_id, "--yes", "--database", str(db_path))
    assert "(undo with: tablettracker-backups restore " in undo.stdout


def test_hints_name_the_command_in_use(tmp_path: Path, db_path: Path) -> None:
    """Under a host app, ``flask backups …`` (its config says where everything is); the
    standalone tool repeats what it needs to find the same folders."""
    standalone = load_settings(options={"database": db_path}, environ={})
    create_backup(standalone)
    other = make_db(tmp_path / "other.db")
    for command, adopt in (
        ("tablettracker-backups", f"tablettracker-backups adopt --database {other}"),
        ("flask backups", "flask backups adopt"),
    ):
        moved = resolve(
            merge(option_layer({"database": other, "dir": standalone.backup_dir})),
            command=command,
        )
        with pytest.raises(IdentityError) as caught:
            create_backup(moved)
        assert str(caught.value).endswith(f"renamed on purpose: {adopt}")
    flask = dataclasses.replace(standalone, command="flask backups")
    assert flask.command_line("restore", "latest", "--preview") == (
        "flask backups restore latest --preview"
    )
    assert standalone.command_line("health") == (
        f"tablettracker-backups health --database {db_path} --backup-dir {standalone.backup_dir}"
    )

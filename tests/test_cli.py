"""The CLI through click's runner (every command), and once as a real subprocess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner, Result

from tablettracker_backups.cli import cli
from tablettracker_backups.settings import Settings
from tablettracker_backups.sources import load_settings
from tablettracker_backups.store import BackupStore
from tests.conftest import backdate, flip_byte, make_db, rewrite_metadata

ROOT = Path(__file__).resolve().parent.parent
ROOMY = {"BACKUPS_DISK_WARNING": "1MB", "BACKUPS_DISK_CRITICAL": "1MB"}
NO_RECENT = {"BACKUPS_KEEP_RECENT": "0"}


@pytest.fixture
def invoke(db_path: Path, backup_dir: Path, secondary_dir: Path) -> Callable[..., Result]:
    """Run a command with the test's database and folders given as options."""

    def call(*args: str, where: bool = True, env: dict[str, str] | None = None) -> Result:
        command, *rest = args
        options: list[str] = []
        if where:
            options = [
                "--database",
                str(db_path),
                "--backup-dir",
                str(backup_dir),
                "--secondary-dir",
                str(secondary_dir),
            ]
        return CliRunner().invoke(cli, [command, *options, *rest], env={**ROOMY, **(env or {})})

    return call


def ok(result: Result, code: int = 0) -> Result:
    assert result.exit_code == code, (result.output, result.exception)
    assert "Traceback" not in result.output
    return result


def one_line_error(result: Result, needle: str, code: int = 2) -> None:
    """Bad input: a single line on stderr, a non-zero exit, no traceback."""
    assert result.exit_code == code, (result.output, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], lines[0]
    assert lines[0].startswith(("Error: ", "Busy: "))
    assert "Traceback" not in result.output


def backup_json(invoke: Callable[..., Result]) -> dict[str, object]:
    data = json.loads(ok(invoke("backup", "--json")).stdout)
    assert isinstance(data, dict)
    return data


# -- every command ----------------------------------------------------------------------------


def test_backup_and_list(invoke: Callable[..., Result]) -> None:
    result = ok(invoke("backup"))
    assert result.stdout.startswith("Backup ")
    assert "verified and stored in primary, secondary" in result.stdout
    data = backup_json(invoke)
    assert data["verified"] is True and data["locations"] == ["primary", "secondary"]
    listing = json.loads(ok(invoke("list", "--json")).stdout)
    assert isinstance(listing, list) and len(listing) == 2
    for entry in listing:
        assert {"id", "created_at", "size", "verified"} <= set(entry)
        assert entry["verified"] is True
        assert isinstance(entry["size"], int) and entry["size"] > 0
        assert entry["created_at"].endswith("Z")
        assert entry["copies"] == {"primary": "ok", "secondary": "ok"}
    assert listing[0]["id"] == data["id"]  # newest first
    assert listing[0]["kept_because"][0].startswith("minutely ")
    assert listing[0]["kept_because"][1].startswith("hourly ")
    text = ok(invoke("list")).stdout
    assert data["id"] in text and "pri:ok sec:ok" in text and "KEPT BECAUSE" in text


def test_list_empty(invoke: Callable[..., Result], settings: Settings) -> None:
    # No folder at all is most likely a typo in --backup-dir: say so rather than "no backups".
    missing = invoke("list")
    assert missing.exit_code == 2
    assert missing.output.strip() == (
        f"Error: no backup folder at {settings.backup_dir} or {settings.secondary_dir}"
    )
    settings.backup_dir.mkdir()
    assert "No backups yet" in ok(invoke("list")).stdout
    assert json.loads(ok(invoke("list", "--json")).stdout) == []


def test_show(invoke: Callable[..., Result]) -> None:
    backup_id = str(backup_json(invoke)["id"])
    text = ok(invoke("show", backup_id)).stdout
    assert f"Backup {backup_id}" in text
    assert "po_lines" in text and "verified:    yes" in text
    latest = json.loads(ok(invoke("show", "latest", "--json")).stdout)
    assert latest["id"] == backup_id
    assert latest["metadata"]["row_counts"]["employees"] == 4
    assert latest["metadata"]["data_file"] == f"{backup_id}.db.zst"


def test_verify(invoke: Callable[..., Result], settings: object) -> None:
    first = str(backup_json(invoke)["id"])
    second = str(backup_json(invoke)["id"])
    assert f"{second}: ok" in ok(invoke("verify")).stdout  # newest by default
    assert f"{first}: ok" in ok(invoke("verify", first)).stdout
    results = json.loads(ok(invoke("verify", "--all", "--json")).stdout)
    assert [r["id"] for r in results] == [second, first]
    assert all(r["ok"] for r in results)
    usage = invoke("verify", first, "--all")
    assert usage.exit_code == 2 and "not both" in usage.stderr


def test_verify_damaged_copies(
    invoke: Callable[..., Result], backup_dir: Path, secondary_dir: Path
) -> None:
    backup_id = str(backup_json(invoke)["id"])
    flip_byte(secondary_dir / f"{backup_id}.db.zst")
    result = ok(invoke("verify", backup_id), code=1)
    assert "DAMAGED COPY" in result.stdout and "secondary" in result.stdout
    flip_byte(backup_dir / f"{backup_id}.db.zst")
    result = ok(invoke("verify", "--all"), code=2)
    assert "FAILED" in result.stdout
    # The failed verification is recorded: the backup no longer lists as verified.
    assert json.loads(ok(invoke("list", "--json")).stdout)[0]["verified"] is False


def test_prune_dry_run_deletes_nothing(invoke: Callable[..., Result], backup_dir: Path) -> None:
    first = str(backup_json(invoke)["id"])
    # Same hour: supersedes the first in every slot (the recent tier, which would keep both,
    # is off here; tests/test_autosnapshot.py covers it).
    second = str(backup_json(invoke)["id"])
    before = sorted(p.name for p in backup_dir.iterdir())
    result = ok(invoke("prune", "--dry-run", env=NO_RECENT))
    assert "Would delete 1 backup(s); keeping 1." in result.stdout
    assert first in result.stdout
    assert sorted(p.name for p in backup_dir.iterdir()) == before
    dry = json.loads(ok(invoke("prune", "--dry-run", "--json", env=NO_RECENT)).stdout)
    assert dry["would_delete"] == [first] and dry["deleted"] == []
    assert sorted(p.name for p in backup_dir.iterdir()) == before
    real = json.loads(ok(invoke("prune", "--json", env=NO_RECENT)).stdout)
    assert real["deleted"] == [first]
    assert [k["id"] for k in real["kept"]] == [second]
    assert not (backup_dir / f"{first}.json").exists()


def test_health_and_status(invoke: Callable[..., Result], settings: object) -> None:
    result = invoke("health")
    assert result.exit_code == 2 and "no-backups" not in result.stdout
    assert "Health: CRITICAL" in result.stdout and "there are no backups yet" in result.stdout
    backup_id = str(backup_json(invoke)["id"])
    assert "Health: OK" in ok(invoke("health")).stdout
    report = json.loads(ok(invoke("health", "--json")).stdout)
    assert report["status"] == "ok" and report["newest_backup"]["id"] == backup_id
    status = ok(invoke("status")).stdout
    assert f"Newest:          {backup_id}" in status
    assert "Slots filled:    minutely 1, hourly 1, daily 1, weekly 1, monthly 1, yearly 1" in status
    assert "Health: OK" in status
    assert json.loads(ok(invoke("status", "--json")).stdout)["backup_count"] == 1
    # An old backup turns health to a warning, then critical (real rewritten metadata).
    from tablettracker_backups.settings import Settings

    assert isinstance(settings, Settings)
    from datetime import timedelta

    backdate(settings, backup_id, timedelta(hours=2))
    assert "Health: WARNING" in ok(invoke("health"), code=1).stdout
    backdate(settings, backup_id, timedelta(hours=2))
    assert "Health: CRITICAL" in ok(invoke("status"), code=2).stdout


def test_health_disk_threshold_from_environment(invoke: Callable[..., Result]) -> None:
    backup_json(invoke)
    result = invoke("health", env={"BACKUPS_DISK_WARNING": "99.99%"})
    assert result.exit_code == 1 and "[warning]" in result.stdout
    result = invoke("health", env={"BACKUPS_DISK_CRITICAL": "99.99%"})
    assert result.exit_code == 2


def test_run(invoke: Callable[..., Result]) -> None:
    first = ok(invoke("run"))
    assert first.stdout.startswith("Backed up: ")
    second = ok(invoke("run"))
    assert second.stdout.startswith("No backup due: ")
    data = json.loads(ok(invoke("run", "--json", "--force")).stdout)
    assert data["ok"] is True and data["backup"]["id"]
    assert data["health"]["status"] == "ok"


def test_settings_from_environment_variables(
    db_path: Path, backup_dir: Path, secondary_dir: Path
) -> None:
    env = {
        "BACKUPS_DATABASE": str(db_path),
        "BACKUPS_DIR": str(backup_dir),
        "BACKUPS_SECONDARY_DIR": str(secondary_dir),
    }
    result = ok(CliRunner().invoke(cli, ["backup", "--json"], env=env))
    backup_id = json.loads(result.stdout)["id"]
    assert (backup_dir / f"{backup_id}.json").exists()
    assert (secondary_dir / f"{backup_id}.json").exists()
    # An option beats the environment.
    other = backup_dir.parent / "other"
    result = ok(CliRunner().invoke(cli, ["list", "--json", "--backup-dir", str(other)], env=env))
    [entry] = json.loads(result.stdout)
    assert entry["copies"] == {"primary": "missing", "secondary": "ok"}


def test_settings_from_config_file(db_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[backups]\ndatabase = "{db_path}"\ndir = "{tmp_path / "cfg-backups"}"\n'
        'compression = "gzip"\n'
    )
    result = ok(CliRunner().invoke(cli, ["backup", "--json", "--config", str(config)]))
    backup_id = json.loads(result.stdout)["id"]
    assert (tmp_path / "cfg-backups" / f"{backup_id}.db.gz").exists()
    # BACKUPS_CONFIG names the file too.
    result = ok(CliRunner().invoke(cli, ["list", "--json"], env={"BACKUPS_CONFIG": str(config)}))
    assert [e["id"] for e in json.loads(result.stdout)] == [backup_id]


# -- init ---------------------------------------------------------------------------------------


def _git_init(path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(path)], check=True)


@pytest.mark.parametrize("in_git", [True, False])
def test_init(tmp_path: Path, in_git: bool) -> None:
    project = tmp_path / "project"
    project.mkdir()
    if in_git:
        _git_init(project)
    db = make_db(project / "tablet_counter.db")
    config = tmp_path / "conf" / "config.toml"
    args = [
        "init",
        "--database",
        str(db),
        "--secondary-dir",
        str(project / "mirror"),
        "--write-config",
        str(config),
        "--interval",
        "1d",
    ]
    result = ok(CliRunner().invoke(cli, args))
    out = result.stdout
    primary = project / "backups" / "tablet_counter"  # one folder per database
    for folder in (primary, project / "mirror"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert f"Folder (0700):   {folder}" in out
        assert (folder / ".gitignore").exists() is in_git
        if in_git:
            assert "*" in (folder / ".gitignore").read_text().splitlines()
    if in_git:
        ignored = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=project,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "backups/" not in ignored and "mirror/" not in ignored
        assert "tablet_counter.db" in ignored
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    values = tomllib.loads(config.read_text())["backups"]
    assert values["database"] == str(db)
    assert values["backup_dir"] == str(primary)
    assert values["interval"] == 86400
    task = f"{sys.executable} -m tablettracker_backups run --config {config}"
    assert f"  {task}\n" in out
    assert f"  17 3 * * * {task} >> {primary / 'run.log'} 2>&1\n" in out
    assert "(daily), command:" in out
    # The first backup is taken and verified, and the written config finds it.
    [listed] = BackupStore(load_settings(config_file=config, environ={})).list()
    assert listed.verified and listed.metadata is not None
    assert listed.metadata.trigger == "init"
    # The written config works for the scheduled command...
    run = ok(CliRunner().invoke(cli, ["run", "--config", str(config)], env=ROOMY))
    assert run.stdout.startswith("No backup due")
    # ...and init refuses to overwrite it unless asked.
    one_line_error(CliRunner().invoke(cli, args), "--overwrite")
    ok(CliRunner().invoke(cli, [*args, "--overwrite", "--json"]))


def test_init_hourly_prints_hourly_cron(tmp_path: Path) -> None:
    db = make_db(tmp_path / "a.db")
    result = ok(
        CliRunner().invoke(
            cli,
            ["init", "--database", str(db), "--write-config", str(tmp_path / "c.toml"), "--json"],
        )
    )
    data = json.loads(result.stdout)
    assert data["interval"] == 3600
    assert data["cron_line"].startswith("17 * * * * ")
    assert data["gitignored"] == []


# -- bad input: one line, non-zero, no traceback ----------------------------------------------


def test_missing_database(invoke: Callable[..., Result], db_path: Path) -> None:
    db_path.unlink()
    for command in ("backup", "run", "init"):
        one_line_error(invoke(command), "does not exist")


def test_no_database_configured() -> None:
    one_line_error(CliRunner().invoke(cli, ["backup"]), "no database configured")


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"just some text, not SQLite", "not a SQLite database"), (b"", "empty")],
)
def test_not_a_database(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "x.db"
    path.write_bytes(content)
    for command in ("backup", "run"):
        one_line_error(CliRunner().invoke(cli, [command, "--database", str(path)]), needle)


def test_database_is_a_folder(tmp_path: Path) -> None:
    one_line_error(CliRunner().invoke(cli, ["backup", "--database", str(tmp_path)]), "is a folder")


def test_unwritable_backup_folder(db_path: Path, tmp_path: Path) -> None:
    # Tests run as root, so chmod cannot make a folder unwritable: a path under a regular
    # file gives a real "not a directory" error instead.
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    for command in ("backup", "run", "health", "prune"):
        result = CliRunner().invoke(
            cli, [command, "--database", str(db_path), "--backup-dir", str(blocker / "b")]
        )
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output
        if command != "health":
            one_line_error(result, str(blocker))


@pytest.mark.parametrize(
    ("backup_id", "needle"),
    [
        ("20200101T000000Z-000000", "no backup with id"),
        ("../../etc/passwd", "invalid backup id"),
        ("20261399T999999Z-3f9a1c", "invalid backup id"),
        ("x" * 300, "invalid backup id"),
    ],
)
def test_unknown_and_malformed_ids(
    invoke: Callable[..., Result], backup_id: str, needle: str
) -> None:
    backup_json(invoke)
    for command in ("show", "verify"):
        one_line_error(invoke(command, backup_id), needle)


def test_latest_without_backups(invoke: Callable[..., Result]) -> None:
    one_line_error(invoke("show", "latest"), "no verified backup")
    one_line_error(invoke("verify"), "no backups")


def test_damaged_metadata(
    invoke: Callable[..., Result], backup_dir: Path, secondary_dir: Path
) -> None:
    backup_id = str(backup_json(invoke)["id"])
    for folder in (backup_dir, secondary_dir):
        (folder / f"{backup_id}.json").write_text("{ not json")
    listing = ok(invoke("list"))
    assert backup_id in listing.stdout and "! " in listing.stdout
    assert json.loads(ok(invoke("list", "--json")).stdout)[0]["verified"] is False
    one_line_error(invoke("show", backup_id), "not valid JSON")
    result = invoke("verify", backup_id)
    assert result.exit_code == 2 and "FAILED" in result.stdout
    assert "Traceback" not in result.output


def test_metadata_pointing_elsewhere(invoke: Callable[..., Result], settings: object) -> None:
    from tablettracker_backups.settings import Settings

    assert isinstance(settings, Settings)
    backup_id = str(backup_json(invoke)["id"])
    rewrite_metadata(settings, backup_id, data_file="../../../etc/passwd")
    one_line_error(invoke("show", backup_id), "another file")
    assert invoke("verify", backup_id).exit_code == 2


def test_bad_config_values(db_path: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["backup", "--database", str(db_path)], env={"BACKUPS_KEEP_DAILY": "-1"}
    )
    one_line_error(result, "BACKUPS_KEEP_DAILY")
    config = tmp_path / "c.toml"
    config.write_text("[backups]\ndatabase = \n")
    one_line_error(CliRunner().invoke(cli, ["list", "--config", str(config)]), "not valid TOML")
    one_line_error(
        CliRunner().invoke(cli, ["list", "--config", str(tmp_path / "nope.toml")]),
        "does not exist",
    )
    result = CliRunner().invoke(
        cli, ["backup", "--database", str(db_path)], env={"BACKUPS_INTERVAL": "often"}
    )
    one_line_error(result, "BACKUPS_INTERVAL")


def test_help_and_version() -> None:
    result = ok(CliRunner().invoke(cli, ["--help"]))
    for command in ("init", "backup", "list", "show", "verify", "prune", "health", "status", "run"):
        assert command in result.stdout
    assert "0.1.0" in ok(CliRunner().invoke(cli, ["--version"])).stdout
    assert "Example" in ok(CliRunner().invoke(cli, ["run", "--help"])).stdout


# -- once as a real process ---------------------------------------------------------------------


def _process(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tablettracker_backups", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_real_subprocess(db_path: Path, backup_dir: Path, tmp_path: Path) -> None:
    env = {"BACKUPS_DATABASE": str(db_path), "BACKUPS_DIR": str(backup_dir), **ROOMY}
    made = _process(["backup", "--json"], env)
    assert made.returncode == 0, made.stderr
    backup_id = json.loads(made.stdout)["id"]
    listed = _process(["list", "--json"], env)
    assert listed.returncode == 0
    assert [e["id"] for e in json.loads(listed.stdout)] == [backup_id]
    health = _process(["health"], env)
    assert health.returncode == 0, health.stdout
    bad = _process(["show", "../etc/passwd"], env)
    assert bad.returncode == 2
    assert bad.stderr.startswith("Error: invalid backup id")
    assert len(bad.stderr.strip().splitlines()) == 1
    missing = _process(["backup"], {**env, "BACKUPS_DATABASE": str(tmp_path / "gone.db")})
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"Error: database {tmp_path / 'gone.db'} does not exist"
    ]


def test_prune_on_a_mistyped_folder_creates_nothing(
    invoke: Callable[..., Result], tmp_path: Path
) -> None:
    typo = tmp_path / "bakups"
    result = invoke("prune", "--backup-dir", str(typo))
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: no backup folder at {typo}")
    assert len(result.output.strip().splitlines()) == 1
    assert not typo.exists()

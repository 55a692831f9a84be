"""Settings: precedence (options > environment > TOML file > defaults) and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tablettracker_backups.errors import ConfigError
from tablettracker_backups.settings import RetentionPolicy, settings_from_mapping
from tablettracker_backups.sources import load_settings


def write_toml(path: Path, body: str) -> Path:
    path.write_text("[backups]\n" + body)
    return path


def test_defaults(tmp_path: Path) -> None:
    settings = settings_from_mapping({"database": tmp_path / "app.db"})
    assert settings.database == tmp_path / "app.db"
    # One folder per database: two databases in one folder do not share one.
    assert settings.backup_dir == tmp_path / "backups" / "app"
    assert settings.secondary_dir is None
    assert settings.compression == "zstd"
    assert settings.compression_level == 6
    assert settings.retention == RetentionPolicy(24, 30, 12, 24, 10, 10)
    assert settings.interval == 3600
    assert settings.disk_warning == pytest.approx(0.10)
    assert settings.disk_critical == pytest.approx(0.02)
    assert settings.locations == (tmp_path / "backups" / "app",)
    assert settings_from_mapping({"database": "x.db", "compression": "gzip"}).compression_level == 6


def test_precedence_options_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path / "c.toml",
        f'database = "{tmp_path / "file.db"}"\n'
        f'dir = "{tmp_path / "file-dir"}"\n'
        'interval = "1d"\n'
        "keep_daily = 7\n"
        'compression = "gzip"\n',
    )
    env = {
        "BACKUPS_DATABASE": str(tmp_path / "env.db"),
        "BACKUPS_DIR": str(tmp_path / "env-dir"),
        "BACKUPS_INTERVAL": "2h",
        "UNRELATED": "ignored",
    }
    options = {"database": tmp_path / "opt.db", "dir": None, "secondary_dir": None}
    settings = load_settings(config_file=config, options=options, environ=env)
    assert settings.database == tmp_path / "opt.db"  # option beats env and file
    assert settings.backup_dir == tmp_path / "env-dir"  # env beats file (option unset)
    assert settings.interval == 7200  # env beats file
    assert settings.retention.daily == 7  # file beats default
    assert settings.compression == "gzip"  # file beats default
    assert settings.retention.hourly == 24  # default
    # Without the environment the file wins; without the file, the defaults.
    only_file = load_settings(config_file=config, environ={})
    assert only_file.database == tmp_path / "file.db"
    assert only_file.interval == 86400
    only_env = load_settings(environ=env)
    assert only_env.retention.daily == 30
    assert only_env.compression == "zstd"


def test_the_user_config_file_is_read_only_when_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file under ~/.config covers every app of the account: it must never be picked up
    unasked (it once sent another database's backup to its folder)."""
    xdg = tmp_path / "xdg"
    (xdg / "tablettracker-backups").mkdir(parents=True)
    user_file = write_toml(
        xdg / "tablettracker-backups" / "config.toml", 'database = "/srv/a.db"\n'
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    with pytest.raises(ConfigError, match="no database configured"):
        load_settings(environ={})
    assert load_settings(config_file=user_file, environ={}).database == Path("/srv/a.db")


def test_empty_environment_values_are_unset(tmp_path: Path) -> None:
    settings = load_settings(
        options={"database": tmp_path / "a.db"},
        environ={"BACKUPS_SECONDARY_DIR": "", "BACKUPS_INTERVAL": ""},
    )
    assert settings.secondary_dir is None
    assert settings.interval == 3600


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(3600, 3600), ("90m", 5400), ("1h", 3600), ("1d", 86400), ("45", 45), ("1w", 604800)],
)
def test_interval_forms(value: object, seconds: int) -> None:
    assert settings_from_mapping({"database": "a.db", "interval": value}).interval == seconds


@pytest.mark.parametrize(
    ("value", "fraction"), [("10%", 0.10), ("99.99%", 0.9999), ("500MB", 500e6), ("1GiB", 2**30)]
)
def test_disk_threshold_forms(value: str, fraction: float) -> None:
    settings = settings_from_mapping({"database": "a.db", "disk_warning": value})
    assert settings.disk_warning == pytest.approx(fraction)


BAD_VALUES = [
    ({"interval": "soon"}, "BACKUPS_INTERVAL"),
    ({"interval": "0"}, "BACKUPS_INTERVAL"),
    ({"interval": "-5m"}, "BACKUPS_INTERVAL"),
    ({"interval": True}, "BACKUPS_INTERVAL"),
    ({"keep_daily": -1}, "BACKUPS_KEEP_DAILY"),
    ({"keep_hourly": "-3"}, "BACKUPS_KEEP_HOURLY"),
    ({"keep_yearly": "ten"}, "BACKUPS_KEEP_YEARLY"),
    ({"keep_weekly": 2.5}, "BACKUPS_KEEP_WEEKLY"),
    ({"keep_pre_restore": -2}, "BACKUPS_KEEP_PRE_RESTORE"),
    ({"compression": "lzma"}, "BACKUPS_COMPRESSION"),
    ({"compression_level": 0}, "BACKUPS_COMPRESSION_LEVEL"),
    ({"compression": "gzip", "compression_level": 12}, "BACKUPS_COMPRESSION_LEVEL"),
    ({"compression_level": 23}, "BACKUPS_COMPRESSION_LEVEL"),
    ({"disk_warning": "lots"}, "BACKUPS_DISK_WARNING"),
    ({"disk_critical": "100%"}, "BACKUPS_DISK_CRITICAL"),
    ({"lock_timeout": "forever"}, "BACKUPS_LOCK_TIMEOUT"),
    ({"busy_timeout": -1}, "BACKUPS_BUSY_TIMEOUT"),
    ({"health_checksum_count": -1}, "BACKUPS_HEALTH_CHECKSUM_COUNT"),
    ({"dir": "bad\x00path"}, "BACKUPS_DIR"),
    ({"colour": "blue"}, "BACKUPS_COLOUR"),
    ({"secondary_dir": "/srv/backups", "dir": "/srv/backups"}, "BACKUPS_SECONDARY_DIR"),
    ({"secondary_dir": "/srv/backups/", "dir": "/srv/backups"}, "BACKUPS_SECONDARY_DIR"),
    ({"secondary_dir": "/srv/x/../backups", "dir": "/srv/backups"}, "BACKUPS_SECONDARY_DIR"),
]


@pytest.mark.parametrize(("values", "key"), BAD_VALUES)
def test_bad_values_give_one_line_config_error_naming_the_key(
    values: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"database": "/srv/app.db", **values})
    message = str(caught.value)
    assert key in message
    assert "\n" not in message


def test_missing_database_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="BACKUPS_DATABASE"):
        settings_from_mapping({})


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BACKUPS_KEEP_MONTHLY"):
        load_settings(
            options={"database": tmp_path / "a.db"}, environ={"BACKUPS_KEEP_MONTHLY": "-1"}
        )


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('database = "a.db"\ncolour = "blue"\n', "colour"),
        ('database = "a.db"\nkeep_daily = -4\n', "KEEP_DAILY"),
        ('database = "a.db"\ninterval = "often"\n', "INTERVAL"),
        ('database = "a.db"\ncompression = "brotli"\n', "COMPRESSION"),
        ('database = "a.db"\nkeep_daily = \n', "not valid TOML"),
        ('database = "a.db\n', "not valid TOML"),
    ],
)
def test_bad_toml_files(tmp_path: Path, body: str, needle: str) -> None:
    config = write_toml(tmp_path / "c.toml", body)
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=config, environ={})
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_toml_backups_must_be_a_table_and_file_must_exist(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('backups = "no"\n')
    with pytest.raises(ConfigError, match="must be a table"):
        load_settings(config_file=config, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "missing.toml", environ={})


def test_write_trigger_and_recent_tier_settings(tmp_path: Path) -> None:
    base = {"database": tmp_path / "app.db"}
    defaults = settings_from_mapping(base)
    assert defaults.snapshot_after_write == 1 and not defaults.snapshot_after_write_set
    assert defaults.keep_recent == 600 and defaults.recent_budget is None
    tuned = settings_from_mapping(
        {**base, "snapshot_after_write": "30s", "keep_recent": "6h", "recent_budget": "2GB"}
    )
    assert (tuned.snapshot_after_write, tuned.keep_recent) == (30, 6 * 3600)
    assert tuned.snapshot_after_write_set
    assert tuned.recent_budget == 2 * 1000**3
    off = settings_from_mapping({**base, "snapshot_after_write": "off", "keep_recent": "0"})
    assert off.snapshot_after_write is None and off.keep_recent == 0
    assert settings_from_mapping({**base, "recent_budget": "512MiB"}).recent_budget == 512 * 2**20


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("snapshot_after_write", "soon", "BACKUPS_SNAPSHOT_AFTER_WRITE"),
        ("snapshot_after_write", "-5m", "BACKUPS_SNAPSHOT_AFTER_WRITE"),
        ("keep_recent", "forever", "BACKUPS_KEEP_RECENT"),
        ("recent_budget", "lots", "BACKUPS_RECENT_BUDGET"),
        ("recent_budget", "10%", "BACKUPS_RECENT_BUDGET"),
    ],
)
def test_bad_write_trigger_settings_are_one_line_errors(
    tmp_path: Path, key: str, value: str, named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"database": tmp_path / "app.db", key: value})
    assert named in str(caught.value) and "\n" not in str(caught.value)

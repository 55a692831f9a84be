"""``init``: the one-time set-up of a machine for scheduled backups.

Standalone, ``init`` writes a TOML config file and the scheduled task names it with
``--config``. Inside a host app (``flask backups init``) the app's config is the configuration:
nothing is written, and the task is ``flask --app <app> backups run``.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tablettracker_backups.backup import create_backup, prepare_locations
from tablettracker_backups.errors import ConfigError
from tablettracker_backups.fsutil import atomic_write_bytes, ensure_private_dir
from tablettracker_backups.settings import Settings, default_backup_dir, parse_duration
from tablettracker_backups.snapshot import check_sqlite_file
from tablettracker_backups.storage.rclone import redact


@dataclass(frozen=True)
class InitResult:
    """What ``init`` set up."""

    #: The config file written; None inside a host app (its config is the configuration).
    config_path: Path | None
    folders: tuple[Path, ...]
    gitignored: tuple[Path, ...]
    backup_id: str
    interval: int
    task_command: str
    cron_line: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "config_path": None if self.config_path is None else str(self.config_path),
            "folders": [str(f) for f in self.folders],
            "gitignored": [str(g) for g in self.gitignored],
            "backup_id": self.backup_id,
            "interval": self.interval,
            "task_command": self.task_command,
            "cron_line": self.cron_line,
        }


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(settings: Settings, interval: int) -> str:
    """The TOML config file ``init`` writes."""
    lines = [
        "# tablettracker-backups configuration, written by `tablettracker-backups init`.",
        "# Read only when named: run --config THIS_FILE, or set BACKUPS_CONFIG to it.",
        "# Every key can also be set as an environment variable BACKUPS_<KEY>, which wins.",
        "[backups]",
        f"database = {_toml_string(str(settings.database))}",
        f"database_name = {_toml_string(settings.database_name)}",
        f"backup_dir = {_toml_string(str(settings.backup_dir))}",
    ]
    if settings.secondary_dir is not None:
        lines.append(f"secondary_dir = {_toml_string(str(settings.secondary_dir))}")
    lines += [
        f"interval = {interval}",
        f"compression = {_toml_string(settings.compression)}",
        f"keep_minutely = {settings.retention.minutely}",
        f"keep_hourly = {settings.retention.hourly}",
        f"keep_daily = {settings.retention.daily}",
        f"keep_weekly = {settings.retention.weekly}",
        f"keep_monthly = {settings.retention.monthly}",
        f"keep_yearly = {settings.retention.yearly}",
        f"keep_pre_restore = {settings.retention.pre_restore}",
    ]
    lines += _offsite_lines(settings)
    lines += _encryption_lines(settings)
    return "\n".join(lines) + "\n"


def _encryption_lines(settings: Settings) -> list[str]:
    """Whom backups are encrypted to: public keys only (the identity stays off the server)."""
    encryption = settings.encryption
    if encryption is None:
        return []
    return [
        "# Public keys only: the identity (AGE-SECRET-KEY-...) that decrypts stays OFF the server.",
        f"encrypt_to = [{', '.join(_toml_string(r) for r in encryption.recipients)}]",
        f"encrypt = {_toml_string(encryption.mode.value)}",
    ]


def _offsite_lines(settings: Settings) -> list[str]:
    """The offsite store's settings, never its keys: a scheduled task does not see the
    console's environment, but a config file is no place for a secret."""
    s3 = settings.s3
    if s3 is None:
        if settings.rclone is None:
            return []
        remote = settings.rclone.remote
        if redact(remote) != remote:
            # A connection string carries its parameters (passwords, keys): not in a file.
            return [
                "# BACKUPS_RCLONE_REMOTE is a connection string with parameters, which may hold",
                "# secrets: it is not written here. Name a remote configured with `rclone config`",
                "# instead, or set BACKUPS_RCLONE_REMOTE in the scheduled task's environment.",
            ]
        lines = [
            "# The remote's own settings and tokens stay in rclone's config file.",
            f"rclone_remote = {_toml_string(remote)}",
        ]
        if settings.rclone.config is not None:
            lines.append(f"rclone_config = {_toml_string(str(settings.rclone.config))}")
        return lines
    lines = [
        "# Offsite keys are not written here: put them in ~/.aws/credentials ([default]",
        "# aws_access_key_id / aws_secret_access_key, chmod 600) or in the task's environment",
        "# as BACKUPS_S3_ACCESS_KEY_ID / BACKUPS_S3_SECRET_ACCESS_KEY.",
        f"s3_bucket = {_toml_string(s3.bucket)}",
        f"s3_prefix = {_toml_string(s3.prefix)}",
        f"s3_addressing_style = {_toml_string(s3.addressing_style)}",
    ]
    for key, value in (
        ("s3_endpoint_url", s3.endpoint_url),
        ("s3_region", s3.region),
        ("s3_signature_version", s3.signature_version),
    ):
        if value is not None:
            lines.append(f"{key} = {_toml_string(value)}")
    if s3.checksum != "sha256":
        lines.append(f"s3_checksum = {_toml_string(s3.checksum)}")
    return lines


def git_root(path: Path) -> Path | None:
    """The enclosing git work tree of ``path``, if any."""
    for candidate in (path, *path.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def keep_out_of_git(folder: Path) -> bool:
    """Inside a git work tree, put a ``*`` .gitignore in ``folder``; True if it did."""
    if git_root(folder) is None:
        return False
    ignore = folder / ".gitignore"
    if not ignore.exists():
        atomic_write_bytes(ignore, b"# Backups never belong in git.\n*\n")
    return True


def interval_text(seconds: int) -> str:
    """``3600`` -> ``1h``: how ``--interval`` and the config file spell an interval."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return str(seconds)


def setup_command(settings: Settings) -> str:
    """The ``init`` command that sets up the scheduled run for these settings (it takes a
    verified backup and prints the task's exact command; standalone, it writes the config
    file first). Inside a host app that is ``flask backups init``: the app's config holds
    the rest."""
    if settings.under_flask:
        return settings.command_line("init")
    words = ["tablettracker-backups", "init", "--database", str(settings.database)]
    if settings.backup_dir != default_backup_dir(settings.database, settings.database_name):
        words += ["--backup-dir", str(settings.backup_dir)]
    if settings.secondary_dir is not None:
        words += ["--secondary-dir", str(settings.secondary_dir)]
    return shlex.join([*words, "--interval", interval_text(settings.interval)])


def standalone_task(config_path: Path) -> list[str]:
    """The scheduled task's command for a config file: this interpreter (the virtualenv's,
    so the task needs no activated environment) running ``run --config FILE``."""
    return [sys.executable, "-m", "tablettracker_backups", "run", "--config", str(config_path)]


def initialise(
    settings: Settings,
    *,
    task: Sequence[str],
    interval: str | int = "1h",
    config_path: Path | None = None,
    overwrite: bool = False,
) -> InitResult:
    """Create folders, take a first verified backup, then write the config file (none when
    ``config_path`` is None: a host app's config is the configuration). ``task`` is the
    scheduled task's command, as words.

    The config is written only once the first backup succeeded: a config for a setup that
    cannot back up would send the scheduled task into failing runs. Raises
    :class:`ConfigError` if the config file exists and ``overwrite`` is false, and the usual
    backup errors if the database cannot be backed up.
    """
    seconds = parse_duration("interval", interval)
    check_sqlite_file(settings.database)
    target = None if config_path is None else config_path.expanduser().absolute()
    if target is not None and target.exists() and not overwrite:
        raise ConfigError(f"config file {target} exists; pass --overwrite to replace it")
    if target is not None and target.is_dir():
        raise ConfigError(f"config file {target} is a folder")
    prepare_locations(settings)
    gitignored = tuple(f for f in settings.locations if keep_out_of_git(f))
    final = dataclasses.replace(settings, interval=seconds)
    result = create_backup(final, kind="manual", trigger="init")
    if target is not None:
        ensure_private_dir(target.parent)
        atomic_write_bytes(target, render_config(final, seconds).encode())
    command = shlex.join(task)
    log = settings.backup_dir / "run.log"
    schedule = "17 * * * *" if seconds < 86400 else "17 3 * * *"
    return InitResult(
        config_path=target,
        folders=settings.locations,
        gitignored=gitignored,
        backup_id=result.metadata.id,
        interval=seconds,
        task_command=command,
        cron_line=f"{schedule} {command} >> {shlex.quote(str(log))} 2>&1",
    )

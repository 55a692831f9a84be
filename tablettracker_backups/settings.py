"""Settings: one frozen, validated dataclass built from Flask config, environment or a TOML file.

Every source uses the same names. The Flask config key and the environment variable are
``BACKUPS_<NAME>``; in a TOML config file the name is lower-case without the prefix, under a
``[backups]`` table (``database = "..."``, ``keep_daily = 30``), except that the folders follow
the command-line options there (``backup_dir``, ``secondary_dir``; the older ``dir`` still
works). Which source wins, and where relative paths are anchored, is :mod:`.sources`; this
module turns the winning values into :class:`Settings` and refuses bad ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tablettracker_backups.errors import ConfigError, NoDatabaseConfigured
from tablettracker_backups.recipients import parse_recipients
from tablettracker_backups.states import EncryptMode

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

PREFIX = "BACKUPS_"
#: Longest accepted interval or timeout (a year): larger values are typos, and overflow dates.
MAX_DURATION = 366 * 86400
COMPRESSIONS = ("zstd", "gzip")
#: ``BACKUPS_FORMAT``: ``pages`` (format 2, the page store: each backup stores the pages that
#: changed) or ``files`` (format 1: each backup is one compressed file of the database).
BACKUP_FORMATS = ("pages", "files")
ADDRESSING_STYLES = ("auto", "path", "virtual")
S3_CHECKSUMS = ("sha256", "off")
#: ``problems``: failures, warnings and their recovery; ``all``: also each success.
NOTIFY_ON = ("problems", "all")
#: An Apprise URL: a scheme, ``://``, and no white space.
_NOTIFY_URL = re.compile(r"\A[a-z][a-z0-9+.-]*://\S+\Z", re.IGNORECASE)
#: Where one URL ends in ``BACKUPS_NOTIFY``: white space, or commas before the next ``scheme://``
#: (a comma inside a URL, as in ``?to=a@x.org,b@x.org``, is not followed by a scheme).
_NOTIFY_SPLIT = re.compile(r"\s+|,[\s,]*(?=[a-z][a-z0-9+.-]*://)", re.IGNORECASE)


@dataclass(frozen=True)
class RetentionPolicy:
    """How many calendar slots of each kind to keep (grandfather-father-son)."""

    hourly: int = 24
    daily: int = 30
    weekly: int = 12
    monthly: int = 24
    yearly: int = 10
    #: Pre-restore safety snapshots are kept by count, outside the calendar slots.
    pre_restore: int = 10
    #: Minutes (the newest backup of each): between the recent tier's every snapshot and the
    #: hours, so a day of one-second snapshots compacts to one a minute, then one an hour.
    minutely: int = 60


@dataclass(frozen=True)
class S3Settings:
    """Where offsite copies go. Credentials are never stored here unless given explicitly."""

    bucket: str
    endpoint_url: str | None = None
    prefix: str = "tablettracker-backups/"
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    addressing_style: str = "auto"
    signature_version: str | None = None
    multipart_threshold: int = 64 * 1024 * 1024
    multipart_chunksize: int = 16 * 1024 * 1024
    retention: RetentionPolicy | None = None
    verify_per_run: int = 2
    verify_period_days: int = 30
    #: ``sha256``: send SHA-256 checksums the provider checks; ``off``: for providers that
    #: reject them (uploads are then checked by reading them back).
    checksum: str = "sha256"


@dataclass(frozen=True)
class RcloneSettings:
    """Offsite copies on an rclone remote (``BACKUPS_RCLONE_REMOTE``): Google Drive, Dropbox,
    OneDrive, SFTP, B2 ..., configured by the user with ``rclone config``."""

    #: ``gdrive:tablettracker``: the remote and the folder the backups go in. A connection
    #: string may hold secrets: shown only through :func:`storage.rclone.redact`.
    remote: str = field(repr=False)
    #: rclone's config file; None: rclone's own default (``~/.config/rclone/rclone.conf``).
    config: Path | None = None
    retention: RetentionPolicy | None = None
    verify_per_run: int = 2
    verify_period_days: int = 30


#: Where offsite copies go: an S3 bucket or an rclone remote (never both).
OffsiteSettings = S3Settings | RcloneSettings


@dataclass(frozen=True)
class EncryptionSettings:
    """Whom backups are encrypted to (age X25519 public keys) and what is encrypted.

    Only public keys live here: the identity that decrypts is never part of the settings.
    """

    recipients: tuple[str, ...]
    mode: EncryptMode = EncryptMode.OFFSITE

    @property
    def local(self) -> bool:
        """The local folders hold encrypted files too (``BACKUPS_ENCRYPT=all``)."""
        return self.mode == EncryptMode.ALL


@dataclass(frozen=True)
class Settings:
    """Everything the core needs to know. Build with :func:`settings_from_mapping`."""

    database: Path
    backup_dir: Path
    secondary_dir: Path | None = None
    compression: str = "zstd"
    compression_level: int = 6
    #: ``BACKUPS_FORMAT`` as set (``pages`` or ``files``); None: a new folder gets ``pages``,
    #: a folder that already holds backups keeps the format of its newest.
    backup_format: str | None = None
    retention: RetentionPolicy = RetentionPolicy()
    #: Seconds between scheduled backups; ``run`` backs up when the newest is this old.
    interval: int = 3600
    #: Seconds to wait for another operation's lock before giving up.
    lock_timeout: float = 10.0
    #: Free-space thresholds: absolute bytes, or a fraction of the file system when < 1.
    disk_warning: float = 0.10
    disk_critical: float = 0.02
    #: How many of the newest backups ``health`` re-hashes on each call.
    health_checksum_count: int = 3
    #: Seconds a writer may hold the live database before restore gives up.
    busy_timeout: float = 10.0
    #: ``BACKUPS_CHECK_BUDGET``: seconds the full data checks (integrity, foreign keys, row
    #: counts) may take on a manual or write-triggered format 2 snapshot, estimated from the
    #: last measured check of this database; over it they wait for the scheduled run, the
    #: drill or a restore (see :mod:`.checks`). Scheduled backups are always checked.
    check_budget: float = 5.0
    s3: S3Settings | None = None
    rclone: RcloneSettings | None = None
    encryption: EncryptionSettings | None = None
    #: Seconds between write-triggered snapshots (``BACKUPS_SNAPSHOT_AFTER_WRITE``); None: off.
    snapshot_after_write: int | None = 1
    #: ``BACKUPS_SNAPSHOT_AFTER_WRITE`` was set. Unset, a folder whose newest backup is in
    #: format 1 (a whole copy each) snapshots at most every five minutes, not every second.
    snapshot_after_write_set: bool = False
    #: Seconds back from now in which every snapshot is kept (the recent tier), budget allowing;
    #: older ones compact to one a minute (``RetentionPolicy.minutely``), then the calendar.
    keep_recent: int = 600
    #: Bytes the recent tier may hold beyond the calendar slots; None: 10x the newest backup's
    #: stored size.
    recent_budget: int | None = None
    #: Apprise URLs notifications go to (they hold passwords and tokens: never shown unmasked).
    notify: tuple[str, ...] = field(default=(), repr=False)
    #: ``problems`` or ``all`` (see :data:`NOTIFY_ON`).
    notify_on: str = "problems"
    #: Send a weekly report (``BACKUPS_NOTIFY_WEEKLY``) to the notification targets.
    notify_weekly: bool = False
    #: ``run`` over a site snapshots its databases together, at one instant
    #: (``BACKUPS_COORDINATED``); a database whose own entry turns it off is backed up alone.
    coordinated: bool = False
    #: Dead-man ping base URL (healthchecks.io style); ``run`` pings it at start and end.
    ping_url: str | None = field(default=None, repr=False)
    #: A table that lost more than this fraction of its rows since the previous good backup
    #: is an anomaly (tables of at least :data:`anomaly.MIN_ROWS` rows).
    anomaly_drop: float = 0.20
    #: The database's name in its backup folder's identity (default: the file's stem).
    database_name: str = ""
    #: The command hints name: ``tablettracker-backups``, or ``flask backups`` under a host app
    #: (whose config then needs no options repeated).
    command: str = "tablettracker-backups"
    #: The TOML file the settings were read from, if any (hints then pass ``--config`` to it).
    config_file: Path | None = None
    #: What ``--database`` says to pick this database out of a site of named databases
    #: (``BACKUPS_DATABASES``): its name. None for a site of one (``BACKUPS_DATABASE``).
    selector: str | None = None
    #: Each setting that is not a default (and the folders), by lower-case key: its value as
    #: shown (secrets masked) and where it came from; ``status`` shows them, as
    #: ``git config --show-origin`` does. Filled in by :func:`.sources.resolve`.
    origins: Mapping[str, tuple[str, str]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.database_name:
            object.__setattr__(self, "database_name", default_database_name(self.database))

    @property
    def locations(self) -> tuple[Path, ...]:
        """The local backup folders, primary first."""
        if self.secondary_dir is None:
            return (self.backup_dir,)
        return (self.backup_dir, self.secondary_dir)

    @property
    def offsite(self) -> OffsiteSettings | None:
        """The offsite target (S3 or rclone), if one is configured."""
        return self.s3 if self.s3 is not None else self.rclone

    @property
    def state_dir(self) -> Path:
        """Where the lock, status file, alert log and audit log live (the primary folder)."""
        return self.backup_dir

    @property
    def under_flask(self) -> bool:
        """Whether these settings are a host app's (hints then say ``flask backups``)."""
        return self.command != "tablettracker-backups"

    def command_line(self, *words: str, where: bool = True) -> str:
        """The command to paste for ``words`` (``restore ID``), in the tool being used.

        Under a host app, ``flask backups ...``: its config says where everything is. The
        standalone tool repeats ``--config FILE`` when a file was read, else (with ``where``)
        the database and folder options, so the command works from any folder.
        """
        argv = [*shlex.split(self.command), *words]
        if self.selector is not None and "--database" not in words:
            argv += ["--database", self.selector]
        if self.under_flask or not where:
            return shlex.join(argv)
        if self.config_file is not None:
            return shlex.join([*argv, "--config", str(self.config_file)])
        if self.selector is not None:
            return shlex.join(argv)  # a site is read from a file or an app: never reached
        argv += ["--database", str(self.database), "--backup-dir", str(self.backup_dir)]
        if self.secondary_dir is not None:
            argv += ["--secondary-dir", str(self.secondary_dir)]
        return shlex.join(argv)


def default_database_name(database: Path) -> str:
    """The file's stem (``tablet_counter`` for ``tablet_counter.db``), or its name."""
    return database.stem or database.name or "database"


#: The folder beside the database that holds the default backup folders, one per database.
DEFAULT_BACKUPS_FOLDER = "backups"


def default_backup_dir(database: Path, name: str) -> Path:
    """``backups/<name>/`` beside the database: two databases in one folder get one each.

    (Earlier versions used ``backups/`` itself; :mod:`.sources` keeps using that folder where
    it already holds this database's backups.)
    """
    return database.parent / DEFAULT_BACKUPS_FOLDER / name


def validate_database_name(value: Any, *, what: str = "BACKUPS_DATABASE_NAME") -> str:
    """A database name for a backup folder's identity; raises :class:`ConfigError` naming
    ``what`` (the setting it came from).

    It becomes a folder name when several databases share one root, so no path separators,
    no control characters, not ``.`` or ``..``, at most 100 characters.
    """
    text = str(value).strip() if value is not None else ""
    if (
        not text
        or len(text) > 100
        or text in (".", "..")
        or any(ch in "/\\" or ord(ch) < 32 or ord(ch) == 127 for ch in text)
    ):
        raise ConfigError(
            f"{what} must be a short name without slashes or control "
            f"characters, not {str(value)[:60]!r}"
        )
    return text


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_duration(name: str, value: Any) -> int:
    """Seconds from ``3600``, ``"90m"``, ``"1h"``, ``"1d"``; raises :class:`ConfigError`."""
    if isinstance(value, bool):
        raise ConfigError(f"{PREFIX}{name.upper()} must be a duration like 1h or 1d, not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(
                f"{PREFIX}{name.upper()} must be a duration like 3600, 90m, 1h or 1d, not {value!r}"
            )
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{PREFIX}{name.upper()} must be positive, not {value!r}")
    if seconds > MAX_DURATION:
        raise ConfigError(f"{PREFIX}{name.upper()} must be at most a year, not {value!r}")
    return int(seconds)


#: Words that turn a duration setting off.
OFF_WORDS = frozenset({"off", "0", "false", "no", "none"})


def _optional_duration(name: str, value: Any) -> int | None:
    """A duration, or None for ``off`` (or ``0``/``false``); raises :class:`ConfigError`."""
    if value is False or (
        isinstance(value, int | float) and not isinstance(value, bool) and value == 0
    ):
        return None
    if isinstance(value, str) and value.strip().lower() in OFF_WORDS:
        return None
    return parse_duration(name, value)


def parse_space(name: str, value: Any) -> float:
    """Bytes from ``"500MB"``, or a fraction from ``"10%"``; raises :class:`ConfigError`."""
    if isinstance(value, bool):
        raise ConfigError(f"{PREFIX}{name.upper()} must be a size like 500MB or 10%")
    if isinstance(value, int | float):
        number = float(value)
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ConfigError(
                f"{PREFIX}{name.upper()} must be a size like 500MB or a percentage like 10%, "
                f"not {value!r}"
            )
        unit = (match.group(2) or "b").lower()
        number = float(match.group(1))
        if unit == "%":
            if number >= 100:
                raise ConfigError(f"{PREFIX}{name.upper()} must be below 100%, not {value!r}")
            return number / 100
        number *= _SIZE_UNITS[unit]
    if not math.isfinite(number):
        raise ConfigError(f"{PREFIX}{name.upper()} must be a size like 500MB or 10%")
    if number < 0:
        raise ConfigError(f"{PREFIX}{name.upper()} must not be negative")
    return number


def _int(name: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{PREFIX}{name.upper()} must be a whole number, not {value!r}")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{name.upper()} must be a whole number, not {value!r}") from exc
    if number < minimum:
        raise ConfigError(f"{PREFIX}{name.upper()} must be at least {minimum}, not {number}")
    return number


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{PREFIX}{name.upper()} must be a number of seconds, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{PREFIX}{name.upper()} must be a number of seconds, not {value!r}"
        ) from exc
    if not math.isfinite(number) or number > MAX_DURATION:
        raise ConfigError(f"{PREFIX}{name.upper()} must be a number of seconds, not {value!r}")
    if number < 0:
        raise ConfigError(f"{PREFIX}{name.upper()} must not be negative")
    return number


def _path(name: str, value: Any) -> Path:
    text = str(value).strip() if value is not None else ""
    if not text or "\x00" in text:
        raise ConfigError(f"{PREFIX}{name.upper()} must be a file system path, not {value!r}")
    return Path(text).expanduser().absolute()


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


#: Lower-case names understood by :func:`settings_from_mapping` (the core's own keys).
CORE_KEYS = frozenset(
    {
        "database",
        "database_name",
        "dir",
        "secondary_dir",
        "compression",
        "compression_level",
        "format",
        "keep_minutely",
        "keep_hourly",
        "keep_daily",
        "keep_weekly",
        "keep_monthly",
        "keep_yearly",
        "keep_pre_restore",
        "interval",
        "lock_timeout",
        "disk_warning",
        "disk_critical",
        "health_checksum_count",
        "busy_timeout",
        "check_budget",
        "snapshot_after_write",
        "keep_recent",
        "recent_budget",
        "s3_bucket",
        "s3_endpoint_url",
        "s3_prefix",
        "s3_region",
        "s3_access_key_id",
        "s3_secret_access_key",
        "s3_addressing_style",
        "s3_signature_version",
        "s3_multipart_threshold",
        "s3_multipart_chunksize",
        "s3_keep_minutely",
        "s3_keep_hourly",
        "s3_keep_daily",
        "s3_keep_weekly",
        "s3_keep_monthly",
        "s3_keep_yearly",
        "s3_keep_pre_restore",
        "s3_verify_per_run",
        "s3_verify_period_days",
        "s3_checksum",
        "rclone_remote",
        "rclone_config",
        "rclone_keep_minutely",
        "rclone_keep_hourly",
        "rclone_keep_daily",
        "rclone_keep_weekly",
        "rclone_keep_monthly",
        "rclone_keep_yearly",
        "rclone_keep_pre_restore",
        "rclone_verify_per_run",
        "rclone_verify_period_days",
        "encrypt_to",
        "encrypt",
        "notify",
        "notify_on",
        "notify_weekly",
        "coordinated",
        "ping_url",
        "anomaly_drop",
    }
)


def _retention(values: Mapping[str, Any], prefix: str, default: RetentionPolicy) -> RetentionPolicy:
    counts: dict[str, int] = {}
    for slot in ("minutely", "hourly", "daily", "weekly", "monthly", "yearly"):
        key = f"{prefix}keep_{slot}"
        if values.get(key) is not None:
            counts[slot] = _int(key, values[key])
    key = f"{prefix}keep_pre_restore"
    if values.get(key) is not None:
        counts["pre_restore"] = _int(key, values[key])
    return dataclasses.replace(default, **counts)


def _offsite_default(local: RetentionPolicy) -> RetentionPolicy:
    """The local counts, but no minute slots: an offsite copy is sent by the scheduled run,
    not after every write, and each minute kept there would be one more upload."""
    return dataclasses.replace(local, minutely=0)


def settings_from_mapping(values: Mapping[str, Any]) -> Settings:
    """Validate lower-case, prefix-less ``values`` into :class:`Settings`.

    ``None`` means "not set". Raises :class:`ConfigError` naming the first bad key.
    """
    unknown = sorted(set(values) - CORE_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown setting {PREFIX}{unknown[0].upper()}"
            + did_you_mean(unknown[0], sorted(CORE_KEYS), formatter=lambda k: PREFIX + k.upper())
        )
    if values.get("database") is None:
        raise NoDatabaseConfigured(
            "no database configured: set BACKUPS_DATABASE or `database` in the config file"
        )
    database = _path("database", values["database"])
    name = (
        validate_database_name(values["database_name"])
        if values.get("database_name") is not None
        else default_database_name(database)
    )
    backup_dir = (
        _path("dir", values["dir"])
        if values.get("dir") is not None
        else default_backup_dir(database, name)
    )
    secondary = (
        _path("secondary_dir", values["secondary_dir"])
        if _opt_str(values.get("secondary_dir"))
        else None
    )
    # realpath, so "x/../backups" or a symlink to the primary counts as the same folder: a
    # "second copy" in the primary folder would be no redundancy at all.
    if secondary is not None and os.path.realpath(secondary) == os.path.realpath(backup_dir):
        raise ConfigError("BACKUPS_SECONDARY_DIR must differ from BACKUPS_DIR")
    compression = str(values.get("compression") or "zstd").strip().lower()
    if compression not in COMPRESSIONS:
        raise ConfigError(f"BACKUPS_COMPRESSION must be one of {', '.join(COMPRESSIONS)}")
    # zstd 6 is the first level with lazy matching: on TabletTracker data its files are ~7%
    # smaller than level 3's and ~3% smaller than gzip -9's, at about 3x level 3's CPU, which the
    # worker threads spread over the cores (see bench/README.md).
    default_level = 6
    level = (
        _int("compression_level", values["compression_level"], minimum=1)
        if values.get("compression_level") is not None
        else default_level
    )
    if compression == "gzip" and level > 9:
        raise ConfigError("BACKUPS_COMPRESSION_LEVEL must be 1 to 9 for gzip")
    if compression == "zstd" and level > 22:
        raise ConfigError("BACKUPS_COMPRESSION_LEVEL must be 1 to 22 for zstd")
    backup_format = _opt_str(values.get("format"))
    if backup_format is not None:
        backup_format = backup_format.strip().lower()
        if backup_format not in BACKUP_FORMATS:
            raise ConfigError(f"BACKUPS_FORMAT must be one of {', '.join(BACKUP_FORMATS)}")
    retention = _retention(values, "", RetentionPolicy())
    kwargs: dict[str, Any] = {}
    if values.get("interval") is not None:
        kwargs["interval"] = parse_duration("interval", values["interval"])
    if values.get("lock_timeout") is not None:
        kwargs["lock_timeout"] = _float("lock_timeout", values["lock_timeout"])
    if values.get("busy_timeout") is not None:
        kwargs["busy_timeout"] = _float("busy_timeout", values["busy_timeout"])
    if values.get("check_budget") is not None:
        kwargs["check_budget"] = _float("check_budget", values["check_budget"])
    for key in ("disk_warning", "disk_critical"):
        if values.get(key) is not None:
            kwargs[key] = parse_space(key, values[key])
    if values.get("health_checksum_count") is not None:
        kwargs["health_checksum_count"] = _int(
            "health_checksum_count", values["health_checksum_count"]
        )
    kwargs["database_name"] = name
    kwargs.update(_notify_settings(values))
    if values.get("snapshot_after_write") is not None:
        kwargs["snapshot_after_write"] = _optional_duration(
            "snapshot_after_write", values["snapshot_after_write"]
        )
        kwargs["snapshot_after_write_set"] = True
    if values.get("keep_recent") is not None:
        kwargs["keep_recent"] = _optional_duration("keep_recent", values["keep_recent"]) or 0
    if values.get("recent_budget") is not None:
        budget = parse_space("recent_budget", values["recent_budget"])
        if 0 < budget < 1:
            raise ConfigError("BACKUPS_RECENT_BUDGET must be a size like 2GB, not a percentage")
        kwargs["recent_budget"] = int(budget)
    s3 = _s3_settings(values, retention)
    rclone = _rclone_settings(values, retention)
    if s3 is not None and rclone is not None:
        raise ConfigError(
            "set BACKUPS_S3_BUCKET or BACKUPS_RCLONE_REMOTE, not both: backups go to one "
            "offsite place"
        )
    encryption = _encryption_settings(values)
    if backup_format == "pages" and encryption is not None and encryption.local:
        raise ConfigError(
            "BACKUPS_FORMAT=pages does not encrypt local folders yet: with BACKUPS_ENCRYPT=all "
            "use BACKUPS_FORMAT=files"
        )
    if backup_format == "pages" and compression != "zstd":
        raise ConfigError(
            "BACKUPS_FORMAT=pages stores its packs with zstd: BACKUPS_COMPRESSION=gzip is "
            "for BACKUPS_FORMAT=files"
        )
    return Settings(
        database=database,
        backup_dir=backup_dir,
        secondary_dir=secondary,
        compression=compression,
        compression_level=level,
        backup_format=backup_format,
        retention=retention,
        s3=s3,
        rclone=rclone,
        encryption=encryption,
        **kwargs,
    )


def _encryption_settings(values: Mapping[str, Any]) -> EncryptionSettings | None:
    recipients = parse_recipients(values.get("encrypt_to"))
    mode_text = _opt_str(values.get("encrypt"))
    if not recipients:
        if mode_text is not None:
            raise ConfigError(
                f"BACKUPS_ENCRYPT={mode_text!r} needs BACKUPS_ENCRYPT_TO (an age1... public key; "
                "make one with: tablettracker-backups keygen)"
            )
        return None
    choices = ", ".join(m.value for m in EncryptMode)
    try:
        mode = EncryptMode((mode_text or EncryptMode.OFFSITE.value).lower())
    except ValueError as exc:
        raise ConfigError(f"BACKUPS_ENCRYPT must be one of {choices}, not {mode_text!r}") from exc
    return EncryptionSettings(recipients=recipients, mode=mode)


def split_notify_urls(value: Any) -> tuple[str, ...]:
    """The URLs in ``BACKUPS_NOTIFY``: a list, or one string separated by white space or commas.

    Raises :class:`ConfigError` for anything that is not ``scheme://...``; the message shows
    only the scheme, since the rest may hold a password.
    """
    if isinstance(value, str):
        parts = _NOTIFY_SPLIT.split(value.strip())
    elif isinstance(value, list | tuple):
        parts = [p for item in value for p in _NOTIFY_SPLIT.split(str(item).strip())]
    else:
        raise ConfigError("BACKUPS_NOTIFY must be Apprise URLs separated by spaces or commas")
    urls = tuple(p.strip().rstrip(",") for p in parts if p.strip().rstrip(","))
    for number, url in enumerate(urls, start=1):
        if not _NOTIFY_URL.match(url):
            shown = url.split("://", 1)[0][:20] if "://" in url else "no scheme://"
            raise ConfigError(
                f"BACKUPS_NOTIFY: URL {number} is not an Apprise URL like "
                f"mailtos://user:pass@example.com or json://host/path ({shown})"
            )
    return urls


#: What a yes/no setting may say (an environment variable is text; TOML has booleans).
_SWITCH = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def parse_switch(name: str, value: Any) -> bool:
    """On or off from a boolean, ``1``/``0``, ``true``/``false``, ``yes``/``no`` or
    ``on``/``off``; raises :class:`ConfigError`."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _SWITCH:
        raise ConfigError(f"{PREFIX}{name.upper()} must be on or off (true/false), not {value!r}")
    return _SWITCH[text]


def parse_fraction(name: str, value: Any) -> float:
    """A fraction from ``"20%"``, ``0.2`` or ``20`` (read as percent); raises ConfigError."""
    wrong = f"{PREFIX}{name.upper()} must be a percentage like 20% (or a fraction like 0.2)"
    if isinstance(value, bool):
        raise ConfigError(wrong)
    text = str(value).strip()
    percent = text.endswith("%")
    try:
        number = float(text[:-1] if percent else text)
    except ValueError as exc:
        raise ConfigError(f"{wrong}, not {value!r}") from exc
    if percent or number >= 1:
        number /= 100
    if not math.isfinite(number) or not 0 < number < 1:
        raise ConfigError(f"{wrong} between 0% and 100%, not {value!r}")
    return number


def _notify_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if values.get("notify") is not None:
        found["notify"] = split_notify_urls(values["notify"])
    if values.get("notify_on") is not None:
        notify_on = str(values["notify_on"]).strip().lower()
        if notify_on not in NOTIFY_ON:
            raise ConfigError(f"BACKUPS_NOTIFY_ON must be one of {', '.join(NOTIFY_ON)}")
        found["notify_on"] = notify_on
    if values.get("notify_weekly") is not None:
        found["notify_weekly"] = parse_switch("notify_weekly", values["notify_weekly"])
    if values.get("coordinated") is not None:
        found["coordinated"] = parse_switch("coordinated", values["coordinated"])
    ping = _opt_str(values.get("ping_url"))
    if ping is not None:
        if not re.match(r"\Ahttps?://[^/\s?#]+[^\s]*\Z", ping, re.IGNORECASE):
            raise ConfigError("BACKUPS_PING_URL must be an http:// or https:// URL")
        found["ping_url"] = ping.rstrip("/")
    if values.get("anomaly_drop") is not None:
        found["anomaly_drop"] = parse_fraction("anomaly_drop", values["anomaly_drop"])
    return found


def _s3_settings(values: Mapping[str, Any], local: RetentionPolicy) -> S3Settings | None:
    bucket = _opt_str(values.get("s3_bucket"))
    if bucket is None:
        others = [k for k in values if k.startswith("s3_") and _opt_str(values[k])]
        if "s3_endpoint_url" in others:
            raise ConfigError("BACKUPS_S3_ENDPOINT_URL is set but BACKUPS_S3_BUCKET is not")
        return None
    style = str(values.get("s3_addressing_style") or "auto").strip().lower()
    if style not in ADDRESSING_STYLES:
        raise ConfigError(
            f"BACKUPS_S3_ADDRESSING_STYLE must be one of {', '.join(ADDRESSING_STYLES)}"
        )
    prefix = str(values.get("s3_prefix") if values.get("s3_prefix") is not None else "")
    prefix = prefix.strip().strip("/")
    prefix = f"{prefix}/" if prefix else ""
    if values.get("s3_prefix") is None:
        prefix = "tablettracker-backups/"
    endpoint = _opt_str(values.get("s3_endpoint_url"))
    if endpoint is not None and not re.match(r"^https?://", endpoint):
        raise ConfigError("BACKUPS_S3_ENDPOINT_URL must start with http:// or https://")
    kwargs: dict[str, Any] = {}
    checksum = str(values.get("s3_checksum") or "sha256").strip().lower()
    if checksum not in S3_CHECKSUMS:
        raise ConfigError(f"BACKUPS_S3_CHECKSUM must be one of {', '.join(S3_CHECKSUMS)}")
    kwargs["checksum"] = checksum
    for key in ("s3_multipart_threshold", "s3_multipart_chunksize"):
        if values.get(key) is not None:
            size = int(parse_space(key, values[key]))
            if size < 5 * 1024 * 1024:
                raise ConfigError(f"{PREFIX}{key.upper()} must be at least 5MiB (an S3 limit)")
            kwargs[key[3:]] = size
    for key in ("s3_verify_per_run", "s3_verify_period_days"):
        if values.get(key) is not None:
            kwargs[key[3:]] = _int(key, values[key], minimum=1 if key.endswith("days") else 0)
    access_key = _opt_str(values.get("s3_access_key_id"))
    secret_key = _opt_str(values.get("s3_secret_access_key"))
    if (access_key is None) != (secret_key is None):
        raise ConfigError(
            "set both BACKUPS_S3_ACCESS_KEY_ID and BACKUPS_S3_SECRET_ACCESS_KEY, or neither "
            "(to use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an AWS profile)"
        )
    return S3Settings(
        bucket=bucket,
        endpoint_url=endpoint,
        prefix=prefix,
        region=_opt_str(values.get("s3_region")),
        access_key_id=access_key,
        secret_access_key=secret_key,
        addressing_style=style,
        signature_version=_opt_str(values.get("s3_signature_version")),
        retention=_retention(values, "s3_", _offsite_default(local)),
        **kwargs,
    )


def _rclone_settings(values: Mapping[str, Any], local: RetentionPolicy) -> RcloneSettings | None:
    remote = _opt_str(values.get("rclone_remote"))
    if remote is None:
        others = [k for k in values if k.startswith("rclone_") and _opt_str(values[k])]
        if others:
            raise ConfigError(
                f"{PREFIX}{others[0].upper()} is set but BACKUPS_RCLONE_REMOTE is not"
            )
        return None
    # A remote starting with "-" would reach rclone as an option; a newline splits a log line.
    if remote.startswith("-") or any(ch in remote for ch in "\0\r\n"):
        raise ConfigError(
            "BACKUPS_RCLONE_REMOTE must name an rclone remote and folder, "
            "for example gdrive:tablettracker"
        )
    config_text = _opt_str(values.get("rclone_config"))
    config: Path | None = None
    if config_text is not None:
        if "\0" in config_text:
            raise ConfigError("BACKUPS_RCLONE_CONFIG must be a path without NUL characters")
        config = Path(config_text).expanduser().absolute()
        try:
            found = config.is_file()
        except OSError as exc:  # a name too long, a folder we may not enter
            raise ConfigError(
                f"BACKUPS_RCLONE_CONFIG: cannot read {str(config)[:80]!r} ({exc.strerror})"
            ) from exc
        if not found:
            raise ConfigError(f"BACKUPS_RCLONE_CONFIG: no rclone config file at {config}")
    kwargs: dict[str, Any] = {}
    for key in ("rclone_verify_per_run", "rclone_verify_period_days"):
        if values.get(key) is not None:
            minimum = 1 if key.endswith("days") else 0
            kwargs[key[len("rclone_") :]] = _int(key, values[key], minimum=minimum)
    return RcloneSettings(
        remote=remote,
        config=config,
        retention=_retention(values, "rclone_", _offsite_default(local)),
        **kwargs,
    )


def values_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``BACKUPS_*`` environment variables this package knows, as lower-case names."""
    environ = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for key, value in environ.items():
        if key.startswith(PREFIX) and key[len(PREFIX) :].lower() in CORE_KEYS and value != "":
            found[key[len(PREFIX) :].lower()] = value
    return found


#: TOML keys named after the command-line options, and the key each stands for.
TOML_ALIASES = {"backup_dir": "dir"}
TOML_SECTION = "backups"
#: The TOML section of a site's databases: ``[databases.NAME]`` tables.
DATABASES_SECTION = "databases"


def values_from_toml(path: Path) -> dict[str, Any]:
    """Settings from a TOML file's ``[backups]`` table; raises :class:`ConfigError`.

    An unknown section or key is an error naming the nearest known one: a typo must not be
    silently ignored (a ``[backup]`` table would otherwise leave every setting at its default).
    """
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"config file {path} is a folder") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: not UTF-8 text") from exc
    for section, content in document.items():
        if section in (TOML_SECTION, DATABASES_SECTION):
            continue
        if isinstance(content, dict):
            raise ConfigError(
                f"config file {path}: unknown section [{section}]"
                + did_you_mean(section, [TOML_SECTION], f"[{TOML_SECTION}]")
            )
        raise ConfigError(
            f"config file {path}: {section!r} must be under a [{TOML_SECTION}] section"
        )
    table = document.get(TOML_SECTION, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{TOML_SECTION}] must be a table")
    known = sorted(CORE_KEYS | set(TOML_ALIASES))
    for key in sorted(table):
        if key not in CORE_KEYS and key not in TOML_ALIASES:
            raise ConfigError(
                f"config file {path}: unknown setting {key!r} in [{TOML_SECTION}]"
                + did_you_mean(key, known)
            )
    values = dict(table)
    for alias, key in TOML_ALIASES.items():
        if alias in values:
            if key in values and values[key] != values[alias]:
                raise ConfigError(
                    f"config file {path}: both {alias!r} and {key!r} are set; keep {alias!r}"
                )
            values[key] = values.pop(alias)
    if DATABASES_SECTION in document:
        values[DATABASES_SECTION] = _databases_table(path, document[DATABASES_SECTION])
    return values


def _databases_table(path: Path, table: Any) -> dict[str, Any]:
    """The ``[databases.NAME]`` tables (or ``NAME = "path"`` lines under ``[databases]``),
    each table's keys checked as the ``[backups]`` table's are and its aliases applied."""
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{DATABASES_SECTION}] must be a table")
    known = sorted(CORE_KEYS | set(TOML_ALIASES))
    found: dict[str, Any] = {}
    for name, entry in table.items():
        if not isinstance(entry, dict):
            found[name] = entry
            continue
        for key in sorted(entry):
            if key not in CORE_KEYS and key not in TOML_ALIASES:
                raise ConfigError(
                    f"config file {path}: unknown setting {key!r} in "
                    f"[{DATABASES_SECTION}.{name}]" + did_you_mean(key, known)
                )
        values = dict(entry)
        for alias, key in TOML_ALIASES.items():
            if alias in values:
                values[key] = values.pop(alias)
        found[name] = values
    return found


def did_you_mean(
    word: str,
    choices: list[str],
    shown: str | None = None,
    *,
    formatter: Callable[[str], str] = repr,
) -> str:
    """``"; did you mean 'keep_daily'?"`` for the nearest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {shown or formatter(close[0])}?"

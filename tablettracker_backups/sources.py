"""Where each setting comes from, which source wins, and where relative paths point.

One precedence for every face (the pages, ``flask backups``, the task URL, the standalone
command), highest first:

1. an explicit command-line option (``--backup-dir``);
2. the environment (``BACKUPS_DIR``);
3. the host app's config (under Flask) or the TOML file named by ``--config`` or
   ``BACKUPS_CONFIG`` (standalone; never a file found on its own);
4. the defaults.

Each effective value remembers its origin (:attr:`Settings.origins`), which ``status`` shows
as ``git config --show-origin`` does.

Relative paths are anchored where they were written, never at whatever folder a process
happens to start in (web workers and scheduled tasks start in different ones):

- in the app's config, inside the app's instance folder (``app.instance_path``); a leading
  ``instance/`` names that folder itself, so ``instance/tablet_counter.db`` is
  ``<instance folder>/tablet_counter.db`` whether the instance folder is the default
  ``<project>/instance`` or another one;
- in a TOML file, at the file's folder;
- on the command line, and in the standalone command's environment, at the current folder
  (a shell's own convention);
- in the environment of a host app, nowhere: refused at start-up, naming the absolute path
  it would mean from this process's folder.

A new setting is one line: its name in :data:`settings.CORE_KEYS` (and in
:data:`PATH_KEYS` if it is a path); precedence, origins and the unknown-key check follow.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePath
from typing import Any

from tablettracker_backups.errors import ConfigError, NoDatabaseConfigured
from tablettracker_backups.identity import holds_database
from tablettracker_backups.notifiers import mask_url
from tablettracker_backups.settings import (
    CORE_KEYS,
    DATABASES_SECTION,
    DEFAULT_BACKUPS_FOLDER,
    PREFIX,
    TOML_ALIASES,
    TOML_SECTION,
    Settings,
    did_you_mean,
    settings_from_mapping,
    split_notify_urls,
    validate_database_name,
    values_from_toml,
)
from tablettracker_backups.storage.rclone import redact

#: Settings that are file system paths (anchored as the module docstring says).
PATH_KEYS = frozenset({"database", "dir", "secondary_dir", "rclone_config"})
#: ``BACKUPS_*`` names read from the environment by the command line only, never settings.
ENVIRONMENT_ONLY = frozenset({"config", "identity_file"})
#: The command-line option of each setting that has one.
OPTIONS = {
    "database": "--database",
    "database_name": "--database-name",
    "dir": "--backup-dir",
    "secondary_dir": "--secondary-dir",
}
#: What the standalone command is called in hints; a host app's is :data:`FLASK_COMMAND`.
STANDALONE_COMMAND = "tablettracker-backups"
FLASK_COMMAND = "flask backups"


class OriginKind(str, Enum):
    """The kinds of source, highest precedence first."""

    OPTION = "command line"
    ENVIRONMENT = "environment"
    APP_CONFIG = "app config"
    CONFIG_FILE = "file"
    DEFAULT = "default"


@dataclass(frozen=True)
class Origin:
    """Where one value came from: the kind of source, the name it had there, which file."""

    kind: OriginKind
    #: How the key is spelled in that source: ``--backup-dir``, ``BACKUPS_DIR``, ``backup_dir``.
    name: str = ""
    #: The config file, for :attr:`OriginKind.CONFIG_FILE`.
    where: str = ""
    #: Why a default is what it is, when that is worth saying.
    note: str = ""

    def describe(self) -> str:
        """``environment BACKUPS_DIR``, ``file:/home/me/c.toml backup_dir``, ``default``."""
        note = f" ({self.note})" if self.note else ""
        if self.kind == OriginKind.CONFIG_FILE:
            return f"file:{self.where} {self.name}{note}"
        if self.kind == OriginKind.DEFAULT:
            return "default" + note
        return f"{self.kind.value} {self.name}{note}"


#: One source's values by lower-case key, each with its origin.
Layer = dict[str, tuple[Any, Origin]]

#: The key of a site's named databases (``BACKUPS_DATABASES``, ``[databases.NAME]``). In a
#: layer its value is ``{name: Layer}``: each database's own values (its file and any
#: per-database setting), anchored where they were written; :mod:`.site` resolves them.
DATABASES = "databases"


def database_entries(
    table: Any,
    *,
    kind: OriginKind,
    spelled: str,
    where: str = "",
    anchor: Callable[[str, Any], Any],
) -> dict[str, Layer]:
    """A site's databases as written (``{name: "path"}`` or ``{name: {"database": "path",
    "keep_daily": 7, ...}}``), each as a layer of its own values. ``spelled`` is how the
    table is named in messages and origins (``BACKUPS_DATABASES``, ``databases``); ``anchor``
    turns a relative path into the one it means there. Raises :class:`ConfigError`."""
    if not isinstance(table, Mapping) or not table:
        raise ConfigError(f"{spelled} must name at least one database: {{name: path}}")
    known = sorted(CORE_KEYS - {"database_name"} | set(TOML_ALIASES))
    found: dict[str, Layer] = {}
    for raw_name, entry in table.items():
        name = validate_database_name(raw_name, what=f"{spelled}: each database's name")
        here = f"{spelled}[{name!r}]" if kind == OriginKind.APP_CONFIG else f"{spelled}.{name}"
        values = dict(entry) if isinstance(entry, Mapping) else {"database": entry}
        layer: Layer = {}
        for key, value in values.items():
            key = TOML_ALIASES.get(str(key), str(key))
            if key == "database_name":
                raise ConfigError(
                    f"{here}: a site's database is named by its key, not database_name"
                )
            if key not in CORE_KEYS:
                raise ConfigError(f"unknown setting {key!r} in {here}" + did_you_mean(key, known))
            if value is None:
                continue
            shown = here if key == "database" and not isinstance(entry, Mapping) else ""
            origin = Origin(
                kind,
                shown or (f"{here}[{key!r}]" if kind == OriginKind.APP_CONFIG else f"{here}.{key}"),
                where,
            )
            layer[key] = (anchor(key, value), origin)
        if "database" not in layer:
            raise ConfigError(f'{here} names no database file (database = "path")')
        layer["database_name"] = (name, Origin(kind, f"{spelled} key {name!r}", where))
        found[name] = layer
    return found


def _anchored(key: str, value: Any, base: Path) -> Any:
    """A relative path value joined to ``base``; anything else unchanged."""
    if key not in PATH_KEYS or not isinstance(value, str | PurePath):
        return value
    text = str(value).strip()
    if not text or "\x00" in text:
        return value  # settings_from_mapping refuses it in one line
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else base / path)


def in_instance(value: str, instance_path: Path) -> Path:
    """Where a relative path in the app's config points: inside the instance folder, a leading
    ``instance`` component naming that folder itself (so ``instance/x.db`` is not doubled)."""
    parts = PurePath(value).parts
    if parts and parts[0] == "instance":
        return instance_path.joinpath(*parts[1:])
    return instance_path / value


def option_layer(values: Mapping[str, Any]) -> Layer:
    """Values given as command-line options (``None``: not given); paths from the current
    folder, as a shell means them."""
    return {
        key: (_anchored(key, value, Path.cwd()), Origin(OriginKind.OPTION, OPTIONS.get(key, key)))
        for key, value in values.items()
        if value is not None
    }


def environment_layer(environ: Mapping[str, str], *, relative: str = "cwd") -> Layer:
    """The ``BACKUPS_*`` variables that are settings; an empty one counts as unset.

    ``relative`` says what a relative path means: ``cwd`` (the standalone command, run from a
    shell), or ``refuse`` (a host app: its web workers and scheduled tasks start in different
    folders, so a relative path would mean a different file in each). Raises
    :class:`ConfigError` for a refused one.
    """
    layer: Layer = {}
    for variable, value in environ.items():
        key = variable[len(PREFIX) :].lower()
        if not variable.startswith(PREFIX) or key not in CORE_KEYS or value == "":
            continue
        if key in PATH_KEYS and relative == "refuse":
            path = Path(value.strip()).expanduser()
            if value.strip() and not path.is_absolute():
                raise ConfigError(
                    f"{variable}={value!r} in the environment is a relative path: from this "
                    f"process's folder it means {Path.cwd() / path}, and web workers and "
                    "scheduled tasks start in different folders; give the absolute path, or "
                    "set it in the app's config (relative paths there are inside the instance "
                    "folder)"
                )
        layer[key] = (_anchored(key, value, Path.cwd()), Origin(OriginKind.ENVIRONMENT, variable))
    return layer


def file_layer(path: Path) -> Layer:
    """The ``[backups]`` table of a TOML file; relative paths are relative to the file.

    Raises :class:`ConfigError` for a missing or bad file, or an unknown key.
    """
    path = path.expanduser().absolute()
    spelled = {value: alias for alias, value in TOML_ALIASES.items()}
    values = values_from_toml(path)
    layer: Layer = {
        key: (
            _anchored(key, value, path.parent),
            Origin(OriginKind.CONFIG_FILE, spelled.get(key, key), str(path)),
        )
        for key, value in values.items()
        if key != DATABASES
    }
    if DATABASES in values:
        layer[DATABASES] = (
            database_entries(
                values[DATABASES],
                kind=OriginKind.CONFIG_FILE,
                spelled=DATABASES_SECTION,
                where=str(path),
                anchor=lambda key, value: _anchored(key, value, path.parent),
            ),
            Origin(OriginKind.CONFIG_FILE, f"[{DATABASES_SECTION}]", str(path)),
        )
    return layer


def app_layer(
    config: Mapping[str, Any], *, instance_path: Path, other_keys: Iterable[str] = ()
) -> Layer:
    """The ``BACKUPS_*`` settings in a Flask app's config (``None`` values: unset).

    ``other_keys`` are the app-only keys the extension reads itself (``url_prefix`` ...).
    Raises :class:`ConfigError` for a ``BACKUPS_*`` key that is neither, with the nearest
    known one: ``BACKUPS_SECONDARY_DIRECTORY`` must not silently mean "no secondary folder".
    """
    others = frozenset(other_keys)
    known = sorted(CORE_KEYS | others | {DATABASES})
    layer: Layer = {}
    for name, value in config.items():
        if not isinstance(name, str) or not name.startswith(PREFIX):
            continue
        key = name[len(PREFIX) :].lower()
        if key in ENVIRONMENT_ONLY:
            raise ConfigError(
                f"{name} is read from the environment by the standalone command; in a Flask "
                "app, set the BACKUPS_* keys in the app's config instead"
            )
        if key not in CORE_KEYS and key not in others and key != DATABASES:
            raise ConfigError(
                f"unknown setting {name} in the app's config"
                + did_you_mean(key, known, formatter=lambda k: f"{PREFIX}{k.upper()}")
            )
        if key in others or value is None:
            continue
        if key == DATABASES:
            value = database_entries(
                value,
                kind=OriginKind.APP_CONFIG,
                spelled=name,
                anchor=lambda key, value: _in_instance_if_path(key, value, instance_path),
            )
        layer[key] = (
            _in_instance_if_path(key, value, instance_path),
            Origin(OriginKind.APP_CONFIG, name),
        )
    return layer


def _in_instance_if_path(key: str, value: Any, instance_path: Path) -> Any:
    """A relative path value of the app's config inside the instance folder; anything else
    unchanged."""
    if key in PATH_KEYS and isinstance(value, str | PurePath):
        text = str(value).strip()
        path = Path(text).expanduser()
        if text and "\x00" not in text and not path.is_absolute():
            return str(in_instance(text, instance_path))
    return value


def merge(*layers: Layer) -> Layer:
    """The layers in rising precedence: a later layer's value wins."""
    merged: Layer = {}
    for layer in layers:
        merged.update(layer)
    return merged


def resolve(
    merged: Layer,
    *,
    command: str = STANDALONE_COMMAND,
    missing_database: str | None = None,
) -> Settings:
    """Validate the merged values into :class:`Settings` that know each value's origin.

    The default backup folder is ``backups/<name>/`` beside the database, unless ``backups/``
    itself already holds this database's backups (what earlier versions used): that folder is
    kept, and its origin says so. Raises :class:`ConfigError` naming the key and where it was
    set; ``missing_database`` replaces the message when no database is configured.
    """
    if DATABASES in merged:
        raise ConfigError(
            f"this configuration names several databases ({PREFIX}DATABASES): pick one with "
            "--database NAME"
        )
    values = {key: value for key, (value, _origin) in merged.items()}
    try:
        settings = settings_from_mapping(values)
    except NoDatabaseConfigured as exc:
        if missing_database is None:
            raise
        raise NoDatabaseConfigured(missing_database) from exc
    except ConfigError as exc:
        raise ConfigError(_with_origin(str(exc), merged)) from exc
    origins = {key: origin for key, (_value, origin) in merged.items()}
    if "dir" not in merged:
        origins["dir"] = Origin(
            OriginKind.DEFAULT, note=f"{DEFAULT_BACKUPS_FOLDER}/<name>/ beside the database"
        )
        earlier = settings.database.parent / DEFAULT_BACKUPS_FOLDER
        if holds_database(earlier, settings):
            settings = dataclasses.replace(settings, backup_dir=earlier)
            origins["dir"] = Origin(
                OriginKind.DEFAULT,
                note=f"the folder this database's backups were already in; new set-ups use "
                f"{DEFAULT_BACKUPS_FOLDER}/<name>/",
            )
            if settings.secondary_dir is not None and os.path.realpath(
                settings.secondary_dir
            ) == os.path.realpath(earlier):
                raise ConfigError("BACKUPS_SECONDARY_DIR must differ from BACKUPS_DIR")
    config_files = {o.where for o in origins.values() if o.kind == OriginKind.CONFIG_FILE}
    shown = {key: shown_value(key, value) for key, (value, _origin) in merged.items()}
    shown["database"] = str(settings.database)
    shown["dir"] = str(settings.backup_dir)
    return dataclasses.replace(
        settings,
        command=command,
        config_file=Path(config_files.pop()) if config_files else None,
        origins={key: (shown[key], origin.describe()) for key, origin in origins.items()},
    )


def _with_origin(message: str, merged: Layer) -> str:
    """``message`` with where the key it names was set, when that is not obvious."""
    for key, (_value, origin) in sorted(merged.items(), key=lambda item: -len(item[0])):
        if f"{PREFIX}{key.upper()}" in message:
            return f"{message} (set in {origin.describe()})"
    return message


def effective_values(settings: Settings, merged: Layer) -> dict[str, Any]:
    """The merged values with the folders as resolved, for a process that rebuilds the same
    :class:`Settings` with :func:`settings_from_mapping` alone (a web job's worker)."""
    values = {key: value for key, (value, _origin) in merged.items()}
    values["database"] = str(settings.database)
    values["dir"] = str(settings.backup_dir)
    if settings.secondary_dir is not None:
        values["secondary_dir"] = str(settings.secondary_dir)
    return values


#: Where ``init`` wrote the config file before it had to be named, and where it still writes
#: it by default; it is read only when named (``--config`` or ``BACKUPS_CONFIG``).
def user_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/tablettracker-backups/config.toml`` (``~/.config/...``)."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tablettracker-backups" / "config.toml"


def unread_config_hint(environ: Mapping[str, str] | None = None) -> str | None:
    """The migration hint for a user config file that is no longer read on its own, or None
    when there is no such file."""
    path = user_config_path(environ).expanduser().absolute()
    if not path.is_file():
        return None
    return (
        f"{path} is no longer read unless named: pass --config {path}, or set BACKUPS_CONFIG={path}"
    )


def standalone_layers(
    *,
    config_file: Path | None = None,
    options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Layer:
    """The standalone command's sources merged: the named config file, then the environment,
    then the options."""
    environ = os.environ if environ is None else environ
    layers = [file_layer(config_file)] if config_file else []
    layers += [environment_layer(environ), option_layer(options or {})]
    return merge(*layers)


def load_settings(
    *,
    config_file: Path | None = None,
    options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    missing_database: str | None = None,
) -> Settings:
    """Settings for the standalone command (no Flask app): the named config file, then the
    environment, then the options. Raises :class:`ConfigError`."""
    merged = standalone_layers(config_file=config_file, options=options, environ=environ)
    if config_file is not None and "database" not in merged and DATABASES not in merged:
        path = config_file.expanduser().absolute()
        raise ConfigError(
            f'config file {path} names no database (database = "..." under '
            f"[{TOML_SECTION}]); pass --database PATH or set BACKUPS_DATABASE"
        )
    return resolve(merged, missing_database=missing_database)


def describe_origins(settings: Settings) -> list[tuple[str, str, str]]:
    """(``BACKUPS_KEY``, value as shown, origin) for the database, the folders and every
    setting that is not a default; secrets masked."""
    return [
        (f"{PREFIX}{key.upper()}", *settings.origins[key])
        for key in sorted(settings.origins, key=_order)
    ]


def _order(key: str) -> tuple[int, str]:
    first = ("database", "database_name", "dir", "secondary_dir")
    return (first.index(key), "") if key in first else (len(first), key)


def shown_value(key: str, value: Any) -> str:
    """A value as ``status`` shows it: passwords, tokens and keys masked."""
    if key in ("s3_access_key_id", "s3_secret_access_key"):
        return "***"
    if key == "notify":
        try:
            return " ".join(mask_url(url) for url in split_notify_urls(value))
        except ConfigError:
            return "***"
    if key == "ping_url":
        return mask_url(str(value))
    if key == "rclone_remote":
        return redact(str(value))  # a connection string's parameters may hold keys
    if isinstance(value, list | tuple):
        return " ".join(map(str, value))
    return str(value)

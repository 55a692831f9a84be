"""A site: the databases one installation protects, each with its own :class:`Settings`.

``BACKUPS_DATABASE`` (or ``database`` in the ``[backups]`` table) is a site of one, resolved
exactly as before. ``BACKUPS_DATABASES = {"tablets": "instance/tablet_counter.db", "audit":
"instance/audit.db"}`` in the app's config, or ``[databases.NAME]`` tables in a TOML file, is
a site of named databases. Each member is resolved from the same merged layers as a site of
one (so ``status`` still says where each value came from), with:

- its name (the key) as ``BACKUPS_DATABASE_NAME``, validated the same way;
- its own values from its entry (``{"database": "...", "keep_daily": 7}`` or
  ``[databases.audit]`` with ``keep_daily = 7``) over the site-wide ones of the app's config
  or the file, but under the environment and the command line (the one precedence);
- its own namespace under each site-wide root: ``<BACKUPS_DIR>/<name>/`` (by default
  ``backups/<name>/`` beside its file), ``<BACKUPS_SECONDARY_DIR>/<name>/``,
  ``<BACKUPS_S3_PREFIX><name>/`` and ``<BACKUPS_RCLONE_REMOTE>/<name>``. A folder or prefix
  set in the database's own entry is its own, used as written.

Two members that would share a file, a folder or an offsite place are refused here, at
start-up: a backup of one must never land among the other's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tablettracker_backups.errors import ConfigError
from tablettracker_backups.settings import PREFIX, Settings
from tablettracker_backups.sources import (
    DATABASES,
    STANDALONE_COMMAND,
    Layer,
    Origin,
    OriginKind,
    resolve,
)
from tablettracker_backups.storage.rclone import redact

#: The site-wide settings that are a root: each database gets its own place under them.
NAMESPACED = ("dir", "secondary_dir", "s3_prefix", "rclone_remote")
#: Sources above the app's config and the config file: their site-wide value beats a
#: database's own entry, as they beat everything written in those two.
ABOVE_ENTRIES = frozenset({OriginKind.ENVIRONMENT, OriginKind.OPTION})
#: The offsite prefix when none is set (as :func:`settings._s3_settings` defaults it).
DEFAULT_S3_PREFIX = "tablettracker-backups/"


@dataclass(frozen=True)
class Site:
    """The databases of one installation, in the order they were configured."""

    databases: tuple[Settings, ...]
    #: Configured by name (``BACKUPS_DATABASES``) and reported one section per database;
    #: False for ``BACKUPS_DATABASE``, and for one database picked out of a site.
    named: bool = False
    #: Each database's merged layer (for a web job's worker to rebuild its settings).
    layers: tuple[Layer, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def of(cls, settings: Settings, layer: Layer | None = None) -> Site:
        """A site of one."""
        return cls((settings,), layers=(layer,) if layer is not None else ())

    @property
    def names(self) -> tuple[str, ...]:
        """Each database's name, in order."""
        return tuple(s.database_name for s in self.databases)

    def one(self) -> Settings:
        """The site's only database; raises :class:`ConfigError` listing the names when it
        has several (a command that works on one database needs ``--database NAME``)."""
        if len(self.databases) == 1:
            return self.databases[0]
        raise ConfigError(
            f"this site has {len(self.databases)} databases ({', '.join(self.names)}) and this "
            "command works on one: pick it with --database NAME"
        )

    def pick(self, value: str | os.PathLike[str]) -> Site:
        """The database ``value`` names (its name, else its file's path), as a site of one.
        Raises :class:`ConfigError` listing the names when it is neither."""
        text = str(value)
        for index, settings in enumerate(self.databases):
            if settings.database_name == text:
                return self._only(index)
        real = os.path.realpath(Path(text).expanduser())
        for index, settings in enumerate(self.databases):
            if os.path.realpath(settings.database) == real:
                return self._only(index)
        raise ConfigError(
            f"--database {text}: neither the name nor the file of a database of this site "
            f"(its databases: {', '.join(self.names)})"
        )

    def _only(self, index: int) -> Site:
        layers = (self.layers[index],) if self.layers else ()
        return Site((self.databases[index],), layers=layers)


def build_site(
    merged: Layer, *, command: str = STANDALONE_COMMAND, missing_database: str | None = None
) -> Site:
    """The site the merged layers describe (see the module docstring). Raises
    :class:`ConfigError` naming the key and where it was set."""
    if DATABASES not in merged:
        return Site.of(resolve(merged, command=command, missing_database=missing_database), merged)
    entries, table_origin = merged[DATABASES]
    base = {key: item for key, item in merged.items() if key != DATABASES}
    for key in ("database", "database_name"):
        if key in base:
            raise ConfigError(
                f"set {PREFIX}DATABASE or {PREFIX}DATABASES, not both ({PREFIX}{key.upper()} "
                f"in {base[key][1].describe()}, {PREFIX}DATABASES in {table_origin.describe()})"
            )
    members: list[Settings] = []
    layers: list[Layer] = []
    for name, own in entries.items():
        layer = member_layer(base, own, name)
        settings = resolve(layer, command=command)
        members.append(dataclasses.replace(settings, selector=name))
        layers.append(layer)
    refuse_shared_places(members)
    return Site(tuple(members), named=True, layers=tuple(layers))


def member_layer(base: Layer, own: Layer, name: str) -> Layer:
    """One database's merged values: the site-wide ones (roots namespaced), its own entry's
    over those of the app's config or the file, its name."""
    layer: Layer = {}
    for key, (value, origin) in base.items():
        if key in own and origin.kind not in ABOVE_ENTRIES:
            continue
        layer[key] = namespaced(key, value, origin, name)
    for key, item in own.items():
        layer.setdefault(key, item)
    if "s3_bucket" in layer and "s3_prefix" not in layer:
        layer["s3_prefix"] = (
            f"{DEFAULT_S3_PREFIX}{name}/",
            Origin(OriginKind.DEFAULT, note=f"{DEFAULT_S3_PREFIX}<name>/"),
        )
    return layer


def namespaced(key: str, value: object, origin: Origin, name: str) -> tuple[object, Origin]:
    """A site-wide root turned into this database's place under it; other values as they
    are."""
    text = str(value).strip() if value is not None else ""
    if key not in NAMESPACED or (not text and key != "s3_prefix"):
        return value, origin
    noted = dataclasses.replace(origin, note=f"the site's root, + {name}")
    if key in ("dir", "secondary_dir"):
        return os.path.join(text, name), noted
    if key == "s3_prefix":
        stem = text.strip("/")
        return (f"{stem}/{name}/" if stem else f"{name}/"), noted
    return (text + name if text.endswith((":", "/")) else f"{text}/{name}"), noted


def refuse_shared_places(members: Sequence[Settings]) -> None:
    """Raise :class:`ConfigError` when two databases share a file, a backup folder or an
    offsite place: one's backups would land among the other's."""
    seen: dict[str, str] = {}

    def claim(place: str, shown: str, name: str) -> None:
        other = seen.setdefault(place, name)
        if other != name:
            raise ConfigError(f"databases {other!r} and {name!r} share {shown}: give each its own")

    for settings in members:
        name = settings.database_name
        claim(os.path.realpath(settings.database), f"the file {settings.database}", name)
        for folder in settings.locations:
            claim(os.path.realpath(folder), f"the backup folder {folder}", name)
        if settings.s3 is not None:
            place = f"s3://{settings.s3.bucket}/{settings.s3.prefix}"
            claim(f"{settings.s3.endpoint_url} {place}", f"the offsite place {place}", name)
        if settings.rclone is not None:
            remote = settings.rclone.remote
            claim(f"rclone {remote}", f"the rclone remote {redact(remote)}", name)

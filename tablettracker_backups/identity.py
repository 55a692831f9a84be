"""Which database a backup folder belongs to: ``database.json``, written when first used.

One folder holds the backups of one database. Two databases in one folder (a copied config, or
the ``backup_dir`` that ``init`` wrote carrying over to another app) would mix their backups:
the other database's backup becomes "newest", fills every retention slot, and this database's
own backups are pruned. So the first backup, run or prune records the database's name and
path in every local folder, and later ones refuse another database with one line naming both.

On-disk layout, and why it is ready for several databases: a folder with ``database.json`` at
its top is one database's *namespace* (its ``<id>.db.zst`` / ``<id>.json`` pairs, status,
audit log and lock sit beside it, as in every earlier version). A root shared by several
databases is a folder of such namespaces, ``<root>/<name>/``; nothing inside a namespace
refers to its parent, so today's folder joins a root by being moved there, unchanged.
Folders written by older versions have no ``database.json``: the first use adopts them when
their newest backup came from this database (same path or same name), and nothing is moved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tablettracker_backups import layout
from tablettracker_backups.errors import (
    BackupError,
    IdentityError,
    MetadataError,
    StorageError,
)
from tablettracker_backups.fsutil import atomic_write_bytes
from tablettracker_backups.metadata import (
    MAX_METADATA_BYTES,
    REGULAR_KINDS,
    BackupMetadata,
    parse_utc,
    utc_iso,
)
from tablettracker_backups.settings import Settings, default_database_name
from tablettracker_backups.store import BackupStore
from tablettracker_backups.version import __version__

logger = logging.getLogger(__name__)

IDENTITY_FILE = layout.IDENTITY_KEY
IDENTITY_VERSION = 1


@dataclass(frozen=True)
class DatabaseIdentity:
    """The database a backup folder belongs to."""

    name: str
    path: str
    recorded_at: datetime

    def describe(self) -> str:
        """``'tablet_counter' (/home/me/instance/tablet_counter.db)``."""
        return f"{self.name!r} ({self.path})"

    def to_json(self) -> str:
        """The file's text."""
        document = {
            "version": IDENTITY_VERSION,
            "name": self.name,
            "path": self.path,
            "recorded_at": utc_iso(self.recorded_at),
            "tool_version": __version__,
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"


def configured_identity(settings: Settings) -> DatabaseIdentity:
    """The identity of the database ``settings`` names, as it would be recorded now."""
    return DatabaseIdentity(
        settings.database_name, str(settings.database), datetime.now(timezone.utc)
    )


def read_identity(folder: Path) -> DatabaseIdentity | None:
    """The recorded identity of ``folder``; ``None`` when none is recorded.

    Raises :class:`StorageError` when the file exists but cannot be read or understood: a
    damaged record must not be taken for "not claimed yet" and silently overwritten.
    """
    path = folder / IDENTITY_FILE
    try:
        text = path.read_bytes()[:MAX_METADATA_BYTES]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
        name, where = document["name"], document["path"]
        if not isinstance(name, str) or not isinstance(where, str) or not name:
            raise ValueError("name and path must be strings")
        recorded = parse_utc(document.get("recorded_at"), "recorded_at")
    except (ValueError, KeyError, TypeError, MetadataError) as exc:
        raise StorageError(
            f"{path} is damaged ({exc}); move it aside to let the configured database claim "
            "the folder"
        ) from exc
    return DatabaseIdentity(name, where, recorded)


def same_database(recorded: DatabaseIdentity, settings: Settings) -> bool:
    """Whether ``recorded`` names the configured database: same name and same file."""
    if recorded.name != settings.database_name:
        return False
    if recorded.path == str(settings.database):
        return True
    return os.path.realpath(recorded.path) == os.path.realpath(settings.database)


def mismatch_message(folder: Path, recorded: DatabaseIdentity, settings: Settings) -> str:
    """The one line that refuses another database, naming both and the way out."""
    current = configured_identity(settings)
    return (
        f"backup folder {folder} belongs to database {recorded.describe()}, not "
        f"{current.describe()}; use another backup folder, or if this database was moved or "
        f"renamed on purpose: {adopt_command(settings)}"
    )


def holds_database(folder: Path, settings: Settings) -> bool:
    """Whether ``folder`` already holds the backups of the database ``settings`` names.

    Yes when its ``database.json`` has this database's name or file (a moved database is then
    refused with the ``adopt`` hint, not handed an empty folder), or, for a folder from a
    version before ``database.json``, when its newest backup came from this database. A
    record that cannot be read counts as yes: whoever uses the folder is told what is wrong.
    Reads only.
    """
    if not (folder / IDENTITY_FILE).exists() and not folder.is_dir():
        return False
    try:
        recorded = read_identity(folder)
    except StorageError:
        return True
    if recorded is not None:
        return recorded.name == settings.database_name or same_database(recorded, settings)
    here = dataclasses.replace(settings, backup_dir=folder, secondary_dir=None)
    newest = _newest_source(BackupStore(here), "primary")
    return newest is not None and _same_source(newest, settings)


def adopt_command(settings: Settings) -> str:
    """The one documented way to hand a folder to a moved or renamed database, in the tool
    being used (``flask backups adopt`` under a host app, whose config names the database)."""
    if settings.under_flask or settings.selector is not None:
        return settings.command_line("adopt")  # the config (and --database NAME) name it
    words = settings.command_line("adopt", where=False)
    return f"{words} --database {shlex.quote(str(settings.database))}"


def check_folders(settings: Settings) -> None:
    """Raise :class:`IdentityError` when a local folder belongs to another database.

    Reads only; a folder without a record passes (see :func:`claim_folders`).
    """
    for folder in settings.locations:
        if not folder.is_dir():
            continue  # a folder that is away has no record to disagree with (disk findings say so)
        recorded = read_identity(folder)
        if recorded is not None and not same_database(recorded, settings):
            raise IdentityError(mismatch_message(folder, recorded, settings))


def claim_folders(settings: Settings) -> None:
    """Check every existing local folder belongs to the configured database, and record it
    where nothing is recorded yet. Called under the operation lock by backup, run and prune.

    Raises :class:`IdentityError` for a folder of another database (including an unrecorded
    folder from an older version whose newest backup came from another database), and
    :class:`StorageError` when the primary folder's record cannot be written.
    """
    for location, folder in zip(("primary", "secondary"), settings.locations, strict=False):
        if not folder.is_dir():
            continue
        recorded = read_identity(folder)
        if recorded is not None:
            if not same_database(recorded, settings):
                raise IdentityError(mismatch_message(folder, recorded, settings))
            continue
        _refuse_foreign_legacy(folder, location, settings)
        try:
            _write(folder, configured_identity(settings))
        except StorageError:
            if location == "primary":
                raise
            # The secondary's own trouble is reported where its copies are written.
            logger.warning("could not record the database's identity in %s", folder)


def adopt_folders(settings: Settings) -> list[tuple[Path, DatabaseIdentity | None]]:
    """Hand every local folder to the configured database (after a deliberate move or
    rename); returns each folder with the identity it had before. The caller holds the lock."""
    changed = []
    for folder in settings.locations:
        if not folder.is_dir():
            continue
        try:
            before = read_identity(folder)
        except StorageError:
            before = None  # a damaged record is exactly what adopting replaces
        _write(folder, configured_identity(settings))
        changed.append((folder, before))
    if not changed:
        raise StorageError(f"no backup folder at {' or '.join(str(f) for f in settings.locations)}")
    return changed


def _write(folder: Path, identity: DatabaseIdentity) -> None:
    atomic_write_bytes(folder / IDENTITY_FILE, identity.to_json().encode())
    logger.info("backup folder %s belongs to database %s", folder, identity.describe())


def _refuse_foreign_legacy(folder: Path, location: str, settings: Settings) -> None:
    """An older version's folder: adopt it only if its newest backup is of this database."""
    newest = _newest_source(BackupStore(settings), location)
    if newest is None or _same_source(newest, settings):
        return
    other = DatabaseIdentity(
        default_database_name(Path(newest.source.path)), newest.source.path, newest.created_at
    )
    raise IdentityError(mismatch_message(folder, other, settings))


def _same_source(meta: BackupMetadata, settings: Settings) -> bool:
    """Whether a backup was taken of the configured database (same file, or same name)."""
    same_path = os.path.realpath(meta.source.path) == os.path.realpath(settings.database)
    return same_path or default_database_name(Path(meta.source.path)) == settings.database_name


def _newest_source(store: BackupStore, location: str) -> BackupMetadata | None:
    """The metadata of the newest readable regular backup in one folder (any, if none)."""
    fallback: BackupMetadata | None = None
    for backup_id in store.ids():
        try:
            meta = store.read_metadata(location, backup_id)
        except BackupError:
            continue
        if meta.kind in REGULAR_KINDS:
            return meta
        fallback = fallback or meta
    return fallback

"""Writing a backup out as a plain SQLite file: what the owner can hold, whatever the format.

``export ID --to FILE`` builds the database a backup holds (a version 1 file decompressed, a
version 2 snapshot built from its pages), checked exactly as a restore checks it (the bytes hash
to what the backup recorded), and commits it at ``FILE`` (temporary name beside it, fsync,
rename), optionally zstd-compressed (``zstd -d FILE`` gives the database back). The live
database is never touched, and an existing file is never overwritten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tablettracker_backups.compression import compress_file
from tablettracker_backups.encryption import Identity
from tablettracker_backups.errors import StorageError
from tablettracker_backups.fsutil import check_writable_dir, commit, remove_quietly, temp_path
from tablettracker_backups.sound_copy import extract_sound_copy, resolve_backup
from tablettracker_backups.store import BackupStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exported:
    """A backup written out."""

    id: str
    path: Path
    #: Bytes of the database, and of the file written (the same unless compressed).
    raw_size: int
    size: int
    raw_sha256: str
    #: SHA-256 of the file written.
    sha256: str
    compressed: bool
    #: The copy it was built from (``primary``, ``secondary``, ``offsite``).
    location: str
    #: Copies passed over on the way (damaged, missing), one line each.
    notes: tuple[str, ...] = ()


def export_backup(
    store: BackupStore,
    backup_id: str,
    dest: Path,
    *,
    compress: bool = False,
    identity: Identity | None = None,
) -> Exported:
    """Write backup ``backup_id`` (an id, or ``latest``) to the new file ``dest``.

    Raises :class:`StorageError` when ``dest`` exists or its folder cannot be written,
    :class:`BackupNotFound`, and :class:`RestoreError` when no copy is sound (what
    :func:`.sound_copy.extract_sound_copy` raises); ``dest`` is not created then.
    """
    dest = dest.expanduser().absolute()
    if dest.exists() or dest.is_symlink():
        raise StorageError(f"{dest} already exists; export writes a new file, never over one")
    check_writable_dir(dest.parent, parents=False)
    backup_id = resolve_backup(store, backup_id).id
    notes: list[str] = []
    built, location, meta = extract_sound_copy(
        store, backup_id, notes, identity, None, scratch_dir=dest.parent
    )
    packed = temp_path(dest.parent, dest.name)
    try:
        if compress:
            level = store.settings.compression_level
            result = compress_file(built, packed, algorithm="zstd", level=min(level, 22))
            commit(packed, dest)
            size, sha256 = result.stored_size, result.sha256
        else:
            commit(built, dest)
            size, sha256 = meta.raw_size, meta.raw_sha256
    finally:
        remove_quietly(built)
        remove_quietly(packed)
    logger.info("exported backup %s to %s (%d bytes)", backup_id, dest, size)
    return Exported(
        backup_id,
        dest,
        meta.raw_size,
        size,
        meta.raw_sha256,
        sha256,
        compress,
        location,
        tuple(notes),
    )

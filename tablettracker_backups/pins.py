"""Pinned backups: a backup a person wants kept ("before the migration") stays out of
retention until it is unpinned. The pin and the label live in the backup's state document, in
every folder (beside its manifest, which is never rewritten), so they travel with the backup
(a copied folder)."""

from __future__ import annotations

import dataclasses
import logging

from tablettracker_backups import audit
from tablettracker_backups.errors import BackupError, MetadataError, StorageError
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import BackupState, validate_backup_id, validate_label
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupInfo, BackupStore

logger = logging.getLogger(__name__)


def set_pin(
    settings: Settings,
    backup_id: str,
    *,
    pinned: bool,
    label: str | None = None,
    clear_label: bool = False,
    actor: str = "cli",
) -> BackupInfo:
    """Pin or unpin a backup (and set or clear its label); returns it as listed afterwards.

    ``label`` replaces the label; ``None`` leaves it alone unless ``clear_label``.
    Rewrites the metadata in every folder that has a readable copy, under the operation lock.
    Raises :class:`InvalidBackupId`, :class:`BackupNotFound`, :class:`MetadataError` (bad
    label, or no copy's metadata could be read), :class:`LockedError` or :class:`StorageError`.
    """
    validate_backup_id(backup_id)
    new_label = validate_label(label)
    store = BackupStore(settings)
    store.require_folder()
    with operation_lock(settings):
        written = write_pin(
            store, backup_id, pinned=pinned, label=new_label, clear_label=clear_label
        )
        after = store.get(backup_id)
    verb = "pinned" if pinned else "unpinned"
    message = f"{verb} backup {backup_id}" + (f" ({after.label})" if after.label else "")
    try:
        audit.record(
            settings,
            action="pin" if pinned else "unpin",
            actor=actor,
            ok=True,
            message=message,
            details={"id": backup_id, "label": after.label, "locations": written},
        )
    except StorageError as exc:
        logger.warning("could not write the audit log entry for %s: %s", message, exc)
    return after


def write_pin(
    store: BackupStore,
    backup_id: str,
    *,
    pinned: bool,
    label: str | None = None,
    clear_label: bool = False,
) -> list[str]:
    """Record the pin (and label) in every folder with a readable copy of the metadata;
    returns those folders. The caller holds the operation lock.

    Raises :class:`BackupNotFound` or :class:`MetadataError` (no copy's metadata readable).
    """
    info = store.get(backup_id)
    written = []
    for location in store.locations:
        try:
            meta = store.read_metadata(location, backup_id)
        except BackupError:
            continue  # missing or damaged here; run rebuilds it from the rewritten copy
        state = dataclasses.replace(BackupState.of(meta), pinned=pinned)
        if label is not None or clear_label:
            state = dataclasses.replace(state, label=label)
        store.write_state(location, state)
        written.append(location)
    if not written:
        raise MetadataError(f"backup {info.id} has no readable metadata to pin")
    return written

"""Choosing a backup and getting a sound copy of it: the first step of a restore and a preview.

``latest`` is the newest good regular backup; a backup known only offsite is found there. A
sound copy is one whose stored bytes hash to what its metadata says, decompressed into a scratch
file: the primary copy first, then the secondary, then the offsite copy, each one passed over
noted in words.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from tablettracker_backups.checks import record_check, verification_after
from tablettracker_backups.encryption import Identity
from tablettracker_backups.errors import (
    AgeIdentityError,
    BackupNotFound,
    MetadataError,
    OffsiteError,
    RestoreError,
    StorageError,
    VerificationError,
)
from tablettracker_backups.formats import format_of
from tablettracker_backups.fsutil import ensure_private_dir, remove_quietly, temp_path
from tablettracker_backups.metadata import (
    PAGES_VERSION,
    REGULAR_KINDS,
    BackupMetadata,
    validate_backup_id,
)
from tablettracker_backups.offsite.client import OffsiteStore
from tablettracker_backups.progress import StageProgress
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import CopyStatus
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.store import BackupInfo, BackupStore, CopyState

logger = logging.getLogger(__name__)


def resolve_backup(store: BackupStore, backup_id: str) -> BackupInfo:
    """The backup named by ``backup_id``, or for ``latest`` the newest good regular backup
    (never a pre-restore safety snapshot, never one of damaged data).

    Raises :class:`InvalidBackupId`, :class:`BackupNotFound`, or :class:`RestoreError` when no
    copy's metadata can be read.
    """
    try:
        info = store.latest() if backup_id == "latest" else store.get(validate_backup_id(backup_id))
    except BackupNotFound as missing:
        # No local copy at all: the offsite store, when configured, is the last place to look.
        info = _offsite_info(store.settings, backup_id, missing)
    if info.metadata is None:
        raise RestoreError(
            f"backup {info.id} cannot be restored: no copy has readable metadata "
            f"({'; '.join(info.problems) or 'unknown problem'})"
        )
    return info


def _offsite_info(settings: Settings, backup_id: str, missing: BackupNotFound) -> BackupInfo:
    """The backup as the offsite store has it; re-raises ``missing`` when there is none."""
    if settings.offsite is None:
        raise missing
    try:
        offsite = OffsiteStore.from_settings(settings)
        listed = offsite.complete_ids()
        if backup_id == "latest":
            meta = _newest_good_offsite(offsite, listed)
            if meta is None:
                raise missing
        elif backup_id not in listed:
            raise missing
        else:
            meta = offsite.read_metadata(backup_id)
    except (OffsiteError, MetadataError) as exc:
        raise BackupNotFound(f"{missing}; the offsite store could not help: {exc}") from exc
    return BackupInfo(
        id=meta.id,
        created_at=meta.created_at,
        metadata=meta,
        copies=(CopyState("offsite", CopyStatus.OK),),
        verified=meta.verification.ok,
    )


def _newest_good_offsite(offsite: OffsiteStore, listed: list[str]) -> BackupMetadata | None:
    """``latest`` among offsite backups (newest first): a regular one of undamaged data."""
    for candidate in listed:
        try:
            meta = offsite.read_metadata(candidate)
        except MetadataError:
            continue
        if meta.kind in REGULAR_KINDS and not meta.source_damaged and meta.verification.ok:
            return meta
    return None


def extract_sound_copy(
    store: BackupStore,
    backup_id: str,
    notes: list[str],
    identity: Identity | None,
    progress: StageProgress | None,
    *,
    use_offsite: bool = True,
    scratch_dir: Path | None = None,
) -> tuple[Path, str, BackupMetadata]:
    """Decompress and check copies, primary first, then (``use_offsite``) the offsite copy,
    until one is sound: its bytes hash to what its metadata says.

    A snapshot filed before its full checks ran gets them here, on the built database, and
    their findings are recorded in that copy's state document (the metadata returned has
    them: a snapshot they find damaged comes back ``source_damaged``).

    Returns (scratch file, location, that copy's metadata); the caller removes the scratch
    file, written in ``scratch_dir`` (default: the copy's own folder). ``notes`` gets one line
    per copy passed over. Raises :class:`RestoreError` when no copy is sound,
    :class:`AgeIdentityError` when an encrypted local copy cannot be opened (a missing or
    wrong key is not a damaged copy); nothing outside the backup folders has been touched then.
    """
    # Copies that could not be checked for lack of space or I/O trouble are not "unsound".
    unchecked = 0
    for location, folder in store.locations.items():
        try:
            meta = store.read_metadata(location, backup_id)
        except BackupNotFound:
            notes.append(f"{location} copy is missing")
            continue
        except (MetadataError, StorageError) as exc:
            notes.append(f"{location} copy skipped: {exc}")
            continue
        scratch = temp_path(scratch_dir or folder, f"{backup_id}.restore.db")
        done = 0

        def on_bytes(size: int, total: int = meta.raw_size) -> None:
            nonlocal done
            done += size
            if progress is not None:
                progress("verify", done, total)

        try:
            # Not full: equal SHA-256s prove the bytes; the data checks are verify's job,
            # except for a snapshot filed before its full checks ran: they run here, on the
            # built database, before anything is written from it.
            found = format_of(meta).extract(
                LocalStore(folder),
                meta,
                scratch,
                scratch=folder,
                identity=identity,
                progress=on_bytes,
                full=False,
            )
        except (VerificationError, StorageError) as exc:
            unchecked += isinstance(exc, StorageError)
            notes.append(f"{location} copy skipped: {exc}")
            logger.warning("restore of %s: %s copy is not usable: %s", backup_id, location, exc)
            continue
        if found is not None and not meta.checked:
            verification = verification_after(
                meta, ok=True, at=datetime.now(timezone.utc), check=found
            )
            meta = record_check(store, location, meta, verification, found)
        return scratch, location, meta
    offsite = (
        _extract_offsite_copy(store, backup_id, notes, identity, progress, scratch_dir)
        if use_offsite
        else None
    )
    if offsite is not None:
        return offsite
    if unchecked and unchecked == len(notes):
        raise RestoreError(
            f"could not check backup {backup_id} (no room or I/O trouble; the backup itself "
            "was not found damaged); nothing was changed (" + "; ".join(notes) + ")"
        )
    raise RestoreError(
        f"no sound copy of backup {backup_id}; nothing was changed ("
        + "; ".join(notes or ["no copies"])
        + ")"
    )


def _extract_offsite_copy(
    store: BackupStore,
    backup_id: str,
    notes: list[str],
    identity: Identity | None,
    progress: StageProgress | None,
    scratch_dir: Path | None,
) -> tuple[Path, str, BackupMetadata] | None:
    """The last fallback: download the offsite copy and check it like a local one.

    Returns ``None`` (and notes why in ``notes``) when there is no usable offsite copy,
    including an encrypted one that ``identity`` (missing or another key) cannot open.
    """
    settings = store.settings
    if settings.offsite is None:
        return None
    folder = scratch_dir or settings.backup_dir
    ensure_private_dir(folder)
    scratch = temp_path(folder, f"{backup_id}.restore.db")
    done = 0
    total = 1

    def on_bytes(size: int) -> None:
        nonlocal done
        done += size
        if progress is not None:
            progress("download", done, total)

    try:
        offsite = OffsiteStore.from_settings(settings)
        wanted = offsite.read_metadata(backup_id)
        # A format 2 copy reports the database's bytes as it is built and checked.
        paged = wanted.format_version == PAGES_VERSION
        total = max(wanted.raw_size if paged else wanted.stored_size, 1)
        meta = offsite.fetch_verified(backup_id, scratch, identity=identity, progress=on_bytes)
    except (
        VerificationError,
        MetadataError,
        BackupNotFound,
        OffsiteError,
        StorageError,
        AgeIdentityError,
    ) as exc:
        remove_quietly(scratch)
        notes.append(f"offsite copy skipped: {exc}")
        logger.warning("restore of %s: the offsite copy is not usable: %s", backup_id, exc)
        return None
    notes.append("restored from the offsite copy")
    return scratch, "offsite", meta

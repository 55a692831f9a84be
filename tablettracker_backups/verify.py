"""Verifying stored backups: is each copy faithful, and do its data checks agree?

A full check of one copy decompresses it to a temporary file (checking the stored SHA-256 as it
reads) and compares the raw SHA-256: equal hashes mean the copy is exactly the snapshot. Then
``integrity_check``, ``foreign_key_check``, row counts and the schema fingerprint run again and
must give what the backup recorded (a backup of damaged data is a faithful copy of it).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tablettracker_backups import notify
from tablettracker_backups.checks import record_check, verification_after
from tablettracker_backups.encryption import (
    Identity,
    check_sealed,
    wrong_identity,
)
from tablettracker_backups.errors import (
    BackupNotFound,
    MetadataError,
    StorageError,
    VerificationError,
)
from tablettracker_backups.extract import ByteProgress
from tablettracker_backups.formats import format_of
from tablettracker_backups.fsutil import remove_quietly, temp_path
from tablettracker_backups.keys import record_drill
from tablettracker_backups.metadata import BackupMetadata
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import DatabaseCheck
from tablettracker_backups.states import CheckDepth
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.store import BackupStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CopyVerification:
    """The result of fully checking one copy of a backup."""

    location: str
    ok: bool
    error: str | None = None
    #: ``sealed`` when an encrypted copy was checked without its identity (ciphertext only).
    depth: CheckDepth = CheckDepth.FULL
    #: Why an encrypted copy got only the ``sealed`` check although an identity was given.
    note: str | None = None


@dataclass(frozen=True)
class VerifyResult:
    """The result of verifying every copy of one backup."""

    id: str
    copies: tuple[CopyVerification, ...]

    @property
    def ok(self) -> bool:
        """At least one copy passed, and none was found damaged."""
        return bool(self.copies) and all(c.ok for c in self.copies)

    @property
    def usable(self) -> bool:
        """At least one copy passed (a restore can use it)."""
        return any(c.ok for c in self.copies)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "ok": self.ok,
            "copies": [dataclasses.asdict(c) for c in self.copies],
        }


def verify_copy(
    store: BackupStore,
    location: str,
    backup_id: str,
    *,
    identity: Identity | None = None,
    progress: ByteProgress | None = None,
) -> CopyVerification:
    """Fully check one local copy; never raises for a damaged copy, only reports it.

    An encrypted copy without ``identity`` gets the check that needs no key (age header, size
    and SHA-256 of the ciphertext: ``depth`` is ``sealed``); so does one that ``identity``
    cannot open (a rotated-out key), with a ``note`` naming the keys it needs.
    """
    try:
        metadata = store.read_metadata(location, backup_id)
    except (MetadataError, StorageError) as exc:
        return CopyVerification(location, False, str(exc))
    data_file = store.data_path_for(location, metadata)
    info = metadata.encryption
    if info is not None and (identity is None or not identity.opens(info)):
        note = None
        if identity is not None:
            note = str(wrong_identity(f"{location} copy of {backup_id}", info, identity))
        return _verify_sealed(store, location, metadata, data_file, note)
    scratch = temp_path(store.locations[location], f"{backup_id}.verify.db")
    found: DatabaseCheck | None = None
    try:
        found = format_of(metadata).extract(
            LocalStore(store.locations[location]),
            metadata,
            scratch,
            scratch=store.locations[location],
            identity=identity,
            progress=progress,
        )
    except VerificationError as exc:
        result = CopyVerification(location, False, str(exc))
    except StorageError as exc:
        # Could not even write the scratch file: say so, but do not mark the copy bad.
        return CopyVerification(location, False, f"could not check: {exc}")
    else:
        result = CopyVerification(location, True)
        if metadata.encryption is not None:
            record_drill(store.settings, "local", backup_id)
    finally:
        remove_quietly(scratch)
    _record(store, location, metadata, result, found)
    return result


def _verify_sealed(
    store: BackupStore,
    location: str,
    metadata: BackupMetadata,
    data_file: Path,
    note: str | None,
) -> CopyVerification:
    sealed = CheckDepth.SEALED
    try:
        check_sealed(data_file, metadata, label=f"{location} copy of {metadata.id}")
    except VerificationError as exc:
        result = CopyVerification(location, False, str(exc), sealed, note)
    except StorageError as exc:
        return CopyVerification(location, False, f"could not check: {exc}", sealed, note)
    else:
        result = CopyVerification(location, True, None, sealed, note)
    _record(store, location, metadata, result)
    return result


def _record(
    store: BackupStore,
    location: str,
    metadata: BackupMetadata,
    result: CopyVerification,
    found: DatabaseCheck | None = None,
) -> None:
    """Note the outcome in the copy's state document (its manifest is never rewritten):
    which checks ran now, and for a snapshot filed unchecked what its full checks found."""
    verification = verification_after(
        metadata,
        ok=result.ok,
        at=datetime.now(timezone.utc),
        check=found,
        error=result.error,
    )
    record_check(store, location, metadata, verification, found)


def verify_backup(
    store: BackupStore,
    backup_id: str,
    *,
    identity: Identity | None = None,
    progress: ByteProgress | None = None,
    notify_owner: bool = True,
) -> VerifyResult:
    """Fully check every local copy of ``backup_id`` (``identity`` opens encrypted copies);
    raises :class:`BackupNotFound`, or :class:`AgeIdentityError` for an identity that does not
    fit.

    With ``notify_owner`` a failed check is sent to the owner; callers that check many backups
    or report in a message of their own (``run``, ``verify --all``) pass False.
    """
    info = store.get(backup_id)
    results = []
    for copy in info.copies:
        if copy.state == "missing":
            results.append(CopyVerification(copy.location, False, "copy is missing"))
            continue
        results.append(
            verify_copy(store, copy.location, backup_id, identity=identity, progress=progress)
        )
    if not results:
        raise BackupNotFound(f"no backup with id {backup_id}")
    result = VerifyResult(backup_id, tuple(results))
    if notify_owner and not result.ok:
        notify.send(store.settings, [failure_event(store.settings, result)])
    return result


def failure_event(settings: Settings, result: VerifyResult) -> notify.Event:
    """The owner's news of a verification that found damaged copies."""
    failed = [(c.location, c.error or "failed") for c in result.copies if not c.ok]
    return notify.verify_failed(settings, result.id, failed, usable=result.usable)

"""Verifying stored backups: is each copy faithful, and do its data checks agree?

A full check of one copy decompresses it to a temporary file (checking the stored SHA-256 as it
reads) and compares the raw SHA-256: equal hashes mean the copy is exactly the snapshot. Then
``integrity_check``, ``foreign_key_check``, row counts and the schema fingerprint run again and
must give what the backup recorded (a backup of damaged data is a faithful copy of it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tablettracker_backups import notify
from tablettracker_backups.compression import decompress_file
from tablettracker_backups.encryption import (
    Identity,
    check_sealed,
    decrypt_file,
    wrong_identity,
)
from tablettracker_backups.errors import (
    BackupError,
    BackupNotFound,
    DatabaseError,
    MetadataError,
    StorageError,
    VerificationError,
)
from tablettracker_backups.fsutil import remove_quietly, temp_path
from tablettracker_backups.keys import record_drill
from tablettracker_backups.metadata import BackupMetadata, BackupState, Verification
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import (
    UNREADABLE_SCHEMA,
    DatabaseCheck,
    check_sqlite_file,
    inspect_database,
)
from tablettracker_backups.states import CheckDepth
from tablettracker_backups.store import BackupStore

logger = logging.getLogger(__name__)

ByteProgress = Callable[[int], None]


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


def extract_verified(
    data_file: Path,
    metadata: BackupMetadata,
    dest: Path,
    *,
    identity: Identity | None = None,
    progress: ByteProgress | None = None,
    full: bool = True,
    shown: str | None = None,
) -> None:
    """Decompress ``data_file`` into the new file ``dest`` and check it against ``metadata``.

    Always: the stored file's size and SHA-256 and the decompressed database's SHA-256 must
    match the metadata, so ``dest`` holds exactly the bytes of the snapshot (a faithful copy),
    and it must open as SQLite. With ``full`` (``verify``, the drill) the data checks run again
    too (integrity_check, foreign_key_check, row counts, schema) and must agree with what the
    backup recorded: a snapshot of damaged data stays a faithful copy of it. Without ``full``
    (restore) they are skipped: identical bytes cannot give other answers, and on a large
    database they are most of the time a restore would spend before it writes.

    An encrypted ``data_file`` is first decrypted with ``identity`` into a scratch file beside
    ``dest`` (removed afterwards, whatever happens). On failure ``dest`` is removed and
    :class:`VerificationError` says what did not match, or :class:`AgeIdentityError` that the
    identity is missing or not a recipient. Errors name ``shown`` (default: the data file's
    name), never a scratch file.
    """
    shown = data_file.name if shown is None else shown
    plain = temp_path(dest.parent, f"{metadata.id}.decrypted")
    try:
        if not data_file.is_file():
            raise VerificationError("data file is missing")
        size = data_file.stat().st_size
        if size != metadata.stored_size:
            raise VerificationError(
                f"data file is {size} bytes, metadata says {metadata.stored_size}"
            )
        source = data_file
        if metadata.encryption is not None:
            decrypt_file(data_file, plain, metadata, identity, label=f"backup {metadata.id}")
            source = plain
        stream = decompress_file(
            source,
            dest,
            algorithm=metadata.compression,
            expected_sha256=metadata.content_sha256,
            progress=progress,
            shown=shown,
        )
        if stream.raw_sha256 != metadata.raw_sha256:
            raise VerificationError("decompressed database's SHA-256 does not match its metadata")
        unreadable = metadata.schema_fingerprint == UNREADABLE_SCHEMA
        if full:
            _compare_findings(_inspect(dest, unreadable=unreadable), metadata)
        elif not unreadable:
            try:
                check_sqlite_file(dest)
            except DatabaseError as exc:
                raise VerificationError(str(exc)) from None
    except BaseException:
        remove_quietly(dest)
        raise
    finally:
        remove_quietly(plain)


def _inspect(path: Path, *, unreadable: bool) -> DatabaseCheck | None:
    """The full data check; ``None`` for a kept safety snapshot that never opened as SQLite."""
    try:
        return inspect_database(path, full=True, parallel=True)
    except VerificationError:
        if unreadable:
            return None
        raise


def _compare_findings(check: DatabaseCheck | None, metadata: BackupMetadata) -> None:
    """The data checks of a faithful copy must give what the backup recorded."""
    recorded = metadata.findings
    if check is None:
        return
    if check.integrity != "ok" and not recorded.source_damaged:
        raise VerificationError(f"integrity_check failed: {check.integrity}")
    if check.foreign_key_violations != recorded.foreign_key_violations:
        raise VerificationError(
            f"foreign_key_check found {check.foreign_key_violations} violations; the backup "
            f"recorded {recorded.foreign_key_violations}"
        )
    if check.row_counts != metadata.row_counts:
        raise VerificationError("row counts differ from its metadata")
    if check.schema_fingerprint != metadata.schema_fingerprint:
        raise VerificationError("schema differs from its metadata")


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
    try:
        extract_verified(data_file, metadata, scratch, identity=identity, progress=progress)
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
    _record(store, location, metadata, result)
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
    store: BackupStore, location: str, metadata: BackupMetadata, result: CopyVerification
) -> None:
    """Note the outcome in the copy's state document (its manifest is never rewritten)."""
    previous = metadata.verification
    state = dataclasses.replace(
        BackupState.of(metadata),
        verification=Verification(
            ok=result.ok,
            verified_at=datetime.now(timezone.utc),
            integrity_check="ok" if result.ok else previous.integrity_check,
            foreign_key_violations=previous.foreign_key_violations,
            error=result.error,
        ),
    )
    try:
        store.write_state(location, state)
    except BackupError as exc:
        logger.warning("could not record verification of %s: %s", metadata.id, exc)


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

"""Verifying stored backups: checksum, decompression, integrity, row counts, schema.

A full check of one copy decompresses it to a temporary file (checking the stored SHA-256 as it
reads), compares the raw SHA-256, runs ``integrity_check`` and ``foreign_key_check``, and
compares row counts and the schema fingerprint with the metadata.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tablettracker_backups.compression import decompress_file
from tablettracker_backups.errors import (
    BackupError,
    BackupNotFound,
    MetadataError,
    StorageError,
    VerificationError,
)
from tablettracker_backups.fsutil import remove_quietly, temp_path
from tablettracker_backups.metadata import BackupMetadata, Verification
from tablettracker_backups.snapshot import inspect_database
from tablettracker_backups.store import BackupStore

logger = logging.getLogger(__name__)

ByteProgress = Callable[[int], None]


@dataclass(frozen=True)
class CopyVerification:
    """The result of fully checking one copy of a backup."""

    location: str
    ok: bool
    error: str | None = None


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
    progress: ByteProgress | None = None,
) -> None:
    """Decompress ``data_file`` into the new file ``dest`` and check it against ``metadata``.

    On success ``dest`` is a verified copy of the database; on failure it is removed and
    :class:`VerificationError` says what did not match.
    """
    try:
        if not data_file.is_file():
            raise VerificationError("data file is missing")
        size = data_file.stat().st_size
        if size != metadata.stored_size:
            raise VerificationError(
                f"data file is {size} bytes, metadata says {metadata.stored_size}"
            )
        stream = decompress_file(
            data_file,
            dest,
            algorithm=metadata.compression,
            expected_sha256=metadata.sha256,
            progress=progress,
        )
        if stream.raw_sha256 != metadata.raw_sha256:
            raise VerificationError("decompressed database's SHA-256 does not match its metadata")
        check = inspect_database(dest, parallel=True)
        if check.integrity != "ok":
            raise VerificationError(f"integrity_check failed: {check.integrity}")
        if check.foreign_key_violations:
            raise VerificationError(
                f"foreign_key_check found {check.foreign_key_violations} violations"
            )
        if check.row_counts != metadata.row_counts:
            raise VerificationError("row counts differ from its metadata")
        if check.schema_fingerprint != metadata.schema_fingerprint:
            raise VerificationError("schema differs from its metadata")
    except BaseException:
        remove_quietly(dest)
        raise


def verify_copy(
    store: BackupStore,
    location: str,
    backup_id: str,
    *,
    progress: ByteProgress | None = None,
) -> CopyVerification:
    """Fully check one local copy; never raises for a damaged copy, only reports it."""
    try:
        metadata = store.read_metadata(location, backup_id)
    except (MetadataError, StorageError) as exc:
        return CopyVerification(location, False, str(exc))
    data_file = store.data_path(location, backup_id, metadata.compression)
    scratch = temp_path(store.locations[location], f"{backup_id}.verify.db")
    try:
        extract_verified(data_file, metadata, scratch, progress=progress)
    except VerificationError as exc:
        result = CopyVerification(location, False, str(exc))
    except StorageError as exc:
        # Could not even write the scratch file: say so, but do not mark the copy bad.
        return CopyVerification(location, False, f"could not check: {exc}")
    else:
        result = CopyVerification(location, True)
    finally:
        remove_quietly(scratch)
    _record(store, location, metadata, result)
    return result


def _record(
    store: BackupStore, location: str, metadata: BackupMetadata, result: CopyVerification
) -> None:
    previous = metadata.verification
    updated = dataclasses.replace(
        metadata,
        verification=Verification(
            ok=result.ok,
            verified_at=datetime.now(timezone.utc),
            integrity_check="ok" if result.ok else previous.integrity_check,
            foreign_key_violations=previous.foreign_key_violations,
            error=result.error,
        ),
    )
    try:
        store.write_metadata(location, updated)
    except BackupError as exc:
        logger.warning("could not record verification of %s: %s", metadata.id, exc)


def verify_backup(
    store: BackupStore,
    backup_id: str,
    *,
    progress: ByteProgress | None = None,
) -> VerifyResult:
    """Fully check every local copy of ``backup_id``; raises :class:`BackupNotFound`."""
    info = store.get(backup_id)
    results = []
    for copy in info.copies:
        if copy.state == "missing":
            results.append(CopyVerification(copy.location, False, "copy is missing"))
            continue
        results.append(verify_copy(store, copy.location, backup_id, progress=progress))
    if not results:
        raise BackupNotFound(f"no backup with id {backup_id}")
    return VerifyResult(backup_id, tuple(results))

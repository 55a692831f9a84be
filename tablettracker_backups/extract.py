"""A stored copy turned back into the database it holds, and proven to be it.

One path for every reader of a backup's data (restore, the preview, verify, the offsite
fetch): decrypt if sealed, decompress, and compare the SHA-256 of the stored bytes and of the
database they give with what the manifest recorded, so the result is exactly the snapshot;
with ``full``, the data checks run again and must agree too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tablettracker_backups.compression import decompress_file
from tablettracker_backups.encryption import Identity, decrypt_file
from tablettracker_backups.errors import DatabaseError, VerificationError
from tablettracker_backups.fsutil import remove_quietly, temp_path
from tablettracker_backups.metadata import BackupMetadata
from tablettracker_backups.snapshot import (
    UNREADABLE_SCHEMA,
    DatabaseCheck,
    check_sqlite_file,
    inspect_database,
)

ByteProgress = Callable[[int], None]


def extract_verified(
    data_file: Path,
    metadata: BackupMetadata,
    dest: Path,
    *,
    identity: Identity | None = None,
    progress: ByteProgress | None = None,
    full: bool = True,
    shown: str | None = None,
) -> DatabaseCheck | None:
    """Decompress ``data_file`` into the new file ``dest`` and check it against ``metadata``;
    the data checks' outcome when they ran (see :func:`check_built`).

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
        return check_built(dest, metadata, full=full)
    except BaseException:
        remove_quietly(dest)
        raise
    finally:
        remove_quietly(plain)


def check_built(dest: Path, metadata: BackupMetadata, *, full: bool) -> DatabaseCheck | None:
    """The checks of a database built from a backup whose bytes already matched: it opens as
    SQLite, and with ``full`` the data checks give what the backup recorded (see
    :func:`extract_verified`). A snapshot filed before its full checks ran
    (``metadata.checked`` false) gets them here whatever ``full`` says, before anyone uses
    it: they only have its schema to agree with, and what they find is returned for the
    caller to record. Returns the data checks' outcome when they ran. Raises
    :class:`VerificationError`."""
    unreadable = metadata.schema_fingerprint == UNREADABLE_SCHEMA
    if not metadata.checked:
        found = _inspect(dest, unreadable=unreadable)
        if found is not None and found.schema_fingerprint != metadata.schema_fingerprint:
            raise VerificationError("schema differs from its metadata")
        return found
    found = None
    if full:
        found = _inspect(dest, unreadable=unreadable)
        _compare_findings(found, metadata)
    elif not unreadable:
        try:
            check_sqlite_file(dest)
        except DatabaseError as exc:
            raise VerificationError(str(exc)) from exc
    return found


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

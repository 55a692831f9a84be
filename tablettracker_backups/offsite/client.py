"""The offsite store: backups in one place off this machine, an S3-compatible bucket (AWS S3,
B2, R2, Wasabi, MinIO, SeaweedFS ..., through boto3) or any rclone remote (Google Drive,
Dropbox, OneDrive, SFTP ..., through Debian's ``rclone``).

This module knows backups; the bytes go through an :class:`~.storage.base.ObjectStore`
(:class:`~.storage.s3.S3Store` or :class:`~.storage.rclone.RcloneStore`), which stores every
object atomically and checks what it holds against the SHA-256 it was given (the provider's
own checksum where there is one, else a read-back). Keys come from :mod:`.layout`, the same
names as in a local folder: ``<id>.db.zst`` (the data) and ``<id>.json`` (the manifest). The
manifest is stored last and only after the data was checked, so, as locally, it is the commit
marker: a data object without one is debris from an interrupted upload, never a backup. A
format 2 backup has no data object: its manifest names a page index whose packs and nodes are
shared under ``pages/`` (moved and collected by :mod:`.pages`); it is fetched and checked by
building the database from the packs it needs.

Encryption: with ``BACKUPS_ENCRYPT_TO`` set, the object store is wrapped in a
:class:`~.storage.sealed.SealedStore` (the one place that refuses plaintext): every data object
must be an age file and every manifest sealed metadata that names no table. Both objects of a
backup are vetted before the first byte of either is sent, and each is read back after it is
stored. An encrypted copy (``<id>.db.zst.age``) is checked without the identity by the
ciphertext's size, SHA-256 and header; with it, it is decrypted and checked like a plain one.

Credentials come from the settings (S3 keys), boto3's usual chain, or rclone's own config
file; they are never logged, printed, or written to any file or JSON output.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tablettracker_backups.compression import hash_file
from tablettracker_backups.encryption import (
    Identity,
    check_sealed,
    missing_identity,
    unseal_metadata,
    wrong_identity,
)
from tablettracker_backups.errors import (
    BackupNotFound,
    ConfigError,
    MetadataError,
    ObjectCorrupt,
    ObjectNotFound,
    OffsiteError,
    PlaintextRefused,
    VerificationError,
)
from tablettracker_backups.extract import extract_verified
from tablettracker_backups.formats import PAGES
from tablettracker_backups.fsutil import remove_quietly, temp_path
from tablettracker_backups.layout import (
    data_file_id,
    data_key,
    data_keys,
    manifest_id,
    manifest_key,
    offsite_seal,
)
from tablettracker_backups.metadata import (
    MAX_METADATA_BYTES,
    BackupMetadata,
    id_time,
    validate_backup_id,
)
from tablettracker_backups.offsite.pages import (
    Listing,
    check_sealed_pages,
    damaged_key,
    page_view,
    remote_key,
)
from tablettracker_backups.replicate import Part, replicate
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import CheckDepth
from tablettracker_backups.storage.base import ObjectStore, validate_key
from tablettracker_backups.storage.rclone import RcloneStore
from tablettracker_backups.storage.s3 import S3Store
from tablettracker_backups.storage.sealed import SealedStore

logger = logging.getLogger(__name__)

ByteProgress = Callable[[int], None]


@dataclass(frozen=True)
class OffsiteObject:
    """One backup as listed in the offsite store (from the listing alone, no downloads)."""

    id: str
    created_at: datetime
    data_key: str | None
    data_size: int | None
    metadata_key: str
    uploaded_at: datetime
    #: A manifest without a data object in a prefix that holds a page store: a format 2
    #: backup (its objects are shared; reading the manifest tells for sure).
    paged: bool = False

    @property
    def complete(self) -> bool:
        """Both the data and the metadata object are there (format 2: the manifest)."""
        return self.data_key is not None or self.paged


@dataclass(frozen=True)
class UploadResult:
    """A backup uploaded and checked: how the check was done, and what it took."""

    id: str
    size: int
    check: str
    multipart: bool
    parts: int


@dataclass(frozen=True)
class OffsiteVerification:
    """The outcome of fully checking one offsite copy (downloaded and decompressed)."""

    id: str
    ok: bool
    error: str | None = None
    #: ``sealed``: an encrypted copy checked without the identity (ciphertext only).
    depth: CheckDepth = CheckDepth.FULL
    encrypted: bool = False
    #: Why an encrypted copy got only the ``sealed`` check although an identity was given.
    note: str | None = None


class OffsiteStore:
    """Backups in one offsite object store. Every method raises :class:`OffsiteError` with a
    one-line message when the store cannot be reached or refuses."""

    def __init__(self, objects: ObjectStore, *, key_prefix: str = "") -> None:
        #: Where the bytes go (a :class:`SealedStore` when encryption is required).
        self.objects = objects
        #: What the store puts before every key (an S3 prefix), for the keys this class shows.
        self.key_prefix = key_prefix

    @classmethod
    def from_settings(cls, settings: Settings) -> OffsiteStore:
        """The offsite store named by ``settings``; raises :class:`ConfigError` if none is."""
        objects: ObjectStore
        prefix = ""
        if settings.s3 is not None:
            objects = S3Store(settings.s3)
            prefix = settings.s3.prefix
        elif settings.rclone is not None:
            objects = RcloneStore(settings.rclone.remote, config=settings.rclone.config)
        else:
            raise ConfigError(
                "no offsite store configured: set BACKUPS_S3_BUCKET or BACKUPS_RCLONE_REMOTE"
            )
        if settings.encryption is not None:
            objects = SealedStore(objects, policy=offsite_seal)
        return cls(objects, key_prefix=prefix)

    # -- names ---------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The store, for messages (no credentials)."""
        inner = self.objects.inner if isinstance(self.objects, SealedStore) else self.objects
        return inner.where

    @property
    def require_encryption(self) -> bool:
        """Whether only sealed objects may be stored."""
        return isinstance(self.objects, SealedStore)

    def data_key(self, backup_id: str, compression: str, *, encrypted: bool = False) -> str:
        """The data object's key as the provider shows it (the id is validated)."""
        return self.key_prefix + data_key(backup_id, compression, encrypted=encrypted)

    def metadata_key(self, backup_id: str) -> str:
        """The manifest's key as the provider shows it."""
        return self.key_prefix + manifest_key(backup_id)

    # -- checks --------------------------------------------------------------------------

    def check_access(self) -> None:
        """Make sure the store exists and these credentials may list it."""
        self.objects.check_access()

    # -- listing -------------------------------------------------------------------------

    def listing(self) -> Listing:
        """Every object in the store, from one listing (what a sync knows the store holds)."""
        return Listing.of(self.objects)

    def list(self, listing: Listing | None = None) -> builtins.list[OffsiteObject]:
        """Every backup in the store (committed by its manifest), newest first; from
        ``listing`` when given, else from a new one."""
        listing = listing if listing is not None else self.listing()
        metas: dict[str, tuple[str, datetime | None]] = {}
        datas: dict[str, tuple[str, int]] = {}
        for item in listing.objects.values():
            if "/" in item.key:
                continue
            manifest_of = manifest_id(item.key)
            if manifest_of is not None:
                metas[manifest_of] = (item.key, item.modified)
                continue
            data_id = data_file_id(item.key)
            if data_id is not None:
                datas[data_id] = (item.key, item.size)
        found = []
        for backup_id, (meta_key, modified) in metas.items():
            data = datas.get(backup_id)
            created = id_time(backup_id)
            found.append(
                OffsiteObject(
                    id=backup_id,
                    created_at=created,
                    data_key=self.key_prefix + data[0] if data else None,
                    data_size=data[1] if data else None,
                    metadata_key=self.key_prefix + meta_key,
                    uploaded_at=modified or created,
                    paged=data is None and listing.has_pages,
                )
            )
        return sorted(found, key=lambda o: o.id, reverse=True)

    def complete_ids(self) -> builtins.list[str]:
        """Ids of the backups whose data and metadata are both stored, newest first."""
        return [o.id for o in self.list() if o.complete]

    def orphan_keys(self) -> builtins.list[str]:
        """Data objects without a manifest (from an interrupted upload)."""
        listed = {o.id for o in self.list()}
        return sorted(
            self.key_prefix + item.key
            for item in self.objects.list()
            if "/" not in item.key
            and (data_id := data_file_id(item.key)) is not None
            and data_id not in listed
        )

    def abort_interrupted_uploads(self) -> builtins.list[str]:
        """Remove the debris of puts that never completed (S3 multipart uploads, rclone's
        temporary names); their keys. The caller holds the operation lock, so no upload of
        ours is in flight."""
        return self.objects.cleanup()

    def read_metadata(self, backup_id: str) -> BackupMetadata:
        """Download and validate one backup's manifest; raises BackupNotFound, MetadataError."""
        try:
            text = self.objects.read(manifest_key(backup_id), length=MAX_METADATA_BYTES + 1)
        except ObjectNotFound as exc:
            raise BackupNotFound(f"no backup {backup_id} in the offsite store") from exc
        try:
            return BackupMetadata.from_json(text, expected_id=backup_id)
        except MetadataError as exc:
            raise MetadataError(f"offsite copy of {backup_id}: {exc}") from exc

    # -- upload --------------------------------------------------------------------------

    def upload(
        self,
        data_file: Path,
        metadata: BackupMetadata,
        *,
        progress: ByteProgress | None = None,
    ) -> UploadResult:
        """Upload a committed local backup and check it; the manifest goes last.

        Raises :class:`VerificationError` when the local file does not match its metadata, or
        (:class:`PlaintextRefused`) is not sealed while encryption is required: nothing is
        sent. Raises :class:`OffsiteError` when the upload fails or the stored object does not
        match (the partial upload is removed; nothing is committed).
        """
        body = metadata.to_json().encode()
        _check_local(data_file, metadata)
        try:
            done = replicate(
                None,
                self.objects,
                [Part(metadata.data_file, metadata.sha256, path=data_file)],
                (manifest_key(metadata.id), body),
                scratch=data_file.parent,
                progress=progress,
            )
        except ObjectCorrupt as exc:
            if isinstance(exc, PlaintextRefused):
                raise
            # What the provider holds differs from the checked local file: the store's fault.
            raise OffsiteError(f"offsite copy of {metadata.id}: {exc}") from exc
        stored = done.parts[0]
        logger.info(
            "uploaded backup %s to %s (%d bytes, %s, checked by %s)",
            metadata.id,
            self.where,
            stored.size,
            f"{stored.parts} parts" if stored.parts > 1 else "single part",
            stored.checked_by,
        )
        return UploadResult(
            metadata.id, stored.size, stored.checked_by or "", stored.parts > 1, stored.parts
        )

    # -- download, verify, delete --------------------------------------------------------

    def download(
        self,
        backup_id: str,
        compression: str,
        dest: Path,
        *,
        encrypted: bool = False,
        progress: ByteProgress | None = None,
    ) -> None:
        """Stream one data object into the new owner-only file ``dest``.

        Raises :class:`BackupNotFound` when there is no such object, :class:`OffsiteError`
        or :class:`StorageError`; a partial ``dest`` is removed.
        """
        key = data_key(backup_id, compression, encrypted=encrypted)
        try:
            self.objects.get_file(key, dest, progress=progress)
        except ObjectNotFound as exc:
            raise BackupNotFound(
                f"the data of backup {backup_id} is missing from the offsite store"
            ) from exc

    def fetch_verified(
        self,
        backup_id: str,
        dest: Path,
        *,
        identity: Identity | None = None,
        progress: ByteProgress | None = None,
    ) -> BackupMetadata:
        """Download one backup and decompress it into the new file ``dest``, checked like a
        local copy (size, SHA-256, integrity_check, row counts, schema); an encrypted one is
        decrypted with ``identity`` first, and its sealed metadata opened.

        Scratch files go beside ``dest``. Raises :class:`VerificationError` for a damaged
        copy, :class:`AgeIdentityError` (before downloading) when ``identity`` is missing or is
        not a recipient, :class:`BackupNotFound`, :class:`MetadataError` or
        :class:`OffsiteError`.
        """
        validate_backup_id(backup_id)
        metadata = self.read_metadata(backup_id)
        if metadata.encryption is not None:
            label = f"offsite backup {backup_id}"
            if identity is None:
                raise missing_identity(label, metadata.encryption)
            if not identity.opens(metadata.encryption):
                raise wrong_identity(label, metadata.encryption, identity)
            metadata = unseal_metadata(metadata, identity)
        if metadata.format_version == PAGES.version:
            # Built from the packs this snapshot needs, and only those, each checked.
            view = page_view(self.objects, metadata, identity)
            PAGES.extract(view, metadata, dest, scratch=dest.parent, progress=progress)
            return metadata
        scratch = temp_path(dest.parent, metadata.data_file)
        try:
            self.download(
                backup_id,
                metadata.compression,
                scratch,
                encrypted=metadata.encryption is not None,
                progress=progress,
            )
            key = self.data_key(
                backup_id, metadata.compression, encrypted=metadata.encryption is not None
            )
            extract_verified(scratch, metadata, dest, identity=identity, shown=f"offsite {key}")
        finally:
            remove_quietly(scratch)
        return metadata

    def verify(
        self,
        backup_id: str,
        *,
        scratch_dir: Path,
        identity: Identity | None = None,
        local_folders: Sequence[Path] = (),
    ) -> OffsiteVerification:
        """Fully check one offsite copy; reports a damaged copy rather than raising.

        An encrypted copy without ``identity`` is downloaded and checked as ciphertext only
        (age header, size, SHA-256: ``depth`` is ``sealed``); so is one whose recipients do not
        include ``identity`` (after a key rotation), with a ``note`` naming the keys it needs.
        Raises :class:`OffsiteError` (or :class:`StorageError`) only when the check could not
        be done at all, so an unreachable store never marks a copy bad.
        """
        dest = temp_path(scratch_dir, f"{backup_id}.offsite-verify.db")
        depth = CheckDepth.FULL
        encrypted = False
        note: str | None = None
        try:
            metadata = self.read_metadata(backup_id)
            info = metadata.encryption
            encrypted = info is not None
            if info is not None and (identity is None or not identity.opens(info)):
                # Without a fitting key (none given, or one for other backups after a key
                # rotation) the ciphertext is still checked; the copy is not called damaged.
                depth = CheckDepth.SEALED
                if identity is not None:
                    note = str(wrong_identity(f"offsite backup {backup_id}", info, identity))
                if metadata.format_version == PAGES.version:
                    check_sealed_pages(self.objects, metadata, local_folders)
                else:
                    self.download(backup_id, metadata.compression, dest, encrypted=True)
                    check_sealed(dest, metadata, label=f"offsite copy of {backup_id}")
            else:
                self.fetch_verified(backup_id, dest, identity=identity)
        except (VerificationError, MetadataError, BackupNotFound) as exc:
            logger.warning("offsite copy of %s failed verification: %s", backup_id, exc)
            self._drop_damaged(exc, sealed=encrypted)
            return OffsiteVerification(backup_id, False, str(exc), depth, encrypted, note)
        finally:
            remove_quietly(dest)
        return OffsiteVerification(backup_id, True, None, depth, encrypted, note)

    def _drop_damaged(self, exc: BaseException, *, sealed: bool) -> None:
        """Delete a shared object a check found damaged: named by its hash, it would count
        as held, and the next upload would not replace it."""
        key = damaged_key(exc)
        if key is None:
            return
        logger.warning("removing the damaged offsite object %s (uploaded again next)", key)
        self.objects.delete(remote_key(key, sealed=sealed))

    def delete(self, backup_id: str) -> None:
        """Delete one backup from the store; manifest first, so it never lists half-deleted."""
        for key in (manifest_key(backup_id), *data_keys(backup_id)):
            self.objects.delete(key)

    def delete_key(self, key: str) -> None:
        """Delete one object by the key :meth:`orphan_keys` shows (debris cleanup); it must
        be under the prefix."""
        if not key.startswith(self.key_prefix):
            raise ValueError(f"refusing to delete {key!r} outside the prefix")
        self.objects.delete(validate_key(key[len(self.key_prefix) :]))


def _check_local(data_file: Path, metadata: BackupMetadata) -> None:
    """The local file must still be the one its metadata describes (the checks after the
    upload compare with it, so a copy damaged in place would pass them)."""
    size, sha256 = hash_file(data_file)
    if size != metadata.stored_size or sha256 != metadata.sha256:
        raise VerificationError(
            f"local copy {data_file} does not match its metadata; not uploading it"
        )

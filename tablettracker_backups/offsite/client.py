"""The offsite store: backups on S3-compatible object storage (AWS S3, B2, R2, Wasabi, MinIO,
SeaweedFS ...), through boto3.

Layout mirrors a local backup folder under the configured prefix: ``<prefix><id>.db.zst`` (the
data) and ``<prefix><id>.json`` (the metadata). The metadata object is uploaded last and only
after the data object has been checked, so, as locally, it is the commit marker: a data object
without metadata is debris from an interrupted upload, never a backup.

Checking an upload: the data is sent with ``ChecksumAlgorithm=SHA256``, so a provider that
supports it verifies every part's SHA-256 as it arrives and rejects a mismatch. Afterwards the
object's size is compared with the metadata and its stored SHA-256 checksum (the whole object's,
or for a multipart upload the composite "SHA-256 of the parts' SHA-256s") with what this file
must produce. When the provider reports no checksum, the object is read back and hashed
instead. Full verification (:meth:`OffsiteStore.verify`) always downloads and decompresses.

Encryption: a store made from settings with ``BACKUPS_ENCRYPT_TO`` refuses to upload anything
that is not an age file with sealed metadata, and reads back the first bytes of each object it
uploaded; whatever does not start with the age header is deleted and the upload fails. So
plaintext cannot go offsite while encryption is configured, whichever code path asks. An
encrypted copy (``<id>.db.zst.age``) is checked without the identity by the ciphertext's size,
SHA-256 and header; with it, it is decrypted and checked like a plain one.

The boto3 client, its error messages and the checksum arithmetic live in
:mod:`tablettracker_backups.storage.s3`, the age header in :mod:`~.storage.sealed`.

Credentials come from the settings when both keys are given there, else from boto3's usual
chain (environment, shared config and credential files, instance roles). They are never
logged, printed, or written to any file or JSON output.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

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
    OffsiteError,
    StorageError,
    VerificationError,
)
from tablettracker_backups.fsutil import (
    CHUNK,
    describe_os_error,
    open_private,
    remove_quietly,
    temp_path,
)
from tablettracker_backups.layout import data_file_id, data_key, manifest_id, manifest_key
from tablettracker_backups.metadata import (
    MAX_METADATA_BYTES,
    BackupMetadata,
    id_time,
    validate_backup_id,
)
from tablettracker_backups.settings import S3Settings, Settings
from tablettracker_backups.states import CheckDepth
from tablettracker_backups.storage.s3 import (
    NOT_FOUND,
    PartDigests,
    b64,
    error_code,
    local_digests,
    make_client,
    no_bucket,
    s3_errors,
    s3_where,
    transfer_config,
    watch_part_uploads,
)
from tablettracker_backups.storage.sealed import AGE_HEADER, is_age, read_header

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

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

    @property
    def complete(self) -> bool:
        """Both the data and the metadata object are there."""
        return self.data_key is not None


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
    """Backups in one bucket under one prefix. Every method raises :class:`OffsiteError` with
    a one-line message when the store cannot be reached or refuses."""

    def __init__(
        self, s3: S3Settings, *, client: Any = None, require_encryption: bool = False
    ) -> None:
        self.s3 = s3
        self._client: S3Client = client if client is not None else make_client(s3)
        #: Refuse to upload anything but age files with sealed metadata.
        self.require_encryption = require_encryption
        watch_part_uploads(self._client)

    @classmethod
    def from_settings(cls, settings: Settings) -> OffsiteStore:
        """The offsite store named by ``settings``; raises :class:`ConfigError` if none is."""
        if settings.s3 is None:
            raise ConfigError("no offsite store configured: set BACKUPS_S3_BUCKET")
        return cls(settings.s3, require_encryption=settings.encryption is not None)

    # -- names ---------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """``s3://bucket/prefix`` at the endpoint, for messages (no credentials)."""
        return s3_where(self.s3)

    def data_key(self, backup_id: str, compression: str, *, encrypted: bool = False) -> str:
        """The data object's key (the id is validated)."""
        return self.s3.prefix + data_key(backup_id, compression, encrypted=encrypted)

    def metadata_key(self, backup_id: str) -> str:
        """The metadata object's key."""
        return self.s3.prefix + manifest_key(backup_id)

    # -- error mapping -------------------------------------------------------------------

    def _calls(self, action: str) -> Any:
        """Turn botocore's many exceptions into one-line :class:`OffsiteError` messages."""
        return s3_errors(self.s3, self.where, action)

    # -- checks --------------------------------------------------------------------------

    def check_access(self) -> None:
        """Make sure the bucket exists and these credentials may list it."""
        with self._calls("list the bucket"):
            try:
                self._client.head_bucket(Bucket=self.s3.bucket)
            except Exception as exc:
                # HEAD has no body, so a missing bucket is a bare 404 here.
                if error_code(exc) in {"404", "NotFound"}:
                    raise no_bucket(self.s3) from None
                if error_code(exc) in {"403", "Forbidden"}:
                    # A bare 403 cannot tell bad keys from missing rights; a listing can.
                    self._client.list_objects_v2(Bucket=self.s3.bucket, MaxKeys=1)
                raise

    # -- listing -------------------------------------------------------------------------

    def list(self) -> builtins.list[OffsiteObject]:
        """Every backup in the store (committed by its metadata object), newest first."""
        metas: dict[str, tuple[str, datetime]] = {}
        datas: dict[str, tuple[str, int]] = {}
        prefix = self.s3.prefix
        with self._calls("list the offsite backups"):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.s3.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    name = key[len(prefix) :]
                    if "/" in name:
                        continue
                    manifest_of = manifest_id(name)
                    if manifest_of is not None:
                        metas[manifest_of] = (key, item["LastModified"])
                        continue
                    data_id = data_file_id(name)
                    if data_id is not None:
                        datas[data_id] = (key, int(item.get("Size", 0)))
        found = []
        for backup_id, (meta_key, modified) in metas.items():
            data = datas.get(backup_id)
            found.append(
                OffsiteObject(
                    id=backup_id,
                    created_at=id_time(backup_id),
                    data_key=data[0] if data else None,
                    data_size=data[1] if data else None,
                    metadata_key=meta_key,
                    uploaded_at=modified,
                )
            )
        return sorted(found, key=lambda o: o.id, reverse=True)

    def complete_ids(self) -> builtins.list[str]:
        """Ids of the backups whose data and metadata are both stored, newest first."""
        return [o.id for o in self.list() if o.complete]

    def orphan_keys(self) -> builtins.list[str]:
        """Data objects without metadata (from an interrupted upload)."""
        listed = {o.id for o in self.list()}
        orphans: builtins.list[str] = []
        with self._calls("list the offsite backups"):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.s3.bucket, Prefix=self.s3.prefix):
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.s3.prefix) :]
                    data_id = data_file_id(name)
                    if data_id is not None and data_id not in listed:
                        orphans.append(item["Key"])
        return orphans

    def abort_interrupted_uploads(self) -> builtins.list[str]:
        """Abort multipart uploads of our data files that never completed; their keys.

        A process killed mid-upload leaves its parts stored (and billed) but invisible to
        listings; boto3 aborts only uploads that fail in-process. The caller holds the
        operation lock, so no upload of ours is in flight.
        """
        aborted: builtins.list[str] = []
        with self._calls("abort interrupted uploads"):
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.s3.bucket, Prefix=self.s3.prefix):
                for upload in page.get("Uploads", []):
                    name = upload["Key"][len(self.s3.prefix) :]
                    if data_file_id(name) is not None:
                        self._client.abort_multipart_upload(
                            Bucket=self.s3.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted.append(upload["Key"])
        return aborted

    def read_metadata(self, backup_id: str) -> BackupMetadata:
        """Download and validate one backup's metadata; raises BackupNotFound, MetadataError."""
        key = self.metadata_key(backup_id)
        with self._calls(f"read the metadata of {backup_id}"):
            try:
                response = self._client.get_object(Bucket=self.s3.bucket, Key=key)
            except Exception as exc:
                if error_code(exc) in NOT_FOUND:
                    raise BackupNotFound(f"no backup {backup_id} in the offsite store") from None
                raise
            body = response["Body"]
            try:
                text = body.read(MAX_METADATA_BYTES + 1)
            finally:
                body.close()
        try:
            return BackupMetadata.from_json(text, expected_id=backup_id)
        except MetadataError as exc:
            raise MetadataError(f"offsite copy of {backup_id}: {exc}") from None

    # -- upload --------------------------------------------------------------------------

    def upload(
        self,
        data_file: Path,
        metadata: BackupMetadata,
        *,
        progress: ByteProgress | None = None,
    ) -> UploadResult:
        """Upload a committed local backup and check it; metadata goes last.

        Raises :class:`VerificationError` when the local file does not match its metadata, or
        is not encrypted (with sealed metadata) while encryption is required (nothing is
        uploaded); :class:`OffsiteError` when the upload fails or the stored object does not
        match (the partial upload is removed; nothing is committed).
        """
        self._refuse_plaintext(data_file, metadata)
        digests = local_digests(
            data_file,
            multipart_threshold=self.s3.multipart_threshold,
            chunksize=self.s3.multipart_chunksize,
        )
        if digests.size != metadata.stored_size or digests.sha256 != metadata.sha256:
            raise VerificationError(
                f"local copy {data_file} does not match its metadata; not uploading it"
            )
        data_key = self.s3.prefix + metadata.data_file
        extra: dict[str, str] = {"ContentType": "application/octet-stream"}
        if self.s3.checksum == "sha256":
            extra["ChecksumAlgorithm"] = "SHA256"
        with self._calls(f"upload backup {metadata.id}"):
            self._client.upload_file(
                str(data_file),
                self.s3.bucket,
                data_key,
                ExtraArgs=extra,
                Config=transfer_config(self.s3),
                Callback=progress,
            )
        try:
            check = self._check_uploaded(data_key, metadata, digests)
            if metadata.encryption is not None:
                self._check_stored_header(data_key, metadata.id)
        except BaseException:
            self._delete_quietly(data_key)
            raise
        body = metadata.to_json().encode()
        with self._calls(f"upload the metadata of {metadata.id}"):
            put_args: dict[str, Any] = {
                "Bucket": self.s3.bucket,
                "Key": self.metadata_key(metadata.id),
                "Body": body,
                "ContentType": "application/json",
            }
            if self.s3.checksum == "sha256":
                # The provider checks this against what it received and refuses a mismatch.
                put_args["ChecksumSHA256"] = b64(hashlib.sha256(body).digest())
            self._client.put_object(**put_args)
            head = self._client.head_object(
                Bucket=self.s3.bucket, Key=self.metadata_key(metadata.id)
            )
        if int(head.get("ContentLength", -1)) != len(body):
            raise OffsiteError(f"the offsite metadata of {metadata.id} was stored truncated")
        multipart = digests.size >= self.s3.multipart_threshold
        logger.info(
            "uploaded backup %s to %s (%d bytes, %s, checked by %s)",
            metadata.id,
            self.where,
            digests.size,
            f"{digests.parts} parts" if multipart else "single part",
            check,
        )
        return UploadResult(metadata.id, digests.size, check, multipart, digests.parts)

    def _refuse_plaintext(self, data_file: Path, metadata: BackupMetadata) -> None:
        """The last guard before bytes leave: with encryption required, only an age file with
        metadata that names no table goes."""
        if metadata.encryption is None:
            if self.require_encryption:
                raise VerificationError(
                    f"refusing to upload backup {metadata.id} unencrypted: encryption is "
                    "configured (BACKUPS_ENCRYPT_TO)"
                )
            return
        if metadata.row_counts or metadata.source.path:
            raise VerificationError(
                f"refusing to upload the metadata of {metadata.id}: it names the schema; "
                "only its sealed form goes offsite"
            )
        if not is_age(read_header(data_file)):
            raise VerificationError(
                f"refusing to upload {data_file.name}: it is not an age file (its first line "
                "is not age-encryption.org/v1)"
            )

    def _check_stored_header(self, key: str, backup_id: str) -> None:
        """Read back the first bytes of an uploaded object: they must be the age header."""
        with self._calls(f"read back the start of {backup_id}"):
            response = self._client.get_object(
                Bucket=self.s3.bucket, Key=key, Range=f"bytes=0-{len(AGE_HEADER) - 1}"
            )
            body = response["Body"]
            try:
                first = body.read(len(AGE_HEADER))
            finally:
                body.close()
        if not is_age(first):
            raise OffsiteError(
                f"offsite copy of {backup_id} does not start with the age header after upload; "
                "it was removed"
            )

    def _check_uploaded(self, key: str, metadata: BackupMetadata, digests: PartDigests) -> str:
        """Compare the stored object with the metadata; returns how it was checked."""
        with self._calls(f"check the upload of {metadata.id}"):
            head = self._client.head_object(Bucket=self.s3.bucket, Key=key, ChecksumMode="ENABLED")
        size = int(head.get("ContentLength", -1))
        if size != metadata.stored_size:
            raise OffsiteError(
                f"offsite copy of {metadata.id} is {size} bytes after upload, "
                f"expected {metadata.stored_size}"
            )
        reported = head.get("ChecksumSHA256")
        if reported and reported == digests.expected_checksum:
            return "provider SHA-256 checksum"
        if reported and "-" not in reported and "-" not in digests.expected_checksum:
            raise OffsiteError(
                f"offsite copy of {metadata.id} has a different SHA-256 than the local backup"
            )
        # No checksum, or a composite one split differently than predicted: read it back.
        digest = hashlib.sha256()
        read = 0
        with self._calls(f"read back {metadata.id}"):
            response = self._client.get_object(Bucket=self.s3.bucket, Key=key)
            body = response["Body"]
            try:
                for chunk in body.iter_chunks(CHUNK):
                    digest.update(chunk)
                    read += len(chunk)
            finally:
                body.close()
        if read != metadata.stored_size or digest.hexdigest() != metadata.sha256:
            raise OffsiteError(
                f"offsite copy of {metadata.id} read back differently than it was uploaded"
            )
        return "read-back SHA-256"

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
        key = self.data_key(backup_id, compression, encrypted=encrypted)
        try:
            with open_private(dest) as handle:
                self._download_into(key, backup_id, handle, progress)
        except BaseException:
            remove_quietly(dest)
            raise

    def _download_into(
        self, key: str, backup_id: str, handle: BinaryIO, progress: ByteProgress | None
    ) -> None:
        with self._calls(f"download backup {backup_id}"):
            try:
                response = self._client.get_object(Bucket=self.s3.bucket, Key=key)
            except Exception as exc:
                if error_code(exc) in NOT_FOUND:
                    raise BackupNotFound(
                        f"the data of backup {backup_id} is missing from the offsite store"
                    ) from None
                raise
            body = response["Body"]
            try:
                for chunk in body.iter_chunks(CHUNK):
                    try:
                        handle.write(chunk)
                    except OSError as exc:
                        raise StorageError(describe_os_error(exc, handle.name)) from None
                    if progress is not None:
                        progress(len(chunk))
            finally:
                body.close()

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
        from tablettracker_backups.verify import extract_verified

        validate_backup_id(backup_id)
        metadata = self.read_metadata(backup_id)
        if metadata.encryption is not None:
            label = f"offsite backup {backup_id}"
            if identity is None:
                raise missing_identity(label, metadata.encryption)
            if not identity.opens(metadata.encryption):
                raise wrong_identity(label, metadata.encryption, identity)
            metadata = unseal_metadata(metadata, identity)
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
        self, backup_id: str, *, scratch_dir: Path, identity: Identity | None = None
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
                self.download(backup_id, metadata.compression, dest, encrypted=True)
                check_sealed(dest, metadata, label=f"offsite copy of {backup_id}")
            else:
                self.fetch_verified(backup_id, dest, identity=identity)
        except (VerificationError, MetadataError, BackupNotFound) as exc:
            logger.warning("offsite copy of %s failed verification: %s", backup_id, exc)
            return OffsiteVerification(backup_id, False, str(exc), depth, encrypted, note)
        finally:
            remove_quietly(dest)
        return OffsiteVerification(backup_id, True, None, depth, encrypted, note)

    def delete(self, backup_id: str) -> None:
        """Delete one backup from the store; metadata first, so it never lists half-deleted."""
        validate_backup_id(backup_id)
        keys = [self.metadata_key(backup_id)] + [
            self.data_key(backup_id, compression, encrypted=encrypted)
            for compression in ("zstd", "gzip")
            for encrypted in (False, True)
        ]
        with self._calls(f"delete offsite backup {backup_id}"):
            for key in keys:
                self._client.delete_object(Bucket=self.s3.bucket, Key=key)

    def delete_key(self, key: str) -> None:
        """Delete one object by key (debris cleanup); the key must be under the prefix."""
        if not key.startswith(self.s3.prefix):
            raise ValueError(f"refusing to delete {key!r} outside the prefix")
        with self._calls("delete an interrupted upload"):
            self._client.delete_object(Bucket=self.s3.bucket, Key=key)

    def _delete_quietly(self, key: str) -> None:
        try:
            self.delete_key(key)
        except OffsiteError as exc:
            logger.warning("could not remove a failed upload: %s", exc)

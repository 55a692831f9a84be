"""Objects in an S3-compatible bucket (AWS S3, B2, R2, Wasabi, MinIO, SeaweedFS ...), through
boto3, under one key prefix: key ``packs/ab/abcd`` is ``<prefix>packs/ab/abcd``.

A put is atomic because S3's are: a single PUT or a completed multipart upload shows the whole
object, and an unfinished multipart upload is never listed (:meth:`S3Store.cleanup` aborts
those left by a killed process). Checking a put: the bytes are sent with
``ChecksumAlgorithm=SHA256``, so a provider that supports it checks every part's SHA-256 as it
arrives. Afterwards the object's size and its stored SHA-256 checksum (the whole object's, or
for a multipart upload the composite "SHA-256 of the parts' SHA-256s") are compared with what
the source must produce; when the provider reports no checksum, the object is read back and
hashed instead.

Every call's failure becomes one :class:`OffsiteError` line (:func:`s3_errors`); credentials
never appear in one. boto3 is imported only when a client is made, so this module loads
without it.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.errors import (
    ConfigError,
    ObjectCorrupt,
    ObjectNotFound,
    OffsiteError,
    StorageError,
)
from tablettracker_backups.fsutil import CHUNK, describe_os_error, open_private, remove_quietly
from tablettracker_backups.storage.base import (
    ByteProgress,
    Hasher,
    ObjectInfo,
    ObjectStore,
    Source,
    check_range,
    check_sha256,
    is_listable,
    mismatch,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

logger = logging.getLogger(__name__)

#: Parts uploaded at once; each holds one chunk in memory, so this bounds memory use.
MAX_CONCURRENCY = 2
#: S3's limit on the number of parts of one multipart upload.
MAX_PARTS = 10_000
MIN_PART = 5 * 1024 * 1024
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60
#: Error codes meaning "these credentials are wrong", as opposed to "not allowed".
BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
    "InvalidToken",
    "ExpiredToken",
    "UnrecognizedClientException",
}
DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
NO_BUCKET = {"NoSuchBucket"}
NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
#: A range that starts at or past the end of the object.
INVALID_RANGE = {"InvalidRange", "416"}


class S3Location(Protocol):
    """Where a bucket is and how to talk to it (``settings.S3Settings`` is one)."""

    @property
    def bucket(self) -> str: ...
    @property
    def endpoint_url(self) -> str | None: ...
    @property
    def prefix(self) -> str: ...
    @property
    def region(self) -> str | None: ...
    @property
    def access_key_id(self) -> str | None: ...
    @property
    def secret_access_key(self) -> str | None: ...
    @property
    def addressing_style(self) -> str: ...
    @property
    def signature_version(self) -> str | None: ...
    @property
    def multipart_threshold(self) -> int: ...
    @property
    def multipart_chunksize(self) -> int: ...
    @property
    def checksum(self) -> str: ...


def s3_where(s3: S3Location) -> str:
    """``s3://bucket/prefix`` at the endpoint, for messages (no credentials)."""
    endpoint = f" at {s3.endpoint_url}" if s3.endpoint_url else ""
    return f"s3://{s3.bucket}/{s3.prefix}{endpoint}"


def b64(digest: bytes) -> str:
    """A digest as S3 checksum headers carry it."""
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class PartDigests:
    """A local file hashed as an upload will send it."""

    size: int
    sha256: str
    #: What the provider should report: base64 SHA-256, plus ``-N`` for N parts.
    expected_checksum: str
    parts: int


def part_size_for(size: int, chunksize: int) -> int:
    """The part size boto3's managed transfer uses for a file (grown to stay under 10,000
    parts, as :class:`s3transfer.utils.ChunksizeAdjuster` does)."""
    part = max(chunksize, MIN_PART)
    while size and math.ceil(size / part) > MAX_PARTS:
        part *= 2
    return part


def local_digests(path: Path, *, multipart_threshold: int, chunksize: int) -> PartDigests:
    """Hash ``path`` once: its SHA-256 and the checksum a provider will report for the upload.

    Raises :class:`StorageError`.
    """
    whole = hashlib.sha256()
    try:
        size = path.stat().st_size
        multipart = size >= multipart_threshold
        part = part_size_for(size, chunksize) if multipart else max(size, 1)
        part_digests: list[bytes] = []
        with path.open("rb") as handle:
            while True:
                current = hashlib.sha256()
                remaining = part
                while remaining:
                    chunk = handle.read(min(CHUNK, remaining))
                    if not chunk:
                        break
                    whole.update(chunk)
                    current.update(chunk)
                    remaining -= len(chunk)
                if remaining == part:
                    break
                part_digests.append(current.digest())
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from exc
    if multipart:
        composite = hashlib.sha256(b"".join(part_digests)).digest()
        expected = f"{b64(composite)}-{len(part_digests)}"
    else:
        expected = b64(whole.digest())
    return PartDigests(size, whole.hexdigest(), expected, len(part_digests) if multipart else 1)


def error_code(exc: BaseException) -> str:
    """The S3 error code (or HTTP status) botocore attached to ``exc``; "" when none."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = str(error.get("Code") or "")
        if code:
            return code
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return str(status or "")
    return ""


def _cause_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def no_bucket(s3: S3Location) -> OffsiteError:
    """The one-line error for a bucket that does not exist."""
    return OffsiteError(
        f"offsite bucket {s3.bucket!r} does not exist"
        + (f" at {s3.endpoint_url}" if s3.endpoint_url else "")
        + "; create it first"
    )


@contextmanager
def s3_errors(s3: S3Location, where: str, action: str) -> Iterator[None]:
    """Turn botocore's many exceptions into one-line :class:`OffsiteError` messages that say
    what failed while trying to ``action``; the cause stays chained for the logs."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        yield
    except (ClientError, BotoCoreError, Boto3Error) as exc:
        for inner in _cause_chain(exc):
            if isinstance(inner, NoCredentialsError | PartialCredentialsError):
                raise OffsiteError(
                    "no offsite credentials found: set BACKUPS_S3_ACCESS_KEY_ID and "
                    "BACKUPS_S3_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY, or an AWS profile)"
                ) from exc
            if isinstance(inner, EndpointConnectionError) or (
                isinstance(inner, BotoCoreError)
                and type(inner).__name__
                in {"ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"}
            ):
                raise OffsiteError(
                    f"cannot reach the offsite store {where} while trying to {action}: "
                    f"{type(inner).__name__}"
                ) from exc
            code = error_code(inner)
            if code in BAD_CREDENTIALS:
                raise OffsiteError(
                    f"the offsite store {where} rejected the credentials ({code}) while "
                    f"trying to {action}: check BACKUPS_S3_ACCESS_KEY_ID and "
                    "BACKUPS_S3_SECRET_ACCESS_KEY"
                ) from exc
            if code in NO_BUCKET:
                raise no_bucket(s3) from exc
            if code in DENIED:
                raise OffsiteError(
                    f"the offsite store {where} denied access while trying to {action}: "
                    "check the credentials and that they may read, write, list and delete "
                    "in this bucket"
                ) from exc
        code = error_code(exc)
        detail = f" ({code})" if code else f" ({type(exc).__name__})"
        raise OffsiteError(f"the offsite store {where} failed to {action}{detail}") from exc


def _part_uploaded(**_: Any) -> None:
    crash_point(Stage.OFFSITE_PART_UPLOAD)  # pragma: no mutate


def watch_part_uploads(client: Any) -> None:
    """Reach the offsite-part-upload crash point after each part of a multipart upload.

    boto3 sends the parts from its own threads; ``unique_id`` keeps one registration per
    client, however many stores share it.
    """
    client.meta.events.register(
        "after-call.s3.UploadPart", _part_uploaded, unique_id="ttb-part-uploaded"
    )


def transfer_config(s3: S3Location) -> Any:
    """boto3's managed-transfer settings for uploads to ``s3``."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=s3.multipart_threshold,
        multipart_chunksize=s3.multipart_chunksize,
        max_concurrency=MAX_CONCURRENCY,
        # The classic transfer manager streams from the file in parts of the chunk size,
        # which is what the composite checksum assumes (the CRT client may differ).
        preferred_transfer_client="classic",
    )


def make_client(s3: S3Location) -> Any:
    """A boto3 S3 client for ``s3``: addressing style, signature version, region, timeouts.

    Raises :class:`ConfigError` when boto3 is not installed or the settings are unusable.
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ConfigError(
            "offsite copies need boto3: pip install 'tablettracker-backups[s3]'"
        ) from exc

    options: dict[str, Any] = {
        "s3": {"addressing_style": s3.addressing_style},
        "connect_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
        # Few, quick retries: a failed upload is retried by the next run anyway.
        "retries": {"max_attempts": 3, "mode": "standard"},
    }
    if s3.signature_version:
        options["signature_version"] = s3.signature_version
    if s3.checksum != "sha256":
        # Some S3-compatible providers reject the checksum headers newer botocore adds.
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    kwargs: dict[str, Any] = {"config": Config(**options)}
    if s3.endpoint_url:
        kwargs["endpoint_url"] = s3.endpoint_url
    if s3.region:
        kwargs["region_name"] = s3.region
    elif s3.endpoint_url:
        # S3-compatible servers accept any region name in the signature; botocore needs one.
        kwargs["region_name"] = "us-east-1"
    if s3.access_key_id and s3.secret_access_key:
        kwargs["aws_access_key_id"] = s3.access_key_id
        kwargs["aws_secret_access_key"] = s3.secret_access_key
    try:
        return boto3.session.Session().client("s3", **kwargs)
    except Exception as exc:  # botocore raises ValueError and its own errors for bad config
        raise ConfigError(f"cannot set up the offsite client: {type(exc).__name__}") from exc


def _full_object_sha256(head: dict[str, Any]) -> str | None:
    """The whole object's SHA-256 (hex) when the provider reports it, else None (a
    multipart upload's checksum is of its parts)."""
    reported = head.get("ChecksumSHA256")
    if not reported or "-" in reported or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
        return None
    try:
        digest = base64.b64decode(reported, validate=True)
    except ValueError:
        return None
    return digest.hex() if len(digest) == 32 else None


class S3Store(ObjectStore):
    """Objects in ``s3.bucket`` under ``s3.prefix``; ``client`` replaces the boto3 client
    made from ``s3`` (to share one)."""

    def __init__(self, s3: S3Location, *, client: Any = None) -> None:
        self.s3 = s3
        self.where = s3_where(s3)
        self._client: S3Client = client if client is not None else make_client(s3)
        watch_part_uploads(self._client)

    def _full(self, key: str) -> str:
        return self.s3.prefix + validate_key(key)

    def _calls(self, action: str) -> Any:
        return s3_errors(self.s3, self.where, action)

    def _missing(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(f"no object {key} in {self.where}")

    # -- reading -------------------------------------------------------------------------

    def _head(self, key: str) -> dict[str, Any]:
        full = self._full(key)
        with self._calls(f"look up {key}"):
            try:
                return dict(
                    self._client.head_object(
                        Bucket=self.s3.bucket, Key=full, ChecksumMode="ENABLED"
                    )
                )
            except Exception as exc:
                if error_code(exc) in NOT_FOUND:
                    raise self._missing(key) from exc
                raise

    def stat(self, key: str) -> ObjectInfo:
        head = self._head(key)
        return ObjectInfo(
            key,
            int(head.get("ContentLength", 0)),
            head.get("LastModified"),
            _full_object_sha256(head),
        )

    def _get(self, key: str, byte_range: str | None = None) -> Any:
        """The GET response, None for a range past the end; raises ObjectNotFound."""
        full = self._full(key)
        try:
            if byte_range:
                return self._client.get_object(Bucket=self.s3.bucket, Key=full, Range=byte_range)
            return self._client.get_object(Bucket=self.s3.bucket, Key=full)
        except Exception as exc:
            code = error_code(exc)
            if code in NOT_FOUND:
                raise self._missing(key) from exc
            if byte_range and code in INVALID_RANGE:
                return None
            raise

    def read(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        if length == 0:
            self._head(key)  # still: a missing object is not an empty read
            return b""
        byte_range = None
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            byte_range = f"bytes={offset}-{end}"
        with self._calls(f"read {key}"):
            response = self._get(key, byte_range)
            if response is None:
                return b""
            body = response["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
        return data

    def get_file(self, key: str, dest: Path, *, progress: ByteProgress | None = None) -> ObjectInfo:
        self._full(key)
        created = open_private(dest)  # never ours to remove if it already exists
        hasher = Hasher(progress)
        try:
            with created as out, self._calls(f"download {key}"):
                response = self._get(key)
                body = response["Body"]
                try:
                    for chunk in body.iter_chunks(CHUNK):
                        try:
                            out.write(chunk)
                        except OSError as exc:
                            raise StorageError(describe_os_error(exc, dest)) from exc
                        hasher.update(chunk)
                finally:
                    body.close()
        except BaseException:
            remove_quietly(dest)
            raise
        return ObjectInfo(key, hasher.size, response.get("LastModified"), hasher.hexdigest())

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        root = self.s3.prefix
        found: builtins.list[ObjectInfo] = []
        with self._calls("list the objects"):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.s3.bucket, Prefix=root + prefix):
                for item in page.get("Contents", []):
                    key = item["Key"][len(root) :]
                    if is_listable(key):
                        found.append(
                            ObjectInfo(key, int(item.get("Size", 0)), item.get("LastModified"))
                        )
        yield from found

    # -- writing -------------------------------------------------------------------------

    def put(
        self,
        key: str,
        source: Source,
        *,
        sha256: str,
        progress: ByteProgress | None = None,
    ) -> ObjectInfo:
        full = self._full(key)
        check_sha256(sha256)
        if isinstance(source, bytes):
            digest = hashlib.sha256(source).digest()
            digests = PartDigests(len(source), digest.hex(), b64(digest), 1)
        else:
            digests = local_digests(
                source,
                multipart_threshold=self.s3.multipart_threshold,
                chunksize=self.s3.multipart_chunksize,
            )
        if digests.sha256 != sha256:
            # Caught before a byte is sent: whatever the key held is untouched.
            raise mismatch(key, self.where, digests.sha256, sha256)
        self._send(key, full, source, digests, progress)
        try:
            check = self._check_stored(key, full, digests)
        except BaseException:
            self._delete_quietly(key)
            raise
        logger.info(
            "stored %s in %s (%d bytes, %s, checked by %s)",
            key,
            self.where,
            digests.size,
            f"{digests.parts} parts" if digests.parts > 1 else "single part",
            check,
        )
        return ObjectInfo(key, digests.size, None, sha256, checked_by=check, parts=digests.parts)

    def _send(
        self,
        key: str,
        full: str,
        source: Source,
        digests: PartDigests,
        progress: ByteProgress | None,
    ) -> None:
        extra: dict[str, Any] = {"ContentType": "application/octet-stream"}
        with self._calls(f"upload {key}"):
            if isinstance(source, bytes):
                if self.s3.checksum == "sha256":
                    # The provider checks this against what it received and refuses a mismatch.
                    extra["ChecksumSHA256"] = digests.expected_checksum
                self._client.put_object(Bucket=self.s3.bucket, Key=full, Body=source, **extra)
                if progress is not None:
                    progress(len(source))
                return
            if self.s3.checksum == "sha256":
                extra["ChecksumAlgorithm"] = "SHA256"
            self._client.upload_file(
                str(source),
                self.s3.bucket,
                full,
                ExtraArgs=extra,
                Config=transfer_config(self.s3),
                Callback=progress,
            )

    def _check_stored(self, key: str, full: str, digests: PartDigests) -> str:
        """Compare the stored object with what was sent; returns how it was checked.

        Raises :class:`ObjectCorrupt` when it differs.
        """
        head = self._head(key)
        size = int(head.get("ContentLength", -1))
        if size != digests.size:
            raise ObjectCorrupt(
                f"{key} is {size} bytes in {self.where} after upload, expected {digests.size}"
            )
        reported = head.get("ChecksumSHA256")
        if reported and reported == digests.expected_checksum:
            return "provider SHA-256 checksum"
        if reported and "-" not in reported and "-" not in digests.expected_checksum:
            raise ObjectCorrupt(f"{key} has a different SHA-256 in {self.where} than was sent")
        # No checksum, or a composite one split differently than predicted: read it back.
        hasher = Hasher()
        with self._calls(f"read back {key}"):
            body = self._get(key)["Body"]
            try:
                for chunk in body.iter_chunks(CHUNK):
                    hasher.update(chunk)
            finally:
                body.close()
        if hasher.size != digests.size or hasher.hexdigest() != digests.sha256:
            raise ObjectCorrupt(f"{key} read back from {self.where} differently than it was sent")
        return "read-back SHA-256"

    def check_access(self) -> None:
        """Make sure the bucket exists and these credentials may list it."""
        with self._calls("list the bucket"):
            try:
                self._client.head_bucket(Bucket=self.s3.bucket)
            except Exception as exc:
                # HEAD has no body, so a missing bucket is a bare 404 here.
                if error_code(exc) in {"404", "NotFound"}:
                    raise no_bucket(self.s3) from exc
                if error_code(exc) in {"403", "Forbidden"}:
                    # A bare 403 cannot tell bad keys from missing rights; a listing can.
                    self._client.list_objects_v2(Bucket=self.s3.bucket, MaxKeys=1)
                raise

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._calls(f"delete {key}"):
            self._client.delete_object(Bucket=self.s3.bucket, Key=full)

    def _delete_quietly(self, key: str) -> None:
        try:
            self.delete(key)
        except OffsiteError as exc:
            logger.warning("could not remove a failed upload: %s", exc)

    def cleanup(self) -> builtins.list[str]:
        """Abort the multipart uploads under the prefix that never completed (a process killed
        mid-upload leaves its parts stored, and billed, but never listed)."""
        aborted: builtins.list[str] = []
        root = self.s3.prefix
        with self._calls("abort interrupted uploads"):
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.s3.bucket, Prefix=root):
                for upload in page.get("Uploads", []):
                    key = upload["Key"][len(root) :]
                    if not is_listable(key):
                        continue  # not a key of ours
                    self._client.abort_multipart_upload(
                        Bucket=self.s3.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted.append(key)
        if aborted:
            logger.info("aborted %d interrupted uploads in %s", len(aborted), self.where)
        return sorted(aborted)

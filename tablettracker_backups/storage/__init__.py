"""Object stores: the bottom layer, where every copy of a backup lives.

A store keeps bytes under keys and knows nothing of backups; the layout above it is the only
code that turns a backup's parts into keys. What every store promises (:class:`ObjectStore`):

* **Keys** are relative POSIX paths of ASCII letters, digits and ``._-/`` (no leading ``/``, no
  empty, ``.`` or ``..`` segment, no segment starting ``.tmp-``, at most 1024 characters).
  Every method validates every key it is given (:func:`validate_key`, :class:`InvalidKey`).
* **put is atomic and hash-checked.** When it returns, the key holds exactly the bytes given
  and they hash to the SHA-256 the caller named, checked against what the store holds or
  received, not only what was sent. On any failure (:class:`ObjectCorrupt` for a mismatch)
  nothing new is left at the key, and no reader, listing included, ever sees a partial object.
* **list** shows committed objects only: never a temporary name, an unfinished upload, a
  folder, or anything that is not a regular object (a FIFO never hangs it).
* **read** takes ranges; **get_file** streams into a new owner-only file and returns the
  SHA-256 of what it wrote, so the caller's check catches a changed byte; both raise
  :class:`ObjectNotFound` for a missing key. **delete** is idempotent. **cleanup** removes
  what interrupted puts left behind, and says what.
* Failures are one line: :class:`StorageError` (local I/O), :class:`OffsiteError` (a remote
  failed or refused), :class:`ConfigError` (unusable as configured); every cause stays chained.

The implementations, one module each, all run through one conformance suite
(tests/test_storage.py):

* :class:`LocalStore` (``local``): a folder; temp file, fsync, rename, folder fsync.
* :class:`S3Store` (``s3``): an S3-compatible bucket under a prefix, through boto3.
* :class:`RcloneStore` (``rclone``): any rclone remote, through Debian's ``rclone`` binary.
* :class:`SealedStore` (``sealed``): wraps any of them; the one place that refuses plaintext
  where a key's policy demands an age file or sealed metadata.

This package imports nothing from the package above :mod:`errors`, :mod:`fsutil` and
:mod:`crashpoints` (tests/test_architecture.py checks it).
"""

from __future__ import annotations

from tablettracker_backups.storage.base import (
    MAX_KEY_LENGTH,
    ByteProgress,
    ObjectInfo,
    ObjectStore,
    Source,
    validate_key,
    validate_prefix,
)
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.storage.rclone import RcloneStore
from tablettracker_backups.storage.s3 import S3Location, S3Store
from tablettracker_backups.storage.sealed import AGE_HEADER, Seal, SealedStore, SealPolicy, is_age

__all__ = [
    "AGE_HEADER",
    "MAX_KEY_LENGTH",
    "ByteProgress",
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "RcloneStore",
    "S3Location",
    "S3Store",
    "Seal",
    "SealPolicy",
    "SealedStore",
    "Source",
    "is_age",
    "validate_key",
    "validate_prefix",
]

"""What every object store promises: keys, object facts, and the interface itself.

A store moves bytes and checks their hash; it knows nothing of backups. Keys are built above it
(by the layout), and checked here: :func:`validate_key` is called by every store method that is
given a key, so no key from anywhere can name something outside the store.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, BinaryIO

from tablettracker_backups.errors import InvalidKey, ObjectCorrupt
from tablettracker_backups.fsutil import CHUNK, TEMP_PREFIX

#: Called with the number of bytes just moved.
ByteProgress = Callable[[int], None]
#: What ``put`` stores: a local file (streamed) or bytes in memory.
Source = Path | bytes

#: The longest key a store accepts (S3's limit is 1024 bytes; these keys are ASCII).
MAX_KEY_LENGTH = 1024
_KEY_CHARACTERS = re.compile(r"[A-Za-z0-9._/-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _shown(key: str) -> str:
    """A key as quoted in a one-line message: escaped, and cut short if long."""
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_key(key: object) -> str:
    """Return ``key`` if it is a valid object key, else raise :class:`InvalidKey`.

    A key is a relative POSIX path of ASCII letters, digits and ``._-/``, at most
    :data:`MAX_KEY_LENGTH` characters, with no empty, ``.`` or ``..`` segment. A segment may
    not start with ``.tmp-``: that prefix is reserved for the temporary names of puts in
    progress, which listings never show.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("an object key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(
            f"object key {_shown(key)} is {len(key)} characters long, more than {MAX_KEY_LENGTH}"
        )
    if not _KEY_CHARACTERS.fullmatch(key):
        raise InvalidKey(
            f"object key {_shown(key)} may only hold ASCII letters, digits and . _ - /"
        )
    if key.startswith("/"):
        raise InvalidKey(f"object key {_shown(key)} must be relative (no leading /)")
    for segment in key.split("/"):
        if not segment:
            raise InvalidKey(f"object key {_shown(key)} has an empty path segment")
        if segment in (".", ".."):
            raise InvalidKey(f"object key {_shown(key)} has a {segment!r} path segment")
        if segment.startswith(TEMP_PREFIX):
            raise InvalidKey(
                f"object key {_shown(key)} uses the prefix {TEMP_PREFIX} kept for temporary names"
            )
    return key


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it may start keys to list ("" for all, ``"packs/"``, ``"ab"``),
    else raise :class:`InvalidKey`."""
    if prefix == "":
        return ""
    if not isinstance(prefix, str):
        raise InvalidKey("a key prefix must be a string")
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def is_listable(key: str) -> bool:
    """Whether ``key`` (found in a store) is an object a listing shows: a valid key, so neither
    a temporary name nor anything this package could not have written."""
    try:
        validate_key(key)
    except InvalidKey:
        return False
    return True


def is_temp_name(name: str) -> bool:
    """Whether a path segment is the temporary name of a put in progress (or interrupted)."""
    return name.startswith(TEMP_PREFIX)


def check_sha256(sha256: str) -> str:
    """``sha256`` if it is 64 lower-case hex digits; raises ``ValueError`` (a caller's bug)."""
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lower-case hex digits, not {sha256!r}")
    return sha256


def check_range(offset: int, length: int | None) -> None:
    """Raise ``ValueError`` for a negative offset or length (a caller's bug)."""
    if offset < 0:
        raise ValueError(f"offset must not be negative, not {offset}")
    if length is not None and length < 0:
        raise ValueError(f"length must not be negative, not {length}")


@contextmanager
def open_source(source: Source) -> Iterator[BinaryIO]:
    """``source`` opened for reading from its start (raises ``OSError``)."""
    if isinstance(source, bytes):
        yield io.BytesIO(source)
        return
    with source.open("rb") as handle:
        yield handle


def mismatch(key: str, where: str, got: str, expected: str) -> ObjectCorrupt:
    """The error of a put whose bytes do not hash to the SHA-256 they were given with."""
    return ObjectCorrupt(
        f"not storing {key} in {where}: its bytes hash to SHA-256 {got[:12]}..., "
        f"not the expected {expected[:12]}..."
    )


class Hasher:
    """Counts and hashes bytes as they pass; reports them to ``progress``."""

    def __init__(self, progress: ByteProgress | None = None) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self.progress = progress

    def update(self, chunk: bytes) -> None:
        """Count and hash ``chunk``."""
        self.digest.update(chunk)
        self.size += len(chunk)
        if self.progress is not None and chunk:
            self.progress(len(chunk))

    def hexdigest(self) -> str:
        """The SHA-256 of everything so far, as hex."""
        return self.digest.hexdigest()


def iter_source(handle: IO[bytes]) -> Iterator[bytes]:
    """``handle`` in chunks of :data:`CHUNK` bytes."""
    while chunk := handle.read(CHUNK):
        yield chunk


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object, as a store knows it."""

    key: str
    size: int
    #: When it was stored (tz-aware UTC), when the store says.
    modified: datetime | None = None
    #: Hex SHA-256 of its bytes, only when the store knows it without reading them.
    sha256: str | None = None
    #: After a put: how the stored bytes were checked ("provider SHA-256 checksum",
    #: "read-back SHA-256" ...), for reports.
    checked_by: str | None = None
    #: After a put: how many parts the upload took (S3 multipart), 1 otherwise.
    parts: int = 1


class ObjectStore(ABC):
    """Objects under keys: bytes in, bytes out, atomic, hash-checked.

    Every method validates each key it is given (:class:`InvalidKey`), raises
    :class:`ObjectNotFound` for a key with no object, and otherwise one-line
    :class:`StorageError` (local I/O), :class:`OffsiteError` (a remote failed or refused) or
    :class:`ConfigError` (the store cannot be used as configured).
    """

    #: What kind of store and where it is, for one-line messages ("local folder /srv/b",
    #: "s3://bucket/prefix/ at https://...", "rclone gdrive:tt", "sealed(...)"). Never holds
    #: credentials.
    where: str

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every committed object whose key starts with ``prefix``, in no particular order.

        Temporary names of puts in progress, unfinished uploads, folders and anything that is
        not a regular object are never listed; a missing store lists nothing.
        """

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """The object under ``key``; raises :class:`ObjectNotFound`."""

    @abstractmethod
    def read(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """Up to ``length`` bytes (all, when None) from ``offset``; fewer near the end, none
        past it. Raises :class:`ObjectNotFound`."""

    @abstractmethod
    def get_file(self, key: str, dest: Path, *, progress: ByteProgress | None = None) -> ObjectInfo:
        """Stream the object into ``dest``, created exclusively and owner-only; returns its
        facts with the SHA-256 of what was written, for the caller to compare with what it
        expects. On any error ``dest`` is removed (unless it existed: then nothing is
        written). Raises :class:`ObjectNotFound`."""

    @abstractmethod
    def put(
        self,
        key: str,
        source: Source,
        *,
        sha256: str,
        progress: ByteProgress | None = None,
    ) -> ObjectInfo:
        """Store ``source`` under ``key``, atomically, and check it.

        When this returns, ``key`` holds exactly ``source`` and the stored bytes hash to
        ``sha256`` (checked against what the store holds or received, not only what was
        sent). On any failure, :class:`ObjectCorrupt` for a hash that does not match, nothing
        that was not there before is left at ``key``, and no reader ever sees a partial
        object. An existing object is replaced atomically.
        """

    def vet(self, key: str, source: Source) -> None:
        """Raise :class:`PlaintextRefused` if :meth:`put` would refuse ``source`` under
        ``key`` for its form (a sealed store's rule), sending nothing; a plain store takes
        anything. Lets a caller check every object of a set before it stores the first."""
        validate_key(key)

    def check_access(self) -> None:
        """Make sure the store can be reached and listed with these credentials; raises as
        the other methods do. (A store that holds nothing yet is fine.)"""
        next(iter(self.list()), None)

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under ``key``; a missing one is fine."""

    @abstractmethod
    def cleanup(self) -> builtins.list[str]:
        """Remove the debris of interrupted puts (temporary names, unfinished uploads);
        returns what was removed. Call it only while no put is in progress (under the
        operation lock)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.where}>"

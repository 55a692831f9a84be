"""The one place that keeps plaintext out of a store: a wrapper around any other store.

What must be sealed is decided per key by a *policy* (the layout supplies it): an ``age``
object (a backup's data, a pack, an index) must be an age file; a ``sealed-json`` one (a v1
backup's readable metadata) must carry its sealed details and name no table, no row count
and no source path; a ``plain-ok`` one may be anything. :meth:`SealedStore.put` refuses an
object that breaks its rule before a single byte of it reaches the inner store, and after the
inner put reads the stored object back: one that no longer keeps the rule (a store that mangles
what it is given) is deleted and the put fails.

The wrapper encrypts nothing itself: what is sealed, and to whom, is the format's business (the
metadata of an encrypted backup records the ciphertext's hash, so the format must hold the
ciphertext before anything is put). Reads pass through unchanged.

The age file format's first line is defined here too, so byte-moving code can recognise an age
file without importing the encryption module (which knows the backup model).
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

from tablettracker_backups.errors import ObjectCorrupt, PlaintextRefused, StorageError
from tablettracker_backups.fsutil import describe_os_error
from tablettracker_backups.storage.base import (
    ByteProgress,
    ObjectInfo,
    ObjectStore,
    Source,
    validate_key,
)

logger = logging.getLogger(__name__)

#: The first line of every binary age file.
AGE_HEADER = b"age-encryption.org/v1\n"
#: The largest ``sealed-json`` document a sealed store takes (a v1 backup's metadata is a
#: few KiB).
MAX_SEALED_JSON = 1024 * 1024


def read_header(path: Path) -> bytes:
    """The first bytes of ``path`` (as many as an age header has); raises StorageError."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(AGE_HEADER))
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from exc


def is_age(first_bytes: bytes) -> bool:
    """Whether bytes start like an age file (``age-encryption.org/v1`` on the first line)."""
    return first_bytes.startswith(AGE_HEADER)


class Seal(str, Enum):
    """What a sealed store demands of the object under a key."""

    #: An age file.
    AGE = "age"
    #: A JSON document whose schema-naming details are sealed (``encryption.sealed``) and
    #: left out of what it shows.
    SEALED_JSON = "sealed-json"
    #: Anything (nothing in it names the data).
    PLAIN_OK = "plain-ok"


#: What the object under a key must be: a :class:`Seal` or its value.
SealPolicy = Callable[[str], str]


def _names_schema(document: dict[str, Any]) -> bool:
    """Whether a metadata document shows what ``encryption.public_metadata`` leaves out:
    row counts per table, the source path, foreign-key findings, anomalies."""
    source = document.get("source")
    findings = document.get("findings")
    extra = document.get("extra")
    return bool(
        document.get("row_counts")
        or (isinstance(source, dict) and source.get("path"))
        or (
            isinstance(findings, dict)
            and any(
                findings.get(name)
                for name in ("foreign_key_samples", "foreign_key_tables", "not_counted")
            )
        )
        or (isinstance(extra, dict) and extra.get("anomalies"))
    )


class SealedStore(ObjectStore):
    """``inner``, refusing whatever ``policy`` says must be sealed and is not."""

    def __init__(self, inner: ObjectStore, *, policy: SealPolicy) -> None:
        self.inner = inner
        self.policy = policy
        self.where = f"sealed({inner.where})"

    # -- the rules -----------------------------------------------------------------------

    def _refusal(self, key: str, seal: Seal, content: bytes) -> str | None:
        """Why ``content`` (its first bytes, or a whole document) may not be stored under
        ``key``; None when it may."""
        if seal is Seal.AGE:
            if not is_age(content):
                return (
                    f"refusing to store {key} in {self.where}: it is not an age file (its "
                    "first line is not age-encryption.org/v1)"
                )
            return None
        if seal is Seal.SEALED_JSON:
            try:
                document = json.loads(content)
            except (ValueError, RecursionError):
                document = None
            if not isinstance(document, dict):
                return f"refusing to store {key} in {self.where}: it is not a JSON document"
            encryption = document.get("encryption")
            sealed = encryption.get("sealed") if isinstance(encryption, dict) else None
            if not isinstance(sealed, str) or not sealed:
                return (
                    f"refusing to store {key} in {self.where} unencrypted: it carries no "
                    "sealed details"
                )
            if _names_schema(document):
                return (
                    f"refusing to store {key} in {self.where}: it names the schema; only its "
                    "sealed form may go there"
                )
        return None

    def _content(self, key: str, seal: Seal, source: Source) -> bytes:
        """As much of ``source`` as the rule for ``seal`` looks at."""
        if seal is Seal.AGE:
            if isinstance(source, bytes):
                return source[: len(AGE_HEADER)]
            return read_header(source)
        if isinstance(source, bytes):
            data = source[: MAX_SEALED_JSON + 1]
        else:
            try:
                with source.open("rb") as handle:
                    data = handle.read(MAX_SEALED_JSON + 1)
            except OSError as exc:
                raise StorageError(describe_os_error(exc, source)) from exc
        if len(data) > MAX_SEALED_JSON:
            raise PlaintextRefused(
                f"refusing to store {key} in {self.where}: it is larger than any sealed document"
            )
        return data

    def _seal_of(self, key: str) -> Seal:
        return Seal(self.policy(validate_key(key)))

    # -- the store -----------------------------------------------------------------------

    def vet(self, key: str, source: Source) -> None:
        """Raise :class:`PlaintextRefused` if the policy says ``source`` must be sealed under
        ``key`` and it is not."""
        seal = self._seal_of(key)
        if seal is not Seal.PLAIN_OK:
            reason = self._refusal(key, seal, self._content(key, seal, source))
            if reason is not None:
                raise PlaintextRefused(reason)

    def put(
        self,
        key: str,
        source: Source,
        *,
        sha256: str,
        progress: ByteProgress | None = None,
    ) -> ObjectInfo:
        """As :meth:`ObjectStore.put`, refusing (:class:`PlaintextRefused`) what the policy
        says must be sealed and is not, before any of it is sent; an object the inner store
        holds in another form afterwards is deleted (:class:`ObjectCorrupt`)."""
        self.vet(key, source)
        seal = self._seal_of(key)
        info = self.inner.put(key, source, sha256=sha256, progress=progress)
        if seal is not Seal.PLAIN_OK:
            try:
                self._check_stored(key, seal)
            except BaseException:
                self._delete_quietly(key)
                raise
        return info

    def _check_stored(self, key: str, seal: Seal) -> None:
        length = len(AGE_HEADER) if seal is Seal.AGE else MAX_SEALED_JSON + 1
        stored = self.inner.read(key, length=length)
        if self._refusal(key, seal, stored) is not None:
            raise ObjectCorrupt(
                f"{key} is no longer sealed in {self.inner.where} after it was stored "
                f"(it does not keep the {seal.value} rule); it was removed"
            )

    def _delete_quietly(self, key: str) -> None:
        try:
            self.inner.delete(key)
        except Exception as exc:  # the put's own error is the one to report
            logger.warning("could not remove %s from %s: %s", key, self.inner.where, exc)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def read(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.read(key, offset=offset, length=length)

    def get_file(self, key: str, dest: Path, *, progress: ByteProgress | None = None) -> ObjectInfo:
        return self.inner.get_file(key, dest, progress=progress)

    def check_access(self) -> None:
        self.inner.check_access()

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def cleanup(self) -> builtins.list[str]:
        return self.inner.cleanup()

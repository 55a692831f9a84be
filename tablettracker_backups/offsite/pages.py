"""Format 2 offsite: the folder's page store under the prefix, moved object by object.

A version 2 backup offsite is what it is locally: its manifest, and the packs and node packs
its index reaches, shared with the other backups under the same names (``pages/...``). So:

* **Upload** (:func:`push_backup`) sends only the objects the prefix lacks, then the
  manifest, last, after every object it names. What the prefix holds is known from **one
  listing per sync** (:class:`Listing`), not a request per object: an object named by its
  hash that is listed counts as held (it was checked against that hash when it was stored).
  A killed upload leaves objects no manifest names; the next sync finds them held and sends
  the rest.
* **Encryption**: with ``BACKUPS_ENCRYPT_TO`` set each pack, node pack and the page-hash key
  go as age files named ``<name>.age`` (the key too: with it, page hashes could be tested
  against guessed pages). :class:`SealedView` reads them back as plaintext with the
  identity, so the page store's own code builds a database from the prefix unchanged.
* **Collection** (:func:`collect_remote`): offsite retention deletes manifests only; then
  the same rule as :mod:`tablettracker_backups.garbage`: objects listed first, every
  manifest in the prefix read and its index walked, and only what no index reaches and is
  older than the grace period is deleted, one object at a time, last. A manifest or index
  that cannot be read stops collection there (keeping too much cannot damage anything).
  Index nodes are read from the local folders first (the same objects under the same
  names), so a sealed prefix is collected without the identity while the local folders
  still hold the nodes; else collection waits for a run with ``--identity``.
* **Ownership** (:func:`check_owner`): ``pages/owner`` names the database and a
  fingerprint of the folder's page-hash key. Another database, or another site's folder of
  the same database, has another key: its sync is refused before it sends or deletes
  anything (its pages would be hashed with another key, and each side's retention would
  prune the other's backups).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.encryption import Identity, open_bytes, seal_bytes
from tablettracker_backups.errors import (
    BackupError,
    ObjectCorrupt,
    ObjectNotFound,
    OffsiteError,
    OffsitePrefixTaken,
    VerificationError,
)
from tablettracker_backups.formats import PAGES, format_of, page_index
from tablettracker_backups.fsutil import open_private, removed_on_error
from tablettracker_backups.garbage import GRACE
from tablettracker_backups.layout import (
    NODES_PREFIX,
    OWNER_KEY,
    PACKS_PREFIX,
    PAGE_KEY_KEY,
    PAGES_PREFIX,
    content_sha256,
    manifest_id,
    manifest_key,
    node_key,
    pack_key,
    sealed_key,
    unsealed_key,
)
from tablettracker_backups.metadata import MAX_METADATA_BYTES, BackupMetadata
from tablettracker_backups.pagestore import (
    DamagedObject,
    PageIndex,
    folder_key,
    read_object,
    walk_index,
)
from tablettracker_backups.storage.base import (
    ByteProgress,
    ObjectInfo,
    ObjectStore,
    Source,
)
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.storage.sealed import is_age

logger = logging.getLogger(__name__)

OWNER_VERSION = 1


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- what the prefix holds ----------------------------------------------------------------------


@dataclass
class Listing:
    """One listing of the prefix: every object by key (updated as a sync stores objects)."""

    objects: dict[str, ObjectInfo] = field(default_factory=dict)

    @classmethod
    def of(cls, store: ObjectStore) -> Listing:
        """List ``store`` once."""
        return cls({info.key: info for info in store.list()})

    @property
    def has_pages(self) -> bool:
        """Whether the prefix holds a page store (so a manifest may have no data object)."""
        return any(key.startswith(PAGES_PREFIX) for key in self.objects)

    def holds(self, key: str) -> bool:
        """Whether ``key`` is listed (an object named by its hash: held)."""
        return key in self.objects


def remote_key(key: str, *, sealed: bool) -> str:
    """Where the page store's object ``key`` is offsite."""
    return sealed_key(key) if sealed else key


# -- reading a sealed page store ----------------------------------------------------------------


class _ReadOnly(ObjectStore):
    """A view for reading a page store: writes are a caller's bug."""

    def put(
        self,
        key: str,
        source: Source,
        *,
        sha256: str,
        progress: ByteProgress | None = None,
    ) -> ObjectInfo:
        raise TypeError(f"{self.where} is read-only")  # a caller's bug

    def delete(self, key: str) -> None:
        raise TypeError(f"{self.where} is read-only")  # a caller's bug

    def cleanup(self) -> builtins.list[str]:
        return []

    def get_file(self, key: str, dest: Path, *, progress: ByteProgress | None = None) -> ObjectInfo:
        data = self.read(key)
        created = open_private(dest)
        with removed_on_error(dest), created as out:
            out.write(data)
        if progress is not None:
            progress(len(data))
        return ObjectInfo(key, len(data), sha256=_sha256(data))


class SealedView(_ReadOnly):
    """The plaintext of a sealed page store: ``key`` read from ``<key>.age`` and decrypted
    with ``identity`` (age authenticates every chunk; the page store then checks each
    object against its name as always)."""

    def __init__(self, inner: ObjectStore, identity: Identity) -> None:
        self.inner = inner
        self.identity = identity
        self.where = inner.where

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for info in self.inner.list(prefix):
            plain = unsealed_key(info.key)
            if plain is not None:
                yield ObjectInfo(plain, info.size, info.modified)

    def stat(self, key: str) -> ObjectInfo:
        info = self.inner.stat(sealed_key(key))
        return ObjectInfo(key, info.size, info.modified)

    def read(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        sealed = sealed_key(key)
        try:
            plain = open_bytes(
                self.inner.read(sealed), self.identity, label=f"{sealed} in {self.inner.where}"
            )
        except VerificationError as exc:
            raise DamagedObject(key, str(exc)) from exc
        return plain[offset : None if length is None else offset + length]


class _FirstOf(_ReadOnly):
    """Reads from the first of ``stores`` that holds the object sound (index nodes, which the
    local folders hold under the same names as the prefix)."""

    def __init__(self, stores: Sequence[ObjectStore]) -> None:
        self.stores = list(stores)
        self.where = self.stores[-1].where

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.stores[-1].list(prefix)

    def stat(self, key: str) -> ObjectInfo:
        return self.stores[-1].stat(key)

    def read(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        sha = content_sha256(key)
        for store in self.stores[:-1]:
            try:
                data = read_object(store, key, sha) if sha else store.read(key)
            except (ObjectNotFound, ObjectCorrupt):
                continue
            return data[offset : None if length is None else offset + length]
        return self.stores[-1].read(key, offset=offset, length=length)


def page_view(
    objects: ObjectStore, metadata: BackupMetadata, identity: Identity | None
) -> ObjectStore:
    """The prefix's page store as ``metadata``'s backup has it: the plain objects, or the
    sealed ones opened with ``identity`` (the caller checked that it opens them)."""
    if metadata.encryption is None:
        return objects
    if identity is None:
        raise ValueError(f"backup {metadata.id} is sealed: an identity is needed")  # caller's bug
    return SealedView(objects, identity)


# -- ownership ----------------------------------------------------------------------------------


def key_fingerprint(key: bytes) -> str:
    """What ``pages/owner`` shows of a folder's page-hash key (it tells nothing of it)."""
    digest = hashlib.blake2b(b"tablettracker-backups offsite owner", key=key, digest_size=16)
    return digest.hexdigest()


def owner_document(database: str, key: bytes) -> bytes:
    """The ``pages/owner`` document of the folder whose page-hash key is ``key``."""
    document = {"version": OWNER_VERSION, "database": database, "key": key_fingerprint(key)}
    return (json.dumps(document, sort_keys=True) + "\n").encode()


def local_key(local: LocalStore) -> bytes | None:
    """The local folder's page-hash key; None when it has no page store yet."""
    try:
        return folder_key(local)
    except (ObjectNotFound, ObjectCorrupt):
        return None


def check_owner(
    objects: ObjectStore, listing: Listing, *, database: str, key: bytes | None, where: str
) -> None:
    """Raise :class:`OffsitePrefixTaken` when the prefix's page store belongs to another
    backup folder: another database, or (``key`` given) a folder with another page-hash key
    (another site). Nothing to check when the prefix has no page store yet."""
    if not listing.holds(OWNER_KEY):
        return
    try:
        document = json.loads(objects.read(OWNER_KEY, length=4096))
        theirs, their_key = document["database"], document["key"]
    except ObjectNotFound:
        return  # removed since the listing: nobody's yet
    except (ValueError, KeyError, TypeError) as exc:
        raise OffsitePrefixTaken(
            f"the offsite store {where} has an unreadable {OWNER_KEY}: it may belong to "
            "another backup folder; nothing was uploaded or deleted"
        ) from exc
    if theirs != database:
        raise OffsitePrefixTaken(
            f"the offsite store {where} holds the backups of database {theirs!r}, not "
            f"{database!r}: give each database its own prefix; nothing was uploaded or deleted"
        )
    if key is not None and their_key != key_fingerprint(key):
        raise OffsitePrefixTaken(
            f"the offsite store {where} holds the backups of another backup folder of "
            f"{database!r} (another site, or a folder started anew): give each its own "
            "prefix; nothing was uploaded or deleted"
        )


# -- upload -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pushed:
    """What one format 2 upload sent."""

    objects: int
    bytes: int
    #: How the provider checked the manifest (the last object stored).
    check: str


def push_backup(
    objects: ObjectStore,
    local: LocalStore,
    metadata: BackupMetadata,
    manifest: bytes,
    listing: Listing,
    *,
    database: str,
    recipients: Sequence[str] | None = None,
    progress: ByteProgress | None = None,
) -> Pushed:
    """Upload the version 2 backup ``metadata`` from the sound local folder ``local``: the
    objects ``listing`` does not hold (sealed to ``recipients`` when given), then
    ``manifest`` last. ``listing`` learns what was stored.

    Raises :class:`VerificationError` when the local copy cannot give a sound object (try
    another copy), :class:`PlaintextRefused` (before anything is sent), and what the store
    raises. Objects stored before a failure stay: named by their hash, they are held by the
    next try, and collected if no manifest ever names them.
    """
    sealed = recipients is not None
    objects.vet(manifest_key(metadata.id), manifest)
    parts = PAGES.parts(local, metadata)
    key = folder_key(local)
    sent = size = 0
    if not listing.holds(OWNER_KEY):
        _store(objects, listing, OWNER_KEY, owner_document(database, key), progress)
    for part in parts:
        target = remote_key(part.key, sealed=sealed)
        if listing.holds(target):
            continue
        try:
            body: Path | bytes
            if recipients is not None:
                sealed_body = seal_bytes(read_object(local, part.key, part.sha256), recipients)
                body, sha = sealed_body, _sha256(sealed_body)
            else:
                body, sha = local.path_of(part.key), part.sha256
            info = _store(objects, listing, target, body, progress, sha=sha)
        except ObjectCorrupt as exc:
            raise VerificationError(f"backup {metadata.id}: {exc}") from exc
        sent += 1
        size += info.size
        crash_point(Stage.OFFSITE_OBJECT)
    crash_point(Stage.OFFSITE_MANIFEST)
    info = _store(objects, listing, manifest_key(metadata.id), manifest, progress)
    logger.info("uploaded format 2 backup %s: %d new object(s), %d bytes", metadata.id, sent, size)
    return Pushed(sent, size + info.size, info.checked_by or "")


def _store(
    objects: ObjectStore,
    listing: Listing,
    key: str,
    body: Path | bytes,
    progress: ByteProgress | None,
    *,
    sha: str | None = None,
) -> ObjectInfo:
    if sha is None:
        assert isinstance(body, bytes)
        sha = _sha256(body)
    info = objects.put(key, body, sha256=sha, progress=progress)
    listing.objects[key] = info
    return info


# -- checks -------------------------------------------------------------------------------------


def _needs(
    store: ObjectStore, index: PageIndex, *, seen: set[str] | None = None
) -> tuple[list[str], set[str]]:
    """The node packs and the packs (SHA-256s) the index needs, walked in ``store``; with
    ``seen`` (shared over walks), what nodes walked before need is not reported again."""
    packs: set[str] = set()
    nodes = walk_index(store, index, lambda _hash, pack, _offset: packs.add(pack), seen=seen)
    return nodes, packs


def check_sealed_pages(
    objects: ObjectStore, metadata: BackupMetadata, local_folders: Sequence[Path]
) -> None:
    """Check a sealed version 2 copy without the identity: its key and every object its
    index reaches (walked from the local folders' nodes, which are the same objects; else
    only the root's node pack) are stored and are age files. Raises
    :class:`VerificationError`."""
    index = page_index(metadata)
    keys = [node_key(index.root_pack)]
    locals_ = [LocalStore(folder) for folder in local_folders]
    for store in locals_:
        try:
            nodes, packs = _needs(store, index)
        except BackupError:
            continue
        keys = [node_key(sha) for sha in nodes] + [pack_key(sha) for sha in sorted(packs)]
        break
    for key in (PAGE_KEY_KEY, *keys):
        sealed = sealed_key(key)
        try:
            head = objects.read(sealed, length=32)
        except ObjectNotFound as exc:
            raise VerificationError(f"{sealed} is missing from {objects.where}") from exc
        if not is_age(head):
            message = f"{sealed} in {objects.where} is not an age file"
            # Named by its hash, it would count as held: the cause lets the caller drop it.
            raise VerificationError(message) from DamagedObject(key, message)


def damaged_key(exc: BaseException) -> str | None:
    """The page store object a failed check found damaged (from its cause chain), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DamagedObject):
            return seen.key
        seen = seen.__cause__
    return None


# -- collection ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteCollection:
    """What offsite collection did."""

    deleted: tuple[str, ...] = ()
    freed_bytes: int = 0
    #: Unneeded objects younger than the grace period (kept this time).
    young: int = 0
    #: Why nothing was deleted, when something could not be read.
    refused: str | None = None


def _live(
    objects: ObjectStore,
    local_folders: Sequence[Path],
    identity: Identity | None,
) -> set[str]:
    """The plaintext keys of every pack and node pack some manifest in the prefix needs.
    Raises :class:`BackupError` when a manifest or an index cannot be read."""
    live: set[str] = set()
    names = sorted(info.key for info in objects.list() if "/" not in info.key)
    locals_: list[ObjectStore] = [LocalStore(folder) for folder in local_folders]
    # Index nodes walked: a backup shares most of its index with the one before, so the walk
    # costs what the backups changed (as local collection's does).
    seen: set[str] = set()
    for name in names:
        backup_id = manifest_id(name)
        if backup_id is None:
            continue
        try:
            text = objects.read(name, length=MAX_METADATA_BYTES + 1)
        except ObjectNotFound:
            continue  # deleted since the listing: it needs nothing
        try:
            metadata = BackupMetadata.from_json(text, expected_id=backup_id)
            if format_of(metadata) is not PAGES:
                continue
            if metadata.encryption is not None:
                remote: ObjectStore = (
                    SealedView(objects, identity) if identity is not None else _NoIdentity(objects)
                )
            else:
                remote = objects
            nodes, packs = _needs(_FirstOf([*locals_, remote]), page_index(metadata), seen=seen)
        except BackupError as exc:
            raise OffsiteError(f"offsite manifest {name} or its index: {exc}") from exc
        live.update(node_key(sha) for sha in nodes)
        live.update(pack_key(sha) for sha in packs)
    return live


class _NoIdentity(_ReadOnly):
    """A sealed prefix without the identity: every read is refused (collection waits)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.where = inner.where

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(())

    def stat(self, key: str) -> ObjectInfo:
        raise ObjectNotFound(f"{key}: sealed, and no identity was given")

    def read(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        raise OffsiteError(
            f"{sealed_key(key)} in {self.where} is sealed and no local folder holds it: "
            "collect with the identity (run --identity FILE)"
        )


def collect_remote(
    objects: ObjectStore,
    local_folders: Sequence[Path],
    *,
    identity: Identity | None = None,
    now: datetime | None = None,
    grace: timedelta = GRACE,
) -> RemoteCollection:
    """Delete the prefix's packs and node packs (plain or sealed) that no manifest there
    needs and that are older than ``grace``, last and one at a time. Never raises for what
    it cannot read: collection is then refused (and what the store raises while deleting
    stops it; the next sync goes on)."""
    cutoff = (now or datetime.now(timezone.utc)) - grace
    # Listed before the manifests are read: an object stored after this is no candidate.
    candidates: list[tuple[str, str, int, datetime | None]] = []
    for info in objects.list(PAGES_PREFIX):
        plain = unsealed_key(info.key) or info.key
        if plain.startswith((PACKS_PREFIX, NODES_PREFIX)) and content_sha256(plain):
            candidates.append((info.key, plain, info.size, info.modified))
    if not candidates:
        return RemoteCollection()
    try:
        live = _live(objects, local_folders, identity)
    except BackupError as exc:
        logger.warning("collecting nothing offsite: %s", exc)
        return RemoteCollection(refused=str(exc))
    deleted: list[str] = []
    freed = young = 0
    for key, plain, size, modified in sorted(candidates):
        if plain in live:
            continue
        if modified is None or modified > cutoff:
            young += 1
            continue
        objects.delete(key)
        deleted.append(key)
        freed += size
        crash_point(Stage.OFFSITE_GC_DELETE)
    if deleted:
        logger.info("collected %d unneeded offsite object(s), %d bytes", len(deleted), freed)
    return RemoteCollection(tuple(deleted), freed, young)

"""What a backup's data is made of, by format version: the seam a second format plugs into.

A format answers, for a backup's manifest: which objects a copy of it must hold (what
:func:`.replicate.replicate` moves, each with the SHA-256 it must have), which of them belong
to it alone (deleted with it; objects shared between backups are collected instead), and how
its data becomes the database again, checked (:meth:`BackupFormat.extract`). Operations ask the
format; none of them knows that version 1 is one compressed file.

* Version 1, ``files`` (:class:`FilesFormat`): one compressed (and maybe age-encrypted) file of
  the whole database per backup, ``<id>.db.zst``.
* Version 2, ``pages`` (:class:`PagesFormat`): the folder's page store
  (:mod:`tablettracker_backups.pagestore`); a backup is a page index whose root its manifest
  names, and its packs and nodes are shared with the other backups.
* A version this code does not know is :class:`NewerFormat` (listed as "written by a newer
  version", never damaged, never deleted).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from tablettracker_backups.compression import hash_file
from tablettracker_backups.encryption import Identity
from tablettracker_backups.errors import (
    MetadataError,
    NewerFormat,
    ObjectCorrupt,
    ObjectNotFound,
    StorageError,
    VerificationError,
)
from tablettracker_backups.extract import check_built, extract_verified
from tablettracker_backups.fsutil import remove_quietly, temp_path
from tablettracker_backups.layout import data_keys, node_key
from tablettracker_backups.metadata import FORMAT_VERSION, PAGES_VERSION, BackupMetadata
from tablettracker_backups.pagestore import (
    PageIndex,
    build_database,
    check_objects,
    object_keys,
)
from tablettracker_backups.replicate import Part
from tablettracker_backups.snapshot import DatabaseCheck
from tablettracker_backups.storage.base import ObjectStore
from tablettracker_backups.storage.local import LocalStore

ByteProgress = Callable[[int], None]


class BackupFormat(ABC):
    """How one format version stores a backup's data."""

    #: The ``format_version`` its manifests carry.
    version: int
    #: A word for messages and ``--json``.
    name: str

    @abstractmethod
    def parts(self, store: ObjectStore, metadata: BackupMetadata) -> list[Part]:
        """The objects a copy of the backup must hold, each with its SHA-256 (``store`` holds
        a sound copy: a format whose parts are listed inside its objects reads them there)."""

    @abstractmethod
    def look(self, store: ObjectStore, metadata: BackupMetadata) -> str | None:
        """A cheap look at the copy in ``store`` (no hashing): what is wrong with it, or None."""

    @abstractmethod
    def check(self, store: ObjectStore, metadata: BackupMetadata) -> list[str]:
        """Re-hash every object of the copy in ``store``; the problems found (none: sound).
        Raises :class:`StorageError` when the store cannot be read at all."""

    def damaged(self, store: ObjectStore, metadata: BackupMetadata) -> list[str]:
        """Objects of the copy in ``store`` that are there but whose bytes do not hash to
        what they must: a repair replaces them (a copy moves only what a place lacks, and
        an object named by its hash counts as held)."""
        return []

    @abstractmethod
    def owned_keys(self, metadata: BackupMetadata) -> list[str]:
        """The objects deleted with the backup (every name they may have)."""

    @abstractmethod
    def extract(
        self,
        store: ObjectStore,
        metadata: BackupMetadata,
        dest: Path,
        *,
        scratch: Path,
        identity: Identity | None = None,
        progress: ByteProgress | None = None,
        full: bool = True,
    ) -> DatabaseCheck | None:
        """Write the database the backup holds into the new file ``dest``, checked against
        the manifest (see :func:`.extract.extract_verified`); ``scratch`` holds downloads.
        Returns the data checks' outcome when they ran (``full``, or a snapshot filed
        unchecked: :func:`.extract.check_built`)."""


class FilesFormat(BackupFormat):
    """Version 1: one compressed file of the whole database."""

    version = 1
    name = "files"

    def parts(self, store: ObjectStore, metadata: BackupMetadata) -> list[Part]:
        return [Part(metadata.data_file, metadata.sha256)]

    def look(self, store: ObjectStore, metadata: BackupMetadata) -> str | None:
        try:
            size: int | None = store.stat(metadata.data_file).size
        except (ObjectNotFound, StorageError):
            size = None
        return self.size_problem(size, metadata)

    @staticmethod
    def size_problem(size: int | None, metadata: BackupMetadata) -> str | None:
        """What is wrong with a data file of ``size`` bytes (None: not there), or None."""
        if size is None:
            return "data file is missing"
        if size != metadata.stored_size:
            return f"data file is {size} bytes, metadata says {metadata.stored_size}"
        return None

    def check(self, store: ObjectStore, metadata: BackupMetadata) -> list[str]:
        if isinstance(store, LocalStore):
            _, digest = hash_file(store.path_of(metadata.data_file))
        else:
            digest = _sha256_hex(store.read(metadata.data_file))
        return [] if digest == metadata.sha256 else ["checksum differs"]

    def owned_keys(self, metadata: BackupMetadata) -> list[str]:
        return list(data_keys(metadata.id))

    def extract(
        self,
        store: ObjectStore,
        metadata: BackupMetadata,
        dest: Path,
        *,
        scratch: Path,
        identity: Identity | None = None,
        progress: ByteProgress | None = None,
        full: bool = True,
    ) -> DatabaseCheck | None:
        if isinstance(store, LocalStore):
            path = store.path_of(metadata.data_file)
            return extract_verified(
                path, metadata, dest, identity=identity, progress=progress, full=full
            )
        download = temp_path(scratch, metadata.data_file)
        try:
            store.get_file(metadata.data_file, download)
            return extract_verified(
                download,
                metadata,
                dest,
                identity=identity,
                progress=progress,
                full=full,
                shown=f"{metadata.data_file} in {store.where}",
            )
        finally:
            remove_quietly(download)


def page_index(metadata: BackupMetadata) -> PageIndex:
    """The page index a version 2 manifest names; raises :class:`MetadataError`."""
    return PageIndex.from_dict(metadata.extra.get("pages"))


class PagesFormat(BackupFormat):
    """Version 2: pages in the folder's page store, shared between backups.

    Its objects are shared, so none is deleted with a backup (garbage collection removes
    those no kept backup needs); its parts are every pack and node its index reaches, each
    named by its SHA-256, so a copy moves only what the other place lacks.
    """

    version = PAGES_VERSION
    name = "pages"

    def parts(self, store: ObjectStore, metadata: BackupMetadata) -> list[Part]:
        index = page_index(metadata)
        try:
            return [Part(key, sha) for key, sha in object_keys(store, index)]
        except ObjectCorrupt as exc:
            raise VerificationError(f"backup {metadata.id}: {exc}") from exc
        except ObjectNotFound as exc:
            raise VerificationError(f"backup {metadata.id}: an object is missing: {exc}") from exc

    def owned_keys(self, metadata: BackupMetadata) -> list[str]:
        return []

    def look(self, store: ObjectStore, metadata: BackupMetadata) -> str | None:
        try:
            store.stat(node_key(page_index(metadata).root_pack))
        except MetadataError as exc:
            return str(exc)
        except (ObjectNotFound, StorageError):
            return "its page index is missing"
        return None

    def check(self, store: ObjectStore, metadata: BackupMetadata) -> list[str]:
        try:
            return list(check_objects(store, page_index(metadata)).problems)
        except MetadataError as exc:
            return [str(exc)]

    def damaged(self, store: ObjectStore, metadata: BackupMetadata) -> list[str]:
        try:
            return list(check_objects(store, page_index(metadata)).damaged)
        except MetadataError:
            return []

    def extract(
        self,
        store: ObjectStore,
        metadata: BackupMetadata,
        dest: Path,
        *,
        scratch: Path,
        identity: Identity | None = None,
        progress: ByteProgress | None = None,
        full: bool = True,
    ) -> DatabaseCheck | None:
        try:
            index = page_index(metadata)
            build_database(store, index, dest)
            size, digest = hash_file(dest, progress)
            if size != metadata.raw_size or digest != metadata.raw_sha256:
                raise VerificationError(
                    "the database built from its pages does not match its manifest"
                )
            return check_built(dest, metadata, full=full)
        except (ObjectCorrupt, MetadataError) as exc:
            remove_quietly(dest)
            raise VerificationError(str(exc)) from exc
        except ObjectNotFound as exc:
            remove_quietly(dest)
            raise VerificationError(f"an object of backup {metadata.id} is missing: {exc}") from exc
        except BaseException:
            remove_quietly(dest)
            raise


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FILES = FilesFormat()
PAGES = PagesFormat()
_KNOWN: dict[int, BackupFormat] = {FILES.version: FILES, PAGES.version: PAGES}
#: The formats by the name ``BACKUPS_FORMAT`` gives them.
BY_NAME: dict[str, BackupFormat] = {FILES.name: FILES, PAGES.name: PAGES}
assert FORMAT_VERSION in _KNOWN  # the version new backups are written in is known here


#: The format a folder with no backups yet is given when ``BACKUPS_FORMAT`` is not set.
DEFAULT_FORMAT = "files"


def choose_format(
    setting: str | None,
    *,
    encrypted_locally: bool,
    offsite: bool,
    gzip: bool = False,
    newest: BackupMetadata | None,
) -> BackupFormat:
    """The format a new backup is written in: ``BACKUPS_FORMAT`` when set (``setting``); else
    the format of the folder's ``newest`` backup (a folder keeps what it has unless told);
    else :data:`DEFAULT_FORMAT`. Local encryption (``BACKUPS_ENCRYPT=all``) and gzip are
    version 1's alone for now (settings refuse ``pages`` with them); ``offsite`` no longer
    decides (format 2 goes offsite object by object)."""
    if setting is not None:
        return BY_NAME[setting]
    if encrypted_locally or gzip:
        return FILES
    if newest is not None and newest.format_version in _KNOWN:
        return _KNOWN[newest.format_version]
    return BY_NAME[DEFAULT_FORMAT]


def format_of(metadata: BackupMetadata) -> BackupFormat:
    """The format a backup was written in; raises :class:`NewerFormat` for one this code
    does not know (its manifest parsed, but nothing may read or delete its data)."""
    found = _KNOWN.get(metadata.format_version)
    if found is None:
        raise NewerFormat(
            f"backup {metadata.id} is in format {metadata.format_version}, written by a newer "
            f"version of tablettracker-backups; this one reads formats "
            f"{', '.join(map(str, sorted(_KNOWN)))}: upgrade to read it"
        )
    return found

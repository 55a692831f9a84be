"""What a backup's data is made of, by format version: the seam a second format plugs into.

A format answers, for a backup's manifest: which objects a copy of it must hold (what
:func:`.replicate.replicate` moves, each with the SHA-256 it must have), which of them belong
to it alone (deleted with it; objects shared between backups are collected instead), and how
its data becomes the database again, checked (:meth:`BackupFormat.extract`). Operations ask the
format; none of them knows that version 1 is one compressed file.

* Version 1, ``files`` (:class:`FilesFormat`): one compressed (and maybe age-encrypted) file of
  the whole database per backup, ``<id>.db.zst``.
* A version this code does not know is :class:`NewerFormat` (listed as "written by a newer
  version", never damaged, never deleted).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from tablettracker_backups.encryption import Identity
from tablettracker_backups.errors import NewerFormat
from tablettracker_backups.extract import extract_verified
from tablettracker_backups.fsutil import remove_quietly, temp_path
from tablettracker_backups.layout import data_keys
from tablettracker_backups.metadata import FORMAT_VERSION, BackupMetadata
from tablettracker_backups.replicate import Part
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
    def parts(self, metadata: BackupMetadata) -> list[Part]:
        """The objects a copy of the backup must hold, each with its SHA-256."""

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
    ) -> None:
        """Write the database the backup holds into the new file ``dest``, checked against
        the manifest (see :func:`.extract.extract_verified`); ``scratch`` holds downloads."""


class FilesFormat(BackupFormat):
    """Version 1: one compressed file of the whole database."""

    version = 1
    name = "files"

    def parts(self, metadata: BackupMetadata) -> list[Part]:
        return [Part(metadata.data_file, metadata.sha256)]

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
    ) -> None:
        if isinstance(store, LocalStore):
            path = store.path_of(metadata.data_file)
            extract_verified(path, metadata, dest, identity=identity, progress=progress, full=full)
            return
        download = temp_path(scratch, metadata.data_file)
        try:
            store.get_file(metadata.data_file, download)
            extract_verified(
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


FILES = FilesFormat()
_KNOWN: dict[int, BackupFormat] = {FILES.version: FILES}
assert FORMAT_VERSION in _KNOWN  # the version new backups are written in is known here


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

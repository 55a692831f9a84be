"""Copies heal: rebuild a missing or damaged copy of a backup from one that checks out.

A backup killed between its primary and secondary copies, a secondary disk that was away, or a
copy that a re-verify found damaged would otherwise stay broken until the backup ages out (for
a monthly slot, months of warnings). ``run`` calls :func:`heal_copies` under the operation lock:
each broken copy is rebuilt from another folder whose copy still hashes to its metadata's
SHA-256, or else downloaded from the offsite store, and the rebuilt file is hashed again before
it counts. An offsite copy sealed with age (``BACKUPS_ENCRYPT=offsite``) rebuilds a plain local
copy only with the identity (``run --identity FILE``): without it the repair says which key
it needs, and health repeats that. What could not be repaired is recorded, so health warns
only while a repair is impossible.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tablettracker_backups.backup import copy_between
from tablettracker_backups.encryption import Identity, decrypt_file, missing_identity
from tablettracker_backups.errors import (
    AgeIdentityError,
    BackupError,
    ObjectCorrupt,
    ObjectNotFound,
    StorageError,
    VerificationError,
)
from tablettracker_backups.formats import PAGES, format_of
from tablettracker_backups.fsutil import ensure_private_dir, remove_quietly, temp_path
from tablettracker_backups.layout import AGE_SUFFIX, manifest_key
from tablettracker_backups.metadata import BackupState, Verification
from tablettracker_backups.offsite.client import OffsiteStore
from tablettracker_backups.offsite.pages import SealedView
from tablettracker_backups.offsite.record import read_state
from tablettracker_backups.replicate import Part, replicate
from tablettracker_backups.states import CopyStatus
from tablettracker_backups.storage.base import ObjectStore
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.store import BackupInfo, BackupStore

logger = logging.getLogger(__name__)

#: Copy states a repair rebuilds. A copy that *differs* (another file under the same id,
#: each matching its own metadata) needs a person: neither side is known to be wrong.
REPAIRABLE = (CopyStatus.MISSING, CopyStatus.DAMAGED)


@dataclass(frozen=True)
class Repair:
    """One copy that was rebuilt (``ok``), or could not be (``error`` says why)."""

    id: str
    location: str
    source: str | None
    ok: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``run --json``, the status file)."""
        return asdict(self)

    def describe(self) -> str:
        """One line for a person."""
        if self.ok:
            return f"rebuilt the {self.location} copy of {self.id} from the {self.source} copy"
        return f"could not rebuild the {self.location} copy of {self.id}: {self.error}"


def broken_copies(
    store: BackupStore, infos: list[BackupInfo], *, recheck: int = 0
) -> list[tuple[BackupInfo, str]]:
    """(backup, location) for each copy that is missing or damaged.

    Listing compares sizes only; the ``recheck`` newest backups also have every copy hashed,
    so a copy damaged in place (a flipped byte) is found as soon as health would see it.
    """
    found = []
    for index, info in enumerate(infos):
        if info.metadata is None:
            continue  # metadata lost everywhere: nothing to rebuild it from
        for copy in info.copies:
            if copy.state in REPAIRABLE:
                found.append((info, copy.location))
            elif copy.state == CopyStatus.OK and index < recheck:
                try:
                    matches = store.checksum_matches(info, copy.location)
                except BackupError:
                    matches = False
                if not matches:
                    found.append((info, copy.location))
    return found


def heal_copies(
    store: BackupStore, *, recheck: int = 0, identity: Identity | None = None
) -> tuple[Repair, ...]:
    """Rebuild every missing or damaged copy that can be rebuilt; the caller holds the lock.
    ``identity`` opens an encrypted offsite copy that is the last source left.

    Never raises for one copy's trouble: each outcome is a :class:`Repair`.
    """
    infos = store.list()
    repairs = []
    offsite: _Offsite | None = None
    for info, location in broken_copies(store, infos, recheck=recheck):
        if offsite is None:
            offsite = _Offsite(store, identity)
        repair = _repair_one(store, info, location, offsite)
        (logger.info if repair.ok else logger.warning)("%s", repair.describe())
        repairs.append(repair)
    return tuple(repairs)


def _repair_one(store: BackupStore, info: BackupInfo, location: str, offsite: _Offsite) -> Repair:
    folder = store.locations[location]
    trouble = _folder_trouble(folder)
    if trouble is not None:
        return Repair(info.id, location, None, False, trouble)
    for source in store.locations:
        if source == location or info.copy_state(source) != CopyStatus.OK:
            continue
        try:
            if not store.checksum_matches(info, source):
                continue
            metadata = store.read_metadata(source, info.id)
            target = LocalStore(folder)
            for key in format_of(metadata).damaged(target, metadata):
                # Shared and named by its hash: replaced, not trusted for being there.
                target.delete(key)
            copy_between(store, source, location, metadata)
            _confirm(store, info, location)
        except BackupError as exc:
            return Repair(info.id, location, source, False, str(exc))
        return Repair(info.id, location, source, True)
    return offsite.rebuild(info, location)


def _folder_trouble(folder: Path) -> str | None:
    """Why copies cannot be written into ``folder`` now, or ``None``. A folder whose parent is
    missing is a disk that is not mounted: nothing is created in its place."""
    if not folder.is_dir():
        if not folder.parent.is_dir():
            return f"the folder {folder} is not there (is its disk mounted?)"
        try:
            ensure_private_dir(folder)
        except StorageError as exc:
            return str(exc)
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"permission denied: cannot write to {folder}"
    return None


def _confirm(store: BackupStore, info: BackupInfo, location: str) -> None:
    """The rebuilt file, read back from disk, must hash to the metadata's SHA-256.

    One that does not is taken away again, metadata first: it is already committed, and a
    copy that failed its check must not list as sound (sizes alone would pass it). The next
    run tries again. One that does is recorded as verified now (its state document, which
    may still hold the failed check that found it missing), with the backup's pin and label.
    """
    if not store.checksum_matches(info, location):
        assert info.metadata is not None  # checksum_matches needs it
        remove_quietly(store.metadata_path(location, info.id))
        remove_quietly(store.data_path_for(location, info.metadata))
        raise VerificationError(f"the rebuilt {location} copy of {info.id} does not match")
    assert info.metadata is not None
    known = info.metadata.verification
    now = datetime.now(timezone.utc)
    store.write_state(
        location,
        dataclasses.replace(
            BackupState.of(info.metadata),
            verification=Verification(
                ok=True,
                verified_at=now,
                integrity_check=known.integrity_check,
                foreign_key_violations=known.foreign_key_violations,
                # Re-hashed just now; the data checks stay as they were (run or not).
                checks=known.with_checks(("sha256",), now),
            ),
        ),
    )


class _Offsite:
    """The offsite store as a last source, opened only when a repair needs it."""

    def __init__(self, store: BackupStore, identity: Identity | None) -> None:
        self.store = store
        self.identity = identity
        settings = store.settings
        self.sound: set[str] = set()
        self.client: OffsiteStore | None = None
        if settings.offsite is not None:
            self.sound = {c.id for c in read_state(settings).copies.values() if c.ok}

    def rebuild(self, info: BackupInfo, location: str) -> Repair:
        local = info.metadata
        if info.id not in self.sound or local is None:
            return Repair(info.id, location, None, False, "no other copy checks out")
        folder = self.store.locations[location]
        sealed = temp_path(folder, local.data_file + AGE_SUFFIX)
        plain = temp_path(folder, local.data_file)
        try:
            if self.client is None:
                self.client = OffsiteStore.from_settings(self.store.settings)
            remote = self.client.read_metadata(info.id)
            if remote.content_sha256 != local.content_sha256:
                raise VerificationError(
                    f"the offsite copy of {info.id} holds other data than its local metadata"
                )
            source: ObjectStore = self.client.objects
            if remote.encryption is not None and local.format_version == PAGES.version:
                # Sealed packs offsite, plain here: the identity opens them one by one.
                if self.identity is None:
                    raise missing_identity(f"the offsite copy of {info.id}", remote.encryption)
                source = SealedView(self.client.objects, self.identity)
            parts = format_of(local).parts(source, local)
            whole_file = local.format_version != PAGES.version
            if whole_file and remote.encryption is not None and local.encryption is None:
                # Sealed offsite, plain here: only the identity turns one into the other.
                label = f"the offsite copy of {info.id}"
                if self.identity is None:
                    raise missing_identity(label, remote.encryption)
                self.client.download(info.id, remote.compression, sealed, encrypted=True)
                decrypt_file(sealed, plain, remote, self.identity, label=label)
                parts = [Part(local.data_file, local.sha256, path=plain)]
            elif whole_file and remote.data_file != local.data_file:
                raise VerificationError(
                    f"the offsite copy of {info.id} is stored as {remote.data_file}, "
                    f"not {local.data_file}"
                )
            replicate(
                source,
                LocalStore(folder),
                parts,
                (manifest_key(info.id), _local_manifest(self.store, info)),
                scratch=folder,
            )
            _confirm(self.store, info, location)
        except BackupError as exc:
            message = str(exc)
            if isinstance(exc, ObjectCorrupt):
                message = f"the offsite copy of {info.id} does not match its metadata"
            elif isinstance(exc, ObjectNotFound):
                message = f"the data of backup {info.id} is missing from the offsite store"
            elif isinstance(exc, AgeIdentityError):
                message += f"; with it, `run --identity FILE` rebuilds the {location} copy"
            return Repair(info.id, location, "offsite", False, message)
        finally:
            remove_quietly(sealed)
            remove_quietly(plain)
        return Repair(info.id, location, "offsite", True)


def _local_manifest(store: BackupStore, info: BackupInfo) -> bytes:
    """The manifest as a local folder keeps it (copies of a backup carry the same one)."""
    for source in store.locations:
        try:
            return store.read_manifest(source, info.id)
        except BackupError:
            continue
    assert info.metadata is not None
    return info.metadata.to_json().encode()

"""Backup folders: where backups are written, found, listed, compared and deleted.

Each folder (primary, optional secondary) holds, per backup, a data file ``<id>.db.zst`` (or
``.db.gz``) and a metadata document ``<id>.json``. The metadata is written last and is the commit
marker: a data file without metadata is debris from an interrupted run, never a backup.
"""

from __future__ import annotations

import builtins
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tablettracker_backups.compression import hash_file
from tablettracker_backups.errors import (
    BackupNotFound,
    InvalidBackupId,
    MetadataError,
    StorageError,
)
from tablettracker_backups.fsutil import (
    atomic_write_bytes,
    describe_os_error,
    remove_quietly,
)
from tablettracker_backups.metadata import (
    EXTENSIONS,
    MAX_METADATA_BYTES,
    BackupMetadata,
    data_filename,
    id_time,
    metadata_filename,
    validate_backup_id,
)
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import CopyStatus

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CopyState:
    """One location's copy of a backup, as seen by a cheap look (no hashing)."""

    location: str
    state: CopyStatus
    detail: str = ""


@dataclass(frozen=True)
class BackupInfo:
    """A backup as listed: its metadata (from the first readable copy) and where copies are."""

    id: str
    created_at: datetime
    metadata: BackupMetadata | None
    copies: tuple[CopyState, ...]
    problems: tuple[str, ...] = field(default=())
    #: At least one copy is present, unchanged, and passed its last verification.
    verified: bool = False

    @property
    def kind(self) -> str:
        """``scheduled``, ``manual``, ``auto``, ``pre-restore``, or ``unknown`` when metadata
        is lost."""
        return self.metadata.kind if self.metadata else "unknown"

    @property
    def good(self) -> bool:
        """A copy is faithful (present, unchanged, verified) and its source was not damaged.

        Until source damage is recorded in the metadata (the trust issue), verified is good.
        """
        return self.verified

    @property
    def stored_size(self) -> int:
        """Bytes of one stored copy (0 when metadata is lost)."""
        return self.metadata.stored_size if self.metadata else 0

    def copy_state(self, location: str) -> CopyStatus:
        """The state of the named location's copy."""
        for copy in self.copies:
            if copy.location == location:
                return copy.state
        return CopyStatus.MISSING

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready summary (``list --json``)."""
        meta = self.metadata
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "kind": self.kind,
            "size": meta.stored_size if meta else None,
            "raw_size": meta.raw_size if meta else None,
            "verified": self.verified,
            "verified_at": (
                meta.verification.verified_at.isoformat().replace("+00:00", "Z") if meta else None
            ),
            "compression": meta.compression if meta else None,
            "sha256": meta.sha256 if meta else None,
            "copies": {c.location: c.state for c in self.copies},
            "problems": list(self.problems),
        }


def newest_good(infos: Iterable[BackupInfo], *, regular: bool = True) -> BackupInfo | None:
    """The newest good backup of ``infos``; with ``regular`` never a ``pre-restore`` snapshot."""
    candidates = [i for i in infos if i.good and not (regular and i.kind == "pre-restore")]
    return max(candidates, key=lambda i: (i.created_at, i.id), default=None)


def is_backup_id(name: str) -> bool:
    """True for a valid id. A stray file like ``20261399T999999Z-3f9a1c.json`` (right shape,
    impossible date) must be ignored, not break listing and every command that lists."""
    try:
        validate_backup_id(name)
    except InvalidBackupId:
        return False
    return True


class BackupStore:
    """The local backup folders named by :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.locations: dict[str, Path] = {"primary": settings.backup_dir}
        if settings.secondary_dir is not None:
            self.locations["secondary"] = settings.secondary_dir

    # -- paths ---------------------------------------------------------------------------

    def data_path(self, location: str, backup_id: str, compression: str) -> Path:
        """Where a data file lives (the id is validated, so the path stays in the folder)."""
        return self.locations[location] / data_filename(backup_id, compression)

    def metadata_path(self, location: str, backup_id: str) -> Path:
        """Where a metadata document lives."""
        return self.locations[location] / metadata_filename(backup_id)

    def require_folder(self) -> None:
        """Raise :class:`BackupNotFound` when no backup folder exists at all (a typo, usually)."""
        if not any(folder.is_dir() for folder in self.locations.values()):
            shown = " or ".join(str(folder) for folder in self.locations.values())
            raise BackupNotFound(f"no backup folder at {shown}")

    # -- reading -------------------------------------------------------------------------

    def read_metadata(self, location: str, backup_id: str) -> BackupMetadata:
        """Parse one copy's metadata; raises MetadataError, BackupNotFound or StorageError."""
        path = self.metadata_path(location, backup_id)
        try:
            # Non-blocking, and only a regular file is read: a FIFO named like metadata would
            # otherwise hang every listing, and a run holding the lock with it.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise MetadataError(f"{location} copy of {backup_id}: not a regular file")
                text = handle.read(MAX_METADATA_BYTES + 1)
        except FileNotFoundError:
            raise BackupNotFound(f"no backup {backup_id} in {location} folder") from None
        except OSError as exc:
            raise StorageError(describe_os_error(exc, path)) from None
        try:
            return BackupMetadata.from_json(text, expected_id=backup_id)
        except MetadataError as exc:
            raise MetadataError(f"{location} copy of {backup_id}: {exc}") from None

    def ids(self) -> list[str]:
        """Every backup id with a metadata file in any folder, newest first."""
        found: set[str] = set()
        for directory in self.locations.values():
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(describe_os_error(exc, directory)) from None
            for name in names:
                if name.endswith(".json") and is_backup_id(name[:-5]):
                    found.add(name[:-5])
        return sorted(found, reverse=True)

    def _look(self, backup_id: str) -> BackupInfo:
        metas: dict[str, BackupMetadata] = {}
        states: dict[str, CopyState] = {}
        problems: list[str] = []
        for location in self.locations:
            try:
                meta = self.read_metadata(location, backup_id)
            except BackupNotFound:
                states[location] = CopyState(location, CopyStatus.MISSING)
                continue
            except (MetadataError, StorageError) as exc:
                states[location] = CopyState(location, CopyStatus.DAMAGED, str(exc))
                problems.append(str(exc))
                continue
            data = self.data_path(location, backup_id, meta.compression)
            try:
                size = data.stat().st_size
            except OSError:
                states[location] = CopyState(location, CopyStatus.DAMAGED, "data file is missing")
                problems.append(f"{location} copy of {backup_id}: data file is missing")
                continue
            if size != meta.stored_size:
                detail = f"data file is {size} bytes, metadata says {meta.stored_size}"
                states[location] = CopyState(location, CopyStatus.DAMAGED, detail)
                problems.append(f"{location} copy of {backup_id}: {detail}")
                continue
            metas[location] = meta
            states[location] = CopyState(location, CopyStatus.OK)
        # Prefer a copy whose last verification passed: one bad copy must not hide a good one.
        chosen = next((m for m in metas.values() if m.verification.ok), None)
        chosen = chosen or next(iter(metas.values()), None)
        if chosen is None:
            # Fall back to any parseable metadata so a damaged backup still shows what it was.
            for location in self.locations:
                try:
                    chosen = self.read_metadata(location, backup_id)
                    break
                except (BackupNotFound, MetadataError, StorageError):
                    continue
        if chosen is not None:
            for location, meta in metas.items():
                if meta.sha256 != chosen.sha256:
                    states[location] = CopyState(location, CopyStatus.DIFFERS, "checksum differs")
                    problems.append(f"{location} copy of {backup_id} differs from the others")
        for location, meta in metas.items():
            if not meta.verification.ok:
                states[location] = CopyState(
                    location, CopyStatus.DAMAGED, meta.verification.error or ""
                )
                problems.append(
                    f"{location} copy of {backup_id} failed verification: "
                    f"{meta.verification.error or 'unknown'}"
                )
        verified = any(
            states[location].state == CopyStatus.OK and meta.verification.ok
            for location, meta in metas.items()
        )
        created = chosen.created_at if chosen is not None else id_time(backup_id)
        ordered = tuple(states[name] for name in self.locations)
        return BackupInfo(backup_id, created, chosen, ordered, tuple(problems), verified)

    def get(self, backup_id: str) -> BackupInfo:
        """One backup by id; raises InvalidBackupId or BackupNotFound."""
        validate_backup_id(backup_id)
        info = self._look(backup_id)
        if all(c.state == CopyStatus.MISSING for c in info.copies):
            raise BackupNotFound(f"no backup with id {backup_id}")
        return info

    def list(self) -> builtins.list[BackupInfo]:
        """Every backup, newest first, damaged ones included (marked by ``problems``).

        Ordered by the time in the metadata (as retention orders them), the id breaking ties.
        """
        infos = [self._look(backup_id) for backup_id in self.ids()]
        return sorted(infos, key=lambda i: (i.created_at, i.id), reverse=True)

    def latest(self, *, verified: bool = True, kinds: tuple[str, ...] | None = None) -> BackupInfo:
        """The newest (verified) backup; raises :class:`BackupNotFound` when there is none."""
        for info in self.list():
            if verified and not info.verified:
                continue
            if kinds is not None and info.kind not in kinds:
                continue
            return info
        raise BackupNotFound("there is no verified backup yet" if verified else "no backups yet")

    def checksum_matches(self, info: BackupInfo, location: str) -> bool:
        """Whether ``location``'s data file still hashes to the metadata's SHA-256.

        Listing compares sizes only; this reads the whole file. Raises :class:`StorageError`
        when it cannot be read, ``ValueError`` when the backup's metadata is lost.
        """
        if info.metadata is None:
            raise ValueError(f"backup {info.id} has no readable metadata")
        path = self.data_path(location, info.id, info.metadata.compression)
        _, digest = hash_file(path)
        return digest == info.metadata.sha256

    # -- writing -------------------------------------------------------------------------

    def write_metadata(self, location: str, meta: BackupMetadata) -> None:
        """Commit a backup in ``location`` by writing its metadata atomically."""
        atomic_write_bytes(self.metadata_path(location, meta.id), meta.to_json().encode())

    def delete(self, backup_id: str) -> None:
        """Delete every local copy; metadata first, so a half-deleted backup never lists."""
        validate_backup_id(backup_id)
        for location in self.locations:
            meta_path = self.metadata_path(location, backup_id)
            try:
                meta_path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StorageError(describe_os_error(exc, meta_path)) from None
            for compression in EXTENSIONS:
                remove_quietly(self.data_path(location, backup_id, compression))

    def cleanup_orphans(self) -> builtins.list[Path]:
        """Delete data files with no metadata (a crash between data and commit); under the lock."""
        removed: builtins.list[Path] = []
        for directory in self.locations.values():
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                for ext in EXTENSIONS.values():
                    if entry.name.endswith(ext):
                        backup_id = entry.name[: -len(ext)]
                        if (
                            is_backup_id(backup_id)
                            and not (directory / metadata_filename(backup_id)).exists()
                        ):
                            remove_quietly(entry)
                            removed.append(entry)
        return removed

"""Backup folders: where backups are written, found, listed, compared and deleted.

Each folder (primary, optional secondary) holds, per backup, its data file and its manifest,
named by :mod:`tablettracker_backups.layout`. The manifest is written last and is the commit
marker: a data file without one is debris from an interrupted run, never a backup. It is never
rewritten: what changes after the fact (a verification's outcome, the pin, the label) goes to
the backup's state document beside it, and reading a copy's metadata merges the two.
"""

from __future__ import annotations

import builtins
import functools
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from tablettracker_backups.catalog import FolderView, view_folder
from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.errors import (
    BackupNotFound,
    InvalidBackupId,
    MetadataError,
    NewerFormat,
    StorageError,
)
from tablettracker_backups.formats import FILES, format_of
from tablettracker_backups.fsutil import (
    atomic_write_bytes,
    describe_os_error,
    remove_quietly,
)
from tablettracker_backups.layout import (
    Part,
    data_key,
    data_keys,
    manifest_key,
    parse,
    state_key,
)
from tablettracker_backups.metadata import (
    CHECK_NAMES,
    MAX_METADATA_BYTES,
    REGULAR_KINDS,
    BackupMetadata,
    BackupState,
    id_time,
    validate_backup_id,
)
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import CopyStatus
from tablettracker_backups.storage.local import LocalStore

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
    #: At least one copy is present, unchanged, and passed its last verification: the stored
    #: file decompresses to exactly the snapshot (the copy is *faithful*).
    verified: bool = False

    @property
    def newer(self) -> bool:
        """Written by a newer version of this tool, unreadable here (and so never deleted)."""
        return self.metadata is None and any(c.state == CopyStatus.NEWER for c in self.copies)

    @property
    def kind(self) -> str:
        """``scheduled``, ``manual``, ``auto``, ``pre-restore``, or ``unknown`` when metadata
        is lost."""
        return self.metadata.kind if self.metadata else "unknown"

    @property
    def source_damaged(self) -> bool:
        """The live database failed ``integrity_check`` when this snapshot was taken."""
        return self.metadata is not None and self.metadata.source_damaged

    @property
    def checked(self) -> bool:
        """The full data checks have run on this snapshot (one filed when they did not fit the
        check budget has not had them until a verify, the drill or a restore runs them)."""
        return self.metadata is not None and self.metadata.checked

    @property
    def good(self) -> bool:
        """A faithful copy of data that was not damaged: what ``latest``, freshness and
        retention's "newest good" count. Foreign-key violations do not make a backup bad."""
        return self.verified and not self.source_damaged

    @property
    def regular(self) -> bool:
        """Any kind but a pre-restore safety snapshot (and not unknown)."""
        return self.kind in REGULAR_KINDS

    @property
    def pinned(self) -> bool:
        """Kept out of retention until unpinned."""
        return self.metadata is not None and self.metadata.pinned

    @property
    def label(self) -> str | None:
        """A person's note on this backup, if any."""
        return self.metadata.label if self.metadata else None

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
            # The full data checks (integrity, foreign keys, row counts) have run, and when
            # each check last ran (``None`` for one that never did).
            "checked": self.checked,
            "checks": (
                {name: _iso(meta.verification.ran(name)) for name in CHECK_NAMES} if meta else None
            ),
            "verified_at": (
                meta.verification.verified_at.isoformat().replace("+00:00", "Z") if meta else None
            ),
            "compression": meta.compression if meta else None,
            "sha256": meta.sha256 if meta else None,
            # Which keys open the local copies (fingerprints); None for plain copies.
            "encrypted_to": (
                list(meta.encryption.recipients) if meta and meta.encryption else None
            ),
            "copies": {c.location: c.state for c in self.copies},
            "problems": list(self.problems),
            "good": self.good,
            "label": self.label,
            "pinned": self.pinned,
            "findings": meta.findings.to_dict() if meta else None,
            "newer": self.newer,
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def newest_good(infos: Iterable[BackupInfo], *, regular: bool = True) -> BackupInfo | None:
    """The newest good backup (``infos`` newest first, as :meth:`BackupStore.list` gives them).

    With ``regular`` (the default) never a pre-restore safety snapshot: it holds the data a
    restore just replaced. This is what ``latest`` means everywhere.
    """
    for info in infos:
        if info.good and (info.regular or not regular):
            return info
    return None


def is_backup_id(name: str) -> bool:
    """True for a valid id. A stray file like ``20261399T999999Z-3f9a1c.json`` (right shape,
    impossible date) must be ignored, not break listing and every command that lists."""
    try:
        validate_backup_id(name)
    except InvalidBackupId:
        return False
    return True


T = TypeVar("T")


class ListingCache:
    """A listing of the backup folders, reused while the folders are unchanged.

    For a long-lived process that lists often: the admin pages. Listing reads every metadata
    file (2,000 for 1,000 backups in two folders); with this cache a page load costs one
    ``stat`` per folder. Adding, deleting, or rewriting a backup's metadata (always a rename,
    see :func:`atomic_write_bytes`) changes the folder's modification time, so the next listing
    is fresh. What a folder's time does not show, a data file changed in place, is what
    verification finds (and it rewrites the metadata). A folder changed less than
    :attr:`SETTLE` seconds ago is not trusted: a second change within the same tick of the
    file system's clock would leave its time as it was.

    Each listing it keeps has a generation number; values derived from it (retention plans,
    the pages' summaries) are kept under that number (:meth:`memo`), so they go with it.
    Thread-safe; one per app, never shared between processes.
    """

    SETTLE = 2.0
    MEMO_SIZE = 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stamp: tuple[object, ...] | None = None
        self._infos: tuple[BackupInfo, ...] = ()
        self._generation = 0
        self._memo: OrderedDict[Hashable, object] = OrderedDict()

    @classmethod
    def stamp(cls, folders: Iterable[Path]) -> tuple[object, ...] | None:
        """The folders' identity and modification times; None when one is too fresh to trust
        or cannot be looked at (then the listing is read, and reports the problem)."""
        stamps: list[object] = []
        now = time.time()
        for folder in folders:
            try:
                info = os.stat(folder)
            except FileNotFoundError:
                stamps.append((str(folder), None))
                continue
            except OSError:
                return None
            if now - info.st_mtime < cls.SETTLE:
                return None
            stamps.append((str(folder), info.st_dev, info.st_ino, info.st_mtime_ns))
        return tuple(stamps)

    def get(self, stamp: tuple[object, ...] | None) -> tuple[int, tuple[BackupInfo, ...]] | None:
        """The cached listing and its generation, if it was taken with the same ``stamp``."""
        with self._lock:
            if stamp is not None and stamp == self._stamp:
                return self._generation, self._infos
            return None

    def put(self, stamp: tuple[object, ...] | None, infos: Iterable[BackupInfo]) -> int | None:
        """Remember a listing read after taking ``stamp``; its generation, or None when a None
        stamp (folders too fresh to trust) means it is not remembered."""
        with self._lock:
            if stamp is None:
                return None
            self._generation += 1
            self._stamp, self._infos = stamp, tuple(infos)
            return self._generation

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, remembered under ``key`` (the key must name everything it uses;
        :meth:`BackupStore.memo` adds the listing's generation)."""
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]  # type: ignore[return-value]
        value = compute()
        with self._lock:
            self._memo[key] = value
            while len(self._memo) > self.MEMO_SIZE:
                self._memo.popitem(last=False)
        return value


class BackupStore:
    """The local backup folders named by :class:`Settings`.

    ``cache`` (a :class:`ListingCache`) lets :meth:`list` reuse a listing while the folders are
    unchanged; without it every listing reads the folders. With ``catalog`` (the default)
    :meth:`list` reads each folder through its catalog (:mod:`tablettracker_backups.catalog`)
    and parses only the manifests and state documents that changed since; without it, every
    one (the same listing, slower: what the tests compare it against).
    """

    def __init__(
        self, settings: Settings, *, cache: ListingCache | None = None, catalog: bool = True
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.use_catalog = catalog
        #: The cache's generation of this store's last listing; None when it was read afresh.
        self.generation: int | None = None
        self.locations: dict[str, Path] = {"primary": settings.backup_dir}
        if settings.secondary_dir is not None:
            self.locations["secondary"] = settings.secondary_dir

    # -- paths ---------------------------------------------------------------------------

    def data_path(
        self, location: str, backup_id: str, compression: str, *, encrypted: bool = False
    ) -> Path:
        """Where a data file lives (the id is validated, so the path stays in the folder)."""
        return self.locations[location] / data_key(backup_id, compression, encrypted=encrypted)

    def data_path_for(self, location: str, meta: BackupMetadata) -> Path:
        """Where the data file ``meta`` describes lives in ``location``."""
        return self.data_path(
            location, meta.id, meta.compression, encrypted=meta.encryption is not None
        )

    def metadata_path(self, location: str, backup_id: str) -> Path:
        """Where a backup's manifest lives."""
        return self.locations[location] / manifest_key(backup_id)

    def state_path(self, location: str, backup_id: str) -> Path:
        """Where what changes about a backup after the fact lives (its state document)."""
        return self.locations[location] / state_key(backup_id)

    def require_folder(self) -> None:
        """Raise :class:`BackupNotFound` when no backup folder exists at all (a typo, usually)."""
        if not any(folder.is_dir() for folder in self.locations.values()):
            shown = " or ".join(str(folder) for folder in self.locations.values())
            raise BackupNotFound(f"no backup folder at {shown}")

    # -- reading -------------------------------------------------------------------------

    def read_metadata(self, location: str, backup_id: str) -> BackupMetadata:
        """One copy's metadata: its manifest, with its state document's pin, label and latest
        verification over the manifest's own; raises MetadataError, BackupNotFound or
        StorageError."""
        text = self._read_small(location, backup_id, self.metadata_path(location, backup_id))
        if text is None:
            # NotADirectoryError counts too: a file stands where the folder should be (a
            # secondary disk that is away); no copy here is not the same as a damaged one.
            raise BackupNotFound(f"no backup {backup_id} in {location} folder")
        try:
            manifest = BackupMetadata.from_json(text, expected_id=backup_id)
        except MetadataError as exc:
            # The same kind of error (a newer format is not damage), saying which copy.
            raise type(exc)(f"{location} copy of {backup_id}: {exc}") from exc
        state = self._read_small(location, backup_id, self.state_path(location, backup_id))
        if state is None:
            return manifest
        try:
            return BackupState.from_json(state, expected_id=backup_id).applied_to(manifest)
        except MetadataError as exc:
            raise type(exc)(f"{location} copy of {backup_id}: state: {exc}") from exc

    def read_manifest(self, location: str, backup_id: str) -> bytes:
        """The manifest's bytes exactly as stored (what a copy of the backup must carry);
        raises BackupNotFound or StorageError."""
        text = self._read_small(location, backup_id, self.metadata_path(location, backup_id))
        if text is None:
            raise BackupNotFound(f"no backup {backup_id} in {location} folder")
        return text

    def read_state_bytes(self, location: str, backup_id: str) -> bytes | None:
        """The state document's bytes as stored, or None when there is none."""
        return self._read_small(location, backup_id, self.state_path(location, backup_id))

    def _read_small(self, location: str, backup_id: str, path: Path) -> bytes | None:
        """A small document's bytes, or None when there is none; raises MetadataError for
        something that is not a regular file, StorageError when it cannot be read."""
        try:
            # Non-blocking, and only a regular file is read: a FIFO named like metadata would
            # otherwise hang every listing, and a run holding the lock with it.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise MetadataError(f"{location} copy of {backup_id}: not a regular file")
                return handle.read(MAX_METADATA_BYTES + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(describe_os_error(exc, path)) from exc

    def ids(self) -> list[str]:
        """Every backup id with a metadata file in any folder, newest first."""
        found: set[str] = set()
        for location, directory in self.locations.items():
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if location != "primary":
                    # A secondary folder that cannot be read hides only its own copies (they
                    # list as missing or damaged); the primary's backups must still list.
                    logger.warning("cannot list the %s folder: %s", location, exc)
                    continue
                raise StorageError(describe_os_error(exc, directory)) from exc
            for name in names:
                parsed = parse(name)
                if parsed is not None and parsed[0] is Part.MANIFEST and is_backup_id(parsed[1]):
                    found.add(parsed[1])
        return sorted(found, reverse=True)

    def _look(self, backup_id: str, views: dict[str, FolderView] | None = None) -> BackupInfo:
        """One backup as listed; from ``views`` (one folder scan each, through the catalog)
        when given, else from the files themselves."""
        read = self.read_metadata if views is None else lambda loc, i: views[loc].metadata(i)
        metas: dict[str, BackupMetadata] = {}
        states: dict[str, CopyState] = {}
        problems: list[str] = []
        for location in self.locations:
            try:
                meta = read(location, backup_id)
            except BackupNotFound:
                states[location] = CopyState(location, CopyStatus.MISSING)
                continue
            except NewerFormat as exc:
                states[location] = CopyState(location, CopyStatus.NEWER, str(exc))
                continue
            except (MetadataError, StorageError) as exc:
                states[location] = CopyState(location, CopyStatus.DAMAGED, str(exc))
                problems.append(str(exc))
                continue
            fmt = format_of(meta)
            if views is not None and fmt is FILES:
                # The folder scan already has the data file's size: no stat per backup.
                detail = FILES.size_problem(views[location].sizes.get(meta.data_file), meta)
            else:
                detail = fmt.look(LocalStore(self.locations[location]), meta)
            if detail is not None:
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
                    chosen = read(location, backup_id)
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
        self.generation = None
        stamp = None
        if self.cache is not None:
            # Taken before reading, so a change made while reading shows in the next stamp.
            stamp = self.cache.stamp(self.locations.values())
            cached = self.cache.get(stamp)
            if cached is not None:
                self.generation = cached[0]
                return builtins.list(cached[1])
        infos = self._read_listing()
        infos.sort(key=lambda i: (i.created_at, i.id), reverse=True)
        if self.cache is not None:
            self.generation = self.cache.put(stamp, infos)
        return infos

    def _read_listing(self) -> builtins.list[BackupInfo]:
        views = self._views() if self.use_catalog else None
        if views is None:
            return [self._look(backup_id) for backup_id in self.ids()]
        found = set().union(*(view.ids for view in views.values()))
        return [self._look(backup_id, views) for backup_id in found]

    def _views(self) -> dict[str, FolderView] | None:
        """Each folder as its catalog and one scan show it (what :meth:`ids` and
        :meth:`read_metadata` would find, with the same errors)."""
        views: dict[str, FolderView] = {}
        for location, directory in self.locations.items():
            try:
                views[location] = view_folder(
                    directory, location, functools.partial(self.read_metadata, location)
                )
            except FileNotFoundError:
                views[location] = FolderView(location)
            except OSError:
                # A folder that cannot be listed: reading the files says what it means (an
                # error for the primary, copies marked for a secondary), as without a catalog.
                return None
        return views

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()`` for a value derived from this store's last :meth:`list`, computed once
        per cached listing; without a cache (or a listing too fresh to cache), every time."""
        if self.cache is None or self.generation is None:
            return compute()
        return self.cache.memo((self.generation, key), compute)

    def latest(self) -> BackupInfo:
        """``latest``: the newest good regular backup (:func:`newest_good`).

        Raises :class:`BackupNotFound` when there is none.
        """
        infos = self.list()
        found = newest_good(infos)
        if found is None:
            if any(i.verified and i.regular for i in infos):
                raise BackupNotFound(
                    "there is no good backup: every verified backup holds damaged data "
                    "(source-damaged); give a backup id to restore one anyway"
                )
            raise BackupNotFound("there is no verified backup yet")
        return found

    def newest(self) -> BackupInfo:
        """The newest backup: the newest regular one (scheduled, manual, ``auto``), whatever
        its state, never a pre-restore safety snapshot. What ``newest`` means everywhere
        (``status``, ``health``, the dashboard, ``verify`` without an id). Raises
        :class:`BackupNotFound`."""
        infos = self.list()
        found = next((info for info in infos if info.kind != "pre-restore"), None)
        if found is None:
            raise BackupNotFound(
                "no backups yet" if not infos else "no backups yet besides safety snapshots"
            )
        return found

    def newest_safety_snapshot(self) -> BackupInfo:
        """The newest verified pre-restore snapshot (what ``restore --undo`` restores)."""
        for info in self.list():
            if info.kind == "pre-restore" and info.verified:
                return info
        raise BackupNotFound("there is no verified safety snapshot: no restore has been made")

    def checksum_matches(self, info: BackupInfo, location: str) -> bool:
        """Whether ``location``'s copy still hashes to what its manifest records (every object
        of it: the data file, or the packs and nodes of a page index).

        Listing only looks; this reads every byte. Raises :class:`StorageError`
        when it cannot be read, ``ValueError`` when the backup's metadata is lost.
        """
        if info.metadata is None:
            raise ValueError(f"backup {info.id} has no readable metadata")
        store = LocalStore(self.locations[location])
        return not format_of(info.metadata).check(store, info.metadata)

    # -- writing -------------------------------------------------------------------------

    def write_metadata(self, location: str, meta: BackupMetadata) -> None:
        """Commit a backup in ``location`` by writing its manifest atomically (once: what
        changes later goes to :meth:`write_state`)."""
        self.write_manifest(location, meta.id, meta.to_json().encode())

    def write_manifest(self, location: str, backup_id: str, text: bytes) -> None:
        """Write a manifest's exact bytes (a copy of the backup carries its manifest as it
        is); atomically, as the commit marker."""
        atomic_write_bytes(
            self.metadata_path(location, backup_id),
            text,
            crash_stage=Stage.METADATA_WRITE,  # pragma: no mutate
        )

    def write_state(
        self, location: str, state: BackupState, *, crash_stage: Stage | None = None
    ) -> None:
        """Record what changed about a backup after the fact in ``location`` (atomically);
        the manifest is not touched. Raises StorageError."""
        self.write_state_bytes(location, state.id, state.to_json().encode(), crash_stage)

    def write_state_bytes(
        self, location: str, backup_id: str, text: bytes, crash_stage: Stage | None = None
    ) -> None:
        """Write a state document's exact bytes (copied with its backup); raises StorageError."""
        atomic_write_bytes(self.state_path(location, backup_id), text, crash_stage=crash_stage)

    def delete(self, backup_id: str) -> None:
        """Delete every local copy; the manifest first, so a half-deleted backup never lists."""
        validate_backup_id(backup_id)
        for location in self.locations:
            meta_path = self.metadata_path(location, backup_id)
            try:
                meta_path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                pass  # no copy here (NotADirectoryError: a file where the folder should be)
            except OSError as exc:
                raise StorageError(describe_os_error(exc, meta_path)) from exc
            crash_point(Stage.PRUNE_DELETE)  # pragma: no mutate
            folder = self.locations[location]
            for name in (*data_keys(backup_id), state_key(backup_id)):
                remove_quietly(folder / name)

    def cleanup_orphans(self) -> builtins.list[Path]:
        """Delete data files with no metadata (a crash between data and commit); under the lock."""
        removed: builtins.list[Path] = []
        for directory in self.locations.values():
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                parsed = parse(entry.name)
                if parsed is None or parsed[0] is Part.MANIFEST or not is_backup_id(parsed[1]):
                    continue
                if not (directory / manifest_key(parsed[1])).exists():
                    # A data file or state document whose backup was never committed (or has
                    # been deleted): debris.
                    remove_quietly(entry)
                    removed.append(entry)
        return removed

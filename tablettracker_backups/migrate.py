"""Migration: a folder's version 1 backups (one file each) turned into version 2 (pages).

Each version 1 backup keeps its id, and so its time, kind, label, pin, state document
(verification, pin, label), and what its manifest's ``extra`` holds (a coordinated snapshot's
group, anomalies); a pre-restore safety snapshot stays one. Backups are taken oldest first,
each storing only the pages the previous one did not (its parent is the backup before it).

One backup, one copy (primary first, then the secondary), in this order:

1. its version 1 data file is decompressed and checked against its manifest (the SHA-256
   of the stored file and of the database); a copy that fails is left as it is and reported;
2. its pages go into the folder's page store (primary), or the objects the primary's twin
   needs are copied into the secondary's (crash point ``migrate-pages``);
3. the version 2 twin is built from those pages and must verify: the database's SHA-256 is
   the one the version 1 backup recorded, and the data checks agree (``migrate-verified``);
   in the secondary, an object it already held that turns out damaged is replaced from the
   primary (whose twin verified) and the twin is checked once more;
4. the manifest is replaced by the version 2 one, which records what the version 1 copy was
   (``extra["migrated"]``) (``migrate-manifest``);
5. only then is the version 1 data file deleted (``migrate-deleted``).

A kill at any point leaves each backup listed once, as version 1 (steps 1-3: the new objects
are named by no manifest, garbage collection's to take) or as version 2 with its version 1
file still beside it (step 4), which the next run checks again and deletes. Nothing of a
backup is lost at any point, and the next run goes on where this one stopped.

Left as they are, and reported: backups encrypted with age (version 2 does not encrypt local
folders yet: migrating would store them in plain), damaged copies (``verify`` and ``heal``
first), backups written by a newer version, and a secondary copy whose primary copy was not
migrated. Offsite copies are never touched: migration works on the local folders only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from tablettracker_backups.backup import cleanup_debris
from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.errors import (
    BackupNotFound,
    ConfigError,
    MetadataError,
    NewerFormat,
    ObjectNotFound,
    StorageError,
    VerificationError,
)
from tablettracker_backups.formats import FILES, PAGES, page_index
from tablettracker_backups.fsutil import remove_quietly, temp_path
from tablettracker_backups.layout import PAGE_KEY_KEY, content_sha256
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import PAGES_VERSION, BackupMetadata, utc_iso
from tablettracker_backups.pagestore import PageIndex, write_file_pages
from tablettracker_backups.replicate import Part
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import UNREADABLE_SCHEMA
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.store import BackupStore
from tablettracker_backups.version import __version__

logger = logging.getLogger(__name__)

#: The ``extra`` key of a migrated backup's manifest: what its version 1 copy was.
MIGRATED_KEY = "migrated"


class Outcome(str, Enum):
    """What migration did with one copy of a backup."""

    MIGRATED = "migrated"
    #: A run killed after the version 2 manifest: its version 1 file is deleted now.
    FINISHED = "finished"
    #: ``--dry-run``: would be migrated.
    WOULD_MIGRATE = "would-migrate"
    ENCRYPTED = "encrypted"
    #: A safety snapshot kept whatever it held, that never opened as SQLite (no pages).
    NOT_SQLITE = "not-sqlite"
    DAMAGED = "damaged"
    NEWER = "newer"
    #: A secondary copy whose primary copy is not (yet) version 2.
    WAITING = "waiting"
    FAILED = "failed"

    @property
    def left(self) -> bool:
        """The copy stays version 1."""
        return self not in (Outcome.MIGRATED, Outcome.FINISHED, Outcome.WOULD_MIGRATE)


@dataclass(frozen=True)
class Step:
    """One copy of one backup, and what migration did with it."""

    id: str
    location: str
    outcome: Outcome
    detail: str = ""
    #: Bytes of the version 1 data file (deleted, or that would be).
    freed: int = 0
    #: Bytes of packs and nodes this copy's migration wrote.
    added: int = 0

    def to_dict(self) -> dict[str, object]:
        """The JSON-ready form."""
        return {
            "id": self.id,
            "location": self.location,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "freed": self.freed,
            "added": self.added,
        }


@dataclass(frozen=True)
class MigrationResult:
    """What one migration of a database's folders did (or, dry, would do)."""

    steps: tuple[Step, ...]
    dry_run: bool
    #: Copies already version 2 before this run.
    already: int = 0

    @property
    def done(self) -> list[Step]:
        """Copies migrated (or that would be)."""
        return [s for s in self.steps if not s.outcome.left]

    @property
    def left(self) -> list[Step]:
        """Copies that stay version 1, each with why."""
        return [s for s in self.steps if s.outcome.left]

    @property
    def freed(self) -> int:
        """Bytes of version 1 data files deleted (or that would be)."""
        return sum(s.freed for s in self.done)

    @property
    def added(self) -> int:
        """Bytes of packs and nodes written."""
        return sum(s.added for s in self.done)

    @property
    def exit_code(self) -> int:
        """0 when nothing stays behind, 2 when a copy failed, 1 when some are left on purpose."""
        if any(s.outcome is Outcome.FAILED for s in self.steps):
            return 2
        return 1 if self.left else 0

    def describe(self) -> str:
        """One line for a person and the audit log."""
        verb = "would migrate" if self.dry_run else "migrated"
        text = f"{verb} {len(self.done)} copy(ies) to version 2"
        if self.left:
            text += f"; {len(self.left)} left as version 1"
        if self.already:
            text += f"; {self.already} already version 2"
        return text

    def to_dict(self) -> dict[str, object]:
        """The JSON-ready form (``migrate --json``)."""
        return {
            "dry_run": self.dry_run,
            "migrated": len(self.done),
            "left": len(self.left),
            "already": self.already,
            "freed": self.freed,
            "added": self.added,
            "steps": [s.to_dict() for s in self.steps],
            "exit_code": self.exit_code,
        }


def refusal(settings: Settings) -> str | None:
    """Why these settings keep the folder on version 1 (then nothing is migrated), or None.

    Settings under which new backups are written in version 1 anyway would make a folder
    that goes back and forth; those whose features version 2 lacks would lose them."""
    if settings.backup_format == "files":
        return (
            "BACKUPS_FORMAT=files keeps this folder on version 1: unset it (or set "
            "BACKUPS_FORMAT=pages) to migrate"
        )
    if settings.encryption is not None and settings.encryption.local:
        return (
            "BACKUPS_ENCRYPT=all: version 2 does not encrypt local folders yet, so its "
            "backups stay version 1"
        )
    if settings.compression != "zstd":
        return "BACKUPS_COMPRESSION=gzip is version 1's: version 2 stores its packs with zstd"
    if settings.offsite is not None:
        return (
            "an offsite place is set (BACKUPS_S3_BUCKET, BACKUPS_RCLONE_REMOTE): migrate "
            "does not carry offsite copies over yet (they would stay version 1 under the "
            "same ids), so its backups stay version 1"
        )
    return None


def migrate(
    settings: Settings, *, dry_run: bool = False, on_step: Callable[[Step], None] | None = None
) -> MigrationResult:
    """Turn the version 1 backups of the database's local folders into version 2;
    ``on_step`` hears of each copy as it is done (a long migration shows its progress).

    Under the operation lock. Returns what was done to each copy; copies left behind are
    listed with why (encrypted, damaged, newer, ...), never an error. Raises
    :class:`ConfigError` when the settings keep the folder on version 1 (:func:`refusal`),
    :class:`BackupNotFound` when there is no backup folder, :class:`LockedError`, and
    :class:`StorageError` when a folder cannot be written.
    """
    reason = refusal(settings)
    if reason is not None:
        raise ConfigError(f"nothing migrated: {reason}")
    store = BackupStore(settings, catalog=False)
    store.require_folder()
    with operation_lock(settings):
        if not dry_run:
            cleanup_debris(settings)
        return _Migration(store, dry_run, on_step).run()


class _Migration:
    def __init__(
        self, store: BackupStore, dry_run: bool, on_step: Callable[[Step], None] | None
    ) -> None:
        self.store = store
        self.dry_run = dry_run
        self.steps = _Steps(on_step)
        self.already = 0
        #: The index of the newest version 2 backup so far in the primary folder (the
        #: parent of the next one: its pages are not stored again).
        self.parent: PageIndex | None = None
        #: Backups whose primary copy a dry run would migrate.
        self.would: set[str] = set()

    def run(self) -> MigrationResult:
        # Oldest first (as listed: by the time of the data, the id breaking ties), so each
        # backup's parent is the one before it.
        for info in reversed(self.store.list()):
            backup_id = info.id
            self._primary(backup_id)
            if "secondary" in self.store.locations:
                self._secondary(backup_id)
        return MigrationResult(tuple(self.steps), self.dry_run, self.already)

    # -- one copy ------------------------------------------------------------------------

    def _manifest(self, location: str, backup_id: str) -> BackupMetadata | Step | None:
        """The copy's manifest as stored (its state document apart); a Step when it cannot be
        read, None when there is no copy."""
        try:
            text = self.store.read_manifest(location, backup_id)
            return BackupMetadata.from_json(text, expected_id=backup_id)
        except BackupNotFound:
            return None
        except NewerFormat as exc:
            return Step(backup_id, location, Outcome.NEWER, str(exc))
        except (MetadataError, StorageError) as exc:
            return Step(backup_id, location, Outcome.DAMAGED, f"its manifest: {exc}")

    def _primary(self, backup_id: str) -> None:
        meta = self._manifest("primary", backup_id)
        if isinstance(meta, Step):
            self.steps.append(meta)
            return
        if meta is None:
            return
        folder = self.store.locations["primary"]
        if meta.format_version == PAGES_VERSION:
            step = self._finish(folder, "primary", meta)
            if step is not None:
                self.steps.append(step)
            else:
                self.already += 1
            if step is None or not step.outcome.left:
                self._adopt(meta)
            return
        step = self._leave(folder, "primary", meta)
        if step is not None:
            self.steps.append(step)
            return
        if self.dry_run:
            self.would.add(meta.id)
            self.steps.append(self._would(folder, "primary", meta))
            return
        try:
            self.steps.append(self._migrate_primary(folder, meta))
        except (VerificationError, MetadataError, ObjectNotFound) as exc:
            # Nothing of the version 1 backup was touched; what was written is garbage.
            logger.error("backup %s was not migrated: %s", meta.id, exc)
            self.steps.append(Step(meta.id, "primary", Outcome.FAILED, str(exc)))

    def _adopt(self, meta: BackupMetadata) -> None:
        with contextlib.suppress(MetadataError):
            self.parent = page_index(meta)

    def _leave(self, folder: Path, location: str, meta: BackupMetadata) -> Step | None:
        """Why a version 1 copy stays as it is (a cheap look: no hashing), or None."""
        if meta.encryption is not None:
            return Step(
                meta.id,
                location,
                Outcome.ENCRYPTED,
                "encrypted with age: version 2 does not encrypt local folders yet",
            )
        if meta.schema_fingerprint == UNREADABLE_SCHEMA:
            return Step(
                meta.id,
                location,
                Outcome.NOT_SQLITE,
                "a safety snapshot that never opened as SQLite: it has no pages to store",
            )
        problem = FILES.look(LocalStore(folder), meta)
        if problem is not None:
            return Step(meta.id, location, Outcome.DAMAGED, problem)
        return None

    def _would(self, folder: Path, location: str, meta: BackupMetadata) -> Step:
        """A dry run's step: the bytes of the version 1 file that would be deleted."""
        before = meta.extra.get(MIGRATED_KEY)
        name = _v1_name(meta, before) if isinstance(before, dict) else meta.data_file
        try:
            size = (folder / name).stat().st_size
        except OSError:
            size = 0
        return Step(meta.id, location, Outcome.WOULD_MIGRATE, freed=size)

    def _migrate_primary(self, folder: Path, meta: BackupMetadata) -> Step:
        local = LocalStore(folder)
        raw = temp_path(folder, f"{meta.id}.migrate.db")
        try:
            try:
                # The version 1 copy must be sound: its stored file and its database hash
                # to what its manifest recorded (the full data checks run on the twin).
                FILES.extract(local, meta, raw, scratch=folder, full=False)
            except VerificationError as exc:
                return Step(meta.id, "primary", Outcome.DAMAGED, str(exc))
            written = write_file_pages(
                local, raw, parent=self.parent, level=self.store.settings.compression_level
            )
        finally:
            remove_quietly(raw)
        if written.raw_sha256 != meta.raw_sha256:
            raise VerificationError(
                f"backup {meta.id}: its database changed while it was read; not migrated"
            )
        crash_point(Stage.MIGRATE_PAGES)  # pragma: no mutate
        twin = _twin(meta, written.index, self.store.settings.compression_level)
        self._verify_twin(folder, twin)
        crash_point(Stage.MIGRATE_VERIFIED)  # pragma: no mutate
        self.store.write_metadata("primary", twin)
        crash_point(Stage.MIGRATE_MANIFEST)  # pragma: no mutate
        freed = self._delete_v1(folder, twin)
        self.parent = written.index
        logger.info("backup %s migrated to version 2 in the primary folder", meta.id)
        return Step(meta.id, "primary", Outcome.MIGRATED, freed=freed, added=written.index.added)

    def _verify_twin(self, folder: Path, twin: BackupMetadata) -> None:
        """Build the twin from the folder's pages: the database's SHA-256 must be the one
        the version 1 backup recorded and the data checks must agree (raises
        :class:`VerificationError`)."""
        built = temp_path(folder, f"{twin.id}.twin.db")
        try:
            PAGES.extract(LocalStore(folder), twin, built, scratch=folder, full=True)
        finally:
            remove_quietly(built)

    def _finish(self, folder: Path, location: str, meta: BackupMetadata) -> Step | None:
        """A version 2 copy: a migration killed after its manifest left the version 1 file
        beside it; check the twin again and delete that file. None when there is none."""
        before = meta.extra.get(MIGRATED_KEY)
        if not isinstance(before, dict):
            return None
        if not (folder / _v1_name(meta, before)).exists():
            return None
        if self.dry_run:
            return self._would(folder, location, meta)
        try:
            self._verify_twin(folder, meta)
        except (VerificationError, MetadataError, ObjectNotFound) as exc:
            return Step(
                meta.id,
                location,
                Outcome.FAILED,
                f"its version 2 twin does not verify, its version 1 file is kept: {exc}",
            )
        return Step(meta.id, location, Outcome.FINISHED, freed=self._delete_v1(folder, meta))

    def _delete_v1(self, folder: Path, twin: BackupMetadata) -> int:
        """Delete the version 1 data file the verified ``twin`` replaces; its size."""
        before = twin.extra[MIGRATED_KEY]
        path = folder / _v1_name(twin, before)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return 0
        remove_quietly(path)
        crash_point(Stage.MIGRATE_DELETED)  # pragma: no mutate
        return size

    def _secondary(self, backup_id: str) -> None:
        meta = self._manifest("secondary", backup_id)
        if isinstance(meta, Step):
            self.steps.append(meta)
            return
        if meta is None:
            return
        folder = self.store.locations["secondary"]
        if meta.format_version == PAGES_VERSION:
            step = self._finish(folder, "secondary", meta)
            if step is None:
                self.already += 1
            else:
                self.steps.append(step)
            return
        step = self._leave(folder, "secondary", meta)
        if step is not None:
            self.steps.append(step)
            return
        primary = self._manifest("primary", backup_id)
        if self.dry_run and backup_id in self.would:
            self.steps.append(self._would(folder, "secondary", meta))
            return
        if not isinstance(primary, BackupMetadata) or not _twin_of(primary, meta):
            self.steps.append(
                Step(
                    backup_id,
                    "secondary",
                    Outcome.WAITING,
                    "its primary copy is not migrated: it stays version 1 until it is",
                )
            )
            return
        if self.dry_run:
            self.steps.append(self._would(folder, "secondary", meta))
            return
        try:
            self.steps.append(self._migrate_secondary(folder, meta, primary))
        except (VerificationError, MetadataError, ObjectNotFound) as exc:
            logger.error("the secondary copy of %s was not migrated: %s", backup_id, exc)
            self.steps.append(Step(backup_id, "secondary", Outcome.FAILED, str(exc)))

    def _migrate_secondary(self, folder: Path, meta: BackupMetadata, twin: BackupMetadata) -> Step:
        """The secondary's version 1 copy of a backup whose primary copy is migrated: the
        objects the twin needs are copied from the primary (only those the secondary lacks),
        the twin is verified from the secondary's own objects, then the manifest (the
        primary's bytes) replaces the version 1 one, then the version 1 file goes."""
        try:
            # The version 1 copy must still be sound to be replaced, as in the primary.
            problems = FILES.check(LocalStore(folder), meta)
        except StorageError as exc:
            problems = [str(exc)]
        if problems:
            return Step(meta.id, "secondary", Outcome.DAMAGED, "; ".join(problems))
        origin, target = LocalStore(self.store.locations["primary"]), LocalStore(folder)
        parts = PAGES.parts(origin, twin)
        added = _copy_parts(origin, target, parts)
        crash_point(Stage.MIGRATE_PAGES)  # pragma: no mutate
        detail = ""
        try:
            self._verify_twin(folder, twin)
        except VerificationError:
            # An object the secondary holds is damaged (one named by its hash is never copied
            # again): the primary's, whose twin verified, replaces it, as heal would. Once.
            damaged = PAGES.damaged(target, twin)
            if not damaged:
                raise
            for key in damaged:
                target.delete(key)
            added += _copy_parts(origin, target, parts)
            self._verify_twin(folder, twin)
            detail = f"replaced {len(damaged)} damaged object(s) from the primary folder"
        crash_point(Stage.MIGRATE_VERIFIED)  # pragma: no mutate
        self.store.write_manifest(
            "secondary", twin.id, self.store.read_manifest("primary", twin.id)
        )
        crash_point(Stage.MIGRATE_MANIFEST)  # pragma: no mutate
        freed = self._delete_v1(folder, twin)
        return Step(meta.id, "secondary", Outcome.MIGRATED, detail, freed=freed, added=added)


class _Steps(list[Step]):
    """The steps so far; each one told to the listener as it is added."""

    def __init__(self, listener: Callable[[Step], None] | None) -> None:
        super().__init__()
        self.listener = listener

    def append(self, step: Step) -> None:
        super().append(step)
        if self.listener is not None:
            self.listener(step)


def _v1_name(meta: BackupMetadata, before: dict[str, Any]) -> str:
    """The version 1 data file a migrated manifest's backup had (built from its own id, so
    never another backup's file)."""
    return dataclasses.replace(
        meta,
        format_version=FILES.version,
        compression=str(before.get("compression", "zstd")),
        encryption=None,
    ).data_file


def _twin(meta: BackupMetadata, index: PageIndex, level: int) -> BackupMetadata:
    """The version 2 manifest of the version 1 backup ``meta`` (its manifest as stored):
    the same backup, its data now the page index ``index``."""
    return dataclasses.replace(
        meta,
        format_version=PAGES_VERSION,
        compression="zstd",
        compression_level=level,
        stored_size=index.added,
        sha256=index.root,
        extra={
            **meta.extra,
            "pages": index.to_dict(),
            MIGRATED_KEY: {
                "from_format": FILES.version,
                "data_file": meta.data_file,
                "compression": meta.compression,
                "stored_size": meta.stored_size,
                "sha256": meta.sha256,
                "at": utc_iso(datetime.now(timezone.utc)),
                "tool_version": __version__,
            },
        },
    )


def _twin_of(twin: BackupMetadata, meta: BackupMetadata) -> bool:
    """``twin`` (a primary manifest) is the migrated form of the version 1 copy ``meta``."""
    before = twin.extra.get(MIGRATED_KEY)
    return (
        twin.format_version == PAGES_VERSION
        and isinstance(before, dict)
        and before.get("sha256") == meta.sha256
        and twin.raw_sha256 == meta.raw_sha256
    )


def _copy_parts(origin: LocalStore, target: LocalStore, parts: Iterable[Part]) -> int:
    """Copy the objects ``target`` lacks from ``origin`` (each checked against its SHA-256 as
    it is written); the bytes copied. A folder's page key is never replaced: one that differs
    is refused (its pages would not be found)."""
    copied = 0
    for part in parts:
        try:
            held = target.stat(part.key)
        except ObjectNotFound:
            held = None
        if held is not None:
            if content_sha256(part.key) == part.sha256:
                continue
            if part.key == PAGE_KEY_KEY:
                if hashlib.sha256(target.read(part.key)).hexdigest() != part.sha256:
                    raise VerificationError(
                        f"the page key in {target.where} differs from the primary folder's"
                    )
                continue
        origin.stat(part.key)
        info = target.put(part.key, origin.path_of(part.key), sha256=part.sha256)
        copied += info.size
    return copied


__all__ = [
    "MIGRATED_KEY",
    "MigrationResult",
    "Outcome",
    "Step",
    "migrate",
    "refusal",
]

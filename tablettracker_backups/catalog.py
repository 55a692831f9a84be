"""The catalog: one backup folder's manifests and state documents, parsed once, kept in SQLite.

Listing a folder used to read and parse every manifest and state document (200,000 JSON files
for 100,000 restore points). The catalog keeps each backup's parsed metadata (or the error
reading it gave) in ``.catalog/catalog.sqlite`` inside the folder, keyed by what ``stat`` says
about the two files it came from (inode, size, modification and change times). A listing scans
the folder (names and ``stat`` only), reads the catalog in one query, and parses only the files
that are new or changed; then it writes those rows back. So the catalog needs no writer to keep
it in step: a backup added, deleted, verified or pinned by any process, this version or an
older one, shows at the next listing because its files' ``stat`` changed.

The manifests stay the truth. The catalog is a cache that is never trusted beyond them:

* Lost, truncated, garbage, a foreign SQLite file, another schema version: rebuilt from the
  manifests (under a temporary name, then renamed over, so no reader sees it half built).
* A file changed within :data:`SETTLE_NS` of the scan is parsed again, whatever its ``stat``:
  two writes within one tick of a coarse file-system clock could leave the same times.
* Busy (another process writing it) for longer than :data:`BUSY_TIMEOUT_MS`, unwritable, or
  failing in any other way: the listing reads the manifests itself, as it did before the
  catalog, and leaves the catalog for the next one. Nothing here raises into a listing.
* The data files' sizes are never cached: each listing takes them from its own scan, so a data
  file changed in place still lists as damaged.

Journal mode: SQLite's default rollback journal (``DELETE``), never WAL. WAL keeps its index in
shared memory (an ``mmap`` of the ``-shm`` file), which does not work across machines on a
network file system such as PythonAnywhere's; a rollback journal needs only the POSIX locks
the host app's own database already relies on there. A crash mid-write leaves a hot journal
that the next opener rolls back, so a killed process leaves the catalog as it was before. It
is written without fsync (``synchronous=OFF``): a cache need not survive a power cut, only
never be believed wrongly after one, so each row carries a CRC-32 of itself and a row torn
between two versions is parsed again, and a file damaged beyond that is rebuilt.

Rows are Python pickles read back by an unpickler that only builds the metadata's own
dataclasses and ``datetime`` values, so a planted file can do no more than fail to load (then
that backup's files are parsed again).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import sqlite3
import stat
import time
import zlib
from collections.abc import Callable
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path

from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.errors import BackupError, BackupNotFound, MetadataError, NewerFormat
from tablettracker_backups.fsutil import TEMP_PREFIX, remove_quietly, temp_path
from tablettracker_backups.layout import CATALOG_DIR, CATALOG_FILE, Part, parse
from tablettracker_backups.metadata import BackupMetadata, utc_iso, validate_backup_id

logger = logging.getLogger(__name__)

#: The catalog's schema; any other value in ``PRAGMA user_version`` means rebuild.
SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of a catalog ("TTBC"): a SQLite file without it is foreign.
APPLICATION_ID = 0x54544243
#: How long a listing waits for another process's catalog write before it reads the
#: manifests itself: short, since the host app's requests list too.
BUSY_TIMEOUT_MS = 100
#: A file modified less than this long before the scan is parsed again at every listing.
SETTLE_NS = 2_000_000_000
#: Temporary files in the catalog folder older than this are debris of a killed rebuild.
STALE_TEMP_SECONDS = 600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,
    manifest_sig TEXT NOT NULL,
    state_sig TEXT NOT NULL,
    -- 'ok' (meta is the merged metadata), or the error's class: 'damaged', 'newer'
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    created_at TEXT,
    kind TEXT,
    meta BLOB,
    -- CRC-32 of the row (see _row_check): a row torn by a power cut is never believed
    row_check INTEGER NOT NULL
)
"""

#: An outcome: the merged metadata, or the error reading it gave.
Outcome = BackupMetadata | BackupError
#: Errors worth remembering: they follow from the files' bytes alone. Any other (a storage
#: error, a file gone since the scan) is read again next time.
_CACHED_ERRORS: dict[type[BackupError], str] = {MetadataError: "damaged", NewerFormat: "newer"}
_ERROR_TYPES = {name: kind for kind, name in _CACHED_ERRORS.items()}


def _allowed_globals() -> dict[tuple[str, str], type]:
    import datetime

    from tablettracker_backups import changes, metadata

    classes: list[type] = [
        metadata.BackupMetadata,
        metadata.SourceInfo,
        metadata.Verification,
        metadata.Findings,
        metadata.ForeignKeySample,
        metadata.EncryptionInfo,
        changes.SourceSignature,
        changes.FileStat,
        datetime.datetime,
        datetime.timezone,
        datetime.timedelta,
    ]
    return {(cls.__module__, cls.__qualname__): cls for cls in classes}


#: The only globals a catalog row's pickle may name (looked up, never imported by name).
_ALLOWED_GLOBALS = _allowed_globals()


class _RowLoader(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError as exc:
            raise pickle.UnpicklingError(f"a catalog row may not name {module}.{name}") from exc


def _load_meta(blob: bytes, backup_id: str) -> BackupMetadata | None:
    """A row's metadata, or None when the blob is not a sound one for this id."""
    try:
        meta = _RowLoader(io.BytesIO(blob)).load()
    except Exception:  # any damage to a cached row only means: parse the files again
        return None
    if not isinstance(meta, BackupMetadata) or meta.id != backup_id:
        return None
    return meta


def _signature(info: os.stat_result) -> str:
    return f"{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"


@dataclass
class FolderScan:
    """One folder's backup files by ``stat``: signatures of manifests and state documents,
    sizes of data files. ``unstable`` ids had a file whose ``stat`` failed or that changed
    too recently to trust its signature: they are parsed at every listing."""

    manifests: dict[str, str] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    unstable: set[str] = field(default_factory=set)

    def key(self, backup_id: str) -> tuple[str, str]:
        """What the catalog row of ``backup_id`` must match."""
        return self.manifests[backup_id], self.states.get(backup_id, "")


def scan(folder: Path) -> FolderScan:
    """Look at every backup file in ``folder``; raises ``OSError`` when it cannot be listed
    (``FileNotFoundError`` when it does not exist)."""
    found = FolderScan()
    racy_after = time.time_ns() - SETTLE_NS
    with os.scandir(folder) as entries:
        for entry in entries:
            parsed = parse(entry.name)
            if parsed is None:
                continue
            part, backup_id = parsed
            try:
                # Follows symbolic links, as reading the file does.
                info = entry.stat()
            except OSError:
                if part is Part.MANIFEST:
                    found.manifests[backup_id] = ""
                    found.unstable.add(backup_id)
                elif part is Part.STATE:
                    found.unstable.add(backup_id)
                continue
            if part is Part.DATA:
                found.sizes[entry.name] = info.st_size
                continue
            if part is Part.MANIFEST:
                found.manifests[backup_id] = _signature(info)
            else:
                found.states[backup_id] = _signature(info)
            if info.st_mtime_ns > racy_after:
                found.unstable.add(backup_id)
    return found


def _valid(backup_id: str) -> bool:
    try:
        validate_backup_id(backup_id)
    except BackupError:
        return False
    return True


@dataclass
class FolderView:
    """What one folder holds for a listing: each backup's metadata (or the error reading it
    gave) and its data files' sizes, as of one scan."""

    location: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def ids(self) -> set[str]:
        """Every backup with a manifest in the folder."""
        return set(self.outcomes)

    def metadata(self, backup_id: str) -> BackupMetadata:
        """What :meth:`BackupStore.read_metadata` gave (or raised) for this copy."""
        outcome = self.outcomes.get(backup_id)
        if outcome is None:
            raise BackupNotFound(f"no backup {backup_id} in {self.location} folder")
        if isinstance(outcome, BackupError):
            # A fresh exception each time: raising one instance again would grow its traceback.
            raise type(outcome)(str(outcome))
        return outcome

    def size(self, name: str) -> int:
        """The data file's size as scanned; raises ``FileNotFoundError`` when it was not there."""
        try:
            return self.sizes[name]
        except KeyError as exc:
            raise FileNotFoundError(name) from exc


@dataclass(frozen=True)
class _Row:
    manifest_sig: str
    state_sig: str
    outcome: str
    detail: str
    meta: bytes | None
    #: Kept as columns beside the pickle for queries that need no metadata object (the
    #: newest page, ``--at``, the prune plan: issue 21's next step); nothing reads them yet.
    created_at: str | None = None
    kind: str | None = None
    row_check: int = 0


def _row_check(backup_id: str, row: _Row) -> int:
    """CRC-32 over everything a row says (its id too). The catalog is written without fsync
    (see :meth:`Catalog._open`): after a power cut a row may hold parts of two versions of
    itself, its signatures from one and its pickle from the other; the check refuses it."""
    text = "\0".join((backup_id, row.manifest_sig, row.state_sig, row.outcome, row.detail))
    return zlib.crc32(row.meta or b"", zlib.crc32(text.encode("utf-8", "surrogateescape")))


def _checked(backup_id: str, row: _Row) -> _Row:
    return replace(row, row_check=_row_check(backup_id, row))


def view_folder(folder: Path, location: str, read: Callable[[str], BackupMetadata]) -> FolderView:
    """The folder's backups for a listing, through its catalog.

    ``read(id)`` parses one backup's files (:meth:`BackupStore.read_metadata`); it is called
    only for backups the catalog does not know as they are now. Raises ``OSError`` only when
    the folder cannot be listed; any trouble with the catalog itself means reading the
    manifests, never an error.
    """
    found = scan(folder)
    view = FolderView(location, sizes=found.sizes)
    catalog = Catalog(folder)
    rows, rebuild = catalog.rows(found)
    fresh: dict[str, _Row] = {}
    for backup_id in list(found.manifests):
        known = rows is not None and backup_id in rows
        if not known and not _valid(backup_id):
            # A stray file with an id's shape but an impossible date is no backup (as in
            # listing); a row's id was checked before it was written.
            del found.manifests[backup_id]
            continue
        trusted = rows.get(backup_id) if rows is not None else None
        if trusted is not None:
            view.outcomes[backup_id] = trusted
            continue
        outcome = _read(read, backup_id)
        view.outcomes[backup_id] = outcome
        if backup_id not in found.unstable:
            made = _to_row(backup_id, outcome, found.key(backup_id))
            if made is not None:
                fresh[backup_id] = made
    if rows is not None:
        # Gone from the folder, or too fresh to trust: a row kept for a file rewritten within
        # one clock tick would match it again once it settles, and be stale.
        drop = [i for i in rows if i not in found.manifests or i in found.unstable]
        catalog.update(fresh, drop)
    elif rebuild:
        catalog.rebuild(fresh)
    return view


def _read(read: Callable[[str], BackupMetadata], backup_id: str) -> Outcome:
    try:
        return read(backup_id)
    except BackupError as exc:
        return exc


def _from_row(row: _Row, backup_id: str, key: tuple[str, str]) -> Outcome | None:
    if (row.manifest_sig, row.state_sig) != key:
        return None
    if row.row_check != _row_check(backup_id, row):
        return None
    if row.outcome == "ok":
        return _load_meta(row.meta, backup_id) if row.meta is not None else None
    kind = _ERROR_TYPES.get(row.outcome)
    return kind(row.detail) if kind is not None else None


def _to_row(backup_id: str, outcome: Outcome, key: tuple[str, str]) -> _Row | None:
    if isinstance(outcome, BackupMetadata):
        blob = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        created = utc_iso(outcome.created_at)
        return _checked(backup_id, _Row(key[0], key[1], "ok", "", blob, created, outcome.kind))
    name = _CACHED_ERRORS.get(type(outcome))
    if name is None:
        return None
    return _checked(backup_id, _Row(key[0], key[1], name, str(outcome), None))


class Catalog:
    """The catalog file of one backup folder. Every method swallows its own trouble (logged)
    and answers as if there were no catalog: it is a cache."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.directory = folder / CATALOG_DIR
        self.path = self.directory / CATALOG_FILE

    def rows(self, found: FolderScan) -> tuple[dict[str, Outcome | None] | None, bool]:
        """Every row's id, with what it says when it may be believed for ``found`` (its
        files' signatures match, they are settled, the row is sound), else None; or None when
        the catalog cannot be used now. And whether it must be rebuilt (missing, damaged or
        foreign: not when it is only busy or unreadable). Rows are read one at a time, so no
        more than one pickle is held at once."""
        try:
            conn = self._connect()
            if conn is None:
                return None, True
            with contextlib.closing(conn):
                if not self._ours(conn):
                    logger.info("catalog of %s is not a current catalog: rebuilding", self.folder)
                    return None, True
                cursor = conn.execute(
                    "SELECT id, manifest_sig, state_sig, outcome, detail, meta, created_at, kind,"
                    " row_check FROM entries"
                )
                known: dict[str, Outcome | None] = {}
                for backup_id, *columns in cursor:
                    known[backup_id] = None
                    if backup_id in found.manifests and backup_id not in found.unstable:
                        known[backup_id] = _from_row(
                            _Row(*columns), backup_id, found.key(backup_id)
                        )
                return known, False
        except sqlite3.OperationalError as exc:
            # Busy past the timeout, or cannot be opened: leave it for the next listing.
            logger.debug("catalog of %s unusable now, reading the manifests: %s", self.folder, exc)
            return None, False
        except sqlite3.DatabaseError as exc:
            logger.info("catalog of %s is damaged (%s): rebuilding", self.folder, exc)
            return None, True
        except Exception as exc:  # a cache's failure is never the listing's
            logger.warning("catalog of %s unreadable, reading the manifests: %s", self.folder, exc)
            return None, False

    def update(self, fresh: dict[str, _Row], gone: list[str]) -> None:
        """Write what a listing learnt: ``fresh`` rows in, ``gone`` ids out."""
        if not fresh and not gone:
            return
        self._guarded(lambda: self._apply(fresh, gone))

    def rebuild(self, rows: dict[str, _Row]) -> None:
        """Replace the catalog by a new one holding exactly ``rows``."""
        self._guarded(lambda: self._rebuild(rows))

    def _guarded(self, write: Callable[[], None]) -> None:
        try:
            write()
        except sqlite3.OperationalError as exc:
            # Busy (another process writes it) or unwritable: the next listing tries again.
            logger.debug("catalog of %s not updated: %s", self.folder, exc)
        except Exception as exc:  # a cache's failure is never the listing's
            logger.warning("catalog of %s not updated: %s", self.folder, exc)

    # -- inside --------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection | None:
        """The catalog, or None when there is none (it is never created here)."""
        if not self.path.is_file():
            return None
        return self._open(self.path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            # A rollback journal (see the module's docstring), and no fsync: a killed process
            # still leaves the old catalog or the new one (the journal is in the page cache),
            # and after a power cut a damaged file is rebuilt and a torn row fails its check.
            # Syncing cost every listing that learnt something 30-50 ms here, in a request.
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA synchronous=OFF")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _ours(conn: sqlite3.Connection) -> bool:
        (app,) = conn.execute("PRAGMA application_id").fetchone()
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (tables,) = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'entries'"
        ).fetchone()
        return bool(app == APPLICATION_ID and version == SCHEMA_VERSION and tables == 1)

    def _apply(self, fresh: dict[str, _Row], gone: list[str]) -> None:
        conn = self._connect()
        if conn is None:
            return
        with contextlib.closing(conn):
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in gone])
                _insert(conn, fresh)
                crash_point(Stage.CATALOG_WRITE)  # pragma: no mutate
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def _rebuild(self, rows: dict[str, _Row]) -> None:
        """A new catalog holding ``rows``, built aside and renamed over the old one."""
        if not self.folder.is_dir():
            return  # never create a backup folder by listing it
        if not self._make_directory():
            return
        self._remove_stale_temps()
        temp = temp_path(self.directory, CATALOG_FILE)
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            with contextlib.closing(self._open(temp)) as conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_SCHEMA)
                _insert(conn, rows)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                crash_point(Stage.CATALOG_REBUILD)  # pragma: no mutate
                conn.execute("COMMIT")
            # The old file's journal (if a killed writer left one) belongs to the old file: it
            # must not be rolled back into the new one.
            remove_quietly(self.directory / f"{CATALOG_FILE}-journal")
            os.replace(temp, self.path)
        except BaseException:
            remove_quietly(temp)
            raise
        logger.info("catalog of %s rebuilt from %d manifest(s)", self.folder, len(rows))

    def _make_directory(self) -> bool:
        """Whether the catalog's folder is there (made owner-only when it was not). Something
        else in its place (a file, a symbolic link) is left alone: no catalog, quietly, since
        every listing would say so again."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.directory, 0o700)
        if stat.S_ISDIR(os.lstat(self.directory).st_mode):
            return True
        logger.debug("%s is not a folder: listing without a catalog", self.directory)
        return False

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX):
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            remove_quietly(Path(entry.path))


def _insert(conn: sqlite3.Connection, rows: dict[str, _Row]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO entries (id, manifest_sig, state_sig, outcome, detail, meta,"
        " created_at, kind, row_check) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(i, *astuple(r)) for i, r in rows.items()],
    )

"""Overwriting a database that an app has open, under one hold of SQLite's write lock.

A restore into a live database copies what is there now (the safety copy), writes the
backup's pages, and checks the result. No app write may land between those steps: a row the
app commits after the safety copy and before the write is in neither the restored database
nor the safety copy, and a row it commits before the check can fail the check, whose rollback
would then throw the restore away. So the three run under one hold of the write lock.

SQLite's backup API is the only way to write whole pages into a database that others have
open (their connections stay valid and see the old or the new content, never a mix), and it
refuses a destination connection with a transaction open: a ``BEGIN IMMEDIATE`` cannot simply
be kept open around it. How the lock is held therefore depends on the journal mode:

- **Rollback journal.** The connection sets ``PRAGMA locking_mode=EXCLUSIVE``, in which SQLite
  never gives back a file lock it took, and runs ``BEGIN IMMEDIATE; ROLLBACK``: the RESERVED
  lock stays, so app writers wait while app readers go on. The safety copy reads through this
  same connection (a source with no transaction open is allowed). The write escalates to the
  EXCLUSIVE lock, which stays through the check and any rollback; setting the mode back to
  NORMAL and reading once gives everything back.
- **WAL.** Exclusive locking mode would need an EXCLUSIVE lock on the database file, which no
  one gets while the app has any connection open (WAL connections keep a SHARED lock for their
  whole life). Here the backup API's own write transaction is the hold: the write goes in at
  least two steps, and after the first (the WAL write lock is taken, nothing is committed) a
  second connection copies the database, which it sees exactly as it was when the lock was
  taken. After the commit, ``BEGIN IMMEDIATE`` takes the lock back at once for the check; an
  app writer that wakes in that instant can slip one transaction in. Nothing is lost then
  either (every overwrite copies what it overwrites, the rollback's too), but the check can
  fail on it; SQLite offers no way to keep the WAL write lock across the backup API's commit.

Every copy and write goes through SQLite, unless the caller says this process has no other
connection to the target (``raw``: the command line and the jobs' worker, never the host app).
Then, in rollback-journal mode, the safety copy is a byte copy of the file (the lock keeps it
still; a third of the backup API's time) and the check compares the written file's bytes with
the checked copy's (stronger than quick_check, and faster): the descriptor is opened before
the connection and closed after it, so closing it cannot drop a lock the connection holds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.errors import DatabaseBusy, DatabaseError, StorageError
from tablettracker_backups.fsutil import CHUNK, describe_os_error, fsync_path, open_private
from tablettracker_backups.snapshot import (
    STEP_PAGES,
    PageProgress,
    SnapshotInfo,
    SqliteFailure,
    classify_sqlite_error,
    connect,
    copy_database,
    copy_out,
    read_transaction,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: The longest the checkpoint after a write into a WAL database may wait for app readers: it
#: keeps new writers out while it waits, and a large -wal left behind is only slower, not wrong.
CHECKPOINT_WAIT = 2.0
#: Bytes of a database's first page that a write through SQLite sets for itself (the write
#: format, the change counter, the schema cookie, the version-valid-for number and the SQLite
#: version): two files with the same pages differ there, so :func:`same_pages` skips them.
HEADER_FIELDS = ((18, 20), (24, 28), (40, 44), (92, 100))


def same_pages(fd: int, other: Path) -> bool:
    """Whether the database file open on ``fd`` holds exactly the pages of the file ``other``:
    the same size and the same bytes, but for :data:`HEADER_FIELDS` (compared chunk by chunk,
    with ``pread``: no hashing, so it costs two reads from the page cache)."""
    with other.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if os.fstat(fd).st_size != size:
            return False
        offset = 0
        while offset < size:
            mine = os.pread(fd, CHUNK, offset)
            theirs = handle.read(CHUNK)
            if offset == 0:
                mine, theirs = _masked(mine), _masked(theirs)
            if not mine or mine != theirs:
                return False
            offset += len(mine)
    return True


def _masked(head: bytes) -> bytes:
    page = bytearray(head)
    for start, end in HEADER_FIELDS:
        page[start:end] = bytes(end - start)
    return bytes(page)


class HeldDatabase:
    """An existing database file under one hold of its write lock (a context manager).

    ``replace`` overwrites it with another database file, first copying what it holds;
    ``check`` reads it under the same hold. Leaving the block gives the lock back (closing the
    connection undoes anything unfinished). Raises :class:`DatabaseError` when the lock cannot
    be had within ``busy_timeout`` seconds or the database cannot be written.
    """

    def __init__(
        self,
        target: Path,
        *,
        busy_timeout: float,
        raw: bool = False,
        lock_wait: float | None = None,
    ) -> None:
        self.target = target
        self.busy_timeout = busy_timeout
        #: Seconds to wait for the write lock (default ``busy_timeout``): on entering in
        #: rollback-journal mode, at the write's first step in WAL mode. A group restore
        #: waits briefly for each database after the first, all or none.
        self.lock_wait = busy_timeout if lock_wait is None else lock_wait
        #: WAL mode: inside a write's first step (the lock held, nothing committed).
        self._in_write = False
        #: No other connection to ``target`` in this process: raw reads are safe (see above).
        self.raw = raw
        self._raw_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self.journal_mode = ""
        #: Seconds the write lock has been held, from :meth:`__enter__` (rollback journal) or
        #: the first write step (WAL) to the release; filled in on leaving.
        self.held_seconds = 0.0
        self._held_since: float | None = None
        self._wrote = False
        #: WAL mode: the write lock taken back (an open BEGIN IMMEDIATE) right after a write.
        self._relocked = False

    @property
    def wal(self) -> bool:
        """The target is in WAL mode."""
        return self.journal_mode == "wal"

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("HeldDatabase used outside its with-block")
        return self._conn

    @property
    def compares_bytes(self) -> bool:
        """The check can compare the file's bytes (raw reads, rollback-journal mode)."""
        return self._raw_fd is not None and not self.wal

    def __enter__(self) -> HeldDatabase:
        if self.raw:
            # Before the connection, closed after it: closing a descriptor drops every POSIX
            # lock this process holds on the file, the connection's own included.
            try:
                self._raw_fd = os.open(self.target, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as exc:
                raise DatabaseError(f"cannot open {self.target}: {exc.strerror}") from exc
        try:
            self._conn = connect(self.target, busy_timeout=self.busy_timeout)
        except BaseException:
            self._close_raw()
            raise
        try:
            self.journal_mode = str(self._conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if not self.wal:
                _take_reserved(self._conn, self.lock_wait, self.busy_timeout)
                # Kept after the ROLLBACK in exclusive locking mode: writers wait, readers go on.
                self._conn.execute("ROLLBACK")
                self._held_since = time.monotonic()
                crash_point(Stage.RESTORE_HOLD)  # pragma: no mutate
        except sqlite3.Error as exc:
            self._conn.close()
            self._conn = None
            self._close_raw()
            raise _lock_error(self.target, exc, self.busy_timeout) from exc
        except BaseException:
            self._conn.close()
            self._conn = None
            self._close_raw()
            raise
        return self

    def _close_raw(self) -> None:
        fd, self._raw_fd = self._raw_fd, None
        if fd is not None:
            os.close(fd)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._conn is None:
            return
        try:
            self._unlock()
        finally:
            conn, self._conn = self._conn, None
        try:
            if not self.wal:
                try:
                    # The mode change takes effect at the next access, which releases the lock.
                    conn.execute("PRAGMA locking_mode=NORMAL")
                    conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                except sqlite3.Error as exc:
                    logger.warning("releasing the lock on %s: %s", self.target, exc)
            self._note_released()
            if self.wal and self._wrote and kind is None:
                _checkpoint(conn, self.target)
        finally:
            conn.close()  # gives back any lock still held, and undoes an unfinished write
            self._close_raw()  # only now: see compares_bytes
            self._note_released()

    def _note_released(self) -> None:
        if self._held_since is not None:
            self.held_seconds += time.monotonic() - self._held_since
            self._held_since = None

    def replace(
        self,
        source: Path,
        *,
        capture: Path | None,
        progress: PageProgress | None = None,
        capture_progress: PageProgress | None = None,
        on_captured: Callable[[SnapshotInfo], None] | None = None,
        stage: Stage | None = None,
        inside: Callable[[], None] | None = None,
    ) -> SnapshotInfo | None:
        """Overwrite the database with every page of the checked file ``source``.

        ``inside`` (WAL mode) is called once the write's first step holds the write lock and
        before anything is committed (after ``capture``): a group restore copies the
        database there (:meth:`capture`) and begins the next member's write inside it, so
        that every member is held at once before any commits.

        With ``capture``, what the database holds just before the write (as of the moment the
        write lock was taken) is first copied into that new file and fsynced: the write
        cannot start before the copy is safe; ``on_captured`` is called with it then. Returns
        the copy's details (None without one).
        The write is one transaction: on any error the database is unchanged. ``stage`` names
        the crash point between write steps. Raises :class:`DatabaseError` or
        :class:`StorageError`.
        """
        conn = self.conn
        self._unlock()  # the backup API refuses a destination with a transaction open
        with closing(connect(source, uri_mode="ro")) as src:
            try:
                pages = int(src.execute("PRAGMA page_count").fetchone()[0])
                source_size = int(src.execute("PRAGMA page_size").fetchone()[0])
            except sqlite3.Error as exc:
                raise DatabaseError(f"cannot read {source}: {exc}") from exc
            if self.wal:
                target_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                if source_size != target_size:
                    # SQLite can only write a backup through a WAL whose page size matches.
                    raise DatabaseError(
                        f"{self.target} is in WAL mode with {target_size}-byte pages but the "
                        f"backup has {source_size}-byte pages; switch it to "
                        "journal_mode=DELETE first"
                    )
            captured: list[SnapshotInfo] = []
            copy_it: Callable[[sqlite3.Connection], None] | None = None
            if capture is not None:
                into = capture

                def copy_it(from_conn: sqlite3.Connection) -> None:
                    info = self._capture(from_conn, into, capture_progress)
                    captured.append(info)
                    if on_captured is not None:
                        on_captured(info)

            if copy_it is not None and not self.wal:
                copy_it(conn)  # under the RESERVED lock taken on entering
            self._wrote = True
            if self.wal:
                self._write_wal(src, pages, copy_it, progress, stage, inside)
            else:
                with read_transaction(src, source):
                    copy_database(
                        src,
                        conn,
                        timeout=self.busy_timeout,
                        progress=progress,
                        label=str(self.target),
                        stage=stage,
                    )
        return captured[0] if captured else None

    def capture(self, into: Path, progress: PageProgress | None = None) -> SnapshotInfo:
        """Copy what the database holds into the new file ``into``, fsynced, under the hold
        taken on entering, before any write (rollback-journal mode only: in WAL mode the hold
        begins with the write, so :meth:`replace` takes the copy). A group restore copies
        every member first this way."""
        if not self.wal:
            return self._capture(self.conn, into, progress)
        if not self._in_write:
            raise RuntimeError("in WAL mode a copy is taken inside replace(inside=...)")
        # A second connection: it sees the database as committed when the write's first
        # step took the write lock, which no app writer can have since.
        with (
            closing(connect(self.target, busy_timeout=self.busy_timeout)) as reader,
            read_transaction(reader, self.target),
        ):
            return self._capture(reader, into, progress)

    def _capture(
        self, conn: sqlite3.Connection, capture: Path, progress: PageProgress | None
    ) -> SnapshotInfo:
        if self.compares_bytes:
            info = self._byte_copy(conn, capture, progress)
            fsync_path(capture.parent)
            return info
        info = copy_out(
            conn,
            capture,
            label=str(self.target),
            busy_timeout=self.busy_timeout,
            progress=progress,
            stage=Stage.SAFETY_COPY,  # pragma: no mutate
            what="safety snapshot",
        )
        # Durable before a single page of the target is overwritten.
        fsync_path(capture)
        fsync_path(capture.parent)
        return info

    def _byte_copy(
        self, conn: sqlite3.Connection, capture: Path, progress: PageProgress | None
    ) -> SnapshotInfo:
        """The file's pages copied byte for byte (in the kernel where it can), fsynced: under
        the lock taken on entering, the file is exactly the committed database."""
        assert self._raw_fd is not None
        started = time.monotonic()
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
        size = page_size * page_count
        try:
            with open_private(capture) as out:
                done = 0
                while done < size:
                    step = min(64 * CHUNK, size - done)
                    copied = _copy_range(self._raw_fd, out.fileno(), done, step)
                    if copied <= 0:
                        raise OSError(0, f"{self.target} ended at byte {done} of {size}")
                    done += copied
                    if progress is not None:
                        progress(done // page_size, page_count)
                    crash_point(Stage.SAFETY_COPY)  # pragma: no mutate
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise StorageError(describe_os_error(exc, capture)) from exc
        return SnapshotInfo(
            source_size=size,
            page_size=page_size,
            page_count=page_count,
            journal_mode=self.journal_mode,
            sqlite_version=sqlite3.sqlite_version,
            seconds=time.monotonic() - started,
        )

    def holds(self, source: Path) -> bool:
        """Whether the file's bytes are the pages of the checked file ``source`` (only when
        :attr:`compares_bytes`; read under the hold)."""
        assert self._raw_fd is not None
        return same_pages(self._raw_fd, source)

    def _write_wal(
        self,
        src: sqlite3.Connection,
        pages: int,
        copy_it: Callable[[sqlite3.Connection], None] | None,
        progress: PageProgress | None,
        stage: Stage | None,
        inside: Callable[[], None] | None = None,
    ) -> None:
        """The backup API's write into a WAL database, the capture made (and ``inside``
        called) after its first step."""
        pending = copy_it
        around = inside

        def capture_now() -> None:
            nonlocal pending
            if pending is None:
                return
            run, pending = pending, None
            # A second connection: it sees the database as committed when the first step
            # took the write lock, which no app writer can have since.
            with (
                closing(connect(self.target, busy_timeout=self.busy_timeout)) as reader,
                read_transaction(reader, self.target),
            ):
                run(reader)

        def on_step(done: int, total: int) -> None:
            if self._held_since is None:
                self._held_since = time.monotonic()
            if done < total:
                capture_now()
                run_inside()
            if progress is not None:
                progress(done, total)

        def run_inside() -> None:
            nonlocal around
            if around is None:
                return
            run, around = around, None
            self._in_write = True
            try:
                run()
            finally:
                self._in_write = False

        if pages <= 1 and pending is not None:
            # One step writes and commits at once; a one-page database has no table, so the
            # copy taken just before is all the app could have had.
            capture_now()
        if pages <= 1:
            run_inside()
        # At least two steps, so the first returns before the commit.
        per_step = max(1, min(STEP_PAGES, math.ceil(pages / 2)))
        # The backup API polls for the lock itself (every LOCK_POLL, see _begin_immediate,
        # for lock_wait seconds): SQLite's busy handler would sleep for longer, and past
        # lock_wait, on every step.
        # (_begin_immediate below sets the busy timeout back.)
        self.conn.execute("PRAGMA busy_timeout=0")
        try:
            with read_transaction(src, self.target):
                copy_database(
                    src,
                    self.conn,
                    timeout=self.lock_wait,  # only the first step waits: then it holds the lock
                    progress=on_step,
                    label=str(self.target),
                    stage=stage,
                    pages=per_step,
                    retry=LOCK_POLL,
                )
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            raise
        # The commit gave the write lock back: take it again at once, before anything else
        # (even a record of the stage reached), to keep the gap to an instant.
        try:
            _begin_immediate(self.conn, self.busy_timeout)
            self._relocked = True
        except sqlite3.Error as exc:
            raise _busy_or(self.target, exc, self.busy_timeout, "check") from exc

    def check(self, read: Callable[[sqlite3.Connection], T], *, keep: bool = False) -> T:
        """``read(conn)`` on the database under the hold (in WAL mode, in the write
        transaction taken back right after the write). ``read`` must not write. ``keep``:
        in WAL mode the write lock stays held after the check until the block is left (a
        group restore keeps every member held until all are checked)."""
        conn = self.conn
        if not self.wal:
            return read(conn)
        if not self._relocked:
            try:
                _begin_immediate(conn, self.busy_timeout)
            except sqlite3.Error as exc:
                raise _busy_or(self.target, exc, self.busy_timeout, "check") from exc
            self._relocked = True
            if self._held_since is None:
                self._held_since = time.monotonic()
        try:
            return read(conn)
        finally:
            if not keep:
                self._unlock()
                self._note_released()

    def _unlock(self) -> None:
        """End the write transaction taken back after a write in WAL mode, if open."""
        if self._relocked:
            self._relocked = False
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                logger.warning("ending the check's transaction on %s: %s", self.target, exc)


def _busy_or(target: Path, exc: sqlite3.Error, timeout: float, doing: str) -> DatabaseError:
    if classify_sqlite_error(exc) is SqliteFailure.BUSY:
        return DatabaseBusy(f"{target} stayed locked for {timeout:g}s: {exc}")
    return DatabaseError(f"cannot {doing} {target}: {exc}")


#: Seconds between two tries for the write lock: app writers that commit back to back leave it
#: free for a millisecond at a time, and SQLite's own busy handler, which sleeps up to 100 ms
#: between tries, would then starve a restore for as long as they go on.
LOCK_POLL = 0.0005


def _begin_immediate(conn: sqlite3.Connection, timeout: float) -> None:
    """``BEGIN IMMEDIATE``, trying every :data:`LOCK_POLL` seconds for up to ``timeout``;
    raises the last ``sqlite3.Error`` (busy) when the time is up."""
    deadline = time.monotonic() + timeout
    conn.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if classify_sqlite_error(exc) is not SqliteFailure.BUSY:
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(LOCK_POLL)
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")


def _take_reserved(conn: sqlite3.Connection, wait: float, busy_timeout: float) -> None:
    """``BEGIN IMMEDIATE`` in exclusive locking mode, trying every :data:`LOCK_POLL` seconds
    for up to ``wait``; raises the busy ``sqlite3.Error`` when the time is up.

    In exclusive locking mode a failed attempt keeps the SHARED lock it took, and an app
    writer that holds RESERVED and wants to commit then waits on it, while this waits on the
    writer: each failed attempt gives its SHARED lock back (NORMAL mode, one read)."""
    deadline = time.monotonic() + wait
    conn.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if classify_sqlite_error(exc) is not SqliteFailure.BUSY:
                    raise
                conn.execute("PRAGMA locking_mode=NORMAL")
                # Busy: the lock was not had, so there is none to give back.
                with contextlib.suppress(sqlite3.OperationalError):
                    conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(LOCK_POLL)
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")


#: For the coordinated snapshot (:mod:`.coordinated`), which takes several write locks so.
begin_immediate = _begin_immediate


def _lock_error(target: Path, exc: sqlite3.Error, timeout: float) -> DatabaseError:
    if classify_sqlite_error(exc) is SqliteFailure.BUSY:
        return DatabaseBusy(f"{target} stayed locked by another connection for {timeout:g}s")
    return DatabaseError(f"cannot write {target}: {exc}")


def _checkpoint(conn: sqlite3.Connection, target: Path) -> None:
    """Fold the restored pages into the main file so no large -wal is left to replay; readers
    still on an old snapshot make it partial, which is safe."""
    try:
        conn.execute(f"PRAGMA busy_timeout={int(CHECKPOINT_WAIT * 1000)}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error as exc:
        logger.warning("checkpoint after writing %s did not finish: %s", target, exc)


def _copy_range(source: int, dest: int, offset: int, count: int) -> int:
    """Copy ``count`` bytes at ``offset`` of ``source`` to the end of ``dest``; bytes copied."""
    if hasattr(os, "copy_file_range"):
        try:
            return os.copy_file_range(source, dest, count, offset)
        except OSError as exc:
            if exc.errno not in (18, 22, 38, 95):  # EXDEV, EINVAL, ENOSYS, EOPNOTSUPP
                raise
    data = os.pread(source, count, offset)
    return os.write(dest, data)

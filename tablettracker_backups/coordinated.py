"""Coordinated snapshots: every database of a site copied as of one instant (a group).

An app that writes two databases in one transaction (``ATTACH``) changes both or neither;
copies taken one after the other can catch one side of such a transaction and miss the
other (a row that left one database and has not yet arrived in the other). So the members
are pinned together before any page is copied:

1. **Every WAL database's write lock first.** A ``BEGIN IMMEDIATE`` on each database in WAL
   mode, in the site's order. While they are all held no app transaction is half way through
   any of them: a multi-file transaction holds the write lock of every file it touched until
   all of them committed (in WAL mode a multi-file commit is atomic per file only, so a
   reader alone could see one file committed and the other not yet).
2. **Then a read transaction on each database**, on a second connection: in WAL mode it pins
   the state as of now (writers go on once the write locks are given back); in rollback-
   journal mode it is the SHARED lock that keeps the file still while it is read. No write
   lock is needed there: a multi-file commit takes the EXCLUSIVE lock of every file before
   its commit point, which a SHARED lock held here refuses, so no commit can land between
   two of these read transactions, and one caught half way is waited for.
   Taking locks one by one can deadlock with an app transaction that holds a later one and
   waits for an earlier one; so a lock that stays busy for :data:`LATER_LOCK_WAIT` gives every
   lock back, and the round is tried again (all or none) until the busy timeout.
3. **The write locks are given back**, and each database is copied from its pinned read
   transaction with the backup API, as a single snapshot is (:mod:`.snapshot`).
4. **The read transactions end**, and each copy is checked, compressed, proven and filed as
   a normal backup of its own database (:func:`.backup.file_snapshot`), its manifest naming
   the group: its id and every member's backup id.

The members are ordinary backups otherwise: verify, heal, offsite and retention treat each in
its own database. A group is one restore point while every member exists (:mod:`.groups`).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tablettracker_backups import intent, notify
from tablettracker_backups.backup import (
    BackupResult,
    backup_events,
    cleanup_debris,
    file_snapshot,
    prepare_locations,
)
from tablettracker_backups.changes import SourceSignature, source_signature
from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.encryption import require_pyrage
from tablettracker_backups.errors import BackupError, DatabaseBusy, DatabaseError
from tablettracker_backups.fsutil import remove_quietly, temp_path
from tablettracker_backups.identity import claim_folders
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import GROUP_KEY, KINDS, new_backup_id, validate_label
from tablettracker_backups.overwrite import LOCK_POLL, begin_immediate
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import (
    SnapshotInfo,
    SqliteFailure,
    check_sqlite_file,
    classify_sqlite_error,
    connect,
    copy_out,
)

logger = logging.getLogger(__name__)

#: Seconds a lock after the first may stay busy before every lock is given back and the round
#: starts again: long enough for an app transaction to finish, short enough that an app
#: transaction waiting on a lock held here never reaches its own busy timeout.
LATER_LOCK_WAIT = 0.05


@dataclass(frozen=True)
class GroupBackupResult:
    """A coordinated snapshot: one backup per database, all as of ``created_at``."""

    group_id: str
    created_at: datetime
    #: Each database's name and its member backup, in the site's order.
    members: tuple[tuple[str, BackupResult], ...]

    @property
    def warnings(self) -> tuple[str, ...]:
        """Every member's warnings, each naming its database."""
        return tuple(f"{name}: {w}" for name, result in self.members for w in result.warnings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``backup --all --json``)."""
        return {
            "group": self.group_id,
            "created_at": self.created_at,
            "members": {
                name: {
                    "id": result.metadata.id,
                    "size": result.metadata.stored_size,
                    "locations": list(result.locations),
                    "warnings": list(result.warnings),
                    "good": not result.metadata.source_damaged,
                }
                for name, result in self.members
            },
        }


def group_entry(group_id: str, members: dict[str, str]) -> dict[str, Any]:
    """What a member's manifest records of its group."""
    return {GROUP_KEY: {"id": group_id, "members": dict(members)}}


def create_group_backup(
    databases: Sequence[Settings],
    *,
    kind: str = "manual",
    trigger: str = "cli",
    label: str | None = None,
    pinned: bool = False,
    notify_owner: bool = True,
) -> GroupBackupResult:
    """Snapshot every database in ``databases`` as of one instant and file each copy as a
    backup of its own database, naming the group (see the module docstring).

    Takes every database's operation lock (in name order, so two groups never wait on each
    other) and finishes any interrupted work in each folder first. Raises what
    :func:`.backup.create_backup` raises; a failure before the copies are taken leaves no
    member, and one while filing leaves the members filed so far (valid backups of their own
    databases; the group is then listed as partial and is not a restore point).
    """
    if kind not in KINDS or kind == "pre-restore":
        raise ValueError(f"not a kind for a coordinated snapshot: {kind!r}")
    if not databases:
        raise ValueError("a coordinated snapshot needs at least one database")
    label = validate_label(label)
    for settings in databases:
        check_sqlite_file(settings.database)
        if settings.encryption is not None and settings.encryption.local:
            require_pyrage()
    with ExitStack() as locks:
        for settings in sorted(databases, key=lambda s: s.database_name):
            prepare_locations(settings)
            locks.enter_context(operation_lock(settings))
        for settings in databases:
            cleanup_debris(settings)
            claim_folders(settings)
            if intent.in_group(settings):
                # Its members may be half restored: a snapshot now would be a mixed group.
                raise BackupError(
                    f"a group restore that includes {settings.database_name} was interrupted "
                    "and is not settled yet: run the scheduled command (run) first"
                )
        result = _take_group(databases, kind, trigger, label, pinned)
    if notify_owner:
        for settings, (_, member) in zip(databases, result.members, strict=True):
            notify.send(settings, backup_events(settings, member))
    return result


def _take_group(
    databases: Sequence[Settings], kind: str, trigger: str, label: str | None, pinned: bool
) -> GroupBackupResult:
    now = datetime.now(timezone.utc)
    group_id = new_backup_id(now)
    ids = {s.database_name: new_backup_id(now) for s in databases}
    raws = [temp_path(s.backup_dir, f"{ids[s.database_name]}.db") for s in databases]
    try:
        snaps = snapshot_together(
            [s.database for s in databases],
            raws,
            busy_timeout=max(s.busy_timeout for s in databases),
        )
        created_at = snaps[0].began_at or now
        members: list[tuple[str, BackupResult]] = []
        for settings, raw, snap in zip(databases, raws, snaps, strict=True):
            name = settings.database_name
            members.append(
                (
                    name,
                    file_snapshot(
                        settings,
                        raw,
                        snap,
                        kind=kind,
                        trigger=trigger,
                        label=label,
                        pinned=pinned,
                        backup_id=ids[name],
                        extra=group_entry(group_id, ids),
                    ),
                )
            )
            remove_quietly(raw)
            crash_point(Stage.GROUP_MEMBER_FILED)  # pragma: no mutate
    finally:
        for raw in raws:
            remove_quietly(raw)
    logger.info(
        "coordinated snapshot %s: %s", group_id, ", ".join(f"{n} {i}" for n, i in ids.items())
    )
    return GroupBackupResult(group_id, created_at, tuple(members))


def snapshot_together(
    sources: Sequence[Path], dests: Sequence[Path], *, busy_timeout: float
) -> list[SnapshotInfo]:
    """Copy each live database in ``sources`` into the new file at the same place in
    ``dests``, all as of one instant (the module docstring says how). Every copy's
    ``began_at`` is that instant. Raises :class:`DatabaseError` (:class:`DatabaseBusy` when
    the locks could not all be had within ``busy_timeout``) or :class:`StorageError`."""
    signatures: list[SourceSignature | None] = []
    for source in sources:
        check_sqlite_file(source)
        try:
            signatures.append(source_signature(source))
        except OSError:
            signatures.append(None)
    started = time.monotonic()
    with ExitStack() as stack:
        readers = [
            stack.enter_context(closing(connect(source, busy_timeout=busy_timeout)))
            for source in sources
        ]
        began_at = pin_together(sources, readers, busy_timeout=busy_timeout)
        for reader in readers:
            stack.callback(_end_read, reader)
        crash_point(Stage.GROUP_SNAPSHOT)  # pragma: no mutate
        infos = [
            copy_out(
                reader,
                dest,
                label=f"database {source}",
                busy_timeout=busy_timeout,
                stage=Stage.SNAPSHOT_COPY,  # pragma: no mutate
            )
            for source, reader, dest in zip(sources, readers, dests, strict=True)
        ]
    seconds = time.monotonic() - started
    return [
        SnapshotInfo(
            source_size=info.source_size,
            page_size=info.page_size,
            page_count=info.page_count,
            journal_mode=info.journal_mode,
            sqlite_version=info.sqlite_version,
            seconds=seconds,
            signature=signature,
            began_at=began_at,
        )
        for info, signature in zip(infos, signatures, strict=True)
    ]


def _end_read(reader: sqlite3.Connection) -> None:
    try:
        reader.execute("ROLLBACK")
    except sqlite3.Error as exc:
        logger.warning("ending a read transaction: %s", exc)


def pin_together(
    sources: Sequence[Path], readers: Sequence[sqlite3.Connection], *, busy_timeout: float
) -> datetime:
    """Open a read transaction on each of ``readers`` (one per database in ``sources``) while
    every database's write lock is held, so all of them see one instant; returns it. The
    write locks are given back before this returns; the read transactions stay open.

    All or none: a later lock busy for :data:`LATER_LOCK_WAIT` gives every lock back and the
    round is tried again, until ``busy_timeout``; then :class:`DatabaseBusy`."""
    deadline = time.monotonic() + busy_timeout
    try:
        wal = [
            str(r.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal" for r in readers
        ]
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot read the databases together: {exc}") from exc
    while True:
        with ExitStack() as held:
            try:
                first = True
                for source, in_wal in zip(sources, wal, strict=True):
                    if not in_wal:
                        continue
                    locker = held.enter_context(closing(connect(source, busy_timeout=0)))
                    wait = deadline - time.monotonic() if first else LATER_LOCK_WAIT
                    begin_immediate(locker, max(0.0, wait))
                    held.callback(_end_read, locker)
                    first = False
                # Every WAL write lock is held: no app transaction is half way through any
                # of those. Pin each database's state as of this instant.
                began_at = datetime.now(timezone.utc)
                opened: list[sqlite3.Connection] = []
                try:
                    for reader in readers:
                        reader.execute("PRAGMA busy_timeout=0")
                        wait = deadline - time.monotonic() if first else LATER_LOCK_WAIT
                        _read_lock(reader, max(0.0, wait))
                        opened.append(reader)
                        first = False
                except BaseException:
                    for reader in opened:
                        _end_read(reader)
                    raise
                return began_at
            except sqlite3.Error as exc:
                if classify_sqlite_error(exc) is not SqliteFailure.BUSY:
                    raise DatabaseError(f"cannot read the databases together: {exc}") from exc
        # Some lock stayed busy: every lock is given back (the with-block ended).
        if time.monotonic() >= deadline:
            names = ", ".join(str(s) for s in sources)
            raise DatabaseBusy(
                f"could not hold {names} together: one stayed locked by another process for "
                f"{busy_timeout:g}s; gave up"
            )
        time.sleep(random.uniform(0.001, 0.01))  # noqa: S311  # pragma: no mutate


def _read_lock(conn: sqlite3.Connection, wait: float) -> None:
    """Open a read transaction and take its lock (the SHARED lock, or the WAL read mark),
    trying every :data:`LOCK_POLL` seconds for up to ``wait``; raises the busy
    ``sqlite3.Error`` (with no transaction left open) when the time is up."""
    deadline = time.monotonic() + wait
    while True:
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return
        except sqlite3.OperationalError as exc:
            conn.execute("ROLLBACK")
            if classify_sqlite_error(exc) is not SqliteFailure.BUSY:
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(LOCK_POLL)

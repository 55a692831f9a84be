"""Restoring a group: every member of a coordinated snapshot, all or nothing.

A coordinated snapshot (:mod:`.coordinated`) is one moment of several databases; bringing
back only some of them would leave an app that writes them together with a mix it never
wrote. So a group restore is one act over every member, built from the single restore's
parts (:mod:`.restore`, :mod:`.overwrite`):

1. Under every member database's operation lock (in name order), each member's backup is
   decompressed and fully checked, as for a single restore. Nothing has been touched yet.
2. The group's record (``group-restore.json``, the same in every member's state folder) and
   each member's own restore record (:mod:`.intent`) are written: a kill from here on is
   never silent, and never leaves the group mixed (see 5).
3. **One hold per database, all held together.** Every member's write lock is taken (all or
   none: one still busy after a moment gives every lock back and the round starts again, so
   an app transaction over two of them never deadlocks with the restore), and kept until
   every member is written and checked. In rollback-journal mode the safety copy of every
   member is taken first, then the members are written one after the other; in WAL mode the
   hold of a member begins with its write, so its safety copy is taken inside it (as
   :mod:`.overwrite` explains), before any of its pages change. Each member is checked on its
   own held connection. No app transaction can see one member restored and another not.
4. **If any member's write or check fails, every member written so far is put back** from its
   safety copy, each under its own still-held lock (the copy of what is overwritten is kept,
   as for a single restore). Then the locks are released, and every safety copy is filed as
   a ``pre-restore`` backup of its database.
5. **Killed at any stage**, the next ``run`` over the site (or ``restore --group``) finds the
   group's record and settles it: once every member was written, checked and released, the
   restore is finished (the safety copies filed); before that, every member that may have
   been written is put back from its safety copy, under one hold, what it held kept first.
   Each member's own record then settles as a single interrupted restore does (health
   critical until the owner has looked).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tablettracker_backups import audit, intent, notify
from tablettracker_backups.backup import cleanup_debris, file_snapshot
from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.encryption import Identity
from tablettracker_backups.errors import (
    AgeIdentityError,
    BackupError,
    DatabaseBusy,
    LockedError,
    RestoreError,
    StorageError,
)
from tablettracker_backups.fsutil import atomic_write_bytes, ensure_private_dir, remove_quietly
from tablettracker_backups.groups import RestoreGroup, find_group
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import BackupMetadata, parse_utc, utc_iso
from tablettracker_backups.overwrite import HeldDatabase
from tablettracker_backups.progress import StageProgress
from tablettracker_backups.restore import (
    RestoreResult,
    clear_unless_unfinished,
    put_back,
    scratch_copy,
    verify_restored,
)
from tablettracker_backups.restore_points import RestoreEvent, record_restore
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import SnapshotInfo, check_sqlite_file
from tablettracker_backups.sound_copy import extract_sound_copy
from tablettracker_backups.status import update_status
from tablettracker_backups.store import BackupStore

logger = logging.getLogger(__name__)

#: The group's stages, in order. Up to ``check`` a kill puts every member back; from
#: ``released`` on, every member was written and checked, and the restore is finished.
VERIFY = "verify"
HOLD = "hold"
SAFETY = "safety-copies"
WRITE = "write"
CHECK = "check"
ROLLBACK = "rollback"
RELEASED = "released"
FILING = "filing-safety-snapshots"
FORWARD = (RELEASED, FILING)
#: Seconds a member's lock after the first may stay busy before every lock is given back.
LATER_LOCK_WAIT = 0.05
#: Test seam: called under the hold after every member is written, before the checks, with
#: the member's name, its database and the connection holding its lock.
AfterWriteHook = Callable[[str, Path, Any], None]


# -- the group's record ---------------------------------------------------------------------


@dataclass
class GroupRecord:
    """A group restore as it runs (or as it was when it was killed)."""

    group_id: str
    started_at: datetime
    stage: str
    stage_at: datetime
    pid: int
    host: str
    pid_started: int | None
    #: Per member: ``name``, ``target``, ``backup_id``, ``state_dir``, ``safety_copy``,
    #: ``safety_copied`` (complete and fsynced), ``may_be_written`` (its write began),
    #: ``rolled_back``.
    members: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> bytes:
        document = {
            "group_id": self.group_id,
            "started_at": utc_iso(self.started_at),
            "stage": self.stage,
            "stage_at": utc_iso(self.stage_at),
            "pid": self.pid,
            "host": self.host,
            "pid_started": self.pid_started,
            "members": self.members,
        }
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, text: bytes) -> GroupRecord:
        """Parse a record; raises ``ValueError``."""
        doc = json.loads(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("members"), list):
            raise ValueError("not a group restore record")
        try:
            return cls(
                group_id=str(doc["group_id"]),
                started_at=parse_utc(doc["started_at"], "started_at"),
                stage=str(doc["stage"]),
                stage_at=parse_utc(doc["stage_at"], "stage_at"),
                pid=int(doc["pid"]),
                host=str(doc["host"]),
                pid_started=None if doc.get("pid_started") is None else int(doc["pid_started"]),
                members=[dict(m) for m in doc["members"] if isinstance(m, dict)],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or bad field: {exc}") from exc

    def member(self, name: str) -> dict[str, Any]:
        for member in self.members:
            if member.get("name") == name:
                return member
        raise KeyError(name)

    def save(self, stage: str | None = None) -> None:
        """Write the record into every member's state folder (atomically, fsynced); raises
        :class:`StorageError`."""
        if stage is not None:
            self.stage, self.stage_at = stage, datetime.now(timezone.utc)
        data = self.to_json()
        for member in self.members:
            folder = Path(member["state_dir"])
            ensure_private_dir(folder)
            atomic_write_bytes(folder / intent.GROUP_FILE, data)

    def remove(self) -> None:
        """Remove the record from every member's state folder: the group is settled."""
        for member in self.members:
            remove_quietly(Path(member["state_dir"]) / intent.GROUP_FILE)

    @property
    def alive(self) -> bool:
        """The restore that wrote it is still running."""
        return intent.process_alive(self.pid, self.host, self.pid_started)


def read_record(settings: Settings) -> GroupRecord | None:
    """The group restore record in this database's state folder, or None; a damaged one is
    logged and reported as None (the member's own record still makes health critical)."""
    where = settings.state_dir / intent.GROUP_FILE
    try:
        return GroupRecord.from_json(where.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.error("group restore record %s cannot be read: %s", where, exc)
        return None


# -- restoring a group ---------------------------------------------------------------------


@dataclass(frozen=True)
class GroupRestoreResult:
    """A group restore that wrote and checked every member."""

    group_id: str
    created_at: datetime
    #: Each member's name and its restore, in the group's order.
    members: tuple[tuple[str, RestoreResult], ...]
    #: What settling an earlier, interrupted group restore did first, if anything.
    settled: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``restore --group --json``)."""
        return {
            "group": self.group_id,
            "created_at": utc_iso(self.created_at),
            "members": {name: result.to_dict() for name, result in self.members},
            "settled": list(self.settled),
        }


@dataclass
class _Member:
    """One member as the restore goes."""

    name: str
    settings: Settings
    backup_id: str
    target: Path
    scratch: Path | None = None
    location: str = ""
    meta: BackupMetadata | None = None
    safety: Path | None = None
    copied: SnapshotInfo | None = None
    held: HeldDatabase | None = None
    written: bool = False
    #: Its write or its check failed (what made the group fail).
    failed: bool = False
    rolled_back: bool = False
    record: intent.RestoreIntent | None = None
    notes: list[str] = field(default_factory=list)
    safety_id: str | None = None
    durations: dict[str, float] = field(default_factory=dict)


def restore_group(
    databases: Sequence[Settings],
    group_id: str,
    *,
    actor: str = "cli",
    identity: Identity | None = None,
    progress: StageProgress | None = None,
    raw_reads: bool = False,
    _after_write: AfterWriteHook | None = None,
) -> GroupRestoreResult:
    """Restore every member of the coordinated snapshot ``group_id`` (or of the group of the
    member backup ``group_id``) into its live database, all or nothing (module docstring).

    ``databases`` is the site. ``raw_reads``: this process has no other connection to the
    databases (the command line), see :mod:`.overwrite`. ``_after_write`` is a test seam.
    Raises :class:`InvalidBackupId`, :class:`BackupNotFound`, :class:`LockedError`,
    :class:`AgeIdentityError` (nothing changed) or :class:`RestoreError`, whose message says
    what every member holds.
    """
    group = find_group(databases, group_id)
    if not group.whole:
        raise RestoreError(
            f"coordinated snapshot {group.id} is not a whole restore point "
            f"({'; '.join(group.problems)}); nothing was changed"
        )
    members: list[_Member] = []
    for listed in group.members:
        assert listed.settings is not None  # whole: every member is in the site
        members.append(
            _Member(listed.name, listed.settings, listed.backup_id, listed.settings.database)
        )
    if identity is None and any(
        m.settings.encryption is not None and m.settings.encryption.local for m in members
    ):
        raise AgeIdentityError(
            "backups are encrypted (BACKUPS_ENCRYPT=all): restoring needs --identity FILE (or "
            "BACKUPS_IDENTITY_FILE); nothing was changed"
        )
    for member in members:
        _check_target(member)
    by_name = {s.database_name: s for s in databases}
    try:
        with ExitStack() as locks:
            for member in sorted(members, key=lambda m: m.name):
                locks.enter_context(operation_lock(member.settings))
            for member in members:
                cleanup_debris(member.settings)
            settled = _settle_pending([m.settings for m in members], by_name)
            result = _restore_locked(
                group, members, actor, identity, progress, raw_reads, _after_write
            )
    except RestoreError as exc:
        for member in members:
            notify.send(
                member.settings,
                [notify.restore_failed(member.settings, member.backup_id, str(exc))],
            )
        raise
    for name, done in result:
        settings = by_name[name]
        notify.send(
            settings,
            [
                notify.restore_done(
                    settings, done.backup_id, str(done.target), done.safety_snapshot_id
                )
            ],
        )
    return GroupRestoreResult(group.id, group.created_at, tuple(result), tuple(settled))


def _check_target(member: _Member) -> None:
    """Each member's live database must exist and hold data: a group restore overwrites
    databases in place, each under its lock (a lost one is restored alone first)."""
    try:
        size = member.target.stat().st_size
    except OSError:
        size = 0
    if size == 0:
        raise RestoreError(
            f"{member.name}: {member.target} does not exist or is empty; restore it alone first "
            f"({member.settings.command_line('restore', member.backup_id)}), then the group; "
            "nothing was changed"
        )
    try:
        check_sqlite_file(member.target)
    except BackupError as exc:
        raise RestoreError(
            f"{member.name}: refusing to overwrite: {exc}; nothing was changed"
        ) from exc


def _restore_locked(
    group: RestoreGroup,
    members: list[_Member],
    actor: str,
    identity: Identity | None,
    progress: StageProgress | None,
    raw_reads: bool,
    after_write: AfterWriteHook | None,
) -> list[tuple[str, RestoreResult]]:
    started = time.monotonic()
    try:
        for member in members:
            store = BackupStore(member.settings)
            begun = time.monotonic()
            member.scratch, member.location, member.meta = extract_sound_copy(
                store, member.backup_id, member.notes, identity, progress
            )
            member.durations["verify"] = round(time.monotonic() - begun, 4)
        record = _begin(group, members)
        try:
            failure, undo_failures = _hold_and_write(
                members, record, raw_reads, after_write, progress
            )
        except BaseException as exc:
            # Every member written was put back (or the message says which was not); the
            # copies taken hold what each database held: kept as backups.
            _file_safety_copies(members, actor)
            _ended(
                members,
                record,
                actor,
                ok=False,
                message=f"group restore of {group.id} failed: {exc}",
            )
            if isinstance(exc, (LockedError, RestoreError)) or not isinstance(exc, BackupError):
                raise
            raise RestoreError(
                f"group restore of {group.id} failed: {exc}; nothing was changed"
            ) from exc
    finally:
        for member in members:
            if member.scratch is not None:
                remove_quietly(member.scratch)
    record.save(RELEASED)
    crash_point(Stage.GROUP_RELEASED)  # pragma: no mutate
    record.save(FILING)
    warnings = _file_safety_copies(members, actor)
    for member in members:
        member.durations["total"] = round(time.monotonic() - started, 4)
    if failure is not None:
        message = _failure_message(group, members, failure, undo_failures)
        for member in members:
            if member.written and member.record is not None:  # not put back
                member.record = intent.advance(
                    member.settings, member.record, intent.ROLLBACK, unfinished=message
                )
        _ended(members, record, actor, ok=False, message=message, keep=True)
        raise RestoreError(message)
    now = datetime.now(timezone.utc)
    results = []
    for member in members:
        result = RestoreResult(
            backup_id=member.backup_id,
            source_location=member.location,
            target=member.target,
            safety_snapshot_id=member.safety_id,
            fell_back=tuple(member.notes),
            durations=dict(member.durations),
            warnings=tuple(warnings.get(member.name, ())),
        )
        results.append((member.name, result))
        _remember(member, now, actor)
    _ended(
        members,
        record,
        actor,
        ok=True,
        message=f"restored coordinated snapshot {group.id}: "
        + ", ".join(f"{m.name} {m.backup_id}" for m in members),
        keep=any(warnings.values()),
    )
    return results


def _begin(group: RestoreGroup, members: list[_Member]) -> GroupRecord:
    """Write the group's record and each member's own: nothing is touched before both are
    safely on disk."""
    now = datetime.now(timezone.utc)
    record = GroupRecord(
        group_id=group.id,
        started_at=now,
        stage=VERIFY,
        stage_at=now,
        pid=os.getpid(),
        host=socket.gethostname(),
        pid_started=intent.process_start(os.getpid()),
    )
    for member in members:
        folder = member.settings.backup_dir
        ensure_private_dir(folder)
        member.safety = scratch_copy(folder, "before")
        record.members.append(
            {
                "name": member.name,
                "target": str(member.target),
                "backup_id": member.backup_id,
                "state_dir": str(member.settings.state_dir),
                "safety_copy": str(member.safety),
                "safety_copied": False,
                "may_be_written": False,
                "rolled_back": False,
            }
        )
    try:
        record.save()
        for member in members:
            member.record = intent.begin(
                member.settings, backup_id=member.backup_id, target=member.target, live=True
            )
            member.record = intent.advance(
                member.settings,
                member.record,
                intent.HOLD,
                safety_copy=str(member.safety),
                extra={
                    "safety_dir": str(member.settings.backup_dir),
                    "kept_beside_target": False,
                    "group": group.id,
                },
            )
    except StorageError as exc:
        record.remove()
        for member in members:
            intent.clear(member.settings)
        raise RestoreError(
            f"could not record the group restore ({exc}); nothing was changed"
        ) from exc
    return record


def _hold_and_write(
    members: list[_Member],
    record: GroupRecord,
    raw_reads: bool,
    after_write: AfterWriteHook | None,
    progress: StageProgress | None,
) -> tuple[BackupError | None, list[str]]:
    """Hold every member, copy, write and check each; on a failure put back every member
    written. Returns the failure (None: every member restored and checked) and what could
    not be put back."""
    failure: BackupError | None = None
    undo_failures: list[str] = []
    with ExitStack() as holds:
        _hold_all(members, holds, raw_reads)
        record.save(HOLD)
        crash_point(Stage.GROUP_HOLD)  # pragma: no mutate
        try:
            for member in members:
                assert member.held is not None and member.safety is not None
                if not member.held.wal:
                    begun = time.monotonic()
                    member.copied = member.held.capture(member.safety)
                    member.durations["safety_snapshot"] = round(time.monotonic() - begun, 4)
                    _copied(member, record)
        except BackupError as exc:
            raise RestoreError(f"could not take a safety snapshot of every member ({exc})") from exc
        try:
            failure = _write_all(members, record)
            if failure is None:
                crash_point(Stage.GROUP_WRITTEN)  # pragma: no mutate
                record.save(CHECK)
                failure = _check_all(members, after_write)
        except BaseException:
            # Anything else (a record that cannot be saved, an interrupt): never leave the
            # group mixed either.
            _roll_back(members, record, progress)
            raise
        if failure is not None:
            _save_quietly(record, ROLLBACK)
            undo_failures = _roll_back(members, record, progress)
    return failure, undo_failures


class _MemberError(RestoreError):
    """One member's write failed (its message names the member)."""


def _write_all(members: list[_Member], record: GroupRecord) -> BackupError | None:
    """Write every member under the held locks; the first failure (a failed write changed
    nothing in its member), or None.

    WAL members are held by their writes themselves (:mod:`.overwrite`): each member's write
    begins inside the previous one's first step, so all of them hold their write lock, none
    committed, when their safety copies are taken and the rollback-journal members (held
    since :func:`_hold_all`) are written; then the WAL members commit, innermost first, each
    taking its lock back at once. A WAL member after the first whose lock stays busy for
    :data:`LATER_LOCK_WAIT` (an app transaction that holds it and waits for one held here)
    gives every write up, nothing committed, and the round starts again.
    """
    plain = [m for m in members if m.held is not None and not m.held.wal]
    wal = [m for m in members if m.held is not None and m.held.wal]
    for member in members:
        record.member(member.name)["may_be_written"] = True
    deadline = time.monotonic() + max(m.settings.busy_timeout for m in members)

    def innermost() -> None:
        for member in wal:
            assert member.held is not None and member.safety is not None
            begun = time.monotonic()
            member.copied = member.held.capture(member.safety)
            member.durations["safety_snapshot"] = round(time.monotonic() - begun, 4)
            _copied(member, record)
        record.save(SAFETY)
        crash_point(Stage.GROUP_SAFETY)  # pragma: no mutate
        record.save(WRITE)
        for member in plain:
            _write_one(member, None)

    trying: list[_Member] = []

    def nest(index: int) -> None:
        if index == len(wal):
            innermost()
            return
        member = wal[index]
        assert member.held is not None
        member.held.lock_wait = (
            max(0.0, deadline - time.monotonic()) if index == 0 else LATER_LOCK_WAIT
        )
        trying.append(member)
        _write_one(member, functools.partial(nest, index + 1))

    while True:
        trying.clear()
        try:
            nest(0)
            return None
        except DatabaseBusy as exc:
            if any(m.written for m in members) or time.monotonic() >= deadline:
                return RestoreError(f"could not write every member: {exc}")
            # Nothing was committed (every write in progress was given up). The member that
            # stayed busy goes first next time: its holder (an app transaction waiting for
            # one held here) finishes, and the others are free after it.
            if trying and trying[-1] in wal:
                wal.remove(trying[-1])
                wal.insert(0, trying[-1])
            for member in wal:
                if member.safety is not None:
                    remove_quietly(member.safety)
            time.sleep(0.005)  # pragma: no mutate
        except _MemberError as exc:
            return exc


def _write_one(member: _Member, inside: Callable[[], None] | None) -> None:
    """Write one member (``inside``: see :meth:`.overwrite.HeldDatabase.replace`)."""
    held, scratch = member.held, member.scratch
    assert held is not None and scratch is not None
    begun = time.monotonic()
    try:
        held.replace(scratch, capture=None, inside=inside, stage=Stage.RESTORE_WRITE)
    except (DatabaseBusy, _MemberError):
        raise
    except BackupError as exc:
        member.failed = True
        raise _MemberError(
            f"{member.name}: could not write backup {member.backup_id}: {exc}"
        ) from exc
    member.written = True
    member.durations["write"] = round(time.monotonic() - begun, 4)
    crash_point(Stage.GROUP_MEMBER_WRITTEN)  # pragma: no mutate


def _save_quietly(record: GroupRecord, stage: str | None = None) -> None:
    """Save the record during a rollback: trouble is logged, the rollback goes on."""
    try:
        record.save(stage)
    except StorageError as exc:
        logger.error("could not note the group restore's rollback: %s", exc)


def _hold_all(members: list[_Member], holds: ExitStack, raw_reads: bool) -> None:
    """Take every member's write lock, all or none (see the module docstring)."""
    deadline = time.monotonic() + max(m.settings.busy_timeout for m in members)
    order = list(members)
    while True:
        with ExitStack() as round_:
            member = order[0]
            try:
                for index, member in enumerate(order):
                    wait = deadline - time.monotonic() if index == 0 else LATER_LOCK_WAIT
                    held = HeldDatabase(
                        member.target,
                        busy_timeout=member.settings.busy_timeout,
                        raw=raw_reads,
                        lock_wait=max(0.0, wait),
                    )
                    round_.enter_context(held)
                    member.held = held
            except DatabaseBusy as exc:
                if time.monotonic() >= deadline:
                    raise RestoreError(
                        f"{exc}; nothing was changed: try again when the app is less busy (or "
                        "raise BACKUPS_BUSY_TIMEOUT)"
                    ) from exc
                # The one that stayed busy first next time (see _write_all).
                order.remove(member)
                order.insert(0, member)
            except BackupError as exc:
                raise RestoreError(f"cannot restore the group: {exc}; nothing was changed") from exc
            else:
                holds.push(round_.pop_all())
                return
        time.sleep(0.005)  # pragma: no mutate


def _copied(member: _Member, record: GroupRecord) -> None:
    record.member(member.name)["safety_copied"] = True
    record.save()
    assert member.record is not None and member.held is not None
    member.record = intent.advance(
        member.settings,
        member.record,
        intent.WRITE,
        safety_copied=True,
        journal_mode=member.held.journal_mode,
    )


def _check_all(members: list[_Member], after_write: AfterWriteHook | None) -> BackupError | None:
    """Check every member on its held connection; the first failure, or None."""
    for member in members:
        held, meta, scratch = member.held, member.meta, member.scratch
        assert held is not None and meta is not None and scratch is not None
        if after_write is not None:
            after_write(member.name, member.target, held.conn)
        begun = time.monotonic()
        try:
            held.check(functools.partial(_verify, held, meta, scratch), keep=True)
        except BackupError as exc:
            member.failed = True
            return RestoreError(f"{member.name}: the check after the write failed: {exc}")
        finally:
            member.durations["post_check"] = round(time.monotonic() - begun, 4)
    return None


def _verify(held: HeldDatabase, meta: BackupMetadata, scratch: Path, conn: Any) -> None:
    verify_restored(conn, meta, held.target, held, scratch)


def _roll_back(
    members: list[_Member], record: GroupRecord, progress: StageProgress | None
) -> list[str]:
    """Put back every member that was written, last first, each under its held lock; what
    could not be put back, one line each."""
    failures: list[str] = []
    for member in reversed(members):
        if not member.written:
            continue  # not written, or its write failed: a failed write changed nothing
        assert member.held is not None and member.safety is not None
        after = (
            scratch_copy(member.settings.backup_dir, "after-failed-restore")
            if member.held.wal
            else None
        )
        _note_after(member, after)
        try:
            put_back(
                member.held,
                member.safety,
                after,
                progress,
                functools.partial(_after_copied, member),
            )
        except BackupError as exc:
            failures.append(f"{member.name}: {exc}")
            continue
        member.written = False
        member.rolled_back = True
        record.member(member.name)["rolled_back"] = True
        _save_quietly(record)
        crash_point(Stage.GROUP_ROLLBACK)  # pragma: no mutate
    return failures


def _after_copied(member: _Member, _: SnapshotInfo) -> None:
    _note_after(member, None, done=True)


def _note_after(member: _Member, after: Path | None, *, done: bool = False) -> None:
    """Name the copy of what a rollback overwrites in the member's record (its own clean-up
    files it as a backup after a kill)."""
    assert member.record is not None
    extra = dict(member.record.extra)
    if done:
        extra["after_failed_done"] = True
    elif after is not None:
        extra["after_failed"] = str(after)
    member.record = intent.advance(member.settings, member.record, intent.ROLLBACK, extra=extra)


def _file_safety_copies(members: list[_Member], actor: str) -> dict[str, list[str]]:
    """File every member's safety copy (and a rollback's copy of what it overwrote) as a
    ``pre-restore`` backup of its database; trouble leaves the copy and the record for the
    next run, and is a warning."""
    warnings: dict[str, list[str]] = {}
    for member in members:
        assert member.record is not None and member.safety is not None
        if member.copied is None:
            remove_quietly(member.safety)
            continue
        try:
            filed = file_snapshot(
                member.settings, member.safety, member.copied, kind="pre-restore", trigger=actor
            )
            member.safety_id = filed.metadata.id
            member.record = intent.advance(
                member.settings, member.record, intent.FILING, safety_kept=member.safety_id
            )
            remove_quietly(member.safety)
            after = member.record.extra.get("after_failed")
            if isinstance(after, str) and Path(after).is_file():
                kept = file_snapshot(
                    member.settings,
                    Path(after),
                    member.copied,
                    kind="pre-restore",
                    trigger=actor,
                )
                remove_quietly(Path(after))
                member.notes.append(
                    f"rollback: what was overwritten is kept as backup {kept.metadata.id}"
                )
        except BackupError as exc:
            note = (
                f"the safety copy of {member.target} could not be kept yet ({exc}); it is at "
                f"{member.safety}"
            )
            logger.warning("%s", note)
            warnings.setdefault(member.name, []).append(f"{note}; the next run files it")
            member.record = intent.advance(
                member.settings, member.record, intent.FILING, unfinished=note
            )
    return warnings


def _remember(member: _Member, now: datetime, actor: str) -> None:
    """Put the restore on the member's timeline (``--at``) and in its status file."""
    try:
        update_status(
            member.settings,
            last_restore={
                "backup_id": member.backup_id,
                "at": utc_iso(now),
                "actor": actor,
                "safety_snapshot_id": member.safety_id,
            },
        )
        record_restore(member.settings, RestoreEvent(now, member.backup_id, member.safety_id))
    except StorageError as exc:
        logger.warning("could not note the restore of %s: %s", member.backup_id, exc)


def _ended(
    members: list[_Member],
    record: GroupRecord,
    actor: str,
    *,
    ok: bool,
    message: str,
    keep: bool = False,
) -> None:
    """Audit the outcome in every member's log and forget the records (``keep``: a member's
    own record stays, with work for the next run)."""
    record.remove()
    for member in members:
        try:
            audit.record(
                member.settings,
                action="restore",
                actor=actor,
                ok=ok,
                message=message,
                details={
                    "backup_id": member.backup_id,
                    "target": str(member.target),
                    "group": record.group_id,
                    "safety_snapshot_id": member.safety_id,
                    "fell_back": list(member.notes),
                    "durations": dict(member.durations),
                },
            )
        except StorageError as exc:
            logger.warning("could not audit the group restore: %s", exc)
        if keep:
            clear_unless_unfinished(member.settings)
        else:
            intent.clear(member.settings)


def _failure_message(
    group: RestoreGroup, members: list[_Member], failure: BackupError, undo_failures: list[str]
) -> str:
    first = f"group restore of {group.id} failed: {failure}"
    written = [m.name for m in members if m.written or m.rolled_back]
    if undo_failures:
        return (
            f"{first}; putting back ALSO failed for {'; '.join(undo_failures)}: those databases "
            "may be damaged: restore each from its safety snapshot ("
            + ", ".join(f"{m.name} {m.safety_id}" for m in members if m.safety_id)
            + ")"
        )
    if not written:
        return f"{first}; no member was written, every database is as it was"
    return (
        f"{first}; every member written ({', '.join(written)}) was put back from its safety "
        "snapshot, so every database is as it was before the restore"
    )


# -- settling an interrupted group restore -----------------------------------------------------


def finish_group_restores(databases: Sequence[Settings]) -> str | None:
    """Settle every group restore of these databases that was killed: finish it, or put every
    member back (module docstring, 5). Takes the members' operation locks itself. Returns
    what was done (None: nothing to do); never raises for a busy lock (the next run
    tries again)."""
    records: dict[tuple[str, str], GroupRecord] = {}
    for settings in databases:
        record = read_record(settings)
        if record is not None and not record.alive:
            records[(record.group_id, utc_iso(record.started_at))] = record
    if not records:
        return None
    by_name = {s.database_name: s for s in databases}
    done: list[str] = []
    for record in records.values():
        names = sorted(m["name"] for m in record.members)
        missing = [n for n in names if n not in by_name]
        if missing:
            done.append(
                f"the interrupted group restore of {record.group_id} names databases this site "
                f"does not have ({', '.join(missing)}): settle it with the site that ran it"
            )
            continue
        try:
            with ExitStack() as locks:
                for name in names:
                    locks.enter_context(operation_lock(by_name[name]))
                done += _settle_pending([by_name[n] for n in names], by_name)
        except LockedError as exc:
            done.append(f"the interrupted group restore of {record.group_id} waits: {exc}")
        except BackupError as exc:
            done.append(
                f"settling the interrupted group restore of {record.group_id} failed: {exc}"
            )
            logger.error("%s", done[-1])
    return "; ".join(done) or None


def _settle_pending(locked: Sequence[Settings], by_name: dict[str, Settings]) -> list[str]:
    """Settle the killed group restores recorded in these databases' folders, whose locks
    the caller holds (every member's). Returns one line per group settled."""
    seen: set[tuple[str, str]] = set()
    done: list[str] = []
    for settings in locked:
        record = read_record(settings)
        if record is None or record.alive:
            continue
        key = (record.group_id, utc_iso(record.started_at))
        if key in seen:
            continue
        seen.add(key)
        held = {s.database_name for s in locked}
        others = sorted(m["name"] for m in record.members if m["name"] not in held)
        if others:
            done.append(
                f"the interrupted group restore of {record.group_id} also covers "
                f"{', '.join(others)}: run the scheduled command over the whole site to settle it"
            )
            continue
        done.append(_settle(record, by_name))
    return done


def _settle(record: GroupRecord, by_name: dict[str, Settings]) -> str:
    """Finish or roll back one killed group restore; every member's lock is held."""
    members = [(m, by_name[m["name"]]) for m in record.members]
    if record.stage in FORWARD:
        outcome = "every member had been written and checked: the restore is finished"
    else:
        problems = []
        for member, settings in reversed(members):
            if not member.get("may_be_written") or member.get("rolled_back"):
                continue
            safety = Path(str(member.get("safety_copy")))
            if not member.get("safety_copied") or not safety.is_file():
                continue  # no complete copy: its write (which follows the copy) never began
            try:
                _put_member_back(member, settings, safety)
            except BackupError as exc:
                problems.append(f"{member['name']}: {exc}")
                continue
            member["rolled_back"] = True
            record.save()
            crash_point(Stage.GROUP_ROLLBACK)  # pragma: no mutate
        if problems:
            message = (
                f"the group restore of {record.group_id} was interrupted at stage "
                f"{record.stage}; putting back failed for {'; '.join(problems)}"
            )
            logger.error("%s", message)
            return message  # the record stays: the next run tries again
        outcome = "every member that may have been written was put back from its safety copy"
    record.remove()
    message = (
        f"the group restore of {record.group_id} "
        f"({', '.join(m['name'] for m, _ in members)}) was interrupted at stage {record.stage} "
        f"({utc_iso(record.stage_at)}); {outcome}"
    )
    logger.warning("%s", message)
    for _, settings in members:
        try:
            audit.record(
                settings,
                action="restore",
                actor="cleanup",
                ok=False,
                message=message,
                details={"group": record.group_id, "stage": record.stage, "interrupted": True},
            )
        except StorageError as exc:
            logger.warning("could not audit the interrupted group restore: %s", exc)
        cleanup_debris(settings)  # files each member's copies, as for a single restore
    return message


def _put_member_back(member: dict[str, Any], settings: Settings, safety: Path) -> None:
    """Write a member's safety copy back under one hold, what it holds now copied first
    (named in its own record, so its clean-up files it as a backup)."""
    record = intent.read(settings)
    after = scratch_copy(settings.backup_dir, "after-interrupted-group-restore")
    if record is not None:
        record = intent.advance(
            settings, record, intent.ROLLBACK, extra={**record.extra, "after_failed": str(after)}
        )
    try:
        with HeldDatabase(Path(member["target"]), busy_timeout=settings.busy_timeout) as held:

            def done(_: SnapshotInfo) -> None:
                nonlocal record
                if record is not None:
                    record = intent.advance(
                        settings,
                        record,
                        intent.ROLLBACK,
                        extra={**record.extra, "after_failed_done": True},
                    )

            put_back(held, safety, after, None, done)
    except BackupError:
        raise
    except OSError as exc:
        raise RestoreError(f"cannot put {member['target']} back: {exc}") from exc

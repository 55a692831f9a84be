"""The record a restore keeps while it runs, so that a killed restore is never silent.

``restore-intent.json`` in the state folder is written before a restore touches anything and
rewritten at each stage. A restore that ends, well or badly, removes it (its audit entry and
its message say how it ended). A record that is still there while no process of this host is
running that restore belongs to one that was killed: health is critical and names the backup,
the target, the stage and the time; the next command under the operation lock files its safety
copy as a backup, removes its scratch files, audits the kill and notes the space it freed
(:func:`tablettracker_backups.backup.cleanup_debris`). The record then stays, and health
critical, until a restore succeeds or the owner, having looked, dismisses it
(``restore --dismiss``).

The record is also how the host app learns that a restore of its database is running (the
blueprint answers its writes with 503 meanwhile): :func:`running` is a stat and a small read.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tablettracker_backups.display import local_time
from tablettracker_backups.errors import BackupError, StorageError
from tablettracker_backups.fsutil import (
    atomic_write_bytes,
    ensure_private_dir,
    remove_quietly,
    write_replace,
)
from tablettracker_backups.metadata import MAX_METADATA_BYTES, parse_utc, utc_iso
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import connect, row_counts, schema_fingerprint
from tablettracker_backups.store import BackupStore

logger = logging.getLogger(__name__)

INTENT_FILE = "restore-intent.json"
#: The record of a group restore (:mod:`.group_restore`), the same in every member's state
#: folder. While it is there the member's own record is the group's to settle, not this
#: database's alone: putting one member back without the others would leave them mixed.
GROUP_FILE = "group-restore.json"
#: Scratch copies of the live database a restore makes under its lock: never ``.tmp-*``, which
#: any command's clean-up removes, because until filed it may be the only copy of that data.
SAFETY_PREFIX = ".restore-safety-"

#: Stages, in order. From ``write`` on, a rollback-journal database is locked for readers too.
VERIFY = "verify"
HOLD = "hold"
SAFETY_COPY = "safety-copy"
WRITE = "write"
CHECK = "check"
ROLLBACK = "rollback"
RELEASED = "released"
FILING = "filing-safety-snapshot"
STAGES = (VERIFY, HOLD, SAFETY_COPY, WRITE, CHECK, ROLLBACK, RELEASED, FILING)
#: Stages in which the target's pages are being written or checked under the exclusive lock.
WRITING = (WRITE, CHECK, ROLLBACK)


@dataclass(frozen=True)
class RestoreIntent:
    """A restore as it runs (or as it was when it was killed)."""

    backup_id: str
    target: str
    live: bool
    started_at: datetime
    stage: str
    stage_at: datetime
    pid: int
    host: str
    #: The process's start time (Linux clock ticks since boot), so a reused pid is not taken
    #: for the restore; None where it cannot be read.
    pid_started: int | None = None
    #: The target's journal mode, once the restore has opened it.
    journal_mode: str | None = None
    #: The plain copy of the target taken under the lock, and whether it is complete and
    #: fsynced (only then can it be filed).
    safety_copy: str | None = None
    safety_copied: bool = False
    #: The backup the safety copy was filed as (a live restore) or the file it was kept as.
    safety_kept: str | None = None
    #: Why a restore that ended (not killed) left its record: what is still to be done.
    unfinished: str | None = None
    #: Filled in when a later command found the restore interrupted and cleaned up after it.
    found_at: datetime | None = None
    freed: int = 0
    #: What the target held when that command looked, and how it knew.
    state: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def writing(self) -> bool:
        """Its pages are being written or checked right now (if it is running)."""
        return self.stage in WRITING

    def to_json(self) -> str:
        """The file's text."""
        document = asdict(self)
        for key in ("started_at", "stage_at", "found_at"):
            value = getattr(self, key)
            document[key] = None if value is None else utc_iso(value)
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> RestoreIntent:
        """Parse a record; raises ``ValueError`` on anything odd."""
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        found = doc.get("found_at")
        try:
            return cls(
                backup_id=str(doc["backup_id"]),
                target=str(doc["target"]),
                live=bool(doc["live"]),
                started_at=parse_utc(doc["started_at"], "started_at"),
                stage=str(doc["stage"]),
                stage_at=parse_utc(doc["stage_at"], "stage_at"),
                pid=int(doc["pid"]),
                host=str(doc["host"]),
                pid_started=None if doc.get("pid_started") is None else int(doc["pid_started"]),
                journal_mode=_opt(doc.get("journal_mode")),
                safety_copy=_opt(doc.get("safety_copy")),
                safety_copied=bool(doc.get("safety_copied", False)),
                safety_kept=_opt(doc.get("safety_kept")),
                unfinished=_opt(doc.get("unfinished")),
                found_at=None if found is None else parse_utc(found, "found_at"),
                freed=int(doc.get("freed", 0)),
                state=_opt(doc.get("state")),
                extra=dict(doc.get("extra") or {}),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or bad field: {exc}") from exc


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def path(settings: Settings) -> Path:
    """Where the record lives."""
    return settings.state_dir / INTENT_FILE


def read(settings: Settings) -> RestoreIntent | None:
    """The record, or None; a damaged one is reported as a killed restore's would be."""
    where = path(settings)
    try:
        text = where.read_bytes()[:MAX_METADATA_BYTES]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {where}: {exc.strerror}") from exc
    try:
        return RestoreIntent.from_json(text)
    except ValueError as exc:
        now = datetime.now(timezone.utc)
        logger.warning("restore record %s is damaged: %s", where, exc)
        return RestoreIntent(
            backup_id="unknown",
            target="unknown",
            live=True,
            started_at=now,
            stage="unknown",
            stage_at=now,
            pid=0,
            host="",
            unfinished=f"the record {where} is damaged ({exc})",
        )


def begin(settings: Settings, *, backup_id: str, target: Path, live: bool) -> RestoreIntent:
    """Write the record of a restore that is about to start; raises :class:`StorageError`
    (then nothing is started: a restore that could not be traced must not run)."""
    now = datetime.now(timezone.utc)
    intent = RestoreIntent(
        backup_id=backup_id,
        target=str(target),
        live=live,
        started_at=now,
        stage=VERIFY,
        stage_at=now,
        pid=os.getpid(),
        host=socket.gethostname(),
        pid_started=process_start(os.getpid()),
    )
    save(settings, intent)
    return intent


def save(settings: Settings, intent: RestoreIntent, *, durable: bool = True) -> None:
    """Write the record atomically; ``durable``: fsynced too (it must outlive a power cut,
    not only a killed process). Raises :class:`StorageError`."""
    ensure_private_dir(settings.state_dir)
    if durable:
        atomic_write_bytes(path(settings), intent.to_json().encode())
        return
    write_replace(path(settings), intent.to_json().encode())


def advance(
    settings: Settings, intent: RestoreIntent, stage: str, *, durable: bool = True, **changes: Any
) -> RestoreIntent:
    """The record at its next ``stage``, saved (``durable``: see :func:`save`; a stage noted
    while the app waits on the restore's lock is not fsynced unless what it records must
    survive a power cut). A failure to save is logged, not raised: the record of the stage
    before still says a restore is under way."""
    updated = replace(intent, stage=stage, stage_at=datetime.now(timezone.utc), **changes)
    try:
        save(settings, updated, durable=durable)
    except StorageError as exc:
        logger.warning("could not note the restore's stage %s: %s", stage, exc)
    return updated


def in_group(settings: Settings) -> bool:
    """Whether a group restore of this database has not been settled yet (see
    :data:`GROUP_FILE`)."""
    return (settings.state_dir / GROUP_FILE).exists()


def clear(settings: Settings) -> None:
    """Remove the record: the restore ended and said how."""
    remove_quietly(path(settings))


def alive(intent: RestoreIntent) -> bool:
    """Whether the process that wrote the record is still running (on this host)."""
    return process_alive(intent.pid, intent.host, intent.pid_started)


def process_alive(pid: int, host: str, pid_started: int | None) -> bool:
    """Whether process ``pid`` of ``host``, started at ``pid_started``, is still running."""
    if pid <= 0 or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    started = process_start(pid)
    return pid_started is None or started is None or started == pid_started


def process_start(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: when the process started; None off Linux."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        # The command name (field 2) may hold spaces and parentheses: split after its last ")".
        return int(text[text.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def running(settings: Settings) -> RestoreIntent | None:
    """The restore running right now in these folders, or None (none, or one that was
    killed). Never raises: the host app calls it on its requests."""
    try:
        intent = read(settings)
    except StorageError:
        return None
    if intent is None or intent.unfinished is not None or not alive(intent):
        return None
    return intent


def interrupted(settings: Settings) -> RestoreIntent | None:
    """The record of a restore that did not end (killed, or ended with work left), or None."""
    intent = read(settings)
    if intent is None:
        return None
    if intent.unfinished is None and alive(intent) and intent.found_at is None:
        return None  # still running
    return intent


#: What the target is compared by: cheap, and enough to tell the two states apart.
SHAPE = "row counts and schema"


def shape_of(path: Path, *, busy_timeout: float = 2.0) -> dict[str, Any]:
    """A database's row counts and schema fingerprint (read-only; raises ``sqlite3.Error``
    or :class:`BackupError`)."""
    with closing(connect(path, busy_timeout=busy_timeout, uri_mode="ro")) as conn:
        conn.execute("BEGIN")
        try:
            return {"row_counts": row_counts(conn), "schema": schema_fingerprint(conn)}
        finally:
            conn.execute("ROLLBACK")


def before_shape(intent: RestoreIntent) -> dict[str, Any] | None:
    """The shape of what the target held before the restore: noted when its safety copy was
    filed, else read from the complete copy itself; None when neither is there."""
    noted = intent.extra.get("before")
    if isinstance(noted, dict):
        return noted
    if intent.safety_copied and intent.safety_copy and Path(intent.safety_copy).is_file():
        try:
            return shape_of(Path(intent.safety_copy))
        except (sqlite3.Error, BackupError) as exc:
            logger.warning("cannot read the safety copy %s: %s", intent.safety_copy, exc)
    return None


def describe_state(settings: Settings, intent: RestoreIntent) -> str:
    """Which state the target of an interrupted restore holds, and how that was found."""
    checked = f"{SHAPE} compared at {local_time(datetime.now(timezone.utc))}"
    target = Path(intent.target)
    if not target.exists():
        return f"{target} does not exist"
    try:
        now = shape_of(target, busy_timeout=settings.busy_timeout)
    except (sqlite3.Error, BackupError) as exc:
        return f"{target} could not be read to tell ({exc})"
    try:
        meta = BackupStore(settings).get(intent.backup_id).metadata
    except BackupError:
        meta = None
    if meta is not None and (
        now["row_counts"] == meta.row_counts and now["schema"] == meta.schema_fingerprint
    ):
        return f"it holds the restored backup {intent.backup_id} ({checked} with that backup's)"
    before = before_shape(intent)
    if before is not None and before == now:
        return f"it holds the data from before the restore ({checked} with its safety copy)"
    compared = "that backup's" + (" and the safety copy's" if before is not None else "")
    return (
        f"it matches neither backup {intent.backup_id} nor the data from before the restore "
        f"({checked} with {compared}): check it before anything else"
    )

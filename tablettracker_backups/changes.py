"""Has the live database changed since a backup? Answered from ``stat()`` alone.

A host app asks this after every write request, so it must be cheap and must never open the
database: closing any descriptor of a file drops every POSIX lock this process holds on it,
which would silently release the host app's own SQLite locks (see
:func:`tablettracker_backups.snapshot.check_sqlite_file`). So the answer comes from the
modification time and size of the database and of the ``-wal`` and ``-journal`` files beside
it: a commit always changes at least one of them.

The one blind spot is the file system's timestamp granularity. Two commits within one clock
tick that leave every size unchanged (an in-place update in rollback-journal mode) look alike.
A signature taken within :data:`SETTLE_NS` of the newest modification is therefore marked
*unsettled*, and each caller says what "not sure" should mean for it: the write trigger treats
it as changed (one snapshot too many, never one too few), the scheduled run as unchanged (its
interval catches anything missed).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

#: Files whose stat makes up the signature, beside the database itself.
SIDE_SUFFIXES = ("-wal", "-journal")
#: A modification this close before the signature was taken may hide a second one in the same
#: clock tick (Linux file times move in ticks of 1-10 ms).
SETTLE_NS = 20_000_000


@dataclass(frozen=True)
class FileStat:
    """The parts of one file's ``stat()`` that a write changes."""

    mtime_ns: int
    size: int


@dataclass(frozen=True)
class SourceSignature:
    """What the database files looked like at one moment, from ``stat()`` only.

    ``wal`` and ``journal`` are None when that file does not exist. ``taken_ns`` is the wall
    clock (ns since the epoch) when the files were looked at.
    """

    database: FileStat
    wal: FileStat | None
    journal: FileStat | None
    taken_ns: int

    @property
    def files(self) -> tuple[FileStat | None, ...]:
        """The compared part: every file's time and size (absent files as None)."""
        return (self.database, self.wal, self.journal)

    @property
    def latest_write_ns(self) -> int:
        """The newest modification time among the files (ns since the epoch)."""
        return max(f.mtime_ns for f in self.files if f is not None)

    @property
    def settled(self) -> bool:
        """False when a same-tick write could have gone unseen (see the module docstring)."""
        return self.taken_ns - self.latest_write_ns >= SETTLE_NS

    @classmethod
    def from_dict(cls, document: object) -> SourceSignature | None:
        """Parse the stored (``asdict``) form; None when malformed (which counts as changed)."""
        if not isinstance(document, dict):
            return None

        def one(value: object) -> FileStat | None:
            if value is None:
                return None
            if not isinstance(value, dict):
                raise ValueError("not an object")
            mtime, size = value.get("mtime_ns"), value.get("size")
            if not isinstance(mtime, int) or not isinstance(size, int) or size < 0:
                raise ValueError("bad numbers")
            return FileStat(mtime, size)

        try:
            database = one(document.get("database"))
            taken = document.get("taken_ns")
            if database is None or not isinstance(taken, int):
                return None
            return cls(database, one(document.get("wal")), one(document.get("journal")), taken)
        except ValueError:
            return None


def _stat(path: Path) -> FileStat | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return FileStat(info.st_mtime_ns, info.st_size)


def source_signature(database: Path) -> SourceSignature:
    """Stat the database and its side files (no file is opened).

    Raises ``FileNotFoundError`` when the database itself is missing, ``OSError`` otherwise.
    """
    taken = time.time_ns()
    main = _stat(database)
    if main is None:
        raise FileNotFoundError(2, "No such file or directory", str(database))
    sides = [_stat(Path(f"{database}{suffix}")) for suffix in SIDE_SUFFIXES]
    return SourceSignature(main, sides[0], sides[1], taken)


def changed_since(
    recorded: SourceSignature | None, current: SourceSignature, *, when_unsure: bool
) -> bool:
    """Whether the database may have changed since ``recorded`` was taken.

    No recorded signature (an older backup, a lost metadata field) counts as changed. An
    unsettled recorded signature that still matches answers ``when_unsure``.
    """
    if recorded is None or recorded.files != current.files:
        return True
    return when_unsure and not recorded.settled

"""Has the live database changed since a backup? Answered from ``stat()`` alone.

A host app asks this after every write request, so it must be cheap and must never open the
database: closing any descriptor of a file drops every POSIX lock this process holds on it,
which would silently release the host app's own SQLite locks (see
:func:`tablettracker_backups.snapshot.check_sqlite_file`). So the answer comes from the
modification time and size of the database and of the ``-wal`` and ``-journal`` files beside
it: a commit always changes at least one of them.

The one blind spot is the file system's timestamp granularity. Linux since 6.13 gives a file
a fresh fine-grained time on the first change after its time was looked at ("multigrain"
timestamps, ext4, xfs, btrfs, tmpfs), so a write after our ``stat()`` always shows. Elsewhere,
two commits within one clock tick that leave every size unchanged (an in-place update in
rollback-journal mode) look alike. :func:`timestamp_resolution` finds out once per folder
with a scratch file (never the database); a signature taken within that resolution of the
newest modification is *unsettled*, and each caller says what "not sure" means for it: the
write trigger treats it as changed (one snapshot too many, never one too few), the scheduled
run as unchanged (its interval catches anything missed).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: Files whose stat makes up the signature, beside the database itself.
SIDE_SUFFIXES = ("-wal", "-journal")
#: Assumed timestamp resolution when it cannot be measured (coarse Linux ticks are 1-10 ms;
#: some network file systems keep whole seconds).
UNKNOWN_RESOLUTION_NS = 2_000_000_000
#: How long the probe waits for a coarse clock to tick before assuming the worst.
PROBE_LIMIT_NS = 2_500_000_000
_resolutions: dict[str, int] = {}
_resolutions_lock = threading.Lock()


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
    #: Two writes closer than this may share a modification time (0: never, once looked at).
    resolution_ns: int = UNKNOWN_RESOLUTION_NS

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
        return self.taken_ns - self.latest_write_ns >= self.resolution_ns

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
            resolution = document.get("resolution_ns", UNKNOWN_RESOLUTION_NS)
            if database is None or not isinstance(taken, int) or not isinstance(resolution, int):
                return None
            wal, journal = one(document.get("wal")), one(document.get("journal"))
            return cls(database, wal, journal, taken, resolution)
        except ValueError:
            return None


def _stat(path: Path) -> FileStat | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return FileStat(info.st_mtime_ns, info.st_size)


def timestamp_resolution(folder: Path) -> int:
    """Nanoseconds within which two writes to a file in ``folder`` may get the same
    modification time even when its time was looked at in between; 0 when they never do.

    Measured once per folder and process with a scratch file (created and removed here; the
    database is never touched). A folder that cannot be written gets the cautious default.
    """
    key = str(folder)
    with _resolutions_lock:
        if key not in _resolutions:
            _resolutions[key] = _probe(folder)
        return _resolutions[key]


def _probe(folder: Path) -> int:
    try:
        fd, name = tempfile.mkstemp(prefix=".ttb-mtime-probe-", dir=folder)
    except OSError:
        return UNKNOWN_RESOLUTION_NS
    try:
        previous = os.fstat(fd).st_mtime_ns
        for _ in range(20):
            os.write(fd, b".")
            current = os.fstat(fd).st_mtime_ns
            if current == previous:
                break
            previous = current
        else:
            return 0  # every write after a look got a new time: fine-grained
        # Coarse: time one tick (writes until the time moves), and allow two.
        started = time.monotonic_ns()
        while os.fstat(fd).st_mtime_ns == previous:
            if time.monotonic_ns() - started > PROBE_LIMIT_NS:
                return UNKNOWN_RESOLUTION_NS
            time.sleep(0.0005)
            os.write(fd, b".")
        return max(2 * (time.monotonic_ns() - started), 1_000_000)
    except OSError:
        return UNKNOWN_RESOLUTION_NS
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)


def source_signature(database: Path) -> SourceSignature:
    """Stat the database and its side files (the database is never opened).

    Raises ``FileNotFoundError`` when the database itself is missing, ``OSError`` otherwise.
    """
    resolution = timestamp_resolution(database.parent)
    taken = time.time_ns()
    main = _stat(database)
    if main is None:
        raise FileNotFoundError(2, "No such file or directory", str(database))
    # An empty side file holds nothing: a read-only connection to a WAL database leaves an
    # empty -wal behind and the next read-write one removes it, with no change to the data.
    # (Every commit in rollback-journal mode writes the database file itself.)
    sides = [_stat(Path(f"{database}{suffix}")) for suffix in SIDE_SUFFIXES]
    sides = [side if side is not None and side.size > 0 else None for side in sides]
    return SourceSignature(main, sides[0], sides[1], taken, resolution)


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

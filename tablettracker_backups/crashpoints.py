"""Named crash points: a test-only switch that makes the process SIGKILL itself at one stage.

The fault tests set ``TTB_CRASH_AT`` to a stage name (``compress``), or to a stage and a count
(``compress:3``, the third time that stage is reached), and run a real command: the process
kills itself with SIGKILL right there, the deterministic version of pulling the plug. The tests
then check what each stage leaves behind. With ``TTB_CRASH_SIGNAL=STOP`` as well, the process
stops (SIGSTOP) there instead: the test changes the world at that exact point (damages a file
just written) and lets it go on with SIGCONT, so a check can be tested alone, the checks before
it already passed. Without the variable (always, outside the tests) :func:`crash_point` costs
one environment look-up and does nothing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from enum import Enum

#: The environment variable that names the stage (and optionally the count) to crash at.
ENV = "TTB_CRASH_AT"
#: ``STOP``: stop the process at that stage (SIGSTOP) instead of killing it.
SIGNAL_ENV = "TTB_CRASH_SIGNAL"


class Stage(str, Enum):
    """Where a process can be made to crash, in the order a backup or restore reaches them."""

    #: The snapshot is half copied into its temporary file (after the first backup-API step).
    SNAPSHOT_COPY = "snapshot-copy"
    #: The stored file is half written (after its first compressed chunk).
    COMPRESS = "compress"
    #: The data file is renamed into the primary folder and fsynced; no metadata yet.
    DATA_RENAME = "data-rename"
    #: A metadata document (the commit marker) is written and fsynced under its temporary
    #: name, not yet renamed into place.
    METADATA_WRITE = "metadata-write"
    #: A pack of new pages (format 2) is written and fsynced under its temporary name.
    PACK_WRITE = "pack-write"
    #: A format 2 snapshot is reading pages straight from the live file (after its first
    #: pages), under its read transaction's SHARED lock.
    RAW_READ = "raw-read"
    #: A node of a snapshot's page index (format 2) is written and fsynced under its
    #: temporary name.
    NODE_WRITE = "node-write"
    #: A check that ran after the backup (verify, the drill, a restore of a snapshot filed
    #: unchecked) is writing its outcome: the state document is fsynced under its temporary
    #: name, not yet renamed into place.
    CHECK_RECORD = "check-record"
    #: The secondary folder's data file is written under its temporary name, not committed.
    SECONDARY_COPY = "secondary-copy"
    #: Prune removed one copy's metadata and not yet its data file.
    PRUNE_DELETE = "prune-delete"
    #: Garbage collection has its plan; not yet planned again to check it, nothing deleted.
    GC_PLANNED = "gc-planned"
    #: Garbage collection deleted one object (``gc-delete:N``: the Nth).
    GC_DELETE = "gc-delete"
    #: Migration stored a version 1 backup's pages in a folder's page store (or copied them
    #: into the secondary folder); its manifest is still version 1.
    MIGRATE_PAGES = "migrate-pages"
    #: Migration built the version 2 twin from its pages and it verified; the manifest is
    #: not replaced yet.
    MIGRATE_VERIFIED = "migrate-verified"
    #: Migration replaced the manifest with the version 2 one; the version 1 data file is
    #: still there.
    MIGRATE_MANIFEST = "migrate-manifest"
    #: Migration deleted the version 1 data file of one copy; the next copy or backup is not
    #: started.
    MIGRATE_DELETED = "migrate-deleted"
    #: One part of a multipart offsite upload has been sent; the upload is not complete.
    OFFSITE_PART_UPLOAD = "offsite-part-upload"
    #: An object of a format 2 offsite upload (pack, node pack, key) is stored
    #: (``offsite-object:N``: the Nth); the manifest is not.
    OFFSITE_OBJECT = "offsite-object"
    #: Every object of a format 2 offsite upload is stored; its manifest is not.
    OFFSITE_MANIFEST = "offsite-manifest"
    #: Offsite retention deleted a format 2 manifest; its objects are not collected yet.
    OFFSITE_PRUNED = "offsite-pruned"
    #: Offsite collection deleted one object (``offsite-gc-delete:N``: the Nth).
    OFFSITE_GC_DELETE = "offsite-gc-delete"
    #: A restore holds the write lock on a live rollback-journal database; nothing copied yet.
    RESTORE_HOLD = "restore-hold"
    #: A restore's safety copy of the live database is half written (under the write lock).
    SAFETY_COPY = "safety-copy"
    #: A restore is half way through writing pages into the target (its transaction is open).
    RESTORE_WRITE = "restore-write"
    #: A restore has written and committed; the check afterwards has not run.
    RESTORE_POST_CHECK = "restore-post-check"
    #: A failed restore is half way through writing the safety copy back.
    RESTORE_ROLLBACK = "restore-rollback"
    #: A restore has released the write lock; its safety copy is not filed as a backup yet.
    RESTORE_RELEASED = "restore-released"
    #: A restore's safety snapshot is filed as a backup; its scratch copy is not removed yet.
    SAFETY_SNAPSHOT = "safety-snapshot"
    #: A listing is writing what it learnt into a folder's catalog: rows written, the
    #: transaction not committed (a hot journal is left).
    CATALOG_WRITE = "catalog-write"
    #: A new catalog is fully written under its temporary name, not yet renamed into place.
    CATALOG_REBUILD = "catalog-rebuild"
    #: A coordinated snapshot has a read transaction open on every database; nothing copied.
    GROUP_SNAPSHOT = "group-snapshot"
    #: One member of a coordinated snapshot is filed as a backup; the next is not yet.
    GROUP_MEMBER_FILED = "group-member-filed"
    #: A group restore holds every member's write lock; no safety copy taken yet.
    GROUP_HOLD = "group-hold"
    #: A group restore has the safety copy of every member (fsynced); nothing written yet.
    GROUP_SAFETY = "group-safety"
    #: A group restore has written and committed one member; the next is not written yet.
    GROUP_MEMBER_WRITTEN = "group-member-written"
    #: A group restore has written every member; the checks have not run.
    GROUP_WRITTEN = "group-written"
    #: A failed group restore has put one member back; the next is not put back yet.
    GROUP_ROLLBACK = "group-rollback"
    #: A group restore has released every lock; its safety copies are not all filed yet.
    GROUP_RELEASED = "group-released"


# Times each stage was reached in this process: "stage:N" crashes at the Nth. Only ever
# touched when the variable is set, i.e. in a test's child process.
_reached: Counter[str] = Counter()


def crash_point(stage: Stage) -> None:
    """SIGKILL (or SIGSTOP, see :data:`SIGNAL_ENV`) this process if ``TTB_CRASH_AT`` names
    ``stage`` (at this count); else nothing."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name != stage.value:
        return
    _reached[name] += 1
    if _reached[name] == int(count or 1):
        stop = os.environ.get(SIGNAL_ENV) == "STOP"
        os.kill(os.getpid(), signal.SIGSTOP if stop else signal.SIGKILL)

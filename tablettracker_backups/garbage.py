"""Garbage collection of format 2's shared objects: packs and node packs no kept backup needs.

A version 2 backup owns nothing of its own (:class:`~.formats.PagesFormat`): its pages and
index nodes are shared with the other backups of its folder, so deleting its manifest leaves
them on disk. Here, in restic's order, they are collected:

1. **Plan** (:func:`plan_folder`): list the folder's packs and node packs first, then read
   every manifest in the folder and walk each version 2 backup's page index; an object no
   index reaches is garbage. A manifest that cannot be read (damaged, a newer format, a
   damaged or missing index node) might need anything: the folder's plan is then *refused*
   and nothing there is deleted until it is fixed (heal, or a person). An object modified
   less than :data:`GRACE` ago is never garbage: a backup writes its packs and nodes before
   its manifest, and must not lose them between the two. (Backups and collection also both
   run under the operation lock; the grace period is the second guard, for a writer the lock
   does not cover, and for a listing that saw an object a manifest then came to name.)
   Packs that are still needed but mostly hold pages no backup needs are counted, not
   repacked (their bytes are in the plan).
2. **Execute** (:func:`collect`): the plan is made again, under the caller's lock, and only
   what both plans call garbage is deleted, one object at a time, last. Deleting only objects
   nothing names, a kill at any point leaves every kept backup whole; the next run finds
   what is left and finishes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import zstandard

from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.errors import BackupError
from tablettracker_backups.formats import PAGES, format_of, page_index
from tablettracker_backups.layout import (
    NODES_PREFIX,
    PACKS_PREFIX,
    PAGES_PREFIX,
    content_sha256,
    manifest_id,
    node_key,
    pack_key,
)
from tablettracker_backups.metadata import BackupMetadata
from tablettracker_backups.pagestore import walk_index
from tablettracker_backups.storage.local import LocalStore

logger = logging.getLogger(__name__)

#: Objects modified less than this long ago are never collected (a backup in progress writes
#: them before its manifest).
GRACE = timedelta(hours=1)
#: A needed pack whose needed pages are less than this share of its pages is "mostly dead".
MOSTLY_DEAD = 0.5
#: Bytes that hold a zstd frame's header (and so its content size).
_FRAME_HEADER = 18


@dataclass(frozen=True)
class FolderPlan:
    """What collection would do in one backup folder."""

    location: str
    #: Version 2 backups whose index was walked.
    snapshots: int = 0
    #: Packs and node packs some backup needs.
    live: int = 0
    #: Garbage: (key, bytes) each, in the order they are deleted.
    garbage: tuple[tuple[str, int], ...] = ()
    #: Objects no backup needs but younger than the grace period (kept this time).
    young: int = 0
    young_bytes: int = 0
    #: Needed packs that are mostly pages no backup needs (not repacked), and their bytes.
    mostly_dead: int = 0
    mostly_dead_bytes: int = 0
    #: Why nothing in this folder may be deleted, when something could not be read.
    refused: str | None = None

    @property
    def freed_bytes(self) -> int:
        """Bytes the garbage holds."""
        return sum(size for _, size in self.garbage)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "location": self.location,
            "snapshots": self.snapshots,
            "live_objects": self.live,
            "garbage_objects": len(self.garbage),
            "garbage_bytes": self.freed_bytes,
            "young_objects": self.young,
            "young_bytes": self.young_bytes,
            "mostly_dead_packs": self.mostly_dead,
            "mostly_dead_bytes": self.mostly_dead_bytes,
            "refused": self.refused,
        }


@dataclass(frozen=True)
class Collection:
    """What collection planned (and, unless a dry run, deleted) in every folder."""

    plans: tuple[FolderPlan, ...]
    dry_run: bool
    #: Keys deleted, with the folder's location: ``primary:pages/packs/ab/...``.
    deleted: tuple[str, ...] = ()
    freed_bytes: int = 0
    problems: tuple[str, ...] = field(default=())

    @property
    def planned_objects(self) -> int:
        """Objects the plans call garbage."""
        return sum(len(p.garbage) for p in self.plans)

    @property
    def planned_bytes(self) -> int:
        """Bytes the plans call garbage."""
        return sum(p.freed_bytes for p in self.plans)

    def describe(self) -> str:
        """One line for a person."""
        if self.dry_run:
            text = f"would free {self.planned_objects} object(s), {self.planned_bytes} bytes"
        else:
            text = f"freed {len(self.deleted)} object(s), {self.freed_bytes} bytes"
        young = sum(p.young for p in self.plans)
        if young:
            text += f"; {young} unneeded object(s) newer than {GRACE} kept for now"
        dead = sum(p.mostly_dead_bytes for p in self.plans)
        if dead:
            text += f"; {dead} bytes in mostly unneeded packs (not repacked)"
        refused = [f"{p.location}: {p.refused}" for p in self.plans if p.refused]
        if refused:
            text += "; collected nothing in " + "; ".join(refused)
        return text

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "dry_run": self.dry_run,
            "would_free_objects": self.planned_objects,
            "would_free_bytes": self.planned_bytes,
            "freed_objects": len(self.deleted),
            "freed_bytes": self.freed_bytes,
            "folders": [p.to_dict() for p in self.plans],
            "problems": list(self.problems),
        }


def _content_objects(store: LocalStore) -> dict[str, tuple[int, datetime | None]]:
    """Every pack and node pack in the store: its size and modification time."""
    found: dict[str, tuple[int, datetime | None]] = {}
    for prefix in (PACKS_PREFIX, NODES_PREFIX):
        for info in store.list(prefix):
            if content_sha256(info.key) is not None:
                found[info.key] = (info.size, info.modified)
    return found


class _Refused(Exception):
    """Something in the folder could not be read: collect nothing there."""


def _live(
    store: LocalStore, folder: Path, dropped: frozenset[str]
) -> tuple[int, set[str], dict[str, dict[int, int]]]:
    """The backups walked, the objects they need, and per needed pack the pages of it they
    need (offset: page size)."""
    live: set[str] = set()
    pages: dict[str, dict[int, int]] = {}
    seen: set[str] = set()  # index nodes walked: a node shared with a backup walked before
    snapshots = 0
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise _Refused(f"cannot list {folder}: {exc}") from exc
    for name in names:
        backup_id = manifest_id(name)
        if backup_id is None or backup_id in dropped:
            continue
        try:
            text = (folder / name).read_bytes()
            metadata = BackupMetadata.from_json(text, expected_id=backup_id)
        except (OSError, BackupError) as exc:
            raise _Refused(f"manifest {name} cannot be read ({exc})") from exc
        try:
            if format_of(metadata) is not PAGES:
                continue  # one file of its own, nothing in the page store
            index = page_index(metadata)

            def need(_hash: bytes, pack: str, offset: int, size: int = index.page_size) -> None:
                pages.setdefault(pack, {})[offset] = size

            node_packs = walk_index(store, index, need, seen=seen)
        except BackupError as exc:
            raise _Refused(f"the page index of backup {backup_id} cannot be read ({exc})") from exc
        live.update(node_key(sha) for sha in node_packs)
        snapshots += 1
    live.update(pack_key(sha) for sha in pages)
    return snapshots, live, pages


def plan_folder(
    location: str,
    folder: Path,
    *,
    dropped: Iterable[str] = (),
    now: datetime | None = None,
    grace: timedelta = GRACE,
) -> FolderPlan:
    """What collection would delete in ``folder`` if the backups ``dropped`` were gone too
    (a dry run of prune names those it would delete). Deletes nothing; never raises for
    what it cannot read (the plan is then refused)."""
    store = LocalStore(folder)
    if not (folder / PAGES_PREFIX).is_dir():
        return FolderPlan(location)
    try:
        # Listed before the manifests are read: an object written after this is not a
        # candidate at all, and one written before its manifest is named by it when read.
        objects = _content_objects(store)
        snapshots, live, pages = _live(store, folder, frozenset(dropped))
    except (_Refused, BackupError) as exc:
        logger.warning("collecting nothing in the %s folder: %s", location, exc)
        return FolderPlan(location, refused=str(exc))
    cutoff = (now or datetime.now(timezone.utc)) - grace
    garbage: list[tuple[str, int]] = []
    young = young_bytes = dead = dead_bytes = 0
    for key, (size, modified) in sorted(objects.items()):
        if key in live:
            sha = content_sha256(key)
            if key.startswith(PACKS_PREFIX) and sha is not None:
                share = _needed_share(store, key, sum(pages[sha].values()))
                if share is not None and share < MOSTLY_DEAD:
                    dead += 1
                    dead_bytes += size
            continue
        if modified is None or modified > cutoff:
            young += 1
            young_bytes += size
            continue
        garbage.append((key, size))
    # Packs first, node packs last (none is needed: the order is for a tidy report).
    garbage.sort(key=lambda item: (not item[0].startswith(PACKS_PREFIX), item[0]))
    return FolderPlan(
        location,
        snapshots=snapshots,
        live=len(live),
        garbage=tuple(garbage),
        young=young,
        young_bytes=young_bytes,
        mostly_dead=dead,
        mostly_dead_bytes=dead_bytes,
    )


def _needed_share(store: LocalStore, key: str, needed: int) -> float | None:
    """The share of a pack's page bytes some backup needs (None when its header cannot say)."""
    try:
        content = zstandard.frame_content_size(store.read(key, length=_FRAME_HEADER))
    except (BackupError, zstandard.ZstdError):
        return None
    return needed / content if content > 0 else None


def collect(
    locations: dict[str, Path],
    *,
    dry_run: bool = False,
    dropped: Iterable[str] = (),
    now: datetime | None = None,
    grace: timedelta = GRACE,
) -> Collection:
    """Plan collection in every folder of ``locations`` that has a page store and, unless
    ``dry_run``, execute it. The caller holds the operation lock.

    Executing plans again and deletes only what both plans call garbage (an object that
    became needed or young in between stays). Raises nothing for a folder it cannot read or
    an object it cannot delete: those are its ``problems`` (the next run tries again).
    """
    dropped = tuple(dropped)
    plans = tuple(
        plan_folder(location, folder, dropped=dropped, now=now, grace=grace)
        for location, folder in locations.items()
        if (folder / PAGES_PREFIX).is_dir()  # a version 1 folder has nothing to collect
    )
    if dry_run:
        return Collection(plans, dry_run=True)
    crash_point(Stage.GC_PLANNED)
    deleted: list[str] = []
    problems: list[str] = []
    freed = 0
    for plan in plans:
        if not plan.garbage:
            continue
        folder = locations[plan.location]
        again = plan_folder(plan.location, folder, now=now, grace=grace)
        still = {key for key, _ in again.garbage}
        store = LocalStore(folder)
        for key, size in plan.garbage:
            if key not in still:
                continue
            try:
                store.delete(key)
            except BackupError as exc:
                problems.append(f"{plan.location}: {exc}")
                continue
            deleted.append(f"{plan.location}:{key}")
            freed += size
            crash_point(Stage.GC_DELETE)
    if deleted:
        logger.info("collected %d unneeded object(s), %d bytes", len(deleted), freed)
    return Collection(plans, False, tuple(deleted), freed, tuple(problems))

"""What each backup takes on disk: the sizes retention weighs and the pages, health and metrics
show.

A version 1 backup is one file: its database's size (logical), its file (stored), and what
deleting it frees are plain. A version 2 backup shares its packs and node packs with the
others in its folder, so three numbers say what it costs:

* ``stored``: every object it needs, shared or not (what a copy of it alone would take);
* ``own``: the objects no other listed backup needs (what deleting it alone frees: the
  bytes only that snapshot holds, the cost retention's recent tier weighs);
* ``added``: what it wrote when it was taken (recorded in its manifest).

Measuring walks each version 2 backup's page index (its node packs) and looks at the size of
each object it reaches. An index is immutable and named by its hash, so what it needs is
remembered per process (the pages measure on every listing they show).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tablettracker_backups.errors import (
    MetadataError,
    ObjectCorrupt,
    ObjectNotFound,
    StorageError,
    VerificationError,
)
from tablettracker_backups.layout import node_key, pack_key
from tablettracker_backups.metadata import PAGES_VERSION, BackupMetadata
from tablettracker_backups.pagestore import PageIndex, walk_index
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.store import BackupInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Footprint:
    """One backup's sizes in bytes (see the module docstring)."""

    #: The database it holds.
    logical: int
    #: Every object it needs (for version 1: its file).
    stored: int
    #: The objects only it needs among the backups measured together (for version 1: its file).
    own: int
    #: What it wrote when it was taken.
    added: int
    #: False when its index could not be walked: ``stored`` and ``own`` are then ``added``.
    measured: bool = True

    def to_dict(self) -> dict[str, object]:
        """The JSON-ready form."""
        return {
            "logical": self.logical,
            "stored": self.stored,
            "own": self.own,
            "added": self.added,
            "measured": self.measured,
        }


def plain(meta: BackupMetadata) -> Footprint:
    """The footprint the manifest alone tells (exact for version 1; for version 2, what it
    added stands for what it holds)."""
    return Footprint(meta.raw_size, meta.stored_size, meta.stored_size, meta.stored_size)


@functools.lru_cache(maxsize=4096)
def _needs(folder: str, index: PageIndex) -> frozenset[str]:
    """Every pack and node pack the index reaches (immutable: remembered)."""
    packs: set[str] = set()
    node_packs = walk_index(LocalStore(Path(folder)), index, lambda _h, pack, _o: packs.add(pack))
    return frozenset({node_key(s) for s in node_packs} | {pack_key(s) for s in packs})


def _objects(folder: Path, meta: BackupMetadata) -> frozenset[str] | None:
    """The objects a version 2 backup needs; None when its index cannot be walked."""
    try:
        return _needs(str(folder), PageIndex.from_dict(meta.extra.get("pages")))
    except (MetadataError, ObjectCorrupt, ObjectNotFound, StorageError, VerificationError):
        logger.info("backup %s: its size could not be measured", meta.id)
        return None


def measure(folder: Path, metas: Iterable[BackupMetadata]) -> dict[str, Footprint]:
    """The footprint of each backup of ``metas`` (by id), its objects looked at in ``folder``;
    ``own`` counts as shared an object any other of ``metas`` needs. Never raises for a
    damaged backup: one whose index cannot be walked gets :func:`plain` sizes, unmeasured."""
    metas = list(metas)
    needs: dict[str, frozenset[str]] = {}
    found: dict[str, Footprint] = {}
    for meta in metas:
        if meta.format_version != PAGES_VERSION:
            found[meta.id] = plain(meta)
            continue
        keys = _objects(folder, meta)
        if keys is None:
            found[meta.id] = dataclasses.replace(plain(meta), measured=False)
        else:
            needs[meta.id] = keys
    users: Counter[str] = Counter(key for keys in needs.values() for key in keys)
    sizes = _sizes(folder, users)
    for meta in metas:
        keys = needs.get(meta.id)
        if keys is None:
            continue
        found[meta.id] = Footprint(
            logical=meta.raw_size,
            stored=sum(sizes.get(key, 0) for key in keys),
            own=sum(sizes.get(key, 0) for key in keys if users[key] == 1),
            added=meta.stored_size,
        )
    return found


def of_listing(folder: Path, infos: Iterable[BackupInfo]) -> dict[str, Footprint]:
    """:func:`measure` of listed backups (those whose metadata is readable), in ``folder``."""
    return measure(folder, [i.metadata for i in infos if i.metadata is not None])


def _sizes(folder: Path, keys: Iterable[str]) -> dict[str, int]:
    store = LocalStore(folder)
    sizes: dict[str, int] = {}
    for key in keys:
        try:
            sizes[key] = store.stat(key).size
        except (ObjectNotFound, StorageError):
            sizes[key] = 0
    return sizes


def folder_bytes(folder: Path, metas: Iterable[BackupMetadata]) -> int:
    """Bytes the backups of ``metas`` take in ``folder`` together (each shared object once,
    manifests aside)."""
    metas = list(metas)
    total = sum(m.stored_size for m in metas if m.format_version != PAGES_VERSION)
    keys: set[str] = set()
    for meta in metas:
        if meta.format_version != PAGES_VERSION:
            continue
        needed = _objects(folder, meta)
        if needed is None:
            total += meta.stored_size
        else:
            keys |= needed
    return total + sum(_sizes(folder, keys).values())

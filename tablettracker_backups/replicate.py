"""The one path by which a backup's objects reach another place: a secondary folder, a
rebuilt copy, the offsite store.

:func:`replicate` copies each object the target does not already hold with the right hash,
checking every byte against the SHA-256 the backup recorded for it (the target's put checks
what it stored), then stores the manifest last, as the commit marker, then the documents that
follow it (the state document). A failure anywhere removes what this call created, manifest
first, so the target never lists a backup it does not wholly hold (a pin kept only in the
state document included); what the target held before is never deleted.

It is format-blind: it moves the objects it is given, whatever their number (version 1 has
one data object; a page store has packs), and asks nothing of their content.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tablettracker_backups.crashpoints import Stage
from tablettracker_backups.errors import ObjectCorrupt, ObjectNotFound
from tablettracker_backups.fsutil import remove_quietly, temp_path
from tablettracker_backups.layout import content_sha256
from tablettracker_backups.storage.base import ByteProgress, ObjectInfo, ObjectStore
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.storage.sealed import SealedStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """One object of a backup to replicate, and the SHA-256 its bytes must have."""

    key: str
    sha256: str
    #: A local file that holds it (a file made for this copy, such as a sealed upload),
    #: instead of reading the source store.
    path: Path | None = None


@dataclass(frozen=True)
class Replicated:
    """What one replication stored: each part as the target reported it."""

    parts: tuple[ObjectInfo, ...]


def _local_root(store: ObjectStore) -> LocalStore | None:
    """The local folder behind ``store``, if it is one (its files are read in place)."""
    return store if isinstance(store, LocalStore) else None


def _put(
    target: ObjectStore,
    key: str,
    source: Path | bytes,
    sha256: str,
    stage: Stage | None,
    progress: ByteProgress | None = None,
) -> ObjectInfo:
    if stage is not None:
        local = _local_root(target)
        if local is not None:
            return local.put(key, source, sha256=sha256, progress=progress, crash_stage=stage)
    return target.put(key, source, sha256=sha256, progress=progress)


def _stat(target: ObjectStore, key: str) -> ObjectInfo | None:
    try:
        return target.stat(key)
    except ObjectNotFound:
        return None


def _held(info: ObjectInfo | None, part: Part) -> bool:
    """Whether the object ``info`` describes already is ``part``, by a hash known without
    reading (an object named by its hash in a later format); never by size alone."""
    if info is None:
        return False
    # An object named by its hash was checked against that hash when it was stored.
    return info.sha256 == part.sha256 or content_sha256(part.key) == part.sha256


def replicate(
    source: ObjectStore | None,
    target: ObjectStore,
    parts: Sequence[Part],
    manifest: tuple[str, bytes],
    *,
    after: Sequence[tuple[str, bytes]] = (),
    scratch: Path,
    part_stage: Stage | None = None,
    manifest_stage: Stage | None = None,
    progress: ByteProgress | None = None,
) -> Replicated:
    """Copy ``parts`` from ``source`` into ``target``, then the ``manifest`` (key, bytes),
    then each ``after`` document.

    A part with a ``path`` is read from that file; otherwise a local source's file is read in
    place and a remote one is downloaded into ``scratch`` first (checked, then removed).
    ``part_stage`` and ``manifest_stage`` name crash points of a local target. Raises
    :class:`ObjectCorrupt` (a :class:`VerificationError`) when a part's bytes do not hash to
    its SHA-256, :class:`PlaintextRefused` when a sealed target refuses one (before any part
    is sent), :class:`ObjectNotFound` when the source lacks one, and what the stores raise.
    """
    if isinstance(target, SealedStore):
        # Every object passes the target's rule before the first is sent.
        for part in parts:
            if part.path is not None:
                target.vet(part.key, part.path)
        target.vet(manifest[0], manifest[1])
    stored: list[ObjectInfo] = []
    # Only what this call created is taken away again: an object the target already held
    # (a copy being repaired, an upload being replaced) is never deleted by a rollback.
    created: list[str] = []
    try:
        for part in parts:
            found = _stat(target, part.key)
            if part.path is None and _held(found, part):
                continue
            stored.append(_copy_part(source, target, part, scratch, part_stage, progress))
            if found is None:
                created.append(part.key)
        key, body = manifest
        found = _stat(target, key)
        _put(target, key, body, _sha256(body), manifest_stage)
        if found is None:
            created.insert(0, key)  # the manifest goes first, so nothing lists half-removed
        for key, body in after:
            _put(target, key, body, _sha256(body), None)
    except BaseException:
        for key in created:
            _delete_quietly(target, key)
        raise
    return Replicated(tuple(stored))


def _copy_part(
    source: ObjectStore | None,
    target: ObjectStore,
    part: Part,
    scratch: Path,
    stage: Stage | None,
    progress: ByteProgress | None,
) -> ObjectInfo:
    if part.path is not None:
        return _put(target, part.key, part.path, part.sha256, stage, progress)
    if source is None:
        raise ValueError(f"no source for {part.key}")  # a caller's bug
    local = _local_root(source)
    if local is not None:
        local.stat(part.key)  # a missing file is the source's ObjectNotFound, not a write error
        return _put(target, part.key, local.path_of(part.key), part.sha256, stage, progress)
    download = temp_path(scratch, part.key.rpartition("/")[2])
    try:
        got = source.get_file(part.key, download)
        if got.sha256 != part.sha256:
            raise ObjectCorrupt(
                f"{part.key} in {source.where} does not hash to the SHA-256 its backup recorded"
            )
        return _put(target, part.key, download, part.sha256, stage, progress)
    finally:
        remove_quietly(download)


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _delete_quietly(target: ObjectStore, key: str) -> None:
    try:
        target.delete(key)
    except Exception as exc:  # the replication's own error is the one to report
        logger.warning("could not remove %s from %s: %s", key, target.where, exc)

"""Keeping the offsite store in step: upload what is missing, apply offsite retention, and read
back a few copies each run. Called by ``run`` under the operation lock, after the local backup.

Nothing here can lose a local backup: failures are reported and recorded (for ``health``), and
the next run retries whatever is still missing.

A sync is a few named steps, the record saved after each: one listing, the prefix's owner
checked against this folder (format 2), reconcile, upload (with ``BACKUPS_ENCRYPT_TO``,
encrypted at upload time, or refused when pyrage is missing: never plaintext instead; format
2 object by object, only what the listing lacks), prune and clean up interrupted uploads,
collect format 2 objects no offsite backup needs (after a prune), read back a few copies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.encryption import (
    Identity,
    encrypt_file,
    encrypted_metadata,
    public_metadata,
    require_pyrage,
    sealed_pages_metadata,
)
from tablettracker_backups.errors import (
    BackupError,
    BackupNotFound,
    EncryptionUnavailable,
    OffsiteError,
    VerificationError,
)
from tablettracker_backups.formats import PAGES, page_index
from tablettracker_backups.fsutil import remove_quietly, temp_path
from tablettracker_backups.keys import record_drill
from tablettracker_backups.layout import AGE_SUFFIX, node_key
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import BackupMetadata
from tablettracker_backups.offsite.client import (
    OffsiteObject,
    OffsiteStore,
    OffsiteVerification,
    UploadResult,
)
from tablettracker_backups.offsite.pages import (
    Listing,
    RemoteCollection,
    check_owner,
    collect_remote,
    local_key,
    push_backup,
    remote_key,
)
from tablettracker_backups.offsite.policy import (
    offsite_plan,
    pending_uploads,
    rolling_verify_choice,
)
from tablettracker_backups.offsite.record import (
    OffsiteCopy,
    OffsiteState,
    read_state,
    record_copy_result,
    write_state,
)
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import CheckDepth, CopyStatus
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.store import BackupInfo, BackupStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    """What one offsite sync did, and what went wrong (never raised)."""

    uploaded: tuple[UploadResult, ...] = ()
    pruned: tuple[str, ...] = ()
    verified: tuple[OffsiteVerification, ...] = ()
    behind: tuple[str, ...] = ()
    errors: tuple[str, ...] = field(default=())
    #: Format 2 objects no offsite backup needed, deleted after a prune, and their bytes.
    collected_objects: int = 0
    collected_bytes: int = 0

    @property
    def ok(self) -> bool:
        """Everything uploaded, and every copy read back passed."""
        return not self.errors and not self.behind and all(v.ok for v in self.verified)

    def warnings(self) -> list[str]:
        """One line per problem, for the run's warnings."""
        lines = [f"offsite: {e}" for e in self.errors]
        lines += [
            f"offsite copy of {v.id} is damaged: {v.error}" for v in self.verified if not v.ok
        ]
        if self.behind:
            lines.append(f"offsite copy is {len(self.behind)} backup(s) behind; retried next run")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (part of ``run --json``)."""
        return {
            "ok": self.ok,
            "uploaded": [
                {"id": u.id, "size": u.size, "check": u.check, "parts": u.parts}
                for u in self.uploaded
            ],
            "pruned": list(self.pruned),
            "verified": [{"id": v.id, "ok": v.ok, "error": v.error} for v in self.verified],
            "collected_objects": self.collected_objects,
            "collected_bytes": self.collected_bytes,
            "behind": list(self.behind),
            "errors": list(self.errors),
        }


def _reconcile(
    offsite: OffsiteStore,
    state: OffsiteState,
    listing: list[OffsiteObject],
    now: datetime,
    objects: Listing | None = None,
) -> OffsiteState:
    """Make the record match a fresh listing: forget copies that are gone, learn ones that
    another machine (or an earlier, unrecorded run) uploaded. A format 2 copy is sound by the
    listing when the node pack of its index's root is listed (its objects are shared; the
    read-back checks them all)."""
    listed = {o.id: o for o in listing}
    state = state.without(k for k in state.copies if k not in listed)
    for obj in listing:
        known = state.copies.get(obj.id)
        if known is not None and obj.complete and obj.data_size in (known.size, None):
            continue
        if not obj.complete:
            kind = known.kind if known else "scheduled"
            state = state.with_copy(
                OffsiteCopy(
                    obj.id, kind, 0, "", obj.uploaded_at, "", now, False, "data object missing"
                )
            )
            continue
        try:
            meta = offsite.read_metadata(obj.id)
        except OffsiteError:
            raise  # the store itself is in trouble: not this copy's fault
        except BackupError as exc:
            state = state.with_copy(
                OffsiteCopy(obj.id, "scheduled", 0, "", obj.uploaded_at, "", now, False, str(exc))
            )
            continue
        if meta.format_version == PAGES.version:
            sound = objects is None or _root_listed(objects, meta)
        else:
            sound = obj.data_size == meta.stored_size
        state = state.with_copy(
            OffsiteCopy(
                id=obj.id,
                kind=meta.kind,
                size=meta.stored_size,
                sha256=meta.content_sha256,
                uploaded_at=obj.uploaded_at,
                upload_check="listed",
                read_back_at=known.read_back_at if known else None,
                ok=sound,
                error=None if sound else _unsound(meta),
                recipients=meta.encryption.recipients if meta.encryption else (),
            )
        )
    return state


def _root_listed(objects: Listing, meta: BackupMetadata) -> bool:
    try:
        root = node_key(page_index(meta).root_pack)
    except BackupError:
        return False
    return objects.holds(remote_key(root, sealed=meta.encryption is not None))


def _unsound(meta: BackupMetadata) -> str:
    if meta.format_version == PAGES.version:
        return "the node pack of its page index is missing"
    return "data object size differs from its metadata"


def _upload_one(
    settings: Settings,
    offsite: OffsiteStore,
    store: BackupStore,
    info: BackupInfo,
    listing: Listing,
) -> tuple[UploadResult, BackupMetadata]:
    """Upload one backup from the first local copy that still matches its metadata; returns
    the upload and the metadata that went offsite with it."""
    problems: list[str] = []
    for copy in info.copies:
        if copy.state != CopyStatus.OK:
            continue
        try:
            meta = store.read_metadata(copy.location, info.id)
            if meta.format_version == PAGES.version:
                folder = LocalStore(store.locations[copy.location])
                return _send_pages(settings, offsite, folder, meta, listing)
            return _send(settings, offsite, store.data_path_for(copy.location, meta), meta)
        except VerificationError as exc:
            problems.append(str(exc))
    raise VerificationError(
        f"no local copy of {info.id} is fit to upload" + (f": {problems[0]}" if problems else "")
    )


def _send(
    settings: Settings, offsite: OffsiteStore, data: Path, meta: BackupMetadata
) -> tuple[UploadResult, BackupMetadata]:
    """Upload one local copy in the form it must have offsite.

    With encryption configured, a plain local copy is encrypted at upload time into a
    temporary file in the primary folder (removed afterwards, or by the next run's cleanup if
    this process is killed), so the local folders keep no second, encrypted copy. An already
    encrypted copy (``BACKUPS_ENCRYPT=all``) goes as it is. Either way only the sealed
    metadata, which names no table, goes with it.
    """
    config = settings.encryption
    if meta.encryption is not None:
        sent = public_metadata(meta)
        return offsite.upload(data, sent), sent
    if config is None:
        return offsite.upload(data, meta), meta
    sealed_tmp = temp_path(settings.backup_dir, f"{meta.id}.upload{AGE_SUFFIX}")
    try:
        # expected_sha256: the file must still be the one that was verified.
        sealed = encrypt_file(data, sealed_tmp, config.recipients, expected_sha256=meta.sha256)
        sent = public_metadata(encrypted_metadata(meta, sealed, config.recipients))
        return offsite.upload(sealed_tmp, sent), sent
    finally:
        remove_quietly(sealed_tmp)


def _send_pages(
    settings: Settings,
    offsite: OffsiteStore,
    folder: LocalStore,
    meta: BackupMetadata,
    listing: Listing,
) -> tuple[UploadResult, BackupMetadata]:
    """Upload one format 2 backup: the objects the store lacks, sealed when encryption is
    configured, then its manifest (the sealed form, which names no table, when sealed)."""
    config = settings.encryption
    sent = meta
    recipients: tuple[str, ...] | None = None
    if config is not None:
        recipients = tuple(config.recipients)
        sent = public_metadata(sealed_pages_metadata(meta, recipients))
    pushed = push_backup(
        offsite.objects,
        folder,
        meta,
        sent.to_json().encode(),
        listing,
        database=settings.database_name,
        recipients=recipients,
    )
    return UploadResult(meta.id, pushed.bytes, pushed.check, False, pushed.objects), sent


@dataclass
class _Sync:
    """One sync in progress: the record as it stands (saved after every step) and what was
    done so far."""

    settings: Settings
    state: OffsiteState
    uploaded: list[UploadResult] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    verified: list[OffsiteVerification] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    collected: RemoteCollection | None = None

    def save(self) -> None:
        write_state(self.settings, self.state)


def sync_offsite(
    settings: Settings,
    *,
    verify_count: int | None = None,
    now: datetime | None = None,
    identity: Identity | None = None,
) -> SyncResult:
    """Upload missing verified backups, prune offsite, read back a few copies.

    Format 2 backups go object by object (only what the store lacks, from one listing), and
    the packs no offsite backup needs any more are collected after a prune (``identity``
    lets collection read sealed index nodes the local folders no longer hold). Before
    anything is sent or deleted, a store whose page store belongs to another backup folder
    is refused (:class:`OffsitePrefixTaken`).

    The caller holds the operation lock. Never raises for offsite trouble: it is returned in
    :attr:`SyncResult.errors` and recorded in the local offsite record for ``health``.
    """
    now = now or datetime.now(timezone.utc)
    store = BackupStore(settings)
    infos = store.list()
    sync = _Sync(settings, read_state(settings))
    try:
        offsite = OffsiteStore.from_settings(settings)
        listing = offsite.listing()
        check_owner(
            offsite.objects,
            listing,
            database=settings.database_name,
            key=local_key(LocalStore(settings.backup_dir)),
            where=offsite.where,
        )
        _list_and_reconcile(sync, offsite, listing, now)
        _upload_pending(sync, offsite, store, infos, listing)
        _prune_and_clean(sync, offsite, infos)
        _collect(sync, offsite, store, identity)
        _read_back(sync, offsite, verify_count, store)
    except BackupError as exc:
        sync.errors.append(str(exc))
        logger.warning("offsite sync failed: %s", exc)
    return _finish(sync, infos)


def _list_and_reconcile(
    sync: _Sync, offsite: OffsiteStore, listing: Listing, now: datetime
) -> None:
    """Step 1: make the record match what the store holds now."""
    backups = offsite.list(listing)
    sync.state = replace(_reconcile(offsite, sync.state, backups, now, listing), listed_at=now)
    sync.save()


def _upload_pending(
    sync: _Sync,
    offsite: OffsiteStore,
    store: BackupStore,
    infos: list[BackupInfo],
    listing: Listing,
) -> None:
    """Step 2: upload what offsite retention keeps and the store lacks, newest first."""
    pending = pending_uploads(sync.settings, infos, sync.state)
    if pending and sync.settings.encryption is not None:
        try:
            require_pyrage()
        except EncryptionUnavailable as exc:
            # Configured but unable to encrypt: upload nothing (never plaintext instead).
            sync.errors.append(f"{len(pending)} backup(s) not uploaded: {exc}")
            return
    for info in pending:
        try:
            result, sent = _upload_one(sync.settings, offsite, store, info, listing)
        except VerificationError as exc:
            sync.errors.append(str(exc))
            continue
        sync.uploaded.append(result)
        sync.state = sync.state.with_copy(
            OffsiteCopy(
                id=info.id,
                kind=info.kind,
                size=result.size,
                sha256=sent.content_sha256,
                uploaded_at=datetime.now(timezone.utc),
                upload_check=result.check,
                recipients=sent.encryption.recipients if sent.encryption else (),
            )
        )
        sync.save()


def _prune_and_clean(sync: _Sync, offsite: OffsiteStore, infos: list[BackupInfo]) -> None:
    """Step 3: apply offsite retention, then remove debris of interrupted uploads."""
    if _prune_plan(sync.settings, infos, sync.state):
        # Set before the first manifest goes: a kill after it still collects next time.
        sync.state = replace(sync.state, collect_pending=True)
        sync.save()
    sync.pruned = _prune(sync.settings, offsite, infos, sync.state)
    sync.state = sync.state.without(sync.pruned)
    for key in offsite.orphan_keys():
        offsite.delete_key(key)
        logger.info("removed interrupted offsite upload %s", key)
    for key in offsite.abort_interrupted_uploads():
        logger.info("aborted the interrupted multipart upload of %s", key)
    sync.save()


def _collect(
    sync: _Sync, offsite: OffsiteStore, store: BackupStore, identity: Identity | None
) -> None:
    """Step 3b: after a prune (this sync's or a killed one's), collect the packs and node
    packs no offsite backup needs; a refusal keeps everything and tries again next sync."""
    if not sync.state.collect_pending:
        return
    done = collect_remote(offsite.objects, list(store.locations.values()), identity=identity)
    if done.refused is not None:
        sync.errors.append(f"collected nothing offsite: {done.refused}")
        return
    sync.collected = done
    # Unneeded objects still within the grace period are collected by a later sync.
    sync.state = replace(sync.state, collect_pending=done.young > 0)
    sync.save()


def _read_back(
    sync: _Sync, offsite: OffsiteStore, verify_count: int | None, store: BackupStore
) -> None:
    """Step 4: read back the copies confirmed longest ago (without the identity, an encrypted
    copy is checked as ciphertext: header, size, SHA-256)."""
    for backup_id in rolling_verify_choice(sync.settings, sync.state)[:verify_count]:
        outcome = offsite.verify(
            backup_id,
            scratch_dir=sync.settings.state_dir,
            local_folders=list(store.locations.values()),
        )
        sync.verified.append(outcome)
        sync.state = record_copy_result(
            sync.state,
            backup_id,
            ok=outcome.ok,
            error=outcome.error,
            at=datetime.now(timezone.utc),
        )
        sync.save()


def _finish(sync: _Sync, infos: list[BackupInfo]) -> SyncResult:
    """Record the sync's outcome for health, and say what it did."""
    behind = tuple(i.id for i in pending_uploads(sync.settings, infos, sync.state))
    finished = datetime.now(timezone.utc)
    errors = sync.errors
    sync.state = replace(
        sync.state,
        last_sync_at=finished,
        last_sync_ok=not errors,
        last_error=errors[0] if errors else None,
        last_error_at=finished if errors else sync.state.last_error_at,
    )
    try:
        sync.save()
    except BackupError as exc:
        errors.append(f"could not save the offsite record: {exc}")
    collected = sync.collected or RemoteCollection()
    return SyncResult(
        tuple(sync.uploaded),
        tuple(sync.pruned),
        tuple(sync.verified),
        behind,
        tuple(errors),
        len(collected.deleted),
        collected.freed_bytes,
    )


def _prune(
    settings: Settings, offsite: OffsiteStore, infos: Iterable[BackupInfo], state: OffsiteState
) -> list[str]:
    """Delete offsite backups offsite retention no longer keeps; never the newest verified."""
    deleted: list[str] = []
    for backup_id in _prune_plan(settings, infos, state):
        offsite.delete(backup_id)
        deleted.append(backup_id)
        logger.info("pruned offsite backup %s", backup_id)
        crash_point(Stage.OFFSITE_PRUNED)
    return deleted


def _prune_plan(settings: Settings, infos: Iterable[BackupInfo], state: OffsiteState) -> list[str]:
    """The offsite backups retention deletes (the recorded ones only)."""
    plan = offsite_plan(settings, infos, state)
    return [d.id for d in plan.delete if d.id in state.copies]


def verify_offsite(
    settings: Settings,
    backup_ids: Iterable[str] | None = None,
    *,
    identity: Identity | None = None,
) -> list[OffsiteVerification]:
    """Download and fully check offsite copies (all of them by default), recording results.

    Encrypted copies are decrypted with ``identity``; without it (or for copies it does not
    open) only their ciphertext is checked. A full check of an encrypted copy that passes is
    recorded as a drill (health reminds when there has been none within the verify period).
    Holds the operation lock, so the offsite record is never updated by this and a ``run`` at
    the same time. Raises :class:`OffsiteError` when the store cannot be reached,
    :class:`BackupNotFound` for an id that is not offsite, :class:`LockedError` when busy.
    """
    with operation_lock(settings):
        return _verify_offsite_locked(settings, backup_ids, identity)


def _verify_offsite_locked(
    settings: Settings, backup_ids: Iterable[str] | None, identity: Identity | None
) -> list[OffsiteVerification]:
    offsite = OffsiteStore.from_settings(settings)
    listing = {o.id: o for o in offsite.list()}
    ids = list(backup_ids) if backup_ids is not None else list(listing)
    for backup_id in ids:
        if backup_id not in listing:
            raise BackupNotFound(f"no backup {backup_id} in the offsite store")
    results: list[OffsiteVerification] = []
    for backup_id in ids:
        outcome = offsite.verify(
            backup_id,
            scratch_dir=settings.state_dir,
            identity=identity,
            local_folders=list(BackupStore(settings).locations.values()),
        )
        results.append(outcome)
        if outcome.ok and outcome.encrypted and outcome.depth == CheckDepth.FULL:
            record_drill(settings, "offsite", backup_id)
        try:
            state = record_copy_result(
                read_state(settings),
                backup_id,
                ok=outcome.ok,
                error=outcome.error,
                at=datetime.now(timezone.utc),
            )
            write_state(settings, state)
        except BackupError as exc:
            logger.warning("could not record the offsite check of %s: %s", backup_id, exc)
    return results

"""Prune: delete the backups retention no longer keeps ("where are old backups deleted").

Retention (:mod:`tablettracker_backups.retention`) decides; this module checks that a sound
backup exists first, then deletes through the store, metadata first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from tablettracker_backups.errors import BackupError
from tablettracker_backups.evidence import protected
from tablettracker_backups.garbage import Collection, collect
from tablettracker_backups.identity import check_folders, claim_folders
from tablettracker_backups.retention import RetentionPlan, plan_for_backups
from tablettracker_backups.states import CopyStatus
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    """What prune decided, and what it actually deleted (nothing on a dry run)."""

    plan: RetentionPlan
    deleted: tuple[str, ...]
    dry_run: bool
    #: The labels of deleted backups that had one (a person named them: the log says so).
    labels: dict[str, str] = field(default_factory=dict)
    #: Format 2's garbage collection after the manifests went (planned only on a dry run);
    #: None where no folder has a page store.
    garbage: Collection | None = None

    def audit_details(self) -> dict[str, object]:
        """What the audit log keeps of a prune: every id deleted, and the labels among them,
        and what garbage collection freed."""
        details: dict[str, object] = {
            "deleted": list(self.deleted),
            "deleted_labels": dict(self.labels),
        }
        if self.garbage is not None:
            details["freed_objects"] = len(self.garbage.deleted)
            details["freed_bytes"] = self.garbage.freed_bytes
        return details

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "dry_run": self.dry_run,
            "deleted": list(self.deleted),
            "would_delete": [d.id for d in self.plan.delete] if self.dry_run else [],
            "kept": [{"id": d.id, "reasons": list(d.reasons)} for d in self.plan.keep],
            "garbage": self.garbage.to_dict() if self.garbage is not None else None,
        }


def plan_for_store(
    store: BackupStore,
    *,
    protect: Iterable[str] = (),
    now: datetime | None = None,
    sound: str | None = None,
) -> RetentionPlan:
    """The retention plan for the backups in ``store`` under its settings, as of ``now``;
    the evidence of every open data-loss warning is kept."""
    if now is None and sound is None and not protect:
        return current_plan(store)
    return plan_for_backups(
        store.settings,
        store.list(),
        protect=protect,
        now=now or datetime.now(timezone.utc),
        sound=sound,
        evidence=protected(store.settings),
    )


def current_plan(store: BackupStore, *, now: datetime | None = None) -> RetentionPlan:
    """The plain retention plan for the backups in ``store``, as of this minute.

    With the store's listing cache, it is computed once per listing and minute (pages ask
    for it on every load; for 1,000 backups it takes milliseconds). Only "now" changes a plan
    for the same backups, and only for backups dated in the future, which a minute cannot
    hide: :data:`~tablettracker_backups.retention.CLOCK_SKEW` is five.
    """
    infos = store.list()
    minute = (now or datetime.now(timezone.utc)).replace(second=0, microsecond=0)
    # The warnings file is small and changes without the listing changing: read each time.
    evidence = protected(store.settings)
    return store.memo(
        ("plan", minute, tuple(sorted(evidence.items()))),
        lambda: plan_for_backups(store.settings, infos, now=minute, evidence=evidence),
    )


def newest_sound_backup(store: BackupStore) -> str | None:
    """The newest good regular backup with a copy whose stored file still matches its SHA-256
    (what "newest good" means, confirmed on disk).

    Listing only compares sizes, so a copy damaged in place (a flipped byte) still looks
    verified; deleting older backups on its strength would leave nothing good. Backups that
    look verified but have no matching copy are fully verified here, which records the
    failure in their metadata so listing, retention and health stop trusting them.
    """
    for info in store.list():
        if not info.good or not info.regular or info.metadata is None:
            continue
        for copy in info.copies:
            if copy.state != CopyStatus.OK:
                continue
            try:
                if store.checksum_matches(info, copy.location):
                    return info.id
            except BackupError:
                continue
        logger.warning("backup %s looked verified but no copy matches its checksum", info.id)
        verify_backup(store, info.id, notify_owner=False)  # the run's health reports it
    return None


def prune(
    store: BackupStore,
    *,
    dry_run: bool = False,
    protect: Iterable[str] = (),
    now: datetime | None = None,
) -> PruneResult:
    """Delete the backups retention does not keep. The caller holds the operation lock.

    Deletes nothing unless some backup is confirmed sound by its checksum first, never the
    evidence of an open data-loss warning, and nothing at all in a folder that belongs to
    another database (:class:`IdentityError`).
    """
    if dry_run:
        check_folders(store.settings)
    else:
        claim_folders(store.settings)
    protect = tuple(protect)
    plan = plan_for_store(store, protect=protect, now=now)
    if dry_run:
        going = [d.id for d in plan.delete]
        garbage = collect(store.locations, dry_run=True, dropped=going)
        return PruneResult(plan, (), dry_run, garbage=garbage if garbage.plans else None)
    deleted: list[str] = []
    labels: dict[str, str] = {}
    if plan.delete:
        sound = newest_sound_backup(store)
        plan = plan_for_store(store, protect=protect, now=now, sound=sound)
        if sound is None:
            logger.warning("no backup has a copy matching its checksum; pruned nothing")
            return PruneResult(plan, (), dry_run)
        labels = {i.id: i.label for i in store.list() if i.label}
        for decision in plan.delete:
            store.delete(decision.id)
            deleted.append(decision.id)
            logger.info("pruned backup %s", decision.id)
    # After the manifests, and on every prune: a run killed half way is finished by the next.
    garbage = collect(store.locations)
    return PruneResult(
        plan,
        tuple(deleted),
        dry_run,
        {i: labels[i] for i in deleted if i in labels},
        garbage=garbage if garbage.plans else None,
    )

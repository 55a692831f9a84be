"""Offsite policy: what should be offsite, what is waiting to go, and how far behind it is.

Derived from the local record (:mod:`.record`) and the local listing, never from the network.
How far behind the offsite copy is: the verified local backups that offsite retention would
keep but that the record does not show as uploaded, and since when (the oldest of them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from tablettracker_backups.metadata import utc_iso
from tablettracker_backups.offsite.record import OffsiteCopy, OffsiteState, read_state
from tablettracker_backups.retention import Candidate, RetentionPlan, plan_retention
from tablettracker_backups.settings import RetentionPolicy, Settings
from tablettracker_backups.states import OffsiteStatus
from tablettracker_backups.store import BackupInfo


def offsite_policy(settings: Settings) -> RetentionPolicy:
    """Offsite retention counts (default: the local ones)."""
    if settings.offsite is not None and settings.offsite.retention is not None:
        return settings.offsite.retention
    return settings.retention


def offsite_plan(
    settings: Settings, infos: Iterable[BackupInfo], state: OffsiteState
) -> RetentionPlan:
    """Retention over every backup that is, or should be, offsite: local verified backups and
    recorded offsite copies. Both the upload queue and offsite pruning follow this plan."""
    candidates: dict[str, Candidate] = {}
    for copy in state.copies.values():
        candidates[copy.id] = Candidate(copy.id, copy.created_at, copy.kind, copy.ok)
    for info in infos:
        if info.pinned and info.id in candidates:
            # Its local copies may all be lost (then the offsite copy is the last one): the
            # pin holds offsite all the same.
            candidates[info.id] = dataclasses.replace(candidates[info.id], pinned=True)
        if not info.verified:
            continue
        candidates[info.id] = Candidate(
            info.id,
            info.created_at,
            info.kind,
            True,
            source_damaged=info.source_damaged,
            pinned=info.pinned,
        )
    return plan_retention(
        candidates.values(), offsite_policy(settings), now=datetime.now(timezone.utc)
    )


def pending_uploads(
    settings: Settings, infos: Iterable[BackupInfo], state: OffsiteState
) -> list[BackupInfo]:
    """Verified local backups to upload (not offsite, or offsite but damaged), newest first.

    Backups offsite retention would delete straight away are not uploaded at all.
    """
    listed = list(infos)
    plan = offsite_plan(settings, listed, state)
    kept = {d.id for d in plan.keep}
    pending = []
    for info in listed:
        copy = state.copies.get(info.id)
        if info.verified and info.id in kept and (copy is None or not _agrees(copy, info)):
            pending.append(info)
    return pending


def _agrees(copy: OffsiteCopy, info: BackupInfo) -> bool:
    """The offsite copy is sound and holds the same backup as the local copies (compared by
    the compressed stream: an encrypted copy differs byte for byte from a plain one)."""
    return copy.ok and (info.metadata is None or copy.sha256 == info.metadata.content_sha256)


def copy_states(
    settings: Settings, infos: Iterable[BackupInfo], state: OffsiteState | None = None
) -> dict[str, OffsiteStatus]:
    """Per local backup id, its offsite copy state: ``ok``, ``pending`` (to be uploaded),
    ``damaged``, ``differs`` (not the same file as the local copies) or ``none`` (not kept
    offsite).

    Empty when no offsite store is configured. Reads only the local record.
    """
    if settings.offsite is None:
        return {}
    state = state if state is not None else read_state(settings)
    listed = list(infos)
    waiting = {i.id for i in pending_uploads(settings, listed, state)}
    states: dict[str, OffsiteStatus] = {}
    for info in listed:
        copy = state.copies.get(info.id)
        if info.id in waiting:
            states[info.id] = OffsiteStatus.PENDING
        elif copy is None:
            states[info.id] = OffsiteStatus.NONE
        elif not copy.ok:
            states[info.id] = OffsiteStatus.DAMAGED
        else:
            states[info.id] = OffsiteStatus.OK if _agrees(copy, info) else OffsiteStatus.DIFFERS
    return states


@dataclass(frozen=True)
class OffsiteLag:
    """How the offsite copy stands, from the local record alone (for health and dashboards)."""

    configured: bool
    target: str = ""
    copies: int = 0
    #: Verified local backups waiting for upload, newest first.
    behind: tuple[str, ...] = ()
    #: When the oldest of them was taken.
    behind_since: datetime | None = None
    newest_offsite_id: str | None = None
    damaged: tuple[str, ...] = ()
    #: Copies not read back within the verify period.
    overdue: tuple[str, ...] = ()
    last_sync_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``health --json``, the status file, the dashboard)."""

        def iso(moment: datetime | None) -> str | None:
            return utc_iso(moment) if moment else None

        return {
            "configured": self.configured,
            "target": self.target,
            "copies": self.copies,
            "behind": len(self.behind),
            "behind_ids": list(self.behind),
            "behind_since": iso(self.behind_since),
            "newest_offsite_id": self.newest_offsite_id,
            "damaged": list(self.damaged),
            "overdue": list(self.overdue),
            "last_sync_at": iso(self.last_sync_at),
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
        }


def offsite_lag(
    settings: Settings,
    infos: Iterable[BackupInfo],
    *,
    now: datetime | None = None,
    state: OffsiteState | None = None,
) -> OffsiteLag:
    """Where the offsite copy stands; ``configured=False`` when there is no offsite store."""
    if settings.offsite is None:
        return OffsiteLag(configured=False)
    now = now or datetime.now(timezone.utc)
    state = state if state is not None else read_state(settings)
    pending = pending_uploads(settings, infos, state)
    period = timedelta(days=settings.offsite.verify_period_days)
    sound = sorted((c for c in state.copies.values() if c.ok), key=lambda c: c.id, reverse=True)
    return OffsiteLag(
        configured=True,
        target=state.target,
        copies=len(state.copies),
        behind=tuple(i.id for i in pending),
        behind_since=min((i.created_at for i in pending), default=None),
        newest_offsite_id=sound[0].id if sound else None,
        damaged=tuple(sorted(c.id for c in state.copies.values() if not c.ok)),
        overdue=tuple(
            sorted(c.id for c in state.copies.values() if c.ok and now - c.checked_at > period)
        ),
        last_sync_at=state.last_sync_at,
        last_error=state.last_error,
        last_error_at=state.last_error_at,
    )


def rolling_verify_count(settings: Settings, copies: int) -> int:
    """How many offsite copies one run reads back, so each is read within the period.

    At least the configured number per run; more when that would not cover every copy within
    ``verify_period_days`` at the configured run interval.
    """
    if settings.offsite is None or copies == 0:
        return 0
    runs_per_period = max(1, settings.offsite.verify_period_days * 86400 // settings.interval)
    return min(copies, max(settings.offsite.verify_per_run, math.ceil(copies / runs_per_period)))


def rolling_verify_choice(settings: Settings, state: OffsiteState) -> list[str]:
    """The copies this run should read back: the ones confirmed longest ago first."""
    ordered = sorted(state.copies.values(), key=lambda c: (c.checked_at, c.id))
    return [c.id for c in ordered[: rolling_verify_count(settings, len(ordered))]]

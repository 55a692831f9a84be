"""Grandfather-father-son retention: which backups to keep, and why.

A pure function of the listed backups and the policy: it reads and deletes nothing. Deleting what
it does not keep is :mod:`tablettracker_backups.prune`.

For each slot kind (hourly, daily, weekly, monthly, yearly) the newest verified backup of each
of the last N calendar slots that have one is kept. One backup may fill several slots and is
stored once. Slots are counted among the backups that exist, not back from "now", so a clock
that jumps backwards or a backup dated in the future never makes good backups look expired.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property

from tablettracker_backups.settings import RetentionPolicy
from tablettracker_backups.store import BackupInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """What retention needs to know about a backup."""

    id: str
    created_at: datetime
    kind: str
    verified: bool


@dataclass(frozen=True)
class Decision:
    """Keep or delete one backup, with the reasons it is kept."""

    id: str
    created_at: datetime
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RetentionPlan:
    """Decisions for every candidate, newest first."""

    decisions: tuple[Decision, ...]

    @property
    def keep(self) -> list[Decision]:
        """Backups that stay."""
        return [d for d in self.decisions if d.keep]

    @property
    def delete(self) -> list[Decision]:
        """Backups that go."""
        return [d for d in self.decisions if not d.keep]

    def reasons(self, backup_id: str) -> tuple[str, ...]:
        """Why ``backup_id`` is kept (empty if it is not)."""
        decision = self._by_id.get(backup_id)
        return decision.reasons if decision is not None else ()

    @cached_property
    def _by_id(self) -> dict[str, Decision]:
        # A page of 20 rows asks 20 times; a scan of 1,000 decisions each time adds up.
        return {d.id: d for d in self.decisions}


def _slot_keys() -> list[tuple[str, Callable[[datetime], str]]]:
    return [
        ("hourly", lambda t: t.strftime("%Y-%m-%d %H:00")),
        ("daily", lambda t: t.strftime("%Y-%m-%d")),
        ("weekly", lambda t: "{:04d}-W{:02d}".format(*t.isocalendar()[:2])),
        ("monthly", lambda t: t.strftime("%Y-%m")),
        ("yearly", lambda t: t.strftime("%Y")),
    ]


#: How far past "now" a backup may be dated before it counts as dated in the future.
CLOCK_SKEW = timedelta(minutes=5)


def plan_retention(
    candidates: Iterable[Candidate],
    policy: RetentionPolicy,
    *,
    protect: Iterable[str] = (),
    now: datetime | None = None,
    sound: str | None = None,
) -> RetentionPlan:
    """Decide which backups to keep under ``policy``.

    Guarantees: the newest backup and the newest verified backup are always kept; unverified
    backups never fill a slot; pre-restore snapshots are kept by their own count; ids in
    ``protect`` (the backup a run just took, whatever its clock said) are always kept, and so
    is ``sound`` (the newest backup whose checksum prune re-checked); backups whose metadata
    is unreadable are never deleted.

    Given ``now``, a backup dated more than :data:`CLOCK_SKEW` after it means the clock is (or
    was) wrong, so the real order of the backups is unknown: such a backup fills no slot (a
    backup stamped 2030 would otherwise take the newest slot of every kind), and nothing at all
    is deleted until the clock is sorted out. Health warns about it meanwhile.
    """
    ordered = sorted(candidates, key=lambda c: (c.created_at, c.id), reverse=True)
    reasons: dict[str, list[str]] = {c.id: [] for c in ordered}
    future: set[str] = set()
    if now is not None:
        future = {c.id for c in ordered if c.created_at > now + CLOCK_SKEW}
    for candidate in ordered:
        if candidate.id in future:
            reasons[candidate.id].append("dated in the future")
    regular = [c for c in ordered if c.kind != "pre-restore" and c.verified and c.id not in future]
    for name, key in _slot_keys():
        limit = getattr(policy, name)
        seen: set[str] = set()
        for candidate in regular:
            if len(seen) >= limit:
                break
            slot = key(candidate.created_at.astimezone(timezone.utc))
            if slot not in seen:
                seen.add(slot)
                reasons[candidate.id].append(f"{name} {slot}")
    safety = [c for c in ordered if c.kind == "pre-restore" and c.verified and c.id not in future]
    for index, candidate in enumerate(safety[: policy.pre_restore]):
        reasons[candidate.id].append(f"pre-restore #{index + 1}")
    if ordered:
        reasons[ordered[0].id].append("newest backup")
    newest_verified = next((c for c in ordered if c.verified), None)
    if newest_verified is not None and newest_verified is not ordered[0]:
        reasons[newest_verified.id].append("newest verified backup")
    for backup_id in protect:
        if backup_id in reasons:
            reasons[backup_id].append("just taken")
    if future:
        for candidate in ordered:
            if candidate.id not in future:
                reasons[candidate.id].append("retention paused: a backup is dated in the future")
    if sound is not None and sound in reasons:
        reasons[sound].append("newest backup with a good checksum")
    for candidate in ordered:
        if candidate.kind == "unknown":
            # Its metadata is unreadable in every copy, but its data may be intact: a person
            # decides (health and list report it); retention never deletes what it can't read.
            reasons[candidate.id].append("unreadable, kept for inspection")
    return RetentionPlan(
        tuple(
            Decision(c.id, c.created_at, bool(reasons[c.id]), tuple(reasons[c.id])) for c in ordered
        )
    )


def candidates_from(infos: Iterable[BackupInfo]) -> list[Candidate]:
    """Retention candidates from listed backups."""
    return [Candidate(i.id, i.created_at, i.kind, i.verified) for i in infos]

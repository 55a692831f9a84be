"""Grandfather-father-son retention: which backups to keep, and why.

A pure function of the listed backups and the policy: it reads and deletes nothing. Deleting what
it does not keep is :mod:`tablettracker_backups.prune`.

For each slot kind (minutely, hourly, daily, weekly, monthly, yearly) the newest good backup
(faithful, of undamaged data) of each of the last N calendar slots that have one is kept;
minutes alone are a window: those of the last N minutes up to the newest backup (the minutes
that have a backup could otherwise reach back days). Pinned backups are kept whatever their
age. One backup may fill several slots and is stored once. Slots are counted among the
backups that exist, not back from "now", so a clock that jumps backwards or a backup dated in
the future never makes good backups look expired.

Time compacts as Litestream's levels do: every snapshot of the last minutes (the recent tier
below), then one a minute, then one an hour, a day, a week.

On top of the slots, the *recent tier* keeps every backup younger than ``BACKUPS_KEEP_RECENT``
(write-triggered snapshots, mostly), as long as what it keeps beyond the slots costs no more
than ``BACKUPS_RECENT_BUDGET``. Over budget it thins: the newest backups stay dense (up to half
the budget), older ones are kept one per time bucket, the narrowest bucket width that fits.
Buckets are aligned to the epoch and their widths are 15 s times a power of two, so a coarser
width keeps a subset of what a finer one kept and thinning never has to change its mind.
What a backup costs is the bytes only it holds: a version 1 backup's file; for a version 2
backup, the packs and node packs no other listed backup needs (what deleting it alone frees,
see :mod:`tablettracker_backups.footprint`), so the budget buys dense snapshots of a database
that changes little. The default budget is ten full copies of the newest backup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property
from itertools import pairwise

from tablettracker_backups.display import format_age
from tablettracker_backups.footprint import Footprint, measure
from tablettracker_backups.metadata import PAGES_VERSION
from tablettracker_backups.settings import RetentionPolicy, Settings
from tablettracker_backups.store import BackupInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """What retention needs to know about a backup."""

    id: str
    created_at: datetime
    kind: str
    #: The copy is faithful (verified).
    verified: bool
    #: What keeping it costs (bytes of one stored copy today); only the recent tier counts it.
    cost: int = 0
    #: The snapshot holds damaged data (the live database failed integrity_check).
    source_damaged: bool = False
    pinned: bool = False
    #: A member of a coordinated snapshot: it stands for its calendar slot (see
    #: :func:`plan_retention`).
    grouped: bool = False
    #: Its full data checks have run (see :mod:`.checks`); false: not known sound yet.
    checked: bool = True
    #: What a whole copy of it takes, shared bytes included (0: its ``cost``): what the
    #: default budget counts in.
    whole: int = 0

    @property
    def good(self) -> bool:
        """Faithful, and of data that was not damaged."""
        return self.verified and not self.source_damaged


@dataclass(frozen=True)
class RecentTier:
    """Keep every backup younger than ``window``, within ``budget`` beyond the calendar slots."""

    window: timedelta
    budget: int


#: The narrowest bucket when the recent tier thins; each wider one is twice the last.
BASE_SPACING = timedelta(seconds=15)


@dataclass(frozen=True)
class RecentSummary:
    """What the recent tier kept, and the restore-point granularity that leaves."""

    window: timedelta
    budget: int
    #: Cost of what only the recent tier keeps, and of keeping everything it could.
    cost: int
    wanted: int
    #: Backups in the window, and how many of them are kept (for any reason).
    total: int
    kept: int
    #: Over budget: everything newer than ``dense_since`` is kept (None: not even the newest
    #: fitted), older ones one per ``spacing`` (None: none of them fitted).
    thinned: bool = False
    dense_since: datetime | None = None
    spacing: timedelta | None = None
    #: The widest gap between two kept restore points in the window (None: fewer than two).
    granularity: timedelta | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (seconds for durations)."""

        def seconds(value: timedelta | None) -> float | None:
            return None if value is None else value.total_seconds()

        return {
            "window": seconds(self.window),
            "budget": self.budget,
            "cost": self.cost,
            "wanted": self.wanted,
            "total": self.total,
            "kept": self.kept,
            "thinned": self.thinned,
            "dense_since": None if self.dense_since is None else self.dense_since.isoformat(),
            "spacing": seconds(self.spacing),
            "granularity": seconds(self.granularity),
        }


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
    #: The recent tier's outcome; None when no tier was asked for.
    recent: RecentSummary | None = None

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
        ("minutely", lambda t: t.strftime("%Y-%m-%d %H:%M")),
        ("hourly", lambda t: t.strftime("%Y-%m-%d %H:00")),
        ("daily", lambda t: t.strftime("%Y-%m-%d")),
        ("weekly", lambda t: "{:04d}-W{:02d}".format(*t.isocalendar()[:2])),
        ("monthly", lambda t: t.strftime("%Y-%m")),
        ("yearly", lambda t: t.strftime("%Y")),
    ]


#: The start of the reason a data-loss warning's evidence is kept for.
EVIDENCE_REASON = "evidence of a data-loss warning"
#: How far past "now" a backup may be dated before it counts as dated in the future.
CLOCK_SKEW = timedelta(minutes=5)


def plan_retention(
    candidates: Iterable[Candidate],
    policy: RetentionPolicy,
    *,
    protect: Iterable[str] = (),
    now: datetime | None = None,
    sound: str | None = None,
    recent: RecentTier | None = None,
    evidence: Mapping[str, str] | None = None,
) -> RetentionPlan:
    """Decide which backups to keep under ``policy`` (and the ``recent`` tier, given ``now``).

    A slot (the hour, day ... of each kind) is filled by its newest good regular backup, or
    by its newest member of a coordinated snapshot when it has one (so that databases under
    the same policy keep the same groups whole).

    Guarantees: the newest backup, the newest verified (faithful) backup of any kind, the
    newest good regular backup (``latest``) and the newest fully checked good regular backup
    are always kept; pinned backups
    are always kept; only good backups fill a slot (a snapshot of damaged data must not push
    good backups out); pre-restore snapshots are kept by their own count; ids in
    ``protect`` (the backup a run just took, whatever its clock said) are always kept, and so
    is ``sound`` (the newest backup whose checksum prune re-checked); backups whose metadata
    is unreadable are never deleted.

    While the newest regular backup holds damaged data (source-damaged), nothing is deleted:
    the older backups are what a recovery may need.

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
    regular = [c for c in ordered if c.kind != "pre-restore" and c.good and c.id not in future]
    for name, key in _slot_keys():
        limit = getattr(policy, name)
        # Minutes are the last ``limit`` minutes up to the newest backup, not the last
        # ``limit`` minutes that have one: scheduled hourly backups would otherwise each
        # fill a minute, and the minutes would keep more of them than the hours do.
        horizon = regular[0].created_at - timedelta(minutes=limit) if regular else None
        chosen: dict[str, Candidate] = {}
        for candidate in regular:
            slot = key(candidate.created_at.astimezone(timezone.utc))
            if slot not in chosen:
                if len(chosen) >= limit:
                    break
                if name == "minutely" and horizon is not None and candidate.created_at <= horizon:
                    break
                chosen[slot] = candidate
            elif candidate.grouped and not chosen[slot].grouped:
                # The newest member of a coordinated snapshot stands for its slot, not a
                # newer lone backup: every database of the site then keeps the same moment
                # under the same policy, and the group stays a whole restore point.
                chosen[slot] = candidate
        for slot, candidate in chosen.items():
            reasons[candidate.id].append(f"{name} {slot}")
    safety = [c for c in ordered if c.kind == "pre-restore" and c.verified and c.id not in future]
    for index, candidate in enumerate(safety[: policy.pre_restore]):
        reasons[candidate.id].append(f"pre-restore #{index + 1}")
    if ordered:
        # Kept whatever its kind; but "newest backup" means a regular one everywhere.
        top = ordered[0]
        reasons[top.id].append(
            "newest safety snapshot" if top.kind == "pre-restore" else "newest backup"
        )
    newest_verified = next((c for c in ordered if c.verified), None)
    if newest_verified is not None and newest_verified is not ordered[0]:
        reasons[newest_verified.id].append("newest verified backup")
    # What ``latest`` restores, even when newer snapshots hold damaged data.
    newest_good = next((c for c in ordered if c.good and c.kind != "pre-restore"), None)
    if newest_good is not None and newest_good not in (ordered[0], newest_verified):
        reasons[newest_good.id].append("newest good backup")
    # What ``latest`` falls back to if the snapshots after it, not checked yet, turn out to
    # hold damaged data.
    newest_checked = next(
        (c for c in ordered if c.good and c.checked and c.kind != "pre-restore"), None
    )
    if newest_checked is not None and not reasons[newest_checked.id]:
        reasons[newest_checked.id].append("newest checked good backup")
    for candidate in ordered:
        if candidate.pinned:
            reasons[candidate.id].append("pinned")
    for backup_id, lost in (evidence or {}).items():
        if backup_id in reasons:
            reasons[backup_id].append(f"{EVIDENCE_REASON}: {lost}")
    for backup_id in protect:
        if backup_id in reasons:
            reasons[backup_id].append("just taken")
    if future:
        for candidate in ordered:
            if candidate.id not in future:
                reasons[candidate.id].append("retention paused: a backup is dated in the future")
    newest_regular = next((c for c in ordered if c.kind != "pre-restore" and c.verified), None)
    if newest_regular is not None and newest_regular.source_damaged:
        # The damage may have begun before integrity_check could see it: while the newest
        # snapshot holds damaged data, every older backup may be the one that is needed.
        for candidate in ordered:
            reasons[candidate.id].append("retention paused: the live database is damaged")
    if sound is not None and sound in reasons:
        reasons[sound].append("newest backup with a good checksum")
    for candidate in ordered:
        if candidate.kind == "unknown":
            # Its metadata is unreadable in every copy, but its data may be intact: a person
            # decides (health and list report it); retention never deletes what it can't read.
            reasons[candidate.id].append("unreadable, kept for inspection")
    summary = None
    if recent is not None and now is not None:
        summary = _recent_tier(regular, reasons, recent, now)
    return RetentionPlan(
        tuple(
            Decision(c.id, c.created_at, bool(reasons[c.id]), tuple(reasons[c.id])) for c in ordered
        ),
        summary,
    )


def _recent_tier(
    regular: list[Candidate], reasons: dict[str, list[str]], tier: RecentTier, now: datetime
) -> RecentSummary:
    """Add the recent tier's reasons (``regular`` is newest first); the caller's slots,
    protections and newest backup are already in ``reasons`` and cost the tier nothing."""
    inside = [c for c in regular if c.created_at > now - tier.window]
    free = [c for c in inside if not reasons[c.id]]
    wanted = sum(c.cost for c in free)
    thinned = wanted > tier.budget
    dense, spread = free, []
    dense_since: datetime | None = None
    spacing: timedelta | None = None
    if thinned:
        dense, spent = [], 0
        for candidate in free:
            if spent + candidate.cost > tier.budget // 2:
                break
            dense.append(candidate)
            spent += candidate.cost
        dense_since = dense[-1].created_at if dense else None
        rest = free[len(dense) :]
        width = BASE_SPACING
        while rest and width <= 2 * tier.window:
            picks = _one_per_bucket(rest, width)
            if sum(c.cost for c in picks) <= tier.budget - spent:
                spread, spacing = picks, width
                break
            width *= 2
    for candidate in dense:
        reasons[candidate.id].append("recent")
    for candidate in spread:
        assert spacing is not None
        reasons[candidate.id].append(f"recent, one per {format_age(spacing)}")
    kept = sorted((c.created_at for c in inside if reasons[c.id]), reverse=True)
    gaps = [newer - older for newer, older in pairwise(kept)]
    return RecentSummary(
        window=tier.window,
        budget=tier.budget,
        cost=sum(c.cost for c in (*dense, *spread)),
        wanted=wanted,
        total=len(inside),
        kept=len(kept),
        thinned=thinned,
        dense_since=dense_since,
        spacing=spacing,
        granularity=max(gaps, default=None),
    )


def _one_per_bucket(candidates: list[Candidate], width: timedelta) -> list[Candidate]:
    """The newest candidate of each epoch-aligned bucket of ``width`` (input newest first)."""
    seen: set[int] = set()
    picks: list[Candidate] = []
    step = width.total_seconds()
    for candidate in candidates:
        bucket = int(candidate.created_at.timestamp() // step)
        if bucket not in seen:
            seen.add(bucket)
            picks.append(candidate)
    return picks


def stored_cost(info: BackupInfo) -> int:
    """What keeping a backup costs today: one stored copy's bytes (a full snapshot)."""
    return info.stored_size


def candidates_from(
    infos: Iterable[BackupInfo],
    cost: Callable[[BackupInfo], int] = stored_cost,
    *,
    footprints: Mapping[str, Footprint] | None = None,
) -> list[Candidate]:
    """Retention candidates from listed backups, each with its ``cost``: the bytes only it
    holds (its footprint's ``own``) when ``footprints`` has it, else ``cost(info)``."""
    found = footprints or {}
    return [
        Candidate(
            i.id,
            i.created_at,
            i.kind,
            i.verified,
            found[i.id].own if i.id in found else cost(i),
            source_damaged=i.source_damaged,
            # A backup written by a newer version is for that version to judge: kept.
            pinned=i.pinned or i.newer,
            grouped=i.metadata is not None and i.metadata.grouped,
            checked=i.checked,
            whole=found[i.id].stored if i.id in found else 0,
        )
        for i in infos
    ]


def recent_tier_for(settings: Settings, candidates: Iterable[Candidate]) -> RecentTier | None:
    """The recent tier the settings ask for; the default budget is 10x what a whole copy
    of the newest verified backup takes. None when ``BACKUPS_KEEP_RECENT`` is 0."""
    if settings.keep_recent <= 0:
        return None
    budget = settings.recent_budget
    if budget is None:
        regular = [c for c in candidates if c.verified and c.kind != "pre-restore"]
        newest = max(regular, key=lambda c: (c.created_at, c.id), default=None)
        budget = 10 * (newest.whole or newest.cost) if newest is not None else 0
    return RecentTier(timedelta(seconds=settings.keep_recent), budget)


def plan_for_backups(
    settings: Settings,
    infos: Iterable[BackupInfo],
    *,
    now: datetime,
    protect: Iterable[str] = (),
    sound: str | None = None,
    evidence: Mapping[str, str] | None = None,
) -> RetentionPlan:
    """The local retention plan for listed backups under ``settings``: slots, recent tier,
    and the ``evidence`` of open data-loss warnings. A version 2 backup's cost is measured in
    the primary folder (its page index read, see :mod:`.footprint`)."""
    infos = list(infos)
    candidates = candidates_from(infos, footprints=_footprints(settings, infos))
    return plan_retention(
        candidates,
        settings.retention,
        protect=protect,
        now=now,
        sound=sound,
        recent=recent_tier_for(settings, candidates),
        evidence=evidence,
    )


def _footprints(settings: Settings, infos: list[BackupInfo]) -> dict[str, Footprint] | None:
    """The measured footprints when the folder holds version 2 backups (None: every cost is
    in the listing already)."""
    metas = [i.metadata for i in infos if i.metadata is not None]
    if not any(m.format_version == PAGES_VERSION for m in metas):
        return None
    return measure(settings.backup_dir, metas)

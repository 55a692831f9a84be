"""Grandfather-father-son retention: property tests (hypothesis) and a realistic history."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tablettracker_backups.retention import (
    CLOCK_SKEW,
    Candidate,
    RecentTier,
    RetentionPlan,
    _slot_keys,
    candidates_from,
    plan_retention,
    recent_tier_for,
)
from tablettracker_backups.settings import RetentionPolicy, Settings, settings_from_mapping
from tablettracker_backups.store import BackupInfo

BASE = datetime(2025, 1, 1, tzinfo=timezone.utc)
NOW = BASE + timedelta(days=700)
KINDS = ("minutely", "hourly", "daily", "weekly", "monthly", "yearly")
SLOT_KEY = dict(_slot_keys())

policies = st.builds(
    RetentionPolicy,
    hourly=st.integers(0, 5),
    daily=st.integers(0, 5),
    weekly=st.integers(0, 4),
    monthly=st.integers(0, 4),
    yearly=st.integers(0, 3),
    pre_restore=st.integers(0, 3),
    minutely=st.integers(0, 90),
)
# Minutes since BASE: collisions within an hour, day, week... are common, as in real life.
entries = st.tuples(
    st.one_of(st.integers(0, 700 * 24 * 60), st.integers(690 * 24 * 60, 700 * 24 * 60)),
    st.sampled_from(["scheduled", "scheduled", "manual", "pre-restore"]),
    st.one_of(st.just(True), st.booleans()),
)
histories = st.lists(entries, max_size=40)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build(items: list[tuple[int, str, bool]]) -> list[Candidate]:
    return [
        Candidate(f"s{index:03d}", BASE + timedelta(minutes=minute), kind, verified)
        for index, (minute, kind, verified) in enumerate(items)
    ]


def deleted(plan: RetentionPlan) -> set[str]:
    return {d.id for d in plan.delete}


def slot_fillers(candidates: list[Candidate], now: datetime | None = None) -> list[Candidate]:
    limit = None if now is None else now + CLOCK_SKEW
    return [
        c
        for c in candidates
        if c.verified and c.kind != "pre-restore" and (limit is None or c.created_at <= limit)
    ]


@FAST
@given(histories, policies)
def test_newest_and_newest_verified_are_always_kept(
    items: list[tuple[int, str, bool]], policy: RetentionPolicy
) -> None:
    candidates = build(items)
    plan = plan_retention(candidates, policy)
    assert len(plan.decisions) == len(candidates)
    if not candidates:
        return
    newest = max(candidates, key=lambda c: (c.created_at, c.id))
    assert newest.id not in deleted(plan)
    verified = [c for c in candidates if c.verified]
    if verified:
        assert max(verified, key=lambda c: (c.created_at, c.id)).id not in deleted(plan)


@FAST
@given(histories, policies, st.lists(st.integers(0, 39), max_size=3))
def test_kept_count_is_bounded(
    items: list[tuple[int, str, bool]], policy: RetentionPolicy, protected: list[int]
) -> None:
    candidates = build(items)
    protect = [f"s{i:03d}" for i in protected]
    plan = plan_retention(candidates, policy, protect=protect)
    slots = (
        policy.minutely
        + policy.hourly
        + policy.daily
        + policy.weekly
        + policy.monthly
        + policy.yearly
    )
    # newest + newest verified + explicitly protected
    assert len(plan.keep) <= slots + policy.pre_restore + 2 + len(set(protect))
    for backup_id in protect:
        if any(c.id == backup_id for c in candidates):
            assert backup_id not in deleted(plan)


@FAST
@given(histories, policies, st.sampled_from([None, NOW, BASE + timedelta(days=300)]))
def test_each_slot_reason_is_the_newest_verified_backup_of_one_of_the_newest_slots(
    items: list[tuple[int, str, bool]], policy: RetentionPolicy, now: datetime | None
) -> None:
    candidates = build(items)
    plan = plan_retention(candidates, policy, now=now)
    by_id = {c.id: c for c in candidates}
    fillers = slot_fillers(candidates, now)
    for kind in KINDS:
        key = SLOT_KEY[kind]
        # Reference: the newest `limit` slots among verified regular backups, newest per slot.
        newest_per_slot: dict[str, Candidate] = {}
        for c in fillers:
            slot = key(c.created_at)
            best = newest_per_slot.get(slot)
            if best is None or (c.created_at, c.id) > (best.created_at, best.id):
                newest_per_slot[slot] = c
        ranked = sorted(
            newest_per_slot.items(), key=lambda kv: (kv[1].created_at, kv[1].id), reverse=True
        )
        ranked = ranked[: getattr(policy, kind)]
        if kind == "minutely" and ranked:
            # Minutes: only those of the last `limit` minutes up to the newest backup.
            horizon = ranked[0][1].created_at - timedelta(minutes=policy.minutely)
            ranked = [(slot, c) for slot, c in ranked if c.created_at > horizon]
        expected = {f"{kind} {slot}": c.id for slot, c in ranked}
        actual = {
            reason: d.id
            for d in plan.decisions
            for reason in d.reasons
            if reason.split(" ")[0] == kind
        }
        assert actual == expected
        for reason, backup_id in actual.items():
            candidate = by_id[backup_id]
            assert candidate.verified and candidate.kind != "pre-restore"
            assert reason == f"{kind} {key(candidate.created_at)}"


@FAST
@given(histories, policies)
def test_unverified_backups_never_fill_a_slot(
    items: list[tuple[int, str, bool]], policy: RetentionPolicy
) -> None:
    candidates = build(items)
    plan = plan_retention(candidates, policy)
    unverified = {c.id for c in candidates if not c.verified}
    for decision in plan.decisions:
        if decision.id in unverified:
            assert set(decision.reasons) <= {"newest backup", "newest safety snapshot"}
    pre = [c for c in candidates if c.kind == "pre-restore" and c.verified]
    kept_pre = [d for d in plan.decisions if any(r.startswith("pre-restore #") for r in d.reasons)]
    assert len(kept_pre) == min(len(pre), policy.pre_restore)


@FAST
@given(
    histories,
    policies,
    st.lists(st.integers(0, 39), max_size=2),
    st.sampled_from([None, NOW, BASE + timedelta(days=300)]),
)
def test_applying_the_plan_then_replanning_deletes_nothing_more(
    items: list[tuple[int, str, bool]],
    policy: RetentionPolicy,
    protected: list[int],
    now: datetime | None,
) -> None:
    candidates = build(items)
    protect = [f"s{i:03d}" for i in protected]
    plan = plan_retention(candidates, policy, protect=protect, now=now)
    survivors = [c for c in candidates if c.id not in deleted(plan)]
    again = plan_retention(survivors, policy, protect=protect, now=now)
    assert deleted(again) == set()
    assert {d.id: d.reasons for d in again.decisions} == {d.id: d.reasons for d in plan.keep}


@FAST
@given(
    histories,
    policies,
    st.sampled_from(["scheduled", "manual", "pre-restore"]),
    st.booleans(),
    st.integers(10, 60 * 24 * 365 * 5),
)
def test_a_backup_dated_in_the_future_deletes_no_more_than_a_sane_clock_would(
    items: list[tuple[int, str, bool]],
    policy: RetentionPolicy,
    kind: str,
    verified: bool,
    ahead_minutes: int,
) -> None:
    """A backup stamped in the future (a fast clock) must not take the newest slot of every
    kind and push the oldest good backups out: the backups deleted are a subset of those a
    correctly dated copy of it would cost. It is itself kept."""
    history = build(items)  # all dated at or before NOW
    sane_x = Candidate("x", NOW, kind, verified)
    wild_x = Candidate("x", NOW + timedelta(minutes=ahead_minutes), kind, verified)
    sane = plan_retention([*history, sane_x], policy, now=NOW)
    wild = plan_retention([*history, wild_x], policy, now=NOW)
    assert deleted(wild) - {"x"} <= deleted(sane) - {"x"}
    assert "x" not in deleted(wild)
    if ahead_minutes * 60 > CLOCK_SKEW.total_seconds():
        assert "dated in the future" in wild.reasons("x")


@FAST
@given(
    histories,
    policies,
    st.sampled_from(["scheduled", "manual", "pre-restore"]),
    st.booleans(),
    st.integers(60, 60 * 24 * 700),
)
def test_a_clock_that_went_backwards_costs_at_most_one_place_per_slot_kind(
    items: list[tuple[int, str, bool]],
    policy: RetentionPolicy,
    kind: str,
    verified: bool,
    back_minutes: int,
) -> None:
    """The clock jumps back; a run takes backup x stamped with the wrong time and prunes.

    What is true: nothing dated after the (wrong) clock is deleted (it is kept as "dated in
    the future"), and x costs the existing verified backups at most one place per slot kind,
    plus the newest-verified protection it may inherit, compared with not taking x at all: no
    cascade. (The stronger "never more than a sane clock" cannot hold when the jump is not
    detectable: a clock 11 months slow puts x in last year's yearly slot, where it displaces
    that year's backup exactly as a backup really taken then would.)
    """
    history = build(items)
    wrong_now = NOW - timedelta(minutes=back_minutes)
    x = Candidate("x", wrong_now, kind, verified)
    without_x = plan_retention(history, policy, now=wrong_now)
    with_x = plan_retention([*history, x], policy, now=wrong_now, protect=["x"])
    for c in history:
        if c.created_at > wrong_now + CLOCK_SKEW:
            assert c.id not in deleted(with_x)
    if any(c.created_at > wrong_now + CLOCK_SKEW for c in history):
        # The jump is detectable: retention pauses until the clock is sorted out.
        assert deleted(with_x) == set()
    good = {c.id for c in history if c.verified}
    extra = (deleted(with_x) - deleted(without_x)) & good
    kinds_in_use = sum(1 for name in KINDS if getattr(policy, name))
    assert len(extra) <= kinds_in_use + (1 if policy.pre_restore else 0) + 1
    assert "x" not in deleted(with_x)


# -- a realistic history -----------------------------------------------------------------------

END = datetime(2026, 11, 25, 10, 17, tzinfo=timezone.utc)


def hourly_history() -> list[Candidate]:
    """Two years of hourly backups at :17, plus one backup each January of 2014-2023."""
    candidates = []
    moment = END - timedelta(days=730)
    index = 0
    while moment <= END:
        candidates.append(Candidate(f"h{index:06d}", moment, "scheduled", True))
        moment += timedelta(hours=1)
        index += 1
    for year in range(2014, 2024):
        moment = datetime(year, 1, 15, 3, 17, tzinfo=timezone.utc)
        candidates.append(Candidate(f"y{year}", moment, "scheduled", True))
    return candidates


def test_two_years_of_hourly_backups_fill_exactly_the_default_slots() -> None:
    candidates = hourly_history()
    plan = plan_retention(candidates, RetentionPolicy(), now=END)
    counts: Counter[str] = Counter(reason.split(" ")[0] for d in plan.keep for reason in d.reasons)
    # Hourly backups: the newest alone is in the last hour's minutes (the one an hour before
    # it is on the window's edge, outside).
    assert counts["minutely"] == 1
    assert counts["hourly"] == 24
    assert counts["daily"] == 30
    assert counts["weekly"] == 12
    assert counts["monthly"] == 24
    assert counts["yearly"] == 10
    at = {c.created_at: c.id for c in candidates}

    def reasons(moment: datetime) -> tuple[str, ...]:
        return plan.reasons(at[moment])

    utc = timezone.utc
    assert reasons(END) == (
        "minutely 2026-11-25 10:17",
        "hourly 2026-11-25 10:00",
        "daily 2026-11-25",
        "weekly 2026-W48",
        "monthly 2026-11",
        "yearly 2026",
        "newest backup",
    )
    assert reasons(datetime(2026, 11, 24, 11, 17, tzinfo=utc)) == ("hourly 2026-11-24 11:00",)
    assert reasons(datetime(2026, 11, 24, 10, 17, tzinfo=utc)) == ()  # the 25th hour back
    assert reasons(datetime(2026, 11, 20, 23, 17, tzinfo=utc)) == ("daily 2026-11-20",)
    assert reasons(datetime(2026, 11, 20, 22, 17, tzinfo=utc)) == ()
    assert reasons(datetime(2026, 11, 22, 23, 17, tzinfo=utc)) == (
        "daily 2026-11-22",
        "weekly 2026-W47",
    )
    assert reasons(datetime(2026, 10, 31, 23, 17, tzinfo=utc)) == (
        "daily 2026-10-31",
        "monthly 2026-10",
    )
    assert reasons(datetime(2026, 10, 26, 23, 17, tzinfo=utc)) == ()  # the 31st day back
    # Weekly: 12 Sundays, the oldest is 2026-W37's (Sunday 13 September).
    assert reasons(datetime(2026, 9, 13, 23, 17, tzinfo=utc)) == ("weekly 2026-W37",)
    assert reasons(datetime(2026, 9, 6, 23, 17, tzinfo=utc)) == ()
    # Monthly: 24 months back to December 2024.
    assert reasons(datetime(2024, 12, 31, 23, 17, tzinfo=utc)) == (
        "monthly 2024-12",
        "yearly 2024",
    )
    assert reasons(datetime(2024, 11, 30, 23, 17, tzinfo=utc)) == ()
    # Yearly: 2026 back to 2017; the January backups of 2014-2016 go.
    assert reasons(datetime(2017, 1, 15, 3, 17, tzinfo=utc)) == ("yearly 2017",)
    assert {"y2014", "y2015", "y2016"} <= deleted(plan)
    kept = {d.id for d in plan.keep}
    assert len(kept) == len(candidates) - len(deleted(plan))
    # Applying the plan and planning again keeps exactly the same set.
    again = plan_retention([c for c in candidates if c.id in kept], RetentionPolicy(), now=END)
    assert not again.delete


def test_pre_restore_snapshots_are_kept_by_their_own_count() -> None:
    history = [
        Candidate(f"p{i}", END - timedelta(days=i), "pre-restore", True) for i in range(1, 15)
    ]
    history.append(Candidate("n", END, "scheduled", True))
    plan = plan_retention(history, RetentionPolicy(pre_restore=3))
    assert plan.reasons("p1") == ("pre-restore #1",)
    assert plan.reasons("p3") == ("pre-restore #3",)
    assert deleted(plan) == {f"p{i}" for i in range(4, 15)}


def test_unverified_newest_is_kept_but_fills_no_slot() -> None:
    good = Candidate("good", END - timedelta(hours=1), "scheduled", True)
    bad = Candidate("bad", END, "scheduled", False)
    plan = plan_retention([good, bad], RetentionPolicy())
    assert plan.reasons("bad") == ("newest backup",)
    assert "hourly 2026-11-25 09:00" in plan.reasons("good")
    assert "daily 2026-11-25" in plan.reasons("good")


def test_a_future_backup_keeps_last_years_backup() -> None:
    """The concrete case the fix is for: a backup stamped 2030 must not evict 2024's."""
    policy = RetentionPolicy(hourly=2, daily=2, weekly=2, monthly=2, yearly=2)
    old = Candidate("old", datetime(2025, 6, 1, tzinfo=timezone.utc), "scheduled", True)
    new = Candidate("new", END, "scheduled", True)
    wild = Candidate("wild", datetime(2030, 1, 1, tzinfo=timezone.utc), "scheduled", True)
    plan = plan_retention([old, new, wild], policy, now=END)
    assert not plan.delete
    assert "yearly 2025" in plan.reasons("old")
    # Without knowing "now", the 2030 backup takes a slot of every kind and evicts 2025's.
    assert "old" in deleted(plan_retention([old, new, wild], policy))
    assert plan.reasons("wild") == ("dated in the future", "newest backup")


# -- each keep rule, alone (every slot count 0), with the reason it gives ---------------------

NOTHING = RetentionPolicy(
    minutely=0, hourly=0, daily=0, weekly=0, monthly=0, yearly=0, pre_restore=0
)


def reasons_of(plan: RetentionPlan) -> dict[str, tuple[str, ...]]:
    return {d.id: d.reasons for d in plan.decisions}


def test_each_rule_keeps_its_backup_with_its_reason() -> None:
    day = timedelta(days=1)
    candidates = [
        Candidate("unverified-newest", NOW, "scheduled", False),
        Candidate("verified", NOW - day, "scheduled", True),
        Candidate("sound", NOW - 2 * day, "scheduled", True),
        Candidate("protected", NOW - 3 * day, "scheduled", True),
        Candidate("lost-metadata", NOW - 4 * day, "unknown", False),
        Candidate("plain-old", NOW - 5 * day, "scheduled", True),
    ]
    plan = plan_retention(candidates, NOTHING, protect=["protected"], now=NOW, sound="sound")
    assert reasons_of(plan) == {
        "unverified-newest": ("newest backup",),
        "verified": ("newest verified backup",),
        "sound": ("newest backup with a good checksum",),
        "protected": ("just taken",),
        "lost-metadata": ("unreadable, kept for inspection",),
        "plain-old": (),
    }
    assert deleted(plan) == {"plain-old"}
    # Decisions carry the candidates' times, newest first.
    assert [d.created_at for d in plan.decisions] == [c.created_at for c in candidates]
    # A sound id that is not among the candidates changes nothing.
    again = plan_retention(candidates, NOTHING, protect=["protected"], now=NOW, sound="gone")
    assert reasons_of(again)["sound"] == ()


def test_a_backup_exactly_at_the_skew_limit_is_not_in_the_future() -> None:
    older = Candidate("older", NOW - timedelta(days=3), "scheduled", True)
    at_limit = Candidate("at-limit", NOW + CLOCK_SKEW, "scheduled", True)
    plan = plan_retention([older, at_limit], NOTHING, now=NOW)
    assert deleted(plan) == {"older"}  # nothing paused: the newest is not dated in the future
    beyond = Candidate("beyond", NOW + CLOCK_SKEW + timedelta(seconds=1), "scheduled", True)
    paused = plan_retention([older, beyond], NOTHING, now=NOW)
    assert deleted(paused) == set()
    assert "retention paused: a backup is dated in the future" in reasons_of(paused)["older"]


def test_slots_are_calendar_slots_in_utc_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    # 23:30 and 00:30 UTC are one day apart in UTC, the same day in New York (UTC-5).
    late = Candidate("late", datetime(2026, 3, 10, 23, 30, tzinfo=timezone.utc), "scheduled", True)
    early = Candidate("early", datetime(2026, 3, 11, 0, 30, tzinfo=timezone.utc), "scheduled", True)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        policy = RetentionPolicy(hourly=0, daily=2, weekly=0, monthly=0, yearly=0, pre_restore=0)
        plan = plan_retention([late, early], policy, now=early.created_at)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert deleted(plan) == set()
    assert reasons_of(plan)["late"] == ("daily 2026-03-10",)


def test_candidates_keep_the_kind_of_their_backup() -> None:
    from tablettracker_backups.retention import candidates_from
    from tablettracker_backups.store import BackupInfo

    info = BackupInfo("20261123T201500Z-3f9a1c", NOW, None, (), verified=True)
    (candidate,) = candidates_from([info])
    assert candidate == Candidate(info.id, NOW, "unknown", True, checked=False)


# -- the recent tier (write-triggered snapshots) ----------------------------------------------


FIVE_MIN = timedelta(minutes=5)
DAY = timedelta(hours=24)


def five_minute_day(cost: int = 10, *, end: datetime = NOW) -> list[Candidate]:
    """24 h of five-minute snapshots (288), newest at ``end``, each costing ``cost``."""
    return [Candidate(f"a{i:03d}", end - i * FIVE_MIN, "auto", True, cost) for i in range(288)]


def recent_ids(plan: RetentionPlan) -> set[str]:
    return {d.id for d in plan.decisions if any(r.startswith("recent") for r in d.reasons)}


def test_recent_tier_keeps_every_snapshot_within_budget() -> None:
    history = five_minute_day()
    # No calendar slots at all: only the tier (and "newest backup") keep anything.
    policy = RetentionPolicy(0, 0, 0, 0, 0, 0, minutely=0)
    plan = plan_retention(history, policy, now=NOW, recent=RecentTier(DAY, 10_000))
    assert not plan.delete
    assert plan.recent is not None and not plan.recent.thinned
    assert plan.recent.kept == 288 and plan.recent.granularity == FIVE_MIN
    # Older than the window: only the calendar slots can keep it.
    old = Candidate("old", NOW - DAY - FIVE_MIN, "auto", True, 10)
    again = plan_retention([*history, old], policy, now=NOW, recent=RecentTier(DAY, 10_000))
    assert [d.id for d in again.delete] == ["old"]


def test_recent_tier_thins_to_its_budget_newest_dense_older_evenly() -> None:
    history = five_minute_day(cost=10)
    policy = RetentionPolicy(0, 0, 0, 0, 0, 0, minutely=0)
    tier = RecentTier(DAY, 500)  # room for 50 of 288 snapshots
    plan = plan_retention(history, policy, now=NOW, recent=tier)
    summary = plan.recent
    assert summary is not None and summary.thinned
    kept = recent_ids(plan)
    assert sum(10 for _ in kept) <= 500 and summary.cost <= 500
    # The newest half of the budget: every snapshot, no gaps.
    newest = [c.id for c in history[1:26]]  # history[0] is kept as "newest backup"
    assert set(newest) <= kept
    # Older ones: one per epoch-aligned bucket of the reported spacing, evenly spread.
    assert summary.spacing is not None and summary.spacing > FIVE_MIN
    older = sorted(
        (c.created_at for c in history if c.id in kept and c.id not in newest), reverse=True
    )
    buckets = [int(t.timestamp() // summary.spacing.total_seconds()) for t in older]
    assert len(buckets) == len(set(buckets)) and len(older) >= 10
    gaps = [a - b for a, b in itertools.pairwise(older)]
    assert max(gaps) <= 2 * summary.spacing
    every = sorted((c.created_at for c in history if c.id in kept or c is history[0]), reverse=True)
    assert summary.granularity == max(a - b for a, b in itertools.pairwise(every))


def test_thinning_never_changes_its_mind() -> None:
    # Re-planning what survived deletes nothing more, and an hour later it only thins
    # further among what it kept (never needs a snapshot it already deleted).
    history = five_minute_day(cost=10)
    policy = RetentionPolicy(0, 0, 0, 0, 0, 0, minutely=0)
    tier = RecentTier(DAY, 500)
    kept = {d.id for d in plan_retention(history, policy, now=NOW, recent=tier).keep}
    survivors = [c for c in history if c.id in kept]
    assert not plan_retention(survivors, policy, now=NOW, recent=tier).delete
    later = NOW + timedelta(hours=1)
    newer = [Candidate(f"n{i:02d}", later - i * FIVE_MIN, "auto", True, 10) for i in range(12)]
    plan = plan_retention([*newer, *survivors], policy, now=later, recent=tier)
    assert sum(10 for d in plan.keep if any(r.startswith("recent") for r in d.reasons)) <= 500


def test_recent_tier_counts_cost_given_per_snapshot() -> None:
    # A later page-level incremental store passes each snapshot's own cost: cheap snapshots
    # all fit where full-size ones would be thinned.
    full = five_minute_day(cost=1000)
    cheap = [Candidate(c.id, c.created_at, c.kind, c.verified, 1) for c in full]
    policy = RetentionPolicy(0, 0, 0, 0, 0, 0, minutely=0)
    tier = RecentTier(DAY, 10_000)
    assert plan_retention(full, policy, now=NOW, recent=tier).recent.thinned  # type: ignore[union-attr]
    assert not plan_retention(cheap, policy, now=NOW, recent=tier).delete


def test_calendar_slots_cost_the_tier_nothing_and_safety_snapshots_stay_outside() -> None:
    history = five_minute_day(cost=10)
    safety = Candidate("safety", NOW - timedelta(minutes=7), "pre-restore", True, 10)
    unverified = Candidate("bad", NOW - timedelta(minutes=3), "auto", False, 10)
    plan = plan_retention(
        [*history, safety, unverified],
        RetentionPolicy(hourly=24, pre_restore=1, minutely=0),
        now=NOW,
        recent=RecentTier(DAY, 300),
    )
    assert "safety" not in recent_ids(plan) and "pre-restore #1" in plan.reasons("safety")
    assert "bad" not in recent_ids(plan)
    hourly = {d.id for d in plan.keep if any(r.startswith("hourly") for r in d.reasons)}
    assert len(hourly) == 24 and not hourly & recent_ids(plan)
    assert plan.recent is not None and plan.recent.cost <= 300


def test_candidates_carry_the_cost_function() -> None:
    info = BackupInfo("20261123T201500Z-3f9a1c", NOW, None, ())
    (candidate,) = candidates_from([info], cost=lambda i: 42)
    assert candidate.cost == 42


def test_default_budget_is_ten_times_the_newest_backups_cost(tmp_path: Path) -> None:
    history = [*five_minute_day(cost=10)[1:], Candidate("new", NOW, "auto", True, 70)]
    settings = settings_from_mapping({"database": tmp_path / "a.db"})
    assert recent_tier_for(settings, history) == RecentTier(timedelta(minutes=10), 700)
    fixed = settings_from_mapping({"database": tmp_path / "a.db", "recent_budget": "1kB"})
    assert recent_tier_for(fixed, history) == RecentTier(timedelta(minutes=10), 1000)
    off = settings_from_mapping({"database": tmp_path / "a.db", "keep_recent": "0"})
    assert recent_tier_for(off, history) is None


# -- the recent tier and the guarantees, worked out by hand ------------------------------------

NOON = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)  # a multiple of every bucket width
NO_SLOTS = RetentionPolicy(
    minutely=0, hourly=0, daily=0, weekly=0, monthly=0, yearly=0, pre_restore=0
)


def ago(seconds: int, name: str, **extra: object) -> Candidate:
    return Candidate(name, NOON - timedelta(seconds=seconds), "auto", True, 10, **extra)  # type: ignore[arg-type]


def kept(plan: RetentionPlan) -> dict[str, tuple[str, ...]]:
    return {d.id: d.reasons for d in plan.keep}


def test_over_budget_the_newest_stay_dense_and_older_ones_thin_out() -> None:
    # Nine snapshots 20 s apart, 10 bytes each; the newest is kept as the newest backup.
    backups = [ago(20 * k, f"c{k}") for k in range(9)]
    plan = plan_retention(
        backups, NO_SLOTS, now=NOON, recent=RecentTier(timedelta(hours=1), budget=60)
    )
    # Half the budget (30) keeps c1-c3 dense (exactly 30: still in); 30 is left for the rest.
    # One per 15 s or 30 s costs 50 or 40; one per 60 s keeps c4 and c7 (20).
    assert kept(plan) == {
        "c0": ("newest backup",),
        "c1": ("recent",),
        "c2": ("recent",),
        "c3": ("recent",),
        "c4": ("recent, one per 60 s",),
        "c7": ("recent, one per 60 s",),
    }
    assert plan.recent is not None
    assert plan.recent.to_dict() == {
        "window": 3600.0,
        "budget": 60,
        "cost": 50,
        "wanted": 80,
        "total": 9,
        "kept": 6,
        "thinned": True,
        "dense_since": (NOON - timedelta(seconds=60)).isoformat(),
        "spacing": 60.0,
        "granularity": 60.0,  # c4 to c7
    }
    assert plan.reasons("c5") == () and plan.reasons("no-such-id") == ()


def test_within_budget_every_recent_backup_stays_and_the_window_is_exclusive() -> None:
    backups = [ago(20 * k, f"c{k}") for k in range(9)] + [ago(3600, "edge")]
    plan = plan_retention(
        backups, NO_SLOTS, now=NOON, recent=RecentTier(timedelta(hours=1), budget=80)
    )
    assert set(kept(plan)) == {f"c{k}" for k in range(9)}  # wanted 80 = budget: all fit
    assert plan.reasons("edge") == ()  # exactly one window old: outside
    assert plan.recent is not None
    assert plan.recent.to_dict() == {
        "window": 3600.0,
        "budget": 80,
        "cost": 80,
        "wanted": 80,
        "total": 9,
        "kept": 9,
        "thinned": False,
        "dense_since": None,
        "spacing": None,
        "granularity": 20.0,
    }


def test_one_byte_over_budget_the_recent_tier_thins() -> None:
    # The same nine snapshots as above (80 bytes wanted): a budget of 79 is just outside.
    backups = [ago(20 * k, f"c{k}") for k in range(9)]
    plan = plan_retention(
        backups, NO_SLOTS, now=NOON, recent=RecentTier(timedelta(hours=1), budget=79)
    )
    assert plan.recent is not None and plan.recent.thinned
    assert plan.recent.wanted == 80 and plan.recent.cost <= 79
    assert len(kept(plan)) < 9


def test_the_widest_bucket_tried_is_twice_the_window() -> None:
    at = {"new": 20, "f1": 30, "r1": 45, "r2": 55, "r3": 65, "r4": 75}  # seconds before noon
    backups = [Candidate(n, NOON - timedelta(seconds=s), "auto", True, 10) for n, s in at.items()]
    now = NOON - timedelta(seconds=20)
    plan = plan_retention(backups, NO_SLOTS, now=now, recent=RecentTier(timedelta(minutes=1), 20))
    # f1 is the dense half (10). r1-r4 straddle a minute boundary, so only a 2-minute bucket
    # (twice the window: the last width tried) holds them all within the 10 bytes left.
    assert kept(plan) == {
        "new": ("newest backup",),
        "f1": ("recent",),
        "r1": ("recent, one per 2 min",),
    }


def test_latest_pins_and_damage_each_keep_what_they_promise() -> None:
    damaged_newest = Candidate("d", NOON, "auto", True, source_damaged=True)
    good = Candidate("g", NOON - timedelta(hours=1), "auto", True)
    pinned = Candidate("p", NOON - timedelta(days=400), "manual", True, pinned=True)
    old = Candidate("o", NOON - timedelta(days=500), "manual", True)
    plan = plan_retention([damaged_newest, good, pinned, old], NO_SLOTS, now=NOON)
    paused = "retention paused: the live database is damaged"
    assert kept(plan) == {
        "d": ("newest backup", paused),
        "g": ("newest good backup", paused),
        "p": ("pinned", paused),
        "o": (paused,),
    }
    # A damaged safety snapshot (pre-restore) is not "the live database": nothing pauses.
    safety = Candidate("s", NOON, "pre-restore", True, source_damaged=True)
    plan = plan_retention([safety, good, pinned, old], NO_SLOTS, now=NOON)
    assert kept(plan) == {
        "s": ("newest safety snapshot",),  # kept all the same; "newest backup" is a regular one
        "g": ("newest good backup",),
        "p": ("pinned",),
    }


def test_the_recent_tier_the_settings_ask_for(tmp_path: Path) -> None:
    def tier(keep_recent: str, candidates: list[Candidate]) -> RecentTier | None:
        values = {"database": tmp_path / "a.db", "dir": tmp_path / "b"}
        return recent_tier_for(
            settings_from_mapping({**values, "keep_recent": keep_recent}), candidates
        )

    assert tier("0", []) is None
    assert tier("1s", []) == RecentTier(timedelta(seconds=1), 0)
    history = [
        Candidate("unverified", NOON, "auto", False, 999),
        Candidate("safety", NOON - timedelta(seconds=1), "pre-restore", True, 888),
        Candidate("newest", NOON - timedelta(seconds=2), "auto", True, 7),
        Candidate("older", NOON - timedelta(seconds=3), "auto", True, 5),
    ]
    assert tier("24h", history) == RecentTier(timedelta(hours=24), 70)  # 10x the newest good


def test_plan_for_backups_passes_on_pins_protection_sound_now_and_the_tier(
    make_settings: Callable[..., Settings],
) -> None:
    from tablettracker_backups.backup import create_backup
    from tablettracker_backups.retention import plan_for_backups
    from tablettracker_backups.store import BackupStore

    settings = make_settings(
        secondary_dir=None,
        keep_hourly=1,
        keep_daily=0,
        keep_weekly=0,
        keep_monthly=0,
        keep_yearly=0,
        keep_recent="1h",
    )
    pinned = create_backup(settings, pinned=True).metadata.id
    protected, checked, newest = (create_backup(settings).metadata.id for _ in range(3))
    infos = BackupStore(settings).list()
    now = datetime.now(timezone.utc)
    plain = plan_for_backups(settings, infos, now=now)
    assert "pinned" in plain.reasons(pinned)
    assert plain.recent is not None and plain.recent.total == 4
    plan = plan_for_backups(settings, infos, now=now, protect=[protected], sound=checked)
    assert "just taken" in plan.reasons(protected)
    assert "newest backup with a good checksum" in plan.reasons(checked)
    # Seen from an hour ago every backup is dated in the future: nothing fills a slot.
    early = plan_for_backups(settings, infos, now=now - timedelta(hours=1))
    assert "dated in the future" in early.reasons(newest)


def test_a_budget_too_small_for_one_snapshot_keeps_none_and_says_so() -> None:
    # 20 bytes each against a budget of 10: not even the dense half (5) holds the first one,
    # and no bucket width, however wide, picks fewer than one. The search stops at twice
    # the window; the tier keeps nothing beyond the newest backup.
    backups = [
        Candidate(f"c{k}", NOON - timedelta(seconds=20 * k), "auto", True, 20) for k in range(4)
    ]
    plan = plan_retention(
        backups, NO_SLOTS, now=NOON, recent=RecentTier(timedelta(hours=1), budget=10)
    )
    assert kept(plan) == {"c0": ("newest backup",)}
    assert plan.recent is not None
    assert plan.recent.to_dict() == {
        "window": 3600.0,
        "budget": 10,
        "cost": 0,
        "wanted": 60,
        "total": 4,
        "kept": 1,
        "thinned": True,
        "dense_since": None,
        "spacing": None,
        "granularity": None,
    }


def test_no_bucket_wider_than_twice_the_window_is_tried() -> None:
    # A 50 s window: widths 15, 30 and 60 s are tried; 120 s is more than twice the window.
    # r1-r3 straddle a minute boundary (NOON + 60 s) but sit in one 2-minute bucket, so only
    # a 120 s bucket would keep one of them within the 10 bytes left after the dense half.
    at = {"new": 90, "f1": 85, "r1": 70, "r2": 55, "r3": 45}  # seconds after noon
    backups = [Candidate(n, NOON + timedelta(seconds=s), "auto", True, 10) for n, s in at.items()]
    now = NOON + timedelta(seconds=90)
    plan = plan_retention(backups, NO_SLOTS, now=now, recent=RecentTier(timedelta(seconds=50), 20))
    assert kept(plan) == {"new": ("newest backup",), "f1": ("recent",)}
    assert plan.recent is not None
    assert (plan.recent.thinned, plan.recent.spacing, plan.recent.cost) == (True, None, 10)


def test_a_safety_snapshot_is_never_the_newest_good_backup() -> None:
    # What `latest` restores is a regular backup: a newer good pre-restore snapshot (the
    # database as it was before a restore) must not take that place, or the regular one
    # loses its only reason to stay.
    damaged = Candidate("d", NOON, "auto", True, source_damaged=True)
    safety = Candidate("s", NOON - timedelta(minutes=1), "pre-restore", True)
    good = Candidate("g", NOON - timedelta(hours=1), "auto", True)
    plan = plan_retention([damaged, safety, good], NO_SLOTS, now=NOON)
    assert "newest good backup" in plan.reasons("g")
    assert "newest good backup" not in plan.reasons("s")


# -- time compacts: every snapshot, then one a minute, then one an hour -----------------------


def test_a_day_of_second_snapshots_compacts_to_minutes_then_hours() -> None:
    """One snapshot a second for two hours, under the default policy and recent window: every
    snapshot of the last ten minutes stays, then one a minute for the hour before the newest,
    then one an hour; nothing else."""
    newest = NOON
    history = [
        Candidate(f"c{n:05d}", newest - timedelta(seconds=n), "auto", True, 10)
        for n in range(2 * 3600)
    ]
    settings = settings_from_mapping({"database": "/x/a.db", "recent_budget": "1GB"})
    plan = plan_retention(
        history,
        settings.retention,
        now=newest,
        recent=recent_tier_for(settings, history),
    )
    kept = {d.id: d.reasons for d in plan.keep}

    def ids(seconds_back: object) -> set[str]:
        return {f"c{n:05d}" for n in seconds_back}  # type: ignore[attr-defined]

    # The minutes: the newest snapshot of each of the 60 minutes up to the newest (12:00,
    # 11:59 ... 11:01; 11:00 would be the 61st).
    minutes = {i for i, reasons in kept.items() if any(r.startswith("minutely") for r in reasons)}
    assert minutes == ids([0]) | ids(range(1, 3541, 60))
    # The recent tier: every other snapshot younger than ten minutes (600 s back is not).
    recent = {i for i, reasons in kept.items() if "recent" in reasons}
    assert recent == ids(range(600)) - minutes
    # The hours: 12:00, 11:00 and 10:00 (its newest, 10:59:59).
    hours = {i for i, reasons in kept.items() if any(r.startswith("hourly") for r in reasons)}
    assert hours == ids([0, 1, 3601])
    assert set(kept) == ids(range(600)) | minutes | hours  # nothing else
    assert len(kept) == 600 + 49 + 1


def test_the_minute_window_edges(tmp_path: Path) -> None:
    """A backup 59 min 59 s before the newest fills its minute; one exactly 60 min before
    does not; ``BACKUPS_KEEP_MINUTELY`` sets the window and 0 turns the minutes off."""
    newest = NOON + timedelta(seconds=59)  # the two candidates fall in different minutes
    inside = Candidate("inside", newest - timedelta(minutes=59, seconds=59), "auto", True)
    edge = Candidate("edge", newest - timedelta(minutes=60), "auto", True)
    top = Candidate("top", newest, "auto", True)
    policy = replace(NO_SLOTS, minutely=60)
    plan = plan_retention([top, inside, edge], policy)
    assert plan.reasons("inside") == ("minutely 2026-11-27 11:01",)
    assert plan.reasons("edge") == ()
    assert settings_from_mapping({"database": tmp_path / "a.db"}).retention.minutely == 60
    none = settings_from_mapping({"database": tmp_path / "a.db", "keep_minutely": 0})
    assert plan_retention([top, inside, edge], replace(policy, minutely=0)).reasons("inside") == ()
    assert none.retention.minutely == 0


def test_offsite_copies_keep_no_minutes_unless_asked(tmp_path: Path) -> None:
    base = {"database": tmp_path / "a.db", "s3_bucket": "b", "keep_minutely": 30}
    settings = settings_from_mapping(base)
    assert settings.retention.minutely == 30
    assert settings.s3 is not None and settings.s3.retention is not None
    assert settings.s3.retention.minutely == 0
    asked = settings_from_mapping({**base, "s3_keep_minutely": 5})
    assert asked.s3 is not None and asked.s3.retention is not None
    assert asked.s3.retention.minutely == 5

"""Which data checks a snapshot has had, whether a new one gets the full checks now, and
recording a check that ran later.

The full checks (``integrity_check``, ``foreign_key_check``, row counts: see
:data:`.metadata.FULL_CHECKS`) read the whole database. A format 2 snapshot of a large
database stores in seconds what they take a minute to read, so they do not run on every
snapshot:

* A scheduled backup (``run``) and a restore's safety snapshot always get them, and so does
  every format 1 backup (its compression reads the whole file anyway, and the checks run
  beside it).
* A manual or write-triggered format 2 snapshot gets them when their cost fits
  ``BACKUPS_CHECK_BUDGET`` seconds: the cost is estimated from the last measured check of this
  database (the newest backup whose checks ran when it was taken), scaled by size. With no
  measurement yet they run (their cost is unknown, and the first one measures it). The
  default, 5 seconds, keeps every snapshot of a database of up to about 100 MB fully checked
  on a small shared host (a 70 MB one takes about 1 s here) while a 1 GB one (40 s) leaves
  them to the scheduled run: a write-triggered snapshot every five minutes must not spend
  a host's CPU allowance re-reading an unchanged gigabyte. It is a setting because only the
  owner knows the host's allowance.
* A snapshot filed without them gets the cheap checks only (every page's hash, the SHA-256 of
  the database, header, page count and schema: :func:`.snapshot.inspect_header`); its
  manifest says so (``findings.checked`` false, ``verification.checks`` naming what ran), and
  it lists as "not checked yet" until a verify, the drill, or a restore, preview or export of
  it has run them. That check's findings go to its state document (:func:`record_check`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from datetime import datetime

from tablettracker_backups.crashpoints import Stage
from tablettracker_backups.errors import BackupError
from tablettracker_backups.metadata import (
    FULL_CHECKS,
    QUICK_CHECKS,
    BackupMetadata,
    BackupState,
    Verification,
)
from tablettracker_backups.snapshot import DatabaseCheck
from tablettracker_backups.store import BackupInfo, BackupStore

logger = logging.getLogger(__name__)

#: Kinds that always get the full checks, whatever they cost.
ALWAYS_CHECKED = ("scheduled", "pre-restore")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Whether a new snapshot gets the full checks, and why (for the log and ``durations``)."""

    full: bool
    reason: str
    #: Seconds the full checks are estimated to take (None: no measurement yet).
    estimate: float | None = None


def estimate_seconds(infos: Iterable[BackupInfo], size: int) -> float | None:
    """Seconds the full checks of a ``size``-byte snapshot should take: the newest backup
    whose full checks ran when it was taken (its ``durations["verify"]``), scaled by size; None
    when no backup of this database measured them."""
    for info in infos:
        meta = info.metadata
        # A snapshot filed unchecked records no "verify" duration (only "header_check").
        seconds = None if meta is None else meta.durations.get("verify")
        if meta is None or seconds is None or meta.raw_size <= 0:
            continue
        return seconds * (size / meta.raw_size)  # equal sizes: exactly the measured time
    return None


def plan_checks(
    kind: str, infos: Iterable[BackupInfo], size: int, *, budget: float, paged: bool
) -> Plan:
    """Whether a new snapshot of ``size`` bytes of ``kind`` gets the full checks now.

    ``paged``: stored in format 2 (format 1 always checks). ``budget``: the seconds the
    checks may take (``BACKUPS_CHECK_BUDGET``); an estimate equal to it still fits.
    """
    if not paged:
        return Plan(True, "format 1 checks every backup")
    if kind in ALWAYS_CHECKED:
        return Plan(True, f"a {kind} backup is always checked")
    estimate = estimate_seconds(infos, size)
    if estimate is None:
        return Plan(True, "no check of this database measured yet")
    if estimate <= budget:
        return Plan(True, f"estimated {estimate:.1f}s, within the {budget:g}s budget", estimate)
    return Plan(
        False, f"estimated {estimate:.1f}s, over the {budget:g}s budget: left for later", estimate
    )


def verification_after(
    meta: BackupMetadata,
    *,
    ok: bool,
    at: datetime,
    check: DatabaseCheck | None,
    error: str | None = None,
) -> Verification:
    """A copy's verification once it was checked at ``at``: sound (``ok``: its bytes hash to
    its manifest) or not, and with ``check`` the full checks it had; a failed check records
    no check as run."""
    previous = meta.verification
    if not ok:
        return dataclasses.replace(
            previous, ok=False, verified_at=at, error=error, checks=previous.with_checks((), at)
        )
    names = QUICK_CHECKS + (FULL_CHECKS if check is not None and check.checked else ())
    return Verification(
        ok=True,
        verified_at=at,
        integrity_check=check.integrity if check is not None else previous.integrity_check,
        foreign_key_violations=(
            check.foreign_key_violations if check is not None else previous.foreign_key_violations
        ),
        error=error,
        checks=previous.with_checks(names, at),
    )


def record_check(
    store: BackupStore,
    location: str,
    meta: BackupMetadata,
    verification: Verification,
    check: DatabaseCheck | None,
) -> BackupMetadata:
    """Write ``location``'s state document: ``verification``, and for a snapshot filed
    unchecked the findings and row counts ``check`` gave. Returns the merged view. A state
    that cannot be written is logged (the snapshot then still lists as not checked)."""
    view = dataclasses.replace(meta, verification=verification)
    if check is not None and check.checked and not meta.checked:
        view = dataclasses.replace(
            view, findings=check.findings(), row_counts=dict(check.row_counts)
        )
    try:
        store.write_state(location, BackupState.of(view), crash_stage=Stage.CHECK_RECORD)
    except BackupError as exc:
        logger.warning("could not record the check of %s: %s", meta.id, exc)
    return view

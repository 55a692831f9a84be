"""Restore to a moment: which backup holds the state of the database as of a given time.

A restore point is a good backup (:attr:`BackupInfo.good`). Pre-restore safety snapshots count
too: each is the state just before a restore, which is exactly what "as of" that moment means.
The chosen point is the newest one taken at or before the moment; before the oldest point, or
in the future, there is none, and the error names the nearest ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from tablettracker_backups.display import local_time
from tablettracker_backups.errors import BackupNotFound, InvalidTime
from tablettracker_backups.retention import CLOCK_SKEW
from tablettracker_backups.store import BackupInfo

#: ``2026-11-23T20:15``, ``2026-11-23 20:15:30``, ``...Z``, ``...+01:00``: what is accepted.
_ISO = re.compile(
    r"\A\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:?\d{2})?\Z",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Moment:
    """A moment asked for: when (UTC), and whether the text named its time zone."""

    at: datetime
    zone_given: bool

    def describe(self) -> str:
        """The moment in local time, saying when the zone was assumed."""
        shown = local_time(self.at)
        return shown if self.zone_given else f"{shown} (no time zone given: read as local time)"


def parse_moment(text: str) -> Moment:
    """ISO 8601 date and time; without a zone it is the machine's local time.

    Raises :class:`InvalidTime` with a one-line message.
    """
    cleaned = text.strip()
    if not _ISO.match(cleaned):
        raise InvalidTime(
            f"not an ISO 8601 time: {text[:60]!r} (try 2026-11-23T20:15 or 2026-11-23T19:15Z)"
        )
    if cleaned[-1:] in ("Z", "z"):
        cleaned = cleaned[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        # Python's own text ("offset must be a timedelta strictly between ...") is no help.
        raise InvalidTime(
            f"not a valid time: {text[:60]!r} (a date, hour, minute or time zone is out of range)"
        ) from None
    zone_given = moment.tzinfo is not None
    try:
        # A naive datetime's astimezone() reads it as local time.
        return Moment(moment.astimezone(timezone.utc), zone_given)
    except (OverflowError, OSError, ValueError):
        raise InvalidTime(f"time out of range: {text[:60]!r}") from None


def restore_points(infos: Iterable[BackupInfo]) -> list[BackupInfo]:
    """Every good backup, oldest first."""
    return sorted((i for i in infos if i.good), key=lambda i: (i.created_at, i.id))


def _name(info: BackupInfo) -> str:
    return f"{info.id} ({local_time(info.created_at)})"


def point_at(infos: Iterable[BackupInfo], at: datetime, *, now: datetime) -> BackupInfo:
    """The newest restore point taken at or before ``at``.

    Raises :class:`BackupNotFound` when there is none (no good backup, a moment before the
    oldest, or one in the future), naming the nearest restore points.
    """
    points = restore_points(infos)
    if not points:
        raise BackupNotFound("there is no good backup to restore yet")
    if at > now + CLOCK_SKEW:
        raise BackupNotFound(
            f"{local_time(at)} is in the future; the newest restore point is {_name(points[-1])}"
        )
    before = [p for p in points if p.created_at <= at]
    if not before:
        nearest = ", then ".join(_name(p) for p in points[:2])
        raise BackupNotFound(
            f"no restore point at or before {local_time(at)}; the oldest are {nearest}"
        )
    return before[-1]


@dataclass(frozen=True)
class Around:
    """The restore points around a moment, for a person choosing one."""

    before: tuple[BackupInfo, ...]
    chosen: BackupInfo | None
    after: tuple[BackupInfo, ...]


def points_around(infos: Iterable[BackupInfo], at: datetime, *, count: int = 3) -> Around:
    """Up to ``count`` points before the chosen one (the newest at or before ``at``) and after.

    With nothing at or before ``at`` there is no chosen point, only the oldest ones after it.
    """
    points = restore_points(infos)
    index = sum(1 for p in points if p.created_at <= at) - 1
    if index < 0:
        return Around((), None, tuple(points[:count]))
    return Around(
        tuple(points[max(0, index - count) : index]),
        points[index],
        tuple(points[index + 1 : index + 1 + count]),
    )

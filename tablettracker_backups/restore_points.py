"""Restore to a moment: which backup holds the state of the database as of a given time.

A restore point is a good backup (:attr:`BackupInfo.good`), dated by the moment its read
transaction began. Pre-restore safety snapshots count too: each is the state just before a
restore. A restore is an event on the timeline as well: from the moment backup X was restored
until the next backup, the state is X's. The chosen point is the newest one at or before the
moment; before the oldest point, or in the future, there is none, and the error names the
nearest ones.

A time covers the whole unit it is written to: ``20:15:30`` is every moment of that second
(``list`` prints whole seconds, and a backup taken at 20:15:30.4 must be what typing the
printed time back gives), ``20:15`` the whole minute (what the pages' picker sends), a bare
date the whole day.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from tablettracker_backups.audit import append_jsonl
from tablettracker_backups.display import local_time
from tablettracker_backups.errors import BackupNotFound, InvalidTime
from tablettracker_backups.fsutil import ensure_private_dir
from tablettracker_backups.metadata import parse_utc, utc_iso
from tablettracker_backups.retention import CLOCK_SKEW
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupInfo

#: ``2026-11-23T20:15``, ``2026-11-23 20:15:30``, ``...Z``, ``...+01:00``, and what ``list``
#: and the pages print (``2026-11-23 20:15:30 CET``): what is accepted.
_ISO = re.compile(
    r"\A(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[T ](?P<hm>\d{2}:\d{2})(?::(?P<s>\d{2})(?P<frac>\.\d{1,6})?)?)?"
    r"\s*(?:(?P<offset>Z|[+-]\d{2}:?\d{2})|(?P<name>[A-Za-z]{1,5}))?\Z",
    re.IGNORECASE,
)
#: The restore timeline, one JSON object a line, in the state folder.
RESTORE_LOG = "restores.jsonl"


@dataclass(frozen=True)
class Moment:
    """A moment asked for: when (UTC), and whether the text named its time zone."""

    at: datetime
    zone_given: bool
    #: Where the unit written begins (``at`` is where it ends); None: the same as ``at``.
    start: datetime | None = None

    def describe(self) -> str:
        """The moment in local time, saying when the zone was assumed."""
        shown = local_time(self.start or self.at)
        if self.start is not None and self.at - self.start >= timedelta(seconds=1):
            shown += f" to {local_time(self.at)}"
        return shown if self.zone_given else f"{shown} (no time zone given: read as local time)"


def parse_moment(text: str) -> Moment:
    """ISO 8601 date and time (or a time as ``list`` prints it); without a zone it is the
    machine's local time. The moment returned is the *end* of the unit written (see the
    module's docstring).

    Raises :class:`InvalidTime` with a one-line message.
    """
    cleaned = text.strip()
    match = _ISO.match(cleaned)
    if not match:
        raise InvalidTime(
            f"not an ISO 8601 time: {text[:60]!r} (try 2026-11-23T20:15 or 2026-11-23T19:15Z)"
        )
    base = match["date"] + (f"T{match['hm']}" if match["hm"] else "")
    if match["s"]:
        base += f":{match['s']}" + (match["frac"] or "")
    try:
        moment = datetime.fromisoformat(base)
    except ValueError as exc:
        raise InvalidTime(f"not a valid time: {text[:60]!r} ({exc})") from exc
    zone = _zone(match["offset"], match["name"], text)
    if match["frac"]:
        unit = timedelta(0)
    elif match["s"]:
        unit = timedelta(seconds=1)
    elif match["hm"]:
        unit = timedelta(minutes=1)
    else:
        unit = timedelta(days=1)
    try:
        if isinstance(zone, timezone):
            at = moment.replace(tzinfo=zone).astimezone(timezone.utc)
        else:
            # A naive datetime's astimezone() reads it as local time; a zone name such as
            # CEST picks which of the two readings of an hour the clocks went back over.
            at = _local(moment, zone)
        end = at + unit - timedelta(microseconds=1) if unit else at
    except (OverflowError, OSError, ValueError) as exc:
        raise InvalidTime(f"time out of range: {text[:60]!r}") from exc
    # "Today" or "this minute" covers only what has happened so far.
    end = min(end, max(at, datetime.now(timezone.utc)))
    return Moment(end, zone is not None, start=at)


def _zone(offset: str | None, name: str | None, text: str) -> timezone | str | None:
    """A fixed offset, a local zone's name (kept as text), or None (no zone: local time)."""
    if offset is not None:
        if offset.upper() == "Z":
            return timezone.utc
        digits = offset[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            raise InvalidTime(
                f"invalid time zone offset {offset} in {text[:60]!r}: it must lie between "
                "-23:59 and +23:59"
            )
        sign = -1 if offset[0] == "-" else 1
        return timezone(sign * timedelta(hours=hours, minutes=minutes))
    if name is None:
        return None
    if name.upper() in ("UTC", "GMT", "Z"):
        return timezone.utc
    if name in time.tzname:
        return name
    raise InvalidTime(
        f"unknown time zone {name!r} in {text[:60]!r}: give an offset such as +01:00, or "
        f"UTC, or this machine's zone ({' or '.join(sorted(set(time.tzname)))})"
    )


def _local(moment: datetime, name: str | None) -> datetime:
    """``moment`` read as the machine's local time, in UTC."""
    readings = [moment.replace(fold=fold).astimezone() for fold in (0, 1)]
    if name is not None:
        for reading in readings:
            if reading.tzname() == name:
                return reading.astimezone(timezone.utc)
    return readings[0].astimezone(timezone.utc)


@dataclass(frozen=True)
class RestoreEvent:
    """Backup ``backup_id`` was restored into the live database at ``at``."""

    at: datetime
    backup_id: str
    safety_snapshot_id: str | None = None


def record_restore(settings: Settings, event: RestoreEvent) -> None:
    """Put a restore of the live database on the timeline; raises :class:`StorageError`."""
    ensure_private_dir(settings.state_dir)
    append_jsonl(
        settings.state_dir / RESTORE_LOG,
        {
            "at": utc_iso(event.at),
            "backup_id": event.backup_id,
            "safety_snapshot_id": event.safety_snapshot_id,
        },
    )


def restore_events(settings: Settings) -> list[RestoreEvent]:
    """The restores of the live database, oldest first; unreadable lines are skipped."""
    try:
        lines = (settings.state_dir / RESTORE_LOG).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            raw = json.loads(line)
            safety = raw.get("safety_snapshot_id")
            events.append(
                RestoreEvent(
                    parse_utc(raw["at"], "at"),
                    str(raw["backup_id"]),
                    None if safety is None else str(safety),
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return sorted(events, key=lambda e: e.at)


def restore_points(infos: Iterable[BackupInfo]) -> list[BackupInfo]:
    """Every good backup, oldest first."""
    return sorted((i for i in infos if i.good), key=lambda i: (i.created_at, i.id))


def _name(info: BackupInfo) -> str:
    return f"{info.id} ({local_time(info.created_at)})"


def point_at(
    infos: Iterable[BackupInfo],
    at: datetime,
    *,
    now: datetime,
    events: Iterable[RestoreEvent] = (),
) -> BackupInfo:
    """The restore point holding the state as of ``at``: the newest good backup taken at or
    before it, unless a restore came later (and still at or before it), in which case the
    backup that restore brought back.

    Raises :class:`BackupNotFound` when there is none (no good backup, a moment before the
    oldest, one in the future, or a restored backup deleted since), naming the nearest points.
    """
    infos = list(infos)
    points = restore_points(infos)
    if not points:
        raise BackupNotFound("there is no good backup to restore yet")
    if at > now + CLOCK_SKEW:
        raise BackupNotFound(
            f"{local_time(at)} is in the future; the newest restore point is {_name(points[-1])}"
        )
    before = [p for p in points if p.created_at <= at]
    restored = [e for e in events if e.at <= at]
    if restored and (not before or restored[-1].at >= before[-1].created_at):
        event = restored[-1]
        by_id = {info.id: info for info in infos}
        chosen = by_id.get(event.backup_id)
        if chosen is None or not chosen.verified:
            raise BackupNotFound(
                f"as of {local_time(at)} the database held backup {event.backup_id}, restored "
                f"{local_time(event.at)}, which is no longer kept"
                + (
                    f"; the newest restore point before that is {_name(before[-1])}"
                    if before
                    else ""
                )
            )
        return chosen
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


def points_around(
    infos: Iterable[BackupInfo],
    at: datetime,
    *,
    count: int = 3,
    events: Iterable[RestoreEvent] = (),
) -> Around:
    """Up to ``count`` points before the chosen one (the newest at or before ``at``) and after.

    With nothing at or before ``at`` there is no chosen point, only the oldest ones after it.
    When a restore came after that point (and at or before ``at``), the chosen one is the
    backup it brought back, as :func:`point_at` says.
    """
    infos = list(infos)
    points = restore_points(infos)
    index = sum(1 for p in points if p.created_at <= at) - 1
    restored = [e for e in events if e.at <= at]
    if restored and (index < 0 or restored[-1].at >= points[index].created_at):
        chosen = next((i for i in infos if i.id == restored[-1].backup_id and i.verified), None)
        if chosen is not None:
            return Around(
                tuple(points[max(0, index + 1 - count) : index + 1]),
                chosen,
                tuple(points[index + 1 : index + 1 + count]),
            )
    if index < 0:
        return Around((), None, tuple(points[:count]))
    return Around(
        tuple(points[max(0, index - count) : index]),
        points[index],
        tuple(points[index + 1 : index + 1 + count]),
    )

"""Groups: the coordinated snapshots of a site, each one restore point across its databases.

A group exists only in its members' manifests (each names the group's id and every member's
backup id, see :mod:`.coordinated`); nothing else is written, so nothing can disagree. A group
is **whole** while every member is listed in its own database and verified: only then is it a
restore point (``restore --group ID``). Retention decides for each database alone, so a group
whose member one database pruned (or lost) is listed as partial, naming the member.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tablettracker_backups.errors import BackupNotFound
from tablettracker_backups.layout import ID_PATTERN
from tablettracker_backups.metadata import GROUP_KEY, BackupMetadata, utc_iso, validate_backup_id
from tablettracker_backups.restore_points import RestoreEvent, point_at, restore_events
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupInfo, BackupStore


@dataclass(frozen=True)
class GroupRef:
    """What a member's manifest says of its group."""

    id: str
    #: Every member: database name to backup id.
    members: dict[str, str]


def group_ref(meta: BackupMetadata | None) -> GroupRef | None:
    """The group a backup belongs to, or None (not a member, or an entry that is not well
    formed: such a backup is an ordinary one)."""
    if meta is None:
        return None
    entry = meta.extra.get(GROUP_KEY)
    if not isinstance(entry, dict):
        return None
    group_id, members = entry.get("id"), entry.get("members")
    if not isinstance(group_id, str) or not ID_PATTERN.match(group_id):
        return None
    if not isinstance(members, dict) or not members:
        return None
    if not all(
        isinstance(name, str) and isinstance(value, str) and ID_PATTERN.match(value)
        for name, value in members.items()
    ):
        return None
    return GroupRef(group_id, {str(k): str(v) for k, v in members.items()})


@dataclass(frozen=True)
class GroupMember:
    """One database's backup in a group, as its own database lists it."""

    name: str
    backup_id: str
    #: The backup as listed in its database; None when it is not there (pruned or lost), or
    #: the database is not in this site.
    info: BackupInfo | None
    #: The database's settings; None when the site has no database of that name.
    settings: Settings | None

    @property
    def problem(self) -> str | None:
        """Why this member keeps the group from being a restore point; None when it is fine."""
        if self.settings is None:
            return f"{self.name}: no such database in this site"
        if self.info is None:
            return f"{self.name}: backup {self.backup_id} is gone (pruned or lost)"
        if not self.info.verified:
            return f"{self.name}: backup {self.backup_id} has no verified copy"
        return None


@dataclass(frozen=True)
class RestoreGroup:
    """A coordinated snapshot: one restore point across the site's databases."""

    id: str
    created_at: datetime
    members: tuple[GroupMember, ...]

    @property
    def problems(self) -> tuple[str, ...]:
        """Why the group is not a whole restore point (empty when it is)."""
        return tuple(p for p in (m.problem for m in self.members) if p is not None)

    @property
    def whole(self) -> bool:
        """Every member is listed in its database and verified."""
        return not self.problems

    @property
    def names(self) -> tuple[str, ...]:
        """The member databases' names."""
        return tuple(m.name for m in self.members)

    @property
    def label(self) -> str | None:
        """The label the members were given (``backup --all --label``), if any."""
        for member in self.members:
            if member.info is not None and member.info.label:
                return member.info.label
        return None

    def member(self, name: str) -> GroupMember:
        """The member of database ``name``; raises ``KeyError``."""
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``list --json`` of a site)."""
        return {
            "id": self.id,
            "created_at": utc_iso(self.created_at),
            "whole": self.whole,
            "problems": list(self.problems),
            "label": self.label,
            "members": {m.name: m.backup_id for m in self.members},
        }


def list_groups(
    databases: Sequence[Settings], listings: dict[str, list[BackupInfo]] | None = None
) -> list[RestoreGroup]:
    """Every group any database of the site has a member of, newest first. ``listings``
    (each database's :meth:`BackupStore.list`, by name) saves listing again."""
    by_name = {s.database_name: s for s in databases}
    listed: dict[str, dict[str, BackupInfo]] = {}
    for settings in databases:
        infos = (listings or {}).get(settings.database_name)
        if infos is None:
            infos = BackupStore(settings).list()
        listed[settings.database_name] = {i.id: i for i in infos}
    refs: dict[str, tuple[GroupRef, datetime]] = {}
    for infos_by_id in listed.values():
        for info in infos_by_id.values():
            ref = group_ref(info.metadata)
            if ref is not None and ref.id not in refs:
                refs[ref.id] = (ref, info.created_at)
    groups = []
    for ref, created_at in refs.values():
        members = tuple(
            GroupMember(
                name,
                backup_id,
                listed.get(name, {}).get(backup_id),
                by_name.get(name),
            )
            for name, backup_id in ref.members.items()
        )
        groups.append(RestoreGroup(ref.id, created_at, members))
    groups.sort(key=lambda g: (g.created_at, g.id), reverse=True)
    return groups


def find_group(databases: Sequence[Settings], wanted: str) -> RestoreGroup:
    """The group with id ``wanted`` (or the group of the member backup ``wanted``); raises
    :class:`InvalidBackupId` or :class:`BackupNotFound`."""
    validate_backup_id(wanted)
    groups = list_groups(databases)
    for group in groups:
        if group.id == wanted:
            return group
    for group in groups:
        if wanted in (m.backup_id for m in group.members):
            return group
    raise BackupNotFound(
        f"no coordinated snapshot {wanted} in this site (list shows them; take one with "
        "backup --all)"
    )


def group_at(
    databases: Sequence[Settings], at: datetime, *, now: datetime
) -> tuple[RestoreGroup, str]:
    """The restore point for "every database as of ``at``", and how it was chosen.

    Where every database's own state as of ``at`` (:func:`.restore_points.point_at`, restores
    on the timeline included) is a member of one whole group, that group: a group restore
    followed by no backup resolves to the group it brought back. Otherwise the state as of
    ``at`` was not one coordinated moment, and the newest whole group taken at or before it
    is the last moment all of them were consistent. Only groups with a member in every
    database of the site count. Raises :class:`BackupNotFound`.
    """
    names = {s.database_name for s in databases}
    listings = {s.database_name: BackupStore(s).list() for s in databases}
    groups = [g for g in list_groups(databases, listings) if g.whole and set(g.names) >= names]
    chosen: set[str | None] = set()
    for settings in databases:
        events: list[RestoreEvent] = restore_events(settings)
        try:
            info = point_at(listings[settings.database_name], at, now=now, events=events)
        except BackupNotFound:
            chosen.add(None)
            continue
        ref = group_ref(info.metadata)
        chosen.add(ref.id if ref is not None else None)
    if len(chosen) == 1:
        (only,) = chosen
        for group in groups:
            if group.id == only:
                return group, "the state every database held then"
    for group in groups:
        if group.created_at <= at:
            return group, "the newest coordinated snapshot taken at or before it"
    raise BackupNotFound(
        f"no whole coordinated snapshot of every database ({', '.join(sorted(names))}) was "
        f"taken at or before {utc_iso(at)} (take them with backup --all, or BACKUPS_COORDINATED)"
    )

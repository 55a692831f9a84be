"""``list``: every backup, newest first, with why it is kept and where its copies are."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import click

from tablettracker_backups.cli.common import (
    BackupsCommand,
    emit_json,
    heading,
    json_option,
    site_command,
    site_command_line,
)
from tablettracker_backups.display import human_size, local_time
from tablettracker_backups.footprint import of_listing
from tablettracker_backups.groups import RestoreGroup, group_ref, list_groups
from tablettracker_backups.offsite.policy import copy_states
from tablettracker_backups.offsite.record import read_state
from tablettracker_backups.retention import RetentionPlan, plan_for_backups
from tablettracker_backups.settings import Settings
from tablettracker_backups.site import Site
from tablettracker_backups.states import OffsiteStatus
from tablettracker_backups.store import BackupInfo, BackupStore, newest_good


@click.command("list", cls=BackupsCommand)
@site_command
@json_option
def list_backups(site: Site, as_json: bool) -> None:
    """List backups, newest first, with why each is kept and where its copies are.

    The backup marked * is 'latest': the newest good regular backup, what 'show latest' and
    'restore latest' take (never a pre-restore safety snapshot, never a source-damaged one).

    Over a site of several databases (no --database), the coordinated snapshots come first,
    each one restore point (restore --group ID), then each database's own list. A member of
    a coordinated snapshot says so under its row.

    \b
    Example:
      tablettracker-backups list --json | jq '.[0].id'
      tablettracker-backups list --config site.toml --json | jq '.groups[0].id'
    """

    if len(site.databases) == 1:
        settings = site.databases[0]
        store = BackupStore(settings)
        store.require_folder()  # a mistyped --backup-dir: say so, create nothing
        rows, printer = _listing(settings, store.list())
        if as_json:
            emit_json(rows)
        else:
            printer()
        return
    listings: dict[str, list[BackupInfo]] = {}
    for settings in site.databases:
        store = BackupStore(settings)
        listings[settings.database_name] = store.list()
    groups = list_groups(site.databases, listings)
    if as_json:
        emit_json(
            {
                "groups": [g.to_dict() for g in groups],
                "databases": {
                    s.database_name: _listing(s, listings[s.database_name])[0]
                    for s in site.databases
                },
            }
        )
        return
    _print_groups(site, groups)
    for settings in site.databases:
        click.echo("")
        heading(settings)
        _listing(settings, listings[settings.database_name])[1]()


def _print_groups(site: Site, groups: list[RestoreGroup]) -> None:
    """The coordinated snapshots of a site: one restore point each."""
    if not groups:
        click.echo(
            "No coordinated snapshots yet (one restore point for every database): take one "
            f"with: {site_command_line(site, 'backup', '--all')}"
        )
        return
    click.echo("Coordinated snapshots (restore one with: restore --group ID):")
    click.echo(f"  {'GROUP':<24} {'TAKEN (local time)':<24} {'STATE':<8} MEMBERS")
    for group in groups:
        members = ", ".join(f"{m.name} {m.backup_id}" for m in group.members)
        state = "whole" if group.whole else "PARTIAL"
        click.echo(f"  {group.id:<24} {local_time(group.created_at):<24} {state:<8} {members}")
        if group.label:
            click.echo(f"    label: {group.label}")
        for problem in group.problems:
            click.echo(f"    ! not a restore point: {problem}")


def _listing(
    settings: Settings, infos: list[BackupInfo]
) -> tuple[list[dict[str, Any]], Callable[[], None]]:
    """One database's list: its JSON rows, and what prints it on a terminal."""
    plan = plan_for_backups(settings, infos, now=datetime.now(timezone.utc))
    sizes = of_listing(settings.backup_dir, infos)
    latest = newest_good(infos)
    # From the local offsite record only: listing never waits on the network.
    offsite = copy_states(settings, infos)

    record = read_state(settings) if offsite else None

    def as_dict(info: BackupInfo) -> dict[str, Any]:
        ref = group_ref(info.metadata)
        document: dict[str, Any] = dict(
            info.to_dict(),
            kept_because=list(plan.reasons(info.id)),
            latest=latest is not None and info.id == latest.id,
            group=None if ref is None else {"id": ref.id, "members": ref.members},
            # logical (the database), stored (a whole copy), own (what only it holds), added.
            sizes=sizes[info.id].to_dict() if info.id in sizes else None,
        )
        if offsite:
            document["copies"]["offsite"] = offsite[info.id]
            copy = record.copies.get(info.id) if record else None
            document["offsite_encrypted_to"] = (list(copy.recipients) or None) if copy else None
        return document

    def show() -> None:
        if not infos:
            click.echo(
                f"No backups yet. Take one with: {settings.command_line('backup', where=False)}"
            )
            return
        _print_list(infos, plan, latest, offsite)
        if any(i.metadata is not None and i.metadata.format_version > 1 for i in infos):
            click.echo(
                "SIZE: what the backup added to the folder (+, format 2: pages shared with the "
                "others are stored once); 'show ID' says what it holds alone."
            )

    return [as_dict(i) for i in infos], show


def _print_list(
    infos: list[BackupInfo],
    plan: RetentionPlan,
    latest: BackupInfo | None,
    offsite: dict[str, OffsiteStatus],
) -> None:
    shown = {
        i.id: " ".join(f"{c.location[:3]}:{c.state}" for c in i.copies)
        + (f" off:{offsite[i.id]}" if offsite else "")
        for i in infos
    }
    width = max(22, *(len(text) for text in shown.values()))
    click.echo(
        f"  {'ID':<24} {'TAKEN (local time)':<24} {'KIND':<11} {'SIZE':>10} "
        f"{'VERIFIED':<8} {'DATA':<14} {'COPIES':<{width}} KEPT BECAUSE"
    )
    for info in infos:
        reasons = ", ".join(plan.reasons(info.id)) or "(pruned next run)"
        mark = "*" if latest is not None and info.id == latest.id else " "
        click.echo(
            f"{mark} {info.id:<24} {local_time(info.created_at):<24} {info.kind:<11} "
            f"{_size_column(info):>10} {'yes' if info.verified else 'NO':<8} "
            f"{_data_column(info):<14} {shown[info.id]:<{width}} {reasons}"
        )
        if info.label:
            click.echo(f"    label: {info.label}" + (" (pinned)" if info.pinned else ""))
        ref = group_ref(info.metadata)
        if ref is not None:
            others = ", ".join(f"{n} {i}" for n, i in ref.members.items() if i != info.id)
            click.echo(f"    coordinated snapshot {ref.id}" + (f" with {others}" if others else ""))
        for problem in info.problems:
            click.echo(f"    ! {problem}")
    click.echo(
        f"* latest: {latest.id}" if latest else "* latest: none (no good regular backup yet)"
    )
    note = _zone_note([i.created_at for i in infos])
    if note:
        click.echo(note)


def _size_column(info: BackupInfo) -> str:
    """A format 1 backup's file; what a format 2 backup added (``+``)."""
    size = human_size(info.stored_size)
    return f"+{size}" if info.metadata is not None and info.metadata.format_version > 1 else size


def _data_column(info: BackupInfo) -> str:
    """What the checks found in the data, in a few characters."""
    if info.metadata is None:
        return "?"
    if not info.checked:
        return "not checked"
    found = info.metadata.findings
    if found.source_damaged:
        return "DAMAGED"
    if found.foreign_key_violations:
        return f"fk:{found.foreign_key_violations}"
    if found.not_counted:
        return f"ok ({len(found.not_counted)} n/c)"
    return "ok"


def _zone_note(moments: list[datetime]) -> str | None:
    """When the local zone is not UTC, say which zone the times are in, and that slot names
    (``daily 2026-11-23``) are UTC dates, which can differ near midnight."""
    if not moments:
        return None
    local = moments[0].astimezone()
    offset = local.utcoffset()
    if offset is not None and not offset and local.tzname() in ("UTC", "GMT", "Z"):
        return None
    return (
        f"Times are local ({local.tzname()}, UTC{local:%z}); retention slot names "
        "(hourly/daily/...) use UTC dates and hours."
    )

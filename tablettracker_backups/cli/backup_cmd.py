"""``backup``: take, check and store a backup now."""

from __future__ import annotations

import sys

import click

from tablettracker_backups.backup import create_backup
from tablettracker_backups.cli.common import (
    EXIT_CRITICAL,
    EXIT_WARNING,
    SETTINGS_META,
    BackupsCommand,
    audit_command,
    emit_json,
    json_option,
    print_findings,
    site_command,
    site_command_line,
    stage_progress,
)
from tablettracker_backups.coordinated import create_group_backup
from tablettracker_backups.display import human_size
from tablettracker_backups.site import Site


@click.command(cls=BackupsCommand)
@click.option("--label", help='A note shown with this backup, e.g. "before the migration".')
@click.option(
    "--keep",
    is_flag=True,
    help="Pin it: retention never deletes it until 'unpin ID'.",
)
@click.option(
    "--all",
    "all_databases",
    is_flag=True,
    help="Snapshot every database of the site at one instant (a coordinated snapshot, one "
    "restore point: restore --group ID).",
)
@site_command
@json_option
def backup(site: Site, label: str | None, keep: bool, all_databases: bool, as_json: bool) -> None:
    """Take, check and store a backup now.

    The backup is kept when its stored file decompresses to exactly the snapshot. What the
    checks find in the data (foreign-key violations, damage, tables that cannot be counted)
    is recorded with it and shown by list and show. Exit 2 when the live database itself
    failed integrity_check (the copy is kept, flagged source-damaged).

    \b
    Examples:
      tablettracker-backups backup --database instance/tablet_counter.db
      tablettracker-backups backup --label "before the migration" --keep
      tablettracker-backups backup --all --config site.toml

    With --all, every database of the site is read as of one instant: a read transaction is
    opened on each while all their write locks are held (an app writing two of them in one
    transaction is caught wholly before or wholly after), then each is copied and filed as a
    backup of its own database whose manifest names the group.
    """
    if all_databases:
        _backup_all(site, label, keep, as_json)
        return
    settings = site.one()
    click.get_current_context().meta[SETTINGS_META] = settings

    result = create_backup(
        settings,
        kind="manual",
        trigger="cli",
        progress=stage_progress(not as_json),
        label=label,
        pinned=keep,
        raw_reads=True,  # a process of its own: no other connection to the database here
    )
    meta = result.metadata
    audit_command(
        settings,
        "backup",
        ok=True,
        message=f"backed up {meta.id} ({human_size(meta.stored_size)} stored)",
    )
    if as_json:
        emit_json(
            {
                "id": meta.id,
                "created_at": meta.created_at,
                "size": meta.stored_size,
                "raw_size": meta.raw_size,
                "sha256": meta.sha256,
                "verified": meta.verification.ok,
                # False: the full data checks did not fit the check budget and wait.
                "checked": meta.checked,
                "good": not meta.source_damaged,
                "label": meta.label,
                "pinned": meta.pinned,
                "findings": meta.findings.to_dict(),
                "locations": list(result.locations),
                "warnings": list(result.warnings),
                "anomalies": [a.to_dict() for a in result.anomalies],
            }
        )
    else:
        click.echo(
            f"Backup {meta.id} {'verified' if meta.checked else 'hashed'} and stored in "
            f"{', '.join(result.locations)} "
            f"({human_size(meta.raw_size)} database, {human_size(meta.stored_size)} stored, "
            f"{meta.durations['total']:.2f}s)." + (" Pinned." if meta.pinned else "")
        )
        print_findings(meta, err=True)
        for warning in result.warnings:
            click.echo(f"Warning: {warning}", err=True)
        for found in result.anomalies:
            click.echo(f"Anomaly: {found.message}", err=True)
    if meta.source_damaged:
        sys.exit(EXIT_CRITICAL)
    if result.warnings:
        sys.exit(EXIT_WARNING)


def _backup_all(site: Site, label: str | None, keep: bool, as_json: bool) -> None:
    """``backup --all``: one coordinated snapshot of every database of the site."""
    result = create_group_backup(
        site.databases, kind="manual", trigger="cli", label=label, pinned=keep
    )
    for settings, (_, member) in zip(site.databases, result.members, strict=True):
        audit_command(
            settings,
            "backup",
            ok=True,
            message=f"backed up {member.metadata.id} in coordinated snapshot {result.group_id} "
            f"({human_size(member.metadata.stored_size)} stored)",
            group=result.group_id,
        )
    damaged = any(member.metadata.source_damaged for _, member in result.members)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(
            f"Coordinated snapshot {result.group_id}: {len(result.members)} databases as of "
            f"one instant, each verified and stored." + (" Pinned." if keep else "")
        )
        for name, member in result.members:
            meta = member.metadata
            click.echo(
                f"  {name}: backup {meta.id} ({human_size(meta.raw_size)} database, "
                f"{human_size(meta.stored_size)} stored)"
            )
            print_findings(meta, err=True, indent="    ")
            for found in member.anomalies:
                click.echo(f"    Anomaly: {found.message}", err=True)
        for warning in result.warnings:
            click.echo(f"Warning: {warning}", err=True)
        click.echo(
            f"Restore it with: {site_command_line(site, 'restore', '--group', result.group_id)}"
        )
    if damaged:
        sys.exit(EXIT_CRITICAL)
    if result.warnings:
        sys.exit(EXIT_WARNING)

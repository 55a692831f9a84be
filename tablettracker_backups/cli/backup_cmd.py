"""``backup``: take, check and store a backup now."""

from __future__ import annotations

import sys

import click

from tablettracker_backups.backup import create_backup
from tablettracker_backups.cli.common import (
    EXIT_CRITICAL,
    EXIT_WARNING,
    BackupsCommand,
    audit_command,
    emit_json,
    json_option,
    print_findings,
    settings_command,
    stage_progress,
)
from tablettracker_backups.display import human_size
from tablettracker_backups.settings import Settings


@click.command(cls=BackupsCommand)
@click.option("--label", help='A note shown with this backup, e.g. "before the migration".')
@click.option(
    "--keep",
    is_flag=True,
    help="Pin it: retention never deletes it until 'unpin ID'.",
)
@settings_command
@json_option
def backup(settings: Settings, label: str | None, keep: bool, as_json: bool) -> None:
    """Take, check and store a backup now.

    The backup is kept when its stored file decompresses to exactly the snapshot. What the
    checks find in the data (foreign-key violations, damage, tables that cannot be counted)
    is recorded with it and shown by list and show. Exit 2 when the live database itself
    failed integrity_check (the copy is kept, flagged source-damaged).

    \b
    Examples:
      tablettracker-backups backup --database instance/tablet_counter.db
      tablettracker-backups backup --label "before the migration" --keep
    """

    result = create_backup(
        settings,
        kind="manual",
        trigger="cli",
        progress=stage_progress(not as_json),
        label=label,
        pinned=keep,
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
            f"Backup {meta.id} verified and stored in {', '.join(result.locations)} "
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

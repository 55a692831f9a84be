"""``prune``: delete the backups that retention no longer keeps."""

from __future__ import annotations

import click

from tablettracker_backups.cli.common import (
    BackupsCommand,
    audit_command,
    emit_json,
    json_option,
    settings_command,
)
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.prune import prune as prune_backups
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore


@click.command(cls=BackupsCommand)
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@settings_command
@json_option
def prune(settings: Settings, dry_run: bool, as_json: bool) -> None:
    """Delete backups that grandfather-father-son retention no longer keeps.

    Never deletes the newest backup or the newest verified one.

    \b
    Example:
      tablettracker-backups prune --dry-run
    """

    store = BackupStore(settings)
    store.require_folder()  # a mistyped --backup-dir: say so, create nothing
    with operation_lock(settings):
        result = prune_backups(store, dry_run=dry_run)
    if not dry_run:
        audit_command(
            settings,
            "prune",
            ok=True,
            message=f"pruned {len(result.deleted)} backup(s)",
            **result.audit_details(),
        )
    if as_json:
        emit_json(result.to_dict())
        return
    going = result.plan.delete
    verb = "Would delete" if dry_run else "Deleted"
    click.echo(f"{verb} {len(going)} backup(s); keeping {len(result.plan.keep)}.")
    for decision in going:
        click.echo(f"  - {decision.id}")
    if result.garbage is not None:
        click.echo(f"Unneeded pages (format 2): {result.garbage.describe()}.")

"""``adopt``: hand the backup folders to the configured database after a move."""

from __future__ import annotations

import click

from tablettracker_backups import audit
from tablettracker_backups.cli.common import (
    BackupsCommand,
    emit_json,
    json_option,
    settings_command,
)
from tablettracker_backups.identity import adopt_folders
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.settings import Settings


@click.command(cls=BackupsCommand)
@settings_command
@json_option
def adopt(settings: Settings, as_json: bool) -> None:
    """Hand the backup folders to the configured database after moving or renaming it.

    A backup folder belongs to one database (its name and path are recorded in database.json
    on first use); a backup, run or prune of another database there is refused. When the
    database was moved or renamed on purpose, this records the configured one instead. Its
    existing backups stay as they are.

    \b
    Example:
      tablettracker-backups adopt --database /home/me/new/tablet_counter.db
    """

    with operation_lock(settings):
        changed = adopt_folders(settings)
    audit.record(
        settings,
        action="adopt",
        actor="cli",
        ok=True,
        message=f"backup folders now belong to {settings.database_name} ({settings.database})",
        details={"before": {str(f): b.describe() if b else None for f, b in changed}},
    )
    if as_json:
        emit_json(
            {
                "name": settings.database_name,
                "path": str(settings.database),
                "folders": [
                    {"folder": str(f), "before": b.describe() if b else None} for f, b in changed
                ],
            }
        )
        return
    for folder, before in changed:
        was = f" (was {before.describe()})" if before else ""
        click.echo(
            f"{folder} now belongs to {settings.database_name!r} ({settings.database}){was}."
        )

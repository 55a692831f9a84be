"""``export ID --to FILE``: a backup written out as a plain SQLite file."""

from __future__ import annotations

from pathlib import Path

import click

from tablettracker_backups.cli.common import (
    BackupsCommand,
    audit_command,
    emit_json,
    identity_option,
    json_option,
    open_identity,
    settings_command,
)
from tablettracker_backups.display import human_size
from tablettracker_backups.export import export_backup
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore


@click.command(cls=BackupsCommand)
@click.argument("backup_id", metavar="ID")
@click.option(
    "--to",
    "dest",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The new file to write (never an existing one).",
)
@click.option(
    "--compress", is_flag=True, help="Write it zstd-compressed ('zstd -d FILE' opens it)."
)
@identity_option
@settings_command
@json_option
def export(
    settings: Settings,
    backup_id: str,
    dest: Path,
    compress: bool,
    identity_file: Path | None,
    as_json: bool,
) -> None:
    """Write a backup out as a plain SQLite file that sqlite3 (or any SQLite tool) opens.

    Works for every backup, whatever format it is stored in: the database is built from
    the first sound copy and checked against what the backup recorded before the file is
    committed. ID may be 'latest'. The live database is not touched.

    \b
    Examples:
      tablettracker-backups export latest --to ~/tablet_counter-copy.db
      tablettracker-backups export 20261123T201500Z-3f9a1c --to copy.db.zst --compress
    """

    done = export_backup(
        BackupStore(settings),
        backup_id,
        dest,
        compress=compress,
        identity=open_identity(identity_file),
    )
    audit_command(
        settings,
        "export",
        ok=True,
        message=f"exported {done.id} to {done.path} ({human_size(done.size)})",
        backup_id=done.id,
        path=str(done.path),
    )
    if as_json:
        emit_json(
            {
                "id": done.id,
                "path": str(done.path),
                "size": done.size,
                "raw_size": done.raw_size,
                "raw_sha256": done.raw_sha256,
                "compressed": done.compressed,
                "from": done.location,
                "notes": list(done.notes),
            }
        )
        return
    for note in done.notes:
        click.echo(f"  ! {note}")
    what = "zstd-compressed SQLite database" if compress else "SQLite database"
    click.echo(
        f"Exported backup {done.id} from its {done.location} copy to {done.path} "
        f"({what}, {human_size(done.size)})."
    )

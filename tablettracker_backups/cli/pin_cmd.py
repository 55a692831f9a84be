"""``pin ID`` and ``unpin ID``: keep a backup out of retention, or hand it back."""

from __future__ import annotations

import click

from tablettracker_backups.cli.common import (
    BackupsCommand,
    emit_json,
    json_option,
    pick_backup,
    settings_command,
)
from tablettracker_backups.metadata import validate_backup_id
from tablettracker_backups.pins import set_pin
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupInfo


@click.command(cls=BackupsCommand)
@click.argument("backup_id", metavar="ID")
@click.option("--label", help="Set its label too (a note shown in list, show and the pages).")
@settings_command
@json_option
def pin(settings: Settings, backup_id: str, label: str | None, as_json: bool) -> None:
    """Keep a backup out of retention until 'unpin ID'. ID may be 'latest'.

    \b
    Example:
      tablettracker-backups pin 20261123T201500Z-3f9a1c --label "before the migration"
    """

    info = set_pin(settings, pick_backup(settings, backup_id), pinned=True, label=label)
    _print_pin(info, as_json)


@click.command(cls=BackupsCommand)
@click.argument("backup_id", metavar="ID")
@settings_command
@json_option
def unpin(settings: Settings, backup_id: str, as_json: bool) -> None:
    """Let retention treat a pinned backup like any other again (its label stays).

    \b
    Example:
      tablettracker-backups unpin 20261123T201500Z-3f9a1c
    """

    info = set_pin(settings, validate_backup_id(backup_id), pinned=False)
    _print_pin(info, as_json)


def _print_pin(info: BackupInfo, as_json: bool) -> None:
    if as_json:
        emit_json({"id": info.id, "pinned": info.pinned, "label": info.label})
        return
    state = "pinned: retention keeps it" if info.pinned else "unpinned: retention decides"
    click.echo(f"Backup {info.id} {state}" + (f" ({info.label})" if info.label else "") + ".")

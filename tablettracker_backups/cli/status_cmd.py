"""``status``: a short summary of the backups, the settings and their health."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import click

from tablettracker_backups.cli.common import (
    BackupsCommand,
    emit_json,
    json_option,
    print_health,
    report_each_database,
    site_command,
)
from tablettracker_backups.display import human_age, human_size
from tablettracker_backups.encryption import describe_keys
from tablettracker_backups.health import check_health, describe_recovery
from tablettracker_backups.settings import Settings
from tablettracker_backups.site import Site
from tablettracker_backups.sources import describe_origins


@click.command(cls=BackupsCommand)
@site_command
@json_option
def status(site: Site, as_json: bool) -> None:
    """A short summary: newest backups, counts per slot, disk use, the settings, health.

    The same checks as 'health' (which also saves them to status.json), so the two never
    disagree. 'Newest' is the newest regular backup whatever its state, 'latest' the newest
    good one; neither is ever a pre-restore safety snapshot. Each setting that is not a
    default is shown with where it came from (option, environment, app config, file). In a
    site of several databases, a section for each (the worst verdict is the exit code).

    \b
    Example:
      tablettracker-backups status
    """

    if not site.named:
        settings = site.one()
        if as_json:
            shown = _status_dict(settings)
            emit_json(shown)
            sys.exit(int(shown["exit_code"]))
        sys.exit(_print_status(settings))
    report_each_database(site, as_json=as_json, as_dict=_status_dict, show=_print_status)


def _status_dict(settings: Settings) -> dict[str, Any]:
    """One database's status as JSON: its health report and its settings' origins."""
    report = check_health(settings)
    shown = describe_origins(settings)
    return {
        **report.to_dict(),
        "settings": {key: {"value": v, "origin": o} for key, v, o in shown},
    }


def _print_status(settings: Settings) -> int:
    """One database's status as text; returns its exit code."""
    report = check_health(settings)
    shown = describe_origins(settings)
    click.echo(f"Database:        {settings.database}")
    click.echo(
        f"Backups:         {report.backup_count} in {settings.backup_dir}"
        + (f" (+ {settings.secondary_dir})" if settings.secondary_dir else "")
    )
    click.echo(f"Newest:          {report.newest_id or '-'} ({human_age(report.newest_at)})")
    click.echo(
        f"Latest (good):   {report.newest_good_id or '-'} ({human_age(report.newest_good_at)})"
    )
    slots = ", ".join(f"{k} {v}" for k, v in report.slot_counts.items()) or "-"
    click.echo(f"Slots filled:    {slots}")
    primary = report.disk.get("primary")
    if primary:
        click.echo(
            f"Disk:            {human_size(report.stored_bytes)} used by backups, "
            f"{human_size(primary['free'])} free"
        )
    click.echo(f"Last run:        {human_age(report.last_run_at)}")
    for label, text in describe_recovery(report.recovery):
        click.echo(f"{label + ':':<16} {text}")
    offsite = report.offsite
    if offsite:
        behind = (
            f"{offsite['behind']} behind since {offsite['behind_since']}"
            if offsite["behind"]
            else "up to date"
        )
        click.echo(f"Offsite:         {offsite['copies']} copies in {offsite['target']}, {behind}")
    _print_encryption(report.encryption)
    _print_origins(shown)
    print_health(report)
    return report.exit_code


def _print_origins(shown: list[tuple[str, str, str]]) -> None:
    """Each setting that is not a default, and the folders, with where it came from (as
    ``git config --show-origin`` prints them)."""
    click.echo("Settings (where each comes from; the rest are defaults):")
    width = max(len(key) for key, _value, _origin in shown)
    for key, value, origin in shown:
        click.echo(f"  {key:<{width}} = {value}  [{origin}]")


def _print_encryption(encryption: dict[str, Any]) -> None:
    """Encryption as configured, and which keys the existing backups need."""
    if not encryption:
        return
    if encryption["configured"]:
        click.echo(
            f"Encryption:      age ({encryption['mode']}), new backups to "
            f"{describe_keys(encryption['recipients'])}"
            + ("" if encryption["available"] else "; pyrage MISSING")
        )
    else:
        click.echo("Encryption:      off for new backups")
    for need in encryption["needs"]:
        current = "" if need["current"] else " (no longer in BACKUPS_ENCRYPT_TO)"
        span = need["newest"] if need["count"] == 1 else f"{need['oldest']} to {need['newest']}"
        click.echo(
            f"  {need['count']} {need['where']} backup(s) need "
            f"{describe_keys(need['fingerprints'])}{current}: {span}"
        )
    if encryption["plaintext_offsite"]:
        click.echo(f"  {len(encryption['plaintext_offsite'])} offsite backup(s) unencrypted")
    if encryption["configured"]:
        drill = encryption["last_drill_at"]
        click.echo(
            f"  last drill with the identity ({encryption['drill_where']}): "
            + (
                human_age(datetime.fromisoformat(drill.replace("Z", "+00:00")))
                if drill
                else "never"
            )
        )

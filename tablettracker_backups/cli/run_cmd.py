"""``run``: everything a scheduled task does (back up if due, verify, prune, health)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tablettracker_backups.cli.common import (
    BackupsCommand,
    audit_command,
    emit_json,
    identity_option,
    json_option,
    open_identity,
    print_health,
    settings_command,
)
from tablettracker_backups.display import human_size
from tablettracker_backups.runner import run
from tablettracker_backups.settings import Settings


@click.command("run", cls=BackupsCommand)
@click.option("--force", is_flag=True, help="Back up even if the newest backup is recent.")
@identity_option
@settings_command
@json_option
def run_command(settings: Settings, force: bool, identity_file: Path | None, as_json: bool) -> None:
    """Everything a scheduled task needs: back up if due, verify, prune, health check.

    Idempotent: run it hourly (or daily on a free PythonAnywhere account); a run with nothing
    due only verifies and checks. A second run while one is in progress waits briefly, then
    exits 3 without touching anything.

    With --identity FILE, brought by a person for one run, encrypted copies are opened: the
    re-verify checks them in full, and a local copy lost everywhere is rebuilt from the
    sealed offsite copy (health says when that is what a repair needs).

    \b
    Example (PythonAnywhere scheduled task or crontab):
      tablettracker-backups run --config /home/me/.config/tablettracker-backups/config.toml
      tablettracker-backups run --identity ~/keys/backups-identity.txt   # a repair needs it
    """

    result = run(settings, force=force, trigger="scheduled", identity=open_identity(identity_file))
    audit_command(
        settings,
        "run",
        ok=result.error is None,
        message=result.audit_message(),
        **result.audit_details(),
    )
    if as_json:
        emit_json(result.to_dict())
        sys.exit(result.exit_code)
    if result.error:
        click.echo(f"Error: {result.error}", err=True)
    elif result.backup:
        click.echo(
            f"Backed up: {result.backup.metadata.id} "
            f"({human_size(result.backup.metadata.stored_size)})"
        )
    else:
        click.echo(f"No backup due: {result.skipped_reason}")
    for found in result.backup.anomalies if result.backup else ():
        click.echo(f"Anomaly: {found.message}", err=True)
    if result.reverified:
        click.echo(
            f"Re-verified: {result.reverified.id}: {'ok' if result.reverified.ok else 'PROBLEM'}"
        )
    for repair in result.repaired:
        if repair.ok:
            click.echo(f"Repaired: {repair.describe()}")
    if result.pruned and result.pruned.deleted:
        click.echo(f"Pruned: {', '.join(result.pruned.deleted)}")
    if result.offsite is not None:
        sync = result.offsite
        click.echo(
            f"Offsite: {len(sync.uploaded)} uploaded, {len(sync.pruned)} pruned, "
            f"{len(sync.verified)} read back"
            + (f", {len(sync.behind)} behind" if sync.behind else "")
        )
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    print_health(result.health)
    sys.exit(result.exit_code)

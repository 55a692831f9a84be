"""``run``: everything a scheduled task does (back up if due, verify, prune, health)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tablettracker_backups.cli.common import (
    BackupsCommand,
    audit_command,
    emit_json,
    heading,
    identity_option,
    json_option,
    open_identity,
    print_health,
    site_command,
    site_summary,
)
from tablettracker_backups.display import human_size
from tablettracker_backups.runner import LOCKED_EXIT_CODE, RunResult, run, run_site
from tablettracker_backups.settings import Settings
from tablettracker_backups.site import Site


@click.command("run", cls=BackupsCommand)
@click.option("--force", is_flag=True, help="Back up even if the newest backup is recent.")
@identity_option
@site_command
@json_option
def run_command(site: Site, force: bool, identity_file: Path | None, as_json: bool) -> None:
    """Everything a scheduled task needs: back up if due, verify, prune, health check.

    In a site of several databases (BACKUPS_DATABASES), every one of them, one after the
    other, each under its own lock: one that fails never stops the others; the report has a
    section per database and the exit code is the worst of them. --database NAME runs one.
    With BACKUPS_COORDINATED on, the site's backups are one coordinated snapshot (every
    database as of one instant); a group restore that was killed is finished or put back
    first.

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
      tablettracker-backups run --config site.toml --database audit
    """

    identity = open_identity(identity_file)
    if not site.named:
        settings = site.one()
        result = run(settings, force=force, trigger="scheduled", identity=identity)
        _audit(settings, result)
        if as_json:
            emit_json(result.to_dict())
            sys.exit(result.exit_code)
        _print_run(result)
        sys.exit(result.exit_code)
    outcome = run_site(site.databases, force=force, trigger="scheduled", identity=identity)
    for part in outcome.runs:
        if part.result is not None:
            _audit(part.settings, part.result)
        elif part.error_code != LOCKED_EXIT_CODE:
            audit_command(part.settings, "run", ok=False, message=part.error or "")
    if as_json:
        emit_json(outcome.to_dict())
        sys.exit(outcome.exit_code)
    if outcome.group_restore:
        click.echo(f"Group restore: {outcome.group_restore}", err=True)
    if outcome.group is not None:
        click.echo(
            f"Coordinated snapshot {outcome.group.group_id}: "
            + ", ".join(f"{name} {r.metadata.id}" for name, r in outcome.group.members)
        )
        click.echo("")
    elif outcome.group_error:
        click.echo(f"Error: {outcome.group_error}; each database was backed up alone", err=True)
    for index, part in enumerate(outcome.runs):
        if index:
            click.echo("")
        heading(part.settings)
        if part.result is not None:
            _print_run(part.result, name=part.name)
        else:
            word = "Busy" if part.error_code == LOCKED_EXIT_CODE else "Error"
            click.echo(f"{word}: {part.name}: {part.error}", err=True)
            click.echo(f"Did not run (exit {part.error_code})")
    click.echo("")
    click.echo(site_summary({p.name: p.exit_code for p in outcome.runs}, outcome.exit_code))
    sys.exit(outcome.exit_code)


def _audit(settings: Settings, result: RunResult) -> None:
    audit_command(
        settings,
        "run",
        ok=result.error is None,
        message=result.audit_message(),
        **result.audit_details(),
    )


def _print_run(result: RunResult, *, name: str | None = None) -> None:
    """What one database's run did; in a site's report, lines on stderr name the database."""
    who = f"{name}: " if name else ""
    if result.error:
        click.echo(f"Error: {who}{result.error}", err=True)
    elif result.backup:
        click.echo(
            f"Backed up: {result.backup.metadata.id} "
            f"({human_size(result.backup.metadata.stored_size)})"
        )
    else:
        click.echo(f"No backup due: {result.skipped_reason}")
    for found in result.backup.anomalies if result.backup else ():
        click.echo(f"Anomaly: {who}{found.message}", err=True)
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
        click.echo(f"Warning: {who}{warning}", err=True)
    print_health(result.health)

"""``migrate``: turn a folder's version 1 backups (one file each) into version 2 (pages)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from tablettracker_backups.cli.common import (
    BackupsCommand,
    audit_command,
    emit_json,
    json_option,
    report_each_database,
    site_command,
)
from tablettracker_backups.display import human_size
from tablettracker_backups.migrate import MigrationResult, Step, migrate
from tablettracker_backups.settings import Settings
from tablettracker_backups.site import Site


@click.command(cls=BackupsCommand)
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@site_command
@json_option
def migrate_command(site: Site, dry_run: bool, as_json: bool) -> None:
    """Turn version 1 backups (one file each) into version 2 (pages stored once).

    Every backup keeps its id, time, kind, label, pin and verification. Oldest first, each
    copy (primary, then secondary) is checked, stored as pages, built again from them and
    verified against the database hash the backup recorded; only then is its version 1
    file deleted. Safe to interrupt: the next run goes on where it stopped. Encrypted and
    damaged backups are left as they are and listed. Offsite copies are not touched.
    In a site of several databases, every one (or the one --database names).

    Exit 0: nothing left as version 1; 1: some left (listed, with why); 2: a copy failed.

    \b
    Examples:
      tablettracker-backups migrate --dry-run
      tablettracker-backups migrate
    """
    if not site.named:
        result = _run(site.one(), dry_run, None if as_json else _print_step)
        if as_json:
            emit_json(result.to_dict())
        else:
            _print_summary(result)
        sys.exit(result.exit_code)
    report_each_database(
        site,
        as_json=as_json,
        as_dict=lambda settings: _run(settings, dry_run).to_dict(),
        show=lambda settings: _show(settings, dry_run),
    )


def _run(
    settings: Settings, dry_run: bool, on_step: Callable[[Step], None] | None = None
) -> MigrationResult:
    result = migrate(settings, dry_run=dry_run, on_step=on_step)
    if not dry_run:
        audit_command(
            settings,
            "migrate",
            ok=result.exit_code != 2,
            message=result.describe(),
            migrated=[f"{s.location}:{s.id}" for s in result.done],
            left={f"{s.location}:{s.id}": f"{s.outcome.value}: {s.detail}" for s in result.left},
            freed=result.freed,
            added=result.added,
        )
    return result


def _show(settings: Settings, dry_run: bool) -> int:
    result = _run(settings, dry_run, _print_step)
    _print_summary(result)
    return result.exit_code


def _print_step(step: Step) -> None:
    """One copy, as soon as it is done."""
    size = f" ({human_size(step.freed)} file)" if step.freed else ""
    detail = f": {step.detail}" if step.detail else ""
    click.echo(f"  {step.outcome.value:<14} {step.location:<9} {step.id}{size}{detail}")


def _print_summary(result: MigrationResult) -> None:
    click.echo(f"{result.describe()[0].upper()}{result.describe()[1:]}.")
    if result.done and result.dry_run:
        click.echo(f"Would delete {human_size(result.freed)} of version 1 files.")
    elif result.done:
        click.echo(
            f"Deleted {human_size(result.freed)} of version 1 files; wrote "
            f"{human_size(result.added)} of pages."
        )

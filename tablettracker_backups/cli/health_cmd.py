"""``health``: check that the data is safe; the exit code is the verdict."""

from __future__ import annotations

import sys

import click

from tablettracker_backups import notify
from tablettracker_backups.cli.common import (
    BackupsCommand,
    emit_json,
    json_option,
    print_health,
    report_each_database,
    site_command,
)
from tablettracker_backups.display import human_size
from tablettracker_backups.health import HealthReport, current_report
from tablettracker_backups.settings import Settings
from tablettracker_backups.site import Site


@click.command(cls=BackupsCommand)
@site_command
@json_option
def health(site: Site, as_json: bool) -> None:
    """Check that the data is safe; exit 0 ok, 1 warning, 2 critical.

    Checks the live database (quick_check), the age of the newest (verified) backup against the
    interval, recent checksums, free disk space, retention slots, copies agreeing, and whether
    the scheduled task still runs. Writes status.json and appends problems to alerts.jsonl,
    and tells the owner what changed since the last check (BACKUPS_NOTIFY). In a site of
    several databases, every one of them (a section each; the worst verdict is the exit code).

    \b
    Example:
      tablettracker-backups health || echo "backups need attention"
    """

    if not site.named:
        report = _check(site.one())
        if as_json:
            emit_json(report.to_dict())
        else:
            print_health(report)
            _print_sizes(report)
        sys.exit(report.exit_code)
    report_each_database(
        site,
        as_json=as_json,
        as_dict=lambda settings: _check(settings).to_dict(),
        show=_show,
    )


def _show(settings: Settings) -> int:
    report = _check(settings)
    print_health(report)
    _print_sizes(report)
    return report.exit_code


def _print_sizes(report: HealthReport) -> None:
    """What the backups take: the database, every folder, and the newest backup."""
    sizes = report.sizes
    if "logical" not in sizes:
        return
    click.echo(
        f"Sizes: database {human_size(sizes['logical'])}; backups take "
        f"{human_size(report.stored_bytes)} in all folders; the newest added "
        f"{human_size(sizes['added'])} (alone it holds {human_size(sizes['own'])}, a whole "
        f"copy of it {human_size(sizes['stored'])}); the next backup needs about "
        f"{human_size(sizes['next_backup_needs'])} free."
    )


def _check(settings: Settings) -> HealthReport:
    report = current_report(settings)
    # A second scheduled task running ``health`` is what notices a run that stopped altogether.
    notify.observe(settings, report.findings)
    return report

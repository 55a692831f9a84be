"""``health``: check that the data is safe; the exit code is the verdict."""

from __future__ import annotations

import sys

import click

from tablettracker_backups import notify
from tablettracker_backups.cli.common import (
    BackupsCommand,
    emit_json,
    heading,
    json_option,
    print_health,
    site_command,
    site_summary,
)
from tablettracker_backups.errors import BackupError
from tablettracker_backups.health import HealthReport, current_report
from tablettracker_backups.runner import worst_exit_code
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
        sys.exit(report.exit_code)
    reports: dict[str, HealthReport | str] = {}
    for settings in site.databases:
        try:
            reports[settings.database_name] = _check(settings)
        except BackupError as exc:  # one database's trouble never hides the others' health
            reports[settings.database_name] = str(exc)
    codes = {name: r.exit_code if isinstance(r, HealthReport) else 2 for name, r in reports.items()}
    code = worst_exit_code(list(codes.values()))
    if as_json:
        emit_json(
            {
                "databases": {
                    name: r.to_dict()
                    if isinstance(r, HealthReport)
                    else {"ok": False, "error": r, "exit_code": 2}
                    for name, r in reports.items()
                },
                "exit_code": code,
            }
        )
        sys.exit(code)
    for index, settings in enumerate(site.databases):
        if index:
            click.echo("")
        heading(settings)
        found = reports[settings.database_name]
        if isinstance(found, HealthReport):
            print_health(found)
        else:
            click.echo(f"Error: {settings.database_name}: {found}", err=True)
    click.echo("")
    click.echo(site_summary(codes, code))
    sys.exit(code)


def _check(settings: Settings) -> HealthReport:
    report = current_report(settings)
    # A second scheduled task running ``health`` is what notices a run that stopped altogether.
    notify.observe(settings, report.findings)
    return report

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
    settings_command,
)
from tablettracker_backups.health import current_report
from tablettracker_backups.settings import Settings


@click.command(cls=BackupsCommand)
@settings_command
@json_option
def health(settings: Settings, as_json: bool) -> None:
    """Check that the data is safe; exit 0 ok, 1 warning, 2 critical.

    Checks the live database (quick_check), the age of the newest (verified) backup against the
    interval, recent checksums, free disk space, retention slots, copies agreeing, and whether
    the scheduled task still runs. Writes status.json and appends problems to alerts.jsonl,
    and tells the owner what changed since the last check (BACKUPS_NOTIFY).

    \b
    Example:
      tablettracker-backups health || echo "backups need attention"
    """

    report = current_report(settings)
    # A second scheduled task running ``health`` is what notices a run that stopped altogether.
    notify.observe(settings, report.findings)
    if as_json:
        emit_json(report.to_dict())
    else:
        print_health(report)
    sys.exit(report.exit_code)

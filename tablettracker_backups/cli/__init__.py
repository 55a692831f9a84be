"""The command-line face: one click group, the same whichever way it is started:
``tablettracker-backups`` (the console script, which adds ``demo``), ``python -m
tablettracker_backups``, and ``flask backups`` (the host app's ``flask`` command; the extension
adds this group in ``init_app``). Each command parses options, calls one core function and turns
its result into text (or ``--json``) and an exit code. Only this package ends the process.

The layout is borg's ``archiver/*_cmd.py``: one module per command (``backup_cmd.py``,
``restore_cmd.py``, ...; ``pin_cmd.py`` holds pin and unpin), and ``common.py`` for what several
share (the common options, settings resolution, JSON and progress output, exit codes, the audit
entry and the group's handling of failures). This module only wires them: command modules import
``common`` and the core, never each other, and the core never imports this package.

Exit codes: 0 ok, 1 warning, 2 critical or failed, 3 another operation holds the lock; 141
when standard output was closed early (``... | head -1``), which is not an error.
"""

from __future__ import annotations

import click

from tablettracker_backups.cli import (
    adopt_cmd,
    backup_cmd,
    export_cmd,
    health_cmd,
    init_cmd,
    keygen_cmd,
    list_cmd,
    metrics_cmd,
    migrate_cmd,
    notify_cmd,
    pin_cmd,
    prune_cmd,
    restore_cmd,
    run_cmd,
    show_cmd,
    status_cmd,
    verify_cmd,
)
from tablettracker_backups.cli.common import BackupsGroup
from tablettracker_backups.version import __version__


@click.group(cls=BackupsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tablettracker-backups")
def cli() -> None:
    """Verified, rotated, restorable backups of TabletTracker's SQLite database.

    \b
    In a Flask app (its config is the configuration):
      First time:      flask --app tablettracker backups init
      Scheduled task:  flask --app /home/me/tablettracker backups run  (init prints it)
      Check:           flask --app tablettracker backups status
    Standalone (a config file is read only where named):
      First time:      tablettracker-backups init --database instance/tablet_counter.db
      Scheduled task:  tablettracker-backups run --config ~/backups.toml  (init prints it)
      Check:           tablettracker-backups status --config ~/backups.toml

    Exit codes: 0 ok, 1 warning, 2 critical or failed, 3 busy (another operation holds the lock).
    """


cli.add_command(backup_cmd.backup)
cli.add_command(list_cmd.list_backups)
cli.add_command(show_cmd.show)
cli.add_command(verify_cmd.verify)
cli.add_command(prune_cmd.prune)
cli.add_command(health_cmd.health)
cli.add_command(status_cmd.status)
cli.add_command(run_cmd.run_command)
cli.add_command(notify_cmd.notify_test)
cli.add_command(metrics_cmd.metrics)
cli.add_command(init_cmd.init)
cli.add_command(keygen_cmd.keygen)
cli.add_command(pin_cmd.pin)
cli.add_command(pin_cmd.unpin)
cli.add_command(adopt_cmd.adopt)
cli.add_command(restore_cmd.restore)
cli.add_command(export_cmd.export)
cli.add_command(migrate_cmd.migrate_command, name="migrate")

__all__ = ["cli"]

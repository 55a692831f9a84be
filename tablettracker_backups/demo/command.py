"""``tablettracker-backups demo``: the demo TabletTracker with the backup pages, on 127.0.0.1.

Part of the console script (:mod:`tablettracker_backups.console`), not of ``flask backups``: a
host app has no use for a demo of itself.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import click
from werkzeug.serving import run_simple

from tablettracker_backups.backup import create_backup
from tablettracker_backups.demo.app import create_app
from tablettracker_backups.errors import ConfigError
from tablettracker_backups.store import BackupStore


@click.command()
@click.option("--port", default=5000, show_default=True, help="Port to serve on (127.0.0.1).")
@click.option(
    "--instance",
    "instance",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("instance"),
    show_default=True,
    help="Instance folder for the demo database and its backups.",
)
@click.option(
    "--one-database",
    "one_database",
    is_flag=True,
    help="Back up only TabletTracker's database (a site of one), not its audit log too.",
)
def demo(port: int, instance: Path, one_database: bool) -> None:
    """Run the demo TabletTracker with the backup pages on a seeded SQLite database.

    Creates the instance folder and its databases on first use (TabletTracker's, and an
    audit log the app writes in the same transaction as each change), prints the address,
    the admin login and the scheduled-task token, and serves on 127.0.0.1 until Ctrl+C. Both
    databases are backed up, as a site of two (``tablets`` and ``audit``), each in its own
    folder under the instance's ``backups/``.

    \b
    Example:
      tablettracker-backups demo --port 5000 --instance ./instance
    """
    if not 0 < port < 65536:
        raise click.BadParameter("must be between 1 and 65535", param_hint="--port")
    _check_port_free(port)
    app = create_app({"INSTANCE_PATH": instance.absolute(), "DEMO_SITE": not one_database})
    with app.app_context():
        members = [m.settings for m in app.extensions["tablettracker_backups"].members.values()]
    for settings in members:
        if not BackupStore(settings).ids():
            result = create_backup(settings, kind="manual", trigger="demo")
            click.echo(f"First backup {result.metadata.id} verified in {settings.backup_dir}")
    url = f"http://127.0.0.1:{port}/"
    # The CLI has no app to read its settings from: it needs the database (and, in a site,
    # its folder) named. And the program as it was started (.venv/bin/...), which need not
    # be on PATH.
    started_as = sys.argv[0] if Path(sys.argv[0]).name == "tablettracker-backups" else None
    program = started_as or "tablettracker-backups"
    for settings in members:
        shown = f" ({settings.database_name})" if len(members) > 1 else ""
        click.echo(f"Database{shown}: {settings.database}")
        click.echo(f"Backups{shown}:  {settings.backup_dir}")
    for settings in members:
        folder = (
            f" --database-name {settings.database_name} --backup-dir {settings.backup_dir}"
            if len(members) > 1
            else ""
        )
        click.echo(f"From a shell: {program} list --database {settings.database}{folder}")
    click.echo(f"Open:        {url}  (backups at {url}admin/backups/)")
    click.echo(f"Admin login: {app.config['DEMO_ADMIN']} / {app.config['DEMO_PASSWORD']}")
    click.echo(f"Non-admin:   staff / {app.config['DEMO_PASSWORD']}")
    click.echo(
        f"Task URL:    curl -X POST -H 'Authorization: Bearer {app.config['BACKUPS_TASK_TOKEN']}'"
        f" {url}tasks/backups/run"
    )
    click.echo("Press Ctrl+C to stop.")
    try:
        run_simple("127.0.0.1", port, app, threaded=True, use_reloader=False)
    except OSError as exc:
        raise ConfigError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror}") from exc


def _check_port_free(port: int) -> None:
    """Fail in one line before printing anything when the port is taken (werkzeug would exit)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve on 127.0.0.1:{port}: {exc.strerror}; choose another with --port"
            ) from exc

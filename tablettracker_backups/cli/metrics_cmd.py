"""``metrics``: the Prometheus metrics, printed or written for node_exporter."""

from __future__ import annotations

from pathlib import Path

import click

from tablettracker_backups.cli.common import BackupsCommand, site_command
from tablettracker_backups.site import Site
from tablettracker_backups.store import BackupStore


@click.command(cls=BackupsCommand)
@click.option(
    "--textfile",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the metrics to this file atomically (node_exporter's textfile collector) "
    "instead of printing them.",
)
@site_command
def metrics(site: Site, textfile: Path | None) -> None:
    """Print the Prometheus metrics, or write them for node_exporter.

    Read from the backup folder and status file now; nothing is hashed or sent anywhere.
    Every database of a site (or the one --database picks), each series labelled with its name.

    \b
    Examples:
      tablettracker-backups metrics
      tablettracker-backups metrics --textfile /var/lib/node_exporter/textfile/backups.prom
    """

    from tablettracker_backups import metrics as prometheus

    for settings in site.databases:
        BackupStore(settings).require_folder()  # a mistyped --backup-dir: say so, create nothing
    if textfile is None:
        click.echo(prometheus.render(site.databases).decode(), nl=False)
        return
    prometheus.write_textfile(site.databases, textfile.expanduser().absolute())

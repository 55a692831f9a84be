"""The console script, ``tablettracker-backups``: every CLI command plus ``demo``.

``flask backups`` gets the CLI group alone; the demo starts a host app of its own, so it joins
here, where nothing imports it back.
"""

from __future__ import annotations

from tablettracker_backups.cli import cli
from tablettracker_backups.cli.common import BackupsGroup, closed_pipe
from tablettracker_backups.demo.command import demo

console = BackupsGroup(
    name="tablettracker-backups",
    commands={**cli.commands, "demo": demo},
    params=list(cli.params),
    help=cli.help,
    context_settings=cli.context_settings,
)


def main() -> None:
    """Console-script entry point."""
    try:
        console.main(prog_name="tablettracker-backups")
    except BrokenPipeError:  # e.g. `--help | head -1`, outside any command
        closed_pipe()


__all__ = ["console", "main"]

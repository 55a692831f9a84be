"""``notify-test``: send a test message to every notification target."""

from __future__ import annotations

import dataclasses
import sys

import click

from tablettracker_backups import notify
from tablettracker_backups.cli.common import (
    EXIT_CRITICAL,
    BackupsCommand,
    emit_json,
    json_option,
    settings_command,
)
from tablettracker_backups.errors import ConfigError
from tablettracker_backups.settings import Settings


@click.command("notify-test", cls=BackupsCommand)
@settings_command
@json_option
def notify_test(settings: Settings, as_json: bool) -> None:
    """Send a test message to every notification target and show how each went.

    Targets are the Apprise URLs in BACKUPS_NOTIFY (shown here with secrets masked). Exit 0
    when every target accepted the message, 2 when any failed or none is configured.

    \b
    Example:
      BACKUPS_NOTIFY='mailtos://me:app-password@gmail.com' tablettracker-backups notify-test
    """

    if not settings.notify:
        raise ConfigError(
            "no notification targets: set BACKUPS_NOTIFY to one or more Apprise URLs "
            "(mailtos://, slack://, tgram://, ntfy://, json:// ...)"
        )
    results = notify.send_test(settings)
    if as_json:
        emit_json([dataclasses.asdict(r) for r in results])
    else:
        for result in results:
            outcome = f"ok ({result.seconds:.1f}s)" if result.ok else f"FAILED: {result.error}"
            click.echo(f"{result.target}: {outcome}")
    if not all(r.ok for r in results):
        sys.exit(EXIT_CRITICAL)

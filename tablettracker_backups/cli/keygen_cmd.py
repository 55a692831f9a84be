"""``keygen``: make an age identity for encrypted backups."""

from __future__ import annotations

from pathlib import Path

import click

from tablettracker_backups.cli.common import BackupsCommand
from tablettracker_backups.encryption import create_identity_file, fingerprint

#: Where ``keygen`` writes the identity unless told otherwise (the current folder).
DEFAULT_IDENTITY_FILE = "tablettracker-backups-identity.txt"


@click.command(cls=BackupsCommand)
@click.option(
    "--output",
    "-o",
    "output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_IDENTITY_FILE,
    show_default=True,
    help="Where to write the identity (never over an existing file).",
)
@click.option(
    "--passphrase",
    is_flag=True,
    help="Protect the identity file with a passphrase (asked twice), as 'age -p' does.",
)
def keygen(output: Path, passphrase: bool) -> None:
    """Make an age identity (private key) for encrypted backups; print its public key.

    Run this on YOUR computer, not on the server. Put the printed public key (age1...) in
    BACKUPS_ENCRYPT_TO on the server. Keep the identity file OFF the server, and keep a second
    copy somewhere safe (a password manager, a USB stick in a drawer, a printout): without
    it no encrypted backup can be restored, by you or by anyone.

    The file is written owner-only (0600) and never over an existing file. The public key
    goes to standard output alone, the rest to standard error.

    \b
    Examples:
      tablettracker-backups keygen --output ~/tablettracker-backups-identity.txt
      tablettracker-backups keygen --output backups-identity.age --passphrase
    """

    secret: str | None = None
    if passphrase:
        secret = str(
            click.prompt(
                "Passphrase for the identity file", hide_input=True, confirmation_prompt=True
            )
        )
        if not secret.strip():
            raise click.UsageError("an empty passphrase protects nothing")
    path = output.expanduser().absolute()
    recipient = create_identity_file(path, passphrase=secret)
    click.echo(recipient)
    click.echo(
        f"Identity written to {path} (owner-only"
        + (", passphrase-protected" if secret else "")
        + f"); key fingerprint {fingerprint(recipient)}.",
        err=True,
    )
    click.echo(f"On the server, set:  BACKUPS_ENCRYPT_TO={recipient}", err=True)
    click.echo(
        "Keep the identity file OFF the server, and a second copy somewhere safe: without it "
        "the encrypted backups cannot be restored.",
        err=True,
    )

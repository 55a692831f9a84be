"""``verify``: fully check the local copies of backups, or the offsite ones."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tablettracker_backups import notify
from tablettracker_backups.cli.common import (
    EXIT_CRITICAL,
    EXIT_WARNING,
    BackupsCommand,
    audit_command,
    emit_json,
    identity_option,
    json_option,
    open_identity,
    pick_backup,
    settings_command,
)
from tablettracker_backups.encryption import Identity
from tablettracker_backups.errors import BackupError
from tablettracker_backups.metadata import validate_backup_id
from tablettracker_backups.offsite.client import OffsiteStore
from tablettracker_backups.offsite.sync import verify_offsite
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import CheckDepth
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import failure_event, verify_backup


@click.command(cls=BackupsCommand)
@click.argument("backup_id", metavar="[ID]", required=False)
@click.option("--all", "verify_all", is_flag=True, help="Verify every backup.")
@click.option(
    "--offsite",
    is_flag=True,
    help="Download and check the offsite copies instead of the local ones.",
)
@identity_option
@settings_command
@json_option
def verify(
    settings: Settings,
    backup_id: str | None,
    verify_all: bool,
    offsite: bool,
    identity_file: Path | None,
    as_json: bool,
) -> None:
    """Fully check backups: checksum, decompression, integrity_check, row counts.

    Without ID, checks the newest backup (the newest regular one, as in status; a safety
    snapshot is checked by its ID or with --all). Exit 0 when every copy passed, 1 when some copy is
    damaged but another is sound, 2 when a backup has no sound copy. With --offsite, checks
    the offsite copies (downloaded to a scratch file, then removed); exit 2 when any is
    damaged.

    Encrypted copies: without --identity only the ciphertext is checked (age header, size,
    SHA-256). With it, the full drill runs: decrypt, hash, integrity_check, row counts. Run
    'verify --offsite --identity FILE' now and then where the identity is kept: health
    reminds you when no such drill passed within BACKUPS_S3_VERIFY_PERIOD_DAYS. Exit 1 when
    the identity could not open some copy (it names the keys that would).

    \b
    Examples:
      tablettracker-backups verify
      tablettracker-backups verify --all --json
      tablettracker-backups verify --offsite --all
      tablettracker-backups verify --offsite --identity ~/keys/backups-identity.txt
    """

    if verify_all and backup_id:
        raise click.UsageError("give an ID or --all, not both")
    identity = open_identity(identity_file)
    if offsite:
        _verify_offsite(settings, backup_id, verify_all, identity, as_json)
        return
    store = BackupStore(settings)
    if verify_all:
        ids = [info.id for info in store.list()]
    else:
        ids = [store.newest().id if not backup_id else pick_backup(settings, backup_id)]
    results = []
    for index, one in enumerate(ids, start=1):
        # One message for the whole command, not one per damaged backup.
        result = verify_backup(store, one, identity=identity, notify_owner=False)
        results.append(result)
        if not as_json:
            mark = "ok" if result.ok else ("DAMAGED COPY" if result.usable else "FAILED")
            data = _data_note(store, one)
            sealed = any(c.depth == CheckDepth.SEALED for c in result.copies)
            click.echo(
                f"[{index}/{len(ids)}] {one}: {mark}"
                + (f" ({data})" if data else "")
                + (SEALED_NOTE if sealed else "")
            )
            for copy in result.copies:
                if not copy.ok:
                    click.echo(f"    {copy.location}: {copy.error}")
            for note in sorted({c.note for c in result.copies if c.note}):
                click.echo(f"    ! {note}")
    bad = [r.id for r in results if not r.ok]
    audit_command(
        settings,
        "verify-all" if verify_all else "verify",
        ok=not bad,
        message=(
            f"verified {results[0].id}: {'damaged' if bad else 'sound'}"
            if len(results) == 1
            else f"verified {len(results)} backups"
            + (f"; damaged: {', '.join(bad)}" if bad else ": all sound")
        ),
    )
    notify.send(settings, [failure_event(settings, r) for r in results if not r.ok])
    if as_json:
        emit_json([r.to_dict() for r in results])
    if any(not r.usable for r in results):
        sys.exit(EXIT_CRITICAL)
    if any(not r.ok for r in results) or any(c.note for r in results for c in r.copies):
        sys.exit(EXIT_WARNING)


#: Said of an encrypted copy checked without its identity.
SEALED_NOTE = " (encrypted: ciphertext checked; --identity FILE for the full check)"


def _data_note(store: BackupStore, backup_id: str) -> str:
    """What a faithful copy holds, when it is worth saying (``verify`` checks copies)."""
    try:
        meta = store.get(backup_id).metadata
    except BackupError:
        return ""
    if meta is None or meta.findings.summary() == "ok":
        return ""
    return f"faithful copy; data: {meta.findings.summary()}"


def _verify_offsite(
    settings: Settings,
    backup_id: str | None,
    verify_all: bool,
    identity: Identity | None,
    as_json: bool,
) -> None:

    ids: list[str] | None
    if verify_all:
        ids = None
    elif backup_id and backup_id != "latest":
        ids = [validate_backup_id(backup_id)]
    else:
        listing = OffsiteStore.from_settings(settings).list()
        if not listing:
            raise click.ClickException("there are no backups in the offsite store")
        ids = [listing[0].id]
    results = verify_offsite(settings, ids, identity=identity)
    if as_json:
        emit_json(
            [
                {"id": r.id, "ok": r.ok, "error": r.error}
                | ({"depth": r.depth, "note": r.note} if r.encrypted else {})
                for r in results
            ]
        )
    else:
        if not results:
            click.echo("No backups in the offsite store.")
        for index, result in enumerate(results, start=1):
            sealed = SEALED_NOTE if result.depth == CheckDepth.SEALED else ""
            click.echo(
                f"[{index}/{len(results)}] offsite {result.id}: "
                + (f"ok{sealed}" if result.ok else f"DAMAGED: {result.error}")
            )
            if result.note:
                click.echo(f"    ! {result.note}")
    if any(not r.ok for r in results):
        sys.exit(EXIT_CRITICAL)
    if any(r.note for r in results):
        sys.exit(EXIT_WARNING)

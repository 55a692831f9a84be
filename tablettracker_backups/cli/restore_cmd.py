"""``restore``: bring a backup back into the live database or a file, with its preview,
its confirmation, ``--at``, ``--undo``, ``--from-offsite`` and ``--dismiss``."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from tablettracker_backups.cli.common import (
    EXIT_CRITICAL,
    EXIT_WARNING,
    BackupsCommand,
    cli_actor,
    common_options,
    emit_json,
    given_options,
    identity_option,
    json_option,
    open_identity,
    resolve_settings,
    resolve_site,
    stage_progress,
)
from tablettracker_backups.display import human_age, human_size, local_time
from tablettracker_backups.encryption import Identity, describe_keys
from tablettracker_backups.errors import ConfigError
from tablettracker_backups.group_restore import restore_group
from tablettracker_backups.groups import find_group, group_at
from tablettracker_backups.restore import (
    RestorePreview,
    RestoreResult,
    dismiss_interrupted,
    preview_restore,
    recover_from_offsite,
    restore_backup,
)
from tablettracker_backups.restore_points import Moment, parse_moment, point_at, restore_events
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore


@click.command(cls=BackupsCommand)
@click.argument("backup_id", metavar="[ID|latest]", required=False)
@click.option(
    "--undo",
    is_flag=True,
    help="Restore the newest safety snapshot: the database as it was before the last restore.",
)
@click.option(
    "--to",
    "to",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Restore into this file instead of the live database (which is left alone).",
)
@click.option(
    "--at",
    "at",
    metavar="TIME",
    help="Restore the state as of TIME (ISO 8601, e.g. 2026-11-23T20:15; no zone: local time): "
    "the newest good backup taken at or before it.",
)
@click.option("--yes", "-y", "yes", is_flag=True, help="Do not ask for confirmation (scripts).")
@click.option("--preview", is_flag=True, help="Show per-table changes; restore nothing.")
@click.option(
    "--from-offsite",
    "from_offsite",
    is_flag=True,
    help="Rebuild the database from the offsite store alone into a new file (--to PATH); "
    "needs only the BACKUPS_S3_* settings and credentials (and --identity for encrypted "
    "backups), no local backup folder.",
)
@click.option(
    "--from-database",
    "from_database",
    metavar="NAME",
    help="Restore a backup of another database (the one the backup folder belongs to, by "
    "name) into this one, on purpose; its safety snapshot goes to this database's own "
    "backup folder.",
)
@click.option(
    "--dismiss",
    is_flag=True,
    help="Forget an interrupted restore that health reports, once the database is checked.",
)
@click.option(
    "--group",
    "group_id",
    metavar="GROUP",
    help="Restore every member of this coordinated snapshot (backup --all) into its live "
    "database, all or nothing; 'list' shows the groups.",
)
@click.option(
    "--all",
    "all_databases",
    is_flag=True,
    help="With --at TIME: every database of the site, to one coordinated snapshot, all or nothing.",
)
@identity_option
@common_options
@json_option
def restore(
    config: Path | None,
    database: Path | None,
    database_name: str | None,
    backup_dir: Path | None,
    secondary_dir: Path | None,
    backup_id: str | None,
    undo: bool,
    to: Path | None,
    at: str | None,
    yes: bool,
    preview: bool,
    from_offsite: bool,
    from_database: str | None,
    dismiss: bool,
    group_id: str | None,
    all_databases: bool,
    identity_file: Path | None,
    as_json: bool,
) -> None:
    """Restore a backup into the live database (or into --to PATH).

    ID 'latest' is the newest good regular backup (never a pre-restore safety snapshot, never
    one of damaged data); --undo restores the newest safety snapshot, undoing the last restore.
    Without ID on a terminal you choose from a list. The preview (and the question before a
    restore) says which kind of backup it is.

    The backup's stored and decompressed SHA-256 are checked first (a damaged primary copy
    falls back to the secondary, then to the offsite copy). Then, under one hold of the
    database's write lock (the app's writes wait, none is lost), a safety copy of the current
    database is taken (whatever its data holds), the data is written through SQLite's backup
    API (open connections stay valid), and checked again; if that check fails the safety copy
    is put back. The safety copy is filed as a pre-restore backup afterwards (with --to an
    existing file, it is kept beside that file instead). Asks for confirmation unless --yes;
    refuses without a terminal and without --yes.

    The backup folder must belong to the database restored into (database.json); to restore
    another database's backup into it on purpose, name that database with --from-database.
    A restore that was killed leaves health critical until a restore succeeds or --dismiss.

    With --from-offsite the database is rebuilt from the offsite store alone into a file that
    does not exist yet ('latest' passes over damaged offsite backups to the newest sound one).

    Encrypted backups need --identity FILE (or BACKUPS_IDENTITY_FILE): the identity is
    decrypted into a scratch file that any error removes; a missing or wrong identity stops
    with one line naming the keys that would open the backup, and nothing is changed.

    With --at TIME instead of an ID, the state as of TIME is restored: the newest good backup
    taken at or before it, or the backup a later restore brought back. A TIME without a zone is
    local time; a time covers the whole second (or minute, or day) it is written to, so a time
    that list prints, typed back, gives that backup.

    \b
    Examples:
      tablettracker-backups restore latest --preview
      tablettracker-backups restore --at 2026-11-23T14:05 --preview
      tablettracker-backups restore 20261123T201500Z-3f9a1c
      tablettracker-backups restore --undo
      tablettracker-backups restore latest --yes --json
      tablettracker-backups restore latest --backup-dir /mnt/usb/backups --to tablet_counter.db
      tablettracker-backups restore latest --from-offsite --to instance/tablet_counter.db
      tablettracker-backups restore latest --from-offsite --identity key.txt --to new.db
      tablettracker-backups restore latest --database shop.db --backup-dir /srv/tablets-backups \
          --from-database tablet_counter
      tablettracker-backups restore --dismiss
      tablettracker-backups restore --group 20261123T201500Z-9b8c7d --config site.toml
      tablettracker-backups restore --at 2026-11-23T20:15 --all --config site.toml

    With --group GROUP (or --at TIME --all) every member of a coordinated snapshot is
    restored into its own live database, all or nothing: every member's write lock is held
    together, a safety snapshot of each is taken, each is written and checked, and if any
    write or check fails every member is put back. A kill at any point is settled by the
    next 'run' over the site (finished, or every member put back), never left mixed. The
    preview and the question list every member. --at TIME --all takes the coordinated
    snapshot that holds the state of every database as of TIME.
    """

    ctx = click.get_current_context()
    if group_id is not None or all_databases:
        others = {
            "an ID": backup_id,
            "--undo": undo,
            "--to": to,
            "--from-offsite": from_offsite,
            "--from-database": from_database,
            "--dismiss": dismiss,
        }
        given = [name for name, value in others.items() if value]
        if given or (group_id is not None and (all_databases or at is not None)):
            raise click.UsageError(
                "--group GROUP, or --at TIME --all, restores a coordinated snapshot: give no "
                + ", ".join(given or ["--at or --all with --group"])
            )
        if all_databases and at is None:
            raise click.UsageError("--all restores the site as of --at TIME (or use --group)")
        _restore_group_command(
            ctx,
            config,
            group_id,
            at,
            yes=yes,
            preview=preview,
            identity_file=identity_file,
            as_json=as_json,
        )
        return
    settings = _restore_settings(ctx, config=config, database=database, to=to)
    if dismiss:
        if backup_id is not None or undo or at is not None or preview or from_offsite:
            raise click.UsageError(
                "--dismiss takes no ID, --undo, --at, --preview or --from-offsite"
            )
        _dismiss(settings, as_json=as_json)
        return
    identity = open_identity(identity_file)
    moment = None
    if at is not None:
        if backup_id is not None or from_offsite or undo:
            raise click.UsageError(
                "--at chooses the backup: give no ID, no --undo and no --from-offsite"
            )
        moment, backup_id = _state_at(settings, at, as_json=as_json)
    if from_offsite:
        if preview or undo:
            raise click.UsageError("--from-offsite takes an ID or 'latest' (no --preview, --undo)")
        _recover_from_offsite(settings, backup_id or "latest", to, identity, as_json)
        return
    backup_id = _restore_choice(settings, backup_id, undo=undo, as_json=as_json)
    target = _target(settings, to)
    preview_settings = dataclasses.replace(settings, database=target)
    asked = {} if moment is None else _moment_json(moment)
    if preview:
        _show_preview(preview_settings, backup_id, identity, asked=asked, as_json=as_json)
        return
    if target.exists() and not yes:
        _confirm_restore(preview_settings, backup_id, target, identity, live=to is None)
    result = restore_backup(
        settings,
        backup_id,
        to=to,
        actor=cli_actor(),
        identity=identity,
        progress=stage_progress(not as_json, width=15, end_after=None),
        from_database=from_database,
        target_settings=None if from_database is None else _own_settings(ctx, config, target),
        raw_reads=True,  # a process of its own: no other connection to the database here
    )
    if as_json:
        emit_json({**result.to_dict(), **asked})
    else:
        _print_restored(settings, result, _undo_options(ctx))
    if result.fell_back or result.warnings:
        sys.exit(EXIT_WARNING)


def _restore_settings(
    ctx: click.Context, *, config: Path | None, database: Path | None, to: Path | None
) -> Settings:
    """Settings as every command resolves them; with ``--to`` and no database configured
    (a fresh machine with only a backup folder), the ``--to`` file stands in for it."""

    options = given_options(ctx)
    try:
        return resolve_settings(ctx, config=config, options=options)
    except ConfigError:
        if database is not None or to is None:
            raise
        return resolve_settings(ctx, config=config, options={**options, "database": to})


def _dismiss(settings: Settings, *, as_json: bool) -> None:
    """``restore --dismiss``: forget the interrupted restore that health reports."""
    record = dismiss_interrupted(settings, actor=cli_actor())
    if as_json:
        emit_json({"dismissed": {"backup_id": record.backup_id, "target": record.target}})
    else:
        click.echo(
            f"Dismissed the interrupted restore of {record.backup_id} into {record.target} "
            f"(it stopped at {record.stage})."
        )


def _state_at(settings: Settings, at: str, *, as_json: bool) -> tuple[Moment, str]:
    """``restore --at TIME``: the moment asked for, and the backup that holds the state as
    of it (said on the terminal)."""
    moment = parse_moment(at)
    chosen = point_at(
        BackupStore(settings).list(),
        moment.at,
        now=datetime.now(timezone.utc),
        events=restore_events(settings),
    )
    if not as_json:
        click.echo(
            f"The state as of {moment.describe()}: backup {chosen.id}, taken "
            f"{local_time(chosen.created_at)} ({chosen.kind})."
        )
    return moment, chosen.id


def _restore_choice(settings: Settings, backup_id: str | None, *, undo: bool, as_json: bool) -> str:
    """The backup to restore: the ID given, the newest safety snapshot for --undo, or one
    chosen from a list on a terminal."""
    if undo:
        if backup_id is not None:
            raise click.UsageError("give an ID or --undo, not both")
        return BackupStore(settings).newest_safety_snapshot().id
    if backup_id is not None:
        return backup_id
    if not sys.stdin.isatty() or as_json:
        raise click.UsageError(
            "give a backup ID, 'latest' or --undo (see: "
            f"{settings.command_line('list', where=False)})"
        )
    return _choose_backup(settings)


def _choose_backup(settings: Settings) -> str:
    """Ask on the terminal which backup to restore; newest first."""

    infos = BackupStore(settings).list()
    if not infos:
        raise click.ClickException(f"no backups in {settings.backup_dir}")
    click.echo(f"    {'ID':<24} {'TAKEN (local time)':<24} {'KIND':<11} {'SIZE':>10} VERIFIED")
    for number, info in enumerate(infos, start=1):
        click.echo(
            f"{number:>3} {info.id:<24} {local_time(info.created_at):<24} {info.kind:<11} "
            f"{human_size(info.stored_size):>10} {'yes' if info.verified else 'NO'}"
        )
    number = click.prompt(
        "Restore which backup (number)", type=click.IntRange(1, len(infos)), default=1
    )
    return infos[int(number) - 1].id


def _moment_json(moment: Moment) -> dict[str, Any]:
    """What ``--at`` asked for, in ``--json`` output."""
    return {"at": moment.at, "at_zone": "given" if moment.zone_given else "local"}


def _target(settings: Settings, to: Path | None) -> Path:
    """The file restored into: ``--to``, else the live database."""
    return (to if to is not None else settings.database).expanduser().absolute()


def _show_preview(
    settings: Settings,
    backup_id: str,
    identity: Identity | None,
    *,
    asked: dict[str, Any],
    as_json: bool,
) -> None:
    """``restore --preview``: what a restore would change, table by table; nothing restored."""
    diff = preview_restore(settings, backup_id, identity=identity)
    if as_json:
        emit_json({**diff.to_dict(), **asked})
    else:
        _print_preview(diff)


def _print_preview(preview: RestorePreview) -> None:
    """The preview on a terminal: the backup, then each table's rows then and now."""
    what = preview.describe()
    click.echo(
        f"{what[0].upper()}{what[1:]} {preview.backup_id} (taken "
        f"{local_time(preview.created_at)}, {human_age(preview.created_at)})"
        + (f", label: {preview.label}" if preview.label else "")
    )
    click.echo(
        "  against "
        + ("the current database:" if preview.live_exists else "no database (it does not exist):")
    )
    click.echo(f"  {'TABLE':<28} {'BACKUP':>12} {'NOW':>12}  CHANGE")
    for table in preview.by_impact():
        backup_rows = "-" if table.backup_rows is None else f"{table.backup_rows:,}"
        live_rows = "-" if table.live_rows is None else f"{table.live_rows:,}"
        click.echo(f"  {table.name:<28} {backup_rows:>12} {live_rows:>12}  {table.describe()}")
    if preview.compare_note:
        click.echo(f"  ({preview.compare_note})")
    for name, reason in sorted(preview.not_counted.items()):
        click.echo(f"  {name:<28} {reason}")
    if preview.schema_changed:
        click.echo("  ! the schema differs: the restore brings back the backup's schema")
    if preview.source_damaged:
        click.echo("  ! this backup holds damaged data (source-damaged): it is restored as it is")
    if preview.foreign_key_violations:
        click.echo(f"  ! it holds {preview.foreign_key_violations} foreign-key violation(s)")


def _confirm_restore(
    settings: Settings, backup_id: str, target: Path, identity: Identity | None, *, live: bool
) -> None:
    """Show what would change and ask; exit unless the person says yes on a terminal."""
    if not sys.stdin.isatty():
        click.echo(
            "Error: refusing to restore without confirmation: standard input is not a "
            "terminal; pass --yes to confirm",
            err=True,
        )
        sys.exit(EXIT_CRITICAL)
    _print_preview(preview_restore(settings, backup_id, identity=identity))
    where = "the LIVE database" if live else "the existing file"
    if not click.confirm(
        f"Replace {where} {target} with this backup? (a safety snapshot is taken first)",
        default=False,
    ):
        click.echo("Cancelled; nothing was changed.")
        sys.exit(EXIT_WARNING)


def _own_settings(ctx: click.Context, config: Path | None, target: Path) -> Settings:
    """For ``--from-database``: the target's own folders, the configuration's, without the
    options naming the other database's folder."""
    return resolve_settings(ctx, config=config, options={"database": target})


#: The options a restore repeats in the command that undoes it, and their parameter names.
UNDO_OPTIONS = {
    "--config": "config",
    "--database": "database",
    "--database-name": "database_name",
    "--backup-dir": "backup_dir",
    "--secondary-dir": "secondary_dir",
    "--to": "to",
}


def _undo_options(ctx: click.Context) -> dict[str, Path | str | None]:
    """Each option :data:`UNDO_OPTIONS` names, with its value (None when not given)."""
    return {option: ctx.params[name] for option, name in UNDO_OPTIONS.items()}


def _print_restored(
    settings: Settings, result: RestoreResult, given: dict[str, Path | str | None]
) -> None:
    """The human summary of a restore, with the command that undoes it."""
    if sys.stderr.isatty():
        click.echo("", err=True)
    for message in (*result.fell_back, *result.warnings):
        click.echo(f"Warning: {message}", err=True)
    click.echo(
        f"Restored {result.backup_id} (from the {result.source_location} copy) into "
        f"{result.target} in {result.durations.get('total', 0.0):.2f}s."
    )
    if result.safety_snapshot_id:
        # Repeat the options given, so the printed command works when pasted as it is.
        undo = [*shlex.split(settings.command), "restore", result.safety_snapshot_id]
        for option, value in given.items():
            if value is not None:
                undo += [option, str(value)]
        click.echo(
            f"Safety snapshot of what was there before: {result.safety_snapshot_id} "
            f"(undo with: {shlex.join(undo)})"
        )
    if result.safety_kept:
        click.echo(f"What {result.target} held before is kept beside it: {result.safety_kept}")


def _recover_from_offsite(
    settings: Settings, backup_id: str, to: Path | None, identity: Identity | None, as_json: bool
) -> None:
    """``restore --from-offsite``: a new database file from the offsite store alone."""

    if settings.offsite is None:
        raise click.UsageError(
            "--from-offsite needs an offsite store: set BACKUPS_S3_BUCKET (and the endpoint and "
            "credentials) or BACKUPS_RCLONE_REMOTE"
        )
    target = _target(settings, to)
    result = recover_from_offsite(settings, backup_id, to=target, identity=identity)
    if as_json:
        emit_json(
            {
                "backup_id": result.id,
                "created_at": result.metadata.created_at,
                "source_location": "offsite",
                "target": str(result.path),
                "skipped": [{"id": i, "error": e} for i, e in result.skipped],
            }
        )
    else:
        for skipped, why in result.skipped:
            click.echo(
                f"Warning: offsite backup {skipped} is damaged, passed over: {why}", err=True
            )
        encryption = result.metadata.encryption
        click.echo(
            f"Recovered {result.id} (taken {local_time(result.metadata.created_at)}) from the "
            f"offsite store into {result.path}; checked: SHA-256, integrity_check, row counts"
            + (f"; decrypted ({describe_keys(encryption.recipients)})." if encryption else ".")
        )
    if result.skipped:
        sys.exit(EXIT_WARNING)


# -- a coordinated snapshot: every member, all or nothing -----------------------------------------


def _restore_group_command(
    ctx: click.Context,
    config: Path | None,
    group_id: str | None,
    at: str | None,
    *,
    yes: bool,
    preview: bool,
    identity_file: Path | None,
    as_json: bool,
) -> None:
    """``restore --group GROUP`` and ``restore --at TIME --all``."""
    site = resolve_site(ctx, config=config, options=given_options(ctx))
    identity = open_identity(identity_file)
    asked: dict[str, Any] = {}
    if at is not None:
        moment = parse_moment(at)
        group, how = group_at(site.databases, moment.at, now=datetime.now(timezone.utc))
        asked = _moment_json(moment)
        if not as_json:
            click.echo(
                f"The state of every database as of {moment.describe()}: coordinated snapshot "
                f"{group.id}, taken {local_time(group.created_at)} ({how})."
            )
    else:
        assert group_id is not None
        group = find_group(site.databases, group_id)
    members = [(m.name, m.settings, m.backup_id) for m in group.members if m.settings]
    if preview or (not yes and not as_json):
        previews = [
            (name, preview_restore(settings, backup_id, identity=identity))
            for name, settings, backup_id in members
        ]
        if preview:
            if as_json:
                emit_json(
                    {"group": group.id, "members": {n: p.to_dict() for n, p in previews}, **asked}
                )
            else:
                _print_group_preview(group.id, previews)
            return
    if not yes:
        if not sys.stdin.isatty() or as_json:
            click.echo(
                "Error: refusing to restore without confirmation: standard input is not a "
                "terminal; pass --yes to confirm",
                err=True,
            )
            sys.exit(EXIT_CRITICAL)
        _print_group_preview(group.id, previews)
        names = ", ".join(f"{name} ({settings.database})" for name, settings, _ in members)
        if not click.confirm(
            f"Replace the LIVE databases {names} with coordinated snapshot {group.id}? (a "
            "safety snapshot of each is taken first)",
            default=False,
        ):
            click.echo("Cancelled; nothing was changed.")
            sys.exit(EXIT_WARNING)
    result = restore_group(
        site.databases,
        group.id,
        actor=cli_actor(),
        identity=identity,
        progress=stage_progress(not as_json, width=15, end_after=None),
        raw_reads=True,  # a process of its own: no other connection to the databases here
    )
    warned = any(r.fell_back or r.warnings for _, r in result.members)
    if as_json:
        emit_json({**result.to_dict(), **asked})
        if warned:
            sys.exit(EXIT_WARNING)
        return
    if sys.stderr.isatty():
        click.echo("", err=True)
    for line in result.settled:
        click.echo(f"Note: {line}", err=True)
    click.echo(
        f"Restored coordinated snapshot {result.group_id} (taken "
        f"{local_time(result.created_at)}) into {len(result.members)} databases, all checked:"
    )
    for name, done in result.members:
        for message in (*done.fell_back, *done.warnings):
            click.echo(f"Warning: {name}: {message}", err=True)
        click.echo(
            f"  {name}: {done.backup_id} into {done.target}"
            + (f"; safety snapshot {done.safety_snapshot_id}" if done.safety_snapshot_id else "")
        )
    if warned:
        sys.exit(EXIT_WARNING)


def _print_group_preview(group_id: str, previews: list[tuple[str, RestorePreview]]) -> None:
    """Every member's preview, one section each."""
    click.echo(f"Coordinated snapshot {group_id}: {len(previews)} databases, all or nothing.")
    for name, member in previews:
        click.echo("")
        click.echo(f"== {name} ==")
        _print_preview(member)

"""The command-line face: ``tablettracker-backups``, ``python -m tablettracker_backups`` and
``flask backups``. Each command parses options, calls one core function and turns its result
into text (or ``--json``) and an exit code. Only this module ends the process.

Exit codes: 0 ok, 1 warning, 2 critical or failed, 3 another operation holds the lock.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shlex
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from tablettracker_backups.backup import create_backup
from tablettracker_backups.bootstrap import initialise
from tablettracker_backups.display import human_age, human_size, local_time
from tablettracker_backups.errors import (
    BackupError,
    ConfigError,
    LockedError,
    NoDatabaseConfigured,
)
from tablettracker_backups.health import Finding, check_health, describe_recovery, save_report
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import validate_backup_id
from tablettracker_backups.offsite.client import OffsiteStore
from tablettracker_backups.offsite.policy import copy_states
from tablettracker_backups.offsite.sync import verify_offsite
from tablettracker_backups.progress import StageProgress
from tablettracker_backups.prune import plan_for_store
from tablettracker_backups.prune import prune as prune_backups
from tablettracker_backups.restore import (
    RestoreResult,
    preview_restore,
    recover_from_offsite,
    restore_backup,
)
from tablettracker_backups.restore_points import Moment, parse_moment, point_at
from tablettracker_backups.retention import plan_for_backups
from tablettracker_backups.runner import run
from tablettracker_backups.settings import (
    Settings,
    default_config_path,
    load_settings,
    settings_from_mapping,
)
from tablettracker_backups.states import Level
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup
from tablettracker_backups.version import __version__

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_WARNING, EXIT_CRITICAL, EXIT_LOCKED = 0, 1, 2, 3


class BackupsGroup(click.Group):
    """A click group that turns library errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LockedError as exc:
            click.echo(f"Busy: {exc}", err=True)
            ctx.exit(EXIT_LOCKED)
        except BackupError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_CRITICAL)
        except OSError as exc:
            click.echo(f"Error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
            ctx.exit(EXIT_CRITICAL)
        except KeyboardInterrupt:
            click.echo("Interrupted; nothing partial was kept.", err=True)
            ctx.exit(130)


def common_options(func: F) -> F:
    """The options every command takes: where the database and backups are, and output."""
    options = [
        click.option(
            "--config",
            "config",
            type=click.Path(path_type=Path, dir_okay=False),
            envvar="BACKUPS_CONFIG",
            help="TOML config file ([backups] table). Default: "
            "~/.config/tablettracker-backups/config.toml if it exists.",
        ),
        click.option(
            "--database",
            type=click.Path(path_type=Path),
            envvar="BACKUPS_DATABASE",
            help="The live SQLite database. [env: BACKUPS_DATABASE]",
        ),
        click.option(
            "--backup-dir",
            type=click.Path(path_type=Path, file_okay=False),
            envvar="BACKUPS_DIR",
            help="Primary backup folder (default: 'backups' beside the database). "
            "[env: BACKUPS_DIR]",
        ),
        click.option(
            "--secondary-dir",
            type=click.Path(path_type=Path, file_okay=False),
            envvar="BACKUPS_SECONDARY_DIR",
            help="Optional second backup folder, ideally on another disk. "
            "[env: BACKUPS_SECONDARY_DIR]",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def json_option(func: F) -> F:
    """``--json``: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def resolve_settings(
    ctx: click.Context,
    *,
    config: Path | None,
    database: Path | None,
    backup_dir: Path | None,
    secondary_dir: Path | None,
) -> Settings:
    """Settings from the host Flask app (under ``flask backups``) or from config/env/options."""
    overrides = {"database": database, "dir": backup_dir, "secondary_dir": secondary_dir}
    app_values = _flask_app_values(ctx)
    if app_values is not None:
        merged = dict(app_values)
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return settings_from_mapping(merged)
    try:
        return load_settings(config_file=config, overrides=overrides)
    except NoDatabaseConfigured:
        raise ConfigError(
            "no database configured: pass --database PATH or --config FILE, or set BACKUPS_DATABASE"
        ) from None


def _flask_app_values(ctx: click.Context) -> dict[str, Any] | None:
    """The host app's BACKUPS_* values when running as ``flask backups``; else None."""
    try:
        from flask.cli import ScriptInfo
    except ImportError:  # pragma: no cover - Flask is a dependency
        return None
    info = ctx.find_object(ScriptInfo)
    if info is None:
        return None
    app = info.load_app()
    state = app.extensions.get("tablettracker_backups")
    if state is None:
        raise click.UsageError("this Flask app has not called BackupManager.init_app(app)")
    return dict(state.values)


def settings_command(func: F) -> F:
    """Resolve the common options into a ``settings`` argument."""

    @common_options
    @functools.wraps(func)
    def wrapper(
        config: Path | None,
        database: Path | None,
        backup_dir: Path | None,
        secondary_dir: Path | None,
        **kwargs: Any,
    ) -> Any:
        ctx = click.get_current_context()
        settings = resolve_settings(
            ctx,
            config=config,
            database=database,
            backup_dir=backup_dir,
            secondary_dir=secondary_dir,
        )
        return func(settings, **kwargs)

    return cast(F, wrapper)


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def stage_progress(
    enabled: bool, *, width: int = 9, end_after: str | None = "compress"
) -> StageProgress | None:
    """A progress display on stderr for a terminal, one line per stage; None otherwise."""
    if not enabled or not sys.stderr.isatty():
        return None
    state: dict[str, Any] = {"stage": None, "percent": -1}

    def update(stage: str, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if stage != state["stage"]:
            if state["stage"] is not None:
                click.echo("", err=True)
            state["stage"] = stage
        elif percent == state["percent"] and done < total:
            return
        state["percent"] = percent
        click.echo(f"\r{stage:>{width}}: {percent:3d}%", err=True, nl=False)
        if done >= total and stage == end_after:
            click.echo("", err=True)

    return update


@click.group(cls=BackupsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tablettracker-backups")
def cli() -> None:
    """Verified, rotated, restorable backups of TabletTracker's SQLite database.

    \b
    First time:      tablettracker-backups init --database instance/tablet_counter.db
    Scheduled task:  tablettracker-backups run --config ~/.config/tablettracker-backups/config.toml
    Check:           tablettracker-backups status

    Exit codes: 0 ok, 1 warning, 2 critical or failed, 3 busy (another operation holds the lock).
    """


# -- commands ----------------------------------------------------------------------------------


@cli.command()
@settings_command
@json_option
def backup(settings: Settings, as_json: bool) -> None:
    """Take, verify and store a backup now.

    \b
    Example:
      tablettracker-backups backup --database instance/tablet_counter.db
    """

    result = create_backup(
        settings, kind="manual", trigger="cli", progress=stage_progress(not as_json)
    )
    meta = result.metadata
    if as_json:
        emit_json(
            {
                "id": meta.id,
                "created_at": meta.created_at,
                "size": meta.stored_size,
                "raw_size": meta.raw_size,
                "sha256": meta.sha256,
                "verified": meta.verification.ok,
                "locations": list(result.locations),
                "warnings": list(result.warnings),
            }
        )
    else:
        click.echo(
            f"Backup {meta.id} verified and stored in {', '.join(result.locations)} "
            f"({human_size(meta.raw_size)} database, {human_size(meta.stored_size)} stored, "
            f"{meta.durations['total']:.2f}s)."
        )
        for warning in result.warnings:
            click.echo(f"Warning: {warning}", err=True)
    if result.warnings:
        sys.exit(EXIT_WARNING)


@cli.command("list")
@settings_command
@json_option
def list_backups(settings: Settings, as_json: bool) -> None:
    """List backups, newest first, with why each is kept and where its copies are.

    \b
    Example:
      tablettracker-backups list --json | jq '.[0].id'
    """

    store = BackupStore(settings)
    store.require_folder()
    infos = store.list()
    plan = plan_for_backups(settings, infos, now=datetime.now(timezone.utc))
    # From the local offsite record only: listing never waits on the network.
    offsite = copy_states(settings, infos)

    def as_dict(info: Any) -> dict[str, Any]:
        document: dict[str, Any] = dict(info.to_dict(), kept_because=list(plan.reasons(info.id)))
        if offsite:
            document["copies"]["offsite"] = offsite[info.id]
        return document

    if as_json:
        emit_json([as_dict(i) for i in infos])
        return
    if not infos:
        click.echo("No backups yet. Take one with: tablettracker-backups backup")
        return
    shown = {
        i.id: " ".join(f"{c.location[:3]}:{c.state}" for c in i.copies)
        + (f" off:{offsite[i.id]}" if offsite else "")
        for i in infos
    }
    width = max(22, *(len(text) for text in shown.values()))
    click.echo(
        f"{'ID':<24} {'TAKEN (local time)':<24} {'KIND':<11} {'SIZE':>10} "
        f"{'VERIFIED':<8} {'COPIES':<{width}} KEPT BECAUSE"
    )
    for info in infos:
        reasons = ", ".join(plan.reasons(info.id)) or "(pruned next run)"
        click.echo(
            f"{info.id:<24} {local_time(info.created_at):<24} {info.kind:<11} "
            f"{human_size(info.stored_size):>10} {'yes' if info.verified else 'NO':<8} "
            f"{shown[info.id]:<{width}} {reasons}"
        )
        for problem in info.problems:
            click.echo(f"    ! {problem}")


def _pick(settings: Settings, backup_id: str) -> str:

    if backup_id == "latest":
        return BackupStore(settings).latest().id
    return validate_backup_id(backup_id)


@cli.command()
@click.argument("backup_id", metavar="ID")
@settings_command
@json_option
def show(settings: Settings, backup_id: str, as_json: bool) -> None:
    """Show one backup's metadata, copies and per-table row counts. ID may be 'latest'.

    \b
    Example:
      tablettracker-backups show 20261123T201500Z-3f9a1c
    """

    store = BackupStore(settings)
    info = store.get(_pick(settings, backup_id))
    reasons = plan_for_store(store).reasons(info.id)
    offsite = copy_states(settings, store.list()).get(info.id)
    if as_json:
        document: dict[str, Any] = dict(info.to_dict(), kept_because=list(reasons))
        if offsite is not None:
            document["copies"]["offsite"] = offsite
        if info.metadata is not None:
            document["metadata"] = json.loads(info.metadata.to_json())
        emit_json(document)
        _fail_without_metadata(info)
        return
    click.echo(f"Backup {info.id}")
    click.echo(f"  taken:       {local_time(info.created_at)} ({human_age(info.created_at)})")
    click.echo(f"  kind:        {info.kind}")
    click.echo(f"  verified:    {'yes' if info.verified else 'NO'}")
    click.echo(
        f"  copies:      {', '.join(f'{c.location} {c.state}' for c in info.copies)}"
        + (f", offsite {offsite}" if offsite is not None else "")
    )
    click.echo(f"  kept:        {', '.join(reasons) or 'not kept by retention'}")
    meta = info.metadata
    if meta is not None:
        click.echo(f"  trigger:     {meta.trigger}")
        click.echo(
            f"  source:      {meta.source.path} ({meta.source.journal_mode} mode, "
            f"{meta.source.page_count} pages of {meta.source.page_size} B)"
        )
        click.echo(
            f"  sizes:       {human_size(meta.raw_size)} database, "
            f"{human_size(meta.stored_size)} stored ({meta.compression} "
            f"level {meta.compression_level})"
        )
        click.echo(f"  sha256:      {meta.sha256}")
        click.echo(
            f"  verified at: {local_time(meta.verification.verified_at)}"
            + (f" ({meta.verification.error})" if meta.verification.error else "")
        )
        click.echo("  rows:")
        for table, count in sorted(meta.row_counts.items()):
            click.echo(f"    {table:<28} {count:>12,}")
    for problem in info.problems:
        click.echo(f"  ! {problem}")
    _fail_without_metadata(info)


def _fail_without_metadata(info: Any) -> None:
    """Damaged metadata in every copy is bad input for ``show``: one line, exit 2."""
    if info.metadata is None:
        problem = info.problems[0] if info.problems else "no readable metadata"
        click.echo(f"Error: backup {info.id} is damaged: {problem}", err=True)
        sys.exit(EXIT_CRITICAL)


@cli.command()
@click.argument("backup_id", metavar="[ID]", required=False)
@click.option("--all", "verify_all", is_flag=True, help="Verify every backup.")
@click.option(
    "--offsite",
    is_flag=True,
    help="Download and check the offsite copies instead of the local ones.",
)
@settings_command
@json_option
def verify(
    settings: Settings, backup_id: str | None, verify_all: bool, offsite: bool, as_json: bool
) -> None:
    """Fully check backups: checksum, decompression, integrity_check, row counts.

    Without ID, checks the newest backup. Exit 0 when every copy passed, 1 when some copy is
    damaged but another is sound, 2 when a backup has no sound copy. With --offsite, checks
    the offsite copies (downloaded to a scratch file, then removed); exit 2 when any is
    damaged.

    \b
    Examples:
      tablettracker-backups verify
      tablettracker-backups verify --all --json
      tablettracker-backups verify --offsite --all
    """

    if verify_all and backup_id:
        raise click.UsageError("give an ID or --all, not both")
    if offsite:
        _verify_offsite(settings, backup_id, verify_all, as_json)
        return
    store = BackupStore(settings)
    if verify_all:
        ids = [info.id for info in store.list()]
    else:
        ids = [store.latest(verified=False).id if not backup_id else _pick(settings, backup_id)]
    results = []
    for index, one in enumerate(ids, start=1):
        result = verify_backup(store, one)
        results.append(result)
        if not as_json:
            mark = "ok" if result.ok else ("DAMAGED COPY" if result.usable else "FAILED")
            click.echo(f"[{index}/{len(ids)}] {one}: {mark}")
            for copy in result.copies:
                if not copy.ok:
                    click.echo(f"    {copy.location}: {copy.error}")
    if as_json:
        emit_json([r.to_dict() for r in results])
    if any(not r.usable for r in results):
        sys.exit(EXIT_CRITICAL)
    if any(not r.ok for r in results):
        sys.exit(EXIT_WARNING)


def _verify_offsite(
    settings: Settings, backup_id: str | None, verify_all: bool, as_json: bool
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
    results = verify_offsite(settings, ids)
    if as_json:
        emit_json([{"id": r.id, "ok": r.ok, "error": r.error} for r in results])
    else:
        if not results:
            click.echo("No backups in the offsite store.")
        for index, result in enumerate(results, start=1):
            click.echo(
                f"[{index}/{len(results)}] offsite {result.id}: "
                + ("ok" if result.ok else f"DAMAGED: {result.error}")
            )
    if any(not r.ok for r in results):
        sys.exit(EXIT_CRITICAL)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@settings_command
@json_option
def prune(settings: Settings, dry_run: bool, as_json: bool) -> None:
    """Delete backups that grandfather-father-son retention no longer keeps.

    Never deletes the newest backup or the newest verified one.

    \b
    Example:
      tablettracker-backups prune --dry-run
    """

    store = BackupStore(settings)
    store.require_folder()  # a mistyped --backup-dir: say so, create nothing
    with operation_lock(settings):
        result = prune_backups(store, dry_run=dry_run)
    if as_json:
        emit_json(result.to_dict())
        return
    going = result.plan.delete
    verb = "Would delete" if dry_run else "Deleted"
    click.echo(f"{verb} {len(going)} backup(s); keeping {len(result.plan.keep)}.")
    for decision in going:
        click.echo(f"  - {decision.id}")


def _print_health(report: Any) -> None:
    click.echo(f"Health: {report.status.upper()}")
    for finding in report.findings:
        click.echo(f"  [{finding.level}] {finding.message}")


@cli.command()
@settings_command
@json_option
def health(settings: Settings, as_json: bool) -> None:
    """Check that the data is safe; exit 0 ok, 1 warning, 2 critical.

    Checks the live database (quick_check), the age of the newest (verified) backup against the
    interval, recent checksums, free disk space, retention slots, copies agreeing, and whether
    the scheduled task still runs. Writes status.json and appends problems to alerts.jsonl.

    \b
    Example:
      tablettracker-backups health || echo "backups need attention"
    """

    report = check_health(settings)
    try:
        save_report(settings, report)
    except BackupError as exc:
        # A full or read-only backup folder is exactly when the report matters most.
        report = dataclasses.replace(
            report,
            findings=(
                *report.findings,
                Finding(Level.CRITICAL, "status-file", f"cannot write the status file: {exc}"),
            ),
        )
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_health(report)
    sys.exit(report.exit_code)


@cli.command()
@settings_command
@json_option
def status(settings: Settings, as_json: bool) -> None:
    """A short summary: newest backups, counts per slot, disk use, health.

    \b
    Example:
      tablettracker-backups status
    """

    report = check_health(settings)
    if as_json:
        emit_json(report.to_dict())
        sys.exit(report.exit_code)
    click.echo(f"Database:        {settings.database}")
    click.echo(
        f"Backups:         {report.backup_count} in {settings.backup_dir}"
        + (f" (+ {settings.secondary_dir})" if settings.secondary_dir else "")
    )
    click.echo(f"Newest:          {report.newest_id or '-'} ({human_age(report.newest_at)})")
    click.echo(
        f"Newest verified: {report.newest_verified_id or '-'} "
        f"({human_age(report.newest_verified_at)})"
    )
    slots = ", ".join(f"{k} {v}" for k, v in report.slot_counts.items()) or "-"
    click.echo(f"Slots filled:    {slots}")
    primary = report.disk.get("primary")
    if primary:
        click.echo(
            f"Disk:            {human_size(report.stored_bytes)} used by backups, "
            f"{human_size(primary['free'])} free"
        )
    click.echo(f"Last run:        {human_age(report.last_run_at)}")
    for label, text in describe_recovery(report.recovery):
        click.echo(f"{label + ':':<17}{text}")
    offsite = report.offsite
    if offsite:
        behind = (
            f"{offsite['behind']} behind since {offsite['behind_since']}"
            if offsite["behind"]
            else "up to date"
        )
        click.echo(f"Offsite:         {offsite['copies']} copies in {offsite['target']}, {behind}")
    _print_health(report)
    sys.exit(report.exit_code)


@cli.command("run")
@click.option("--force", is_flag=True, help="Back up even if the newest backup is recent.")
@settings_command
@json_option
def run_command(settings: Settings, force: bool, as_json: bool) -> None:
    """Everything a scheduled task needs: back up if due, verify, prune, health check.

    Idempotent: run it hourly (or daily on a free PythonAnywhere account); a run with nothing
    due only verifies and checks. A second run while one is in progress waits briefly, then
    exits 3 without touching anything.

    \b
    Example (PythonAnywhere scheduled task or crontab):
      tablettracker-backups run --config /home/me/.config/tablettracker-backups/config.toml
    """

    result = run(settings, force=force, trigger="scheduled")
    if as_json:
        emit_json(result.to_dict())
        sys.exit(result.exit_code)
    if result.error:
        click.echo(f"Error: {result.error}", err=True)
    elif result.backup:
        click.echo(
            f"Backed up: {result.backup.metadata.id} "
            f"({human_size(result.backup.metadata.stored_size)})"
        )
    else:
        click.echo(f"No backup due: {result.skipped_reason}")
    if result.reverified:
        click.echo(
            f"Re-verified: {result.reverified.id}: {'ok' if result.reverified.ok else 'PROBLEM'}"
        )
    if result.pruned and result.pruned.deleted:
        click.echo(f"Pruned: {', '.join(result.pruned.deleted)}")
    if result.offsite is not None:
        sync = result.offsite
        click.echo(
            f"Offsite: {len(sync.uploaded)} uploaded, {len(sync.pruned)} pruned, "
            f"{len(sync.verified)} read back"
            + (f", {len(sync.behind)} behind" if sync.behind else "")
        )
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    _print_health(result.health)
    sys.exit(result.exit_code)


@cli.command()
@click.option(
    "--interval",
    default="1h",
    show_default=True,
    help="How often the scheduled task runs: 1h (paid accounts) or 1d (free).",
)
@click.option(
    "--write-config",
    "config_out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the config file (default: ~/.config/tablettracker-backups/config.toml).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing config file.")
@settings_command
@json_option
def init(
    settings: Settings, interval: str, config_out: Path | None, overwrite: bool, as_json: bool
) -> None:
    """One-time set-up: config file, owner-only folders, a first verified backup, and the
    command to paste into a PythonAnywhere scheduled task or a crontab.

    \b
    Example:
      tablettracker-backups init --database ~/tablettracker/instance/tablet_counter.db \\
          --secondary-dir ~/backups-mirror --interval 1d
    """

    outcome = initialise(settings, interval=interval, config_path=config_out, overwrite=overwrite)
    if as_json:
        emit_json(outcome.to_dict())
        return
    click.echo(f"Config written:  {outcome.config_path}")
    for folder in outcome.folders:
        click.echo(f"Folder (0700):   {folder}")
    for ignored in outcome.gitignored:
        click.echo(f"Kept out of git: {ignored}")
    click.echo(f"First backup:    {outcome.backup_id} (verified)")
    click.echo("")
    click.echo(
        "PythonAnywhere: Tasks tab -> scheduled task "
        f"({'hourly' if outcome.interval < 86400 else 'daily'}), command:"
    )
    click.echo(f"  {outcome.task_command}")
    click.echo("")
    click.echo("Or a crontab line:")
    click.echo(f"  {outcome.cron_line}")

    if outcome.config_path != default_config_path().expanduser().absolute():
        click.echo("")
        click.echo("Other commands read this config with --config, or set it once:")
        click.echo(f"  export BACKUPS_CONFIG={outcome.config_path}")


# -- restore -------------------------------------------------------------------------------------


def _restore_settings(
    ctx: click.Context,
    *,
    config: Path | None,
    database: Path | None,
    backup_dir: Path | None,
    secondary_dir: Path | None,
    to: Path | None,
) -> Settings:
    """Settings as every command resolves them; with ``--to`` and no database configured
    (a fresh machine with only a backup folder), the ``--to`` file stands in for it."""

    common = {"config": config, "backup_dir": backup_dir, "secondary_dir": secondary_dir}
    try:
        return resolve_settings(ctx, database=database, **common)
    except ConfigError:
        if database is not None or to is None:
            raise
        return resolve_settings(ctx, database=to, **common)


def _print_preview(preview: Any) -> None:
    click.echo(
        f"Backup {preview.backup_id} (taken {local_time(preview.created_at)}, "
        f"{human_age(preview.created_at)}) against "
        + ("the current database:" if preview.live_exists else "no database (it does not exist):")
    )
    click.echo(f"  {'TABLE':<28} {'BACKUP':>12} {'NOW':>12}  CHANGE")
    for table in preview.tables:
        backup_rows = "-" if table.backup_rows is None else f"{table.backup_rows:,}"
        live_rows = "-" if table.live_rows is None else f"{table.live_rows:,}"
        click.echo(f"  {table.name:<28} {backup_rows:>12} {live_rows:>12}  {table.status}")
    if preview.schema_changed:
        click.echo("  ! the schema differs: the restore brings back the backup's schema")


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


@cli.command()
@click.argument("backup_id", metavar="[ID|latest]", required=False)
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
    "needs only the BACKUPS_S3_* settings and credentials, no local backup folder.",
)
@common_options
@json_option
def restore(
    config: Path | None,
    database: Path | None,
    backup_dir: Path | None,
    secondary_dir: Path | None,
    backup_id: str | None,
    to: Path | None,
    at: str | None,
    yes: bool,
    preview: bool,
    from_offsite: bool,
    as_json: bool,
) -> None:
    """Restore a backup into the live database (or into --to PATH).

    The backup is fully checked first (a damaged primary copy falls back to the secondary), a
    pre-restore safety snapshot of the current database is taken, the data is written through
    SQLite's backup API (open connections stay valid), and checked again; if that check fails
    the safety snapshot is put back. ID may be 'latest' (the newest verified backup). Without
    ID on a terminal you choose from a list. Asks for confirmation unless --yes; refuses
    without a terminal and without --yes. When no local copy is sound and an offsite store is
    configured, the offsite copy is downloaded and checked as the last fallback.

    With --from-offsite the database is rebuilt from the offsite store alone into a file that
    does not exist yet ('latest' passes over damaged offsite backups to the newest sound one).

    With --at TIME instead of an ID, the newest good backup taken at or before TIME is restored
    (automatic snapshots make these minutes apart). A TIME without a zone is local time.

    \b
    Examples:
      tablettracker-backups restore latest --preview
      tablettracker-backups restore --at 2026-11-23T14:05 --preview
      tablettracker-backups restore 20261123T201500Z-3f9a1c
      tablettracker-backups restore latest --yes --json
      tablettracker-backups restore latest --backup-dir /mnt/usb/backups --to tablet_counter.db
      tablettracker-backups restore latest --from-offsite --to instance/tablet_counter.db
    """

    ctx = click.get_current_context()
    settings = _restore_settings(
        ctx,
        config=config,
        database=database,
        backup_dir=backup_dir,
        secondary_dir=secondary_dir,
        to=to,
    )
    moment = None
    if at is not None:
        if backup_id is not None or from_offsite:
            raise click.UsageError("--at chooses the backup: give no ID and no --from-offsite")
        moment = parse_moment(at)
        chosen = point_at(BackupStore(settings).list(), moment.at, now=datetime.now(timezone.utc))
        backup_id = chosen.id
        if not as_json:
            click.echo(
                f"The state as of {moment.describe()}: backup {chosen.id}, taken "
                f"{local_time(chosen.created_at)} ({chosen.kind})."
            )
    if from_offsite:
        if preview:
            raise click.UsageError("--preview compares with local backups; not with --from-offsite")
        _recover_from_offsite(settings, backup_id or "latest", to, as_json)
        return
    interactive = sys.stdin.isatty()
    if backup_id is None:
        if not interactive or as_json:
            raise click.UsageError("give a backup ID or 'latest' (see: tablettracker-backups list)")
        backup_id = _choose_backup(settings)
    target = (to if to is not None else settings.database).expanduser().absolute()
    preview_settings = dataclasses.replace(settings, database=target)
    asked = {} if moment is None else _moment_json(moment)
    if preview:
        diff = preview_restore(preview_settings, backup_id)
        if as_json:
            emit_json({**diff.to_dict(), **asked})
        else:
            _print_preview(diff)
        return
    if target.exists() and not yes:
        _confirm_restore(preview_settings, backup_id, target, live=to is None)
    result = restore_backup(
        settings,
        backup_id,
        to=to,
        actor="cli",
        progress=stage_progress(not as_json, width=15, end_after=None),
    )
    if as_json:
        emit_json({**result.to_dict(), **asked})
    else:
        given = {
            "--config": config,
            "--database": database,
            "--backup-dir": backup_dir,
            "--secondary-dir": secondary_dir,
            "--to": to,
        }
        _print_restored(result, given)
    if result.fell_back:
        sys.exit(EXIT_WARNING)


def _moment_json(moment: Moment) -> dict[str, Any]:
    """What ``--at`` asked for, in ``--json`` output."""
    return {"at": moment.at, "at_zone": "given" if moment.zone_given else "local"}


def _confirm_restore(settings: Settings, backup_id: str, target: Path, *, live: bool) -> None:
    """Show what would change and ask; exit unless the person says yes on a terminal."""
    if not sys.stdin.isatty():
        click.echo(
            "Error: refusing to restore without confirmation: standard input is not a "
            "terminal; pass --yes to confirm",
            err=True,
        )
        sys.exit(EXIT_CRITICAL)
    _print_preview(preview_restore(settings, backup_id))
    where = "the LIVE database" if live else "the existing file"
    if not click.confirm(
        f"Replace {where} {target} with this backup? (a safety snapshot is taken first)",
        default=False,
    ):
        click.echo("Cancelled; nothing was changed.")
        sys.exit(EXIT_WARNING)


def _print_restored(result: RestoreResult, given: dict[str, Path | None]) -> None:
    """The human summary of a restore, with the command that undoes it."""
    if sys.stderr.isatty():
        click.echo("", err=True)
    for message in result.fell_back:
        click.echo(f"Warning: {message}", err=True)
    click.echo(
        f"Restored {result.backup_id} (from the {result.source_location} copy) into "
        f"{result.target} in {result.durations.get('total', 0.0):.2f}s."
    )
    if result.safety_snapshot_id:
        # Repeat the options given, so the printed command works when pasted as it is.
        undo = ["tablettracker-backups", "restore", result.safety_snapshot_id]
        for option, value in given.items():
            if value is not None:
                undo += [option, str(value)]
        click.echo(
            f"Safety snapshot of what was there before: {result.safety_snapshot_id} "
            f"(undo with: {shlex.join(undo)})"
        )


def _recover_from_offsite(
    settings: Settings, backup_id: str, to: Path | None, as_json: bool
) -> None:
    """``restore --from-offsite``: a new database file from the offsite store alone."""

    if settings.s3 is None:
        raise click.UsageError(
            "--from-offsite needs an offsite store: set BACKUPS_S3_BUCKET (and the endpoint and "
            "credentials)"
        )
    target = (to if to is not None else settings.database).expanduser().absolute()
    result = recover_from_offsite(settings, backup_id, to=target)
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
        click.echo(
            f"Recovered {result.id} (taken {local_time(result.metadata.created_at)}) from the "
            f"offsite store into {result.path}; checked: SHA-256, integrity_check, row counts."
        )
    if result.skipped:
        sys.exit(EXIT_WARNING)

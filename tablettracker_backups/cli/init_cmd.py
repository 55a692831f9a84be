"""``init``: one-time set-up, and the scheduled task's command line (``flask --app APP
backups run`` inside a Flask app, ``tablettracker-backups run --config FILE`` standalone)."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from tablettracker_backups.bootstrap import InitResult, initialise, interval_text, standalone_task
from tablettracker_backups.cli.common import (
    NO_DATABASE,
    BackupsCommand,
    audit_command,
    common_options,
    emit_json,
    flask_app,
    given_options,
    heading,
    json_option,
    resolve_settings,
    resolve_site,
)
from tablettracker_backups.errors import BackupError
from tablettracker_backups.settings import parse_duration
from tablettracker_backups.site import Site
from tablettracker_backups.sources import (
    DATABASES,
    load_settings,
    standalone_layers,
    user_config_path,
)


@click.command(cls=BackupsCommand)
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
    hidden=True,  # the older name of --config for init
)
@click.option("--overwrite", is_flag=True, help="Replace an existing config file.")
@common_options
@json_option
def init(
    config: Path | None,
    database: Path | None,
    database_name: str | None,
    backup_dir: Path | None,
    secondary_dir: Path | None,
    interval: str,
    config_out: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """One-time set-up: owner-only folders, a first verified backup, and the command to paste
    into a PythonAnywhere scheduled task or a crontab.

    Inside a Flask app (flask --app APP backups init) the app's config is the configuration:
    nothing is written, and the scheduled task is 'flask --app APP backups run' with every
    path spelled out, so it works from any folder. The interval is BACKUPS_INTERVAL there.

    Standalone, it also writes a config file (--config FILE; default:
    ~/.config/tablettracker-backups/config.toml), only once the first backup has succeeded,
    so a failed init leaves no config behind. The file is read only where named: the task's
    command passes --config FILE.

    \b
    Examples:
      flask --app tablettracker backups init
      tablettracker-backups init --database ~/tablettracker/instance/tablet_counter.db \\
          --secondary-dir ~/backups-mirror --interval 1d
    """

    ctx = click.get_current_context()
    options = given_options(ctx)
    app = flask_app(ctx)
    interval_given = ctx.get_parameter_source("interval") == click.core.ParameterSource.COMMANDLINE
    if app is not None:
        if config_out is not None or overwrite or config is not None:
            raise click.UsageError(
                "inside a Flask app, init writes no config file: the app's config is the "
                "configuration (no --config or --overwrite)"
            )
        site = resolve_site(ctx, config=None, options=options)
        if site.named:
            if interval_given:
                raise click.UsageError(
                    "the interval is each database's BACKUPS_INTERVAL in the app's config; set "
                    "it there, then run init again"
                )
            init_site(site, task=flask_task(ctx, app), interval=None, as_json=as_json)
            return
        settings = resolve_settings(ctx, config=None, options=options)
        if interval_given and parse_duration("interval", interval) != settings.interval:
            raise click.UsageError(
                f"the interval is BACKUPS_INTERVAL in the app's config (now "
                f"{interval_text(settings.interval)}); set BACKUPS_INTERVAL = {interval!r} "
                "there, then run init again"
            )
        outcome = initialise(settings, task=flask_task(ctx, app), interval=settings.interval)
    else:
        target = (config_out or config or user_config_path()).expanduser().absolute()
        if target.is_file() and DATABASES in standalone_layers(config_file=target, options={}):
            # A site's file ([databases.NAME] tables) is the owner's: init never rewrites it
            # (its file would lose the other databases), it sets up what the file names.
            if overwrite or config_out is not None:
                raise click.UsageError(
                    f"{target} is a site's config file ([databases.NAME] tables): init does not "
                    "rewrite it (no --overwrite); edit it, then run init again"
                )
            site = resolve_site(ctx, config=target, options=options)
            init_site(
                site,
                task=standalone_task(target),
                interval=interval if interval_given else None,
                as_json=as_json,
            )
            return
        # The file to write is read only if it exists (with --overwrite its settings are the
        # starting point); a new --config path is not an input.
        settings = load_settings(
            config_file=target if target.is_file() else None,
            options=options,
            missing_database=NO_DATABASE,
        )
        outcome = initialise(
            settings,
            task=standalone_task(target),
            interval=interval,
            config_path=target,
            overwrite=overwrite,
        )
    audit_command(
        settings,
        "init",
        ok=True,
        message=f"set up with a first backup {outcome.backup_id}; "
        + (f"config {outcome.config_path}" if outcome.config_path else "the app's config"),
    )
    if as_json:
        emit_json(outcome.to_dict())
        return
    _print_init(outcome)


def init_site(site: Site, *, task: list[str], interval: str | None, as_json: bool) -> None:
    """Set up every database of ``site`` (or the one ``--database`` picked): folders and a
    first verified backup each, one after the other; one that fails never stops the others.
    Prints a section per database, then the one scheduled task that runs them all; exits 2
    when any failed (each failure one line on stderr, naming its database)."""
    outcomes: dict[str, InitResult] = {}
    failures: dict[str, str] = {}
    for settings in site.databases:
        try:
            outcome = initialise(
                settings, task=task, interval=interval or settings.interval, config_path=None
            )
        except BackupError as exc:
            failures[settings.database_name] = str(exc)
            audit_command(settings, "init", ok=False, message=str(exc))
            continue
        outcomes[settings.database_name] = outcome
        audit_command(
            settings,
            "init",
            ok=True,
            message=f"set up with a first backup {outcome.backup_id}; the site's config",
        )
    if as_json:
        emit_json(
            {
                "databases": {
                    **{name: o.to_dict() for name, o in outcomes.items()},
                    **{name: {"ok": False, "error": e} for name, e in failures.items()},
                },
                "task_command": shlex.join(task),
                "exit_code": 2 if failures else 0,
            }
        )
    else:
        for settings in site.databases:
            name = settings.database_name
            heading(settings)
            if name in failures:
                click.echo(f"Not set up:      {failures[name]}")
                continue
            for folder in outcomes[name].folders:
                click.echo(f"Folder (0700):   {folder}")
            for ignored in outcomes[name].gitignored:
                click.echo(f"Kept out of git: {ignored}")
            click.echo(f"First backup:    {outcomes[name].backup_id} (verified)")
        click.echo("")
        if outcomes:
            # One task runs every database of the site; the most frequent one sets its pace.
            first = min(outcomes.values(), key=lambda o: o.interval)
            _print_schedule(first)
    for name, error in failures.items():
        click.echo(f"Error: {name}: {error}", err=True)
    if failures:
        sys.exit(2)


def flask_task(ctx: click.Context, app: Any) -> list[str]:
    """``flask --app APP backups run`` for a scheduled task: the virtualenv's ``flask`` and
    the app as an absolute path, so it needs neither an activated environment nor a folder."""
    from flask.cli import ScriptInfo

    info = ctx.find_object(ScriptInfo)
    flask = Path(sys.executable).parent / "flask"
    program = [str(flask)] if flask.is_file() else [sys.executable, "-m", "flask"]
    where = app_reference(info.app_import_path if info else None, app)
    return [*program, "--app", where, "backups", "run"]


def app_reference(import_path: str | None, app: Any) -> str:
    """What ``--app`` must say from any folder: the app's module or package as an absolute
    path, with the factory or variable name kept as given (``/home/me/tt:create_app``)."""
    name: str | None = None
    module = None
    if import_path:
        # Flask's own split: a colon not followed by a path separator (C:\ on Windows).
        parts = re.split(r":(?![\\/])", import_path, maxsplit=1)
        path, name = parts[0], (parts[1] if len(parts) > 1 else None)
        if path.endswith(".py") or os.sep in path or os.path.isdir(path):
            return _with_name(os.path.abspath(path), name)
        module = sys.modules.get(path)
    else:  # found by Flask in the current folder, as wsgi.py or app.py
        for candidate in ("wsgi", "app"):
            found = sys.modules.get(candidate)
            file = getattr(found, "__file__", None)
            if file and Path(file).absolute().parent == Path.cwd():
                module = found
                break
    module = module or sys.modules.get(app.import_name)
    file = getattr(module, "__file__", None)
    if not file:
        return _with_name(app.import_name, name)
    location = Path(file).absolute()
    if location.name == "__init__.py":
        location = location.parent
    return _with_name(str(location), name)


def _with_name(path: str, name: str | None) -> str:
    return f"{path}:{name}" if name else path


def _print_init(outcome: InitResult) -> None:
    for folder in outcome.folders:
        click.echo(f"Folder (0700):   {folder}")
    for ignored in outcome.gitignored:
        click.echo(f"Kept out of git: {ignored}")
    click.echo(f"First backup:    {outcome.backup_id} (verified)")
    if outcome.config_path is None:
        click.echo("Config:          the app's config (no file written; 'status' shows each")
        click.echo("                 setting and where it comes from)")
    else:
        click.echo(f"Config written:  {outcome.config_path}")
    click.echo("")
    _print_schedule(outcome)
    if outcome.config_path is not None:
        click.echo("")
        click.echo("Other commands read this config only when named: --config, or set it once:")
        click.echo(f"  export BACKUPS_CONFIG={shlex.quote(str(outcome.config_path))}")


def _print_schedule(outcome: InitResult) -> None:
    click.echo(
        "PythonAnywhere: Tasks tab -> scheduled task "
        f"({'hourly' if outcome.interval < 86400 else 'daily'}), command:"
    )
    click.echo(f"  {outcome.task_command}")
    click.echo("")
    click.echo("Or a crontab line:")
    click.echo(f"  {outcome.cron_line}")

"""What several commands share, and the group's handling of their failures: the common
options and how they resolve into settings, ``--json`` output, progress on a terminal, exit
codes, and the audit entry a command leaves. Imports the core only, never a command module."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import click

from tablettracker_backups import audit
from tablettracker_backups.encryption import Identity, load_identity
from tablettracker_backups.errors import AgeIdentityError, BackupError, LockedError
from tablettracker_backups.metadata import BackupMetadata, validate_backup_id
from tablettracker_backups.progress import StageProgress
from tablettracker_backups.runner import worst_exit_code
from tablettracker_backups.settings import Settings
from tablettracker_backups.site import Site, build_site
from tablettracker_backups.sources import (
    DATABASES,
    FLASK_COMMAND,
    Layer,
    load_settings,
    merge,
    option_layer,
    resolve,
    standalone_layers,
    unread_config_hint,
)
from tablettracker_backups.store import BackupStore

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_WARNING, EXIT_CRITICAL, EXIT_LOCKED = 0, 1, 2, 3
#: Where a command leaves its resolved settings, for the group to audit a failure.
SETTINGS_META = "tablettracker_backups.settings"
#: Commands that change the backups, and so leave an audit-log entry (restore writes its own).
AUDITED = {
    "backup": "backup",
    "verify": "verify",
    "prune": "prune",
    "run": "run",
    "init": "init",
    "export": "export",
    "migrate": "migrate",
}


def cli_actor() -> str:
    """Who ran a command, for the audit log the pages show."""
    try:
        return f"{getpass.getuser()} (command line)"
    except (KeyError, OSError):  # no user name for this uid (a bare container)
        return "command line"


def audit_command(
    settings: Settings, action: str, *, ok: bool, message: str, **details: Any
) -> None:
    """Write the command's outcome to the one audit log every face writes; a log that cannot
    be written is a warning, not a failed backup. After a failure the error line has said
    what is wrong (usually the same folder), so that stays the one line printed."""
    if not settings.state_dir.is_dir():
        return  # a mistyped folder: the command refused; logging must not create it
    try:
        audit.record(
            settings,
            action=action,
            actor=cli_actor(),
            ok=ok,
            message=message,
            details={"via": "cli", **details},
        )
    except BackupError as exc:
        if ok:
            click.echo(f"Warning: could not write the audit log: {exc}", err=True)


#: 128 + SIGPIPE, what the shell reports for a program whose reader went away.
EXIT_CLOSED_PIPE = 141


def failure(exc: BaseException) -> tuple[str, int] | None:
    """The one-line message and exit code for an error a command may end with; ``None`` for
    anything that is not such an error (a bug: let it show)."""
    if isinstance(exc, LockedError):
        return f"Busy: {exc}", EXIT_LOCKED
    if isinstance(exc, BackupError):
        return f"Error: {exc}", EXIT_CRITICAL
    if isinstance(exc, click.ClickException):
        return f"Error: {exc.format_message()}", exc.exit_code
    if isinstance(exc, OSError):
        return f"Error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), EXIT_CRITICAL
    return None


def closed_pipe() -> NoReturn:
    """Standard output's reader went away (``| head``): stop quietly, no traceback. Python
    would flush stdout again at exit and complain; point it at /dev/null first."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(EXIT_CLOSED_PIPE)


def audit_failure(ctx: click.Context, command: str | None, exc: BaseException) -> None:
    """A failed command that changes the backups leaves its audit entry too (not a busy one:
    nothing was done)."""
    if not isinstance(exc, BackupError) or isinstance(exc, LockedError):
        return
    action = AUDITED.get(command or "")
    settings = ctx.meta.get(SETTINGS_META)
    if action is not None and isinstance(settings, Settings):
        audit_command(settings, action, ok=False, message=str(exc))


class BackupsCommand(click.Command):
    """A command whose errors are JSON too when it was given ``--json``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            closed_pipe()
        except Exception as exc:
            outcome = failure(exc)
            if outcome is None or not ctx.params.get("as_json"):
                raise
            message, code = outcome
            # The line for a person's log on stderr, the same error for a script on stdout.
            click.echo(message, err=True)
            audit_failure(ctx, ctx.info_name, exc)
            error = message.split(": ", 1)[1] if ": " in message else message
            emit_json({"error": error, "exit_code": code})
            ctx.exit(code)


class BackupsGroup(click.Group):
    """A click group that turns library errors into one line and an exit code."""

    command_class = BackupsCommand

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            closed_pipe()
        except KeyboardInterrupt:
            click.echo("Interrupted; nothing partial was kept.", err=True)
            ctx.exit(130)
        except Exception as exc:
            outcome = failure(exc)
            if outcome is None or isinstance(exc, click.ClickException):
                raise  # click prints its own errors (with the usage line)
            message, code = outcome
            click.echo(message, err=True)
            audit_failure(ctx, ctx.invoked_subcommand, exc)
            ctx.exit(code)


def common_options(func: F) -> F:
    """The options every command takes: where the database and backups are, and output."""
    options = [
        click.option(
            "--config",
            "config",
            type=click.Path(path_type=Path, dir_okay=False),
            envvar="BACKUPS_CONFIG",
            help="TOML config file ([backups] table; relative paths in it are relative to "
            "it). Read only when named here or in BACKUPS_CONFIG. [env: BACKUPS_CONFIG]",
        ),
        click.option(
            "--database",
            type=click.Path(path_type=Path),
            envvar="BACKUPS_DATABASE",
            help="The live SQLite database. [env: BACKUPS_DATABASE]",
        ),
        click.option(
            "--database-name",
            envvar="BACKUPS_DATABASE_NAME",
            help="The database's name in its backup folder (default: the file's stem). "
            "[env: BACKUPS_DATABASE_NAME]",
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


def identity_option(func: F) -> F:
    """``--identity FILE`` (or ``BACKUPS_IDENTITY_FILE``): the age identity for encrypted
    backups."""
    return click.option(
        "--identity",
        "identity_file",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="BACKUPS_IDENTITY_FILE",
        help="age identity file that opens encrypted backups (a passphrase-protected one asks "
        "for its passphrase). Bring it for the check or restore: it does not belong on the "
        "server. [env: BACKUPS_IDENTITY_FILE]",
    )(func)


def open_identity(path: Path | None) -> Identity | None:
    """The identity in ``path`` (None without one); asks for a passphrase if it has one."""
    if path is None:
        return None

    def ask() -> str:
        try:
            return str(click.prompt(f"Passphrase for {path}", hide_input=True, err=True))
        except click.Abort as exc:
            raise AgeIdentityError(f"no passphrase given for the identity file {path}") from exc

    return load_identity(path.expanduser().absolute(), passphrase=ask)


#: Each common option's parameter name, and the setting it gives.
OPTION_KEYS = {
    "database": "database",
    "database_name": "database_name",
    "backup_dir": "dir",
    "secondary_dir": "secondary_dir",
}
NO_DATABASE = (
    "no database configured: pass --database PATH or --config FILE, or set BACKUPS_DATABASE"
)


def given_options(ctx: click.Context) -> dict[str, Any]:
    """The common options given on the command line, as settings. One read from the
    environment (``envvar``) is left to the environment's own place in the precedence."""
    return {
        key: ctx.params[name]
        for name, key in OPTION_KEYS.items()
        if ctx.params.get(name) is not None
        and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    }


def resolve_settings(
    ctx: click.Context, *, config: Path | None, options: dict[str, Any]
) -> Settings:
    """The one database a command works on: the site's only one, or the one ``--database``
    picks. Raises :class:`ConfigError` listing the names for a site of several without it."""
    return resolve_site(ctx, config=config, options=options).one()


def resolve_site(ctx: click.Context, *, config: Path | None, options: dict[str, Any]) -> Site:
    """The site in the one precedence (see :mod:`tablettracker_backups.sources`): the options
    given, the environment, then the host app's config (under ``flask backups``) or the named
    config file, then the defaults. In a site of named databases (:mod:`.site`), ``--database``
    picks one by name or file; otherwise it is the database's path, as it always was."""
    picked = options.get("database")
    others = {key: value for key, value in options.items() if key != "database"}
    app_layers = _flask_app_layers(ctx)
    if app_layers is not None:
        if config is not None and ctx.get_parameter_source("config") == (
            click.core.ParameterSource.COMMANDLINE
        ):
            raise click.UsageError(
                "flask backups reads the app's config; --config is for the standalone "
                "tablettracker-backups command"
            )
        if DATABASES in app_layers:
            site = build_site(merge(app_layers, option_layer(others)), command=FLASK_COMMAND)
            return site if picked is None else site.pick(picked)
        return Site.of(resolve(merge(app_layers, option_layer(options)), command=FLASK_COMMAND))
    if config is not None:
        layers = standalone_layers(config_file=config, options=others)
        if DATABASES in layers:
            site = build_site(layers)
            return site if picked is None else site.pick(picked)
    return Site.of(_standalone_settings(config=config, options=options))


def _standalone_settings(*, config: Path | None, options: dict[str, Any]) -> Settings:
    """A site of one, standalone: the named config file, the environment, the options."""
    hint = unread_config_hint() if config is None else None
    settings = load_settings(
        config_file=config,
        options=options,
        missing_database=NO_DATABASE + (f"; {hint}" if hint else ""),
    )
    if hint is not None:
        click.echo(f"Note: {hint}", err=True)
    return settings


def _flask_app_layers(ctx: click.Context) -> Layer | None:
    """The host app's settings with their origins when running as ``flask backups``."""
    app = flask_app(ctx)
    if app is None:
        return None
    state = app.extensions.get("tablettracker_backups")
    if state is None:
        raise click.UsageError("this Flask app has not called BackupManager.init_app(app)")
    layers: Layer = state.layers
    return layers


def flask_app(ctx: click.Context) -> Any:
    """The host app when running as ``flask backups``; else None."""
    try:
        from flask.cli import ScriptInfo
    except ImportError:  # pragma: no cover - Flask is a dependency
        return None
    info = ctx.find_object(ScriptInfo)
    if info is None:
        return None
    return info.load_app()


def _resolving(func: F, resolve_for: Callable[[click.Context, Path | None], Any]) -> F:
    """``func`` behind the common options, given what ``resolve_for`` makes of them."""

    @common_options
    @functools.wraps(func)
    def wrapper(
        config: Path | None,
        database: Path | None,
        database_name: str | None,
        backup_dir: Path | None,
        secondary_dir: Path | None,
        **kwargs: Any,
    ) -> Any:
        return func(resolve_for(click.get_current_context(), config), **kwargs)

    return cast(F, wrapper)


def settings_command(func: F) -> F:
    """Resolve the common options into a ``settings`` argument: the one database."""

    def one(ctx: click.Context, config: Path | None) -> Settings:
        settings = resolve_settings(ctx, config=config, options=given_options(ctx))
        ctx.meta[SETTINGS_META] = settings
        return settings

    return _resolving(func, one)


def site_command(func: F) -> F:
    """Resolve the common options into a ``site`` argument: every database (``run``,
    ``health``, ``status``), or the one ``--database`` picks."""

    def every(ctx: click.Context, config: Path | None) -> Site:
        site = resolve_site(ctx, config=config, options=given_options(ctx))
        if len(site.databases) == 1:
            ctx.meta[SETTINGS_META] = site.databases[0]
        return site

    return _resolving(func, every)


def site_command_line(site: Site, *words: str) -> str:
    """The command to paste for ``words`` over the whole site (no ``--database``)."""
    first = site.databases[0]
    if site.named:
        first = dataclasses.replace(first, selector=None)
    return first.command_line(*words)


def heading(settings: Settings) -> None:
    """The line that starts a database's section in a site's report."""
    click.echo(f"== {settings.database_name} ({settings.database}) ==")


def site_summary(codes: dict[str, int], worst: int) -> str:
    """The last line of a site's report: each database's verdict, and the exit code."""
    words = {EXIT_OK: "ok", EXIT_WARNING: "WARNING", EXIT_LOCKED: "BUSY"}
    verdicts = ", ".join(f"{name} {words.get(code, 'FAILED')}" for name, code in codes.items())
    return f"Site: {verdicts} (exit {worst})"


def report_each_database(
    site: Site,
    *,
    as_json: bool,
    as_dict: Callable[[Settings], dict[str, Any]],
    show: Callable[[Settings], int],
) -> NoReturn:
    """Report on every database of a site and exit with the worst verdict (``health``,
    ``status``): a section each, or ``{"databases": {NAME: ...}, "exit_code": N}`` as JSON.

    One database's trouble never hides the others': its :class:`BackupError` becomes its
    section's one-line error and a failure code (2)."""
    codes: dict[str, int] = {}
    if as_json:
        parts: dict[str, dict[str, Any]] = {}
        for settings in site.databases:
            try:
                parts[settings.database_name] = as_dict(settings)
            except BackupError as exc:
                parts[settings.database_name] = {"ok": False, "error": str(exc), "exit_code": 2}
            codes[settings.database_name] = int(parts[settings.database_name]["exit_code"])
        code = worst_exit_code(list(codes.values()))
        emit_json({"databases": parts, "exit_code": code})
        sys.exit(code)
    for index, settings in enumerate(site.databases):
        if index:
            click.echo("")
        heading(settings)
        try:
            codes[settings.database_name] = show(settings)
        except BackupError as exc:
            click.echo(f"Error: {settings.database_name}: {exc}", err=True)
            codes[settings.database_name] = 2
    code = worst_exit_code(list(codes.values()))
    click.echo("")
    click.echo(site_summary(codes, code))
    sys.exit(code)


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


def print_findings(meta: BackupMetadata, *, err: bool = False, indent: str = "") -> None:
    """What the checks found in the data, if anything, in a few lines."""
    found = meta.findings
    if not found.checked:
        click.echo(
            f"{indent}Note: not checked yet: integrity_check, foreign keys and row counts "
            "did not fit the check budget (BACKUPS_CHECK_BUDGET) and have not run on it; the "
            "scheduled run's drill, verify, or a restore of it runs them first",
            err=err,
        )
    if found.source_damaged:
        click.echo(
            f"{indent}Warning: the live database failed integrity_check "
            f"({found.integrity.splitlines()[0][:200]}); this copy is kept, flagged "
            "source-damaged, and is never 'latest'",
            err=err,
        )
    if found.foreign_key_violations:
        samples = "; ".join(
            f"{s.table}" + (f" rowid {s.rowid}" if s.rowid is not None else "") + f" -> {s.parent}"
            for s in found.foreign_key_samples
        )
        click.echo(
            f"{indent}Note: {found.foreign_key_violations} foreign-key violation(s) in the data "
            f"(kept as they are; e.g. {samples})",
            err=err,
        )
    for table, reason in sorted(found.not_counted.items()):
        click.echo(f"{indent}Note: table {table}: {reason}", err=err)


def pick_backup(settings: Settings, backup_id: str) -> str:
    """The backup an ``ID`` argument names: 'latest' resolved, any other ID validated."""
    if backup_id == "latest":
        return BackupStore(settings).latest().id
    return validate_backup_id(backup_id)


def print_health(report: Any) -> None:
    """The health verdict and each finding, one line each (health, status and run end so)."""
    click.echo(f"Health: {report.status.upper()}")
    for finding in report.findings:
        click.echo(f"  [{finding.level}] {finding.message}")

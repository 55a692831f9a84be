"""The Flask extension: ``BackupManager(app=None)`` / ``init_app(app)``.

It reads the ``BACKUPS_*`` config keys (defaults set with ``setdefault``), validates them into
one frozen :class:`Settings` at start-up so a typo fails now rather than at 2 a.m., registers
itself in ``app.extensions["tablettracker_backups"]``, mounts the admin blueprint and the
scheduled-task endpoint (:mod:`.views`, :mod:`.tasks`), hooks in the write trigger
(:mod:`.autosnapshot`), and adds the ``flask backups`` commands.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask
from flask_login import user_logged_in, user_logged_out

from tablettracker_backups.errors import ConfigError
from tablettracker_backups.settings import parse_space
from tablettracker_backups.site import Site, build_site
from tablettracker_backups.sources import (
    FLASK_COMMAND,
    app_layer,
    effective_values,
    environment_layer,
    merge,
)
from tablettracker_backups.web import autosnapshot, csrf, restoregate
from tablettracker_backups.web.state import (
    EXTENSION_KEY,
    BackupState,
    Member,
    default_is_admin,
    get_state,
)
from tablettracker_backups.web.tasks import TASK_BLUEPRINT
from tablettracker_backups.web.views import BLUEPRINT, register_blueprints

#: The extension's own keys (everything else under BACKUPS_* is a setting of the core, see
#: :data:`settings.CORE_KEYS`); read from the app's config only.
WEB_KEYS = frozenset(
    {
        "url_prefix",
        "is_admin",
        "task_token",
        "base_template",
        "task_url",
        "metrics_url",
        "restore_gate",
        "max_post_size",
    }
)
NO_DATABASE = (
    "no database configured: set BACKUPS_DATABASE in the app's config (a relative path is "
    "inside the instance folder: 'instance/tablet_counter.db') or in the environment"
)


class BackupManager:
    """Backups for a Flask app. ``BackupManager(app)`` or ``BackupManager()`` + ``init_app``."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate config, register the extension, blueprint and CLI on ``app``.

        Settings come from the app's config, with ``BACKUPS_*`` environment variables over it;
        relative paths in the app's config are inside ``app.instance_path`` (see
        :mod:`tablettracker_backups.sources`). Raises :class:`RuntimeError` if registered twice
        or if the app has no Flask-Login ``LoginManager``; :class:`ConfigError` for an unknown
        ``BACKUPS_*`` key (naming the nearest known one) or a bad value.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("BackupManager is already registered on this app")
        if getattr(app, "login_manager", None) is None:
            raise RuntimeError(
                "BackupManager needs Flask-Login: create a LoginManager and call "
                "login_manager.init_app(app) before BackupManager(app)"
            )
        # What the app set itself, before the defaults below: their origin is "app config".
        given = {key: app.config[key] for key in app.config if key.startswith("BACKUPS_")}
        #: The live SQLite database (required).
        app.config.setdefault("BACKUPS_DATABASE", None)
        #: The database's name in its backup folder's identity (``database.json``); default:
        #: the database file's stem. A folder of another database is refused.
        app.config.setdefault("BACKUPS_DATABASE_NAME", None)
        #: Primary backup folder; default: a ``backups`` folder beside the database.
        app.config.setdefault("BACKUPS_DIR", None)
        #: Optional second folder (another disk or mount); every backup is written to both.
        app.config.setdefault("BACKUPS_SECONDARY_DIR", None)
        #: Where the admin pages are mounted.
        app.config.setdefault("BACKUPS_URL_PREFIX", "/admin/backups")
        #: Callable(user) -> bool deciding who is an admin; default: ``user.is_admin``.
        app.config.setdefault("BACKUPS_IS_ADMIN", default_is_admin)
        #: Bearer token for the scheduled-task endpoint; None disables it (404).
        app.config.setdefault("BACKUPS_TASK_TOKEN", None)
        #: The host template the pages extend; it must define a ``content`` block.
        app.config.setdefault("BACKUPS_BASE_TEMPLATE", "tablettracker_backups/base.html")
        #: URL of the scheduled-task endpoint.
        app.config.setdefault("BACKUPS_TASK_URL", "/tasks/backups/run")
        #: URL of the Prometheus metrics (GET, same bearer token as the task endpoint).
        app.config.setdefault("BACKUPS_METRICS_URL", "/tasks/backups/metrics")
        #: Apprise URLs to notify (a list, or one string separated by spaces or commas).
        app.config.setdefault("BACKUPS_NOTIFY", None)
        #: ``problems`` (failures, warnings, recoveries) or ``all`` (also each success).
        app.config.setdefault("BACKUPS_NOTIFY_ON", None)
        #: Once a week, send a report to the BACKUPS_NOTIFY targets (the scheduled run does).
        app.config.setdefault("BACKUPS_NOTIFY_WEEKLY", None)
        #: ``run`` snapshots every database of the site at one instant (coordinated).
        app.config.setdefault("BACKUPS_COORDINATED", None)
        #: Dead-man ping base URL (healthchecks.io style); None sends no pings.
        app.config.setdefault("BACKUPS_PING_URL", None)
        #: Largest request body the pages' own forms accept (``128KB``); a bigger POST to them
        #: is refused with 413 before it is read.
        app.config.setdefault("BACKUPS_MAX_POST_SIZE", "128KB")
        #: Row-count drop since the previous good backup that counts as an anomaly (20%).
        app.config.setdefault("BACKUPS_ANOMALY_DROP", None)
        #: Offsite copies on an rclone remote (``gdrive:tablettracker``), instead of S3.
        app.config.setdefault("BACKUPS_RCLONE_REMOTE", None)
        #: rclone's config file; None means rclone's own (``~/.config/rclone/rclone.conf``).
        app.config.setdefault("BACKUPS_RCLONE_CONFIG", None)
        #: Offsite copies: the S3 bucket; None turns offsite copies off.
        app.config.setdefault("BACKUPS_S3_BUCKET", None)
        #: Endpoint of an S3-compatible provider (B2, R2, MinIO ...); None means AWS.
        app.config.setdefault("BACKUPS_S3_ENDPOINT_URL", None)
        #: Key prefix in the bucket; None means ``tablettracker-backups/``.
        app.config.setdefault("BACKUPS_S3_PREFIX", None)
        #: Region used for signing; None means the provider's default.
        app.config.setdefault("BACKUPS_S3_REGION", None)
        #: Explicit offsite keys (both or neither); None means boto3's usual credential chain.
        app.config.setdefault("BACKUPS_S3_ACCESS_KEY_ID", None)
        app.config.setdefault("BACKUPS_S3_SECRET_ACCESS_KEY", None)
        #: age public keys (``age1...``) to encrypt backups to; None turns encryption off.
        #: Never the identity: restores from these pages cannot open BACKUPS_ENCRYPT=all files.
        app.config.setdefault("BACKUPS_ENCRYPT_TO", None)
        #: ``offsite`` (the default once recipients are set) or ``all`` (local folders too).
        app.config.setdefault("BACKUPS_ENCRYPT", None)
        #: After a write request, snapshot when the newest backup is this old: ``1s``,
        #: ``30s``, ``5m``, or ``off``. None: one second in the page store, five minutes
        #: in a folder of format 1 (a whole copy each).
        app.config.setdefault("BACKUPS_SNAPSHOT_AFTER_WRITE", None)
        #: Every backup younger than this is kept (budget allowing); ``0`` turns the tier off.
        app.config.setdefault("BACKUPS_KEEP_RECENT", "10m")
        #: Most the recent tier may store beyond the calendar slots (``2GB``); None means
        #: 10x the newest backup's stored size.
        app.config.setdefault("BACKUPS_RECENT_BUDGET", None)
        #: While a restore of the database runs, answer the app's write requests with 503 and
        #: Retry-After (and, once it writes in rollback-journal mode, its reads too) instead of
        #: letting them wait on the lock and fail; False lets them through.
        app.config.setdefault("BACKUPS_RESTORE_GATE", True)

        # The app's config, then the environment over it (the one precedence every face
        # shares); an unknown or bad BACKUPS_* key fails here, at start-up.
        layers = merge(
            app_layer(given, instance_path=Path(app.instance_path), other_keys=WEB_KEYS),
            environment_layer(os.environ, relative="refuse"),
        )
        # A site of named databases (BACKUPS_DATABASES): the dashboard shows them all in one
        # table, each with its own pages; the task endpoint runs every one.
        site = build_site(layers, command=FLASK_COMMAND, missing_database=NO_DATABASE)
        members = site_members(site)
        first = next(iter(members.values()))
        is_admin = app.config["BACKUPS_IS_ADMIN"]
        if not callable(is_admin):
            raise RuntimeError("BACKUPS_IS_ADMIN must be a callable taking the current user")
        token = app.config["BACKUPS_TASK_TOKEN"] or None
        if token is not None and (not isinstance(token, str) or len(token) < 16):
            raise RuntimeError("BACKUPS_TASK_TOKEN must be a string of at least 16 characters")
        prefix = _url_path("BACKUPS_URL_PREFIX", app.config["BACKUPS_URL_PREFIX"])
        task_url = _url_path("BACKUPS_TASK_URL", app.config["BACKUPS_TASK_URL"])
        metrics_url = _url_path("BACKUPS_METRICS_URL", app.config["BACKUPS_METRICS_URL"])
        restore_gate = app.config["BACKUPS_RESTORE_GATE"]
        if not isinstance(restore_gate, bool):
            raise RuntimeError("BACKUPS_RESTORE_GATE must be True or False")
        max_post = _post_size(app.config["BACKUPS_MAX_POST_SIZE"])
        base_template = app.config["BACKUPS_BASE_TEMPLATE"]
        if not isinstance(base_template, str) or not base_template.strip():
            raise RuntimeError("BACKUPS_BASE_TEMPLATE must name a template")
        app.extensions[EXTENSION_KEY] = BackupState(
            settings=first.settings,
            values=first.values,
            listing=first.listing,
            members=members,
            layers=layers,
            is_admin=is_admin,
            task_token=token,
            base_template=base_template,
            task_url=task_url,
            restore_gate=restore_gate,
            max_post_bytes=max_post,
            site=site,
        )

        register_blueprints(app, prefix=prefix, task_url=task_url, metrics_url=metrics_url)
        # A new login gets new form tokens (ours, and Flask-WTF's when the host uses it).
        user_logged_in.connect(csrf.rotate, app)
        user_logged_out.connect(csrf.rotate, app)
        ours = frozenset({BLUEPRINT, TASK_BLUEPRINT})
        restoregate.install(app, skip_blueprints=ours)
        autosnapshot.install(app, skip_blueprints=ours)

        # Imported here, as Flask-SQLAlchemy does: the CLI reads the app's state from
        # ``current_app.extensions`` and never imports this module back.
        from tablettracker_backups.cli import cli

        app.cli.add_command(cli, name="backups")


def site_members(site: Site) -> dict[str, Member]:
    """Each database of ``site`` by name, with the values its web jobs' workers rebuild its
    settings from and a listing cache of its own."""
    return {
        settings.database_name: Member(settings, effective_values(settings, layer))
        for settings, layer in zip(site.databases, site.layers, strict=True)
    }


def _post_size(value: Any) -> int:
    try:
        size = parse_space("max_post_size", value)
    except ConfigError:
        size = 0.0
    if size < 1024:
        raise RuntimeError(f"BACKUPS_MAX_POST_SIZE must be a size like 128KB, not {value!r}")
    return int(size)


def _url_path(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "//" in value:
        raise RuntimeError(f"{key} must be a URL path starting with '/', not {value!r}")
    return value.rstrip("/") or "/"


__all__ = ["BackupManager", "BackupState", "get_state"]

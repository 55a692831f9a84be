"""The write trigger's web face: after a request that may have written, once the response has
gone out, ask the core (:mod:`tablettracker_backups.autosnapshot`) whether to snapshot, for each
database of the site.

``after_request`` only looks at the method and status and registers a callback with Werkzeug's
``response.call_on_close``; the work happens after the last byte was sent, so the response is
never slower. Nothing here may reach the host app: every exception is caught and logged.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, request

from tablettracker_backups.autosnapshot import after_write
from tablettracker_backups.web.state import EXTENSION_KEY, BackupState, Member

logger = logging.getLogger(__name__)

#: Methods that may write; a status below 400 says the write may have happened.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def install(app: Flask, *, skip_blueprints: frozenset[str]) -> None:
    """Register the trigger on ``app``; requests to ``skip_blueprints`` (the backup pages and
    the task endpoint, which back up or restore themselves) never trigger."""

    @app.after_request
    def _after_write(response: Response) -> Response:
        try:
            if (
                request.method in WRITE_METHODS
                and response.status_code < 400
                and request.blueprint not in skip_blueprints
            ):
                state: BackupState = current_app.extensions[EXTENSION_KEY]
                # Every database of the site: a request may have written to any of them
                # (an app that ATTACHes its audit log writes both in one transaction).
                members = [
                    m for m in site_members(state) if m.settings.snapshot_after_write is not None
                ]
                if members:
                    response.call_on_close(lambda: _trigger(members))
        except Exception:  # the host app's response must go out whatever happens here
            logger.exception("could not schedule the automatic snapshot check")
        return response


def site_members(state: BackupState) -> list[Member]:
    """The site's databases (the one database of a site of one)."""
    return list(state.members.values()) or [state.first()]


def _trigger(members: list[Member]) -> None:
    """Runs after the response was sent, outside any app or request context: each database
    is checked in turn, one failing never keeps the others from theirs."""
    for member in members:
        try:
            result = after_write(member.settings, member.values)
            logger.debug(
                "automatic snapshot check: %s %s (%s)", result.outcome, result.detail, member.name
            )
        except Exception:
            logger.exception("automatic snapshot check failed (%s)", member.name)

"""The write trigger's web face: after a request that may have written, once the response has
gone out, ask the core (:mod:`tablettracker_backups.autosnapshot`) whether to snapshot.

``after_request`` only looks at the method and status and registers a callback with Werkzeug's
``response.call_on_close``; the work happens after the last byte was sent, so the response is
never slower. Nothing here may reach the host app: every exception is caught and logged.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, request

from tablettracker_backups.autosnapshot import after_write
from tablettracker_backups.web.state import EXTENSION_KEY, BackupState

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
                if state.settings.snapshot_after_write is not None:
                    response.call_on_close(lambda: _trigger(state))
        except Exception:  # the host app's response must go out whatever happens here
            logger.exception("could not schedule the automatic snapshot check")
        return response


def _trigger(state: BackupState) -> None:
    """Runs after the response was sent, outside any app or request context."""
    try:
        result = after_write(state.settings, state.values)
        logger.debug("automatic snapshot check: %s %s", result.outcome, result.detail)
    except Exception:
        logger.exception("automatic snapshot check failed")

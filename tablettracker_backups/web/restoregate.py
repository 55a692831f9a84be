"""While a restore of one of the host's databases runs, its write requests get 503, not a lock
error (a site of several: any of its databases, see :func:`_running`).

A restore holds the database's write lock from its safety copy to its check (see
:mod:`tablettracker_backups.overwrite`), so an app request that writes meanwhile would wait up
to its busy timeout and then fail with "database is locked", or worse, half-succeed. Instead
the host's write requests (POST, PUT, PATCH, DELETE outside this package's own pages) are
answered at once with 503, ``Retry-After`` and a short page saying a restore is in progress.
Reads keep working until the restore starts writing; from then on, in rollback-journal mode,
reads would block too, so they get the same answer (WAL readers never block, so they go on).

What is running is read from the restore's record (:mod:`tablettracker_backups.intent`): one
``stat`` a request while none is, and a restore killed mid-way stops counting as running. The
check never raises into the host: any trouble lets the request through. A host opts out with
``BACKUPS_RESTORE_GATE = False``.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, render_template, request

from tablettracker_backups import intent
from tablettracker_backups.settings import Settings
from tablettracker_backups.web.state import EXTENSION_KEY, BackupState

logger = logging.getLogger(__name__)

#: Methods that change something: the ones a restore in progress turns away.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Seconds a client is asked to wait before trying again.
RETRY_AFTER = 15


def install(app: Flask, *, skip_blueprints: frozenset[str]) -> None:
    """Answer the host's requests with 503 while a restore makes them wait (see above)."""

    def gate() -> Response | None:
        if request.blueprint in skip_blueprints or request.endpoint == "static":
            return None  # the backup pages themselves, and the task endpoint, keep working
        try:
            state: BackupState = app.extensions[EXTENSION_KEY]
            if not state.restore_gate:
                return None
            running = _running(state)
            if running is None:
                return None
            blocked = request.method in WRITE_METHODS or (
                running.writing and running.journal_mode != "wal"
            )
            return _busy(running) if blocked else None
        except Exception:  # never raise into the host app's request
            logger.exception("could not tell whether a restore is running; letting it through")
            return None

    app.before_request(gate)


def _running(state: BackupState) -> intent.RestoreIntent | None:
    """A restore of one of the site's databases running now, if any. Any of them: the gate
    cannot tell which databases a request touches (an app may ATTACH several in one
    transaction), so while one is restored every write waits."""
    for settings in _site_settings(state):
        if not intent.path(settings).exists():
            continue  # the common case: one stat per database
        running = intent.running(settings)
        if running is not None and running.live:
            return running
    return None


def _site_settings(state: BackupState) -> list[Settings]:
    return [m.settings for m in state.members.values()] or [state.settings]


def _busy(running: intent.RestoreIntent) -> Response:
    try:
        body = render_template(
            "tablettracker_backups/_restoring.html",
            backup_id=running.backup_id,
            retry_after=RETRY_AFTER,
        )
        mimetype = "text/html"
    except Exception:  # a host layout that cannot render here: plain words instead
        logger.exception("could not render the restore-in-progress page")
        body = (
            "A restore of the database is in progress; nothing was changed. "
            f"Please try again in {RETRY_AFTER} seconds.\n"
        )
        mimetype = "text/plain"
    response = Response(body, status=503, mimetype=mimetype)
    response.headers["Retry-After"] = str(RETRY_AFTER)
    response.headers["Cache-Control"] = "no-store"
    return response

"""The token endpoints: ``POST /tasks/backups/run`` and ``GET /tasks/backups/metrics``.

For hosts whose scheduler can call a URL but not a command, and for a Prometheus server that
scrapes. No session and no CSRF (the bearer token is the authentication); the token is
compared in constant time, and a missing header costs the same as a wrong one.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from flask import Blueprint, Response, abort, jsonify, request
from flask.typing import ResponseReturnValue

from tablettracker_backups import audit
from tablettracker_backups.errors import BackupError, LockedError
from tablettracker_backups.runner import LOCKED_EXIT_CODE, run, run_site
from tablettracker_backups.settings import Settings
from tablettracker_backups.site import Site
from tablettracker_backups.web import throttle
from tablettracker_backups.web.headers import security_headers
from tablettracker_backups.web.state import get_state

logger = logging.getLogger(__name__)

TASK_BLUEPRINT = "tablettracker_backups_task"


def create_task_blueprint(task_url: str, metrics_url: str) -> Blueprint:
    """The token-authenticated endpoints (no session, no CSRF)."""
    bp = Blueprint(TASK_BLUEPRINT, __name__)
    bp.after_request(security_headers)
    bp.add_url_rule(task_url, "run", task_run, methods=["POST"])
    bp.add_url_rule(metrics_url, "metrics", task_metrics, methods=["GET"])
    return bp


def _bearer_ok(expected: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        # Still compare, so a missing header costs the same as a wrong one.
        hmac.compare_digest(b"-", expected.encode())
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def _refuse() -> Response | None:
    """404 without a configured token, 429 for an address that sent too many wrong ones
    (without looking at this one), 401 for a missing or wrong one; None when allowed.

    Wrong tokens are counted per address and audited at a bounded rate (:mod:`.throttle`).
    """
    state = get_state()
    if state.task_token is None:
        abort(404)
    address = request.remote_addr or "unknown"
    if throttle.check(state.settings, address).retry_after:
        verdict = throttle.record_failure(state.settings, address, refused=True)
        return _too_many(verdict.retry_after)
    if _bearer_ok(state.task_token):
        return None
    verdict = throttle.record_failure(state.settings, address, refused=False)
    if verdict.retry_after:
        return _too_many(verdict.retry_after)
    response = jsonify({"ok": False, "error": "missing or wrong bearer token"})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="tablettracker-backups"'
    return response


def _too_many(retry_after: int) -> Response:
    response = jsonify(
        {
            "ok": False,
            "error": "too many wrong tokens from this address: try again later",
            "retry_after": retry_after,
        }
    )
    response.status_code = 429
    response.headers["Retry-After"] = str(retry_after)
    return response


def task_run() -> ResponseReturnValue:
    """``POST /tasks/backups/run`` with ``Authorization: Bearer <BACKUPS_TASK_TOKEN>``.

    Answers 404 when no token is configured, 401 for a missing or wrong token, 429 with
    ``Retry-After`` after too many wrong ones from the same address, 409 when another
    operation holds the lock, else the same JSON as ``tablettracker-backups run --json``.
    For a site of several databases (``BACKUPS_DATABASES``), see :func:`_run_site`.
    """
    refused = _refuse()
    if refused is not None:
        return refused
    state = get_state()
    if state.site is not None and state.site.named:
        return _run_site(state.site)
    try:
        result = run(state.settings, trigger="scheduled")
    except LockedError as exc:
        return jsonify({"ok": False, "exit_code": 3, "error": str(exc)}), 409
    except BackupError as exc:
        _audit_task(state.settings, ok=False, message=str(exc))
        return jsonify({"ok": False, "exit_code": 2, "error": str(exc)}), 500
    _audit_task(
        state.settings,
        ok=result.error is None,
        message=result.audit_message(),
        details=result.audit_details(),
    )
    return jsonify(result.to_dict())


def _run_site(site: Site) -> ResponseReturnValue:
    """Every database of the site, one after the other (one failing never stops the others):
    ``{"ok", "exit_code", "databases": {name: that database's run JSON}}``, with the HTTP
    status of the worst: 500 if one could not start, else 409 if one was busy, else 200."""
    outcome = run_site(site.databases, trigger="scheduled")
    for part in outcome.runs:
        if part.result is not None:
            _audit_task(
                part.settings,
                ok=part.result.error is None,
                message=part.result.audit_message(),
                details=part.result.audit_details(),
            )
        elif part.error_code != LOCKED_EXIT_CODE:
            _audit_task(part.settings, ok=False, message=part.error or "")
    body = {
        "ok": all(part.to_dict()["ok"] for part in outcome.runs),
        **outcome.to_dict(),
    }
    unstarted = [part.error_code for part in outcome.runs if part.result is None]
    status = 500 if 2 in unstarted else 409 if unstarted else 200
    return jsonify(body), status


def task_metrics() -> ResponseReturnValue:
    """``GET /tasks/backups/metrics`` with the same bearer token: Prometheus' text format,
    read from the backup folder at this moment (every worker answers the same).

    404 when no token is configured, 401 for a missing or wrong token, 503 when the
    ``prometheus_client`` package is missing or the folder cannot be read.
    """
    refused = _refuse()
    if refused is not None:
        return refused
    try:
        from tablettracker_backups import metrics

        state = get_state()
        # Every database of a site, each series labelled with its name.
        body = metrics.render(state.site.databases if state.site is not None else state.settings)
    except BackupError as exc:
        logger.error("metrics failed: %s", exc)
        return Response(f"{exc}\n", status=503, mimetype="text/plain")
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    response = Response(body, status=200)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    response.headers["Cache-Control"] = "no-store"
    return response


def _audit_task(
    settings: Settings, *, ok: bool, message: str, details: dict[str, Any] | None = None
) -> None:
    """Leave a trace of runs triggered over HTTP (the page shows who and what)."""
    try:
        audit.record(
            settings,
            action="run",
            actor="task endpoint",
            ok=ok,
            message=message,
            details={"via": "http", "remote": request.remote_addr or "", **(details or {})},
        )
    except BackupError as exc:
        logger.error("could not write the audit log: %s", exc)

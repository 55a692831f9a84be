"""The admin pages: thin faces over the core (the task endpoint is :mod:`.tasks`).

Every page is for admins only (anonymous users go to the host's login page, other users get
403); every state change is a POST with a CSRF token and leaves an audit-log entry with the
user; no other method changes anything. Long actions (back up, verify, restore) are handed to
a detached worker process through :mod:`tablettracker_backups.jobs`, and the person watches a
job page until it is done. A page load reads no backup data: listings come through the app's
listing cache, and what hashing found comes from the last ``run`` or ``health``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user
from werkzeug.exceptions import HTTPException

from tablettracker_backups import audit, evidence, notify
from tablettracker_backups.bootstrap import setup_command
from tablettracker_backups.display import human_age, human_size, local_time
from tablettracker_backups.errors import (
    BackupError,
    BackupNotFound,
    InvalidBackupId,
    InvalidLabel,
    InvalidTime,
    LockedError,
)
from tablettracker_backups.evidence import open_warnings
from tablettracker_backups.export import export_backup
from tablettracker_backups.footprint import of_listing
from tablettracker_backups.formats import FILES
from tablettracker_backups.fsutil import remove_quietly, temp_path
from tablettracker_backups.groups import RestoreGroup, find_group, list_groups
from tablettracker_backups.health import HealthReport, check_health, describe_recovery
from tablettracker_backups.jobs import queue as jobs
from tablettracker_backups.layout import data_key
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import parse_utc, validate_backup_id
from tablettracker_backups.notifiers import apprise_available, mask_url
from tablettracker_backups.offsite.policy import copy_states
from tablettracker_backups.pins import set_pin
from tablettracker_backups.prune import plan_for_store, prune
from tablettracker_backups.restore import preview_restore
from tablettracker_backups.restore_points import (
    Moment,
    parse_moment,
    point_at,
    points_around,
    restore_events,
)
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import CopyStatus, Level
from tablettracker_backups.status import read_status
from tablettracker_backups.store import BackupInfo, BackupStore, newest_good
from tablettracker_backups.web import csrf, tasks, wording
from tablettracker_backups.web.charts import Series, size_chart
from tablettracker_backups.web.headers import security_headers
from tablettracker_backups.web.resources import resource_dir
from tablettracker_backups.web.state import BackupState, Member, get_state
from tablettracker_backups.web.wording import biggest_changes
from tablettracker_backups.weekly import weekly_summary

logger = logging.getLogger(__name__)

BLUEPRINT = "tablettracker_backups"
PER_PAGE = 20
#: What the typed confirmation of a restore may be, besides the backup id itself.
RESTORE_WORD = "RESTORE"
#: HTTP errors shown as the blueprint's own page (401 stays the host's login handling).
ERROR_CODES = (400, 403, 404, 409, 413)
#: Where a database's own pages live in a site of several (its name is validated, and an
#: unknown one is 404, after the login and admin checks).
DATABASE_PREFIX = "/db/<database>"
#: The pages that are the site's, not one database's: they need no name.
SITE_ENDPOINTS = frozenset(
    {
        f"{BLUEPRINT}.dashboard",
        f"{BLUEPRINT}.static",
        f"{BLUEPRINT}.group_restore",
        f"{BLUEPRINT}.group_restore_confirm",
    }
)
#: Coordinated snapshots offered on the site's dashboard (``list`` shows them all).
GROUPS_SHOWN = 5
#: Where the request's database is kept (``g``): its name as the URL gave it, then the member.
ASKED_KEY = "_ttb_database_asked"
MEMBER_KEY = "_ttb_database"


def create_blueprint() -> Blueprint:
    """The admin pages (mounted under ``BACKUPS_URL_PREFIX``)."""
    bp = Blueprint(
        BLUEPRINT,
        __name__,
        # The host's own templates folder is searched before this one, so a host overrides a
        # page by creating templates/tablettracker_backups/<page>.html.
        template_folder=str(resource_dir("templates")),
        static_folder=str(resource_dir("static")),
        static_url_path="/_static",
    )
    bp.before_request(_guard)
    bp.after_request(security_headers)
    bp.context_processor(_template_context)
    bp.register_error_handler(BackupError, _backup_error)
    bp.register_error_handler(Exception, _unexpected)
    for code in ERROR_CODES:
        bp.register_error_handler(code, _http_error)
    # Every page exists twice: as it always was (a site of one, and the site's dashboard) and
    # under a database's name, /db/<name>/... (see _pick_database and _database_in_urls).
    bp.url_value_preprocessor(_take_database)
    bp.url_defaults(_database_in_urls)

    def add(rule: str, endpoint: str, view: Callable[..., Any], **options: Any) -> None:
        # url_for picks the rule by the values given (the one with more arguments first),
        # whatever the order; the plain rule last, so it is what a map read by endpoint shows.
        bp.add_url_rule(f"{DATABASE_PREFIX}{rule}", endpoint, view, **options)
        bp.add_url_rule(rule, endpoint, view, **options)

    add("/", "dashboard", dashboard)
    add("/backups", "backups", backup_list)
    add("/backups/<backup_id>", "detail", detail)
    add("/backups/<backup_id>/download", "download", download, methods=["POST"])
    add("/backups/<backup_id>/verify", "verify", verify_one, methods=["POST"])
    # A page that previews an action and the action itself are separate rules: Flask answers
    # HEAD (and OPTIONS) on every GET rule, and CSRF checks skip HEAD, so a view that served
    # both would run its POST branch for a HEAD with a form body (issue 12). This way only a
    # POST can ever reach code that changes something.
    add("/backups/<backup_id>/restore", "restore", restore_page, methods=["GET"])
    add("/backups/<backup_id>/pin", "pin", pin_backup, methods=["POST"])
    add("/backups/<backup_id>/unpin", "unpin", unpin_backup, methods=["POST"])
    add("/backups/<backup_id>/restore", "restore_confirm", restore_confirm, methods=["POST"])
    add("/restore-at", "restore_at", restore_at_page)
    # The site's own: every database to one coordinated snapshot (no /db/<name>/ form).
    group_rule = "/groups/<group_id>/restore"
    bp.add_url_rule(group_rule, "group_restore", group_restore_page, methods=["GET"])
    bp.add_url_rule(group_rule, "group_restore_confirm", group_restore_confirm, methods=["POST"])
    add("/backup-now", "backup_now", backup_now, methods=["POST"])
    add("/verify-all", "verify_all", verify_all, methods=["POST"])
    add("/prune", "prune", prune_page, methods=["GET"])
    add("/prune", "prune_confirm", prune_confirm, methods=["POST"])
    add("/jobs/<job_id>", "job", job_page)
    add("/jobs/<job_id>.json", "job_json", job_json)
    add("/audit", "audit", audit_page)
    add("/warnings/<backup_id>/keep", "keep_evidence", keep_evidence, methods=["POST"])
    add("/warnings/<backup_id>/dismiss", "dismiss_warning", dismiss_warning, methods=["POST"])
    add("/notify-test", "notify_test", notify_test, methods=["POST"])
    return bp


def register_blueprints(app: Flask, *, prefix: str, task_url: str, metrics_url: str) -> None:
    """Mount the pages and the endpoints; exempt only the endpoints from Flask-WTF's CSRF."""
    app.register_blueprint(create_blueprint(), url_prefix=None if prefix == "/" else prefix)
    task_bp = tasks.create_task_blueprint(task_url, metrics_url)
    app.register_blueprint(task_bp)
    wtf = app.extensions.get("csrf")
    if wtf is not None:
        wtf.exempt(task_bp)

    # CSRFProtect may also be set up after us (its check then runs after this hook).
    @app.before_request
    def _exempt_task_endpoint() -> None:
        late = current_app.extensions.get("csrf")
        if late is not None and request.blueprint == tasks.TASK_BLUEPRINT:
            late.exempt(task_bp)

    # First of all the app's hooks: Flask-WTF's check, registered before us, reads the form.
    app.before_request_funcs.setdefault(None, []).insert(0, _limit_body)


def _limit_body() -> None:
    """Refuse (413) a POST to the pages or the task URL whose body is larger than
    ``BACKUPS_MAX_POST_SIZE``, before anything reads it; a body of unknown length is cut off
    at the limit where Flask allows it (3.1 and later)."""
    if request.blueprint not in (BLUEPRINT, tasks.TASK_BLUEPRINT) or request.method != "POST":
        return
    limit = get_state().max_post_bytes
    if request.content_length is not None and request.content_length > limit:
        abort(413)
    with contextlib.suppress(AttributeError):  # Flask < 3.1: read-only
        request.max_content_length = limit


# -- access ------------------------------------------------------------------------------------


def _guard() -> ResponseReturnValue | None:
    if request.endpoint == f"{BLUEPRINT}.static":
        return None
    if not current_user.is_authenticated:
        response: ResponseReturnValue = current_app.login_manager.unauthorized()  # type: ignore[attr-defined]
        return response
    state, user = get_state(), current_user._get_current_object()
    if not state.is_admin(user):
        state.explain_forbidden(user)
        abort(403, description="Only administrators can see the backup pages.")
    csrf.protect()
    _pick_database()
    return None


def _take_database(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """Keep the URL's database name aside; it is looked up once the visitor is known to be
    an admin (:func:`_pick_database`): an anonymous one must not learn which names exist."""
    asked = values.pop("database", None) if values else None
    setattr(g, ASKED_KEY, asked)


def _pick_database() -> None:
    """The database this request is about, in ``g``: the one the URL names (404 when the
    site has none of that name), else, for a site of one, its only one. In a site of several
    a database's page without a name is 404, naming them: no page may guess which one."""
    state = get_state()
    asked = getattr(g, ASKED_KEY, None)
    if asked is not None:
        member = state.member(asked)
        if member is None:
            abort(404, description=f"This site has no database called {one_line(asked, 80)}.")
    elif not state.several:
        member = state.first()
    elif request.endpoint in SITE_ENDPOINTS:
        member = None
    else:
        abort(
            404,
            description=(
                f"This site has {len(state.members)} databases ({', '.join(state.members)}): "
                "each one's pages are under its name; choose it on the dashboard."
            ),
        )
    setattr(g, MEMBER_KEY, member)


def _database_in_urls(endpoint: str, values: dict[str, Any]) -> None:
    """In a site of several, links from a database's pages stay on that database's pages
    (``url_for(..., database=None)`` leaves them, for the site's dashboard)."""
    if "database" in values or endpoint == f"{BLUEPRINT}.static":
        return
    state = get_state()
    member = g.get(MEMBER_KEY)
    if state.several and member is not None:
        values["database"] = member.name


def _via_web() -> dict[str, str]:
    """What every audit entry from these pages says about where it came from: the pages,
    and which database."""
    return {"via": "web", "database": _member().name}


def _member() -> Member:
    """The request's database (set by :func:`_pick_database`)."""
    member: Member | None = g.get(MEMBER_KEY)
    if member is None:  # a page of the site's own that asked for a database: a bug here
        raise LookupError("this page is not about one database")
    return member


def _actor() -> str:
    user = current_user._get_current_object()
    for attribute in ("username", "email", "name"):
        value = getattr(user, attribute, None)
        if isinstance(value, str) and value:
            return value
    return str(user.get_id())


def _settings() -> Settings:
    return _member().settings


def _store() -> BackupStore:
    """The backup folders, with the database's listing cache (pages list on every load)."""
    member = _member()
    return BackupStore(member.settings, cache=member.listing)


def _template_context() -> dict[str, Any]:
    state: BackupState = get_state()
    return {
        "backups_base": state.base_template,
        "backups_csrf_token": csrf.csrf_token,
        "backups_csrf_field": csrf.field_name(),
        "ttb_local": local_time,
        "ttb_age": human_age,
        "ttb_size": human_size,
        "ttb_utc": _utc_attribute,
        "ttb_chip": wording.reason_chip,
        "ttb_change": wording.table_change,
        "ttb_facts": wording.audit_facts,
        "ttb_action": wording.action_name,
        "ttb_kind": lambda kind: wording.KIND_NAMES.get(kind, kind),
        "ttb_links": _linker(),
        # A site of several: its databases' names, and the one this page is about (None on
        # the site's own dashboard); the navigation shows both. None for a site of one.
        "ttb_site": tuple(state.members) if state.several else None,
        "ttb_database": _current_name(),
    }


def _current_name() -> str | None:
    member: Member | None = g.get(MEMBER_KEY)
    return member.name if member is not None else None


def _linker() -> Callable[[object], Any]:
    """``ttb_links``: backup ids in a text made links, to the backups that still exist (a
    pruned one would be a link to "not found"); the listing is read at the first use."""
    known: list[set[str]] = []

    def links(text: object) -> Any:
        if not known:
            try:
                known.append({i.id for i in _store().list()})
            except BackupError:
                known.append(set())
        return wording.link_ids(
            text,
            lambda backup_id: url_for(f"{BLUEPRINT}.detail", backup_id=backup_id),
            only=known[0],
        )

    return links


def _utc_attribute(moment: datetime | None) -> str:
    """A ``<time datetime>`` value: UTC to the second (what browsers parse everywhere)."""
    if moment is None:
        return ""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _backup_error(exc: BackupError) -> ResponseReturnValue:
    if isinstance(exc, InvalidBackupId | BackupNotFound):
        status = 404
    elif isinstance(exc, InvalidLabel):
        status = 400
    elif isinstance(exc, LockedError):
        status = 409
    else:
        status = 500
        logger.error("backup page failed: %s", exc)
    active = None
    if isinstance(exc, LockedError):
        try:
            active = jobs.active_job(_settings())
        except BackupError:
            active = None
    return render_template(
        "tablettracker_backups/error.html",
        message=one_line(str(exc)),
        status=status,
        active=active,
        expired=False,
        back=_same_site_referrer(),
        admin=True,
    ), status


def one_line(text: str, limit: int = 300) -> str:
    """A message as the pages show it: its first line, at most ``limit`` characters."""
    first = (text.strip().splitlines() or [""])[0]
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _unexpected(exc: Exception) -> ResponseReturnValue:
    """Anything else that went wrong: the log gets the traceback, the page one plain line."""
    if isinstance(exc, HTTPException):
        return exc  # a 405 or 414: Flask's own answer
    logger.exception("backup page failed")
    return render_template(
        "tablettracker_backups/error.html",
        status=500,
        message=(
            "The server could not complete this page or action. Its error log has the "
            "details; reload to try again."
        ),
        expired=False,
        back=_same_site_referrer(),
        admin=_safely(_is_admin),
        active=None,
    ), 500


def _safely(check: Callable[[], bool]) -> bool:
    """``check()``, or False if it fails too (the error page must still render)."""
    try:
        return check()
    except Exception:
        return False


def _http_error(exc: HTTPException) -> ResponseReturnValue:
    """An HTTP error as a page in the blueprint's layout, with a way back."""
    status = exc.code or 500
    expired = status == 400 and csrf.is_token_failure(exc)
    message = exc.description if not expired else None
    if status == 413:
        message = (
            f"The form sent more than the {human_size(get_state().max_post_bytes)} these pages "
            "accept, so it was not read and nothing was done."
        )
    return render_template(
        "tablettracker_backups/error.html",
        status=status,
        message=message,
        expired=expired,
        back=_same_site_referrer(),
        # A non-admin (403) or anonymous visitor must not be shown the admin navigation.
        admin=_is_admin(),
        active=None,
    ), status


def _is_admin() -> bool:
    return bool(
        current_user.is_authenticated and get_state().is_admin(current_user._get_current_object())
    )


def _same_site_referrer() -> str | None:
    """The page the person came from, if it is on this site (for "go back" and "reload")."""
    referrer = request.referrer
    if not referrer:
        return None
    parts = urlsplit(referrer)
    if parts.netloc != request.host or parts.scheme not in ("http", "https"):
        return None
    path = parts.path or "/"
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return None
    return path + (f"?{parts.query}" if parts.query else "")


def _backup_id(value: str) -> str:
    """Validate an id from the URL (404 for anything malformed, such as a path)."""
    return validate_backup_id(value)


# -- pages -------------------------------------------------------------------------------------


def dashboard() -> ResponseReturnValue:
    """The verdict first, then each problem in plain words with the button that fixes it,
    open data-loss warnings, the main actions and the week; ids, hashes, the set-up command
    and the chart under "Details"."""
    if g.get(MEMBER_KEY) is None:
        return site_dashboard()
    settings = _settings()
    store = _store()
    # Light: no hashing, no reading the live database; those results come from the last run.
    report = check_health(settings, store=store, read_data=False)
    infos = store.list()
    status = read_status(settings)
    now = datetime.now(timezone.utc)
    problems = _problems(report, backups=len(infos))
    warnings = open_warnings(settings)
    headline, verdict_text = _verdict(report, problems, warnings, now=now)
    last_restore = _last_restore(status)
    listed = {i.id: i for i in infos}
    undo = None
    if last_restore and last_restore.get("safety_snapshot_id") in listed:
        snapshot = listed[last_restore["safety_snapshot_id"]]
        undo = snapshot.id if snapshot.verified else None
    return render_template(
        "tablettracker_backups/dashboard.html",
        report=report,
        headline=headline,
        verdict_text=verdict_text,
        problems=problems,
        notes=[f for f in report.findings if f.level == Level.OK],
        data_warnings=[(w, listed.get(w.evidence_id)) for w in warnings],
        recovery_lines=describe_recovery(report.recovery),
        settings=settings,
        summary=store.memo(("dashboard",), lambda: _summary(infos)),
        week=store.memo(
            ("week", now.strftime("%Y%m%d%H"), report.status),
            lambda: weekly_summary(settings, infos, report.status, now=now).lines(),
        ),
        last_run=status.get("last_run") if isinstance(status.get("last_run"), dict) else None,
        last_restore=last_restore,
        undo=undo,
        setup_command=setup_command(settings),
        active=jobs.active_job(settings),
        recent=jobs.recent_jobs(settings, limit=5),
        notifications=_notifications(settings),
    )


def _problems(report: HealthReport, *, backups: int) -> list[dict[str, Any]]:
    """The report's problems, worst first, in plain words with the action that fixes each
    (data-loss warnings have their own cards)."""
    return [
        {
            "level": f.level,
            "code": f.code,
            "words": wording.problem_words(f.code, f.message),
            "message": f.message,
            "action": wording.problem_action(f.code, f.message, backups=backups),
        }
        for f in sorted(report.findings, key=lambda f: -f.level.exit_code)
        if f.level != Level.OK and f.code != "data-loss"
    ]


def _verdict(
    report: HealthReport,
    problems: list[dict[str, Any]],
    warnings: list[Any],
    *,
    now: datetime,
) -> tuple[str, str]:
    """(headline, the rest) of a database's verdict line: the worst first, a critical
    problem, then lost data, then the other warnings."""
    first = problems[0]["words"] if problems else None
    if warnings and not (problems and problems[0]["level"] == Level.CRITICAL):
        first = f"Data may have been lost before backup {warnings[0].backup_id}"
    return wording.verdict(
        report.status,
        first_problem=first,
        good_at=report.newest_good_at,
        checked_at=report.data_checked_at,
        next_run=report.next_run_due,
        now=now,
    )


def site_dashboard() -> ResponseReturnValue:
    """A site of several databases: one row each, the worst first (its verdict, newest
    backup, recovery point), each leading to its own pages; the site's verdict above."""
    state = get_state()
    now = datetime.now(timezone.utc)
    rows = [_site_row(member, now=now) for member in state.members.values()]
    worst = max((row["level"] for row in rows), key=lambda lv: lv.exit_code, default=Level.OK)
    troubled = [row for row in rows if row["level"] != Level.OK]
    headline = wording.VERDICT_WORDS[worst]
    text = wording.site_verdict([(row["name"], row["why"]) for row in troubled], len(rows))
    # The worst first, then the site's order: what needs a person is on top on a phone.
    rows.sort(key=lambda row: -row["level"].exit_code)
    return render_template(
        "tablettracker_backups/site.html",
        rows=rows,
        level=worst,
        headline=headline,
        verdict_text=text,
        groups=_site_groups(state),
    )


def _site_groups(state: BackupState) -> list[RestoreGroup] | None:
    """The newest coordinated snapshots, through each database's listing cache (None when
    a folder cannot be listed: the table above says which)."""
    try:
        listings = {m.name: BackupStore(m.settings, cache=m.listing).list() for m in _site()}
        return list_groups([m.settings for m in _site()], listings)[:GROUPS_SHOWN]
    except BackupError:
        return None


def _site_row(member: Member, *, now: datetime) -> dict[str, Any]:
    """One database's line on the site's dashboard (light: no backup data is read). A
    database whose folders cannot even be listed is a critical row, never a broken page."""
    settings = member.settings
    try:
        store = BackupStore(settings, cache=member.listing)
        report = check_health(settings, store=store, read_data=False)
        infos = store.list()
        problems = _problems(report, backups=len(infos))
        warnings = open_warnings(settings)
        headline, text = _verdict(report, problems, warnings, now=now)
        why = (
            problems[0]["words"]
            if problems and (problems[0]["level"] == Level.CRITICAL or not warnings)
            else f"Data may have been lost before backup {warnings[0].backup_id}"
            if warnings
            else headline
        )
        damaged = sum(1 for i in infos if i.metadata is not None and not i.verified)
        active = jobs.active_job(settings)
        return {
            "name": member.name,
            "database": settings.database,
            "level": report.status,
            "headline": headline,
            "text": text,
            "why": why,
            # The button that fixes its worst problem is the row's main one.
            "action": problems[0]["action"] if problems else None,
            "report": report,
            "recovery": wording.recovery_words(report.recovery),
            "damaged": damaged,
            "count": len(infos),
            "active": active,
        }
    except BackupError as exc:
        return {
            "name": member.name,
            "database": settings.database,
            "level": Level.CRITICAL,
            "headline": wording.VERDICT_WORDS[Level.CRITICAL],
            "text": one_line(str(exc)),
            "why": one_line(str(exc)),
            "action": None,
            "report": None,
            "recovery": "unknown",
            "damaged": 0,
            "count": 0,
            "active": None,
        }


def _summary(infos: list[BackupInfo]) -> dict[str, Any]:
    """What the dashboard shows about all backups (computed once per listing)."""
    with_meta = [(i.created_at, i.metadata) for i in infos if i.metadata is not None]
    # A format 2 backup stores only what it added; its whole copy shares the rest.
    paged = any(m.format_version > FILES.version for _, m in with_meta)
    return {
        "count": len(infos),
        "chart": size_chart(
            [
                Series(
                    "added to the folder" if paged else "stored size",
                    "ttb-stored",
                    [(t, float(m.stored_size)) for t, m in with_meta],
                ),
                Series("database size", "ttb-raw", [(t, float(m.raw_size)) for t, m in with_meta]),
            ],
            label=local_time,
        ),
        "disagree": [i for i in infos if any(c.state != CopyStatus.OK for c in i.copies)][:5],
        "disagree_count": sum(any(c.state != CopyStatus.OK for c in i.copies) for i in infos),
        # What the last verifications found, all of them: one damaged backup among many must
        # not hide behind the newest one's "sound".
        "damaged": [i for i in infos if i.metadata is not None and not i.verified],
        "last_verified": max(
            (i for i in infos if i.metadata is not None),
            key=lambda i: i.metadata.verification.verified_at,  # type: ignore[union-attr]
            default=None,
        ),
    }


def _last_restore(status: dict[str, Any]) -> dict[str, Any] | None:
    """Which backup the live database was last restored from, as the restore noted it."""
    noted = status.get("last_restore")
    if not isinstance(noted, dict):
        return None
    try:
        return {
            **noted,
            "backup_id": validate_backup_id(noted.get("backup_id")),
            "at": parse_utc(noted.get("at"), "at"),
        }
    except BackupError:
        return None


#: The list's filter: kind on the page -> kind in the metadata (every kind a backup can be).
KIND_FILTERS = {
    "scheduled": "scheduled",
    "manual": "manual",
    "auto": "auto",
    "safety": "pre-restore",
}
#: Other spellings a link may use for a kind (the metadata's own).
KIND_ALIASES = {"pre-restore": "safety", "automatic": "auto"}


def _notifications(settings: Settings) -> dict[str, Any]:
    """Where notifications go (masked) and how the last ones went, for the dashboard."""
    ping = notify.last_ping(settings)
    return {
        "targets": notify.target_statuses(settings),
        "notify_on": settings.notify_on,
        "ping_url": mask_url(settings.ping_url) if settings.ping_url else None,
        "ping": ping,
        "ping_at": notify.parse_time(ping.get("at")) if ping else None,
        "apprise_missing": bool(settings.notify) and not apprise_available(),
    }


def notify_test() -> ResponseReturnValue:
    """Send a test message to every target now (at most 10 s) and show each result."""
    settings = _settings()
    results = notify.send_test(settings)
    if not results:
        flash("No notification targets: set BACKUPS_NOTIFY to one or more Apprise URLs.", "warning")
    for result in results:
        if result.ok:
            flash(f"Test message sent to {result.target}.", "ok")
        else:
            flash(f"Test message to {result.target} failed: {result.error}", "critical")
    audit.record(
        settings,
        action="notify-test",
        actor=_actor(),
        ok=bool(results) and all(r.ok for r in results),
        message=f"{sum(r.ok for r in results)} of {len(results)} target(s) accepted a test message",
        details={**_via_web(), "targets": [r.target for r in results]},
    )
    return redirect(url_for(f"{BLUEPRINT}.dashboard"), code=303)


def keep_evidence(backup_id: str) -> ResponseReturnValue:
    """Keep the backup a data-loss warning points at for good (it stays pinned after the
    warning is dismissed)."""
    warning = evidence.keep(_settings(), _backup_id(backup_id), actor=_actor())
    flash(f"Backup {warning.evidence_id} is kept until someone unpins it.", "ok")
    return redirect(url_for(f"{BLUEPRINT}.dashboard"), code=303)


def dismiss_warning(backup_id: str) -> ResponseReturnValue:
    """The change was intended: close the warning; retention decides about its evidence
    again (unless someone chose to keep it)."""
    warning = evidence.dismiss(_settings(), _backup_id(backup_id), actor=_actor())
    flash(f"Warning dismissed; backup {warning.evidence_id} is no longer kept for it.", "ok")
    return redirect(url_for(f"{BLUEPRINT}.dashboard"), code=303)


def backup_list() -> ResponseReturnValue:
    """Every backup, newest first, paginated; filter by kind, jump to a date."""
    store = _store()
    infos = store.list()
    kind = request.args.get("kind", "")
    kind = KIND_ALIASES.get(kind, kind)
    if kind and kind not in KIND_FILTERS:
        abort(404)
    shown = (
        store.memo(("kind", kind), lambda: [i for i in infos if i.kind == KIND_FILTERS[kind]])
        if kind
        else infos
    )
    pages = max(1, math.ceil(len(shown) / PER_PAGE))
    page = request.args.get("page", 1, type=int)
    day = _day(request.args.get("date", ""))
    target: str | None = None
    if day is not None:
        # The newest backup taken on that day or before it: its page, and it is marked.
        offset = _utc_offset(request.args.get("tz", ""))
        target = next((i.id for i in shown if _local_date(i.created_at, offset) <= day), None)
        if target is not None:
            page = next(n for n, i in enumerate(shown) if i.id == target) // PER_PAGE + 1
    if page is None or page < 1 or page > pages:
        abort(404)
    first = (page - 1) * PER_PAGE
    return render_template(
        "tablettracker_backups/list.html",
        backups=shown[first : first + PER_PAGE],
        first=first + 1,
        # Offsite copy per backup, from the local offsite record (no network).
        offsite=store.memo(("offsite",), lambda: copy_states(store.settings, infos)),
        plan=plan_for_store(store),
        sizes=store.memo(("sizes",), lambda: of_listing(store.settings.backup_dir, infos)),
        latest=newest_good(infos),
        page=page,
        pages=pages,
        total=len(infos),
        matching=len(shown),
        by_kind=store.memo(("kinds",), lambda: Counter(i.kind for i in infos)),
        kind=kind,
        kinds=KIND_FILTERS,
        day=day,
        target=target,
        active=jobs.active_job(store.settings),
    )


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _utc_offset(text: str) -> timedelta | None:
    """The browser's offset from UTC in minutes (the list's script sends it), if sane."""
    try:
        minutes = int(text)
    except ValueError:
        return None
    return timedelta(minutes=minutes) if -18 * 60 <= minutes <= 18 * 60 else None


def _local_date(moment: datetime, offset: timedelta | None) -> date:
    if offset is None:
        return moment.astimezone().date()  # the server's zone, as the pages show without JS
    return (moment.astimezone(timezone.utc) + offset).date()


def detail(backup_id: str) -> ResponseReturnValue:
    """One backup's metadata, copies, why it is kept, and per-table row counts."""
    store = _store()
    info = store.get(_backup_id(backup_id))
    infos = store.list()
    latest = newest_good(infos)
    return render_template(
        "tablettracker_backups/detail.html",
        info=info,
        latest=latest is not None and latest.id == info.id,
        offsite=store.memo(("offsite",), lambda: copy_states(store.settings, infos)),
        reasons=plan_for_store(store).reasons(info.id),
        size=store.memo(("sizes",), lambda: of_listing(store.settings.backup_dir, infos)).get(
            info.id
        ),
        newest_verified=_newest_verified(store, info.id),
    )


def _newest_verified(store: BackupStore, other_than: str) -> str | None:
    """A backup to offer instead of a damaged one."""
    return next((i.id for i in store.list() if i.verified and i.id != other_than), None)


#: Audit entries per page.
AUDIT_PER_PAGE = 50


def audit_page() -> ResponseReturnValue:
    """Who did what, when, with what result: the one log every face writes; paged, and
    filtered by action and by backup."""
    settings = _settings()
    action = request.args.get("action", "").strip()
    backup = request.args.get("backup", "").strip()
    if backup:
        try:
            backup = validate_backup_id(backup)
        except BackupError:
            abort(404)
    everything = audit.read_entries(settings, limit=sys.maxsize)
    actions = sorted({e.action for e in everything})
    if action and action not in actions:
        abort(404)
    shown = [
        e
        for e in everything
        if (not action or e.action == action) and (not backup or audit.mentions(e, backup))
    ]
    pages = max(1, math.ceil(len(shown) / AUDIT_PER_PAGE))
    page = request.args.get("page", 1, type=int)
    if page is None or not 1 <= page <= pages:
        abort(404)
    first = (page - 1) * AUDIT_PER_PAGE
    return render_template(
        "tablettracker_backups/audit.html",
        entries=shown[first : first + AUDIT_PER_PAGE],
        first=first + 1,
        matching=len(shown),
        total=len(everything),
        actions=actions,
        action=action,
        backup=backup,
        page=page,
        pages=pages,
    )


def job_page(job_id: str) -> ResponseReturnValue:
    """A job's progress; refreshes itself (no JavaScript needed) until the job is done."""
    job = jobs.read_job(_settings(), jobs.validate_job_id(job_id))
    results = job.result.get("results") if isinstance(job.result, dict) else None
    ordered = (
        sorted(results, key=lambda r: bool(isinstance(r, dict) and r.get("ok")))
        if isinstance(results, list)
        else []
    )
    return render_template(
        "tablettracker_backups/job.html",
        job=job,
        results=ordered,
        failed=sum(1 for r in ordered if not (isinstance(r, dict) and r.get("ok"))),
    )


def job_json(job_id: str) -> ResponseReturnValue:
    """A job's progress as JSON, for the page's optional script."""
    job = jobs.read_job(_settings(), jobs.validate_job_id(job_id))
    return jsonify(job.to_dict())


# -- actions -----------------------------------------------------------------------------------


def _start(action: str, params: dict[str, str] | None = None) -> ResponseReturnValue:
    member = _member()
    # The job's parameters go into its audit entry: it names the database.
    job = jobs.start_job(
        member.settings,
        member.values,
        action=action,
        actor=_actor(),
        params={**(params or {}), "database": member.name},
    )
    return redirect(url_for(f"{BLUEPRINT}.job", job_id=job.id), code=303)


def backup_now() -> ResponseReturnValue:
    """Take a manual backup in a worker process."""
    return _start("backup")


def verify_one(backup_id: str) -> ResponseReturnValue:
    """Fully verify one backup in a worker process."""
    backup_id = _backup_id(backup_id)
    _store().get(backup_id)
    return _start("verify", {"id": backup_id})


def pin_backup(backup_id: str) -> ResponseReturnValue:
    """Pin a backup (retention keeps it until unpinned), with the label typed beside it."""
    set_pin(
        _settings(),
        _backup_id(backup_id),
        pinned=True,
        label=request.form.get("label"),
        clear_label="label" in request.form and not request.form["label"].strip(),
        actor=_actor(),
    )
    evidence.note_owner_pin(_settings(), backup_id)
    return redirect(url_for(f"{BLUEPRINT}.detail", backup_id=backup_id), code=303)


def unpin_backup(backup_id: str) -> ResponseReturnValue:
    """Let retention decide about a pinned backup again (its label stays)."""
    set_pin(_settings(), _backup_id(backup_id), pinned=False, actor=_actor())
    return redirect(url_for(f"{BLUEPRINT}.detail", backup_id=backup_id), code=303)


def verify_all() -> ResponseReturnValue:
    """Fully verify every backup in a worker process."""
    return _start("verify-all")


def prune_page() -> ResponseReturnValue:
    """What prune would delete (changes nothing); after a prune, also what it deleted."""
    return render_template(
        "tablettracker_backups/prune.html",
        plan=plan_for_store(_store()),
        result=session.pop(PRUNED_KEY, None),
    )


#: Where the prune action leaves its result for the page it redirects to (post/redirect/get).
PRUNED_KEY = "_tablettracker_backups_pruned"
#: Ids kept in the session for that page: a cookie is small; the audit log has them all.
PRUNED_SHOWN = 30


def prune_confirm() -> ResponseReturnValue:
    """Delete exactly what the preview showed, or refuse (409) if that changed; then send the
    browser to the prune page, so reloading the result does not post again."""
    settings = _settings()
    store = BackupStore(settings)  # what gets deleted is decided on a fresh listing
    expected = set(filter(None, request.form.get("expect", "").split(",")))
    with operation_lock(settings):
        plan = plan_for_store(store)
        # Prune may keep more than the preview showed (it re-checks the newest backup's
        # checksum), never less: refuse if anything not previewed would now go.
        if not {d.id for d in plan.delete} <= expected:
            return render_template(
                "tablettracker_backups/prune.html",
                plan=plan,
                changed=True,
            ), 409
        result = prune(store)
    audit.record(
        settings,
        action="prune",
        actor=_actor(),
        ok=True,
        message=f"pruned {len(result.deleted)} backup(s)",
        details={**_via_web(), **result.audit_details()},
    )
    session[PRUNED_KEY] = {
        "count": len(result.deleted),
        "ids": list(result.deleted[:PRUNED_SHOWN]),
    }
    return redirect(url_for(f"{BLUEPRINT}.prune"), code=303)


def download(backup_id: str) -> ResponseReturnValue:
    """Send the stored (compressed) file of a backup, only once it hashes to the SHA-256
    recorded when it was taken: each sound-looking copy is hashed in turn (primary first)
    before the first byte goes out, and the one that matches is sent from the same open file,
    with its digest in ``Content-Digest`` (RFC 9530). A backup with no matching copy is
    refused with a page that says so and names the newest sound backup."""
    settings = _settings()
    store = _store()
    info = store.get(_backup_id(backup_id))
    meta = info.metadata
    if meta is None:
        raise BackupNotFound(f"backup {info.id} has no readable metadata to download")
    if meta.format_version != FILES.version and info.verified:
        return _download_built(settings, store, info.id)
    mismatched: list[str] = []
    for copy in info.copies if info.verified else ():
        if copy.state != CopyStatus.OK:
            continue
        handle = _open_matching(store.data_path_for(copy.location, meta), meta.sha256)
        if handle is None:
            mismatched.append(copy.location)
            continue
        audit.record(
            settings,
            action="download",
            actor=_actor(),
            ok=True,
            message=(
                f"downloaded {meta.data_file} ({meta.stored_size} bytes) from {copy.location}, "
                "SHA-256 checked"
            ),
            details={**_via_web(), "id": info.id},
        )
        return _send_checked(handle, meta.data_file, meta.stored_size, meta.sha256)
    what = (
        f"no copy of backup {info.id} matches the SHA-256 recorded when it was taken "
        f"({', '.join(mismatched)} checked just now)"
        if mismatched
        else f"backup {info.id} is known to be damaged (it failed its last verification)"
        if not info.verified
        else f"backup {info.id} has no copy in place to send"
    )
    audit.record(
        settings,
        action="download",
        actor=_actor(),
        ok=False,
        message=f"refused: {what}",
        details={**_via_web(), "id": info.id},
    )
    return render_template(
        "tablettracker_backups/error.html",
        status=409,
        heading="Damaged backup: nothing was downloaded",
        message=(
            f"Nothing was sent: {what}. Its detail page has a Verify button, which records "
            "the damage so the backup is no longer offered."
        ),
        sound=_newest_verified(store, info.id),
        expired=False,
        back=_same_site_referrer(),
        admin=True,
        active=None,
    ), 409


#: Bytes read at a time when hashing a download before it is sent.
HASH_CHUNK = 1024 * 1024


def _download_built(settings: Settings, store: BackupStore, backup_id: str) -> ResponseReturnValue:
    """A backup with no file of its own (format 2): its database is built from the first
    sound copy and checked (:func:`.export.export_backup`), zstd-compressed into a scratch
    file, and sent from that open file, which is removed at once (the open handle keeps it
    readable). What is sent is ``<id>.db.zst``, as a version 1 download is."""
    name = data_key(backup_id, "zstd")
    scratch = temp_path(settings.backup_dir, f"download-{name}")
    try:
        done = export_backup(store, backup_id, scratch, compress=True)
        handle = scratch.open("rb")
    finally:
        remove_quietly(scratch)
    audit.record(
        settings,
        action="download",
        actor=_actor(),
        ok=True,
        message=(
            f"downloaded {name} ({done.size} bytes), built from the {done.location} copy's "
            "pages, SHA-256 checked"
        ),
        details={**_via_web(), "id": backup_id},
    )
    return _send_checked(handle, name, done.size, done.sha256)


def _send_checked(handle: BinaryIO, name: str, size: int, sha256: str) -> Response:
    """Send the open, already checked file ``handle`` as the attachment ``name``, with its
    size and digest, never cached."""
    response: Response = send_file(
        handle,
        mimetype="application/octet-stream",
        as_attachment=True,
        download_name=name,
        conditional=False,
        max_age=0,
    )
    response.headers["Content-Length"] = str(size)
    response.headers["Content-Digest"] = content_digest(sha256)
    response.headers["Cache-Control"] = "no-store"
    return response


def _open_matching(path: Path, sha256: str) -> BinaryIO | None:
    """``path`` opened and rewound if its bytes hash to ``sha256``, else None (also when it
    cannot be read). The caller sends exactly the bytes that were checked: same open file."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        logger.warning("cannot open %s for download: %s", path, exc)
        return None
    try:
        digest = hashlib.sha256()
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
        if hmac.compare_digest(digest.hexdigest(), sha256):
            handle.seek(0)
            return handle
        logger.error("download refused: %s does not match its SHA-256", path)
    except OSError as exc:
        logger.warning("cannot read %s for download: %s", path, exc)
    handle.close()
    return None


def content_digest(sha256_hex: str) -> str:
    """The ``Content-Digest`` header (RFC 9530) for a SHA-256 given in hex."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256_hex)).decode()}:"


def restore_at_page() -> ResponseReturnValue:
    """ "The state as of ...": a date and a 24-hour time (a GET form, so it works without
    JavaScript; ``at=`` in ISO 8601 works too) and the restore points around that moment,
    each leading to the usual restore page. A moment in the future offers no restore."""
    now = datetime.now(timezone.utc)
    day, clock = request.args.get("date", "").strip(), request.args.get("time", "").strip()
    text = request.args.get("at", "").strip() or (f"{day}T{clock or '00:00'}" if day else "")
    infos = BackupStore(_settings()).list()
    events = restore_events(_settings())
    error = None
    moment = None
    try:
        moment = parse_moment(text) if text else Moment(now, zone_given=False)
        point_at(infos, moment.at, now=now, events=events)
    except InvalidTime as exc:
        error, moment = one_line(str(exc)), None
    except BackupNotFound as exc:
        error = one_line(str(exc))
    at = moment.at if moment is not None else now
    local = at.astimezone()
    return render_template(
        "tablettracker_backups/restore_at.html",
        at=at,
        day_value=local.strftime("%Y-%m-%d"),
        time_value=local.strftime("%H:%M"),
        zone=local.strftime("%Z (UTC%z)"),
        future=at > now,
        around=points_around(infos, at, events=events) if moment is not None else None,
        error=error,
    ), (400 if error and moment is None else 200)


def restore_page(backup_id: str) -> ResponseReturnValue:
    """The differences a restore would make, and the typed confirmation (changes nothing)."""
    return _restore_form(_backup_id(backup_id), error=None)


def restore_confirm(backup_id: str) -> ResponseReturnValue:
    """With the backup id or ``RESTORE`` typed in, restore in a worker process (which first
    takes a safety snapshot of the live database, so the restore can be undone).

    A backup known to be damaged (no copy passed its last verification) is refused here: the
    page does not offer it, and a form from before the damage was found must not restore it.
    """
    backup_id = _backup_id(backup_id)
    info = _store().get(backup_id)  # 404 for an unknown backup
    if not info.verified:
        return _restore_form(
            backup_id,
            error=f"Nothing was restored: backup {backup_id} is known to be damaged.",
            status=409,
        )
    typed = request.form.get("confirm", "").strip()
    if typed in (backup_id, RESTORE_WORD):
        return _start("restore", {"id": backup_id})
    return _restore_form(
        backup_id,
        error=(
            f"Nothing was restored: type the backup id {backup_id} or the word {RESTORE_WORD} "
            "to confirm."
        ),
    )


def _restore_form(backup_id: str, *, error: str | None, status: int = 400) -> ResponseReturnValue:
    settings = _settings()
    store = _store()
    info = store.get(backup_id)
    preview = preview_restore(settings, backup_id)
    return render_template(
        "tablettracker_backups/restore.html",
        info=info,
        preview=preview,
        tables=preview.by_impact(),
        biggest=biggest_changes(preview.tables),
        backup_id=backup_id,
        restore_word=RESTORE_WORD,
        newest_verified=_newest_verified(store, backup_id),
        error=error,
        active=jobs.active_job(settings),
    ), (status if error else 200)


# -- the site's own: every database to one coordinated snapshot --------------------------------


def _site() -> list[Member]:
    """Every database of the site, in its order."""
    state = get_state()
    return list(state.members.values()) or [state.first()]


def _group(group_id: str) -> RestoreGroup:
    """The coordinated snapshot the URL names (404 when malformed or unknown)."""
    return find_group([m.settings for m in _site()], _backup_id(group_id))


def group_restore_page(group_id: str) -> ResponseReturnValue:
    """Every member's tables as a restore of the group would change them, and the typed
    confirmation (changes nothing)."""
    return _group_form(_group(group_id), error=None)


def group_restore_confirm(group_id: str) -> ResponseReturnValue:
    """With the group's id or ``RESTORE`` typed in, restore every member, all or nothing, in
    a worker process (``restore --group``'s core function; it takes a safety snapshot of
    every member first). A group that is not whole (a member pruned, lost or damaged) is
    refused here, as the page does not offer it."""
    group = _group(group_id)
    if not group.whole:
        return _group_form(
            group,
            error=f"Nothing was restored: {'; '.join(group.problems)}.",
            status=409,
        )
    typed = request.form.get("confirm", "").strip()
    if typed not in (group.id, RESTORE_WORD):
        return _group_form(
            group,
            error=(
                f"Nothing was restored: type the snapshot's id {group.id} or the word "
                f"{RESTORE_WORD} to confirm."
            ),
        )
    site = _site()
    # The job lives in the site's first database (its job page shows the progress); the
    # worker rebuilds every database's settings from the values it is given.
    home = site[0]
    job = jobs.start_job(
        home.settings,
        home.values,
        action="restore-group",
        actor=_actor(),
        params={
            "group": group.id,
            "databases": ", ".join(group.names),
            "members": json.dumps({m.name: jobs.portable_values(m.values) for m in site}),
        },
    )
    database = home.name if get_state().several else None
    return redirect(url_for(f"{BLUEPRINT}.job", job_id=job.id, database=database), code=303)


def _group_form(
    group: RestoreGroup, *, error: str | None, status: int = 400
) -> ResponseReturnValue:
    members = []
    for listed in group.members:
        preview = None
        if listed.settings is not None and listed.info is not None:
            preview = preview_restore(listed.settings, listed.backup_id)
        members.append(
            {
                "name": listed.name,
                "backup_id": listed.backup_id,
                "info": listed.info,
                "problem": listed.problem,
                "preview": preview,
                "tables": preview.by_impact() if preview is not None else [],
                "biggest": biggest_changes(preview.tables) if preview is not None else set(),
            }
        )
    # A job running on any database makes this one wait: name where it runs.
    running = ((m.name, jobs.active_job(m.settings)) for m in _site())
    active = next(((name, job) for name, job in running if job is not None), None)
    return render_template(
        "tablettracker_backups/group_restore.html",
        group=group,
        members=members,
        restore_word=RESTORE_WORD,
        error=error,
        active=active,
    ), (status if error else 200)

"""The admin pages and the scheduled-task endpoint: thin faces over the core.

Every page is for admins only (anonymous users go to the host's login page, other users get
403); every state change is a POST with a CSRF token and leaves an audit-log entry with the
user. Long actions (back up, verify, restore) are handed to a detached worker process through
:mod:`tablettracker_backups.jobs`, and the person watches a job page until it is done.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user

from tablettracker_backups import audit
from tablettracker_backups.display import human_age, human_size, local_time
from tablettracker_backups.errors import (
    BackupError,
    BackupNotFound,
    InvalidBackupId,
    InvalidTime,
    LockedError,
)
from tablettracker_backups.health import check_health, describe_recovery
from tablettracker_backups.jobs import queue as jobs
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import validate_backup_id
from tablettracker_backups.offsite.policy import copy_states
from tablettracker_backups.prune import plan_for_store, prune
from tablettracker_backups.restore import preview_restore
from tablettracker_backups.restore_points import Moment, parse_moment, point_at, points_around
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import CopyStatus
from tablettracker_backups.store import BackupStore
from tablettracker_backups.web import csrf, tasks
from tablettracker_backups.web.charts import Series, size_chart
from tablettracker_backups.web.resources import resource_dir
from tablettracker_backups.web.state import BackupState, get_state

logger = logging.getLogger(__name__)

BLUEPRINT = "tablettracker_backups"
PER_PAGE = 20
#: What the typed confirmation of a restore may be, besides the backup id itself.
RESTORE_WORD = "RESTORE"


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
    bp.context_processor(_template_context)
    bp.register_error_handler(BackupError, _backup_error)
    bp.add_url_rule("/", "dashboard", dashboard)
    bp.add_url_rule("/backups", "backups", backup_list)
    bp.add_url_rule("/backups/<backup_id>", "detail", detail)
    bp.add_url_rule("/backups/<backup_id>/download", "download", download, methods=["POST"])
    bp.add_url_rule("/backups/<backup_id>/verify", "verify", verify_one, methods=["POST"])
    bp.add_url_rule(
        "/backups/<backup_id>/restore", "restore", restore_page, methods=["GET", "POST"]
    )
    bp.add_url_rule("/restore-at", "restore_at", restore_at_page)
    bp.add_url_rule("/backup-now", "backup_now", backup_now, methods=["POST"])
    bp.add_url_rule("/verify-all", "verify_all", verify_all, methods=["POST"])
    bp.add_url_rule("/prune", "prune", prune_page, methods=["GET", "POST"])
    bp.add_url_rule("/jobs/<job_id>", "job", job_page)
    bp.add_url_rule("/jobs/<job_id>.json", "job_json", job_json)
    bp.add_url_rule("/audit", "audit", audit_page)
    return bp


def register_blueprints(app: Flask, *, prefix: str, task_url: str) -> None:
    """Mount the pages and the endpoint; exempt only the endpoint from Flask-WTF's CSRF."""
    app.register_blueprint(create_blueprint(), url_prefix=None if prefix == "/" else prefix)
    task_bp = tasks.create_task_blueprint(task_url)
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


# -- access ------------------------------------------------------------------------------------


def _guard() -> ResponseReturnValue | None:
    if request.endpoint == f"{BLUEPRINT}.static":
        return None
    if not current_user.is_authenticated:
        response: ResponseReturnValue = current_app.login_manager.unauthorized()  # type: ignore[attr-defined]
        return response
    if not get_state().is_admin(current_user._get_current_object()):
        abort(403, description="Only administrators can see the backup pages.")
    csrf.protect()
    return None


def _actor() -> str:
    user = current_user._get_current_object()
    for attribute in ("username", "email", "name"):
        value = getattr(user, attribute, None)
        if isinstance(value, str) and value:
            return value
    return str(user.get_id())


def _settings() -> Settings:
    return get_state().settings


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
    }


def _utc_attribute(moment: datetime | None) -> str:
    """A ``<time datetime>`` value: UTC to the second (what browsers parse everywhere)."""
    if moment is None:
        return ""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _backup_error(exc: BackupError) -> ResponseReturnValue:
    if isinstance(exc, InvalidBackupId | BackupNotFound):
        status = 404
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
        "tablettracker_backups/error.html", message=str(exc), status=status, active=active
    ), status


def _backup_id(value: str) -> str:
    """Validate an id from the URL (404 for anything malformed, such as a path)."""
    return validate_backup_id(value)


# -- pages -------------------------------------------------------------------------------------


def dashboard() -> ResponseReturnValue:
    """Health, newest backups, next run, disk, copies agreeing, and the size chart."""
    settings = _settings()
    report = check_health(settings)
    infos = BackupStore(settings).list()
    with_meta = [i for i in infos if i.metadata is not None]
    chart = size_chart(
        [
            Series(
                "stored size",
                "ttb-stored",
                [(i.created_at, float(i.metadata.stored_size)) for i in with_meta if i.metadata],
            ),
            Series(
                "database size",
                "ttb-raw",
                [(i.created_at, float(i.metadata.raw_size)) for i in with_meta if i.metadata],
            ),
        ]
    )
    disagree = [i for i in infos if any(c.state != CopyStatus.OK for c in i.copies)]
    return render_template(
        "tablettracker_backups/dashboard.html",
        report=report,
        recovery_lines=describe_recovery(report.recovery),
        settings=settings,
        chart=chart,
        backups=infos,
        disagree=disagree,
        active=jobs.active_job(settings),
        recent=jobs.recent_jobs(settings, limit=5),
    )


def backup_list() -> ResponseReturnValue:
    """Every backup, newest first, paginated, with why each is kept and its copies."""
    store = BackupStore(_settings())
    infos = store.list()
    pages = max(1, math.ceil(len(infos) / PER_PAGE))
    page = request.args.get("page", 1, type=int)
    if page is None or page < 1 or page > pages:
        abort(404)
    plan = plan_for_store(store)
    shown = infos[(page - 1) * PER_PAGE : page * PER_PAGE]
    return render_template(
        "tablettracker_backups/list.html",
        backups=shown,
        # Offsite copy per backup, from the local offsite record (no network).
        offsite=copy_states(store.settings, infos),
        plan=plan,
        page=page,
        pages=pages,
        total=len(infos),
        locations=list(store.locations),
        active=jobs.active_job(store.settings),
    )


def detail(backup_id: str) -> ResponseReturnValue:
    """One backup's metadata, copies and per-table row counts."""
    store = BackupStore(_settings())
    info = store.get(_backup_id(backup_id))
    return render_template(
        "tablettracker_backups/detail.html",
        info=info,
        offsite=copy_states(store.settings, store.list()),
        reasons=plan_for_store(store).reasons(info.id),
    )


def audit_page() -> ResponseReturnValue:
    """Who did what, when, with what result."""
    return render_template(
        "tablettracker_backups/audit.html", entries=audit.read_entries(_settings(), limit=500)
    )


def job_page(job_id: str) -> ResponseReturnValue:
    """A job's progress; refreshes itself (no JavaScript needed) until the job is done."""
    job = jobs.read_job(_settings(), jobs.validate_job_id(job_id))
    return render_template("tablettracker_backups/job.html", job=job)


def job_json(job_id: str) -> ResponseReturnValue:
    """A job's progress as JSON, for the page's optional script."""
    job = jobs.read_job(_settings(), jobs.validate_job_id(job_id))
    return jsonify(job.to_dict())


# -- actions -----------------------------------------------------------------------------------


def _start(action: str, params: dict[str, str] | None = None) -> ResponseReturnValue:
    state = get_state()
    job = jobs.start_job(state.settings, state.values, action=action, actor=_actor(), params=params)
    return redirect(url_for(f"{BLUEPRINT}.job", job_id=job.id), code=303)


def backup_now() -> ResponseReturnValue:
    """Take a manual backup in a worker process."""
    return _start("backup")


def verify_one(backup_id: str) -> ResponseReturnValue:
    """Fully verify one backup in a worker process."""
    backup_id = _backup_id(backup_id)
    BackupStore(_settings()).get(backup_id)
    return _start("verify", {"id": backup_id})


def verify_all() -> ResponseReturnValue:
    """Fully verify every backup in a worker process."""
    return _start("verify-all")


def prune_page() -> ResponseReturnValue:
    """GET: what prune would delete. POST: delete exactly that, or refuse if it changed."""
    settings = _settings()
    store = BackupStore(settings)
    if request.method == "GET":
        return render_template("tablettracker_backups/prune.html", plan=plan_for_store(store))
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
    message = f"pruned {len(result.deleted)} backup(s)"
    audit.record(
        settings,
        action="prune",
        actor=_actor(),
        ok=True,
        message=message,
        details={"via": "web", "deleted": list(result.deleted)},
    )
    return render_template("tablettracker_backups/prune.html", plan=plan, result=result)


def download(backup_id: str) -> ResponseReturnValue:
    """Stream the stored (compressed) file of a backup; primary copy preferred."""
    settings = _settings()
    store = BackupStore(settings)
    info = store.get(_backup_id(backup_id))
    meta = info.metadata
    location = next((c.location for c in info.copies if c.state == CopyStatus.OK), None)
    if meta is None or location is None:
        raise BackupNotFound(f"backup {info.id} has no sound copy to download")
    path = store.data_path(location, info.id, meta.compression)
    audit.record(
        settings,
        action="download",
        actor=_actor(),
        ok=True,
        message=f"downloaded {meta.data_file} ({meta.stored_size} bytes) from {location}",
        details={"via": "web", "id": info.id},
    )
    response: Response = send_file(
        path,
        mimetype="application/octet-stream",
        as_attachment=True,
        download_name=meta.data_file,
        conditional=False,
        max_age=0,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def restore_at_page() -> ResponseReturnValue:
    """ "The state as of ...": a time picker (a GET form, so it works without JavaScript) and
    the restore points around the chosen time, each leading to the usual restore page."""
    now = datetime.now(timezone.utc)
    text = request.args.get("at", "").strip()
    infos = BackupStore(_settings()).list()
    error = None
    moment = None
    try:
        moment = parse_moment(text) if text else Moment(now, zone_given=False)
        point_at(infos, moment.at, now=now)
    except InvalidTime as exc:
        error, moment = str(exc), None
    except BackupNotFound as exc:
        error = str(exc)
    at = moment.at if moment is not None else now
    return render_template(
        "tablettracker_backups/restore_at.html",
        at=at,
        # datetime-local wants local time without a zone, to the minute.
        picker_value=at.astimezone().strftime("%Y-%m-%dT%H:%M"),
        zone=at.astimezone().strftime("%Z (UTC%z)"),
        around=points_around(infos, at) if moment is not None else None,
        error=error,
    ), (400 if error and moment is None else 200)


def restore_page(backup_id: str) -> ResponseReturnValue:
    """GET: the differences a restore would make, and the typed confirmation.

    POST: with the backup id or ``RESTORE`` typed in, restore in a worker process (which first
    takes a safety snapshot of the live database, so the restore can be undone).
    """
    backup_id = _backup_id(backup_id)
    settings = _settings()
    preview = preview_restore(settings, backup_id)
    error = None
    if request.method == "POST":
        typed = request.form.get("confirm", "").strip()
        if typed in (backup_id, RESTORE_WORD):
            return _start("restore", {"id": backup_id})
        error = (
            f"Nothing was restored: type the backup id {backup_id} or the word {RESTORE_WORD} "
            "to confirm."
        )
    return render_template(
        "tablettracker_backups/restore.html",
        preview=preview,
        backup_id=backup_id,
        restore_word=RESTORE_WORD,
        error=error,
        active=jobs.active_job(settings),
    ), (400 if error else 200)

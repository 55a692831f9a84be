"""The demo TabletTracker app: a small host app that mounts the backup pages.

It has
Flask-Login users from the ``employees`` table (``role = 'admin'`` decides who is an admin),
purchase-order pages to change data with, and a base layout the backup pages extend.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from werkzeug.security import check_password_hash, generate_password_hash

from tablettracker_backups.demo.schema import create_audit_database, create_demo_database
from tablettracker_backups.fsutil import atomic_write_bytes, ensure_private_dir
from tablettracker_backups.web import csrf
from tablettracker_backups.web.extension import BackupManager
from tablettracker_backups.web.headers import security_headers

logger = logging.getLogger(__name__)

DATABASE_NAME = "tablet_counter.db"
#: The demo's audit log: its own database, written in the same transaction as each change.
AUDIT_DATABASE_NAME = "audit_log.db"
#: The schema name the audit database is ATTACHed under on every connection.
AUDIT_SCHEMA_NAME = "audit"
STATUSES = ("open", "received", "closed")


@dataclass(frozen=True)
class DemoInstance:
    """The demo's instance folder and the secrets kept in it."""

    path: Path
    database: Path
    audit_database: Path
    admin_username: str
    password: str
    task_token: str
    secret_key: str
    created: bool


def _secret_file(path: Path, make: int) -> str:
    """Read a secret kept in the instance folder, creating it (0600) on first use."""
    try:
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(make)
    atomic_write_bytes(path, (value + "\n").encode())
    return value


def prepare_instance(path: Path) -> DemoInstance:
    """Create the instance folder (owner-only) and a seeded database if missing."""
    path = path.absolute()
    ensure_private_dir(path)
    password = _secret_file(path / "demo_password.txt", 9)
    database = path / DATABASE_NAME
    created = not database.exists()
    if created:
        # Every demo user shares one generated password, printed by the demo command.
        create_demo_database(str(database), password_hash=generate_password_hash(password))
        os.chmod(database, 0o600)
    audit_database = path / AUDIT_DATABASE_NAME
    if not audit_database.exists():  # also for an instance from before the audit log
        create_audit_database(str(audit_database))
        os.chmod(audit_database, 0o600)
    return DemoInstance(
        path=path,
        database=database,
        audit_database=audit_database,
        admin_username="admin",
        password=password,
        task_token=_secret_file(path / "task_token.txt", 24),
        secret_key=_secret_file(path / "secret_key.txt", 32),
        created=created,
    )


class User(UserMixin):  # type: ignore[misc]
    """An employee who can log in."""

    def __init__(self, row: sqlite3.Row, session_version: int = 0) -> None:
        self.id = int(row["id"])
        self.username = str(row["username"])
        self.full_name = str(row["full_name"])
        self.role = str(row["role"])
        self.session_version = session_version

    def get_id(self) -> str:
        # The session names the version it was made under: see end_sessions().
        return f"{self.id}.{self.session_version}"

    @property
    def is_admin(self) -> bool:
        """The demo's rule: the ``role`` column says ``admin``."""
        return self.role == "admin"


# -- ending sessions at logout ------------------------------------------------------------------
# Flask's session lives in the browser's cookie, signed but not stored here, so logging out
# only tells that browser to forget it: a copy taken before (another tab's, a stolen one)
# would stay valid. Each user therefore has a session version, kept in the instance folder
# (not the database: restoring an old backup must not bring old sessions back to life). A
# session carries the version it was made under, Flask-Login's user loader accepts only the
# current one, and logging out moves it on, ending every session of that user at once.

SESSIONS_FILE = "session_versions.json"


def _session_versions() -> dict[str, int]:
    path = Path(current_app.instance_path) / SESSIONS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, int)}


def session_version(user_id: int) -> int:
    """The version a session of ``user_id`` must carry to be accepted."""
    return _session_versions().get(str(user_id), 0)


def end_sessions(user_id: int) -> None:
    """End every session of ``user_id``, in every browser (the next request logs in again)."""
    versions = _session_versions()
    versions[str(user_id)] = versions.get(str(user_id), 0) + 1
    atomic_write_bytes(
        Path(current_app.instance_path) / SESSIONS_FILE,
        (json.dumps(versions, sort_keys=True) + "\n").encode(),
    )


def is_admin(user: Any) -> bool:
    """``BACKUPS_IS_ADMIN`` for the demo."""
    return getattr(user, "role", None) == "admin"


@contextmanager
def db() -> Iterator[sqlite3.Connection]:
    """A connection to the live database for one request, with the audit database ATTACHed
    as ``audit``: a change and its audit row commit in one transaction, or neither does."""
    conn = sqlite3.connect(current_app.config["DATABASE"], timeout=10)
    conn.row_factory = sqlite3.Row
    with closing(conn):
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(
            f"ATTACH DATABASE ? AS {AUDIT_SCHEMA_NAME}",
            (current_app.config["DEMO_AUDIT_DATABASE"],),
        )
        yield conn


def log_change(conn: sqlite3.Connection, action: str, po_id: int, detail: str) -> None:
    """Add the audit row for a change, inside the change's own transaction (not committed
    here: the caller commits both at once)."""
    conn.execute(
        f"INSERT INTO {AUDIT_SCHEMA_NAME}.change_log (at, actor, action, po_id, detail)"
        " VALUES (?, ?, ?, ?, ?)",
        (
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
            str(getattr(current_user, "username", "?")),
            action,
            po_id,
            detail,
        ),
    )


pages = Blueprint(
    "demo",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/demo-static",
)


@pages.before_request
def _login_and_csrf() -> ResponseReturnValue | None:
    public = ("demo.login", "demo.logout", "demo.static")
    if request.endpoint not in public and not current_user.is_authenticated:
        response: ResponseReturnValue = current_app.login_manager.unauthorized()  # type: ignore[attr-defined]
        return response
    csrf.protect()
    return None


@pages.app_context_processor
def _demo_context() -> dict[str, Any]:
    return {"csrf_token_value": csrf.csrf_token, "csrf_field": csrf.field_name}


@pages.route("/")
def index() -> ResponseReturnValue:
    """Purchase orders, newest first."""
    with db() as conn:
        orders = conn.execute(
            "SELECT po.*, count(l.id) AS lines, coalesce(sum(l.quantity_ordered), 0) AS ordered"
            " FROM purchase_orders po LEFT JOIN po_lines l ON l.po_id = po.id"
            " GROUP BY po.id ORDER BY po.id DESC"
        ).fetchall()
    return render_template("demo/orders.html", orders=orders)


def _order(conn: sqlite3.Connection, po_id: int) -> sqlite3.Row:
    order = conn.execute("SELECT * FROM purchase_orders WHERE id = ?", (po_id,)).fetchone()
    if order is None:
        abort(404)
    row: sqlite3.Row = order
    return row


@pages.route("/po/<int:po_id>")
def order(po_id: int) -> ResponseReturnValue:
    """One purchase order and its lines."""
    with db() as conn:
        po = _order(conn, po_id)
        lines = conn.execute(
            "SELECT l.*, p.sku, p.description, t.name AS tablet FROM po_lines l"
            " JOIN product_details p ON p.id = l.product_id"
            " JOIN tablet_types t ON t.id = p.tablet_type_id WHERE l.po_id = ? ORDER BY l.id",
            (po_id,),
        ).fetchall()
    return render_template("demo/order.html", po=po, lines=lines)


@pages.route("/po/<int:po_id>/edit", methods=["GET", "POST"])
def edit_order(po_id: int) -> ResponseReturnValue:
    """Edit a purchase order's supplier, status and notes."""
    with db() as conn:
        po = _order(conn, po_id)
        if request.method == "POST":
            supplier = request.form.get("supplier", "").strip()
            status = request.form.get("status", "")
            notes = request.form.get("notes", "").strip()
            if not supplier or status not in STATUSES or len(supplier) > 200:
                flash("Supplier is required and status must be open, received or closed.")
                return render_template("demo/edit.html", po=po, statuses=STATUSES), 400
            conn.execute(
                "UPDATE purchase_orders SET supplier = ?, status = ?, notes = ? WHERE id = ?",
                (supplier, status, notes[:2000], po_id),
            )
            log_change(conn, "edit", po_id, f"{po['po_number']}: {supplier}, {status}")
            conn.commit()  # the change and its audit row, in one transaction
            flash(f"Saved {po['po_number']}.")
            return redirect(url_for("demo.order", po_id=po_id), code=303)
    return render_template("demo/edit.html", po=po, statuses=STATUSES)


def _safe_next(target: str | None) -> str:
    r"""``target`` if it is a path on this site, else the index.

    Browsers read a backslash as a slash and drop tabs and newlines inside a URL, so ``/\x``
    and ``/<tab>/x`` both mean ``//x``: another host. Refuse any of them here rather than rely on
    the redirect's escaping.
    """
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and target.isprintable()
        and not any(ch.isspace() for ch in target)
    ):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("demo.index")


@pages.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """Log in with a username from the employees table."""
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        with db() as conn:
            row = conn.execute(
                "SELECT * FROM employees WHERE username = ? AND active = 1", (username,)
            ).fetchone()
        if (
            row is not None
            and row["password_hash"]
            and check_password_hash(row["password_hash"], password)
        ):
            login_user(User(row, session_version(int(row["id"]))))
            return redirect(_safe_next(request.args.get("next")), code=303)
        flash("Wrong username or password.")
        return render_template("demo/login.html"), 401
    return render_template("demo/login.html")


@pages.route("/logout", methods=["POST"])
def logout() -> ResponseReturnValue:
    """Log out, ending every session of this user (see :func:`end_sessions`)."""
    if current_user.is_authenticated:
        end_sessions(int(current_user.id))
    logout_user()
    return redirect(url_for("demo.login"), code=303)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The demo TabletTracker app.

    ``config`` may set ``INSTANCE_PATH`` (default: Flask's instance folder) and any Flask or
    ``BACKUPS_*`` key. Missing secrets (session key, task token, the users' password) are
    generated once and kept owner-only in the instance folder.

    The app writes two databases: TabletTracker's and an audit log, each change and its audit
    row in one transaction. ``DEMO_SITE=True`` (what ``tablettracker-backups demo`` passes)
    backs up both, as a site (``BACKUPS_DATABASES``: ``tablets`` and ``audit``); by default
    only TabletTracker's is (``BACKUPS_DATABASE``), a site of one.
    """
    config = dict(config or {})
    instance_path = config.pop("INSTANCE_PATH", None)
    as_site = bool(config.pop("DEMO_SITE", False))
    app = Flask(
        __name__,
        instance_path=str(Path(instance_path).absolute()) if instance_path else None,
        instance_relative_config=True,
    )
    instance = prepare_instance(Path(app.instance_path))
    app.config.update(
        SECRET_KEY=instance.secret_key,
        DATABASE=str(instance.database),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # The largest form here is a purchase order's notes: no request needs a megabyte.
        MAX_CONTENT_LENGTH=1024 * 1024,
        DEMO_ADMIN=instance.admin_username,
        DEMO_PASSWORD=instance.password,
        DEMO_AUDIT_DATABASE=str(instance.audit_database),
        BACKUPS_TASK_TOKEN=instance.task_token,
        BACKUPS_BASE_TEMPLATE="demo/base.html",
        BACKUPS_IS_ADMIN=is_admin,
    )
    if as_site:
        app.config["BACKUPS_DATABASES"] = {
            "tablets": str(instance.database),
            "audit": str(instance.audit_database),
        }
    else:
        app.config["BACKUPS_DATABASE"] = str(instance.database)
    app.config.update(config)

    login_manager = LoginManager(app)
    login_manager.login_view = "demo.login"
    login_manager.login_message = "Please log in to see that page."

    def load_user(session_id: str) -> User | None:
        user_id, _, version = session_id.partition(".")
        if not user_id.isdigit() or not version.isdigit():
            return None
        if int(version) != session_version(int(user_id)):
            return None  # a session from before a logout
        with db() as conn:
            row = conn.execute(
                "SELECT * FROM employees WHERE id = ? AND active = 1", (int(user_id),)
            ).fetchone()
        return User(row, int(version)) if row is not None else None

    login_manager.user_loader(load_user)

    try:
        from flask_wtf.csrf import CSRFProtect
    except ImportError:  # Flask-WTF is optional: the blueprint then uses its own tokens.
        pass
    else:
        if app.config.get("DEMO_USE_FLASK_WTF", True):
            CSRFProtect(app)

    app.register_blueprint(pages)
    BackupManager(app)
    # The demo's own pages send the headers the backup pages send (CSP, Referrer-Policy ...):
    # its templates have no inline script or style either.
    app.after_request(security_headers)

    return app

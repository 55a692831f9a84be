"""TabletTracker as its developer wrote it: factory, instance config, own users and login."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from flask import Flask, redirect, render_template, request, url_for
from flask_login import LoginManager, UserMixin, login_required, login_user
from flask_wtf import CSRFProtect, FlaskForm
from werkzeug.security import check_password_hash, generate_password_hash
from wtforms import PasswordField, StringField

from tablettracker_backups import BackupManager

csrf = CSRFProtect()
login_manager = LoginManager()
backups = BackupManager()

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY, username TEXT UNIQUE NOT NULL, password_hash TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'staff'
);
CREATE TABLE IF NOT EXISTS tablets (id INTEGER PRIMARY KEY, name TEXT NOT NULL, count INTEGER);
"""


class User(UserMixin):  # type: ignore[misc]
    """A row of the users table. It has a role, and no is_admin attribute of its own."""

    def __init__(self, row: sqlite3.Row) -> None:
        self.id = row["id"]
        self.username = row["username"]
        self.role = row["role"]


class LoginForm(FlaskForm):  # type: ignore[misc]
    username = StringField("Username")
    password = PasswordField("Password")


def connect() -> sqlite3.Connection:
    from flask import current_app

    conn = sqlite3.connect(current_app.config["DATABASE"])
    conn.row_factory = sqlite3.Row
    return conn


def init_db(app: Flask) -> None:
    with app.app_context():
        conn = connect()
        conn.executescript(SCHEMA)
        for name, role in (("boss", "admin"), ("clerk", "staff")):
            conn.execute(
                "INSERT OR IGNORE INTO users (username, password_hash, role) VALUES (?, ?, ?)",
                (name, generate_password_hash(f"{name}-password"), role),
            )
        conn.executemany(
            "INSERT INTO tablets (name, count) VALUES (?, ?)", [("blue", 10), ("red", 5)]
        )
        conn.commit()
        conn.close()


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(
        SECRET_KEY="dev", DATABASE=os.path.join(app.instance_path, "tablet_counter.db")
    )
    app.config.from_pyfile("config.py", silent=True)
    if test_config:
        app.config.update(test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    if not os.path.exists(app.config["DATABASE"]):
        init_db(app)

    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "login"

    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        conn = connect()
        row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
        conn.close()
        return User(row) if row else None

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        form = LoginForm()
        if form.validate_on_submit():
            conn = connect()
            row = conn.execute(
                "SELECT * FROM users WHERE username = ?", (form.username.data,)
            ).fetchone()
            conn.close()
            if row and check_password_hash(row["password_hash"], form.password.data or ""):
                login_user(User(row))
                return redirect(request.args.get("next") or url_for("index"))
        return render_template("login.html", form=form)

    @app.route("/")
    @login_required
    def index() -> str:
        return "TabletTracker"

    backups.init_app(app)
    return app

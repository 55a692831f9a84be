"""What the pages guard against, through Flask's test client on the demo and a bare host:
a strict CSP and Referrer-Policy on every response (the demo's own pages too) and no inline
script or style to need more; request bodies capped before they are read; form tokens that
change at login; sessions that end at logout; downloads sent only once their SHA-256 matched;
no internal error text on a page."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_login import LoginManager, UserMixin, login_user

from tablettracker_backups import BackupManager, audit
from tablettracker_backups.backup import create_backup
from tablettracker_backups.jobs.queue import jobs_dir
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore
from tablettracker_backups.web.extension import get_state
from tablettracker_backups.web.headers import CONTENT_SECURITY_POLICY
from tests.conftest import csrf_from, flip_byte, login, wait_for_job

P = "/admin/backups"


def settings_of(app: Flask) -> Settings:
    with app.app_context():
        return get_state().settings


@pytest.fixture
def backup_id(app: Flask) -> str:
    return create_backup(settings_of(app), trigger="test").metadata.id


def token_of(client: FlaskClient, path: str = f"{P}/") -> str:
    return csrf_from(client.get(path).get_data(as_text=True))


class HostUser(UserMixin):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        self.id = name
        self.is_admin = name == "admin"


def bare_host(tmp_path: Path, db_path: Path, **config: Any) -> Flask:
    """A host without Flask-WTF: the blueprint's own form tokens."""
    host = Flask("host")
    host.config.update(
        SECRET_KEY="test-secret",
        TESTING=True,
        BACKUPS_DATABASE=str(db_path),
        BACKUPS_DIR=str(tmp_path / "host-backups"),
        **config,
    )
    manager = LoginManager(host)
    manager.user_loader(HostUser)

    @host.route("/login/<name>")
    def host_login(name: str) -> str:
        login_user(HostUser(name))
        return "in"

    BackupManager(host)
    return host


# -- headers and inline code -------------------------------------------------------------------


def test_every_response_has_a_strict_csp_and_referrer_policy(
    app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    token = token_of(admin_client)
    responses = {
        path: admin_client.get(path)
        for path in (
            f"{P}/",
            f"{P}/backups",
            f"{P}/backups?kind=auto",
            f"{P}/backups/{backup_id}",
            f"{P}/backups/{backup_id}/restore",
            f"{P}/restore-at",
            f"{P}/prune",
            f"{P}/audit",
            f"{P}/backups/20200101T000000Z-abcdef",  # a 404 page
            "/",  # the demo host's own pages
            "/po/1",
            "/po/1/edit",
        )
    }
    responses["download"] = admin_client.post(
        f"{P}/backups/{backup_id}/download", data={"csrf_token": token}
    )
    responses["task JSON"] = app.test_client().post("/tasks/backups/run")
    responses["login"] = app.test_client().get("/login")
    for name, response in responses.items():
        assert response.headers.get("Content-Security-Policy") == CONTENT_SECURITY_POLICY, name
        assert response.headers.get("Referrer-Policy") == "same-origin", name
        response.close()
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


INLINE = [
    re.compile(r"<script(?![^>]*\ssrc=)[^>]*>", re.I),  # a script element without src
    re.compile(r"<style\b", re.I),
    re.compile(r"\sstyle\s*=", re.I),
    re.compile(r"\son[a-z]+\s*=", re.I),  # onclick= ...
    re.compile(r"javascript:", re.I),
]


def test_no_page_has_inline_script_or_style(
    app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    """What the CSP forbids must not be there to begin with (the browser test checks that
    Chromium reports no violation)."""
    pages = [
        f"{P}/",
        f"{P}/backups",
        f"{P}/backups/{backup_id}",
        f"{P}/backups/{backup_id}/restore",
        f"{P}/restore-at?at=2020-01-01T00:00",
        f"{P}/prune",
        f"{P}/audit",
        "/",
        "/po/1",
        "/po/1/edit",
    ]
    for path in pages:
        html = admin_client.get(path).get_data(as_text=True)
        for pattern in INLINE:
            assert not pattern.search(html), (path, pattern.pattern)
    html = app.test_client().get("/login").get_data(as_text=True)
    assert not any(p.search(html) for p in INLINE)


def test_a_host_policy_wins(tmp_path: Path, db_path: Path) -> None:
    from flask import after_this_request

    host = bare_host(tmp_path, db_path)

    @host.before_request
    def policy() -> None:
        @after_this_request
        def apply(response: Any) -> Any:
            response.headers["Content-Security-Policy"] = "default-src 'self' cdn.example"
            response.headers["Referrer-Policy"] = "no-referrer"
            return response

    client = host.test_client()
    client.get("/login/admin")
    response = client.get(f"{P}/")
    assert response.status_code == 200
    assert response.headers.getlist("Content-Security-Policy") == ["default-src 'self' cdn.example"]
    assert response.headers.getlist("Referrer-Policy") == ["no-referrer"]


# -- request size ------------------------------------------------------------------------------


def padded(token: str, size: int) -> bytes:
    """A form of exactly ``size`` bytes: the token, and padding the view ignores."""
    head = f"csrf_token={token}&pad=".encode()
    return head + b"x" * (size - len(head))


def test_a_post_over_the_limit_is_refused_in_the_layout_before_anything_runs(
    app: Flask, admin_client: FlaskClient
) -> None:
    settings = settings_of(app)
    limit = get_state_value(app, "max_post_bytes")
    assert limit == 128_000
    token = token_of(admin_client)
    form = "application/x-www-form-urlencoded"
    response = admin_client.post(
        f"{P}/backup-now", data=padded(token, limit + 1), content_type=form
    )
    assert response.status_code == 413
    html = response.get_data(as_text=True)
    assert "<h1>Too large: nothing was done</h1>" in html and '<a class="brand"' in html
    assert "125.0 KiB" in html
    assert not jobs_dir(settings).exists() or not list(jobs_dir(settings).glob("*.json"))
    # At the limit exactly, the form is read and the action runs.
    response = admin_client.post(f"{P}/backup-now", data=padded(token, limit), content_type=form)
    assert response.status_code == 303
    assert wait_for_job(settings, response.location.rsplit("/", 1)[1]).state == "done"
    # The task URL has the same cap (it needs no body at all).
    big = app.test_client().post(
        "/tasks/backups/run", data=b"x" * (limit + 1), content_type="text/plain"
    )
    assert big.status_code == 413


def get_state_value(app: Flask, name: str) -> Any:
    with app.app_context():
        return getattr(get_state(), name)


def test_the_limit_is_configurable_and_checked_at_start(tmp_path: Path, db_path: Path) -> None:
    host = bare_host(tmp_path, db_path, BACKUPS_MAX_POST_SIZE="2KB")
    assert get_state_value(host, "max_post_bytes") == 2000
    client = host.test_client()
    client.get("/login/admin")
    token = token_of(client)
    form = "application/x-www-form-urlencoded"
    assert client.post(
        f"{P}/verify-all", data=padded(token, 2001), content_type=form
    ).status_code == (413)
    for bad in ("lots", "10%", 100):
        with pytest.raises(RuntimeError, match="BACKUPS_MAX_POST_SIZE must be a size like 128KB"):
            bare_host(tmp_path, db_path, BACKUPS_MAX_POST_SIZE=bad)


def test_the_demo_caps_its_own_requests(app: Flask, admin_client: FlaskClient) -> None:
    assert app.config["MAX_CONTENT_LENGTH"] == 1024 * 1024
    token = token_of(admin_client, "/po/1/edit")
    response = admin_client.post(
        "/po/1/edit",
        data=padded(token, 1024 * 1024 + 1),
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 413


# -- tokens and sessions -----------------------------------------------------------------------


def test_the_form_token_changes_at_login_and_the_old_one_is_refused(
    app: Flask, tmp_path: Path, db_path: Path
) -> None:
    # The demo: Flask-WTF's token.
    client = app.test_client()
    before = csrf_from(client.get("/login").get_data(as_text=True))
    login(client, "admin", app.config["DEMO_PASSWORD"])
    after = token_of(client)
    assert after != before
    assert client.post(f"{P}/verify-all", data={"csrf_token": before}).status_code == 400
    # A bare host: the blueprint's own token, rotated at login and at logout.
    host = bare_host(tmp_path, db_path)
    other = host.test_client()
    other.get("/login/admin")
    first = token_of(other)
    other.get("/login/admin")  # logging in again, e.g. as someone else on this computer
    second = token_of(other)
    assert first != second
    assert other.post(f"{P}/verify-all", data={"csrf_token": first}).status_code == 400
    assert other.post(f"{P}/verify-all", data={"csrf_token": second}).status_code == 303


def test_logout_ends_every_copy_of_the_session(app: Flask) -> None:
    client = app.test_client()
    login(client, "admin", app.config["DEMO_PASSWORD"])
    assert client.get(f"{P}/").status_code == 200
    cookie = client.get_cookie("session")
    assert cookie is not None
    copied = app.test_client()  # the same cookie in another browser (a copy taken earlier)
    copied.set_cookie("session", cookie.value)
    assert copied.get(f"{P}/").status_code == 200
    token = token_of(client, "/")
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    response = copied.get(f"{P}/")
    assert response.status_code == 302 and response.location.startswith("/login")
    # Logging in again works, and only the new session is accepted.
    login(client, "admin", app.config["DEMO_PASSWORD"])
    assert client.get(f"{P}/").status_code == 200
    assert copied.get(f"{P}/").status_code == 302


# -- downloads ---------------------------------------------------------------------------------


def test_a_download_is_sent_with_its_digest_after_its_hash_matched(
    app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    settings = settings_of(app)
    stored = BackupStore(settings).data_path("primary", backup_id, settings.compression)
    response = admin_client.post(
        f"{P}/backups/{backup_id}/download", data={"csrf_token": token_of(admin_client)}
    )
    assert response.status_code == 200
    body = response.data
    response.close()
    assert body == stored.read_bytes()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert response.headers["Content-Digest"] == f"sha-256=:{digest}:"
    assert response.headers["Content-Length"] == str(len(body))
    assert "SHA-256 checked" in audit.read_entries(settings)[0].message


def test_a_damaged_copy_is_never_sent_and_the_page_names_the_newest_sound_backup(
    tmp_path: Path,
) -> None:
    from tablettracker_backups.demo import create_app

    app = create_app(
        {
            "INSTANCE_PATH": tmp_path / "instance-mirrored",
            "TESTING": True,
            "BACKUPS_SECONDARY_DIR": str(tmp_path / "mirror"),
        }
    )
    admin_client = app.test_client()
    login(admin_client, "admin", app.config["DEMO_PASSWORD"])
    settings = settings_of(app)
    sound = create_backup(settings, trigger="test").metadata.id
    damaged = create_backup(settings, trigger="test").metadata.id
    store = BackupStore(settings)
    primary = store.data_path("primary", damaged, settings.compression)
    meta = store.get(damaged).metadata
    assert meta is not None
    secondary = store.data_path_for("secondary", meta)
    token = token_of(admin_client)
    # Only the primary copy flipped (same size: the listing still calls it verified): the
    # secondary copy, which matches, is sent instead.
    flip_byte(primary)
    assert store.get(damaged).verified
    response = admin_client.post(f"{P}/backups/{damaged}/download", data={"csrf_token": token})
    assert response.status_code == 200 and response.data == secondary.read_bytes()
    response.close()
    # Both flipped: nothing is sent, and the page says why and where to go instead.
    flip_byte(secondary)
    response = admin_client.post(f"{P}/backups/{damaged}/download", data={"csrf_token": token})
    html = response.get_data(as_text=True)
    assert response.status_code == 409
    assert "Content-Disposition" not in response.headers
    assert "<h1>Damaged backup: nothing was downloaded</h1>" in html
    assert f"no copy of backup {damaged} matches the SHA-256" in html
    assert f'href="{P}/backups/{sound}">{sound}</a>' in html
    entry = audit.read_entries(settings)[0]
    assert (entry.action, entry.ok) == ("download", False)


def test_a_backup_known_to_be_damaged_is_refused_without_reading_it(
    app: Flask, admin_client: FlaskClient
) -> None:
    from tablettracker_backups.verify import verify_backup

    settings = settings_of(app)
    damaged = create_backup(settings, trigger="test").metadata.id
    store = BackupStore(settings)
    meta = store.get(damaged).metadata
    assert meta is not None
    flip_byte(store.data_path_for("primary", meta))
    verify_backup(store, damaged, notify_owner=False)
    assert not store.get(damaged).verified
    response = admin_client.post(
        f"{P}/backups/{damaged}/download", data={"csrf_token": token_of(admin_client)}
    )
    assert response.status_code == 409
    assert f"backup {damaged} is known to be damaged" in response.get_data(as_text=True)


# -- error text --------------------------------------------------------------------------------


def test_python_error_text_never_reaches_a_page(tmp_path: Path, db_path: Path) -> None:
    host = bare_host(tmp_path, db_path)
    client = host.test_client()
    client.get("/login/admin")
    response = client.get(f"{P}/restore-at?at=2026-11-23T20:15%2B99:00")
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "timedelta" not in html and "strictly between" not in html
    assert "invalid time zone offset +99:00" in html and "between -23:59 and +23:59" in html

    def broken(user: object) -> bool:
        raise ValueError("internal detail 4711")

    host = bare_host(tmp_path, db_path, BACKUPS_IS_ADMIN=broken)
    client = host.test_client()
    client.get("/login/admin")
    response = client.get(f"{P}/")
    html = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "4711" not in html and "Traceback" not in html
    assert "The server could not complete this page or action." in html

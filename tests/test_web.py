"""The admin pages and the scheduled-task endpoint, through Flask's test client.

Every route, for anonymous users, non-admins and admins; with and without CSRF tokens; right,
wrong and missing task tokens; malformed and path-traversal ids. Long actions run in real
detached worker processes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_login import LoginManager, UserMixin, login_user

from tablettracker_backups import BackupManager, audit
from tablettracker_backups.backup import create_backup
from tablettracker_backups.fsutil import ensure_private_dir
from tablettracker_backups.jobs.queue import QUEUED, RUNNING, Job, jobs_dir, read_job, write_job
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore
from tablettracker_backups.web.extension import get_state
from tests.conftest import csrf_from, wait_for_job

P = "/admin/backups"
BAD_IDS = [
    "nope",
    "..%2F..%2Fetc%2Fpasswd",
    "..%252F..%252Fetc%252Fpasswd",
    "20261399T999999Z-abcdef",
    "20261125T080000Z-ABCDEF",
    "20261125T080000Z-abcdef.json",
    "%00",
]
MISSING_ID = "20200101T000000Z-abcdef"


def settings_of(app: Flask) -> Settings:
    with app.app_context():
        return get_state().settings


@pytest.fixture
def backup_id(demo_app: Flask) -> str:
    """One verified backup of the demo database."""
    return create_backup(settings_of(demo_app), trigger="test").metadata.id


def put_job(settings: Settings, job: Job) -> None:
    """Write a job file as a worker would (to fake a running or dead worker)."""
    ensure_private_dir(settings.state_dir)
    ensure_private_dir(jobs_dir(settings))
    write_job(jobs_dir(settings), job)


def get_pages(backup_id: str) -> list[str]:
    return [
        f"{P}/",
        f"{P}/backups",
        f"{P}/backups/{backup_id}",
        f"{P}/backups/{backup_id}/restore",
        f"{P}/prune",
        f"{P}/audit",
    ]


def post_actions(backup_id: str) -> list[str]:
    return [
        f"{P}/backup-now",
        f"{P}/verify-all",
        f"{P}/prune",
        f"{P}/backups/{backup_id}/verify",
        f"{P}/backups/{backup_id}/download",
        f"{P}/backups/{backup_id}/restore",
    ]


# -- access ------------------------------------------------------------------------------------


def test_anonymous_is_sent_to_login(demo_app: Flask, backup_id: str) -> None:
    client = demo_app.test_client()
    job_pages = [f"{P}/jobs/0123456789abcdef", f"{P}/jobs/0123456789abcdef.json"]
    for url in [*get_pages(backup_id), *job_pages]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.location.startswith("/login?next="), url
    token = csrf_from(client.get("/login").get_data(as_text=True))
    for url in post_actions(backup_id):
        # The host's CSRFProtect checks first (400), then the login requirement (302).
        assert client.post(url).status_code == 400, url
        response = client.post(url, data={"csrf_token": token, "confirm": "RESTORE"})
        assert response.status_code == 302, url
        assert response.location.startswith("/login?next="), url
    assert len(BackupStore(settings_of(demo_app)).ids()) == 1


def test_non_admin_gets_403_everywhere(
    demo_app: Flask, staff_client: FlaskClient, backup_id: str
) -> None:
    token = csrf_from(staff_client.get("/").get_data(as_text=True))
    for url in get_pages(backup_id):
        assert staff_client.get(url).status_code == 403, url
    for url in post_actions(backup_id):
        response = staff_client.post(url, data={"csrf_token": token, "confirm": backup_id})
        assert response.status_code == 403, url
    assert staff_client.get(f"{P}/jobs/0123456789abcdef").status_code == 403
    assert staff_client.get(f"{P}/jobs/0123456789abcdef.json").status_code == 403
    assert len(BackupStore(settings_of(demo_app)).ids()) == 1
    assert audit.read_entries(settings_of(demo_app)) == []


def test_admin_sees_every_page_inside_host_layout(
    admin_client: FlaskClient, backup_id: str
) -> None:
    for url in get_pages(backup_id):
        response = admin_client.get(url)
        assert response.status_code == 200, url
        html = response.get_data(as_text=True)
        assert '<a class="brand"' in html, "page does not extend the host's base template"
        assert f"{P}/_static/backups.css" in html
        assert 'src="http' not in html and 'href="http' not in html, "no internet assets"


def test_static_files_are_served_by_the_blueprint(demo_app: Flask) -> None:
    client = demo_app.test_client()
    for name in ("backups.css", "backups.js"):
        response = client.get(f"{P}/_static/{name}")
        assert response.status_code == 200
        assert len(response.data) > 100
        response.close()


def test_dashboard_shows_health_newest_disk_and_chart(
    admin_client: FlaskClient, backup_id: str
) -> None:
    html = admin_client.get(f"{P}/").get_data(as_text=True)
    assert backup_id in html
    assert "Newest verified backup" in html
    assert "free" in html and "<meter" in html
    assert "<svg" in html and "ttb-stored" in html and "ttb-raw" in html
    assert "no secondary folder configured" in html
    # No scheduled run yet: health says critical or warning, with the reasons listed.
    assert "ttb-badge" in html


def test_list_is_paginated_newest_first(demo_app: Flask, admin_client: FlaskClient) -> None:
    settings = settings_of(demo_app)
    for _ in range(3):
        create_backup(settings, trigger="test")
    ids = [info.id for info in BackupStore(settings).list()]  # newest first, by time
    html = admin_client.get(f"{P}/backups").get_data(as_text=True)
    positions = [html.index(i) for i in ids]
    assert positions == sorted(positions), "newest backup must come first"
    assert "newest backup" in html  # why it is kept
    assert "primary: ok" in html
    assert admin_client.get(f"{P}/backups?page=1").status_code == 200
    assert admin_client.get(f"{P}/backups?page=2").status_code == 404
    assert admin_client.get(f"{P}/backups?page=0").status_code == 404
    assert admin_client.get(f"{P}/backups?page=x").status_code == 200  # ignored, first page


def test_detail_shows_row_counts(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    html = admin_client.get(f"{P}/backups/{backup_id}").get_data(as_text=True)
    with sqlite3.connect(settings_of(demo_app).database) as conn:
        lines = conn.execute("SELECT count(*) FROM po_lines").fetchone()[0]
    assert "po_lines" in html and f"{lines:,}" in html
    assert "SHA-256" in html


@pytest.mark.parametrize("bad", BAD_IDS)
def test_malformed_and_traversal_ids_are_404(
    admin_client: FlaskClient, backup_id: str, bad: str
) -> None:
    token = csrf_from(admin_client.get(f"{P}/").get_data(as_text=True))
    for url in (f"{P}/backups/{bad}", f"{P}/backups/{bad}/restore", f"{P}/jobs/{bad}"):
        assert admin_client.get(url).status_code == 404, url
    for action in ("verify", "download", "restore"):
        response = admin_client.post(
            f"{P}/backups/{bad}/{action}", data={"csrf_token": token, "confirm": "RESTORE"}
        )
        assert response.status_code == 404, (action, bad)


def test_unknown_backup_and_job_are_404(admin_client: FlaskClient, backup_id: str) -> None:
    token = csrf_from(admin_client.get(f"{P}/").get_data(as_text=True))
    assert admin_client.get(f"{P}/backups/{MISSING_ID}").status_code == 404
    assert admin_client.get(f"{P}/jobs/0123456789abcdef").status_code == 404
    assert admin_client.get(f"{P}/jobs/0123456789abcdef.json").status_code == 404
    for action in ("verify", "download"):
        response = admin_client.post(
            f"{P}/backups/{MISSING_ID}/{action}", data={"csrf_token": token}
        )
        assert response.status_code == 404


# -- CSRF --------------------------------------------------------------------------------------


def test_posts_without_or_with_wrong_csrf_token_change_nothing(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    settings = settings_of(demo_app)
    for url in post_actions(backup_id):
        assert admin_client.post(url).status_code == 400, url
        response = admin_client.post(url, data={"csrf_token": "forged", "confirm": backup_id})
        assert response.status_code == 400, url
    assert BackupStore(settings).ids() == [backup_id]
    assert not jobs_dir(settings).exists() or not list(jobs_dir(settings).glob("*.json"))
    assert audit.read_entries(settings) == []


# -- actions -----------------------------------------------------------------------------------


def test_backup_now_runs_in_a_worker_and_is_audited(
    demo_app: Flask, admin_client: FlaskClient
) -> None:
    settings = settings_of(demo_app)
    token = csrf_from(admin_client.get(f"{P}/").get_data(as_text=True))
    response = admin_client.post(f"{P}/backup-now", data={"csrf_token": token})
    assert response.status_code == 303
    job_id = response.location.rsplit("/", 1)[1]
    page = admin_client.get(response.location)
    assert page.status_code == 200
    job = wait_for_job(settings, job_id)
    assert job.state == "done", job.message
    new_id = job.result["id"]
    assert BackupStore(settings).get(new_id).verified
    assert BackupStore(settings).get(new_id).metadata.trigger == "web:admin"  # type: ignore[union-attr]
    html = admin_client.get(response.location).get_data(as_text=True)
    assert "Done:" in html and new_id in html and 'http-equiv="refresh"' not in html
    status = admin_client.get(f"{response.location}.json").get_json()
    assert status["state"] == "done" and status["percent"] == 100
    entry = audit.read_entries(settings)[0]
    assert (entry.action, entry.actor, entry.ok) == ("backup", "admin", True)
    assert admin_client.get(f"{P}/").get_data(as_text=True).count(new_id) >= 1


def test_a_running_page_refreshes_itself(demo_app: Flask, admin_client: FlaskClient) -> None:
    settings = settings_of(demo_app)
    now = datetime.now(timezone.utc)
    job = Job("00000000000000aa", "backup", {}, "admin", RUNNING, now, now, stage="compress")
    put_job(settings, job)
    html = admin_client.get(f"{P}/jobs/{job.id}").get_data(as_text=True)
    assert 'http-equiv="refresh"' in html and "<progress" in html


def test_second_action_while_one_runs_is_refused(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    settings = settings_of(demo_app)
    token = csrf_from(admin_client.get(f"{P}/").get_data(as_text=True))
    now = datetime.now(timezone.utc)
    running = Job("00000000000000bb", "backup", {}, "ada", RUNNING, now, now)
    put_job(settings, running)
    for url in (f"{P}/backup-now", f"{P}/verify-all", f"{P}/backups/{backup_id}/verify"):
        response = admin_client.post(url, data={"csrf_token": token})
        assert response.status_code == 409, url
        html = response.get_data(as_text=True)
        assert "started by ada" in html and "still running" in html
    assert BackupStore(settings).ids() == [backup_id]


def test_refused_while_another_process_holds_the_lock(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    settings = settings_of(demo_app)
    token = csrf_from(admin_client.get(f"{P}/").get_data(as_text=True))
    with operation_lock(settings):
        response = admin_client.post(f"{P}/backup-now", data={"csrf_token": token})
        assert response.status_code == 409
        assert "another backup, restore or prune is running" in response.get_data(as_text=True)
        prune = admin_client.post(f"{P}/prune", data={"csrf_token": token, "expect": ""})
        assert prune.status_code == 409
    assert BackupStore(settings).ids() == [backup_id]


def test_a_dead_worker_is_noticed_and_does_not_block(
    demo_app: Flask, admin_client: FlaskClient
) -> None:
    settings = settings_of(demo_app)
    old = datetime.now(timezone.utc) - timedelta(minutes=5)
    put_job(settings, Job("00000000000000cc", "backup", {}, "ada", QUEUED, old, old))
    job = read_job(settings, "00000000000000cc")
    assert job.state == "failed" and "stopped before finishing" in job.message
    token = csrf_from(admin_client.get(f"{P}/").get_data(as_text=True))
    response = admin_client.post(f"{P}/backup-now", data={"csrf_token": token})
    assert response.status_code == 303
    assert wait_for_job(settings, response.location.rsplit("/", 1)[1]).state == "done"


def test_verify_one_and_all(demo_app: Flask, admin_client: FlaskClient, backup_id: str) -> None:
    settings = settings_of(demo_app)
    token = csrf_from(admin_client.get(f"{P}/").get_data(as_text=True))
    response = admin_client.post(f"{P}/backups/{backup_id}/verify", data={"csrf_token": token})
    assert response.status_code == 303
    job = wait_for_job(settings, response.location.rsplit("/", 1)[1])
    assert job.state == "done" and job.result["results"][0]["id"] == backup_id
    response = admin_client.post(f"{P}/verify-all", data={"csrf_token": token})
    job = wait_for_job(settings, response.location.rsplit("/", 1)[1])
    assert job.state == "done"
    actions = [(e.action, e.actor, e.ok) for e in audit.read_entries(settings)]
    assert actions == [("verify-all", "admin", True), ("verify", "admin", True)]


def test_verify_reports_a_damaged_backup(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    settings = settings_of(demo_app)
    store = BackupStore(settings)
    path = store.data_path("primary", backup_id, settings.compression)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    token = csrf_from(admin_client.get(f"{P}/").get_data(as_text=True))
    response = admin_client.post(f"{P}/backups/{backup_id}/verify", data={"csrf_token": token})
    job = wait_for_job(settings, response.location.rsplit("/", 1)[1])
    assert job.state == "failed" and "failed verification" in job.message
    html = admin_client.get(response.location).get_data(as_text=True)
    assert "Failed:" in html
    assert audit.read_entries(settings)[0].ok is False


def test_prune_previews_then_deletes_exactly_that(
    tmp_path: Path, make_host: Callable[..., Flask]
) -> None:
    app = make_host(
        BACKUPS_KEEP_HOURLY=1,
        BACKUPS_KEEP_DAILY=1,
        BACKUPS_KEEP_WEEKLY=1,
        BACKUPS_KEEP_MONTHLY=1,
        BACKUPS_KEEP_YEARLY=1,
        BACKUPS_KEEP_RECENT="0",  # the recent tier would keep all three
    )
    settings = settings_of(app)
    ids = [create_backup(settings, trigger="test").metadata.id for _ in range(3)]
    client = host_login(app, "admin")
    html = client.get(f"{P}/prune").get_data(as_text=True)
    assert ids[0] in html and ids[1] in html
    token = csrf_from(html)
    stale = client.post(f"{P}/prune", data={"csrf_token": token, "expect": ids[0]})
    assert stale.status_code == 409
    assert len(BackupStore(settings).ids()) == 3
    expect = ",".join(sorted(ids[:2]))
    done = client.post(f"{P}/prune", data={"csrf_token": token, "expect": expect})
    assert done.status_code == 200
    entry = audit.read_entries(settings)[0]
    assert entry.action == "prune" and entry.actor == "admin"
    deleted = set(entry.details["deleted"])
    # Prune also keeps the newest backup whose checksum it re-checked, so it may keep more.
    assert deleted and deleted <= set(ids[:2])
    assert set(BackupStore(settings).ids()) == set(ids) - deleted
    assert ids[2] in BackupStore(settings).ids()


def test_download_streams_the_primary_copy(
    demo_app: Flask, admin_client: FlaskClient, staff_client: FlaskClient, backup_id: str
) -> None:
    settings = settings_of(demo_app)
    token = csrf_from(admin_client.get(f"{P}/").get_data(as_text=True))
    assert admin_client.get(f"{P}/backups/{backup_id}/download").status_code == 405
    response = admin_client.post(f"{P}/backups/{backup_id}/download", data={"csrf_token": token})
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert backup_id in response.headers["Content-Disposition"]
    stored = BackupStore(settings).data_path("primary", backup_id, settings.compression)
    assert response.data == stored.read_bytes()
    response.close()
    entry = audit.read_entries(settings)[0]
    assert (entry.action, entry.actor, entry.details["id"]) == ("download", "admin", backup_id)


def _supplier(settings: Settings) -> str:
    with sqlite3.connect(settings.database) as conn:
        return str(conn.execute("SELECT supplier FROM purchase_orders WHERE id = 1").fetchone()[0])


def _set_supplier(settings: Settings, value: str) -> None:
    conn = sqlite3.connect(settings.database)
    with conn:
        conn.execute("UPDATE purchase_orders SET supplier = ? WHERE id = 1", (value,))
        conn.execute("DELETE FROM count_sessions WHERE id <= 5")
    conn.close()


def test_restore_confirmation_shows_the_differences(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    _set_supplier(settings_of(demo_app), "Changed")
    html = admin_client.get(f"{P}/backups/{backup_id}/restore").get_data(as_text=True)
    assert "count_sessions" in html and "changed" in html and "+5" in html
    assert 'name="confirm"' in html and backup_id in html


@pytest.mark.parametrize("typed", ["", "restore", "yes", "20200101T000000Z-abcdef"])
def test_restore_needs_the_typed_confirmation(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str, typed: str
) -> None:
    settings = settings_of(demo_app)
    _set_supplier(settings, "Changed")
    page = admin_client.get(f"{P}/backups/{backup_id}/restore").get_data(as_text=True)
    response = admin_client.post(
        f"{P}/backups/{backup_id}/restore", data={"csrf_token": csrf_from(page), "confirm": typed}
    )
    assert response.status_code == 400
    assert "Nothing was restored" in response.get_data(as_text=True)
    assert _supplier(settings) == "Changed"
    assert BackupStore(settings).ids() == [backup_id]


@pytest.mark.parametrize("word", ["id", "RESTORE"])
def test_restore_through_the_pages_and_undo_it(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str, word: str
) -> None:
    settings = settings_of(demo_app)
    original = _supplier(settings)
    _set_supplier(settings, "Changed")
    page = admin_client.get(f"{P}/backups/{backup_id}/restore").get_data(as_text=True)
    response = admin_client.post(
        f"{P}/backups/{backup_id}/restore",
        data={"csrf_token": csrf_from(page), "confirm": backup_id if word == "id" else word},
    )
    assert response.status_code == 303
    job = wait_for_job(settings, response.location.rsplit("/", 1)[1])
    assert job.state == "done", job.message
    assert _supplier(settings) == original
    safety = job.result["safety_snapshot_id"]
    assert BackupStore(settings).get(safety).kind == "pre-restore"
    html = admin_client.get(response.location).get_data(as_text=True)
    assert f'data-ttb-safety="{safety}"' in html
    entry = audit.read_entries(settings)[0]
    assert (entry.action, entry.actor, entry.ok) == ("restore", "admin", True)
    assert [e.action for e in audit.read_entries(settings)].count("restore") == 1
    # Undo: restore the safety snapshot, and the change is back.
    response = admin_client.post(
        f"{P}/backups/{safety}/restore", data={"csrf_token": csrf_from(page), "confirm": safety}
    )
    assert wait_for_job(settings, response.location.rsplit("/", 1)[1]).state == "done"
    assert _supplier(settings) == "Changed"


def test_restore_refused_while_busy(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    settings = settings_of(demo_app)
    page = admin_client.get(f"{P}/backups/{backup_id}/restore").get_data(as_text=True)
    with operation_lock(settings):
        response = admin_client.post(
            f"{P}/backups/{backup_id}/restore",
            data={"csrf_token": csrf_from(page), "confirm": backup_id},
        )
    assert response.status_code == 409
    assert BackupStore(settings).ids() == [backup_id]


# -- the scheduled-task endpoint ---------------------------------------------------------------


def test_task_endpoint_tokens(demo_app: Flask) -> None:
    client = demo_app.test_client()
    token = demo_app.config["BACKUPS_TASK_TOKEN"]
    url = "/tasks/backups/run"
    assert client.post(url).status_code == 401
    assert client.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post(url, headers={"Authorization": f"Basic {token}"}).status_code == 401
    assert client.post(url, headers={"Authorization": "Bearer "}).status_code == 401
    assert client.post(url, headers={"Authorization": f"Bearer {token}x"}).status_code == 401
    assert client.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 405
    assert BackupStore(settings_of(demo_app)).ids() == []
    # No CSRF token, although the demo uses Flask-WTF's CSRFProtect: the endpoint is exempt.
    response = client.post(url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["ok"] is True and body["backup"]["id"]
    expected_keys = {
        "ok",
        "exit_code",
        "started_at",
        "backup",
        "skipped_reason",
        "reverified",
        "pruned",
        "health",
        "error",
        "warnings",
        "offsite",
    }
    assert set(body) == expected_keys
    assert BackupStore(settings_of(demo_app)).ids() == [body["backup"]["id"]]
    entry = audit.read_entries(settings_of(demo_app))[0]
    assert (entry.action, entry.actor, entry.ok) == ("run", "task endpoint", True)
    again = client.post(url, headers={"Authorization": f"Bearer {token}"}).get_json()
    assert again["backup"] is None and "only" in again["skipped_reason"]
    # The same document as the CLI's `run --json`.
    cli = demo_app.test_cli_runner().invoke(args=["backups", "run", "--json"])
    assert set(body) == set(json.loads(cli.output))


def test_task_endpoint_is_404_without_a_token(make_host: Callable[..., Flask]) -> None:
    app = make_host(BACKUPS_TASK_TOKEN=None)
    client = app.test_client()
    assert client.post("/tasks/backups/run").status_code == 404
    assert client.post("/tasks/backups/run", headers={"Authorization": "Bearer x"}).status_code == (
        404
    )


def test_task_endpoint_busy_is_409(demo_app: Flask) -> None:
    token = demo_app.config["BACKUPS_TASK_TOKEN"]
    with operation_lock(settings_of(demo_app)):
        response = demo_app.test_client().post(
            "/tasks/backups/run", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 409
    assert response.get_json()["exit_code"] == 3


# -- a host app without Flask-WTF: the blueprint's own CSRF token, custom prefix, overrides ---


class HostUser(UserMixin):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        self.id = name
        self.username = name
        self.is_admin = name == "admin"


@pytest.fixture
def make_host(tmp_path: Path, db_path: Path) -> Callable[..., Flask]:
    """A minimal host demo_app: Flask-Login, no Flask-WTF, its own templates folder."""

    def build(**config: Any) -> Flask:
        templates = tmp_path / "host-templates"
        (templates / "tablettracker_backups").mkdir(parents=True, exist_ok=True)
        (templates / "host_base.html").write_text(
            "<html><body><div id=host>HOST LAYOUT</div>{% block content %}{% endblock %}"
            "</body></html>"
        )
        app = Flask("host", template_folder=str(templates))
        app.config.update(
            SECRET_KEY="test-secret",
            TESTING=True,
            BACKUPS_DATABASE=str(db_path),
            BACKUPS_TASK_TOKEN="a-task-token-of-enough-length",
            BACKUPS_BASE_TEMPLATE="host_base.html",
        )
        app.config.update(config)
        manager = LoginManager(app)
        manager.user_loader(HostUser)

        @app.route("/login/<name>")
        def host_login_view(name: str) -> str:
            login_user(HostUser(name))
            return "in"

        BackupManager(app)
        return app

    return build


def host_login(demo_app: Flask, name: str) -> FlaskClient:
    client = demo_app.test_client()
    assert client.get(f"/login/{name}").status_code == 200
    return client


def test_host_without_flask_wtf_uses_the_blueprints_token(
    make_host: Callable[..., Flask],
) -> None:
    app = make_host()
    assert "csrf" not in app.extensions
    client = host_login(app, "admin")
    html = client.get(f"{P}/").get_data(as_text=True)
    assert "HOST LAYOUT" in html
    token = csrf_from(html)
    settings = settings_of(app)
    assert client.post(f"{P}/backup-now").status_code == 400
    assert client.post(f"{P}/backup-now", data={"csrf_token": token[:-1] + "x"}).status_code == (
        400
    )
    other = host_login(app, "admin")
    other_token = csrf_from(other.get(f"{P}/").get_data(as_text=True))
    assert client.post(f"{P}/backup-now", data={"csrf_token": other_token}).status_code == 400
    assert not jobs_dir(settings).exists() or not list(jobs_dir(settings).glob("*.json"))
    response = client.post(f"{P}/backup-now", data={"csrf_token": token})
    assert response.status_code == 303
    assert wait_for_job(settings, response.location.rsplit("/", 1)[1]).state == "done"


def test_host_non_admin_and_anonymous(make_host: Callable[..., Flask]) -> None:
    app = make_host()
    assert host_login(app, "bob").get(f"{P}/").status_code == 403
    assert host_login(app, "bob").post(f"{P}/backup-now").status_code == 403
    # No login_view: Flask-Login's unauthorized handler answers 401.
    assert app.test_client().get(f"{P}/").status_code == 401
    assert app.test_client().post(f"{P}/backup-now").status_code == 401


def test_is_admin_callable_and_custom_prefix(make_host: Callable[..., Flask]) -> None:
    app = make_host(
        BACKUPS_URL_PREFIX="/ops/backups/", BACKUPS_IS_ADMIN=lambda user: user.id == "bob"
    )
    assert host_login(app, "bob").get("/ops/backups/").status_code == 200
    assert host_login(app, "admin").get("/ops/backups/").status_code == 403
    assert host_login(app, "bob").get(f"{P}/").status_code == 404


def test_host_templates_override_the_blueprints(
    tmp_path: Path, make_host: Callable[..., Flask]
) -> None:
    app = make_host()
    override = tmp_path / "host-templates" / "tablettracker_backups" / "audit.html"
    override.write_text("{% extends backups_base %}{% block content %}OVERRIDDEN{% endblock %}")
    html = host_login(app, "admin").get(f"{P}/audit").get_data(as_text=True)
    assert "OVERRIDDEN" in html and "HOST LAYOUT" in html


def test_init_app_failures(db_path: Path) -> None:
    bare = Flask("bare")
    bare.config["BACKUPS_DATABASE"] = str(db_path)
    with pytest.raises(RuntimeError, match="Flask-Login"):
        BackupManager(bare)
    for key, value, message in [
        ("BACKUPS_URL_PREFIX", "admin", "BACKUPS_URL_PREFIX"),
        ("BACKUPS_TASK_URL", "tasks//run", "BACKUPS_TASK_URL"),
        ("BACKUPS_TASK_TOKEN", "short", "BACKUPS_TASK_TOKEN"),
        ("BACKUPS_IS_ADMIN", "yes", "BACKUPS_IS_ADMIN"),
        ("BACKUPS_BASE_TEMPLATE", "", "BACKUPS_BASE_TEMPLATE"),
    ]:
        app = Flask("host")
        LoginManager(app)
        app.config.update(BACKUPS_DATABASE=str(db_path), **{key: value})
        with pytest.raises(RuntimeError, match=message):
            BackupManager(app)
    app = Flask("host")
    LoginManager(app)
    app.config["BACKUPS_DATABASE"] = str(db_path)
    BackupManager(app)
    with pytest.raises(RuntimeError, match="already registered"):
        BackupManager(app)


def test_flask_backups_cli_group_is_added(demo_app: Flask) -> None:
    runner = demo_app.test_cli_runner()
    taken = runner.invoke(args=["backups", "backup", "--json"])
    assert taken.exit_code == 0, taken.output
    result = runner.invoke(args=["backups", "list", "--json"])
    assert result.exit_code == 0, result.output
    # The app's own settings were used: the backup went to its configured folder.
    assert [b["id"] for b in json.loads(result.output)] == [json.loads(taken.output)["id"]]
    assert (settings_of(demo_app).backup_dir / f"{json.loads(taken.output)['id']}.json").exists()


def test_size_chart_shapes_and_escaping() -> None:
    from tablettracker_backups.web.charts import Series, size_chart

    assert "No backups yet" in size_chart([Series("s", "a", [])])
    moment = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)
    one = size_chart([Series("<script>", 'x"y', [(moment, 1000.0)])])
    assert "<svg" in one and "<script>" not in one and "&lt;script&gt;" in one
    assert 'x"y' not in one
    week = [(moment - timedelta(days=d), 1000.0 + d) for d in range(7)]
    chart = size_chart([Series("stored size", "ttb-stored", week)])
    assert chart.count("<circle") == 7 and "<polyline" in chart
    assert "2026-11-19" in chart and "2026-11-25" in chart  # first and last day labelled


def test_task_endpoint_exempt_when_csrfprotect_comes_after(
    make_host: Callable[..., Flask],
) -> None:
    from flask_wtf.csrf import CSRFProtect

    app = make_host()
    CSRFProtect(app)  # registered after BackupManager: the endpoint must still be exempt
    client = app.test_client()
    token = app.config["BACKUPS_TASK_TOKEN"]
    response = client.post("/tasks/backups/run", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["backup"]["id"]
    # ...while the pages are protected by Flask-WTF's token from now on.
    admin = host_login(app, "admin")
    assert admin.post(f"{P}/backup-now").status_code == 400


def test_a_killed_worker_is_reported_and_releases_the_lock(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    """A real worker process, killed while it waits for the lock: the page says so at once."""
    import os
    import signal
    import time

    from tablettracker_backups.jobs.queue import launch_worker
    from tablettracker_backups.locking import is_locked

    settings = settings_of(demo_app)
    now = datetime.now(timezone.utc)
    values = {"database": str(settings.database), "dir": str(settings.backup_dir)}
    job = Job("00000000000000ee", "backup", {}, "ada", QUEUED, now, now, settings=values)
    put_job(settings, Job(**{**job.__dict__, "settings": {**values, "lock_timeout": 300}}))
    with operation_lock(settings):
        launch_worker(jobs_dir(settings), job.id, detach=True)
        deadline = time.monotonic() + 60
        while (running := read_job(settings, job.id)).pid is None:
            assert time.monotonic() < deadline, running
            time.sleep(0.05)
        assert running.state == RUNNING
        os.kill(running.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not (dead := read_job(settings, job.id)).finished:
            assert time.monotonic() < deadline, dead
            time.sleep(0.05)
    assert dead.state == "failed" and "stopped before finishing" in dead.message
    assert not is_locked(settings)
    assert BackupStore(settings).ids() == [backup_id]
    html = admin_client.get(f"{P}/jobs/{job.id}").get_data(as_text=True)
    assert "Failed:" in html
    token = csrf_from(html)
    response = admin_client.post(f"{P}/backup-now", data={"csrf_token": token})
    assert response.status_code == 303
    assert wait_for_job(settings, response.location.rsplit("/", 1)[1]).state == "done"

"""The admin pages and the scheduled-task endpoint, through Flask's test client.

Every route, for anonymous users, non-admins and admins; with and without CSRF tokens; right,
wrong and missing task tokens; malformed and path-traversal ids. Long actions run in real
detached worker processes.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
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
        f"{P}/backups/{backup_id}/pin",
        f"{P}/backups/{backup_id}/unpin",
    ]


# -- access ------------------------------------------------------------------------------------


def test_anonymous_is_sent_to_login(demo_app: Flask, client: FlaskClient, backup_id: str) -> None:
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
        assert html.count(f"{P}/_static/backups.css") == 1, url
        assert html.count('<nav class="ttb-nav"') == 1, url
        assert 'src="http' not in html and 'href="http' not in html, "no internet assets"


def test_every_page_template_extends_the_one_layout() -> None:
    """Frame, assets and navigation live in _page.html only (issue 9): pages just fill it."""
    from jinja2 import Environment, nodes

    from tablettracker_backups.web.resources import resource_dir

    folder = resource_dir("templates") / "tablettracker_backups"
    pages = [
        p for p in folder.glob("*.html") if not p.name.startswith("_") and p.name != "base.html"
    ]
    assert len(pages) >= 8
    for path in pages:
        source = path.read_text()
        extends = Environment().parse(source).find(nodes.Extends)
        assert extends is not None and isinstance(extends.template, nodes.Const), path.name
        assert extends.template.value == "tablettracker_backups/_page.html", path.name
        for repeated in (
            "backups_base",
            "backups.css",
            "backups.js",
            "ttb.nav(",
            '<div class="ttb"',
        ):
            assert repeated not in source, (path.name, repeated)


def test_static_files_are_served_by_the_blueprint(client: FlaskClient) -> None:
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
    assert "Latest good backup" in html
    assert "free" in html and "<meter" in html
    assert "<svg" in html and "ttb-stored" in html and "ttb-raw" in html
    assert "no secondary folder configured" in html
    # The verdict comes first: before the navigation's page content, one line with its level.
    verdict = re.search(r'<p class="ttb-verdict ttb-(\w+)" data-ttb-verdict="(\w+)"', html)
    assert verdict and verdict.group(1) == verdict.group(2)
    assert html.index("data-ttb-verdict") < html.index("Latest good backup")
    # Ids and the chart are details.
    details = html.split('<details class="ttb-details" id="ttb-details">')[1]
    assert "Latest good backup" in details and "<svg" in details


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


# -- only POST changes anything ---------------------------------------------------------------

#: Every method but POST. Flask answers HEAD and OPTIONS on its own for every rule; the HEAD
#: bypass of issue 12 ran a prune because HEAD reached a view that served GET and POST.
OTHER_METHODS = ["HEAD", "GET", "PUT", "PATCH", "DELETE", "OPTIONS"]


def files_state(settings: Settings) -> dict[str, tuple[str, int]]:
    """Every file of the backup folders (backups, audit log, jobs, status) and of the database,
    with its SHA-256 and modification time: what a request must leave as it was. The
    catalog is left out: it is a cache of the manifests that any listing may bring up to date
    (a manifest younger than its settle time is indexed at a later listing)."""
    import hashlib

    roots = [*settings.locations, settings.database.parent]
    state: dict[str, tuple[str, int]] = {}
    for root in roots:
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if path.is_file() and path.name != "secret_key.txt" and ".catalog" not in path.parts:
                stat = path.stat()
                state[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns)
    return state


@pytest.mark.parametrize("csrf_kind", ["flask-wtf", "own-token"])
def test_no_method_but_post_with_a_token_changes_anything(
    tmp_path: Path, make_host: Callable[..., Flask], csrf_kind: str
) -> None:
    keep_one = {
        f"BACKUPS_KEEP_{slot}": 1 for slot in ("HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY")
    }
    if csrf_kind == "flask-wtf":
        from tablettracker_backups.demo import create_app

        app = create_app({"INSTANCE_PATH": tmp_path / "instance-demo", "TESTING": True, **keep_one})
        client = app.test_client()
        login_page = client.get("/login").get_data(as_text=True)
        response = client.post(
            "/login",
            data={
                "username": "admin",
                "password": app.config["DEMO_PASSWORD"],
                "csrf_token": csrf_from(login_page),
            },
        )
        assert response.status_code == 303
    else:
        app = make_host(**keep_one)
        client = host_login(app, "admin")
    settings = settings_of(app)
    ids = [create_backup(settings, trigger="test").metadata.id for _ in range(3)]
    # Prune would delete something: the state in which the HEAD bypass deleted backups.
    assert client.get(f"{P}/prune").status_code == 200
    token = csrf_from(client.get(f"{P}/").get_data(as_text=True))
    before = files_state(settings)
    assert any(path.endswith(f"{ids[0]}.json") for path in before)
    task_token = app.config["BACKUPS_TASK_TOKEN"]
    routes = [*post_actions(ids[-1]), "/tasks/backups/run"]
    # A body a forger would send: the ids prune expects, the restore confirmation, and even a
    # valid token (a method that is not POST must change nothing whatever it carries).
    body = {"csrf_token": token, "expect": ",".join(ids), "confirm": "RESTORE"}
    for url in routes:
        headers = {"Authorization": f"Bearer {task_token}"} if url.startswith("/tasks") else {}
        for method in OTHER_METHODS:
            response = client.open(url, method=method, data=body, headers=headers)
            assert response.status_code in (200, 405), (method, url, response.status_code)
            response.close()
        if not url.startswith("/tasks"):
            without = {k: v for k, v in body.items() if k != "csrf_token"}
            for forged in (without, {**body, "csrf_token": "forged"}):
                response = client.post(url, data=forged)
                assert response.status_code == 400, (url, forged, response.status_code)
    assert files_state(settings) == before
    assert BackupStore(settings).ids() == sorted(ids, reverse=True)
    assert audit.read_entries(settings) == []
    assert not jobs_dir(settings).exists() or not list(jobs_dir(settings).glob("*.json"))


def test_pages_send_security_headers(
    admin_client: FlaskClient, demo_app: Flask, backup_id: str
) -> None:
    token = csrf_from(admin_client.get(f"{P}/").get_data(as_text=True))
    responses = {url: admin_client.get(url) for url in get_pages(backup_id)}
    responses["404 page"] = admin_client.get(f"{P}/backups/{MISSING_ID}")
    responses["download"] = admin_client.post(
        f"{P}/backups/{backup_id}/download", data={"csrf_token": token}
    )
    responses["task JSON"] = demo_app.test_client().post(
        "/tasks/backups/run", headers={"Authorization": "Bearer wrong"}
    )
    for name, response in responses.items():
        headers = response.headers
        assert headers.get("X-Content-Type-Options") == "nosniff", name
        assert headers.get("X-Frame-Options") == "DENY", name
        assert headers.get("Cache-Control") == "no-store", name
        response.close()
    # Static files may be cached (they hold no backup data), but are not sniffed either.
    static = admin_client.get(f"{P}/_static/backups.css")
    assert static.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" not in static.headers.get("Cache-Control", "")
    static.close()


def test_headers_the_host_set_are_kept(make_host: Callable[..., Flask]) -> None:
    from flask import after_this_request

    app = make_host()

    @app.before_request
    def host_headers() -> None:
        # A host policy applied before the blueprint's hook sees the response.
        @after_this_request
        def apply(response: Any) -> Any:
            response.headers["Cache-Control"] = "private, max-age=0"
            response.headers["Content-Security-Policy"] = "frame-ancestors 'self'"
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response

    response = host_login(app, "admin").get(f"{P}/")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "private, max-age=0"
    assert response.headers["Content-Security-Policy"] == "frame-ancestors 'self'"
    assert "X-Frame-Options" not in response.headers  # the host's CSP decides framing
    assert response.headers.getlist("X-Content-Type-Options") == ["nosniff"]


@pytest.mark.parametrize(
    "target",
    [
        "/\\evil.example",
        "/\\/evil.example",
        "\\\\evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "/ /evil.example",
        "//evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "",
        None,
    ],
)
def test_safe_next_refuses_other_hosts(demo_app: Flask, target: str | None) -> None:
    from tablettracker_backups.demo.app import _safe_next

    with demo_app.test_request_context("/login"):
        assert _safe_next(target) == "/"


def test_safe_next_keeps_local_paths(demo_app: Flask) -> None:
    from tablettracker_backups.demo.app import _safe_next

    with demo_app.test_request_context("/login"):
        for target in ("/po/1", "/admin/backups/?x=1", "/admin/backups/backups?page=2#top"):
            assert _safe_next(target) == target


# -- error pages -------------------------------------------------------------------------------


def test_an_expired_form_says_so_in_the_layout_with_a_way_back(
    admin_client: FlaskClient, make_host: Callable[..., Flask]
) -> None:
    host_client = host_login(make_host(), "admin")
    for client, layout in ((admin_client, '<a class="brand"'), (host_client, "HOST LAYOUT")):
        client.get(f"{P}/")
        response = client.post(
            f"{P}/verify-all",
            data={"csrf_token": "left-open-since-yesterday"},
            headers={"Referer": f"http://localhost{P}/prune"},
        )
        assert response.status_code == 400
        html = response.get_data(as_text=True)
        assert layout in html and 'class="ttb-nav"' in html
        assert "This form expired; reload and try again" in html
        assert f'href="{P}/prune">Reload the form' in html
        assert f'href="{P}/">Backups dashboard' in html


def test_not_found_and_forbidden_pages_are_in_the_layout(
    admin_client: FlaskClient, staff_client: FlaskClient
) -> None:
    response = admin_client.get(f"{P}/backups/{MISSING_ID}")
    html = response.get_data(as_text=True)
    assert response.status_code == 404
    assert '<a class="brand"' in html and "<h1>Not found</h1>" in html
    assert f"no backup with id {MISSING_ID}" in html and f'href="{P}/"' in html
    response = staff_client.get(f"{P}/audit")
    html = response.get_data(as_text=True)
    assert response.status_code == 403
    assert '<a class="brand"' in html and "Administrators only" in html
    assert 'class="ttb-nav"' not in html, "a non-admin must not see the admin navigation"
    assert '<a class="ttb-button" href="/">Home page</a>' in html
    # A link from another site is not offered as the way back.
    html = admin_client.get(
        f"{P}/backups/{MISSING_ID}", headers={"Referer": "https://evil.example/x"}
    ).get_data(as_text=True)
    assert "evil.example" not in html


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
        BACKUPS_KEEP_MINUTELY=0,
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
    # Post/redirect/get: the result is a page the browser can reload without deleting again.
    assert done.status_code == 303 and done.location == f"{P}/prune"
    result = client.get(done.location).get_data(as_text=True)
    assert 'data-ttb-pruned="' in result and "Deleted" in result
    assert "Deleted" not in client.get(f"{P}/prune").get_data(as_text=True)  # shown once
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


def test_a_format_2_backup_downloads_as_its_database_built_and_checked(
    tmp_path: Path, admin_client: FlaskClient
) -> None:
    """BACKUPS_FORMAT in the app's config reaches the settings; a backup that has no file of
    its own is built from its pages, checked, and sent as ``<id>.db.zst`` with its digest."""
    from tablettracker_backups.demo import create_app

    app = create_app(
        {"INSTANCE_PATH": tmp_path / "pages-app", "TESTING": True, "BACKUPS_FORMAT": "pages"}
    )
    settings = settings_of(app)
    assert settings.backup_format == "pages"
    meta = create_backup(settings, trigger="test").metadata
    assert meta.format_version == 2
    client = app.test_client()
    from tests.conftest import login

    login(client, "admin", app.config["DEMO_PASSWORD"])
    token = csrf_from(client.get(f"{P}/").get_data(as_text=True))
    response = client.post(f"{P}/backups/{meta.id}/download", data={"csrf_token": token})
    assert response.status_code == 200
    assert f"{meta.id}.db.zst" in response.headers["Content-Disposition"]
    body = response.data
    response.close()
    import base64
    import hashlib

    import zstandard

    plain = zstandard.ZstdDecompressor().decompressobj().decompress(body)
    assert hashlib.sha256(plain).hexdigest() == meta.raw_sha256
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert response.headers["Content-Digest"] == f"sha-256=:{digest}:"
    assert int(response.headers["Content-Length"]) == len(body)
    assert not [p for p in settings.backup_dir.iterdir() if p.name.startswith(".tmp-")]
    entry = audit.read_entries(settings)[0]
    assert (entry.action, entry.details["id"]) == ("download", meta.id)


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
    # Five sessions come back; one order's supplier is changed back although no row count
    # differs: the page compares content, not only counts.
    assert "count_sessions" in html and "rows 5 brought back" in html
    assert "purchase_orders" in html and "rows 1 changed back" in html
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


def test_task_endpoint_tokens(demo_app: Flask, client: FlaskClient) -> None:
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
        "repaired",
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


def test_task_endpoint_busy_is_409(demo_app: Flask, client: FlaskClient) -> None:
    token = demo_app.config["BACKUPS_TASK_TOKEN"]
    with operation_lock(settings_of(demo_app)):
        response = client.post("/tasks/backups/run", headers={"Authorization": f"Bearer {token}"})
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
    from tablettracker_backups.display import local_time
    from tablettracker_backups.web.charts import MAX_POINTS, Series, size_chart

    assert "No backups yet" in size_chart([Series("s", "a", [])], label=local_time)
    moment = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)
    one = size_chart([Series("<script>", 'x"y', [(moment, 1000.0)])], label=local_time)
    assert "<svg" in one and "<script>" not in one and "&lt;script&gt;" in one
    assert 'x"y' not in one
    week = [(moment - timedelta(days=d), 1000.0 + d) for d in range(7)]
    chart = size_chart([Series("stored size", "ttb-stored", week)], label=local_time)
    assert chart.count("<circle") == 7 and "<polyline" in chart
    # First and last moment labelled in the pages' one time format, with the UTC time for the
    # script that shows the reader's zone.
    first, last = moment - timedelta(days=6), moment
    assert local_time(first) in chart and local_time(last) in chart
    assert (
        'data-ttb-utc="2026-11-19T08:00:00Z"' in chart
        and 'data-ttb-utc="2026-11-25T08:00:00Z"' in chart
    )
    # A thousand backups draw no more points than a hundred and twenty, spikes kept.
    many = [
        (moment - timedelta(hours=h), 1000.0 + (5000.0 if h == 500 else 0.0)) for h in range(1000)
    ]
    big = size_chart([Series("stored size", "ttb-stored", many)], label=local_time)
    assert "<circle" not in big
    polyline = big.split('points="')[1].split('"')[0]
    assert len(polyline.split()) <= MAX_POINTS
    assert min(float(xy.split(",")[1]) for xy in polyline.split()) < 60  # the spike's height


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


# -- what an admin sees (issue 12) ------------------------------------------------------------


def test_every_state_has_a_css_rule() -> None:
    """The pages' class names come from the states' values; each must be styled."""
    from tablettracker_backups.states import CopyStatus, Level, OffsiteStatus, TableChange
    from tablettracker_backups.web.resources import resource_dir

    css = (resource_dir("static") / "backups.css").read_text()
    for states in (Level, CopyStatus, OffsiteStatus, TableChange):
        for state in states:
            if states is CopyStatus and state == CopyStatus.OK:
                continue  # the plain .ttb-copy look is the ok look
            if states is OffsiteStatus and state == OffsiteStatus.OK:
                continue
            assert f".{state.css_class}" in css, state.css_class


def _reshape_live(settings: Settings) -> None:
    """Change the live database after a backup: fewer rows, a new table, a dropped one."""
    conn = sqlite3.connect(settings.database)
    with conn:
        conn.execute("DELETE FROM count_sessions WHERE id <= 300")
        conn.execute("DELETE FROM employees WHERE username = 'staff'")
        conn.execute("CREATE TABLE scratch (x)")
        conn.executemany("INSERT INTO scratch VALUES (?)", [(n,) for n in range(7)])
        conn.execute("DROP TABLE tablet_types")
    conn.close()


def test_restore_preview_says_what_happens_biggest_first(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    settings = settings_of(demo_app)
    with sqlite3.connect(settings.database) as conn:
        sessions = conn.execute("SELECT count(*) FROM count_sessions").fetchone()[0]
    _reshape_live(settings)
    html = admin_client.get(f"{P}/backups/{backup_id}/restore").get_data(as_text=True)
    rows = re.findall(r'<tr class="([^"]*)" data-table="([^"]+)">(.*?)</tr>', html, re.S)
    by_name = {name: (classes, body) for classes, name, body in rows}
    assert "will be dropped (7 rows now)" in by_name["scratch"][1]
    assert "ttb-table-removed" in by_name["scratch"][0]
    assert "will be brought back (6 rows)" in by_name["tablet_types"][1]
    assert "ttb-table-added" in by_name["tablet_types"][0]
    assert sessions > 300
    assert "rows 300 brought back" in by_name["count_sessions"][1]
    # The biggest change comes first and stands out; small ones do not.
    assert rows[0][1] == "count_sessions" and "ttb-big" in rows[0][0]
    assert "ttb-big" not in by_name["employees"][0] and "ttb-big" not in by_name["scratch"][0]
    assert "removed" not in re.sub(r'class="[^"]*"', "", html.split("<h2>What happens")[1])
    # Tables the restore leaves at the same row count are one line, not rows to read through.
    assert "po_lines" not in by_name and "po_lines" in html.split("data-ttb-same")[1]


def _damage(settings: Settings, backup_id: str) -> None:
    """Flip a byte of the stored file and verify it, as run or verify would find it."""
    from tablettracker_backups.verify import verify_backup
    from tests.conftest import flip_byte

    store = BackupStore(settings)
    flip_byte(store.data_path("primary", backup_id, settings.compression))
    assert not verify_backup(store, backup_id).ok


def test_a_damaged_backup_is_not_offered_for_restore(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    settings = settings_of(demo_app)
    sound = create_backup(settings, trigger="test").metadata.id
    _damage(settings, backup_id)
    restore_url = f"{P}/backups/{backup_id}/restore"
    listing = admin_client.get(f"{P}/backups").get_data(as_text=True)
    assert f'href="{restore_url}"' not in listing
    assert f'href="{P}/backups/{sound}/restore"' in listing
    detail = admin_client.get(f"{P}/backups/{backup_id}").get_data(as_text=True)
    assert "data-ttb-damaged" in detail and f'href="{restore_url}"' not in detail
    assert f'href="{P}/backups/{sound}"' in detail  # the sound one is offered instead
    page = admin_client.get(restore_url)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "known to be damaged" in html
    assert 'name="confirm"' not in html
    # A form from before the damage was found: refused, nothing restored, no job started.
    token = csrf_from(admin_client.get(f"{P}/").get_data(as_text=True))
    before = _supplier(settings)
    _set_supplier(settings, "Changed")
    response = admin_client.post(restore_url, data={"csrf_token": token, "confirm": backup_id})
    assert response.status_code == 409 and "Nothing was restored" in response.get_data(as_text=True)
    assert _supplier(settings) == "Changed" != before
    assert not jobs_dir(settings).exists() or not list(jobs_dir(settings).glob("*.json"))


def test_restore_is_a_destructive_secondary_action(
    admin_client: FlaskClient, backup_id: str
) -> None:
    for url in (f"{P}/backups/{backup_id}", f"{P}/backups"):
        html = admin_client.get(url).get_data(as_text=True)
        link = re.search(rf'<a class="([^"]+)" href="{P}/backups/{backup_id}/restore"', html)
        assert link and "ttb-destructive" in link.group(1) and "ttb-primary" not in link.group(1)
        actions = html.split('class="ttb-row-actions">')[-1] if url.endswith("backups") else html
        assert actions.index("Verify") < actions.index("Download") < actions.index("Restore")


def test_list_filters_by_kind_jumps_to_a_date_and_counts(
    demo_app: Flask, admin_client: FlaskClient
) -> None:
    from tests.conftest import backdate

    settings = settings_of(demo_app)
    ids = []
    for day in range(25):
        kind = "manual" if day % 5 == 0 else "scheduled"
        backup = create_backup(settings, kind=kind, trigger="test").metadata.id
        backdate(settings, backup, timedelta(days=day, hours=1))
        ids.append(backup)
    html = admin_client.get(f"{P}/backups").get_data(as_text=True)
    assert "1\N{EN DASH}20 of 25 backups · page 1 of 2" in html
    assert '<option value="manual">manual (5)</option>' in html
    # Reasons are short chips; the full text is in the title.
    assert '<span class="ttb-chip" title="daily ' in html and ">day</span>" in html
    manual = admin_client.get(f"{P}/backups?kind=manual").get_data(as_text=True)
    listed = re.findall(r'data-backup-id="([^"]+)"', manual)
    assert listed == [ids[d] for d in range(0, 25, 5)]
    assert "1\N{EN DASH}5 of 5 manual backups (25 in all)" in manual
    assert admin_client.get(f"{P}/backups?kind=pinned").status_code == 404
    # Jump to a date: the page holding the newest backup of that day (or before), marked.
    info = BackupStore(settings).get(ids[22])
    day = info.created_at.astimezone(timezone.utc).date().isoformat()
    jumped = admin_client.get(f"{P}/backups?date={day}&tz=0").get_data(as_text=True)
    assert "page 2 of 2" in jumped
    assert re.search(rf'<tr id="b-{ids[22]}" class="[^"]*ttb-target', jumped)
    assert admin_client.get(f"{P}/backups?date=not-a-date").status_code == 200


def test_dashboard_says_no_scheduled_run_yet_with_the_command(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    from tablettracker_backups.status import record_run
    from tests.conftest import backdate

    settings = settings_of(demo_app)
    html = admin_client.get(f"{P}/").get_data(as_text=True)
    note = html.split('data-ttb-schedule="none"')[1].split("</details>")[0]
    assert "No scheduled run yet" in note
    # The host app's own command: its config is the configuration (no options to repeat).
    assert ">flask backups init</code>" in note
    assert "tablettracker-backups" not in note
    assert 'data-ttb-problem="no-scheduled-run"' not in html  # a note, for now
    assert "no scheduled run set up" in html.split("data-ttb-verdict")[1].split("</p>")[0]
    backdate(settings, backup_id, timedelta(hours=2))  # one interval (1h) and more has passed
    html = admin_client.get(f"{P}/").get_data(as_text=True)
    problem = html.split('data-ttb-problem="no-scheduled-run"')[1].split("</li>")[0]
    assert "Nothing takes backups on a schedule yet." in problem
    assert 'href="#ttb-setup">Show the set-up command</a>' in problem
    assert 'data-ttb-verdict="warning"' in html
    record_run(settings, at=datetime.now(timezone.utc), result={"ok": True})
    create_backup(settings, trigger="test")
    html = admin_client.get(f"{P}/").get_data(as_text=True)
    assert "No scheduled run yet" not in html and "last ran" in html


def test_audit_log_has_every_face_in_words_with_links(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    settings = settings_of(demo_app)
    runner = demo_app.test_cli_runner()
    taken = runner.invoke(args=["backups", "backup", "--json"])
    assert taken.exit_code == 0, taken.output
    cli_id = json.loads(taken.output)["id"]
    assert runner.invoke(args=["backups", "verify", cli_id]).exit_code == 0
    runner.invoke(args=["backups", "run"])  # the scheduled task's command (exit 1: no secondary)
    token = demo_app.config["BACKUPS_TASK_TOKEN"]
    task = demo_app.test_client().post(
        "/tasks/backups/run", headers={"Authorization": f"Bearer {token}"}
    )
    assert task.status_code == 200
    entries = audit.read_entries(settings)
    faces = {(e.action, e.details.get("via")) for e in entries}
    assert {("backup", "cli"), ("verify", "cli"), ("run", "cli"), ("run", "http")} <= faces
    assert all(e.actor.endswith("(command line)") for e in entries if e.details.get("via") == "cli")
    html = admin_client.get(f"{P}/audit").get_data(as_text=True)
    table = html.split("<tbody>")[1]
    assert "{" not in table and "'via'" not in table, "details must be words, not dicts"
    assert "from the command line" in table and "through the scheduled-task URL" in table
    assert f'<a class="ttb-id" href="{P}/backups/{cli_id}">{cli_id}</a>' in table


def test_dashboard_names_the_backup_the_live_database_came_from(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    from tablettracker_backups.restore import restore_backup

    settings = settings_of(demo_app)
    html = admin_client.get(f"{P}/").get_data(as_text=True)
    assert "never restored from these backups" in html
    result = restore_backup(settings, backup_id, actor="ada")
    html = admin_client.get(f"{P}/").get_data(as_text=True)
    fact = html.split("data-ttb-last-restore>")[1].split("</dd>")[0]
    assert f'restored from <a class="ttb-id" href="{P}/backups/{backup_id}">' in fact
    assert "by ada" in fact and str(result.safety_snapshot_id) in fact and "<time" in fact


def test_times_are_one_format_with_the_zone_named(
    demo_app: Flask, admin_client: FlaskClient, backup_id: str
) -> None:
    from tablettracker_backups.display import local_time

    info = BackupStore(settings_of(demo_app)).get(backup_id)
    shown = local_time(info.created_at)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+", shown)  # the zone is named
    for url in (f"{P}/", f"{P}/backups", f"{P}/backups/{backup_id}"):
        html = admin_client.get(url).get_data(as_text=True)
        assert shown in html, url
    dashboard = admin_client.get(f"{P}/").get_data(as_text=True)
    chart = dashboard.split('<svg class="ttb-chart"')[1]
    assert f'data-ttb-utc="{info.created_at:%Y-%m-%dT%H:%M:%SZ}">{shown}</text>' in chart


# -- page loads read no backup data -----------------------------------------------------------

#: Files opened and SQLite databases connected to while a test watches (an audit hook sees
#: every open() and os.open() of this process, and every sqlite3.connect).
_WATCHED: list[str] | None = None


def _watch(event: str, args: tuple[Any, ...]) -> None:
    if _WATCHED is None or event not in ("open", "sqlite3.connect"):
        return
    target = args[0] if args else None
    if isinstance(target, str | bytes | os.PathLike):
        _WATCHED.append(f"{event} {os.fsdecode(target)}")


sys.addaudithook(_watch)  # hooks cannot be removed; it does nothing unless a test watches


def test_page_loads_read_no_backup_data(make_host: Callable[..., Flask]) -> None:
    """Hashing belongs to run and verify: a page load must not open a backup's data file, and
    (but for the restore preview, which compares a copy of the live database with the backup
    it would restore) not the live database either.

    A minimal host, so that every file the request opens is the blueprint's doing (the demo
    app loads its users from the live database on every request)."""
    global _WATCHED
    app = make_host()
    admin_client = host_login(app, "admin")
    settings = settings_of(app)
    backup_id = create_backup(settings, trigger="test").metadata.id
    create_backup(settings, trigger="test")
    _damage(settings, backup_id)  # a damaged one too, as the pages must show it
    assert app.test_cli_runner().invoke(args=["backups", "health"]).exit_code in (1, 2)
    store = BackupStore(settings)
    data_files = {
        str(store.data_path(location, info.id, settings.compression))
        for info in store.list()
        for location in store.locations
    }
    assert len(data_files) >= 2
    pages = [url for url in get_pages(backup_id) if not url.endswith("/restore")]
    pages += [f"{P}/backups?kind=manual", f"{P}/backups?date=2026-01-01"]
    _WATCHED = []
    try:
        for url in pages:
            response = admin_client.get(url)
            assert response.status_code == 200, url
            response.close()
        during_pages = list(_WATCHED)
        _WATCHED.clear()
        preview = admin_client.get(f"{P}/backups/{backup_id}/restore")
        assert preview.status_code == 200
        during_preview = list(_WATCHED)
    finally:
        _WATCHED = None
    assert any(p.endswith(".json") for p in during_pages), "the hook must see the pages' reads"
    assert not [p for p in during_pages if p.split(" ", 1)[1] in data_files]
    # The only SQLite file a page opens is a backup folder's catalog (the listing's index).
    connected = [p.split(" ", 1)[1] for p in during_pages if p.startswith("sqlite3.connect")]
    assert all(Path(p).parent.name == ".catalog" for p in connected), connected
    assert not [p for p in during_pages if p.split(" ", 1)[1] == str(settings.database)]
    # The preview reads the one backup it compares with, no other.
    read = [p.split(" ", 1)[1] for p in during_preview if p.split(" ", 1)[1] in data_files]
    assert read and all(backup_id in path for path in read), read
    # What the last full check found is still shown, with when it ran.
    html = admin_client.get(f"{P}/").get_data(as_text=True)
    assert "data-ttb-data-checked" in html

"""Restoring every database of a site to one coordinated snapshot from the pages (issue 22):
the site's dashboard offers the groups, the preview shows every member's tables, and only a
POST with the token and the typed id runs the group restore (in a worker process, through
``restore --group``'s core function). The demo site of two, real folders, real workers."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from tablettracker_backups import audit
from tablettracker_backups.coordinated import create_group_backup
from tablettracker_backups.jobs.queue import recent_jobs
from tablettracker_backups.store import BackupStore
from tests import test_site_pages
from tests.conftest import csrf_from, login, wait_for_job
from tests.test_site_pages import PREFIX, member, state_of

# The demo as a site of two (tablets, audit), and its logged-in admin.
site_app = test_site_pages.site_app
site_admin = test_site_pages.site_admin


def take_group(app: Flask) -> str:
    """A coordinated snapshot of the demo's two databases; its id."""
    databases = [m.settings for m in state_of(app).members.values()]
    return create_group_backup(databases, trigger="test").group_id


def count(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        found: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return found


def edit(client: FlaskClient, supplier: str) -> None:
    """A change through the demo app: it writes both databases in one transaction."""
    token = csrf_from(client.get("/po/1/edit").get_data(as_text=True))
    form = {"csrf_token": token, "supplier": supplier, "status": "open", "notes": ""}
    assert client.post("/po/1/edit", data=form).status_code == 303


def state(app: Flask) -> tuple[int, int, int, list[str]]:
    """What a restore would change: both databases' rows, and every backup's id."""
    tablets, audit_db = member(app, "tablets"), member(app, "audit")
    ids = sorted(i.id for s in (tablets, audit_db) for i in BackupStore(s).list())
    return (
        count(audit_db.database, "change_log"),
        count(tablets.database, "purchase_orders"),
        len(recent_jobs(tablets)) + len(recent_jobs(audit_db)),
        ids,
    )


def test_the_site_dashboard_offers_the_group_and_its_preview_lists_every_member(
    site_app: Flask, site_admin: FlaskClient
) -> None:
    group = take_group(site_app)
    edit(site_admin, "Acme")  # one row more in the audit log than the snapshot holds
    dashboard = site_admin.get(f"{PREFIX}/").get_data(as_text=True)
    link = f"{PREFIX}/groups/{group}/restore"
    assert f'href="{link}"' in dashboard
    page = site_admin.get(link)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    tablets = BackupStore(member(site_app, "tablets")).list()[0].id
    audit_id = BackupStore(member(site_app, "audit")).list()[0].id
    for name, backup_id in (("tablets", tablets), ("audit", audit_id)):
        start = html.index(f'data-ttb-member="{name}"')
        section = html[start : html.index("</section>", start)]
        assert backup_id in section, name
    audit_section = html[html.index('data-ttb-member="audit"') :]
    # The audit log's table, compared with the live database: the row added since.
    assert 'data-table="change_log"' in audit_section.split("</section>")[0]
    assert "1 row" in audit_section.split("</section>")[0]
    # The verdict comes before the members.
    assert html.index("data-ttb-group-verdict") < html.index('data-ttb-member="tablets"')


def test_unknown_or_malformed_groups_are_404(site_admin: FlaskClient) -> None:
    for group in ("20990101T000000Z-abcdef", "..", "nope%2F..", "x" * 300):
        assert site_admin.get(f"{PREFIX}/groups/{group}/restore").status_code == 404, group
    token = csrf_from(site_admin.get(f"{PREFIX}/").get_data(as_text=True))
    answer = site_admin.post(
        f"{PREFIX}/groups/20990101T000000Z-abcdef/restore",
        data={"csrf_token": token, "confirm": "RESTORE"},
    )
    assert answer.status_code == 404


def test_only_a_post_with_the_token_and_the_typed_id_changes_anything(
    site_app: Flask, site_admin: FlaskClient
) -> None:
    group = take_group(site_app)
    edit(site_admin, "Acme")
    url = f"{PREFIX}/groups/{group}/restore"
    before = state(site_app)
    form = {"confirm": group}
    assert site_admin.get(url, data=form).status_code == 200
    assert site_admin.head(url, data=form).status_code == 200
    for method in ("PUT", "DELETE", "PATCH"):
        assert site_admin.open(url, method=method, data=form).status_code == 405
    assert site_admin.post(url, data=form).status_code == 400  # no token
    assert site_admin.post(url, data={**form, "csrf_token": "forged"}).status_code == 400
    token = csrf_from(site_admin.get(url).get_data(as_text=True))
    wrong = site_admin.post(url, data={"csrf_token": token, "confirm": "restore all"})
    assert wrong.status_code == 400
    assert "Nothing was restored" in wrong.get_data(as_text=True)
    assert state(site_app) == before
    # Anonymous visitors and non-admins reach neither the preview nor the action.
    assert site_app.test_client().get(url).status_code == 302
    staff = site_app.test_client()
    login(staff, "staff", site_app.config["DEMO_PASSWORD"])
    assert staff.get(url).status_code == 403
    assert staff.post(url, data={"csrf_token": token, "confirm": group}).status_code in (400, 403)
    assert state(site_app) == before


def test_a_group_restore_from_the_page_restores_both_databases(
    site_app: Flask, site_admin: FlaskClient
) -> None:
    edit(site_admin, "Before")
    group = take_group(site_app)
    tablets, audit_db = member(site_app, "tablets"), member(site_app, "audit")
    edit(site_admin, "After")
    assert count(audit_db.database, "change_log") == 2
    url = f"{PREFIX}/groups/{group}/restore"
    token = csrf_from(site_admin.get(url).get_data(as_text=True))
    answer = site_admin.post(url, data={"csrf_token": token, "confirm": "RESTORE"})
    assert answer.status_code == 303
    job_id = answer.headers["Location"].rsplit("/", 1)[-1]
    assert answer.headers["Location"].endswith(f"/db/tablets/jobs/{job_id}")
    job = wait_for_job(tablets, job_id)
    assert job.state == "done", job.message
    assert count(audit_db.database, "change_log") == 1
    with closing(sqlite3.connect(tablets.database)) as conn:
        supplier = conn.execute("SELECT supplier FROM purchase_orders WHERE id = 1").fetchone()
    assert supplier == ("Before",)
    # The act is audited in the first database's log naming every database, and each
    # database's own log has its member's restore.
    act = [e for e in audit.read_entries(tablets) if e.action == "restore-group"]
    assert len(act) == 1 and act[0].ok
    assert set(act[0].details["databases"].split(", ")) == {"tablets", "audit"}
    assert act[0].details["group"] == group and "members" not in act[0].details
    for settings in (tablets, audit_db):
        restored = [e for e in audit.read_entries(settings) if e.action == "restore"]
        assert restored and restored[0].details["group"] == group
    page = site_admin.get(f"{PREFIX}/db/tablets/jobs/{job_id}").get_data(as_text=True)
    assert "Restore every database" in page


def test_a_group_that_is_no_longer_whole_is_shown_but_refused(
    site_app: Flask, site_admin: FlaskClient
) -> None:
    group = take_group(site_app)
    audit_db = member(site_app, "audit")
    gone = BackupStore(audit_db).list()[0].id
    BackupStore(audit_db).delete(gone)  # what retention of the audit log alone may do
    edit(site_admin, "Acme")
    url = f"{PREFIX}/groups/{group}/restore"
    page = site_admin.get(url)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'data-ttb-group-verdict="partial"' in html
    assert f"backup {gone} is gone" in html
    assert 'class="ttb-confirm"' not in html
    before = state(site_app)
    token = csrf_from(site_admin.get(f"{PREFIX}/").get_data(as_text=True))
    refused = site_admin.post(url, data={"csrf_token": token, "confirm": group})
    assert refused.status_code == 409
    assert "Nothing was restored" in refused.get_data(as_text=True)
    assert state(site_app) == before

"""The pages of a site of several databases (issue 22): the site's table on the dashboard,
each database's own pages under ``/db/<name>/``, a site of one as it always was, and the write
trigger and the restore gate covering every database. Flask's test client on the demo app
(which writes its audit database in the same transaction as each change), real folders."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from tablettracker_backups import audit, intent
from tablettracker_backups.backup import create_backup
from tablettracker_backups.cli import cli
from tablettracker_backups.demo import create_app
from tablettracker_backups.settings import Settings
from tablettracker_backups.site import build_site
from tablettracker_backups.sources import standalone_layers
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup
from tablettracker_backups.web.state import BackupState
from tests.conftest import csrf_from, login, make_db, wait_for_job
from tests.test_restore_live import pretend_restore, sleeper  # noqa: F401 (a fixture)

PREFIX = "/admin/backups"


@pytest.fixture
def site_app(tmp_path: Path) -> Flask:
    """The demo as a site of two: ``tablets`` and ``audit`` (what ``demo`` serves)."""
    return create_app(
        {
            "INSTANCE_PATH": tmp_path / "instance",
            "TESTING": True,
            "BACKUPS_LOCK_TIMEOUT": 0,
            "DEMO_SITE": True,
            "BACKUPS_SNAPSHOT_AFTER_WRITE": "off",
        }
    )


def state_of(app: Flask) -> BackupState:
    state: BackupState = app.extensions["tablettracker_backups"]
    return state


def member(app: Flask, name: str) -> Settings:
    found = state_of(app).member(name)
    assert found is not None
    return found.settings


@pytest.fixture
def site_admin(site_app: Flask) -> FlaskClient:
    client = site_app.test_client()
    login(client, "admin", site_app.config["DEMO_PASSWORD"])
    return client


def rows(html: str) -> dict[str, str]:
    """The site table's rows: database name -> its level (data attributes)."""
    return dict(re.findall(r'data-ttb-database="([^"]+)" data-ttb-level="([^"]+)"', html))


def row_html(html: str, name: str) -> str:
    start = html.index(f'data-ttb-database="{name}" data-ttb-level')
    return html[start : html.index("</tr>", start)]


def test_the_dashboard_lists_every_database_with_its_verdict(
    site_app: Flask, site_admin: FlaskClient
) -> None:
    tablets, audit_db = member(site_app, "tablets"), member(site_app, "audit")
    taken = create_backup(tablets, kind="manual", trigger="test").metadata.id
    page = site_admin.get(f"{PREFIX}/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    found = rows(html)
    assert set(found) == {"tablets", "audit"}
    # audit has no backup: it is at risk, and named in the site's verdict, which comes first.
    assert found["audit"] == "critical"
    assert found["tablets"] != "critical"
    verdict = re.search(
        r'<p class="ttb-verdict ttb-critical" data-ttb-verdict="critical"[^>]*>(.*?)</p>', html
    )
    assert verdict and "audit:" in verdict.group(1) and "tablets:" not in verdict.group(1)
    assert html.index("ttb-verdict") < html.index("<table")
    # The worst row first.
    assert html.index('data-ttb-database="audit"') < html.index('data-ttb-database="tablets"')
    # Newest backup and recovery point in tablets' row; none yet in audit's.
    assert f"/db/tablets/backups/{taken}" in row_html(html, "tablets")
    assert "none yet" in row_html(html, "audit")
    assert audit_db.backup_dir == tablets.backup_dir.parent / "audit"


def test_each_rows_links_reach_that_databases_own_pages(
    site_app: Flask, site_admin: FlaskClient
) -> None:
    for name in ("tablets", "audit"):
        create_backup(member(site_app, name), kind="manual", trigger="test")
    html = site_admin.get(f"{PREFIX}/").get_data(as_text=True)
    for name in ("tablets", "audit"):
        settings = member(site_app, name)
        newest = BackupStore(settings).list()[0].id
        row = row_html(html, name)
        links = set(re.findall(r'(?:href|action)="([^"]+)"', row))
        base = f"{PREFIX}/db/{name}"
        assert {
            f"{base}/",
            f"{base}/backups",
            f"{base}/backups/{newest}",
            f"{base}/restore-at",
            f"{base}/backup-now",
            f"{base}/verify-all",
            f"{base}/backups/{newest}/download",
        } <= links, links
        # Each page is that database's: its own backups, and links that stay on it.
        for path in (
            f"{base}/",
            f"{base}/backups",
            f"{base}/backups/{newest}",
            f"{base}/restore-at",
            f"{base}/backups/{newest}/restore",
            f"{base}/prune",
            f"{base}/audit",
        ):
            page = site_admin.get(path)
            assert page.status_code == 200, path
            text = page.get_data(as_text=True)
            assert f'data-ttb-database="{name}"' in text, path  # the navigation names it
            # Every link of the backup pages stays on this database (the site's dashboard and
            # the stylesheet aside).
            ours = re.findall(rf'(?:href|action)="({PREFIX}[^"]*)"', text)
            strays = [
                link
                for link in ours
                if not link.startswith(f"{base}/")
                and link != f"{PREFIX}/"
                and not link.startswith(f"{PREFIX}/_static/")
            ]
            assert f"{base}/backups" in ours and not strays, (path, strays)
        listed = site_admin.get(f"{base}/backups").get_data(as_text=True)
        assert f'data-backup-id="{newest}"' in listed
        # The pages that act on the database name it in their heading: which one a restore
        # overwrites is never left to the navigation alone.
        for path in (
            f"{base}/",
            f"{base}/backups",
            f"{base}/restore-at",
            f"{base}/backups/{newest}/restore",
        ):
            heading = re.search(r"<h1>(.*?)</h1>", site_admin.get(path).get_data(as_text=True))
            assert heading and f"<span data-ttb-heading-database>{name}</span>" in heading.group(1)
        # Download sends this database's file.
        token = csrf_from(html)
        store = BackupStore(settings)
        info = store.get(newest)
        assert info.metadata is not None
        data = store.data_path("primary", newest, info.metadata.compression).read_bytes()
        with site_admin.post(
            f"{base}/backups/{newest}/download", data={"csrf_token": token}
        ) as sent:
            assert sent.status_code == 200
            assert sent.get_data() == data


def test_an_action_on_one_database_runs_there_and_its_audit_entry_names_it(
    site_app: Flask, site_admin: FlaskClient
) -> None:
    token = csrf_from(site_admin.get(f"{PREFIX}/").get_data(as_text=True))
    started = site_admin.post(f"{PREFIX}/db/audit/backup-now", data={"csrf_token": token})
    assert started.status_code == 303
    job_url = started.headers["Location"]
    assert job_url.startswith(f"{PREFIX}/db/audit/jobs/")
    audit_settings = member(site_app, "audit")
    job = wait_for_job(audit_settings, job_url.rsplit("/", 1)[1])
    assert job.state == "done", job.message
    assert len(BackupStore(audit_settings).list()) == 1
    assert BackupStore(member(site_app, "tablets")).list() == []
    entries = [e for e in audit.read_entries(audit_settings) if e.action == "backup"]
    web = [e for e in entries if e.details.get("via") == "web"]
    assert web and web[0].details["database"] == "audit" and web[0].actor == "admin"
    # The job page is the audit database's, and tablets' name does not reach it.
    assert site_admin.get(job_url).status_code == 200
    assert site_admin.get(job_url.replace("/db/audit/", "/db/tablets/")).status_code == 404


def test_state_changes_need_post_and_the_token_on_a_databases_pages(
    site_admin: FlaskClient,
) -> None:
    for method in ("GET", "HEAD", "PUT"):
        assert site_admin.open(f"{PREFIX}/db/audit/backup-now", method=method).status_code == 405
    assert site_admin.post(f"{PREFIX}/db/audit/backup-now").status_code == 400
    assert (
        site_admin.post(f"{PREFIX}/db/audit/backup-now", data={"csrf_token": "x"}).status_code
        == 400
    )


def test_unknown_names_are_404_after_the_login_and_admin_checks(
    site_app: Flask, site_admin: FlaskClient
) -> None:
    for name in ("nope", "..", "tablets2", "Audit", "%2e%2e"):
        assert site_admin.get(f"{PREFIX}/db/{name}/").status_code == 404, name
        assert site_admin.get(f"{PREFIX}/db/{name}/backups").status_code == 404, name
    # A database's page without its name, in a site of several, names them; never a guess.
    missing = site_admin.get(f"{PREFIX}/backups")
    assert missing.status_code == 404
    assert "tablets, audit" in missing.get_data(as_text=True)
    token = csrf_from(site_admin.get(f"{PREFIX}/").get_data(as_text=True))
    assert site_admin.post(f"{PREFIX}/backup-now", data={"csrf_token": token}).status_code == 404
    assert (
        site_admin.post(f"{PREFIX}/db/nope/backup-now", data={"csrf_token": token}).status_code
        == 404
    )
    # Anonymous visitors go to the login page and non-admins get 403, whatever the name: the
    # answer does not tell them which databases exist.
    anonymous = site_app.test_client()
    for name in ("audit", "nope"):
        assert anonymous.get(f"{PREFIX}/db/{name}/").status_code == 302
    staff = site_app.test_client()
    login(staff, "staff", site_app.config["DEMO_PASSWORD"])
    for name in ("audit", "nope"):
        assert staff.get(f"{PREFIX}/db/{name}/").status_code == 403


def test_a_damaged_database_shows_in_its_row_while_the_others_are_fine(
    site_app: Flask, site_admin: FlaskClient
) -> None:
    for name in ("tablets", "audit"):
        create_backup(member(site_app, name), kind="manual", trigger="test")
    before = rows(site_admin.get(f"{PREFIX}/").get_data(as_text=True))
    assert before["audit"] == before["tablets"] != "critical"
    # A flipped byte in audit's only backup, found by a verification.
    audit_settings = member(site_app, "audit")
    store = BackupStore(audit_settings)
    info = store.list()[0]
    assert info.metadata is not None
    data = store.data_path("primary", info.id, info.metadata.compression)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    verify_backup(store, info.id, notify_owner=False)
    html = site_admin.get(f"{PREFIX}/").get_data(as_text=True)
    after = rows(html)
    assert after["audit"] == "critical"
    assert after["tablets"] == before["tablets"]
    assert 'data-ttb-damaged-count="1"' in row_html(html, "audit")
    assert "data-ttb-damaged-count" not in row_html(html, "tablets")
    # Its download is gone from the row (no good backup), tablets' is there.
    assert "/download" not in row_html(html, "audit")
    assert "/download" in row_html(html, "tablets")


def test_a_database_whose_folder_cannot_be_read_is_a_critical_row_not_a_broken_page(
    site_app: Flask, site_admin: FlaskClient
) -> None:
    create_backup(member(site_app, "tablets"), kind="manual", trigger="test")
    folder = member(site_app, "audit").backup_dir
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("a file where the folder should be")
    page = site_admin.get(f"{PREFIX}/")
    assert page.status_code == 200
    found = rows(page.get_data(as_text=True))
    assert found["audit"] == "critical" and found["tablets"] != "critical"


def test_a_site_of_one_keeps_its_urls_and_also_answers_under_its_name(
    app: Flask, admin_client: FlaskClient
) -> None:
    settings = app.extensions["tablettracker_backups"].settings
    taken = create_backup(settings, kind="manual", trigger="test").metadata.id
    html = admin_client.get(f"{PREFIX}/").get_data(as_text=True)
    assert "ttb-site" not in html and "All databases" not in html
    assert 'data-ttb-verdict="' in html
    # Links as they always were: no /db/ in them.
    assert "/db/" not in html
    for path in ("/", "/backups", f"/backups/{taken}", "/restore-at", "/audit", "/prune"):
        assert admin_client.get(f"{PREFIX}{path}").status_code == 200, path
        named = admin_client.get(f"{PREFIX}/db/{settings.database_name}{path}")
        assert named.status_code == 200, path
    assert admin_client.get(f"{PREFIX}/db/other/").status_code == 404


def test_the_demo_writes_its_audit_row_in_the_same_transaction(
    site_app: Flask, site_admin: FlaskClient
) -> None:
    token = csrf_from(site_admin.get("/po/1/edit").get_data(as_text=True))
    form = {"csrf_token": token, "supplier": "Acme", "status": "open", "notes": ""}
    assert site_admin.post("/po/1/edit", data=form).status_code == 303
    audit_file = member(site_app, "audit").database
    with closing(sqlite3.connect(audit_file)) as conn:
        logged = conn.execute("SELECT actor, action, po_id FROM change_log").fetchall()
    assert logged == [("admin", "edit", 1)]
    # A change whose audit row cannot be written is not made either: one transaction.
    with closing(sqlite3.connect(audit_file)) as conn:
        conn.execute("ALTER TABLE change_log RENAME TO gone")
        conn.commit()
    form["supplier"] = "Never"
    with pytest.raises(sqlite3.OperationalError):
        site_admin.post("/po/1/edit", data=form)
    with closing(sqlite3.connect(member(site_app, "tablets").database)) as conn:
        supplier = conn.execute("SELECT supplier FROM purchase_orders WHERE id = 1").fetchone()
    assert supplier == ("Acme",)


def test_the_restore_gate_covers_every_database_of_the_site(
    site_app: Flask,
    site_admin: FlaskClient,
    sleeper: Any,  # noqa: F811
) -> None:
    token = csrf_from(site_admin.get("/po/1/edit").get_data(as_text=True))
    form = {"csrf_token": token, "supplier": "S", "status": "open", "notes": ""}
    assert site_admin.post("/po/1/edit", data=form).status_code == 303
    # A restore of the second database (the audit log) holds its lock: the app's writes,
    # which write it too, are turned away.
    audit_settings = member(site_app, "audit")
    pretend_restore(audit_settings, sleeper.pid, stage=intent.SAFETY_COPY, journal="delete")
    refused = site_admin.post("/po/1/edit", data=form)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "15"
    assert site_admin.get("/po/1").status_code == 200
    assert site_admin.get(f"{PREFIX}/").status_code == 200
    intent.clear(audit_settings)
    assert site_admin.post("/po/1/edit", data=form).status_code == 303


# -- init for a site ----------------------------------------------------------------------------


def site_file(tmp_path: Path) -> Path:
    """Two databases (tablets, audit) under one root, in a TOML file."""
    make_db(tmp_path / "tablet_counter.db")
    with closing(sqlite3.connect(tmp_path / "audit.db")) as conn:
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)")
        conn.commit()
    path = tmp_path / "site.toml"
    path.write_text(
        '[backups]\nbackup_dir = "site-backups"\nkeep_recent = "0"\n\n'
        '[databases.tablets]\ndatabase = "tablet_counter.db"\n\n'
        '[databases.audit]\ndatabase = "audit.db"\ninterval = "1d"\n'
    )
    return path


def test_init_sets_up_every_database_of_a_site_file_and_never_rewrites_it(
    tmp_path: Path,
) -> None:
    config = site_file(tmp_path)
    written = config.read_text()
    result = CliRunner().invoke(cli, ["init", "--config", str(config)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "site-backups"
    for name in ("tablets", "audit"):
        assert f"== {name} (" in result.output
        settings = build_site(standalone_layers(config_file=config)).pick(name).one()
        [only] = BackupStore(settings).list()
        assert only.verified and only.kind == "manual"
        assert (root / name / "database.json").is_file()
        entries = audit.read_entries(settings)
        assert [e.action for e in entries if e.action == "init"] == ["init"]
    # One scheduled task for the whole site, hourly (the most frequent database's pace).
    assert result.output.count("PythonAnywhere: Tasks tab") == 1
    assert f"run --config {config}" in result.output and "(hourly)" in result.output
    assert config.read_text() == written
    # Its file is not rewritten, even when asked to.
    refused = CliRunner().invoke(cli, ["init", "--config", str(config), "--overwrite"])
    assert refused.exit_code == 2 and "does not rewrite it" in refused.output
    assert config.read_text() == written


def test_init_of_a_site_sets_up_the_others_when_one_fails(tmp_path: Path) -> None:
    config = site_file(tmp_path)
    (tmp_path / "audit.db").unlink()
    result = CliRunner().invoke(cli, ["init", "--config", str(config), "--json"])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["exit_code"] == 2
    assert report["databases"]["audit"]["ok"] is False
    assert report["databases"]["tablets"]["backup_id"]
    assert "Error: audit: " in result.stderr
    # --database picks one of the site's, and is set up alone.
    make_db(tmp_path / "audit.db")
    picked = CliRunner().invoke(cli, ["init", "--config", str(config), "--database", "audit"])
    assert picked.exit_code == 0, picked.output
    assert "== audit (" in picked.output and "== tablets (" not in picked.output


def test_flask_backups_init_sets_up_every_database_of_the_apps_site(site_app: Flask) -> None:
    result = site_app.test_cli_runner().invoke(args=["backups", "init"])
    assert result.exit_code == 0, result.output
    for name in ("tablets", "audit"):
        assert f"== {name} (" in result.output
        assert len(BackupStore(member(site_app, name)).list()) == 1
    assert result.output.count("backups run") >= 1 and "Config written" not in result.output


def test_a_damaged_live_database_is_critical_in_its_row_and_the_site_verdict(
    tmp_path: Path,
) -> None:
    """The audit log's own file fails integrity_check (an index page scribbled over): its
    backup is kept but flagged, its row is at risk and named in the site's verdict; the
    tablets' row stays as it was."""
    from tests.corpus import damaged_index

    broken = tmp_path / "broken-audit.db"
    damaged_index(broken)
    app = create_app(
        {
            "INSTANCE_PATH": tmp_path / "instance",
            "TESTING": True,
            "BACKUPS_LOCK_TIMEOUT": 0,
            "BACKUPS_SNAPSHOT_AFTER_WRITE": "off",
            "BACKUPS_DATABASE": None,
            "BACKUPS_DATABASES": {"tablets": "tablet_counter.db", "audit": str(broken)},
        }
    )
    client = app.test_client()
    login(client, "admin", app.config["DEMO_PASSWORD"])
    for name in ("tablets", "audit"):
        create_backup(member(app, name), kind="manual", trigger="test")
    [kept] = BackupStore(member(app, "audit")).list()
    assert kept.metadata is not None and kept.metadata.findings.summary() != "ok"
    html = client.get(f"{PREFIX}/").get_data(as_text=True)
    found = rows(html)
    assert found["audit"] == "critical" and found["tablets"] != "critical", found
    verdict = re.search(r"data-ttb-verdict=\"critical\"[^>]*>(.*?)</p>", html, re.S)
    assert verdict and "audit:" in verdict.group(1) and "tablets:" not in verdict.group(1)

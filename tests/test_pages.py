"""What the pages say and offer, through Flask's test client on the demo app: the verdict
and problems on the dashboard, the data-loss warning's buttons, the list's kinds and chips,
the audit log's paging and filters, links only to backups that exist."""

from __future__ import annotations

import re
import sqlite3

from flask import Flask
from flask.testing import FlaskClient

from tablettracker_backups import audit
from tablettracker_backups.backup import create_backup
from tablettracker_backups.evidence import open_warnings
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore
from tablettracker_backups.web import wording
from tablettracker_backups.web.extension import get_state
from tests.conftest import csrf_from

P = "/admin/backups"


def settings_of(app: Flask) -> Settings:
    with app.app_context():
        return get_state().settings


def test_an_empty_install_offers_a_backup_and_nothing_to_verify_or_prune(
    admin_client: FlaskClient,
) -> None:
    html = admin_client.get(f"{P}/").get_data(as_text=True)
    assert 'data-ttb-verdict="critical"' in html
    assert "<strong>At risk:</strong> There is no backup yet." in html
    assert "Back up now" in html
    assert "Verify all backups" not in html and "Prune (preview first)" not in html


def test_lost_rows_are_a_warning_card_with_its_three_answers(
    app: Flask, admin_client: FlaskClient
) -> None:
    settings = settings_of(app)
    evidence = create_backup(settings, kind="scheduled").metadata.id
    conn = sqlite3.connect(settings.database)
    with conn:
        conn.execute("DELETE FROM po_lines WHERE id > 120")
    found = create_backup(settings, kind="scheduled").metadata.id
    html = admin_client.get(f"{P}/").get_data(as_text=True)
    assert 'data-ttb-verdict="warning"' in html
    card = html.split(f'data-ttb-warning="{found}"')[1].split("</section>")[0]
    assert "Table po_lines lost 40 of its 160 rows (25%)." in card
    assert f'href="{P}/backups/{evidence}/restore">Preview restore</a>' in card
    assert ">Keep this backup</button>" in card and ">Dismiss: it was intended</button>" in card
    # The evidence's own page says why it is kept.
    detail = admin_client.get(f"{P}/backups/{evidence}").get_data(as_text=True)
    assert "Kept as the evidence of a data-loss warning: rows lost in po_lines: 160 → 120" in detail
    # Keep: the pin becomes the owner's; the button goes.
    token = csrf_from(html)
    response = admin_client.post(f"{P}/warnings/{found}/keep", data={"csrf_token": token})
    assert response.status_code == 303
    assert open_warnings(settings)[0].kept
    assert ">Keep this backup</button>" not in admin_client.get(f"{P}/").get_data(as_text=True)
    # Dismiss: the card goes, the kept pin stays; both answers are audited with the admin.
    response = admin_client.post(f"{P}/warnings/{found}/dismiss", data={"csrf_token": token})
    assert response.status_code == 303 and open_warnings(settings) == []
    assert BackupStore(settings).get(evidence).pinned
    assert "data-ttb-warning" not in admin_client.get(f"{P}/").get_data(as_text=True)
    actions = [(e.action, e.actor) for e in audit.read_entries(settings)[:2]]
    assert actions == [("dismiss-warning", "admin"), ("pin", "admin")]
    # A warning that is not open is a 404, not a traceback.
    again = admin_client.post(f"{P}/warnings/{found}/dismiss", data={"csrf_token": token})
    assert again.status_code == 404


def test_every_kind_can_be_filtered(app: Flask, admin_client: FlaskClient) -> None:
    settings = settings_of(app)
    for kind in ("scheduled", "manual", "auto", "pre-restore"):
        create_backup(settings, kind=kind)
    for name, stored in (
        ("scheduled", "scheduled"),
        ("manual", "manual"),
        ("auto", "auto"),
        ("safety", "pre-restore"),
        ("pre-restore", "pre-restore"),
    ):
        response = admin_client.get(f"{P}/backups?kind={name}")
        assert response.status_code == 200, name
        html = response.get_data(as_text=True)
        assert len(re.findall(r'<tr id="b-', html)) == 1, name
        assert f"{wording.KIND_NAMES[stored]}</td>" in html
    assert admin_client.get(f"{P}/backups?kind=weekly").status_code == 404


def test_chips_are_never_cut() -> None:
    assert wording.reason_chip("recent, one per 2 min") == "recent (1 per 2 min)"
    assert wording.reason_chip("some reason a later version adds, long") == (
        "some reason a later version adds, long"
    )
    assert wording.reason_chip("evidence of a data-loss warning: rows lost in x") == "evidence"


def test_the_audit_log_pages_and_filters_by_action_and_backup(
    app: Flask, admin_client: FlaskClient
) -> None:
    settings = settings_of(app)
    one = create_backup(settings).metadata.id
    for n in range(60):
        audit.record(settings, action="verify", actor="ada", ok=True, message=f"check {n}")
    audit.record(settings, action="pin", actor="ada", ok=True, message=f"pinned backup {one}")
    html = admin_client.get(f"{P}/audit").get_data(as_text=True)
    assert "1\u201350 of 61 · page 1 of 2" in html and 'rel="next"' in html
    html = admin_client.get(f"{P}/audit?page=2").get_data(as_text=True)
    assert "51\u201361 of 61 · page 2 of 2" in html
    html = admin_client.get(f"{P}/audit?action=pin").get_data(as_text=True)
    assert "1\u20131 of 1 matching (61 in all)" in html
    html = admin_client.get(f"{P}/audit?backup={one}").get_data(as_text=True)
    assert "1\u20131 of 1 matching" in html and "pinned backup" in html
    assert admin_client.get(f"{P}/audit?page=3").status_code == 404
    assert admin_client.get(f"{P}/audit?action=nope").status_code == 404
    assert admin_client.get(f"{P}/audit?backup=../x").status_code == 404


def test_a_pruned_backup_is_named_but_not_linked(app: Flask, admin_client: FlaskClient) -> None:
    settings = settings_of(app)
    gone = create_backup(settings).metadata.id
    kept = create_backup(settings).metadata.id
    BackupStore(settings).delete(gone)
    audit.record(settings, action="prune", actor="ada", ok=True, message=f"pruned {gone}")
    audit.record(settings, action="pin", actor="ada", ok=True, message=f"pinned {kept}")
    html = admin_client.get(f"{P}/audit").get_data(as_text=True)
    assert f'<span class="ttb-id">{gone}</span>' in html
    assert f'href="{P}/backups/{gone}"' not in html
    assert f'<a class="ttb-id" href="{P}/backups/{kept}">' in html


def test_the_verdict_line_in_words() -> None:
    from datetime import datetime, timedelta, timezone

    from tablettracker_backups.states import Level

    now = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)
    safe = wording.verdict(
        Level.OK,
        first_problem=None,
        good_at=now - timedelta(minutes=12),
        checked_at=now - timedelta(minutes=2),
        next_run=now + timedelta(minutes=48),
        now=now,
    )
    assert safe == ("Safe", "last good backup 12 min ago, checked 2 min ago, next in 48 min.")
    late = wording.verdict(
        Level.CRITICAL,
        first_problem="The last scheduled run failed.",
        good_at=None,
        checked_at=None,
        next_run=now - timedelta(minutes=5),
        now=now,
    )
    assert late == (
        "At risk",
        "The last scheduled run failed. No good backup yet, not checked yet, next run overdue "
        "by 5 min.",
    )

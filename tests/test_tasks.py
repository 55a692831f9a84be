"""The scheduled-task URL: every run is audited with what it changed, as the command line's
is; wrong tokens are audited at a bounded rate, and too many from one address are refused
with ``Retry-After``. Through Flask's test client on the demo app, real folders."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from flask import Flask

from tablettracker_backups import audit
from tablettracker_backups.backup import create_backup
from tablettracker_backups.demo import create_app
from tablettracker_backups.metadata import utc_iso
from tablettracker_backups.settings import Settings
from tablettracker_backups.web import throttle
from tablettracker_backups.web.extension import get_state
from tests.conftest import TIGHT_RETENTION

URL = "/tasks/backups/run"


@pytest.fixture
def tight_app(tmp_path: Path) -> Flask:
    return create_app(
        {
            "INSTANCE_PATH": tmp_path / "instance",
            "TESTING": True,
            "BACKUPS_LOCK_TIMEOUT": 0,
            **TIGHT_RETENTION,
        }
    )


def settings_of(app: Flask) -> Settings:
    with app.app_context():
        return get_state().settings


def post(app: Flask, token: str | None, address: str = "10.0.0.1") -> tuple[int, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = app.test_client().post(URL, headers=headers, environ_base={"REMOTE_ADDR": address})
    return response.status_code, dict(response.headers)


def entries(settings: Settings, action: str) -> list[audit.AuditEntry]:
    return [e for e in audit.read_entries(settings) if e.action == action]


def test_a_run_through_the_url_audits_what_it_pruned_like_the_command_line(
    tight_app: Flask,
) -> None:
    settings = settings_of(tight_app)
    token = tight_app.config["BACKUPS_TASK_TOKEN"]
    labelled = create_backup(settings, kind="scheduled", label="before the price change")
    plain = create_backup(settings, kind="scheduled")
    create_backup(settings, kind="scheduled")
    status, _ = post(tight_app, token)
    assert status == 200
    [entry] = entries(settings, "run")
    gone = sorted([labelled.metadata.id, plain.metadata.id])
    assert entry.message.startswith("no backup due; re-verified ")
    assert "pruned 2 (1 labelled)" in entry.message
    assert sorted(entry.details["deleted"]) == gone
    assert entry.details["deleted_labels"] == {labelled.metadata.id: "before the price change"}
    assert entry.details["via"] == "http" and entry.details["remote"] == "10.0.0.1"
    assert "skipped" in entry.details and entry.details["rebuilt"] == []
    # The audit page says it in words, the label included.
    client = tight_app.test_client()
    from tests.conftest import login

    login(client, "admin", tight_app.config["DEMO_PASSWORD"])
    html = client.get("/admin/backups/audit").get_data(as_text=True)
    assert "deleted 2 backup(s)" in html and "before the price change" in html

    # The command line's run writes the same shape.
    create_backup(settings, kind="scheduled")
    result = tight_app.test_cli_runner().invoke(args=["backups", "run"])
    assert result.exit_code in (0, 1), result.output
    cli_entry = entries(settings, "run")[0]
    assert cli_entry.details["via"] == "cli"
    assert set(cli_entry.details) - {"via"} == set(entry.details) - {"via", "remote"}


def test_wrong_tokens_are_audited_at_a_bounded_rate_and_refused_after_the_limit(
    tight_app: Flask,
) -> None:
    settings = settings_of(tight_app)
    token = tight_app.config["BACKUPS_TASK_TOKEN"]
    for attempt in range(1, throttle.LIMIT):  # just inside the limit: still 401
        status, headers = post(tight_app, "wrong" if attempt % 2 else None)
        assert status == 401 and "Retry-After" not in headers, attempt
    # One entry for the first, not one per attempt.
    [first] = entries(settings, "task-token")
    assert first.message == "wrong or missing task token from 10.0.0.1"
    assert not first.ok and first.details["remote"] == "10.0.0.1"
    status, headers = post(tight_app, "wrong")  # the limit: refused from now on
    assert status == 429 and 1 <= int(headers["Retry-After"]) <= 600
    reached = entries(settings, "task-token")[0]
    assert reached.message.startswith(f"{throttle.LIMIT} wrong task tokens from 10.0.0.1")
    assert reached.details["attempts"] == throttle.LIMIT - 1
    # Even the right token is refused from that address, without being looked at...
    status, headers = post(tight_app, token)
    assert status == 429 and "Retry-After" in headers
    assert entries(settings, "run") == []
    # ... and a burst of refusals adds no entry within the minute.
    for _ in range(5):
        assert post(tight_app, "wrong")[0] == 429
    assert len(entries(settings, "task-token")) == 2
    # Another address is not affected.
    assert post(tight_app, token, address="10.0.0.2")[0] == 200

    path = settings.state_dir / throttle.STATE_FILE
    assert path.stat().st_mode & 0o077 == 0
    state = json.loads(path.read_text())
    # A minute later, the next refusal is written, counting the ones in between.
    state["10.0.0.1"]["logged_at"] = utc_iso(datetime.now(timezone.utc) - timedelta(seconds=61))
    path.write_text(json.dumps(state))
    assert post(tight_app, "wrong")[0] == 429
    latest = entries(settings, "task-token")[0]
    assert latest.message == "7 more attempt(s) from 10.0.0.1 refused while it is blocked"
    # Once the window has passed, the address may try again.
    state = json.loads(path.read_text())
    state["10.0.0.1"]["since"] = utc_iso(
        datetime.now(timezone.utc) - throttle.WINDOW - timedelta(seconds=1)
    )
    path.write_text(json.dumps(state))
    assert post(tight_app, token)[0] == 200


def test_retry_after_counts_down_to_the_end_of_the_window(tmp_path: Path) -> None:
    from tablettracker_backups.settings import settings_from_mapping

    settings = settings_from_mapping({"database": tmp_path / "x.db", "dir": tmp_path / "b"})
    start = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    for n in range(throttle.LIMIT - 1):
        verdict = throttle.record_failure(settings, "a", refused=False, now=start)
        assert verdict.retry_after == 0 and verdict.failures == n + 1
    verdict = throttle.record_failure(settings, "a", refused=False, now=start)
    assert verdict.retry_after == 600
    later = start + throttle.WINDOW - timedelta(seconds=1)
    assert throttle.check(settings, "a", now=later).retry_after == 1
    assert throttle.check(settings, "a", now=start + throttle.WINDOW).retry_after == 0

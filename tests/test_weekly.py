"""The weekly report: off unless asked for, sent by the scheduled run through the Apprise
targets at most once a week, and what it says (the dashboard shows the same lines). Real
backups, a real HTTP endpoint on 127.0.0.1 for Apprise's ``json://``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.errors import ConfigError
from tablettracker_backups.metadata import utc_iso
from tablettracker_backups.runner import run
from tablettracker_backups.settings import Settings, settings_from_mapping
from tablettracker_backups.states import Level
from tablettracker_backups.status import read_status, update_status
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup
from tablettracker_backups.weekly import SENT_KEY, weekly_summary
from tests.conftest import backdate, rewrite_metadata
from tests.netkit import HttpSink, http_sink


@pytest.fixture
def hook() -> Iterator[HttpSink]:
    with http_sink() as sink:
        yield sink


def posted(sink: HttpSink) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in sink.requests if r.method == "POST"]


def weekly_messages(sink: HttpSink) -> list[dict[str, Any]]:
    return [m for m in posted(sink) if m["title"].startswith("[WEEKLY]")]


def test_the_switch_is_off_by_default_and_reads_yes_and_no(db_path: Any) -> None:
    assert settings_from_mapping({"database": db_path}).notify_weekly is False
    for text, value in (("1", True), ("on", True), ("Yes", True), ("false", False), (True, True)):
        assert settings_from_mapping(
            {"database": db_path, "notify_weekly": text}
        ).notify_weekly is (value)
    with pytest.raises(ConfigError, match="BACKUPS_NOTIFY_WEEKLY must be on or off"):
        settings_from_mapping({"database": db_path, "notify_weekly": "weekly"})


def test_the_run_sends_it_once_a_week_only_when_asked(
    make_settings: Callable[..., Settings], hook: HttpSink
) -> None:
    url = f"json://{hook.base}/hook"
    quiet = make_settings(notify=url)
    run(quiet, force=True)
    assert weekly_messages(hook) == []  # off by default
    settings = make_settings(notify=url, notify_weekly="on")
    run(settings, force=True)
    hook.wait_for(1)
    [message] = weekly_messages(hook)
    assert message["title"].startswith("[WEEKLY] tablet_counter: ")
    body = message["message"]
    for label in ("Verdict", "Backups taken", "Restore drills", "Storage used", "Database"):
        assert f"- {label}: " in body
    assert "Backups taken: 2 (2 scheduled)" in body
    sent = read_status(settings)[SENT_KEY]
    # Not again within the week...
    run(settings, force=True)
    assert len(weekly_messages(hook)) == 1
    # ... but once the last one is a week old.
    update_status(
        settings, **{SENT_KEY: utc_iso(datetime.now(timezone.utc) - timedelta(days=7, hours=1))}
    )
    run(settings, force=True)
    hook.wait_for(len(posted(hook)))
    assert len(weekly_messages(hook)) == 2
    assert read_status(settings)[SENT_KEY] != sent


def test_what_the_week_held(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(keep_recent="0")
    old = create_backup(settings, kind="scheduled").metadata.id
    backdate(settings, old, timedelta(days=8))  # before the week: not counted, the baseline
    document = json.loads((settings.backup_dir / f"{old}.json").read_text())
    checked = document["verification"] | {"verified_at": document["created_at"]}
    rewrite_metadata(settings, old, verification=checked)  # checked when taken, 8 days ago
    drilled = create_backup(settings, kind="scheduled").metadata.id
    backdate(settings, drilled, timedelta(days=2))
    verify_backup(BackupStore(settings), drilled, notify_owner=False)  # a drill, this week
    conn = sqlite3.connect(settings.database)
    with conn:
        conn.execute("DELETE FROM count_sessions WHERE id > 100")  # data loss: a warning
    create_backup(settings, kind="manual")
    backups = BackupStore(settings).list()
    summary = weekly_summary(settings, backups, Level.WARNING)
    assert summary.taken == {"scheduled": 1, "manual": 1}
    assert (summary.drills_ok, summary.drills_failed) == (1, 0)
    assert summary.last_drill is not None and summary.last_drill[0] == drilled
    assert summary.database_before is not None and summary.database_now is not None
    lines = dict(summary.lines())
    assert lines["Verdict"] == "WARNING"
    assert lines["Backups taken"] == "2 (1 manual, 1 scheduled)"
    assert lines["Database"].endswith(f"since a week ago ({_size(summary.database_before)})")
    assert "rows lost in count_sessions: 320 → 100; open" in lines["Warnings"]


def _size(value: int) -> str:
    from tablettracker_backups.display import human_size

    return human_size(value)

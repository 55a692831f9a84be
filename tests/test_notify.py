"""Notifications, dead-man pings and anomalies, against real endpoints on 127.0.0.1.

E-mail goes through Apprise's ``mailto://`` to an aiosmtpd server; webhooks (``json://``) and
pings to a real ``http.server``; endpoints that hang, answer slowly or refuse are real sockets.
No part of Apprise, urllib or the network stack is replaced.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from tablettracker_backups import notify
from tablettracker_backups.anomaly import (
    AnomalyKind,
    find_anomalies,
    recorded_anomalies,
)
from tablettracker_backups.backup import create_backup
from tablettracker_backups.cli import cli
from tablettracker_backups.display import human_size
from tablettracker_backups.errors import ConfigError, DatabaseError, LockedError, RestoreError
from tablettracker_backups.health import check_health
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import BackupMetadata
from tablettracker_backups.notifiers import mask_url
from tablettracker_backups.pings import MAX_BODY, clip, ping_address
from tablettracker_backups.restore import restore_backup
from tablettracker_backups.runner import run
from tablettracker_backups.settings import Settings, split_notify_urls
from tablettracker_backups.sources import load_settings
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup
from tests.conftest import csrf_from, flip_byte, make_db
from tests.netkit import HttpSink, forward_proxy, http_sink, refused_port, silent_port, smtp_sink

HOST = socket.gethostname()


@pytest.fixture
def hook() -> Iterator[HttpSink]:
    with http_sink() as sink:
        yield sink


def messages(sink: HttpSink) -> list[dict[str, Any]]:
    """The JSON bodies Apprise's ``json://`` posted."""
    return [json.loads(r.body) for r in sink.requests if r.method == "POST"]


def wait_messages(sink: HttpSink, count: int) -> list[dict[str, Any]]:
    """The first ``count`` messages, waiting (bounded) for them to arrive."""
    sink.wait_for(count)
    found = messages(sink)
    assert len(found) >= count, found
    return found


def json_url(sink: HttpSink, path: str = "hook") -> str:
    return f"json://{sink.base}/{path}"


# -- settings ----------------------------------------------------------------------------------


def test_notify_urls_split_on_spaces_and_commas_but_not_inside_a_url() -> None:
    text = (
        "mailtos://me:pw@example.com?to=a@example.com,b@example.com, "
        "json://hooks.example.com/x\n  slack://T1/B2/C3,ntfy://ntfy.sh/topic"
    )
    assert split_notify_urls(text) == (
        "mailtos://me:pw@example.com?to=a@example.com,b@example.com",
        "json://hooks.example.com/x",
        "slack://T1/B2/C3",
        "ntfy://ntfy.sh/topic",
    )
    assert split_notify_urls(["json://a.example/x", "json://b.example/y"]) == (
        "json://a.example/x",
        "json://b.example/y",
    )


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("BACKUPS_NOTIFY", "mailtos://me:hunter2@example.com not-a-url", "URL 2"),
        ("BACKUPS_NOTIFY_ON", "sometimes", "problems, all"),
        ("BACKUPS_PING_URL", "ftp://hc-ping.com/abc", "http"),
        ("BACKUPS_ANOMALY_DROP", "lots", "percentage"),
        ("BACKUPS_ANOMALY_DROP", "150%", "between"),
    ],
)
def test_bad_notification_settings_are_one_line_errors(
    db_path: Path, key: str, value: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"BACKUPS_DATABASE": str(db_path), key: value})
    message = str(caught.value)
    assert fragment in message and "\n" not in message
    assert "hunter2" not in message  # a password in a bad URL is never echoed


def test_notification_settings_from_env_and_toml(db_path: Path, tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "BACKUPS_DATABASE": str(db_path),
            "BACKUPS_NOTIFY": "json://h.example/a json://h.example/b",
            "BACKUPS_NOTIFY_ON": "ALL",
            "BACKUPS_PING_URL": "https://hc-ping.com/uuid/",
            "BACKUPS_ANOMALY_DROP": "35%",
        }
    )
    assert settings.notify == ("json://h.example/a", "json://h.example/b")
    assert (settings.notify_on, settings.ping_url, settings.anomaly_drop) == (
        "all",
        "https://hc-ping.com/uuid",
        0.35,
    )
    assert "h.example" not in repr(settings) and "hc-ping" not in repr(settings)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[backups]\ndatabase = "{db_path}"\nnotify = ["json://h.example/a"]\nanomaly_drop = 0.5\n'
    )
    from_toml = load_settings(config_file=config, environ={})
    assert from_toml.notify == ("json://h.example/a",) and from_toml.anomaly_drop == 0.5
    assert from_toml.notify_on == "problems"  # the default


# -- masking -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "secrets", "kept"),
    [
        (
            "mailtos://owner:s3cretPass@smtp.example.com?to=me@example.org",
            ["s3cretPass"],
            ["smtp.example.com", "owner", "me@example.org"],
        ),
        (
            "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general",
            ["T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ", "general"],
            ["slack://"],
        ),
        ("tgram://123456789:AAbot-token_x/987654", ["AAbot-token_x", "987654", "123456789"], []),
        ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", ["4174216298", "JHMHI8qBe7"], []),
        (
            "json://hooks.example.com/hooks/Zk29Ak1x?token=abc123",
            ["Zk29Ak1x", "abc123"],
            ["hooks.example.com"],
        ),
        ("ntfys://user:pw9@ntfy.sh/secret-topic-42", ["pw9", "secret-topic-42"], ["ntfy.sh"]),
    ],
)
def test_mask_url_hides_passwords_tokens_and_webhook_paths(
    url: str, secrets: list[str], kept: list[str]
) -> None:
    shown = mask_url(url)
    for secret in secrets:
        assert secret not in shown, shown
    for part in kept:
        assert part in shown, shown


# -- e-mail through a real SMTP server ---------------------------------------------------------


def test_a_failed_backup_is_emailed_with_database_host_error_and_fix(
    make_settings: Callable[..., Settings], db_path: Path
) -> None:
    with smtp_sink() as mail:
        url = (
            f"mailto://127.0.0.1:{mail.port}?from=backups@example.com"
            "&to=owner@example.com&mode=insecure"
        )
        settings = make_settings(notify=url)
        db_path.write_bytes(b"this is not a database" * 100)
        with pytest.raises(DatabaseError):
            create_backup(settings, trigger="cli")
        [(sender, recipients, message)] = mail.wait_for(1)
    assert sender == "backups@example.com" and recipients == ["owner@example.com"]
    subject = str(message["Subject"])
    assert subject.startswith("[CRITICAL] tablet_counter on ")
    assert HOST in subject and "backup (cli) failed" in subject
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    assert f"Database: tablet_counter ({db_path})" in text and f"host {HOST}" in text
    assert "not a SQLite database" in text or "not a database" in text
    assert "What to do:" in text and "tablettracker-backups backup --database" in text


# -- webhooks: state changes, reminders, recovery ----------------------------------------------


def test_notify_on_change_daily_reminder_and_recovery(
    make_settings: Callable[..., Settings], hook: HttpSink
) -> None:
    low = make_settings(notify=json_url(hook), disk_warning="99.9%")
    first = run(low)
    assert first.error is None and first.backup is not None
    [sent] = wait_messages(hook, 1)
    assert sent["title"].startswith("[WARNING] tablet_counter on ")
    assert "folder has" in sent["title"] and "MiB free" in sent["message"]
    assert "prune --dry-run" in sent["message"] and sent["type"] == "warning"

    # The same problem on the next run: nothing new to say.
    run(low)
    assert len(messages(hook)) == 1

    # A day later it is still there: one reminder.
    report = check_health(low)
    later = report.checked_at + timedelta(hours=23, minutes=1)
    notify.observe(low, report.findings, now=later)
    hook.wait_for(2)
    reminder = messages(hook)[1]
    assert "still:" in reminder["title"] and "first noticed" in reminder["message"]
    notify.observe(low, report.findings, now=later + timedelta(hours=1))
    assert len(messages(hook)) == 2

    # It clears: one recovery message, then silence.
    fine = make_settings(notify=json_url(hook))
    run(fine)
    hook.wait_for(3)
    recovered = messages(hook)[2]
    assert recovered["title"].startswith("[RECOVERED]") and "cleared after" in recovered["title"]
    assert recovered["type"] == "success"
    run(fine)
    assert len(messages(hook)) == 3


def test_a_condition_nobody_received_is_sent_again(
    make_settings: Callable[..., Settings], hook: HttpSink
) -> None:
    hook.status = 500
    low = make_settings(notify=json_url(hook), disk_warning="99.9%")
    run(low)
    assert len(hook.wait_for(1)) == 1
    [status] = notify.target_statuses(low)
    assert status.ok is False and status.failures == 1
    hook.status = 200
    run(low)  # not delivered last time: said again, not treated as already known
    second = wait_messages(hook, 2)[1]
    assert "folder has" in second["message"]
    # ... together with the news that a notification had failed.
    assert (
        "notifications to json://" in second["message"] and "failed 1 time(s)" in second["message"]
    )
    assert notify.target_statuses(low)[0].ok is True
    run(low)  # that has cleared now
    assert "[RECOVERED]" in wait_messages(hook, 3)[2]["title"]
    run(low)
    assert len(messages(hook)) == 3


def test_problems_mode_is_quiet_on_success_and_all_mode_is_not(
    make_settings: Callable[..., Settings], hook: HttpSink
) -> None:
    result = run(make_settings(notify=json_url(hook)))
    assert result.exit_code == 0 and result.backup is not None
    time.sleep(0.3)
    assert messages(hook) == []
    chatty = make_settings(notify=json_url(hook), notify_on="all")
    result = run(chatty, force=True)
    assert result.backup is not None
    [sent] = wait_messages(hook, 1)
    assert sent["title"].startswith("[OK]") and result.backup.metadata.id in sent["title"]


def test_verification_failure_and_restore_are_told(
    make_settings: Callable[..., Settings], hook: HttpSink, tmp_path: Path
) -> None:
    settings = make_settings(notify=json_url(hook))
    backup = create_backup(settings)
    info = BackupStore(settings).get(backup.metadata.id)
    flip_byte(settings.backup_dir / info.metadata.data_file)  # type: ignore[union-attr]
    assert not verify_backup(BackupStore(settings), info.id).ok
    hook.wait_for(1)
    failed = messages(hook)[0]
    assert f"verification of backup {info.id} failed" in failed["title"]
    assert "primary copy:" in failed["message"] and "verify --all" in failed["message"]

    restored = restore_backup(settings, info.id)
    hook.wait_for(2)
    done = messages(hook)[1]
    assert f"backup {info.id} was restored into" in done["title"]
    assert f"restore {restored.safety_snapshot_id}" in done["message"]  # how to undo it

    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(RestoreError):
        restore_backup(settings, info.id, to=folder)
    hook.wait_for(3)
    assert f"restoring backup {info.id} failed: " in messages(hook)[2]["title"]
    assert f"restore {info.id} --preview" in messages(hook)[2]["message"]
    assert messages(hook)[2]["type"] == "failure"


def test_a_restores_safety_snapshot_is_not_told_as_a_backup_of_its_own(
    make_settings: Callable[..., Settings], hook: HttpSink
) -> None:
    # Even with every success told, a restore is one message: its safety snapshot is part
    # of it (named there, as the way back), not a backup the owner took.
    settings = make_settings(notify=json_url(hook), notify_on="all")
    backup = create_backup(settings).metadata
    restored = restore_backup(settings, backup.id)
    titles = [m["title"] for m in wait_messages(hook, 2)]
    assert len(messages(hook)) == 2  # sending is synchronous: nothing more is on its way
    assert f"backup {backup.id} taken and verified" in messages(hook)[0]["message"]
    assert f"backup {backup.id} was restored into" in titles[1]
    assert restored.safety_snapshot_id is not None
    assert not any(
        f"backup {restored.safety_snapshot_id} taken" in m["message"] for m in messages(hook)
    )


def test_health_command_tells_of_a_schedule_that_stopped(
    make_settings: Callable[..., Settings], hook: HttpSink
) -> None:
    settings = make_settings()
    run(settings)
    status_file = settings.backup_dir / "status.json"
    status = json.loads(status_file.read_text())
    status["last_run_at"] = "2020-01-01T00:00:00Z"
    status_file.write_text(json.dumps(status))
    args = [
        "health",
        "--database",
        str(settings.database),
        "--backup-dir",
        str(settings.backup_dir),
    ]
    outcome = CliRunner().invoke(cli, args, env={"BACKUPS_NOTIFY": json_url(hook)})
    assert outcome.exit_code == 1
    [sent] = wait_messages(hook, 1)
    assert "scheduled run last ran" in sent["title"]
    assert (
        "Tasks tab" in sent["message"] and "tablettracker-backups run --database" in sent["message"]
    )
    CliRunner().invoke(cli, args, env={"BACKUPS_NOTIFY": json_url(hook)})
    time.sleep(0.3)
    assert len(messages(hook)) == 1  # told once, not at every check


# -- a notifier must never break a backup ------------------------------------------------------


def test_hung_slow_and_refusing_endpoints_cost_a_run_at_most_its_budget(
    make_settings: Callable[..., Settings], hook: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The budget is 10 s: up to 3 s (PING_TIMEOUT) for the start ping, 3 s kept for the end
    # ping, the rest for the messages. The same split scaled down (4 s: 1 + 2 + 1) proves the
    # same bound in less than half the time.
    from tablettracker_backups import pings, runner

    monkeypatch.setattr(notify, "BUDGET_SECONDS", 4.0)
    monkeypatch.setattr(pings, "PING_TIMEOUT", 1.0)
    monkeypatch.setattr(runner, "PING_TIMEOUT", 1.0)
    baseline_settings = make_settings()
    began = time.monotonic()
    run(baseline_settings, force=True)
    baseline = time.monotonic() - began

    hook.delay = 25.0  # answers, but only after 25 s
    with silent_port() as hung, http_sink() as ping_server:
        ping_server.delay = 25.0
        targets = " ".join(
            [
                f"json://127.0.0.1:{hung}/hook",
                f"json://{hook.base}/slow",
                f"json://127.0.0.1:{refused_port()}/refused",
                f"mailto://127.0.0.1:{hung}?from=a@example.com&to=b@example.com&mode=insecure",
            ]
        )
        settings = make_settings(
            notify=targets, disk_warning="99.9%", ping_url=f"http://{ping_server.base}/uuid"
        )
        began = time.monotonic()
        result = run(settings, force=True)
        elapsed = time.monotonic() - began
    assert result.error is None and result.backup is not None
    assert BackupStore(settings).get(result.backup.metadata.id).verified
    assert elapsed - baseline <= notify.BUDGET_SECONDS + 0.5, (elapsed, baseline)
    # Every failure is recorded per target and reported by health.
    statuses = notify.target_statuses(settings)
    assert [s.ok for s in statuses] == [False, False, False, False]
    assert "no answer within" in (statuses[0].error or "")
    report = check_health(settings)
    failing = [f for f in report.findings if f.code == "notifier-failing"]
    assert len(failing) == 4 and all(f.level == "warning" for f in failing)
    last_ping = notify.last_ping(settings)
    assert last_ping is not None and last_ping["ok"] is False


def test_missing_apprise_is_a_health_warning_not_a_crash(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the package were not installed: the import system finds no module named apprise.
    monkeypatch.setitem(sys.modules, "apprise", None)
    settings = make_settings(notify="json://127.0.0.1:9/hook")
    result = run(settings)
    assert result.error is None and result.backup is not None
    codes = {f.code: f for f in result.health.findings}
    assert "notifier-missing" in codes and codes["notifier-missing"].level == "warning"
    assert "tablettracker-backups[notify]" in codes["notifier-missing"].message
    args = ["notify-test", "--database", str(settings.database)]
    outcome = CliRunner().invoke(cli, args, env={"BACKUPS_NOTIFY": "json://127.0.0.1:9/hook"})
    assert outcome.exit_code == 2 and "apprise package is not installed" in outcome.output


def test_the_state_file_is_owner_only_and_holds_no_secret(
    make_settings: Callable[..., Settings], hook: HttpSink
) -> None:
    settings = make_settings(notify=json_url(hook, "secret-path-123"), disk_warning="99.9%")
    run(settings)
    path = settings.backup_dir / notify.STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    state = json.loads(path.read_text())
    assert "disk" in state["conditions"] and state["conditions"]["disk"]["notified_at"]
    assert "secret-path-123" not in path.read_text()


# -- proxies -----------------------------------------------------------------------------------


def test_webhooks_and_pings_go_through_http_proxy(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    with forward_proxy() as proxy:
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://{proxy.base}")
        settings = make_settings(
            notify="json://hooks.backups-test.invalid/abc",
            ping_url="http://ping.backups-test.invalid/uuid",
        )
        assert notify.send_test(settings)[0].ok
        run(settings)
        seen = [r.path for r in proxy.wait_for(3)]
    # A proxy is asked for the absolute URL: these names resolve nowhere but through it.
    assert "http://hooks.backups-test.invalid/abc" in seen
    assert "http://ping.backups-test.invalid/uuid/start" in seen
    assert "http://ping.backups-test.invalid/uuid" in seen


# -- dead-man pings ----------------------------------------------------------------------------


def test_run_pings_start_then_success_with_its_summary(
    make_settings: Callable[..., Settings], hook: HttpSink
) -> None:
    settings = make_settings(ping_url=f"http://{hook.base}/ping/abc-123?create=1")
    result = run(settings)
    first, last = hook.wait_for(2)
    assert (first.method, first.path) == ("POST", "/ping/abc-123/start?create=1")
    assert (last.method, last.path) == ("POST", "/ping/abc-123?create=1")
    assert result.backup is not None
    text = last.body.decode()
    assert f"backed up {result.backup.metadata.id}" in text and "health: ok" in text
    assert len(last.body) <= MAX_BODY


def test_a_failed_run_pings_its_exit_code(
    make_settings: Callable[..., Settings], hook: HttpSink, db_path: Path
) -> None:
    settings = make_settings(ping_url=f"http://{hook.base}/p")
    run(settings)
    db_path.write_bytes(b"garbage" * 1000)
    result = run(settings, force=True)
    assert result.exit_code == 2
    requests = hook.wait_for(4)
    assert [r.path for r in requests] == ["/p/start", "/p", "/p/start", "/p/2"]
    assert b"FAILED" in requests[3].body


def test_a_busy_run_pings_exit_3(make_settings: Callable[..., Settings], hook: HttpSink) -> None:
    settings = make_settings(ping_url=f"http://{hook.base}/p", lock_timeout=0)
    run(settings)
    with operation_lock(settings), pytest.raises(LockedError):
        run(settings)
    assert [r.path for r in hook.wait_for(4)][2:] == ["/p/start", "/p/3"]


def test_ping_body_is_cut_to_10_kb_on_a_character_boundary() -> None:
    cut = clip("é" * 20_000)
    assert len(cut) <= MAX_BODY and cut.decode("utf-8") == "é" * (len(cut) // 2)
    assert ping_address("https://hc-ping.com/u/", "3") == "https://hc-ping.com/u/3"


# -- anomalies ---------------------------------------------------------------------------------


def delete_rows(db_path: Path, sql: str) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute(sql)
    conn.commit()
    conn.close()


def test_a_large_row_drop_is_an_anomaly_naming_the_backup_that_has_the_rows(
    make_settings: Callable[..., Settings],
    db_path: Path,
    hook: HttpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(notify=json_url(hook))
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO tags (name) VALUES (?)", [(f"t{i}",) for i in range(50)])
    conn.commit()
    conn.close()
    first = create_backup(settings)
    assert first.anomalies == ()

    # 10% fewer count sessions and a small table emptied: ordinary, no anomaly.
    delete_rows(db_path, "DELETE FROM count_sessions WHERE id <= 32")
    delete_rows(db_path, "DELETE FROM tags")
    second = create_backup(settings)
    assert second.anomalies == ()
    time.sleep(0.3)
    assert messages(hook) == []

    delete_rows(db_path, "DELETE FROM count_sessions WHERE id > 100")
    with caplog.at_level("WARNING", logger="tablettracker_backups.backup"):
        third = create_backup(settings)
    [found] = third.anomalies
    # The task's log says it too, naming the new backup.
    logged = [r.getMessage() for r in caplog.records if r.name == "tablettracker_backups.backup"]
    assert logged == [f"anomaly in backup {third.metadata.id}: {found.message}"]
    previous = second.metadata.id
    assert (found.kind, found.table, found.before, found.after) == (
        AnomalyKind.ROWS_DROPPED,
        "count_sessions",
        288,
        68,
    )
    assert found.previous_id == previous
    assert "288" in found.message and "68" in found.message and previous in found.message
    assert f"restore {previous} --preview" in found.message
    # Recorded in the backup's own metadata, so `show` and later readers see it.
    meta = BackupStore(settings).get(third.metadata.id).metadata
    assert meta is not None and recorded_anomalies(meta)[0]["table"] == "count_sessions"
    hook.wait_for(1)
    [sent] = messages(hook)
    assert "count_sessions" in sent["title"] and sent["type"] == "warning"
    assert f"restore {previous} --preview" in sent["message"]
    shown = CliRunner().invoke(
        cli,
        [
            "show",
            third.metadata.id,
            "--database",
            str(db_path),
            "--backup-dir",
            str(settings.backup_dir),
        ],
    )
    assert "anomaly:     table count_sessions has 68 rows" in shown.output


def test_schema_change_is_info_only_and_foreign_key_rise_is_caught(
    make_settings: Callable[..., Settings], db_path: Path, hook: HttpSink
) -> None:
    settings = make_settings(notify=json_url(hook))
    first = create_backup(settings)
    delete_rows(db_path, "CREATE TABLE extra (id INTEGER PRIMARY KEY)")
    second = create_backup(settings)
    [schema] = second.anomalies
    assert schema.kind == AnomalyKind.SCHEMA_CHANGED and "new tables: extra" in schema.message
    time.sleep(0.3)
    assert messages(hook) == []  # information only: not sent with BACKUPS_NOTIFY_ON=problems
    delete_rows(db_path, "CREATE TABLE more (id INTEGER PRIMARY KEY)")
    third = create_backup(replace(settings, notify_on="all"))
    [sent] = wait_messages(hook, 1)
    assert "schema changed" in sent["message"] and "new tables: more" in sent["message"]
    size = human_size(third.metadata.stored_size)
    assert f"backup {third.metadata.id} taken and verified ({size})" in sent["message"]

    # More foreign-key violations than the previous good backup had.
    before = first.metadata
    worse = replace(before, findings=replace(before.findings, foreign_key_violations=7))
    [rose] = find_anomalies(before, worse, drop=0.2)
    assert rose.kind == AnomalyKind.FOREIGN_KEYS_ROSE
    assert "from 0" in rose.message and "to 7" in rose.message
    assert find_anomalies(worse, before, drop=0.2) == ()


def _counts(meta: BackupMetadata, **counts: int) -> BackupMetadata:
    """The same backup's metadata with other row counts (schema and findings unchanged)."""
    return replace(meta, row_counts=counts)


def test_anomaly_minimum_table_size_at_its_edge(settings: Settings) -> None:
    # MIN_ROWS is 100: a table of exactly 100 rows is checked, one of 99 is not.
    meta = create_backup(settings).metadata
    before = _counts(meta, at_edge=100, below=99)
    emptied = _counts(meta, at_edge=0, below=0)
    found = find_anomalies(before, emptied, drop=0.2)
    assert [(a.kind, a.table, a.before, a.after) for a in found] == [
        (AnomalyKind.ROWS_DROPPED, "at_edge", 100, 0)
    ]


@pytest.mark.parametrize(
    ("before", "after", "drop", "flagged"),
    [
        (100, 80, 0.2, False),  # exactly 20% lost: at the threshold, not over it
        (100, 79, 0.2, True),  # 21%: just over
        (1000, 500, 0.5, False),
        (1000, 499, 0.5, True),  # one row past half
        (250, 0, 0.99, True),  # every row gone
    ],
)
def test_anomaly_drop_share_at_its_edge(
    settings: Settings, before: int, after: int, drop: float, flagged: bool
) -> None:
    meta = create_backup(settings).metadata
    found = find_anomalies(_counts(meta, orders=before), _counts(meta, orders=after), drop=drop)
    assert [(a.table, a.before, a.after) for a in found] == (
        [("orders", before, after)] if flagged else []
    )


# -- notify-test: CLI and dashboard ------------------------------------------------------------


def test_notify_test_reports_each_target_and_fails_if_any_failed(
    make_settings: Callable[..., Settings], hook: HttpSink, tmp_path: Path
) -> None:
    settings = make_settings()
    args = ["notify-test", "--database", str(settings.database)]
    good = f"json://{hook.base}/ok-path-secret"
    bad = f"json://127.0.0.1:{refused_port()}/refused"
    outcome = CliRunner().invoke(cli, args, env={"BACKUPS_NOTIFY": good})
    assert outcome.exit_code == 0, outcome.output
    assert f"json://{hook.base}/***: ok" in outcome.output
    assert "ok-path-secret" not in outcome.output
    assert "test message" in messages(hook)[0]["title"]

    outcome = CliRunner().invoke(cli, args, env={"BACKUPS_NOTIFY": f"{good},{bad}"})
    assert outcome.exit_code == 2
    lines = outcome.output.strip().splitlines()
    assert ": ok (" in lines[0] and "/***: FAILED" in lines[1]

    outcome = CliRunner().invoke(cli, args, env={})
    assert outcome.exit_code == 2 and outcome.output.count("\n") == 1
    assert "BACKUPS_NOTIFY" in outcome.output


@pytest.fixture
def notify_app(tmp_path: Path, hook: HttpSink) -> Flask:
    from tablettracker_backups.demo import create_app

    return create_app(
        {
            "INSTANCE_PATH": tmp_path / "instance-notify",
            "TESTING": True,
            "BACKUPS_NOTIFY": [f"json://{hook.base}/webhook-secret-path"],
            "BACKUPS_PING_URL": f"http://{hook.base}/ping-secret-uuid",
        }
    )


def test_dashboard_shows_masked_targets_and_sends_a_test(notify_app: Flask, hook: HttpSink) -> None:
    from tests.conftest import login

    client: FlaskClient = notify_app.test_client()
    login(client, "admin", notify_app.config["DEMO_PASSWORD"])
    page = client.get("/admin/backups/").get_data(as_text=True)
    assert f"json://{hook.base}/***" in page
    assert "webhook-secret-path" not in page and "ping-secret-uuid" not in page
    assert "Send a test message" in page and "nothing sent yet" in page
    url = "/admin/backups/notify-test"
    assert client.get(url).status_code == 405
    assert client.post(url).status_code == 400  # no CSRF token
    assert messages(hook) == []
    response = client.post(url, data={"csrf_token": csrf_from(page)})
    assert response.status_code == 303
    assert "test message" in messages(hook)[0]["title"]
    after = client.get("/admin/backups/").get_data(as_text=True)
    assert "Test message sent to" in after and "last message delivered" in after


def test_staff_cannot_send_a_test(notify_app: Flask, hook: HttpSink) -> None:
    from tests.conftest import login

    client = notify_app.test_client()
    login(client, "staff", notify_app.config["DEMO_PASSWORD"])
    page = client.get("/login").get_data(as_text=True)
    response = client.post("/admin/backups/notify-test", data={"csrf_token": csrf_from(page)})
    assert response.status_code == 403
    assert messages(hook) == []


# -- a site of several databases (issue 22) ------------------------------------------------------


def test_a_sites_notifications_name_their_database(tmp_path: Path) -> None:
    """``run`` over a site where one database fails: the e-mail, through a real SMTP server,
    names that database in its subject and body; the one that succeeded sends no alarm."""
    tablets = make_db(tmp_path / "tablet_counter.db")
    audit_file = make_db(tmp_path / "audit_log.db")  # its name is not its stem
    with smtp_sink() as mail:
        url = (
            f"mailto://127.0.0.1:{mail.port}?from=backups@example.com"
            "&to=owner@example.com&mode=insecure"
        )
        config = tmp_path / "site.toml"
        config.write_text(
            f'[backups]\nbackup_dir = "{tmp_path / "backups"}"\nnotify = "{url}"\n'
            'notify_on = "problems"\n\n'
            f'[databases.tablets]\ndatabase = "{tablets}"\n\n'
            f'[databases.audit]\ndatabase = "{audit_file}"\n'
        )
        first = CliRunner().invoke(cli, ["run", "--config", str(config)])
        assert first.exit_code in (0, 1), first.output
        before = len(mail.messages)
        # Now the audit log's file is damaged: its next backup fails, the tablets' does not.
        audit_file.write_bytes(b"this is not a database" * 100)
        result = CliRunner().invoke(cli, ["run", "--config", str(config)])
        assert result.exit_code == 2, result.output
        mail.wait_for(before + 1)
        received = list(mail.messages)[before:]
    subjects = [str(message["Subject"]) for _sender, _to, message in received]
    alarms = [m for _s, _t, m in received if str(m["Subject"]).startswith("[CRITICAL] audit on ")]
    assert len(alarms) == 1, subjects
    assert HOST in str(alarms[0]["Subject"])
    body = alarms[0].get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    assert f"Database: audit ({audit_file})" in text
    assert str(tablets) not in text
    # The database that was backed up sends no alarm, and none is sent without a name.
    assert all(subject.split("]", 1)[1].strip().startswith("audit on ") for subject in subjects)

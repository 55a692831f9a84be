"""Restore to a moment: ``restore --at TIME`` and the pages' "state as of" picker."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from tablettracker_backups.backup import create_backup
from tablettracker_backups.cli import cli
from tablettracker_backups.display import local_time
from tablettracker_backups.restore_points import parse_moment
from tablettracker_backups.settings import Settings
from tests.conftest import backdate

HOURS = (5, 3, 1)  # backups taken this many hours ago, each with its own note


@pytest.fixture
def berlin() -> Iterator[None]:
    """Local time is Europe/Berlin (UTC+1 in November): "no zone" must mean local time."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def _note(database: Path, text: str) -> None:
    with closing(sqlite3.connect(database)) as conn:
        conn.execute("UPDATE purchase_orders SET notes = ? WHERE id = 1", (text,))
        conn.commit()


@pytest.fixture
def history(settings: Settings) -> dict[int, tuple[str, datetime]]:
    """Three auto backups, 5, 3 and 1 hour(s) old, of three different states."""
    taken = {}
    for hours in HOURS:
        _note(settings.database, f"state {hours}h ago")
        meta = create_backup(settings, kind="auto").metadata
        backdate(settings, meta.id, timedelta(hours=hours))
        taken[hours] = (meta.id, meta.created_at - timedelta(hours=hours))
    _note(settings.database, "now")
    return taken


def invoke(settings: Settings, *args: str) -> tuple[int, str, str]:
    where = ["--database", str(settings.database), "--backup-dir", str(settings.backup_dir)]
    where += ["--secondary-dir", str(settings.secondary_dir)]
    result = CliRunner().invoke(cli, ["restore", *where, *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def test_parse_moment_reads_a_time_without_zone_as_local(berlin: None) -> None:
    local = parse_moment("2026-11-23T20:15")
    assert not local.zone_given
    assert local.start == datetime(2026, 11, 23, 19, 15, tzinfo=timezone.utc)
    assert "no time zone given: read as local time" in local.describe()
    given = parse_moment("2026-11-23T20:15Z")
    assert given.zone_given and given.start == datetime(2026, 11, 23, 20, 15, tzinfo=timezone.utc)
    assert parse_moment("2026-11-23 21:15:30+01:00").at.hour == 20
    # What list and the pages print: local time with the zone's name, read back as such.
    assert parse_moment("2026-11-23 20:15:30 CET").start == datetime(
        2026, 11, 23, 19, 15, 30, tzinfo=timezone.utc
    )
    summer = parse_moment("2026-10-25 02:30:00 CEST")  # the hour the clocks go back: twice
    winter = parse_moment("2026-10-25 02:30:00 CET")
    assert winter.start is not None and summer.start is not None
    assert winter.start - summer.start == timedelta(hours=1)


def test_a_time_covers_the_whole_unit_it_is_written_to() -> None:
    """A backup taken at 20:15:30.4 is listed as 20:15:30: typed back, that must reach it."""
    second = parse_moment("2026-11-23T20:15:30Z")
    assert second.at == datetime(2026, 11, 23, 20, 15, 30, 999999, tzinfo=timezone.utc)
    minute = parse_moment("2026-11-23T20:15Z")
    assert minute.at == datetime(2026, 11, 23, 20, 15, 59, 999999, tzinfo=timezone.utc)
    exact = parse_moment("2026-11-23T20:15:30.25Z")
    assert exact.at == datetime(2026, 11, 23, 20, 15, 30, 250000, tzinfo=timezone.utc)
    day = parse_moment("2026-11-23 UTC")
    assert day.at == datetime(2026, 11, 23, 23, 59, 59, 999999, tzinfo=timezone.utc)
    # The unit that is still going on covers only what has happened so far.
    today = parse_moment(datetime.now(timezone.utc).strftime("%Y-%m-%d UTC"))
    assert today.at <= datetime.now(timezone.utc)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("2026-11-23T20:15+25:00", "invalid time zone offset +25:00"),
        ("2026-11-23T20:15-00:60", "invalid time zone offset -00:60"),
        ("2026-11-23 20:15:30 XYZ", "unknown time zone 'XYZ'"),
        ("2026-13-40T20:15", "not a valid time"),
    ],
)
def test_a_bad_time_is_one_line_that_says_what_is_wrong(
    settings: Settings, text: str, said: str
) -> None:
    code, out, err = invoke(settings, "--at", text)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and said in err and "timedelta" not in err


def test_a_time_list_prints_typed_back_resolves_to_that_backup(settings: Settings) -> None:
    first = create_backup(settings, kind="auto").metadata
    _note(settings.database, "second")
    second = create_backup(settings, kind="auto").metadata
    for meta in (first, second):
        printed = local_time(meta.created_at)  # what list and the pages print
        code, out, err = invoke(settings, "--at", printed, "--preview", "--json")
        assert code == 0, err
        assert json.loads(out)["backup_id"] in (meta.id, second.id)
    # To the second, unless a later backup fell in the same second (then that one: the state
    # as of the end of that second).
    if first.created_at.replace(microsecond=0) != second.created_at.replace(microsecond=0):
        code, out, _ = invoke(settings, "--at", local_time(first.created_at), "--preview", "--json")
        assert json.loads(out)["backup_id"] == first.id


def test_a_moment_after_a_restore_is_the_restored_state(
    settings: Settings, history: dict[int, tuple[str, datetime]]
) -> None:
    """A restore is an event on the timeline: from the moment backup X was restored until
    the next backup, the state is X's, not the safety snapshot's nor the backup before."""
    five_id = history[5][0]
    newest_id = history[1][0]
    code, _, err = invoke(settings, five_id, "--yes")
    assert code == 0, err
    code, out, err = invoke(settings, "--at", _now_text(), "--preview", "--json")
    assert code == 0, err
    assert json.loads(out)["backup_id"] == five_id
    # Just before the restore: the newest backup then (the 1 h one), not the 5 h one.
    before = (datetime.now(timezone.utc) - timedelta(minutes=30)).isoformat()
    code, out, _ = invoke(settings, "--at", before, "--preview", "--json")
    assert json.loads(out)["backup_id"] == newest_id
    # A later backup ends the restored state.
    _note(settings.database, "after the restore")
    later = create_backup(settings, kind="manual").metadata
    code, out, _ = invoke(settings, "--at", _now_text(), "--preview", "--json")
    assert json.loads(out)["backup_id"] == later.id
    code, _, err = invoke(settings, "--undo", "--at", _now_text())
    assert code == 2 and "--at chooses the backup" in err


def _now_text() -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()


def test_created_at_is_when_the_snapshot_began_not_when_the_run_did(
    settings: Settings, tmp_path: Path
) -> None:
    """A backup that waited for a writer holds that writer's row: it is dated after it."""
    import subprocess
    import sys

    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); c.execute(\"UPDATE purchase_orders SET notes = "
            "'late' WHERE id = 1\"); print('holding', flush=True); time.sleep(1.0); "
            "c.execute('COMMIT'); print(time.time(), flush=True)",
            str(settings.database),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline() == "holding\n"
    meta = create_backup(settings).metadata
    rest, _ = writer.communicate(timeout=30)
    committed = float(rest.strip())
    assert meta.started_at is not None
    assert meta.started_at.timestamp() < committed <= meta.created_at.timestamp()
    copy = tmp_path / "copy.db"
    from tablettracker_backups.restore import restore_backup

    restore_backup(settings, meta.id, to=copy)
    with closing(sqlite3.connect(copy)) as conn:
        assert conn.execute("SELECT notes FROM purchase_orders WHERE id = 1").fetchone() == (
            "late",
        )


def test_restore_at_picks_the_newest_good_backup_at_or_before(
    settings: Settings, history: dict[int, tuple[str, datetime]], berlin: None
) -> None:
    three_id, three_at = history[3]
    between = three_at + timedelta(minutes=30)  # after the 3 h backup, before the 1 h one
    code, out, err = invoke(settings, "--at", between.isoformat(), "--preview", "--json")
    assert code == 0, err
    preview = json.loads(out)
    assert preview["backup_id"] == three_id and preview["at_zone"] == "given"
    # Without a zone it is local time (Berlin, UTC+1), and the output says so. Half an hour
    # before the 3 h backup: read as UTC, it would be half an hour after it.
    five_id = history[5][0]
    local = (three_at - timedelta(minutes=30)).astimezone().strftime("%Y-%m-%dT%H:%M:%S")
    code, out, err = invoke(settings, "--at", local, "--to", str(settings.database.parent / "x.db"))
    assert code == 0, err
    assert "no time zone given: read as local time" in out and five_id in out
    with closing(sqlite3.connect(settings.database.parent / "x.db")) as conn:
        notes = conn.execute("SELECT notes FROM purchase_orders WHERE id = 1").fetchone()[0]
    assert notes == "state 5h ago"
    # Exactly at a backup's time is "at or before": that backup.
    code, out, _ = invoke(settings, "--at", three_at.isoformat(), "--preview", "--json")
    assert json.loads(out)["backup_id"] == three_id


def test_restore_at_outside_the_range_names_the_nearest_points(
    settings: Settings, history: dict[int, tuple[str, datetime]]
) -> None:
    oldest_id, oldest_at = history[5]
    code, out, err = invoke(settings, "--at", (oldest_at - timedelta(hours=1)).isoformat())
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("Error: no restore point at or before")
    assert oldest_id in err and history[3][0] in err
    future = datetime.now(timezone.utc) + timedelta(days=1)
    code, _, err = invoke(settings, "--at", future.isoformat())
    assert code == 2 and "in the future" in err and history[1][0] in err
    code, _, err = invoke(settings, "--at", "last tuesday")
    assert code == 2 and err.count("\n") == 1 and "ISO 8601" in err
    code, _, err = invoke(settings, "--at", oldest_at.isoformat(), oldest_id)
    assert code == 2 and "--at chooses the backup" in err


def test_list_json_has_each_backups_kind(
    settings: Settings, history: dict[int, tuple[str, datetime]]
) -> None:
    create_backup(settings, kind="manual")
    where = ["--database", str(settings.database), "--backup-dir", str(settings.backup_dir)]
    where += ["--secondary-dir", str(settings.secondary_dir)]
    result = CliRunner().invoke(cli, ["list", *where, "--json"])
    kinds = [b["kind"] for b in json.loads(result.stdout)]
    assert kinds == ["manual", "auto", "auto", "auto"]


# -- the page ---------------------------------------------------------------------------------


def test_state_as_of_page_shows_points_around_the_chosen_time(
    demo_app: Flask, admin_client: FlaskClient
) -> None:
    settings: Settings = demo_app.extensions["tablettracker_backups"].settings
    ids = []
    for hours in (4, 3, 2, 1):
        meta = create_backup(settings, kind="auto").metadata
        backdate(settings, meta.id, timedelta(hours=hours))
        ids.append(meta.id)
    chosen_at = datetime.now(timezone.utc) - timedelta(hours=2, minutes=30)
    # What the form sends: a local date, and a 24-hour local time to the minute, no zone.
    local = chosen_at.astimezone()
    response = admin_client.get(
        f"/admin/backups/restore-at?date={local:%Y-%m-%d}&time={local:%H:%M}"
    )
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'type="date"' in html and 'name="time"' in html and 'method="get"' in html
    assert f'value="{local:%H:%M}"' in html  # shown back as typed: 24-hour
    # ``at=`` (ISO 8601) is read too, for links.
    same = admin_client.get(f"/admin/backups/restore-at?at={local:%Y-%m-%dT%H:%M}")
    assert re.findall(r'data-backup-id="([^"]+)"', same.get_data(as_text=True)) == ids
    rows = re.findall(r'<tr class="(ttb-chosen)?" data-backup-id="([^"]+)"', html)
    assert [backup_id for _, backup_id in rows] == ids  # every point, oldest first
    assert [backup_id for chosen, backup_id in rows if chosen] == [ids[1]]  # the 3 h one
    # Each leads to the existing restore page (preview, typed confirmation, POST + CSRF).
    assert f'href="/admin/backups/backups/{ids[1]}/restore"' in html
    before = admin_client.get("/admin/backups/restore-at?at=2001-01-01T00:00")
    assert before.status_code == 200 and "no restore point at or before" in before.get_data(
        as_text=True
    )
    assert admin_client.get("/admin/backups/restore-at?at=soon").status_code == 400
    dashboard = admin_client.get("/admin/backups/").get_data(as_text=True)
    assert "Recovery point" in dashboard and "/admin/backups/restore-at" in dashboard


def test_state_as_of_page_is_for_admins_only(demo_app: Flask, staff_client: FlaskClient) -> None:
    assert staff_client.get("/admin/backups/restore-at").status_code == 403
    anonymous = demo_app.test_client().get("/admin/backups/restore-at")
    assert anonymous.status_code == 302 and "/login" in anonymous.location

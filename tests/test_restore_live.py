"""Restore under a live app: no committed write is lost, the check is not fooled, the app is
told to wait (issue "Restore under a live app").

Writers are real processes committing TabletTracker-shaped transactions the whole time; the
restores run from the CLI (a real process) and from the library, and from the pages over real
HTTP. After each run every transaction any writer saw committed must be in the live database or
in a backup: a restore may take rows out of the live database, but only into its safety
snapshot.
"""

from __future__ import annotations

import dataclasses
import http.cookiejar
import re
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tablettracker_backups import intent
from tablettracker_backups.backup import create_backup
from tablettracker_backups.restore import restore_backup
from tablettracker_backups.settings import Settings, settings_from_mapping
from tablettracker_backups.store import BackupStore
from tests.conftest import login, make_db, wait_for_job
from tests.faultkit import cli_env, run_cli, spawn_writer, stop_writers


def committed_ids(path: Path) -> set[int]:
    """The count sessions a database holds."""
    with closing(sqlite3.connect(path, timeout=60)) as conn:
        return {int(row[0]) for row in conn.execute("SELECT id FROM count_sessions")}


def ids_in_backups(settings: Settings, scratch: Path) -> set[int]:
    """Every count session held by any backup, each restored into a new file of its own."""
    found: set[int] = set()
    scratch.mkdir(exist_ok=True)
    for info in BackupStore(settings).list():
        copy = scratch / f"{info.id}.db"
        restore_backup(settings, info.id, to=copy)
        found |= committed_ids(copy)
    return found


def live_database(tmp_path: Path, journal_mode: str) -> Settings:
    """A TabletTracker database of a few MiB (so a restore's lock hold is long enough for the
    writers to pile up behind it), and its backup folder."""
    (tmp_path / "instance").mkdir()
    db = make_db(
        tmp_path / "instance" / "tablet_counter.db",
        wal=journal_mode == "wal",
        purchase_orders=600,
        note_bytes=2000,
    )
    # Two writers committing back to back leave the write lock free for a millisecond at a
    # time; on a loaded 2-core machine the restore can need many of those windows.
    return settings_from_mapping({"database": db, "dir": tmp_path / "backups", "busy_timeout": 90})


def test_no_committed_write_is_lost_restoring_under_writers(
    tmp_path: Path, journal_mode: str
) -> None:
    settings = live_database(tmp_path, journal_mode)
    db = settings.database
    env = cli_env(db, settings.backup_dir, home=tmp_path, BACKUPS_BUSY_TIMEOUT="90")
    create_backup(settings)
    stop = tmp_path / "stop"
    # An app's writers, busy but not a tight loop: two processes committing back to back with
    # 1 ms between them left the write lock free too rarely for a restore on a loaded 2-core
    # machine (it gave up after 90 s in about half the runs under load; SQLite's locks are
    # not fair). 10 ms apart is still about a hundred transactions a second.
    writers = [spawn_writer(db, seed, stop, pause=0.01) for seed in (11, 12)]
    outcomes: list[str] = []
    try:
        for round_ in range(4):
            time.sleep(0.3)  # let rows pile up after the backup being restored
            if round_ % 2 == 0:
                done = run_cli(["restore", "latest", "--yes"], env, timeout=180)
                outcomes.append(f"cli exit {done.returncode}: {done.stderr.strip()[-300:]}")
            else:
                result = restore_backup(settings, "latest")
                outcomes.append(f"library {result.safety_snapshot_id is not None}")
                create_backup(settings)  # a newer "latest" for the next round
    except BaseException:
        # Report the round's own error, not a writer's complaint about what it left behind.
        stop.touch()
        for proc in writers:
            proc.kill()
            proc.communicate(timeout=60)
        raise
    committed = stop_writers(writers, stop)
    assert len(committed) > 50, "the writers hardly wrote: the test proves nothing"
    # Every restore went through: its check ran under the same lock as its write, so the
    # writers' rows could not make it fail (and no rollback threw the restore away).
    assert all(o.startswith(("cli exit 0", "library True")) for o in outcomes), outcomes
    safety = [i for i in BackupStore(settings).list() if i.kind == "pre-restore"]
    assert len(safety) == 4
    present = committed_ids(db) | ids_in_backups(settings, tmp_path / "copies")
    missing = set(committed) - present
    assert not missing, f"{len(missing)} committed transactions are in no database or backup"
    # And the restores did take rows out of the live database (else nothing was tested).
    assert set(committed) - committed_ids(db)


def test_the_lock_is_held_from_the_safety_copy_to_the_check(
    tmp_path: Path, journal_mode: str
) -> None:
    """A writer that tries to commit while the restore writes waits until the restore has been
    checked, and its row lands on top of the restored data: never in between."""
    settings = live_database(tmp_path, journal_mode)
    db = settings.database
    backup = create_backup(settings).metadata
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("DELETE FROM count_sessions WHERE id % 2 = 0")
        conn.commit()
    seen: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage != "write" or "writer" in seen:
            return
        # Under the hold: a writer in another process cannot commit now.
        seen["writer"] = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=60); "
                'c.execute("INSERT INTO employees (username, full_name, password_hash) '
                "VALUES ('late', 'L', '')\"); c.commit(); print('committed')",
                str(db),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        seen["waiting"] = seen["writer"].poll() is None

    result = restore_backup(settings, backup.id, progress=progress)
    out, _ = seen["writer"].communicate(timeout=60)
    assert seen["waiting"], "the writer committed inside the restore's hold"
    assert out.strip() == "committed"
    assert result.durations["hold"] >= 1.0
    with closing(sqlite3.connect(db)) as conn:
        late = conn.execute("SELECT count(*) FROM employees WHERE username = 'late'").fetchone()
        sessions = conn.execute("SELECT count(*) FROM count_sessions").fetchone()
    assert late == (1,)  # on top of the restored data
    assert sessions[0] == backup.row_counts["count_sessions"]


# -- the host app while a restore runs ------------------------------------------------------


@pytest.fixture
def sleeper() -> Any:
    """A process that stands in for a running restore (its pid is alive)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait(timeout=30)


def pretend_restore(settings: Settings, pid: int, *, stage: str, journal: str | None) -> None:
    """The record a restore of the live database keeps, as if process ``pid`` ran it."""
    record = intent.begin(
        settings, backup_id="20261207T120000Z-abcdef", target=settings.database, live=True
    )
    intent.save(
        settings,
        dataclasses.replace(
            record,
            pid=pid,
            pid_started=intent.process_start(pid),
            stage=stage,
            journal_mode=journal,
        ),
    )


def test_the_apps_writes_get_503_while_a_restore_runs(
    demo_app: Flask, admin_client: Any, sleeper: Any
) -> None:
    settings: Settings = demo_app.extensions["tablettracker_backups"].settings
    page = admin_client.get("/po/1/edit").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    form = {"csrf_token": token.group(1), "supplier": "S", "status": "open", "notes": "n"}
    assert admin_client.post("/po/1/edit", data=form).status_code == 303

    pretend_restore(settings, sleeper.pid, stage=intent.SAFETY_COPY, journal="delete")
    refused = admin_client.post("/po/1/edit", data=form)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "15"
    assert "A restore is in progress" in refused.get_data(as_text=True)
    for method in ("PUT", "PATCH", "DELETE"):
        assert admin_client.open("/po/1/edit", method=method).status_code == 503
    # Reads go on until the restore writes; the backup pages are never turned away.
    assert admin_client.get("/po/1").status_code == 200
    assert admin_client.get("/admin/backups/").status_code == 200

    pretend_restore(settings, sleeper.pid, stage=intent.WRITE, journal="delete")
    assert admin_client.get("/po/1").status_code == 503  # it would wait on the lock
    pretend_restore(settings, sleeper.pid, stage=intent.WRITE, journal="wal")
    assert admin_client.get("/po/1").status_code == 200  # WAL readers never wait
    assert admin_client.post("/po/1/edit", data=form).status_code == 503

    # A restore that was killed is not running: the app is not held up by its record.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    pretend_restore(settings, dead.pid, stage=intent.WRITE, journal="delete")
    assert admin_client.post("/po/1/edit", data=form).status_code == 303
    intent.clear(settings)
    assert admin_client.post("/po/1/edit", data=form).status_code == 303


def test_a_host_can_let_its_writes_through_during_a_restore(tmp_path: Path, sleeper: Any) -> None:
    from tablettracker_backups.demo import create_app

    app = create_app(
        {"INSTANCE_PATH": tmp_path / "instance", "TESTING": True, "BACKUPS_RESTORE_GATE": False}
    )
    client = app.test_client()
    login(client, "admin", app.config["DEMO_PASSWORD"])
    settings: Settings = app.extensions["tablettracker_backups"].settings
    pretend_restore(settings, sleeper.pid, stage=intent.WRITE, journal="delete")
    assert client.get("/po/1").status_code == 200


# -- a restore from the pages over real HTTP while the app takes writes ----------------------


@dataclass
class Browser:
    """A logged-in session over real HTTP (cookies, CSRF tokens), as a person's browser."""

    base: str
    jar: http.cookiejar.CookieJar = field(default_factory=http.cookiejar.CookieJar)

    def __post_init__(self) -> None:
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )

    def call(
        self, path: str, data: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(self.base + path, data=body)
        try:
            with self.opener.open(request, timeout=60) as answer:
                return answer.status, dict(answer.headers), answer.read().decode()
        except urllib.error.HTTPError as refused:
            return refused.code, dict(refused.headers), refused.read().decode()

    def token(self, path: str) -> str:
        _, _, page = self.call(path)
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match, page[:500]
        return match.group(1)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_a_restore_from_the_pages_while_the_app_writes(
    app: Flask, live_server: Any, tmp_path: Path
) -> None:
    settings: Settings = app.extensions["tablettracker_backups"].settings
    backup = create_backup(settings).metadata
    browser = Browser(live_server.url(""))
    credentials = {"username": "admin", "password": app.config["DEMO_PASSWORD"]}
    status, _, _ = browser.call("/login", {**credentials, "csrf_token": browser.token("/login")})
    assert status == 303
    writes: list[tuple[int, int, str, dict[str, str]]] = []
    stop = threading.Event()
    edit_token = browser.token("/po/1/edit")

    def write() -> None:
        number = 0
        while not stop.is_set():
            number += 1
            po = number % 40 + 1
            notes = f"write-{number}"
            status, headers, _ = browser.call(
                f"/po/{po}/edit",
                {"csrf_token": edit_token, "supplier": "S", "status": "open", "notes": notes},
            )
            writes.append((po, status, notes, headers))
            time.sleep(0.01)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        time.sleep(0.5)
        path = f"/admin/backups/backups/{backup.id}/restore"
        status, headers, _ = browser.call(
            path, {"csrf_token": browser.token(path), "confirm": backup.id}
        )
        assert status == 303, status
        job = wait_for_job(settings, headers["Location"].rstrip("/").rsplit("/", 1)[-1])
        assert job.state == "done", job
        time.sleep(0.5)  # writes after the restore must go through again
    finally:
        stop.set()
        writer.join(timeout=60)
    statuses = {status for _, status, _, _ in writes}
    assert statuses <= {303, 503}, statuses  # never a 500 from a locked database
    assert all(h.get("Retry-After") for _, status, _, h in writes if status == 503)
    assert writes[-1][1] == 303
    # The last write each order saw accepted is in the live database or a backup.
    present: dict[int, set[str]] = {}
    copies = [settings.database] + [
        _copy(settings, info.id, tmp_path) for info in BackupStore(settings).list()
    ]
    for path in copies:
        with closing(sqlite3.connect(path)) as conn:
            for po, notes in conn.execute("SELECT id, notes FROM purchase_orders"):
                present.setdefault(int(po), set()).add(str(notes))
    last: dict[int, str] = {}
    for po, status, notes, _ in writes:
        if status == 303:
            last[po] = notes
    lost = {po: notes for po, notes in last.items() if notes not in present.get(po, set())}
    assert not lost, lost


def _copy(settings: Settings, backup_id: str, tmp_path: Path) -> Path:
    copy = tmp_path / "copies" / f"{backup_id}.db"
    copy.parent.mkdir(exist_ok=True)
    restore_backup(settings, backup_id, to=copy)
    return copy

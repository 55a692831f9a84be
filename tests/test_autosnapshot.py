"""Write-triggered snapshots, around a real server: the demo host app served by Werkzeug on
127.0.0.1, driven over HTTP. No CLI run and no scheduler is involved: whatever backup appears
was started by the requests themselves (in the server's threads or its detached worker)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, HTTPRedirectHandler, Request, build_opener

import pytest
from flask import Flask
from werkzeug.serving import make_server

from tablettracker_backups.autosnapshot import (
    COST_FACTOR,
    IN_PROCESS_MAX_BYTES,
    IN_PROCESS_MAX_SECONDS,
    PENDING_FILE,
    Outcome,
    after_write,
    effective_interval,
    evaluate,
    interval_and_reason,
    last_auto,
)
from tablettracker_backups.backup import create_backup
from tablettracker_backups.changes import changed_since, source_signature
from tablettracker_backups.compression import decompress_file
from tablettracker_backups.health import check_health
from tablettracker_backups.jobs.queue import jobs_dir, recent_jobs
from tablettracker_backups.runner import run
from tablettracker_backups.settings import Settings, settings_from_mapping
from tablettracker_backups.store import BackupInfo, BackupStore, newest_good
from tests.conftest import make_db, rewrite_metadata, wait_for_job

LIMIT = 60.0  # generous: two shared cores, other test suites beside this one


# -- a real server around the demo host app ------------------------------------------------------


class _NoRedirect(HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Client:
    """A browser-like HTTP client: cookies, no redirects followed, errors as statuses."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = build_opener(HTTPCookieProcessor(CookieJar()), _NoRedirect())

    def request(self, method: str, path: str, data: dict[str, str] | None = None) -> int:
        body = urlencode(data).encode() if data is not None else None
        request = Request(self.base + path, data=body, method=method)
        try:
            with self.opener.open(request, timeout=30) as response:
                response.read()
                return int(response.status)
        except HTTPError as exc:
            exc.read()
            return int(exc.code)

    def page(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=30) as response:
            return str(response.read().decode())

    def token(self, path: str) -> str:
        match = re.search(r'name="csrf_token" value="([^"]+)"', self.page(path))
        assert match, f"no CSRF token on {path}"
        return match.group(1)

    def login(self, password: str) -> None:
        data = {"username": "admin", "password": password, "csrf_token": self.token("/login")}
        assert self.request("POST", "/login", data) == 303

    def edit(self, po: int, supplier: str, *, status: str = "open") -> int:
        data = {
            "supplier": supplier,
            "status": status,
            "notes": "",
            "csrf_token": self.token(f"/po/{po}/edit"),
        }
        return self.request("POST", f"/po/{po}/edit", data)


@dataclass
class Served:
    app: Flask
    settings: Settings
    client: Client


class _Decisions(logging.Handler):
    """Counts the trigger's decisions (it logs one per check, whatever the outcome). One
    count for every server the fixture starts: a test that starts two must not rely on it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("automatic snapshot check"):
            self.count += 1


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start the demo app on a free port with the given config; stop it (and any automatic
    snapshot worker it started) afterwards."""
    from tablettracker_backups.demo import create_app

    running: list[tuple[Any, threading.Thread, Settings]] = []
    trigger_logger = logging.getLogger("tablettracker_backups.web.autosnapshot")
    level = trigger_logger.level
    decisions = _Decisions()
    trigger_logger.addHandler(decisions)
    trigger_logger.setLevel(logging.DEBUG)

    def start(*, settle: bool = True, **config: Any) -> Served:
        app = create_app({"INSTANCE_PATH": tmp_path / f"site{len(running)}", **config})
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        settings = app.extensions["tablettracker_backups"].settings
        running.append((server, thread, settings))
        client = Client(f"http://127.0.0.1:{server.server_port}")
        seen = decisions.count
        client.login(app.config["DEMO_PASSWORD"])
        if settle:
            # Logging in is a POST too: its snapshot (the first backup) comes after the
            # response. Wait until its trigger has decided, not only until the backup exists:
            # the trigger looks at the database once more after the snapshot, and a test's own
            # write in that moment would start a worker the test did not ask for.
            wait_until(lambda: decisions.count > seen, "the login's trigger to decide")
            wait_until(lambda: bool(backups(settings)) and idle(settings), "the first snapshot")
        return Served(app, settings, client)

    yield start
    trigger_logger.removeHandler(decisions)
    trigger_logger.setLevel(level)
    for server, thread, settings in running:
        server.shutdown()
        thread.join(timeout=30)
        _stop_workers(settings)


def _auto_jobs(settings: Settings) -> list[dict[str, Any]]:
    directory = jobs_dir(settings)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            document = json.loads(path.read_text())
            if document.get("action") == "auto":
                found.append(document)
    return found


def _stop_workers(settings: Settings) -> None:
    """Let waiting workers finish (their waits are seconds here); end stragglers by pid."""
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        if all(j["state"] in ("done", "failed") for j in _auto_jobs(settings)):
            return
        time.sleep(0.2)
    for job in _auto_jobs(settings):
        if job["state"] not in ("done", "failed") and job.get("pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(job["pid"]), signal.SIGTERM)


def wait_until(predicate: Callable[[], bool], what: str, limit: float = LIMIT) -> float:
    """Poll until ``predicate()``; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < limit, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def idle(settings: Settings) -> bool:
    """No automatic snapshot worker waiting or running."""
    pending = (settings.state_dir / PENDING_FILE).exists()
    return not pending and all(j["state"] in ("done", "failed") for j in _auto_jobs(settings))


def backups(settings: Settings) -> list[BackupInfo]:
    return BackupStore(settings).list()


def supplier_in(settings: Settings, info: BackupInfo, po: int = 1) -> str:
    """The supplier of a purchase order as stored in a backup (decompressed to a scratch file)."""
    assert info.metadata is not None
    store = BackupStore(settings)
    scratch = settings.state_dir / f"read-{info.id}.db"
    decompress_file(
        store.data_path("primary", info.id, info.metadata.compression),
        scratch,
        algorithm=info.metadata.compression,
    )
    try:
        with contextlib.closing(sqlite3.connect(scratch)) as conn:
            row = conn.execute("SELECT supplier FROM purchase_orders WHERE id = ?", (po,))
            return str(row.fetchone()[0])
    finally:
        scratch.unlink()


def newest_supplier(settings: Settings, po: int = 1) -> str | None:
    info = newest_good(backups(settings))
    return None if info is None else supplier_in(settings, info, po)


def wait_until_due(settings: Settings) -> None:
    """Wait until the newest backup is older than the effective interval (the setting, or 20x
    the newest backup's duration), so that any change is due."""

    def due() -> bool:
        check = evaluate(settings)
        return check.due_at is None or check.due_at < datetime.now(timezone.utc)

    wait_until(due, "the newest backup to age past the interval")


# -- through a real server ------------------------------------------------------------------------


def test_writes_through_requests_produce_a_snapshot_within_the_interval(
    serve: Callable[..., Served],
) -> None:
    site = serve(BACKUPS_SNAPSHOT_AFTER_WRITE="2s")
    settings = site.settings
    # A burst: the first write may find the newest backup too young; the last one's tail is
    # what nobody else would save.
    for number in (1, 2, 3):
        assert site.client.edit(1, f"Burst {number}") == 303
    took = wait_until(lambda: newest_supplier(settings) == "Burst 3", "the burst's snapshot")
    # Due within the interval (2 s) after the newest backup; the rest is the worker's start.
    assert took < 2 + 20
    kinds = {info.kind for info in backups(settings)}
    assert kinds == {"auto"}, kinds  # no run, no manual backup: the requests did it
    assert all(info.verified for info in backups(settings))
    last = last_auto(settings)
    assert last is not None and last["ok"] is True
    wait_until(lambda: idle(settings), "the worker to stop")


def test_failing_and_read_only_requests_produce_none(serve: Callable[..., Served]) -> None:
    site = serve(BACKUPS_SNAPSHOT_AFTER_WRITE="1s")
    settings, client = site.settings, site.client
    wait_until_due(settings)
    # A console write: the database has changed and a snapshot is due, so any trigger that
    # ran would take one.
    with contextlib.closing(sqlite3.connect(settings.database)) as conn:
        conn.execute("UPDATE purchase_orders SET notes = 'console' WHERE id = 2")
        conn.commit()
    before = [i.id for i in backups(settings)]
    jobs_before = len(_auto_jobs(settings))
    for path in ("/", "/po/1", "/po/1/edit", "/po/999"):
        client.request("GET", path)
    assert client.request("HEAD", "/po/1") == 200
    assert client.edit(1, "x", status="nonsense") == 400  # refused by the app
    assert client.request("POST", "/po/1/edit", {"supplier": "no token", "status": "open"}) == 400
    missing = {"supplier": "m", "status": "open", "csrf_token": client.token("/po/1/edit")}
    assert client.request("POST", "/po/999/edit", missing) == 404
    time.sleep(2.5)  # longer than the interval
    assert [i.id for i in backups(settings)] == before
    assert len(_auto_jobs(settings)) == jobs_before
    # The same server does snapshot after a write that succeeds: the test above could fail.
    assert client.edit(1, "Written") == 303
    wait_until(lambda: newest_supplier(settings) == "Written", "a snapshot after a write")


def test_an_exception_in_the_trigger_never_reaches_the_response(
    serve: Callable[..., Served], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A real fault: the backup folder's path is a regular file, so the trigger cannot even
    # list backups (a StorageError, raised out of the core's after_write).
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("in the way\n")
    caplog.set_level(logging.INFO)
    site = serve(settle=False, BACKUPS_DIR=str(blocker), BACKUPS_SNAPSHOT_AFTER_WRITE="1s")
    for number in range(3):
        assert site.client.edit(1, f"Still works {number}") == 303
        assert f"Still works {number}" in site.client.page("/po/1")

    def reported() -> bool:
        return any(
            r.name == "tablettracker_backups.web.autosnapshot"
            and "automatic snapshot check failed" in r.getMessage()
            for r in caplog.records
        )

    wait_until(reported, "the trigger's failure to be logged")
    # Logged by the trigger, never by the server as an error of the request.
    assert not [r for r in caplog.records if "Error on request" in r.getMessage()]
    assert blocker.read_text() == "in the way\n"


def test_concurrent_requests_start_only_one_snapshot(
    serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tablettracker_backups.web.autosnapshot")
    site = serve(BACKUPS_SNAPSHOT_AFTER_WRITE="3s")
    settings, client = site.settings, site.client
    wait_until_due(settings)
    caplog.clear()  # the login's own check is not one of the eight
    before = {i.id for i in backups(settings)}
    tokens = [client.token(f"/po/{po}/edit") for po in range(1, 9)]
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def write(po: int) -> None:
        data = {"supplier": f"Concurrent {po}", "status": "open", "csrf_token": tokens[po - 1]}
        barrier.wait()
        statuses.append(client.request("POST", f"/po/{po}/edit", data))

    threads = [threading.Thread(target=write, args=(po,)) for po in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [303] * 8

    def checks_done() -> int:
        return sum(
            r.name == "tablettracker_backups.web.autosnapshot"
            and r.getMessage().startswith("automatic snapshot check:")
            for r in caplog.records
        )

    # Each trigger runs after its response was sent, so "idle" right after the responses
    # proves nothing: first wait until all eight have decided (one of them snapshots, the
    # others find it busy), and only then for any worker it started.
    wait_until(lambda: checks_done() >= 8, "all eight triggers to decide")
    wait_until(lambda: idle(settings), "the snapshot and any waiting worker")
    new = [i for i in backups(settings) if i.id not in before]
    in_process = [i for i in new if i.metadata and i.metadata.trigger == "web"]
    assert len(in_process) == 1, [(i.id, i.metadata.trigger if i.metadata else None) for i in new]
    # At most one worker catches writes that landed during that snapshot; nothing is lost.
    assert len(new) <= 2
    newest = newest_good(backups(settings))
    assert newest is not None
    assert [supplier_in(settings, newest, po) for po in range(1, 9)] == [
        f"Concurrent {po}" for po in range(1, 9)
    ]


def test_writes_during_an_in_process_snapshot_are_saved_by_the_next(
    serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    """The case CI once caught by chance: writes that commit while the in-process snapshot
    is being taken are not in it, and no later request may come; a waiting worker saves them."""
    caplog.set_level(logging.DEBUG, logger="tablettracker_backups.web.autosnapshot")
    # zstd's level 19 over 2 MiB of incompressible rows: still snapshotted in-process (the
    # demo database's first backup is quick), but for long enough (about a second here) that
    # all seven writes below land, and their triggers run, while it is under way.
    site = serve(
        BACKUPS_SNAPSHOT_AFTER_WRITE="3s", BACKUPS_COMPRESSION="zstd", BACKUPS_COMPRESSION_LEVEL=19
    )
    settings, client = site.settings, site.client
    with contextlib.closing(sqlite3.connect(settings.database)) as conn:
        conn.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, body BLOB)")
        rows = [(os.urandom(64 * 1024),) for _ in range(32)]
        conn.executemany("INSERT INTO attachments (body) VALUES (?)", rows)
        conn.commit()
    wait_until_due(settings)
    caplog.clear()
    before = {i.id for i in backups(settings)}
    tokens = [client.token(f"/po/{po}/edit") for po in range(1, 9)]

    def write(po: int) -> None:
        data = {"supplier": f"During {po}", "status": "open", "csrf_token": tokens[po - 1]}
        assert client.request("POST", f"/po/{po}/edit", data) == 303

    write(1)
    # Its trigger runs after the response: wait until the snapshot's temporary file exists
    # (the source signature is already taken), then write seven more while it runs.
    wait_until(
        lambda: any(p.name.startswith(".tmp-") for p in settings.backup_dir.iterdir()),
        "the in-process snapshot to start",
    )
    threads = [threading.Thread(target=write, args=(po,)) for po in range(2, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def checks_done() -> int:
        return sum(r.getMessage().startswith("automatic snapshot check:") for r in caplog.records)

    wait_until(lambda: checks_done() >= 8, "all eight triggers to decide")

    def taken() -> list[BackupInfo]:
        return sorted((i for i in backups(settings) if i.id not in before), key=lambda i: i.id)

    wait_until(lambda: bool(taken()), "the in-process snapshot")
    # The worker waits COST_FACTOR x that snapshot's duration first: on a loaded machine
    # (parallel test workers beside other suites) that alone can pass LIMIT.
    took = max(i.metadata.durations.get("total", 0.0) for i in taken() if i.metadata)
    wait_until(lambda: idle(settings), "the waiting worker", LIMIT + COST_FACTOR * took)
    new = taken()
    assert [i.metadata.trigger if i.metadata else None for i in new][:1] == ["web"]
    first = [supplier_in(settings, new[0], po) for po in range(1, 9)]
    assert first[0] == "During 1"
    assert first[1:] != [f"During {po}" for po in range(2, 9)]  # the case really happened
    newest = newest_good(backups(settings))
    assert newest is not None and newest.id != new[0].id
    assert [supplier_in(settings, newest, po) for po in range(1, 9)] == [
        f"During {po}" for po in range(1, 9)
    ]


# -- the core, without a server -------------------------------------------------------------------


@pytest.fixture
def auto_settings(db_path: Path, backup_dir: Path) -> Settings:
    return settings_from_mapping(
        {"database": db_path, "dir": backup_dir, "snapshot_after_write": "1s"}
    )


def _write(database: Path, text: str = "changed") -> None:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.execute("UPDATE purchase_orders SET notes = ? WHERE id = 1", (text,))
        conn.commit()


def test_the_check_opens_no_descriptor_on_the_database(auto_settings: Settings) -> None:
    # Closing any descriptor of the database would drop this process's POSIX locks: another
    # process could then write while we hold a write lock. Hold one, check, and try.
    database = auto_settings.database
    create_backup(auto_settings, kind="auto")
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE purchase_orders SET notes = 'held' WHERE id = 1")
        check = evaluate(auto_settings)
        assert check.changed is False or check.changed is True  # it answered
        source_signature(database)
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=0); "
                "c.execute('BEGIN IMMEDIATE'); print('got the lock')",
                str(database),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert "database is locked" in probe.stderr, probe.stdout + probe.stderr
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_every_commit_changes_the_signature_and_reads_do_not(
    tmp_path: Path, journal_mode: str
) -> None:
    database = make_db(tmp_path / "t.db", wal=journal_mode == "wal")
    writer = sqlite3.connect(database)
    for number in range(30):
        before = source_signature(database)
        # Same size every time: an in-place update of one row.
        writer.execute("UPDATE employees SET active = ? WHERE id = 1", (number % 2,))
        writer.commit()
        assert changed_since(before, source_signature(database), when_unsure=True)
    writer.close()
    settled = source_signature(database)
    for _ in range(3):
        with contextlib.closing(sqlite3.connect(database)) as reader:
            reader.execute("SELECT count(*) FROM purchase_orders").fetchone()
    assert not changed_since(settled, source_signature(database), when_unsure=False)


def test_writes_outside_requests_are_caught_by_the_next_run(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(disk_warning="1MB", disk_critical="1MB")
    assert run(settings).backup is not None
    assert run(settings).backup is None  # nothing written: the interval (1 h) rules
    _write(settings.database, "console script")
    caught = run(settings)
    assert caught.backup is not None and caught.error is None
    assert supplier_notes(settings, caught.backup.metadata.id) == "console script"
    # With write-triggered snapshots off, the run keeps to its interval as before.
    off = make_settings(disk_warning="1MB", disk_critical="1MB", snapshot_after_write="off")
    _write(off.database, "again")
    assert run(off).backup is None


def supplier_notes(settings: Settings, backup_id: str) -> str:
    info = BackupStore(settings).get(backup_id)
    assert info.metadata is not None
    scratch = settings.state_dir / "notes.db"
    decompress_file(
        BackupStore(settings).data_path("primary", backup_id, info.metadata.compression),
        scratch,
        algorithm=info.metadata.compression,
    )
    try:
        with contextlib.closing(sqlite3.connect(scratch)) as conn:
            row = conn.execute("SELECT notes FROM purchase_orders WHERE id = 1").fetchone()
            return str(row[0])
    finally:
        scratch.unlink()


def test_snapshot_cost_stretches_the_interval(auto_settings: Settings) -> None:
    first = create_backup(auto_settings, kind="auto").metadata
    # The newest backup "took" 3 s: 20 x 3 s = 60 s, more than the 1 s setting.
    rewrite_metadata(auto_settings, first.id, durations={**first.durations, "total": 3.0})
    _write(auto_settings.database)
    check = evaluate(auto_settings, now=first.created_at + timedelta(seconds=30))
    assert check.changed and check.interval == 60.0 and not check.due
    later = evaluate(auto_settings, now=first.created_at + timedelta(seconds=61))
    assert later.due


def test_unchanged_database_takes_no_snapshot(auto_settings: Settings) -> None:
    values = {"database": str(auto_settings.database), "dir": str(auto_settings.backup_dir)}
    first = after_write(auto_settings, values)
    assert first.outcome == Outcome.TAKEN and first.backup_id is not None
    # Past the interval (1 s, or 20x the first backup's duration on a loaded machine): only
    # "unchanged" can stop a second one now.
    wait_until_due(auto_settings)
    assert after_write(auto_settings, values).outcome == Outcome.UNCHANGED
    assert [i.id for i in backups(auto_settings)] == [first.backup_id]


def test_a_failed_snapshot_is_recorded_and_health_warns(auto_settings: Settings) -> None:
    values = {"database": str(auto_settings.database), "dir": str(auto_settings.backup_dir)}
    create_backup(auto_settings, kind="auto")
    wait_until_due(auto_settings)  # so the trigger snapshots in-process, not in a worker
    # A real fault: the database file is replaced by something that is not SQLite.
    auto_settings.database.write_bytes(b"not a database at all " * 100)
    result = after_write(auto_settings, values)
    assert result.outcome == Outcome.FAILED and "not a SQLite database" in result.detail
    last = last_auto(auto_settings)
    assert last is not None and last["ok"] is False
    codes = {f.code for f in check_health(auto_settings).findings}
    assert "auto-snapshot-failed" in codes


def test_a_large_database_goes_to_the_worker(tmp_path: Path) -> None:
    database = make_db(tmp_path / "big.db")
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, data BLOB)")
        conn.execute("INSERT INTO attachments (data) VALUES (randomblob(9 * 1024 * 1024))")
        conn.commit()
    values = {"database": str(database), "dir": str(tmp_path / "b"), "snapshot_after_write": "1s"}
    settings = settings_from_mapping(values)
    result = after_write(settings, values)
    assert result.outcome == Outcome.HANDED_OFF, result
    job = next(j for j in recent_jobs_all(settings))
    finished = wait_for_job(settings, job["id"])
    assert finished.state == "done", finished.message
    (info,) = backups(settings)
    assert info.kind == "auto" and info.metadata is not None
    assert info.metadata.trigger == "web:auto"
    # Not listed among the actions people took from the pages.
    assert recent_jobs(settings) == []


def _database_of_pages(path: Path, pages: int) -> Path:
    """A rollback-journal database of exactly ``pages`` 4 KiB pages (no -wal: its size is
    the file's)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA page_size=4096")
        conn.execute("CREATE TABLE filler (id INTEGER PRIMARY KEY, data BLOB)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO filler (data) VALUES (zeroblob(?))", ((pages - 40) * 4000,))
        while conn.execute("PRAGMA page_count").fetchone()[0] < pages:
            conn.execute("INSERT INTO filler (data) VALUES (randomblob(200))")
        conn.execute("COMMIT")
    assert path.stat().st_size == pages * 4096
    return path


@pytest.mark.parametrize(
    ("pages", "where"),
    [(2048, Outcome.TAKEN), (2049, Outcome.HANDED_OFF)],
    ids=["exactly-8MiB-in-process", "one-page-more-to-the-worker"],
)
def test_the_in_process_size_limit_at_its_edge(tmp_path: Path, pages: int, where: Outcome) -> None:
    database = _database_of_pages(tmp_path / "edge.db", pages)
    assert IN_PROCESS_MAX_BYTES == 2048 * 4096
    values = {"database": str(database), "dir": str(tmp_path / "b"), "snapshot_after_write": "1s"}
    settings = settings_from_mapping(values)
    result = after_write(settings, values)
    assert result.outcome == where, result
    if where == Outcome.HANDED_OFF:
        job = next(j for j in recent_jobs_all(settings))
        assert wait_for_job(settings, job["id"]).state == "done"
    assert [i.kind for i in backups(settings)] == ["auto"]


@pytest.mark.parametrize(
    ("seconds", "where"),
    [(0.5, Outcome.TAKEN), (0.5001, Outcome.HANDED_OFF)],
    ids=["exactly-0.5s-in-process", "just-over-to-the-worker"],
)
def test_the_in_process_duration_limit_at_its_edge(
    auto_settings: Settings, seconds: float, where: Outcome
) -> None:
    """In-process only while the newest backup took at most IN_PROCESS_MAX_SECONDS."""
    assert IN_PROCESS_MAX_SECONDS == 0.5
    first = create_backup(auto_settings, kind="auto").metadata
    # It "took" this long, an hour ago (so a snapshot is due however the interval stretched).
    rewrite_metadata(
        auto_settings,
        first.id,
        durations={**first.durations, "total": seconds},
        created_at=first.created_at - timedelta(hours=1),
    )
    _write(auto_settings.database)
    values = {"database": str(auto_settings.database), "dir": str(auto_settings.backup_dir)}
    result = after_write(auto_settings, values)
    assert result.outcome == where, result
    if where == Outcome.HANDED_OFF:
        job = next(j for j in recent_jobs_all(auto_settings))
        assert wait_for_job(auto_settings, job["id"]).state == "done"
    # The worker goes on while a write may be unsaved (one within the file system's timestamp
    # resolution of its snapshot is not known to be saved), so it can take more than one.
    assert len(backups(auto_settings)) >= 2


def recent_jobs_all(settings: Settings) -> list[dict[str, Any]]:
    return sorted(_auto_jobs(settings), key=lambda j: str(j["created_at"]), reverse=True)


def test_a_quiet_wal_database_stays_unchanged_after_its_snapshot(tmp_path: Path) -> None:
    # A snapshot's own connections (a read-only check, then a read-write copy) create and
    # remove an empty -wal: that must not look like a change, or snapshots would go on
    # forever once the writes stop.
    database = make_db(tmp_path / "wal.db", wal=True)
    settings = settings_from_mapping(
        {"database": database, "dir": tmp_path / "b", "snapshot_after_write": "1s"}
    )
    _write(database, "last write")
    create_backup(settings, kind="auto")
    assert not evaluate(settings).changed
    create_backup(settings, kind="auto")
    assert not evaluate(settings).changed


# -- a site of several databases (issue 22) ------------------------------------------------------


def test_a_write_to_a_site_snapshots_every_database_it_changed(
    serve: Callable[..., Served],
) -> None:
    """The demo as a site writes the change and its audit row in one transaction: each
    database gets its own automatic snapshot holding its half of the change."""
    site = serve(DEMO_SITE=True, BACKUPS_SNAPSHOT_AFTER_WRITE="1s")
    members = site.app.extensions["tablettracker_backups"].members
    audit_settings = members["audit"].settings
    try:
        wait_until(lambda: bool(backups(audit_settings)), "the audit log's first snapshot")
        wait_until_due(site.settings)
        wait_until_due(audit_settings)
        assert site.client.edit(1, "Site write") == 303

        def audit_rows(info: BackupInfo) -> int:
            assert info.metadata is not None
            return int(info.metadata.row_counts.get("change_log", 0))

        wait_until(lambda: newest_supplier(site.settings) == "Site write", "tablets' snapshot")
        wait_until(
            lambda: any(audit_rows(i) == 1 for i in backups(audit_settings) if i.verified),
            "the audit log's snapshot with the change's row",
        )
        assert {i.kind for i in backups(audit_settings)} == {"auto"}
    finally:
        wait_until(lambda: idle(audit_settings), "the audit log's worker to stop")


def test_one_databases_decision_never_makes_anothers_wait(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """The trigger's "one decision at a time" is per database: a site's second database is
    decided while the first one's decision is under way (the request deciding the first
    would otherwise decide it again, never the second)."""
    from tablettracker_backups import autosnapshot

    first = make_settings(snapshot_after_write="1s")
    second_db = make_db(tmp_path / "second.db")
    second = settings_from_mapping(
        {"database": second_db, "dir": tmp_path / "second-backups", "snapshot_after_write": "1s"}
    )
    key = str(first.state_dir)
    with autosnapshot._flags:
        autosnapshot._busy.add(key)
    try:
        assert after_write(first, {}).outcome == Outcome.BUSY
        values = {
            "database": str(second_db),
            "dir": str(tmp_path / "second-backups"),
            "snapshot_after_write": "1s",
        }
        result = after_write(second, values)
        assert result.outcome != Outcome.BUSY, result
        assert backups(second)  # its first snapshot, taken here
    finally:
        with autosnapshot._flags:
            autosnapshot._busy.discard(key)
            autosnapshot._missed.discard(key)


def test_the_default_interval_is_a_second_in_the_page_store_and_five_minutes_in_format_1(
    make_settings: Callable[..., Settings],
) -> None:
    """BACKUPS_SNAPSHOT_AFTER_WRITE unset: one second after the newest backup of a page-store
    folder, five minutes after a format 1 one (each of its snapshots is a whole copy); set,
    it is the owner's in both; 20x the newest backup's duration still wins over either."""
    pages = make_settings(format="pages")
    files = make_settings(format="files")
    files_meta = create_backup(files).metadata
    BackupStore(files).delete(files_meta.id)
    pages_meta = create_backup(pages).metadata
    quick = {"total": 0.01}
    files_meta = dataclasses.replace(files_meta, durations=quick)
    pages_meta = dataclasses.replace(pages_meta, durations=quick)
    assert (files_meta.format_version, pages_meta.format_version) == (1, 2)
    assert interval_and_reason(pages, pages_meta) == (1.0, "")
    assert interval_and_reason(files, files_meta) == (300.0, "files")
    assert interval_and_reason(files, None) == (1.0, "")  # nothing yet: the first is due
    owner = make_settings(format="files", snapshot_after_write="1s")
    assert interval_and_reason(owner, files_meta) == (1.0, "")
    slow = dataclasses.replace(files_meta, durations={"total": 16.0})
    assert interval_and_reason(files, slow) == (320.0, "cost")
    edge = dataclasses.replace(files_meta, durations={"total": 15.0})  # 20x = 300: not over
    assert interval_and_reason(files, edge) == (300.0, "files")
    assert (
        effective_interval(pages, dataclasses.replace(pages_meta, durations={"total": 0.1})) == 2.0
    )

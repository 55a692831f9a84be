"""Shared fixtures: a real TabletTracker-shaped SQLite file, backup folders, settings."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tablettracker_backups.demo.schema import create_demo_database
from tablettracker_backups.settings import Settings, settings_from_mapping

if TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskClient


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """pyproject.toml's ``addopts`` spread the suite over pytest-xdist workers
    (``--numprocesses``, ``--dist``). Without xdist (``-p no:xdist``, or not installed) those
    options would be unknown; here they are accepted and do nothing: one process runs all."""
    if pluginmanager.has_plugin("xdist"):
        return
    group = parser.getgroup("xdist", "pytest-xdist is not loaded: these options are ignored")
    group.addoption("--numprocesses", dest="numprocesses", default=None)
    group.addoption("--dist", dest="dist", default="no")


#: Retention that keeps only the newest backup of an hour (and no recent tier): what a prune
#: would delete is then everything older, unless something else keeps it.
TIGHT_RETENTION = {
    "BACKUPS_KEEP_MINUTELY": 0,
    "BACKUPS_KEEP_HOURLY": 1,
    "BACKUPS_KEEP_DAILY": 1,
    "BACKUPS_KEEP_WEEKLY": 1,
    "BACKUPS_KEEP_MONTHLY": 1,
    "BACKUPS_KEEP_YEARLY": 1,
    "BACKUPS_KEEP_RECENT": "0",
}


def make_db(path: Path, *, wal: bool = False, **seed: object) -> Path:
    """Create a seeded TabletTracker database, optionally in WAL mode."""
    create_demo_database(str(path), **seed)
    if wal:
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    return path


@pytest.fixture(params=["delete", "wal"])
def journal_mode(request: pytest.FixtureRequest) -> str:
    """Run a test in rollback-journal mode and in WAL mode."""
    return str(request.param)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A seeded TabletTracker database in rollback-journal mode, under an instance folder."""
    (tmp_path / "instance").mkdir()
    return make_db(tmp_path / "instance" / "tablet_counter.db")


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    """The primary backup folder (not created yet: the tool creates it owner-only)."""
    return tmp_path / "backups"


@pytest.fixture
def secondary_dir(tmp_path: Path) -> Path:
    """The secondary backup folder."""
    return tmp_path / "mirror"


@pytest.fixture
def make_settings(db_path: Path, backup_dir: Path, secondary_dir: Path) -> Callable[..., Settings]:
    """Build settings for the test's database and folders, with overrides."""

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database": db_path,
            "dir": backup_dir,
            "secondary_dir": secondary_dir,
        }
        values.update(overrides)
        return settings_from_mapping({k: v for k, v in values.items() if v is not None})

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Settings with a primary and a secondary folder."""
    return make_settings()


# -- web fixtures: the demo host app, its clients, and a helper to wait for web jobs -----------


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    """The demo TabletTracker app on a fresh instance folder (Flask-WTF CSRF on).

    Named ``app`` for pytest-flask, which builds its ``client`` and ``live_server`` fixtures
    on it. Its request-context push is switched off below.
    """
    from tablettracker_backups.demo import create_app

    # Lock timeout 0: a test that holds the lock sees the refusal at once, without waiting.
    return create_app(
        {"INSTANCE_PATH": tmp_path / "instance-demo", "TESTING": True, "BACKUPS_LOCK_TIMEOUT": 0}
    )


@pytest.fixture
def demo_app(app: Flask) -> Flask:
    """The same app, under the name the web tests were written with."""
    return app


@pytest.fixture(autouse=True)
def _push_request_context() -> None:
    """Overrides pytest-flask's fixture of this name, which pushes one request context around
    every test that uses ``app``. Every client request would then reuse that context's app
    context, so all sessions would share ``g``, and with it Flask-WTF's cached CSRF token: one
    session's token would be rendered into another's pages. Each request gets its own here.
    """


def csrf_from(html: str) -> str:
    """The CSRF token in the first form of a page."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


def login(client: FlaskClient, username: str, password: str) -> None:
    """Log in through the demo's login form."""
    token = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}
    )
    assert response.status_code == 303, response.status_code


@pytest.fixture
def admin_client(app: Flask) -> FlaskClient:
    """A test client logged in as the demo's admin."""
    client = app.test_client()
    login(client, "admin", app.config["DEMO_PASSWORD"])
    return client


@pytest.fixture
def staff_client(app: Flask) -> FlaskClient:
    """A test client logged in as a non-admin employee."""
    client = app.test_client()
    login(client, "staff", app.config["DEMO_PASSWORD"])
    return client


def wait_for_job(settings: Settings, job_id: str, *, limit: float = 120.0) -> Any:
    """Wait (bounded) for a web job's worker process to finish; return the finished job."""
    from tablettracker_backups.jobs.queue import read_job

    deadline = time.monotonic() + limit
    while True:
        job = read_job(settings, job_id)
        if job.finished:
            return job
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {job}"
        time.sleep(0.1)


#: Seconds before the top of an hour in which a test does not start (see below).
HOUR_MARGIN = 30.0


@pytest.fixture(autouse=True)
def _inside_one_clock_hour() -> None:
    """Many tests take backups seconds apart and count on them sharing their hourly (and
    daily, weekly...) slot, e.g. that a forced backup supersedes the one before it. Across
    the top of an hour they rightly fill two slots, and such a test would fail by the clock.
    A test that would start in the last ``HOUR_MARGIN`` seconds of an hour waits for the next
    one instead (at most once per hour of the suite; the clock-dependent slot logic itself is
    tested with explicit times in test_retention.py)."""
    left = 3600.0 - time.time() % 3600.0
    if left < HOUR_MARGIN:
        time.sleep(left + 0.5)


@pytest.fixture(autouse=True)
def _isolated_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep the machine's BACKUPS_* variables and ~/.config file out of every test."""
    import os

    for key in list(os.environ):
        if key.startswith("BACKUPS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))


def rewrite_metadata(settings: Settings, backup_id: str, **changes: object) -> None:
    """Rewrite a backup's metadata files (every folder) as a real on-disk edit.

    ``changes`` are top-level fields; datetimes are written as ISO strings. Used to backdate
    ``created_at`` or to damage a field without touching the data file.
    """
    import json
    from datetime import datetime

    from tablettracker_backups.metadata import utc_iso

    for folder in settings.locations:
        path = folder / f"{backup_id}.json"
        if not path.exists():
            continue
        document = json.loads(path.read_text())
        for key, value in changes.items():
            document[key] = utc_iso(value) if isinstance(value, datetime) else value
        # By rename, as every writer of metadata does (the pages' listing cache relies on it).
        partial = path.with_name(path.name + ".edit")
        partial.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        partial.replace(path)


def backdate(settings: Settings, backup_id: str, delta: object) -> None:
    """Move a backup's ``created_at`` back by ``delta`` (a timedelta) in every folder."""
    from datetime import timedelta

    from tablettracker_backups.store import BackupStore

    assert isinstance(delta, timedelta)
    info = BackupStore(settings).get(backup_id)
    rewrite_metadata(settings, backup_id, created_at=info.created_at - delta)


@pytest.fixture
def keys(tmp_path: Path) -> Callable[[str], tuple[Path, str]]:
    """Make a named age identity file (in a folder of its own, as on the owner's computer,
    not the server); returns its path and its public key (``age1...``)."""
    from tablettracker_backups.encryption import create_identity_file

    def make(name: str) -> tuple[Path, str]:
        folder = tmp_path / "owner-keys"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.txt"
        return path, create_identity_file(path)

    return make


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Flip one byte in place (same size): a real silent corruption."""
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


# -- a small real file system to fill up ---------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A small tmpfs mount (we run as root); RLIMIT_FSIZE is the fallback elsewhere."""
    from tests.faultkit import mount_tmpfs, unmount

    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if not mount_tmpfs(mount_point, "size=6m,mode=0700"):
        yield mount_point, "rlimit"
        return
    try:
        yield mount_point, "tmpfs"
    finally:
        unmount(mount_point)


@pytest.fixture
def full_fs(tiny_fs: tuple[Path, str]) -> Path:
    """The tiny mount, for tests that need a real file system to fill (no RLIMIT fallback)."""
    mount_point, how = tiny_fs
    if how != "tmpfs":  # pragma: no cover
        pytest.skip("needs a real full file system")
    return mount_point


# The reliability report (tests/RELIABILITY.md): fixture and hooks live in tests/reliability.py.
from tests.reliability import (  # noqa: E402, F401
    pytest_collection_finish,
    pytest_deselected,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_testnodedown,
    reliability,
)

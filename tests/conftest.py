"""Shared fixtures: a real TabletTracker-shaped SQLite file, backup folders, settings."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tablettracker_backups.demo.schema import create_demo_database
from tablettracker_backups.settings import Settings, settings_from_mapping


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


# The reliability report (tests/RELIABILITY.md): fixture and hooks live in tests/reliability.py.
from tests.reliability import (  # noqa: E402, F401
    pytest_collection_finish,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    reliability,
)

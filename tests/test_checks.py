"""Checks at the speed of snapshots: which data checks a snapshot had, the check budget, and
a snapshot filed without its full checks (integrity, foreign keys, row counts) never shown as
checked, checked before it is restored, and checked first by the drill.

Real SQLite files and real backups; the CLI in real processes where a kill or the listing a
person reads is what matters.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from tablettracker_backups.anomaly import AnomalyKind
from tablettracker_backups.backup import create_backup
from tablettracker_backups.checks import estimate_seconds, plan_checks
from tablettracker_backups.cli import cli
from tablettracker_backups.crashpoints import ENV, SIGNAL_ENV, Stage
from tablettracker_backups.errors import RestoreError, VerificationError
from tablettracker_backups.health import GRACE, check_health
from tablettracker_backups.metadata import BackupMetadata
from tablettracker_backups.restore import restore_backup
from tablettracker_backups.runner import run
from tablettracker_backups.settings import Settings
from tablettracker_backups.snapshot import inspect_header
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup
from tests.corpus import change_table_copy_only
from tests.faultkit import cli_env, resume, run_cli, spawn_cli, stopped_at

#: A budget nothing fits: every manual snapshot after the first is filed unchecked.
NONE_FITS = 0.0
ROOMY = {"BACKUPS_DISK_WARNING": "1MB", "BACKUPS_DISK_CRITICAL": "1MB"}


@pytest.fixture
def pages(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Format 2 settings with a given check budget."""

    def build(budget: float = NONE_FITS, **more: object) -> Settings:
        return make_settings(format="pages", check_budget=budget, **more)

    return build


def _write(db: Path, sql: str) -> None:
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(sql)
        conn.commit()


def _unchecked(settings: Settings) -> BackupMetadata:
    """A first (checked, measured) snapshot, a change, and a second one filed unchecked."""
    create_backup(settings)
    _write(settings.database, "UPDATE po_lines SET quantity_received = 7 WHERE id = 1")
    meta = create_backup(settings).metadata
    assert not meta.checked
    return meta


# -- what a snapshot records ---------------------------------------------------------------


def test_a_snapshot_over_the_budget_records_the_cheap_checks_only(
    pages: Callable[..., Settings],
) -> None:
    settings = pages()
    first = create_backup(settings).metadata
    # No measurement yet: the first one is checked, and measures the checks.
    assert first.checked and first.verification.complete and "verify" in first.durations
    assert first.row_counts and first.findings.summary() == "ok"
    second = _unchecked(settings)
    ran = second.verification.checks
    assert ran is not None and set(ran) == {"sha256", "schema"}
    assert second.verification.ran("integrity") is None and not second.verification.complete
    assert second.findings.summary() == "not checked yet" and not second.source_damaged
    assert second.row_counts == {} and "verify" not in second.durations
    assert second.schema_fingerprint == first.schema_fingerprint
    # The manifest itself says so (what a copy elsewhere carries too).
    text = (settings.backup_dir / f"{second.id}.json").read_text()
    assert json.loads(text)["findings"]["checked"] is False
    # A format 1 backup is always checked, whatever the budget.
    files = dataclasses.replace(settings, backup_format="files")
    assert create_backup(files).metadata.checked


def test_a_scheduled_backup_is_always_checked(pages: Callable[..., Settings]) -> None:
    settings = pages()
    create_backup(settings)
    assert create_backup(settings, kind="scheduled").metadata.checked
    assert not create_backup(settings, kind="auto").metadata.checked


def test_the_budget_at_its_edges(pages: Callable[..., Settings]) -> None:
    settings = pages()
    first = create_backup(settings).metadata
    infos = BackupStore(settings).list()
    cost = first.durations["verify"]
    size = first.raw_size
    assert estimate_seconds(infos, size) == cost  # exactly: the edge below is exact
    assert estimate_seconds(infos, 2 * size) == pytest.approx(2 * cost)
    inside = plan_checks("manual", infos, size, budget=cost, paged=True)
    outside = plan_checks("manual", infos, size, budget=cost * 0.999, paged=True)
    assert inside.full and not outside.full
    assert not plan_checks("auto", infos, 2 * size, budget=cost * 1.999, paged=True).full
    assert plan_checks("auto", infos, 2 * size, budget=cost * 2, paged=True).full
    # Through a real backup: the same database, so the estimate is the last check's time.
    assert create_backup(pages(budget=cost)).metadata.checked
    cost = BackupStore(settings).list()[0].metadata.durations["verify"]  # type: ignore[union-attr]
    assert not create_backup(pages(budget=cost * 0.999)).metadata.checked


def test_the_estimate_comes_from_a_snapshot_whose_full_checks_ran(
    pages: Callable[..., Settings],
) -> None:
    settings = pages()
    first = create_backup(settings).metadata
    second = _unchecked(settings)
    assert "header_check" in second.durations
    infos = BackupStore(settings).list()
    assert infos[0].id == second.id
    # Not the unchecked snapshot's header check: the last full check's time.
    assert estimate_seconds(infos, first.raw_size) == pytest.approx(first.durations["verify"])


def test_the_header_check_refuses_a_file_that_is_not_whole(tmp_path: Path, db_path: Path) -> None:
    data = db_path.read_bytes()
    cut = tmp_path / "cut.db"
    cut.write_bytes(data[: len(data) - 4096])
    with pytest.raises(VerificationError, match=r"cut\.db is not a readable database"):
        inspect_header(cut)
    # SQLite itself is content with a page too many (its header says how many it has).
    longer = tmp_path / "longer.db"
    longer.write_bytes(data + bytes(4096))
    with closing(sqlite3.connect(longer)) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
    with pytest.raises(VerificationError, match="not a whole database"):
        inspect_header(longer)
    assert inspect_header(db_path).checked is False


# -- never reported as checked -------------------------------------------------------------


def test_an_unchecked_snapshot_is_listed_shown_and_reported_as_not_checked(
    pages: Callable[..., Settings], db_path: Path, backup_dir: Path, secondary_dir: Path
) -> None:
    settings = pages()
    first = create_backup(settings).metadata
    second = _unchecked(settings)
    env = cli_env(
        db_path, backup_dir, secondary_dir, BACKUPS_FORMAT="pages", BACKUPS_CHECK_BUDGET="0"
    )
    done = run_cli(["list", "--json"], {**env, **ROOMY})
    assert done.returncode == 0, done.stderr
    listed = {entry["id"]: entry for entry in json.loads(done.stdout)}
    assert listed[second.id]["checked"] is False and listed[first.id]["checked"] is True
    assert listed[second.id]["checks"]["integrity"] is None
    assert listed[second.id]["checks"]["sha256"] is not None
    assert listed[second.id]["findings"]["checked"] is False
    text = run_cli(["list"], {**env, **ROOMY}).stdout
    line = next(row for row in text.splitlines() if second.id in row)
    assert "not checked" in line
    assert "not checked" not in next(row for row in text.splitlines() if first.id in row)
    runner = CliRunner()
    shown = runner.invoke(cli, ["show", second.id], env={**env, **ROOMY})
    assert shown.exit_code == 0, shown.output
    assert "NOT CHECKED YET: integrity, foreign_keys, row_counts" in shown.output
    assert "data:        not checked yet" in shown.output
    assert "rows:        not counted yet" in shown.output
    report = check_health(settings, read_data=False)
    assert report.newest_id == second.id and report.newest_checked_id == first.id
    assert report.to_dict()["newest_checked_backup"]["id"] == first.id


def test_health_warns_when_no_snapshot_was_checked_for_two_intervals(
    pages: Callable[..., Settings],
) -> None:
    settings = pages()
    first = create_backup(settings).metadata
    _unchecked(settings)
    edge = first.created_at + 2 * timedelta(seconds=settings.interval) + GRACE

    def overdue(now: object) -> list[str]:
        report = check_health(settings, now=now, read_data=False)  # type: ignore[arg-type]
        return [f.message for f in report.findings if f.code == "checks-overdue"]

    assert overdue(edge - timedelta(minutes=1)) == []
    found = overdue(edge + timedelta(minutes=1))
    assert len(found) == 1 and first.id in found[0]


def test_the_pages_say_not_checked_yet(tmp_path: Path) -> None:
    from tablettracker_backups.demo import create_app
    from tablettracker_backups.web.extension import get_state
    from tests.conftest import login

    app = create_app(
        {
            "INSTANCE_PATH": tmp_path / "instance-demo",
            "TESTING": True,
            "BACKUPS_FORMAT": "pages",
            "BACKUPS_CHECK_BUDGET": 0,
        }
    )
    with app.app_context():
        settings = get_state().settings
    first = create_backup(settings).metadata
    _write(settings.database, "UPDATE po_lines SET quantity_received = 7 WHERE id = 1")
    second = create_backup(settings).metadata
    assert not second.checked
    client = app.test_client()
    login(client, "admin", app.config["DEMO_PASSWORD"])
    listing = client.get("/admin/backups/backups").get_data(as_text=True)

    def row(backup_id: str) -> str:
        at = listing.index(f'data-backup-id="{backup_id}"')
        return listing[at : listing.index("</tr>", at)]

    assert "data-ttb-unchecked" in row(second.id) and "not checked yet" in row(second.id)
    assert "data-ttb-unchecked" not in row(first.id)
    detail = client.get(f"/admin/backups/backups/{second.id}").get_data(as_text=True)
    assert "data-ttb-unchecked" in detail and "Not counted yet" in detail
    assert "data-ttb-unchecked" not in client.get(f"/admin/backups/backups/{first.id}").get_data(
        as_text=True
    )


# -- checked later: verify, a kill while recording, the drill --------------------------------


def test_verify_checks_an_unchecked_snapshot_and_records_what_it_found(
    pages: Callable[..., Settings],
) -> None:
    settings = pages()
    second = _unchecked(settings)
    result = verify_backup(BackupStore(settings), second.id, notify_owner=False)
    assert result.ok
    info = BackupStore(settings).get(second.id)
    meta = info.metadata
    assert meta is not None and info.checked and meta.verification.complete
    assert meta.row_counts["po_lines"] > 0 and meta.findings.summary() == "ok"
    # The manifest is never rewritten: the state document holds what the check found.
    manifest = json.loads((settings.backup_dir / f"{second.id}.json").read_text())
    assert manifest["findings"]["checked"] is False and manifest["row_counts"] == {}


def test_a_kill_while_recording_a_check_leaves_the_snapshot_unchecked(
    pages: Callable[..., Settings], db_path: Path, backup_dir: Path, secondary_dir: Path
) -> None:
    settings = pages()
    second = _unchecked(settings)
    env = {
        **cli_env(db_path, backup_dir, secondary_dir, BACKUPS_FORMAT="pages"),
        **ROOMY,
    }
    killed = run_cli(["verify", second.id], {**env, ENV: Stage.CHECK_RECORD.value})
    assert killed.returncode == -9, killed.stderr
    assert not BackupStore(settings).get(second.id).checked
    again = run_cli(["verify", second.id], env)
    assert again.returncode == 0, again.stderr
    assert BackupStore(settings).get(second.id).checked
    # The killed run's temporary state document is debris the next backup removes.
    create_backup(settings)
    assert not [p for p in backup_dir.iterdir() if p.name.startswith(".tmp")]


def test_the_drill_checks_an_unchecked_snapshot_first(pages: Callable[..., Settings]) -> None:
    settings = pages()
    first = create_backup(settings).metadata
    second = _unchecked(settings)
    # The first was verified longest ago: without the preference the drill would take it.
    assert first.verification.verified_at < second.verification.verified_at
    result = run(settings, force=True, pings=False)
    assert result.reverified is not None and result.reverified.id == second.id
    assert result.reverified.ok


# -- latest and restore ------------------------------------------------------------------------


def _people(db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("CREATE INDEX people_name ON people(name)")
        conn.executemany(
            "INSERT INTO people (name) VALUES (?)", [(f"name-{i:05d}",) for i in range(2000)]
        )
        conn.commit()


def _out_of_step(db: Path) -> None:
    """One name changed in the table's page and not in its index: integrity_check fails,
    the backup API copies it as it is, the schema reads fine."""
    change_table_copy_only(db, 4096)


def test_restore_of_latest_unchecked_and_damaged_is_refused_and_latest_moves_back(
    pages: Callable[..., Settings], tmp_path: Path
) -> None:
    db = tmp_path / "people.db"
    _people(db)
    settings = pages(database=db)
    clean = create_backup(settings).metadata
    _out_of_step(db)
    damaged = create_backup(settings).metadata
    assert not damaged.checked and not damaged.source_damaged
    store = BackupStore(settings)
    assert store.latest().id == damaged.id  # not known to hold damaged data yet
    target = tmp_path / "restored.db"
    with pytest.raises(RestoreError, match=f"latest was backup {damaged.id}"):
        restore_backup(settings, "latest", to=target)
    assert not target.exists()
    info = store.get(damaged.id)
    assert info.checked and info.source_damaged
    assert store.latest().id == clean.id
    # Asked again, latest is the clean one.
    assert restore_backup(settings, "latest", to=target).backup_id == clean.id


def test_restore_of_an_unchecked_snapshot_checks_it_before_writing(
    pages: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = pages()
    second = _unchecked(settings)
    target = tmp_path / "restored.db"
    result = restore_backup(settings, second.id, to=target)
    assert result.backup_id == second.id
    with closing(sqlite3.connect(target)) as conn:
        assert conn.execute("SELECT quantity_received FROM po_lines WHERE id = 1").fetchone() == (
            7,
        )
    info = BackupStore(settings).get(second.id)
    assert info.checked and info.metadata is not None and info.metadata.row_counts


def test_a_drop_seen_by_an_unchecked_snapshot_is_found_by_the_next_checked_one(
    pages: Callable[..., Settings],
) -> None:
    settings = pages()
    first = create_backup(settings).metadata
    _write(settings.database, "DELETE FROM po_lines WHERE id % 2 = 0")
    unchecked = create_backup(settings)
    assert not unchecked.metadata.checked and unchecked.anomalies == ()
    checked = create_backup(settings, kind="scheduled")
    dropped = [a for a in checked.anomalies if a.kind is AnomalyKind.ROWS_DROPPED]
    assert dropped and dropped[0].previous_id == first.id


# -- raw reads: the CLI reads pages straight from the live file ----------------------------


def _raw_env(db: Path, backup_dir: Path, secondary_dir: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **cli_env(
            db,
            backup_dir,
            secondary_dir,
            home=tmp_path,
            BACKUPS_FORMAT="pages",
            BACKUPS_CHECK_BUDGET="0",
        ),
        **ROOMY,
    }


def test_a_cli_raw_read_holds_its_shared_lock_while_the_app_holds_a_write_lock(
    pages: Callable[..., Settings],
    db_path: Path,
    backup_dir: Path,
    secondary_dir: Path,
    tmp_path: Path,
) -> None:
    settings = pages()
    create_backup(settings)  # checked: the checks are measured
    before = db_path.read_bytes()
    env = _raw_env(db_path, backup_dir, secondary_dir, tmp_path)
    # The host app (another connection) is in the middle of a write: RESERVED, not committed.
    with closing(sqlite3.connect(db_path, timeout=0, isolation_level=None)) as app:
        app.execute("BEGIN IMMEDIATE")
        app.execute("UPDATE po_lines SET quantity_received = 99 WHERE id = 1")
        stop = {ENV: Stage.RAW_READ.value, SIGNAL_ENV: "STOP"}
        proc = spawn_cli(["backup", "--json"], {**env, **stop})
        assert stopped_at(proc), "the backup never reached its raw read"
        # Mid-read: the CLI's SHARED lock keeps the app's commit out of the file.
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            app.execute("COMMIT")
        code, out, err = resume(proc)
        assert code == 0, err
        app.execute("COMMIT")  # the read is over: the app's write goes in
    taken = json.loads(out)["id"]
    meta = BackupStore(settings).get(taken).metadata
    assert meta is not None and not meta.checked
    # Read from the live file: no scratch copy, so no header check of one.
    assert "header_check" not in meta.durations and "pages" in meta.durations
    restored = tmp_path / "restored.db"
    restore_backup(settings, taken, to=restored)
    assert restored.read_bytes() == before  # the state before the app's commit, exactly
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("SELECT quantity_received FROM po_lines WHERE id = 1").fetchone() == (
            99,
        )


def test_a_kill_during_a_raw_read_lists_nothing_and_frees_the_lock(
    pages: Callable[..., Settings],
    db_path: Path,
    backup_dir: Path,
    secondary_dir: Path,
    tmp_path: Path,
) -> None:
    settings = pages()
    first = create_backup(settings).metadata
    env = _raw_env(db_path, backup_dir, secondary_dir, tmp_path)
    killed = run_cli(["backup"], {**env, ENV: Stage.RAW_READ.value})
    assert killed.returncode == -9, killed.stderr
    assert [i.id for i in BackupStore(settings).list()] == [first.id]
    _write(db_path, "UPDATE po_lines SET quantity_received = 5 WHERE id = 1")  # no lock left
    again = run_cli(["backup"], env)
    assert again.returncode == 0, again.stderr
    assert len(BackupStore(settings).list()) == 2


def test_in_wal_mode_the_cli_reads_through_sqlite(
    make_settings: Callable[..., Settings],
    backup_dir: Path,
    secondary_dir: Path,
    tmp_path: Path,
) -> None:
    from tests.conftest import make_db

    db = make_db(tmp_path / "wal.db", wal=True)
    settings = make_settings(database=db, format="pages", check_budget=0)
    create_backup(settings)
    done = run_cli(["backup", "--json"], _raw_env(db, backup_dir, secondary_dir, tmp_path))
    assert done.returncode == 0, done.stderr
    meta = BackupStore(settings).get(json.loads(done.stdout)["id"]).metadata
    assert meta is not None and not meta.checked and "header_check" in meta.durations


def test_retention_keeps_the_newest_checked_good_backup_behind_unchecked_ones() -> None:
    from datetime import datetime, timezone

    from tablettracker_backups.retention import Candidate, plan_retention
    from tablettracker_backups.settings import RetentionPolicy

    at = datetime(2026, 12, 8, 3, 0, tzinfo=timezone.utc)
    candidates = [
        Candidate("checked", at, "manual", True),
        Candidate("older-checked", at - timedelta(minutes=1), "manual", True),
        *(
            Candidate(f"unchecked-{n}", at + timedelta(minutes=n), "auto", True, checked=False)
            for n in (1, 2, 3)
        ),
    ]
    plan = plan_retention(
        candidates,
        RetentionPolicy(hourly=1, daily=1, weekly=1, monthly=1, yearly=1, minutely=0),
    )
    kept = {c.id for c in plan.keep}
    assert "checked" in kept and "older-checked" not in kept
    assert plan.reasons("checked") == ("newest checked good backup",)


def test_an_export_of_an_unchecked_snapshot_checks_it_and_records_it(
    pages: Callable[..., Settings], tmp_path: Path
) -> None:
    from tablettracker_backups.export import export_backup

    settings = pages()
    second = _unchecked(settings)
    store = BackupStore(settings)
    done = export_backup(store, second.id, tmp_path / "out.db")
    assert done.id == second.id and (tmp_path / "out.db").is_file()
    info = store.get(second.id)
    assert info.checked and info.metadata is not None
    assert info.metadata.row_counts == create_backup(settings, kind="scheduled").metadata.row_counts

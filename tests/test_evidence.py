"""Data-loss warnings keep their evidence: the backup that still holds lost rows is pinned at
once, kept by every prune and run while the warning is open, and let go only when the owner
dismisses the warning. Real databases, real backups, real prunes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tablettracker_backups import audit
from tablettracker_backups.backup import create_backup
from tablettracker_backups.errors import BackupNotFound
from tablettracker_backups.evidence import (
    WARNINGS_FILE,
    dismiss,
    keep,
    open_warnings,
    protected,
    read_warnings,
)
from tablettracker_backups.health import check_health
from tablettracker_backups.pins import set_pin, write_pin
from tablettracker_backups.prune import plan_for_store, prune
from tablettracker_backups.runner import run
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import Level
from tablettracker_backups.store import BackupStore
from tests.conftest import TIGHT_RETENTION

#: The same tight retention, as core settings.
TIGHT = {key.removeprefix("BACKUPS_").lower(): value for key, value in TIGHT_RETENTION.items()}


def execute(db_path: Path, sql: str) -> None:
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(sql)
    conn.close()


def count(db_path: Path, table: str) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def tight(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**TIGHT)


def lose_rows(settings: Settings) -> tuple[str, str]:
    """A good backup, then most count sessions deleted and a second backup: (evidence, found)."""
    evidence = create_backup(settings, kind="scheduled").metadata.id
    execute(settings.database, "DELETE FROM count_sessions WHERE id > 100")
    found = create_backup(settings, kind="scheduled").metadata.id
    return evidence, found


def test_lost_rows_pin_the_backup_that_has_them_with_the_loss_as_reason(tight: Settings) -> None:
    evidence, found = lose_rows(tight)
    [warning] = open_warnings(tight)
    assert (warning.backup_id, warning.evidence_id) == (found, evidence)
    assert warning.reason == "rows lost in count_sessions: 320 → 100"
    assert warning.auto_pinned and not warning.kept
    assert warning.sentences() == [
        f"Table count_sessions lost 220 of its 320 rows (69%). Backup {evidence} still has them."
    ]
    store = BackupStore(tight)
    assert store.get(evidence).pinned
    # The plan says why: the pin, and the loss it is evidence of.
    assert plan_for_store(store).reasons(evidence) == (
        "pinned",
        "evidence of a data-loss warning: rows lost in count_sessions: 320 → 100",
    )
    # The audit log names the automatic pin and its reason.
    [entry] = [e for e in audit.read_entries(tight) if e.action == "pin"]
    assert entry.actor == "automatic (data-loss warning)"
    assert entry.message == f"pinned backup {evidence}: {warning.reason}"
    # Health warns until it is dismissed, naming both backups.
    report = check_health(tight, read_data=False)
    [finding] = [f for f in report.findings if f.code == "data-loss"]
    assert finding.level == Level.WARNING
    assert found in finding.message and evidence in finding.message
    assert "kept until the warning is dismissed" in finding.message
    # The file is owner-only.
    assert (tight.state_dir / WARNINGS_FILE).stat().st_mode & 0o077 == 0


def test_evidence_survives_run_and_prune_until_dismissed(tight: Settings) -> None:
    evidence, found = lose_rows(tight)
    store = BackupStore(tight)
    result = run(tight, force=True)
    assert result.error is None and evidence not in result.pruned.deleted  # type: ignore[union-attr]
    assert found in result.pruned.deleted  # type: ignore[union-attr]  # retention works
    assert evidence in store.ids()
    assert prune(store).deleted == ()

    dismissed = dismiss(tight, found, actor="ada")
    assert dismissed.dismissed_by == "ada" and open_warnings(tight) == []
    assert not store.get(evidence).pinned  # the automatic pin is gone with the warning
    assert prune(store).deleted == (evidence,)
    [entry] = [e for e in audit.read_entries(tight) if e.action == "dismiss-warning"]
    assert entry.actor == "ada" and f"backup {evidence} is no longer pinned" in entry.message


def test_evidence_is_kept_even_when_its_pin_is_lost(tight: Settings) -> None:
    """The warnings file protects the evidence by itself: a pin rewritten away (an old tool,
    a copied folder) does not expose it to prune."""
    evidence, _ = lose_rows(tight)
    store = BackupStore(tight)
    write_pin(store, evidence, pinned=False)
    assert not store.get(evidence).pinned
    assert protected(tight) == {evidence: "rows lost in count_sessions: 320 → 100"}
    result = prune(store)
    assert evidence not in result.deleted and evidence in store.ids()


def test_kept_evidence_stays_pinned_after_the_warning_is_dismissed(tight: Settings) -> None:
    evidence, found = lose_rows(tight)
    kept = keep(tight, found, actor="ada")
    assert kept.kept and open_warnings(tight)[0].kept
    dismiss(tight, found, actor="ada")
    store = BackupStore(tight)
    assert store.get(evidence).pinned
    assert evidence not in prune(store).deleted


def test_a_pin_the_owner_set_before_is_left_alone(tight: Settings) -> None:
    evidence = create_backup(tight, kind="scheduled").metadata.id
    set_pin(tight, evidence, pinned=True, label="before the migration", actor="ada")
    execute(tight.database, "DELETE FROM count_sessions WHERE id > 100")
    found = create_backup(tight, kind="scheduled").metadata.id
    [warning] = open_warnings(tight)
    assert not warning.auto_pinned
    assert not [e for e in audit.read_entries(tight) if e.actor.startswith("automatic")]
    dismiss(tight, found, actor="ada")
    info = BackupStore(tight).get(evidence)
    assert info.pinned and info.label == "before the migration"


def test_a_schema_change_or_a_small_drop_records_no_warning(tight: Settings) -> None:
    create_backup(tight)
    execute(tight.database, "CREATE TABLE extra (id INTEGER PRIMARY KEY)")
    execute(tight.database, "DELETE FROM count_sessions WHERE id <= 32")  # 10%: ordinary
    create_backup(tight)
    assert read_warnings(tight) == []
    assert not (tight.state_dir / WARNINGS_FILE).exists()


def test_only_an_open_warning_can_be_kept_or_dismissed(tight: Settings) -> None:
    _, found = lose_rows(tight)
    with pytest.raises(BackupNotFound, match="no open data-loss warning for backup"):
        dismiss(tight, "20200101T000000Z-abcdef", actor="ada")
    dismiss(tight, found, actor="ada")
    with pytest.raises(BackupNotFound):
        dismiss(tight, found, actor="ada")
    with pytest.raises(BackupNotFound):
        keep(tight, found, actor="ada")


def test_an_unreadable_warnings_file_reads_as_none_and_bad_entries_are_skipped(
    tight: Settings,
) -> None:
    _, found = lose_rows(tight)
    path = tight.state_dir / WARNINGS_FILE
    document = json.loads(path.read_text())
    document["warnings"].append({"backup_id": "../etc", "evidence_id": "x"})
    path.write_text(json.dumps(document))
    assert [w.backup_id for w in read_warnings(tight)] == [found]
    path.write_text("{not json")
    assert read_warnings(tight) == []


def test_rows_restored_later_do_not_close_the_warning(tight: Settings) -> None:
    """Only the owner closes a warning: the loss happened, whatever came after."""
    evidence, found = lose_rows(tight)
    assert count(tight.database, "count_sessions") == 100
    create_backup(tight, kind="scheduled")
    assert [w.backup_id for w in open_warnings(tight)] == [found]
    assert evidence in BackupStore(tight).ids()

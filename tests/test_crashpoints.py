"""kill -9 at every named crash point, deterministically, with the invariants checked after.

``TTB_CRASH_AT=<stage>[:<n>]`` makes the real CLI process SIGKILL itself the n-th time it
reaches ``stage`` (see ``tablettracker_backups/crashpoints.py``). The default run kills each stage
once and checks what that stage must leave behind; the ``slow`` run draws 1,000 trials (command,
stage, count, journal mode) from a seeded generator and checks the same invariants after each:

- the live database passes integrity_check and is exactly the state before (backup, run,
  prune) or exactly the old or the new state (restore);
- every listed backup has metadata, each copy is ok or missing (never half there), and every ok
  copy fully verifies; no backup that existed is lost, except those prune was deleting;
- the lock is free;
- the next command without the crash succeeds and leaves no debris (.tmp-* files, data files
  without metadata, metadata without data) in either folder.

A trial's kill point depends only on its parameters, never on timing, so a failing trial is
replayed exactly by its seed and index (``TTB_CRASH_SEED``, ``TTB_CRASH_TRIALS``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.crashpoints import ENV, Stage
from tablettracker_backups.locking import is_locked
from tablettracker_backups.settings import Settings, settings_from_mapping
from tablettracker_backups.store import BackupInfo, BackupStore
from tablettracker_backups.verify import verify_copy
from tests.conftest import make_db
from tests.faultkit import ROOT, assert_no_debris, cli_env, folder_state, run_cli
from tests.reliability import Recorder

#: Retention that keeps only the newest backup, so `prune` always has something to delete.
KEEP_NEWEST_ONLY = {
    f"BACKUPS_KEEP_{slot}": "0"
    for slot in ("HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY", "RECENT")
}


#: Stages that need the big template: a copy of more than one backup-API step, a stored file
#: of several 1 MiB chunks. Every other stage runs on the small one, which is much faster.
NEEDS_BIG = ("snapshot-copy", "restore-write", "compress", "safety-copy")


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Live databases made once, per journal mode: "big" has 1 KiB pages, so the ~6 MB file is
    more than one backup-API step (4096 pages) and a crash can land between two steps of a
    copy; "small" is the default demo database."""
    folder = tmp_path_factory.mktemp("crash-templates")
    made = {}
    for mode in ("delete", "wal"):
        big = make_db(folder / f"{mode}-big.db", purchase_orders=1500, note_bytes=300)
        small = make_db(folder / f"{mode}-small.db")
        with closing(sqlite3.connect(big)) as conn:
            conn.execute("PRAGMA page_size=1024")
            conn.execute("VACUUM")
            assert conn.execute("PRAGMA page_count").fetchone()[0] > 4096
        for path in (big, small):
            if mode == "wal":
                with closing(sqlite3.connect(path)) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
        made[f"{mode}-big"], made[f"{mode}-small"] = big, small
    return made


def fingerprint(path: Path) -> str:
    """A digest of the database's whole content (every row of every table)."""
    digest = hashlib.sha256()
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY name"
            )
        ]
        for table in tables:
            digest.update(table.encode())
            for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                digest.update(repr(row).encode())
    return digest.hexdigest()


def integrity(path: Path) -> str:
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def change(path: Path) -> None:
    """Move the live database away from the backed-up state (what a restore undoes)."""
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.execute("DELETE FROM count_sessions WHERE id % 5 = 0")
        conn.execute("UPDATE po_lines SET quantity_received = quantity_received + 1")
        conn.commit()


@dataclass(frozen=True)
class Trial:
    """One crash: which command, at which stage, the how-many-th time it is reached."""

    command: str
    stage: Stage
    hit: int = 1
    journal: str = "delete"

    def __str__(self) -> str:
        return f"{self.command} @ {self.stage.value}:{self.hit} ({self.journal})"


@dataclass
class World:
    """A live database, two backup folders, and what was true before the crash."""

    root: Path
    settings: Settings
    env: dict[str, str]
    before_ids: set[str] = field(default_factory=set)
    newest: str = ""
    live_before: str = ""
    #: Restore only: the content the restore writes.
    restored: str = ""
    restore_id: str = ""

    @property
    def store(self) -> BackupStore:
        return BackupStore(self.settings)

    def run(self, args: list[str], crash: str | None) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if crash is not None:
            env[ENV] = crash
        return run_cli(args, env, timeout=180)


def make_world(trial: Trial, root: Path, templates: dict[str, Path]) -> World:
    """Prepare what the trial's command needs: backups to prune, a changed live database."""
    (root / "instance").mkdir(parents=True)
    db = root / "instance" / "tablet_counter.db"
    size = "big" if trial.stage.value in NEEDS_BIG else "small"
    shutil.copyfile(templates[f"{trial.journal}-{size}"], db)
    settings = settings_from_mapping(
        {"database": db, "dir": root / "backups", "secondary_dir": root / "mirror"}
    )
    extra = dict(KEEP_NEWEST_ONLY) if trial.command == "prune" else {}
    env = cli_env(db, settings.backup_dir, settings.secondary_dir, home=root, **extra)
    world = World(root, settings, env)
    first = create_backup(settings).metadata.id
    if trial.command == "prune":
        create_backup(settings)
        create_backup(settings)
    if trial.command == "restore":
        world.restored = fingerprint(db)
        world.restore_id = first
        change(db)
    listed = world.store.list()
    world.before_ids = {info.id for info in listed}
    world.newest = listed[0].id
    world.live_before = fingerprint(db)
    return world


def args_for(trial: Trial, world: World) -> list[str]:
    if trial.command == "restore":
        return ["restore", world.restore_id, "--yes"]
    if trial.command == "run":
        return ["run", "--force"]
    return [trial.command]


def check_listing(world: World, where: str, *, verify: bool = True) -> list[BackupInfo]:
    """Nothing half-listed: every listed copy is whole (and fully verifies), or is missing."""
    store = world.store
    infos = store.list()
    for info in infos:
        assert info.metadata is not None, (where, info)
        states = {copy.location: copy.state for copy in info.copies}
        assert set(states.values()) <= {"ok", "missing"}, (where, info.id, info.problems)
        assert "ok" in states.values(), (where, info.id)
        for location, state in states.items():
            if state == "ok" and verify:
                result = verify_copy(store, location, info.id)
                assert result.ok, (where, info.id, location, result.error)
    return infos


def check_after_crash(trial: Trial, world: World, where: str) -> list[BackupInfo]:
    """The invariants every crash must keep, whatever the stage."""
    db = world.settings.database
    assert integrity(db) == "ok", where
    live = fingerprint(db)
    if trial.command == "restore":
        assert live in (world.live_before, world.restored), f"{where}: live DB is a mix"
    else:
        assert live == world.live_before, f"{where}: live DB changed"
    assert not is_locked(world.settings), f"{where}: the lock is still held"
    infos = check_listing(world, where)
    listed = {info.id for info in infos}
    if trial.command in ("backup", "restore"):
        assert world.before_ids <= listed, (where, world.before_ids - listed)
    elif trial.command == "prune":  # it may have deleted some; the newest always stays
        assert world.newest in listed, where
    else:  # run: its prune may delete the old newest once its own backup is committed
        assert world.newest in listed or listed - world.before_ids, where
    return infos


def check_restore_reported(world: World, where: str) -> None:
    """A killed restore is never silent: health is critical and names it."""
    done = world.run(["health", "--json"], None)
    assert done.returncode == 2, (where, done.stdout, done.stderr)
    findings = {f["code"]: f["message"] for f in json.loads(done.stdout)["findings"]}
    message = findings["restore-interrupted"]
    assert world.restore_id in message and str(world.settings.database) in message, message
    assert f"at stage {restore_record(world)['stage']} (" in message, message
    # It says which state the database holds and how that was found.
    assert "row counts and schema compared" in message, message


def check_nothing_lost(world: World, infos: list[BackupInfo], where: str) -> None:
    """The data from before the restore is in the live database or in a backup."""
    if fingerprint(world.settings.database) == world.live_before:
        return
    held = []
    for info in pre_restore(infos):
        copy = world.root / f"check-{info.id}.db"
        done = world.run(["restore", info.id, "--to", str(copy), "--yes"], None)
        assert done.returncode == 0, (where, done.stderr)
        held.append(fingerprint(copy))
    assert world.live_before in held, f"{where}: the data from before the restore is lost"


def recover(trial: Trial, world: World, where: str) -> None:
    """The next command, without the crash, succeeds and cleans up after the killed one."""
    if trial.command == "restore":
        check_restore_reported(world, where)
        done = world.run(args_for(trial, world), None)
        assert done.returncode == 0, (where, done.stderr)
        assert fingerprint(world.settings.database) == world.restored, where
        check_nothing_lost(world, world.store.list(), where)
        # A restore that succeeded ends the report of the one killed before it.
        health = json.loads(world.run(["health", "--json"], None).stdout)
        assert "restore-interrupted" not in {f["code"] for f in health["findings"]}, where
    done = world.run(["run", "--force"], None)
    assert done.returncode in (0, 1), (where, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, (where, done.stderr)
    assert_no_debris(world.settings.backup_dir, world.settings.secondary_dir)
    # (The run itself verified what it wrote; the full check of every copy was after the crash.)
    check_listing(world, where, verify=False)
    assert integrity(world.settings.database) == "ok", where


def crash(trial: Trial, world: World) -> bool:
    """Run the trial's command with its crash point set; True if it was killed there."""
    done = world.run(args_for(trial, world), f"{trial.stage.value}:{trial.hit}")
    if done.returncode == -signal.SIGKILL:
        return True
    # The stage was reached fewer than `hit` times: the command must have finished normally.
    assert done.returncode in (0, 1), (str(trial), done.returncode, done.stdout, done.stderr)
    return False


# -- the default run: every stage once, with what that stage must leave behind ---------------


def new_ids(world: World, infos: list[BackupInfo]) -> set[str]:
    return {info.id for info in infos} - world.before_ids


def temp_names(folder: Path) -> list[str]:
    return folder_state(folder)["tmp"]


def expect_snapshot_copy(world: World, infos: list[BackupInfo]) -> str:
    assert not new_ids(world, infos)
    raw = [n for n in temp_names(world.settings.backup_dir) if n.endswith(".db")]
    assert len(raw) == 1, temp_names(world.settings.backup_dir)
    return "half-copied snapshot left as .tmp-*.db, nothing new listed"


def expect_compress(world: World, infos: list[BackupInfo]) -> str:
    assert not new_ids(world, infos)
    stored = [n for n in temp_names(world.settings.backup_dir) if n.endswith(".db.zst")]
    assert len(stored) == 1, temp_names(world.settings.backup_dir)
    return "half-written .tmp-*.db.zst left, nothing new listed"


def expect_data_rename(world: World, infos: list[BackupInfo]) -> str:
    assert not new_ids(world, infos)
    state = folder_state(world.settings.backup_dir)
    assert len(set(state["data"]) - set(state["meta"])) == 1, state
    assert not [n for n in state["tmp"] if n.endswith(".db.zst")], state  # it was renamed
    return "data file renamed into place without metadata: not listed (an orphan)"


def expect_secondary_copy(world: World, infos: list[BackupInfo]) -> str:
    (new,) = new_ids(world, infos)
    info = next(i for i in infos if i.id == new)
    assert info.copy_state("primary") == "ok" and info.copy_state("secondary") == "missing"
    assert [n for n in temp_names(world.settings.secondary_dir) if n.endswith(".db.zst")]
    return "listed with primary ok (verifies); secondary: only a .tmp- file, copy missing"


def expect_metadata_write(world: World, infos: list[BackupInfo]) -> str:
    assert not new_ids(world, infos)
    state = folder_state(world.settings.backup_dir)
    orphans = set(state["data"]) - set(state["meta"])
    assert len(orphans) == 1, state
    assert [n for n in state["tmp"] if n.endswith(".json")], state
    return "data committed, metadata only under its .tmp- name: not listed"


def expect_secondary_metadata_write(world: World, infos: list[BackupInfo]) -> str:
    (new,) = new_ids(world, infos)
    info = next(i for i in infos if i.id == new)
    assert info.copy_state("primary") == "ok" and info.copy_state("secondary") == "missing"
    return "listed with primary ok (verifies), secondary copy missing"


def expect_prune_delete(world: World, infos: list[BackupInfo]) -> str:
    primary = folder_state(world.settings.backup_dir)
    (victim,) = set(primary["data"]) - set(primary["meta"])
    info = next(i for i in infos if i.id == victim)
    assert info.copy_state("primary") == "missing" and info.copy_state("secondary") == "ok"
    return "victim: primary metadata gone, data left (not listed there); secondary copy verifies"


def restore_record(world: World) -> dict[str, object]:
    """The killed restore's record (``restore-intent.json``)."""
    record = json.loads((world.settings.backup_dir / "restore-intent.json").read_text())
    assert isinstance(record, dict)
    return record


def safety_copies(world: World) -> list[Path]:
    return sorted(world.settings.backup_dir.glob(".restore-safety-*"))


def pre_restore(infos: list[BackupInfo]) -> list[BackupInfo]:
    return [i for i in infos if i.kind == "pre-restore"]


def expect_restore_hold(world: World, infos: list[BackupInfo]) -> str:
    assert fingerprint(world.settings.database) == world.live_before
    assert not pre_restore(infos) and not safety_copies(world)
    assert restore_record(world)["stage"] == "hold"
    return "live DB untouched (the lock went with the process); record at 'hold'; no copy yet"


def expect_safety_copy(world: World, infos: list[BackupInfo]) -> str:
    assert fingerprint(world.settings.database) == world.live_before
    record = restore_record(world)
    assert record["stage"] == "safety-copy" and record["safety_copied"] is False
    assert [str(p) for p in safety_copies(world)] == [record["safety_copy"]]
    assert not pre_restore(infos)
    return "live DB untouched; a half-written safety copy the record marks incomplete"


def expect_restore_write(world: World, infos: list[BackupInfo]) -> str:
    assert fingerprint(world.settings.database) == world.live_before
    record = restore_record(world)
    assert record["stage"] == "write" and record["safety_copied"] is True
    (copy,) = safety_copies(world)
    assert fingerprint(copy) == world.live_before  # complete and durable before the write
    assert not pre_restore(infos)
    return (
        "live DB entirely the old state (the half-written transaction rolled back); the "
        "complete safety copy kept, named by the record"
    )


def expect_restore_post_check(world: World, infos: list[BackupInfo]) -> str:
    assert fingerprint(world.settings.database) == world.restored
    (copy,) = safety_copies(world)
    assert fingerprint(copy) == world.live_before
    assert restore_record(world)["safety_copied"] is True
    return "live DB entirely the new state; the old state in the complete safety copy"


def expect_restore_released(world: World, infos: list[BackupInfo]) -> str:
    assert fingerprint(world.settings.database) == world.restored
    assert restore_record(world)["stage"] == "released"
    (copy,) = safety_copies(world)
    assert fingerprint(copy) == world.live_before and not pre_restore(infos)
    return "lock released, live DB the new state; safety copy not filed yet, named by the record"


def expect_safety_snapshot(world: World, infos: list[BackupInfo]) -> str:
    assert fingerprint(world.settings.database) == world.restored
    (safety,) = pre_restore(infos)
    assert restore_record(world)["safety_kept"] == safety.id
    assert len(safety_copies(world)) == 1  # filed (and verified above), scratch not removed
    return "live DB the new state; safety snapshot listed and verifies; its scratch left"


Expectation = Callable[[World, list[BackupInfo]], str]

DETERMINISTIC: list[tuple[Trial, Expectation]] = [
    (Trial("backup", Stage.SNAPSHOT_COPY), expect_snapshot_copy),
    (Trial("backup", Stage.COMPRESS), expect_compress),
    (Trial("backup", Stage.DATA_RENAME), expect_data_rename),
    (Trial("backup", Stage.METADATA_WRITE), expect_metadata_write),
    (Trial("backup", Stage.SECONDARY_COPY), expect_secondary_copy),
    (Trial("backup", Stage.METADATA_WRITE, hit=2), expect_secondary_metadata_write),
    (Trial("prune", Stage.PRUNE_DELETE), expect_prune_delete),
    (Trial("restore", Stage.RESTORE_HOLD), expect_restore_hold),
    (Trial("restore", Stage.SAFETY_COPY), expect_safety_copy),
    (Trial("restore", Stage.SAFETY_COPY, journal="wal"), expect_safety_copy),
    (Trial("restore", Stage.RESTORE_WRITE), expect_restore_write),
    (Trial("restore", Stage.RESTORE_WRITE, journal="wal"), expect_restore_write),
    (Trial("restore", Stage.RESTORE_POST_CHECK), expect_restore_post_check),
    (Trial("restore", Stage.RESTORE_POST_CHECK, journal="wal"), expect_restore_post_check),
    (Trial("restore", Stage.RESTORE_RELEASED), expect_restore_released),
    (Trial("restore", Stage.SAFETY_SNAPSHOT), expect_safety_snapshot),
]


@pytest.mark.parametrize(("trial", "expect"), DETERMINISTIC, ids=[str(t) for t, _ in DETERMINISTIC])
def test_kill_at_named_crash_point(
    trial: Trial,
    expect: Expectation,
    templates: dict[str, Path],
    tmp_path: Path,
    reliability: Recorder,
) -> None:
    row = reliability(
        f"kill -9 at crash point {trial.stage.value} (`{trial.command}`, {trial.journal} "
        f"journal{', hit ' + str(trial.hit) if trial.hit > 1 else ''})",
        trials=1,
        checked="process died there (SIGKILL); live DB integrity ok and unchanged (restore: "
        "entirely old or new); every listed copy ok-and-verifies or missing; earlier backups "
        "kept; lock free; the stage's own leftovers (see details); next command succeeds with "
        "no debris",
        kind="fault",
    )
    world = make_world(trial, tmp_path, templates)
    assert crash(trial, world), f"{trial}: the crash point was never reached"
    infos = check_after_crash(trial, world, str(trial))
    row["detail"] = expect(world, infos)
    recover(trial, world, str(trial))


ROLLBACK_SCRIPT = """
import sqlite3, sys
from pathlib import Path
from tablettracker_backups.restore import restore_backup
from tablettracker_backups.settings import settings_from_mapping

settings = settings_from_mapping({"database": sys.argv[1], "dir": sys.argv[2]})

def fault(target, held):
    (held or sqlite3.connect(target)).execute("DELETE FROM count_sessions WHERE id % 2 = 0")

restore_backup(settings, sys.argv[3], _after_write=fault)
"""


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_kill_while_putting_the_safety_copy_back(
    journal: str, templates: dict[str, Path], tmp_path: Path, reliability: Recorder
) -> None:
    """The rollback after a failed check is a write like the restore's: a kill in the middle
    of it leaves the database wholly in one state, and the data from before in the copy."""
    row = reliability(
        f"kill -9 at crash point restore-rollback (restore with a failed check, {journal} journal)",
        trials=1,
        checked="live DB integrity ok and wholly the state the rollback was undoing; the "
        "complete safety copy named by the record; health critical; the next restore succeeds "
        "and the data from before is kept as a backup",
        kind="fault",
    )
    trial = Trial("restore", Stage.RESTORE_ROLLBACK, journal=journal)
    world = make_world(
        trial, tmp_path, {**templates, f"{journal}-small": templates[f"{journal}-big"]}
    )
    env = {**world.env, ENV: f"{Stage.RESTORE_ROLLBACK.value}:1"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            ROLLBACK_SCRIPT,
            str(world.settings.database),
            str(world.settings.backup_dir),
            world.restore_id,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    db = world.settings.database
    assert integrity(db) == "ok"
    # Wholly the state the rollback was undoing, never a mix: the restored data with the
    # fault's rows deleted (rollback journal: the fault ran on the held connection and
    # committed), or without (WAL: it ran inside the check's own transaction, which the
    # rollback ended first).
    assert fingerprint(db) != world.live_before
    assert (fingerprint(db) == world.restored) == (journal == "wal")
    record = restore_record(world)
    assert record["stage"] == "rollback" and record["safety_copied"] is True
    copy = Path(str(record["safety_copy"]))
    assert fingerprint(copy) == world.live_before
    check_restore_reported(world, str(trial))
    row["detail"] = "live DB wholly the state being rolled back; the old state in the safety copy"
    done = world.run(["restore", world.restore_id, "--yes"], None)
    assert done.returncode == 0, done.stderr
    check_nothing_lost(world, world.store.list(), str(trial))
    assert_no_debris(world.settings.backup_dir, world.settings.secondary_dir)


# -- the slow run: 1,000 seeded random trials ------------------------------------------------

#: Stages each command can reach, with how many times at most (a larger count just lets the
#: command finish: those trials check that an unreached crash point changes nothing).
REACHABLE: dict[str, dict[Stage, int]] = {
    # snapshot-copy: once per snapshot (the template is two backup-API steps); compress: once
    # per 1 MiB chunk (about 6); metadata-write: primary and secondary, plus the re-verify's
    # records in a run; prune-delete: two backups in two folders.
    "backup": {
        Stage.SNAPSHOT_COPY: 1,
        Stage.COMPRESS: 7,
        Stage.DATA_RENAME: 1,
        Stage.METADATA_WRITE: 3,
        Stage.SECONDARY_COPY: 1,
    },
    "run": {
        Stage.SNAPSHOT_COPY: 1,
        Stage.COMPRESS: 7,
        Stage.DATA_RENAME: 1,
        Stage.METADATA_WRITE: 5,
        Stage.SECONDARY_COPY: 1,
        Stage.PRUNE_DELETE: 3,
    },
    "prune": {Stage.PRUNE_DELETE: 5},
    "restore": {
        Stage.RESTORE_HOLD: 1,
        Stage.SAFETY_COPY: 1,
        Stage.COMPRESS: 7,
        Stage.DATA_RENAME: 1,
        Stage.METADATA_WRITE: 3,
        Stage.SECONDARY_COPY: 1,
        Stage.SAFETY_SNAPSHOT: 1,
        Stage.RESTORE_WRITE: 1,
        Stage.RESTORE_POST_CHECK: 1,
        Stage.RESTORE_RELEASED: 1,
    },
}


def draw(rng: random.Random) -> Trial:
    command = rng.choice(sorted(REACHABLE))
    stage = rng.choice(sorted(REACHABLE[command], key=lambda s: s.value))
    return Trial(
        command, stage, rng.randint(1, REACHABLE[command][stage]), rng.choice(["delete", "wal"])
    )


@pytest.mark.slow
def test_random_crash_trials(
    templates: dict[str, Path], tmp_path: Path, reliability: Recorder
) -> None:
    seed = int(os.environ.get("TTB_CRASH_SEED", "20261127"))
    count = int(os.environ.get("TTB_CRASH_TRIALS", "1000"))
    # TTB_CRASH_FROM: start at that trial of the seed's sequence (to run it in slices).
    first = int(os.environ.get("TTB_CRASH_FROM", "0"))
    row = reliability(
        f"kill -9 at a random named crash point (seed {seed}, trials {first}-{first + count - 1})",
        trials=count,
        checked="each trial: as the named-crash-point rows (live DB intact and old/new only, "
        "nothing half-listed, every listed copy verifies, lock free, next run succeeds with no "
        "debris); a crash point not reached changes nothing",
        kind="fault",
    )
    rng = random.Random(seed)
    killed: Counter[str] = Counter()
    finished: Counter[str] = Counter()
    for index in range(first + count):
        trial = draw(rng)
        if index < first:
            continue
        where = f"seed {seed} trial {index}: {trial}"
        root = tmp_path / f"t{index}"
        world = make_world(trial, root, templates)
        label = f"{trial.command}@{trial.stage.value}"
        (killed if crash(trial, world) else finished)[label] += 1
        check_after_crash(trial, world, where)
        recover(trial, world, where)
        shutil.rmtree(root)
    row["detail"] = (
        "killed: "
        + ", ".join(f"{k} {v}" for k, v in sorted(killed.items()))
        + "; crash point not reached (ran to the end): "
        + ", ".join(f"{k} {v}" for k, v in sorted(finished.items()))
    )


COUNTING = """
from tablettracker_backups.crashpoints import Stage, crash_point
for i in range(4):
    crash_point(Stage.COMPRESS)
    print(i, flush=True)
"""


@pytest.mark.parametrize(
    ("setting", "printed", "killed"),
    [
        (None, "0 1 2 3", False),
        ("compress", "", True),
        ("compress:3", "0 1", True),
        ("compress:9", "0 1 2 3", False),
        ("snapshot-copy", "0 1 2 3", False),
    ],
)
def test_the_switch_kills_at_the_named_stage_and_count(
    setting: str | None, printed: str, killed: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["PYTHONPATH"] = str(ROOT)
    if setting is not None:
        env[ENV] = setting
    done = subprocess.run(
        [sys.executable, "-c", COUNTING], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == (-signal.SIGKILL if killed else 0), done.stderr
    assert done.stdout.split() == printed.split()


def test_a_killed_restore_is_cleaned_up_audited_and_dismissed(
    templates: dict[str, Path], tmp_path: Path
) -> None:
    """After a kill: the next run files the safety copy, removes the scratch, says how much it
    freed, and audits the kill; health stays critical until the owner dismisses it."""
    trial = Trial("restore", Stage.RESTORE_RELEASED)
    world = make_world(trial, tmp_path, templates)
    assert crash(trial, world)
    (copy,) = safety_copies(world)
    size = copy.stat().st_size
    done = world.run(["run", "--json"], None)
    assert done.returncode == 2, done.stderr  # the run itself went well; health is critical
    assert "restore-interrupted" in done.stdout
    assert not safety_copies(world)
    (safety,) = pre_restore(world.store.list())
    record = restore_record(world)
    assert record["safety_kept"] == safety.id and record["freed"] >= size
    audit = [
        json.loads(line)
        for line in (world.settings.backup_dir / "audit.jsonl").read_text().splitlines()
    ]
    (killed,) = [a for a in audit if a["details"].get("interrupted")]
    assert killed["ok"] is False and killed["actor"] == "cleanup"
    assert "interrupted at stage released" in killed["message"]
    assert "freed" in killed["message"] and safety.id in killed["message"]
    check_restore_reported(world, "after the run")  # still critical: nobody has looked yet
    done = world.run(["restore", "--dismiss"], None)
    assert done.returncode == 0, done.stderr
    assert "Dismissed the interrupted restore" in done.stdout
    health = json.loads(world.run(["health", "--json"], None).stdout)
    assert "restore-interrupted" not in {f["code"] for f in health["findings"]}
    again = world.run(["restore", "--dismiss"], None)
    assert again.returncode != 0 and "no interrupted restore" in again.stderr

"""Real faults: kill -9 after random delays, a full file system, damaged files, concurrent
writers, clock trouble. Real processes and real files only. Random choices come from a seeded
``random.Random``, but a kill after a delay lands wherever the process happens to be by then
(machine load, a writer's timing), so the kill -9 rows here are not replayable from their seed;
the named crash points in ``test_crashpoints.py`` are the deterministic, replayable version.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tablettracker_backups.errors import LockedError
from tablettracker_backups.health import check_health
from tablettracker_backups.runner import run
from tablettracker_backups.settings import Settings, settings_from_mapping
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_copy
from tests.conftest import make_db
from tests.faultkit import (
    ROOT,
    WriterThread,
    assert_no_debris,
    assert_one_line_error,
    check_live,
    cli_command,
    cli_env,
    folder_state,
    invariant,
    run_cli,
    spawn_cli,
)
from tests.reliability import Recorder

#: Big enough (about 7 MB, several 1 MiB compression chunks) that a backup's stages take long
#: enough to be interrupted; the kills are timed from a measured window, so a bigger file only
#: makes every trial slower. (Either size is one backup-API step of 4096 4 KiB pages.)
BIG_SEED = {
    "purchase_orders": 3000,
    "lines_per_order": 4,
    "sessions_per_line": 2,
    "note_bytes": 200,
}


@pytest.fixture(scope="module")
def big_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The large database, made once per module, in rollback-journal and WAL mode."""
    folder = tmp_path_factory.mktemp("templates")
    delete = make_db(folder / "delete.db", **BIG_SEED)
    wal = folder / "wal.db"
    shutil.copyfile(delete, wal)
    conn = sqlite3.connect(wal)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    return {"delete": delete, "wal": wal}


def live_copy(templates: dict[str, Path], mode: str, folder: Path) -> Path:
    """A private live database copied from a template (nobody writes the template)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "tablet_counter.db"
    shutil.copyfile(templates[mode], target)
    return target


def settings_for(db: Path, root: Path, **extra: object) -> Settings:
    values: dict[str, object] = {
        "database": db,
        "dir": root / "backups",
        "secondary_dir": root / "mirror",
        "lock_timeout": 5,
    }
    values.update(extra)
    return settings_from_mapping(values)


def env_for(settings: Settings, home: Path) -> dict[str, str]:
    return cli_env(
        settings.database,
        settings.backup_dir,
        settings.secondary_dir,
        home=home,
        BACKUPS_LOCK_TIMEOUT="5",
    )


# -- kill -9 ----------------------------------------------------------------------------------


def observe_stage(settings: Settings, before: set[str]) -> str:
    """Name the stage a killed process was in, from what it left behind."""
    primary = folder_state(settings.backup_dir)
    secondary = folder_state(settings.secondary_dir)
    tmp = primary["tmp"] + secondary["tmp"]
    new_ids = set(primary["meta"]) - before
    if any(".verify.db" in name for name in tmp):
        return "re-verify"
    if any(name.endswith((".db.zst", ".db.gz")) for name in primary["tmp"]):
        return "check+compress"
    if any(name.endswith(".db") for name in primary["tmp"]):
        return "snapshot"
    if set(primary["data"]) - set(primary["meta"]):
        return "data committed, no metadata"
    if (
        any(
            name.endswith(".json") and name[5:14].count("-") == 1 and "T" in name
            for name in primary["tmp"]
        )
        and not new_ids
    ):
        return "writing metadata"
    if new_ids and (secondary["tmp"] or new_ids - set(secondary["meta"])):
        return "secondary copy"
    if tmp:
        return "status/other temp file"
    if new_ids:
        return "after commit"
    return "before any file"


def kill_trials(
    templates: dict[str, Path],
    root: Path,
    *,
    command: str,
    mode: str,
    trials: int,
    seed: int,
) -> tuple[Counter[str], int]:
    """Kill ``command`` at random points; check everything after each kill."""
    rng = random.Random(seed)
    db = live_copy(templates, mode, root / "instance")
    settings = settings_for(db, root)
    env = env_for(settings, root)
    store = BackupStore(settings)
    with sqlite3.connect(db) as conn:
        expected = invariant(conn)
    writer = WriterThread(db, seed).start()
    stages: Counter[str] = Counter()
    debris_trials = 0
    args = [command] + (["--force"] if command == "run" else [])
    try:
        # Calibrate: how long the work takes once its first temporary file exists.
        window = 0.0
        for _ in range(2):
            started = time.monotonic()
            proc = spawn_cli(args, env)
            first = _wait_for_temp(proc, settings.backup_dir)
            proc.communicate(timeout=120)
            assert proc.returncode in (0, 1), proc.returncode
            window = max(window, time.monotonic() - (first or started))
        for trial in range(trials):
            where = f"{command}/{mode} seed={seed} trial={trial}"
            before = set(folder_state(settings.backup_dir)["meta"])
            proc = spawn_cli(args, env)
            if rng.random() < 0.2:
                # Anywhere from start-up to the end: imports, settings, lock, cleanup.
                time.sleep(rng.uniform(0.0, 0.6))
            else:
                _wait_for_temp(proc, settings.backup_dir)
                time.sleep(rng.uniform(0.0, window * 1.2))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=120)
            if proc.returncode == -signal.SIGKILL:
                stage = observe_stage(settings, before)
            else:
                assert proc.returncode in (0, 1), (where, out, err)
                stage = "finished before the kill"
            stages[stage] += 1
            _check_after_kill(settings, store, writer, expected, before, where)
            if (
                folder_state(settings.backup_dir)["tmp"]
                or folder_state(settings.secondary_dir)["tmp"]
            ):
                debris_trials += 1
            # The next run cleans up and succeeds (in-process: the same code the CLI calls).
            result = run(settings, force=True)
            assert result.error is None, (where, result.error)
            assert result.backup is not None, where
            assert_no_debris(settings.backup_dir, settings.secondary_dir)
    finally:
        writer.stop()
    assert not writer.errors, writer.errors
    assert len(writer.committed) > 0
    check_live(db, writer.committed, expected)
    return stages, debris_trials


def _wait_for_temp(proc: object, directory: Path, limit: float = 30.0) -> float | None:
    """Wait until the process has created its first temporary file (or exited)."""
    import subprocess

    assert isinstance(proc, subprocess.Popen)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if any(name.startswith(".tmp-") for name in os.listdir(directory)):
                return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    return None


def _check_after_kill(
    settings: Settings,
    store: BackupStore,
    writer: WriterThread,
    expected: int,
    before: set[str],
    where: str,
) -> None:
    # Live database: intact, every transaction committed so far is there, totals balance.
    check_live(settings.database, list(writer.committed), expected)
    # Nothing partial is listed or counted: every listed backup is complete and verified.
    infos = store.list()
    for info in infos:
        assert info.metadata is not None, (where, info)
        assert info.verified, (where, info)
        # Each copy is complete or absent (a copy can be absent when the kill came between
        # the secondary copy and its commit, or between two folders' deletions by prune).
        states = {c.state for c in info.copies}
        assert states <= {"ok", "missing"} and "ok" in states, (where, info)
    for info in infos:
        if info.id not in before:
            assert verify_copy(store, "primary", info.id).ok, (where, info.id)
        elif info.copy_state("primary") == "missing":  # half-way through prune's deletion
            assert verify_copy(store, "secondary", info.id).ok, (where, info.id)
    report = check_health(settings)
    assert report.backup_count == len(infos), where
    assert report.status in ("ok", "warning"), (where, report.findings)
    # Nothing killed leaves the lock held: a new operation gets it at once.
    from tablettracker_backups.locking import is_locked

    assert not is_locked(settings), where


@pytest.mark.parametrize(
    ("command", "mode", "trials", "seed"),
    [
        ("backup", "delete", 15, 101),
        ("backup", "wal", 15, 202),
        ("run", "delete", 12, 303),
        ("run", "wal", 12, 404),
    ],
)
def test_kill_9_at_random_points(
    big_templates: dict[str, Path],
    tmp_path: Path,
    reliability: Recorder,
    command: str,
    mode: str,
    trials: int,
    seed: int,
) -> None:
    row = reliability(
        f"kill -9 `{command}` after a random delay ({mode} journal, writer committing; "
        "timing-dependent, not replayable)",
        trials=trials,
        checked="live DB integrity_check + every committed row + totals balance; only complete "
        "verified backups listed/counted; lock free; next run cleans .tmp-*/orphans and succeeds",
        detail=f"seed {seed}",
    )
    stages, debris = kill_trials(
        big_templates, tmp_path, command=command, mode=mode, trials=trials, seed=seed
    )
    assert sum(stages.values()) == trials
    row["detail"] = (
        f"delays seeded {seed}; left behind (classified after each kill): "
        + ", ".join(f"{k} {v}" for k, v in sorted(stages.items()))
        + f"; debris left and cleaned in {debris}"
    )


def test_lock_is_exclusive_while_held(tmp_path: Path) -> None:
    db = make_db(tmp_path / "t.db")
    settings = settings_for(db, tmp_path, lock_timeout=0)
    from tablettracker_backups.locking import operation_lock

    with operation_lock(settings), pytest.raises(LockedError):
        run(settings)


# -- a file system that fills up mid-backup ---------------------------------------------------


def grow(db: Path, rng: random.Random, size: int) -> None:
    """Add about ``size`` bytes of hard-to-compress notes to the live database."""
    conn = sqlite3.connect(db)
    with conn:
        for _ in range(max(1, size // 2000)):
            write_one_note = rng.randbytes(1000).hex()
            conn.execute(
                "INSERT INTO count_sessions (po_line_id, employee_id, counted_at,"
                " tablets_counted, notes) VALUES (1, 1, '2026-11-25', 0, ?)",
                (write_one_note,),
            )
    conn.close()


def fill(path: Path) -> None:
    """Fill the file system holding ``path`` to the last byte."""
    with path.open("wb", buffering=0) as handle:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                continue


def digests(directory: Path) -> dict[str, str]:
    import hashlib

    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.split(".")[0][:2] == "20"
    }


@pytest.mark.parametrize(("command", "seed"), [("backup", 11), ("backup", 12), ("run", 13)])
def test_backup_folder_fills_up(
    tiny_fs: tuple[Path, str], tmp_path: Path, reliability: Recorder, command: str, seed: int
) -> None:
    mount_point, how = tiny_fs
    row = reliability(
        f"backup folder on a full file system ({how}, `{command}`)",
        trials=1,
        checked="exit 2 + one-line 'no space' error, no traceback; no .tmp-*/orphan left; "
        "older backups byte-identical and verify; health critical; after freeing space the "
        "next backup succeeds",
        detail=f"seed {seed}",
    )
    rng = random.Random(seed)
    db = make_db(tmp_path / "instance.db")
    backups = mount_point / "backups"
    env = cli_env(db, backups, None, home=tmp_path)
    preexec = None
    if how == "rlimit":  # pragma: no cover - only where mounting is not allowed
        import resource

        def preexec() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, 2 * 2**20))

    taken = 0
    for _ in range(40):
        result = subprocess.run(
            cli_command(command, *(["--force"] if command == "run" else [])),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            preexec_fn=preexec,
        )
        if result.returncode == 2:
            break
        assert result.returncode in (0, 1), result.stdout + result.stderr
        taken += 1
        before = digests(backups)
        grow(db, rng, rng.randint(200_000, 900_000))
    else:
        pytest.fail("the file system never filled up")
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert "no space left" in errors[0] or "size limit" in errors[0], errors[0]
    if command == "backup":
        assert result.stderr.strip() == errors[0], output
    assert taken >= 1
    # Nothing partial, older backups untouched and still sound.
    assert_no_debris(backups)
    assert digests(backups) == before
    settings = settings_from_mapping({"database": db, "dir": backups})
    store = BackupStore(settings)
    # (run prunes as it goes, so compare with what was there before the failed attempt)
    assert {i.id for i in store.list()} == {n.split(".")[0] for n in before}
    for info in store.list():
        assert verify_copy(store, "primary", info.id).ok, info.id
    health = run_cli(["health", "--json"], env)
    assert health.returncode == 2, health.stdout + health.stderr
    assert "Traceback" not in health.stderr
    assert json.loads(health.stdout)["status"] == "critical"
    # Make room (drop the bulky rows, as a person archiving data would): backups work again.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM count_sessions WHERE length(notes) > 1000")
    conn.execute("VACUUM")
    conn.close()
    again = run_cli(["backup"], env)
    assert again.returncode == 0, again.stderr
    assert_no_debris(backups)
    shown = errors[0].replace(str(mount_point), "<tiny>")
    row["detail"] = (
        f"seed {seed}; {taken} backups fitted, then: {shown[:110]}; "
        f"health {json.loads(health.stdout)['status']}"
    )


def test_full_file_system_still_reports_health(
    full_fs: Path, tmp_path: Path, reliability: Recorder
) -> None:
    mount_point = full_fs
    row = reliability(
        "backup folder 100% full (health, status, list)",
        trials=3,
        checked="health/status/list still answer (no traceback), health exit 2 critical",
    )
    db = make_db(tmp_path / "instance.db")
    backups = mount_point / "backups"
    env = cli_env(db, backups, None, home=tmp_path)
    assert run_cli(["backup"], env).returncode == 0
    fill(mount_point / "filler")
    outputs = {}
    for args in (["health", "--json"], ["status"], ["list"]):
        result = run_cli(args, env)
        outputs[args[0]] = result
        assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert outputs["list"].returncode == 0
    assert outputs["health"].returncode == 2
    assert json.loads(outputs["health"].stdout)["status"] == "critical"
    assert outputs["status"].returncode == 2
    finding = [
        f["message"]
        for f in json.loads(outputs["health"].stdout)["findings"]
        if f["level"] == "critical"
    ]
    row["detail"] = "critical: " + "; ".join(finding).replace(str(mount_point), "<tiny>")[:160]


def test_secondary_folder_fills_up(full_fs: Path, tmp_path: Path, reliability: Recorder) -> None:
    mount_point = full_fs
    row = reliability(
        "secondary folder on a full file system",
        trials=1,
        checked="backup still stored in primary, exit 1 with a warning naming the secondary "
        "copy; nothing partial in the secondary folder; list marks the copy missing",
    )
    db = make_db(tmp_path / "instance.db")
    fill(mount_point / "filler")
    env = cli_env(db, tmp_path / "backups", mount_point / "mirror", home=tmp_path)
    result = run_cli(["backup"], env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "secondary copy failed" in result.stderr and "no space left" in result.stderr
    assert_no_debris(tmp_path / "backups", mount_point / "mirror")
    listed = json.loads(run_cli(["list", "--json"], env).stdout)
    assert listed[0]["copies"] == {"primary": "ok", "secondary": "missing"}
    row["detail"] = result.stderr.strip().replace(str(mount_point), "<tiny>")[:160]


# -- damaged backups --------------------------------------------------------------------------

DAMAGE = {
    # kind: (what the verify output must name, the file damaged)
    "flipped byte": ("SHA-256 does not match", "data"),
    "truncated": ("bytes, metadata says", "data"),
    "data file deleted": ("missing", "data"),
    "metadata not JSON": ("not valid JSON", "meta"),
    "metadata points at another file": ("points at another file", "meta"),
    "metadata names another backup": ("names backup", "meta"),
}


def damage(kind: str, folder: Path, victim: str, other: str, rng: random.Random) -> None:
    """Damage one copy of backup ``victim`` the way ``kind`` says."""
    data = folder / f"{victim}.db.zst"
    meta = folder / f"{victim}.json"
    if kind == "flipped byte":
        raw = bytearray(data.read_bytes())
        offset = rng.randrange(len(raw))
        raw[offset] ^= 1 << rng.randrange(8)
        data.write_bytes(bytes(raw))
    elif kind == "truncated":
        raw = data.read_bytes()
        data.write_bytes(raw[: rng.randrange(len(raw))])
    elif kind == "data file deleted":
        data.unlink()
    elif kind == "metadata not JSON":
        meta.write_bytes(b'{"id": "' + rng.randbytes(20).hex().encode())
    elif kind == "metadata points at another file":
        document = json.loads(meta.read_text())
        document["data_file"] = f"{other}.db.zst"
        meta.write_text(json.dumps(document))
    elif kind == "metadata names another backup":
        meta.write_bytes((folder / f"{other}.json").read_bytes())
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", list(DAMAGE))
@pytest.mark.parametrize("scope", ["primary", "both"])
def test_damaged_backup(tmp_path: Path, reliability: Recorder, kind: str, scope: str) -> None:
    needle, _ = DAMAGE[kind]
    reliability(
        f"damaged backup: {kind} ({'one copy' if scope == 'primary' else 'every copy'})",
        trials=1,
        checked="prune right after the damage keeps a backup that fully verifies; verify names "
        "the problem (exit 1 one copy / 2 every copy); list exit 0 and marks it; restore uses "
        "the other copy, or refuses in one line leaving the DB unchanged; a later run succeeds",
    )
    rng = random.Random(f"{kind}/{scope}")
    db = make_db(tmp_path / "instance.db")
    settings = settings_for(db, tmp_path)
    env = env_for(settings, tmp_path)
    from tablettracker_backups.backup import create_backup

    ids = [create_backup(settings).metadata.id for _ in range(3)]
    victim, other = ids[-1], ids[-2]
    folders = [settings.backup_dir] + ([settings.secondary_dir] if scope == "both" else [])
    for folder in folders:
        assert folder is not None
        damage(kind, folder, victim, other, rng)

    # Prune (default retention: all three share one hour) before anyone verified anything.
    pruned = run_cli(["prune", "--json"], env)
    assert pruned.returncode == 0, pruned.stderr
    store = BackupStore(settings)
    from tablettracker_backups.verify import verify_backup

    remaining = store.ids()
    assert any(verify_backup(store, one).usable for one in remaining), (
        f"prune left no sound backup: kept {remaining}, deleted "
        f"{json.loads(pruned.stdout)['deleted']}"
    )

    checked = run_cli(["verify", victim], env)
    output = checked.stdout + checked.stderr
    assert "Traceback" not in output, output
    assert checked.returncode == (1 if scope == "primary" else 2), output
    assert needle.lower() in output.lower(), output

    listed = run_cli(["list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    entry = next(e for e in json.loads(listed.stdout) if e["id"] == victim)
    assert entry["problems"], entry
    if scope == "both":
        assert entry["verified"] is False, entry
    human = run_cli(["list"], env)
    assert human.returncode == 0 and "!" in human.stdout, human.stdout

    # Restore uses the sound copy, or refuses and leaves the database alone.
    before = db_state(db)
    restored = run_cli(["restore", victim, "--yes", "--json"], env)
    assert "Traceback" not in restored.stdout + restored.stderr, restored.stderr
    if scope == "primary":
        assert restored.returncode in (0, 1), restored.stderr  # 1: it fell back
        assert json.loads(restored.stdout)["source_location"] == "secondary", restored.stdout
    else:
        assert_one_line_error(restored)
        assert db_state(db) == before

    result = run(settings, force=True)
    assert result.error is None, result.error
    assert any(verify_backup(store, one).usable for one in store.ids())


# -- concurrency ------------------------------------------------------------------------------


def snapshot_state(settings: Settings, backup_id: str, scratch: Path) -> tuple[int, int]:
    """(invariant, count_sessions rows) inside a stored backup, after a full extract+verify."""
    from tablettracker_backups.extract import extract_verified

    store = BackupStore(settings)
    meta = store.read_metadata("primary", backup_id)
    target = scratch / f"{backup_id}.db"
    extract_verified(store.data_path("primary", backup_id, meta.compression), meta, target)
    conn = sqlite3.connect(target)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = conn.execute("SELECT count(*) FROM count_sessions").fetchone()[0]
        return invariant(conn), int(rows)
    finally:
        conn.close()
        target.unlink()


@pytest.mark.parametrize(("mode", "seed"), [("delete", 501), ("wal", 502)])
def test_backups_are_consistent_snapshots_under_writers(
    big_templates: dict[str, Path], tmp_path: Path, reliability: Recorder, mode: str, seed: int
) -> None:
    row = reliability(
        f"3 writer processes committing during backups ({mode} journal)",
        trials=0,
        checked="every backup: integrity_check ok and received-minus-counted totals (two "
        "tables) balance exactly as in the live DB; rows only grow; two backups at once: one "
        "waits for the other; live DB keeps every committed transaction",
    )
    from tests.faultkit import spawn_writer, stop_writers

    db = live_copy(big_templates, mode, tmp_path / "instance")
    settings = settings_for(db, tmp_path)
    env = env_for(settings, tmp_path)
    with sqlite3.connect(db) as conn:
        expected = invariant(conn)
    stop = tmp_path / "stop"
    writers = [spawn_writer(db, seed * 10 + n, stop) for n in range(3)]
    outcomes: list[int] = []
    try:
        for _ in range(4):
            outcomes.append(run_cli(["backup"], env).returncode)
        pair = [spawn_cli(["backup"], env) for _ in range(2)]
        for proc in pair:
            proc.communicate(timeout=120)
            outcomes.append(proc.returncode)
    finally:
        committed = stop_writers(writers, stop)
    assert outcomes == [0] * len(outcomes), outcomes
    assert len(committed) > 10
    check_live(db, committed, expected)
    # Oldest first by time: two backups in one second have ids ordered by their random part.
    ids = [info.id for info in reversed(BackupStore(settings).list())]
    assert len(ids) == len(outcomes)
    counts = []
    for backup_id in ids:
        balance, rows = snapshot_state(settings, backup_id, tmp_path)
        assert balance == expected, backup_id
        counts.append(rows)
    assert counts == sorted(counts)
    row["trials"] = len(ids)
    row["detail"] = f"seed {seed}; {len(committed)} writer commits; rows per backup {counts}"


@pytest.mark.parametrize(("lock_timeout", "seed"), [("0", 601), ("60", 602)])
def test_runs_at_once(tmp_path: Path, reliability: Recorder, lock_timeout: str, seed: int) -> None:
    rounds, width = 4, 3
    row = reliability(
        f"{width} `run`s started at once, lock timeout {lock_timeout}s, writers committing",
        trials=rounds * width,
        checked="all finish (no deadlock); each exits 0/1, or 3 with one line 'Busy: ...'; "
        "at least one backs up per round; no debris; every backup verifies; live DB intact",
    )
    from tablettracker_backups.verify import verify_backup
    from tests.faultkit import spawn_writer, stop_writers

    db = make_db(tmp_path / "instance.db", purchase_orders=400)
    settings = settings_for(db, tmp_path)
    env = cli_env(
        db,
        settings.backup_dir,
        settings.secondary_dir,
        home=tmp_path,
        BACKUPS_LOCK_TIMEOUT=lock_timeout,
    )
    with sqlite3.connect(db) as conn:
        expected = invariant(conn)
    stop = tmp_path / "stop"
    writers = [spawn_writer(db, seed * 10 + n, stop) for n in range(2)]
    codes: Counter[int] = Counter()
    try:
        for _ in range(rounds):
            procs = [spawn_cli(["run", "--force"], env) for _ in range(width)]
            results = []
            for proc in procs:
                out, err = proc.communicate(timeout=120)
                results.append((proc.returncode, out.decode(), err.decode()))
            assert any(code in (0, 1) for code, _, _ in results), results
            for code, out, err in results:
                codes[code] += 1
                assert "Traceback" not in out + err, err
                assert code in (0, 1, 3), (code, out, err)
                if code == 3:
                    assert err.strip().startswith("Busy: "), err
                    assert len(err.strip().splitlines()) == 1, err
                    assert out == "", out
                else:
                    assert "Backed up:" in out, out
    finally:
        committed = stop_writers(writers, stop)
    check_live(db, committed, expected)
    assert_no_debris(settings.backup_dir, settings.secondary_dir)
    store = BackupStore(settings)
    for backup_id in store.ids():
        assert verify_backup(store, backup_id).ok, backup_id
    if float(lock_timeout) >= 60:
        assert codes[3] == 0, codes  # they waited their turn
    row["detail"] = "exit codes: " + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))


# -- clock trouble ----------------------------------------------------------------------------


def redate(settings: Settings, backup_id: str, when: datetime) -> str:
    """Make a real backup look as if the clock said ``when`` when it was taken."""
    from tablettracker_backups.metadata import utc_iso

    new_id = f"{when.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}{backup_id[16:]}"
    for folder in settings.locations:
        meta = folder / f"{backup_id}.json"
        if not meta.exists():
            continue
        document = json.loads(meta.read_text())
        document["id"] = new_id
        document["created_at"] = utc_iso(when)
        document["data_file"] = f"{new_id}.db.zst"
        (folder / f"{backup_id}.db.zst").rename(folder / f"{new_id}.db.zst")
        (folder / f"{new_id}.json").write_text(json.dumps(document))
        meta.unlink()
    return new_id


def test_backup_dated_in_the_future(tmp_path: Path, reliability: Recorder) -> None:
    row = reliability(
        "backup dated in the future (clock jumped ahead once)",
        trials=4,
        checked="run still backs up when due; no good backup deleted by 4 runs; the future "
        "backup is kept and verifies; health warns about the clock (exit 1)",
    )
    from tablettracker_backups.backup import create_backup

    db = make_db(tmp_path / "instance.db")
    settings = settings_for(db, tmp_path)
    env = env_for(settings, tmp_path)
    real = [create_backup(settings).metadata.id for _ in range(2)]
    future = redate(
        settings,
        create_backup(settings).metadata.id,
        datetime.now(timezone.utc) + timedelta(days=400),
    )
    for _ in range(4):
        result = run_cli(["run", "--json"], env)
        assert result.returncode in (0, 1), result.stderr
        document = json.loads(result.stdout)
        assert document["backup"] is not None, "a future-dated backup made run skip"
        real.append(document["backup"]["id"])
        present = set(BackupStore(settings).ids())
        assert future in present
        assert real[-1] in present
    from tablettracker_backups.verify import verify_backup

    assert verify_backup(BackupStore(settings), future).ok
    health = run_cli(["health", "--json"], env)
    findings = json.loads(health.stdout)["findings"]
    assert health.returncode == 1, findings
    assert any(f["code"] == "clock" for f in findings), findings
    row["detail"] = (
        f"kept {len(BackupStore(settings).ids())} of {len(real) + 1}; "
        + next(f["message"] for f in findings if f["code"] == "clock")[:120]
    )


def test_clock_went_backwards(tmp_path: Path, reliability: Recorder) -> None:
    hours = 26
    row = reliability(
        f"clock went back a day ({hours} hourly backups now dated in the future)",
        trials=4,
        checked="4 scheduled runs after the jump: nothing is deleted while any backup is dated "
        "in the future (those from before the jump and those taken after it); health warns "
        "about the clock",
    )
    from tablettracker_backups.backup import create_backup

    db = make_db(tmp_path / "instance.db")
    settings = settings_for(db, tmp_path)
    env = env_for(settings, tmp_path)
    now = datetime.now(timezone.utc)
    ahead = [
        redate(settings, create_backup(settings).metadata.id, now + timedelta(hours=h + 1))
        for h in range(hours)
    ]
    taken: list[str] = []
    for _ in range(4):
        result = run_cli(["run", "--force", "--json"], env)
        assert result.returncode in (0, 1), result.stderr
        taken.append(json.loads(result.stdout)["backup"]["id"])
        present = set(BackupStore(settings).ids())
        lost = [b for b in ahead + taken if b not in present]
        assert not lost, f"deleted during clock trouble: {lost}"
    health = run_cli(["health", "--json"], env)
    findings = json.loads(health.stdout)["findings"]
    assert any(f["code"] == "clock" for f in findings), findings
    row["detail"] = (
        f"{len(ahead)} future-dated and {len(taken)} real backups, all kept; "
        f"health exit {health.returncode}"
    )


# -- kill -9 a restore ------------------------------------------------------------------------


def db_state(database: Path) -> tuple[object, ...]:
    """What identifies a database's content: integrity, row counts, a content checksum."""
    conn = sqlite3.connect(database, timeout=60)
    try:
        # Opening read-write rolls back a hot journal, as the app's next connection would.
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        assert integrity == [("ok",)], integrity
        conn.execute("BEGIN")
        counts = tuple(
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("po_lines", "count_sessions", "purchase_orders", "employees")
        )
        checksum = conn.execute(
            "SELECT total(tablets_counted * id), group_concat(substr(notes, 1, 1), '') "
            "FROM (SELECT * FROM count_sessions ORDER BY id DESC LIMIT 200)"
        ).fetchone()
        conn.execute("ROLLBACK")
        return (*counts, *checksum)
    finally:
        conn.close()


def make_old_state(database: Path) -> None:
    """Turn the live database into an 'old' state clearly different from the backup."""
    conn = sqlite3.connect(database)
    with conn:
        conn.execute("DELETE FROM count_sessions WHERE id % 3 = 0")
        conn.execute("UPDATE count_sessions SET notes = 'OLD' || notes WHERE id % 7 = 1")
        conn.execute(
            "INSERT INTO employees (username, full_name, password_hash) "
            "VALUES ('old-only', 'Old State', '')"
        )
    conn.close()


@pytest.mark.parametrize(("mode", "trials", "seed"), [("delete", 12, 701), ("wal", 12, 702)])
def test_kill_9_restore_at_random_points(
    big_templates: dict[str, Path],
    tmp_path: Path,
    reliability: Recorder,
    mode: str,
    trials: int,
    seed: int,
) -> None:
    row = reliability(
        f"kill -9 `restore --yes` after a random delay ({mode} journal; timing-dependent, not "
        "replayable)",
        trials=trials,
        checked="live DB passes integrity_check and is entirely the old or entirely the new "
        "state (row counts + content checksum); once anything was written, a verified "
        "pre-restore safety snapshot of the old state exists; lock free; the next restore "
        "cleans up and succeeds",
        detail=f"seed {seed}",
    )
    from tablettracker_backups.backup import create_backup
    from tablettracker_backups.locking import is_locked
    from tablettracker_backups.restore import restore_backup
    from tablettracker_backups.verify import verify_copy

    rng = random.Random(seed)
    db = live_copy(big_templates, mode, tmp_path / "instance")
    settings = settings_for(db, tmp_path)
    env = env_for(settings, tmp_path)
    backup_id = create_backup(settings).metadata.id
    new_state = db_state(db)
    make_old_state(db)
    old_state = db_state(db)
    assert old_state != new_state
    old_template = tmp_path / "old.db"
    shutil.copyfile(db, old_template)  # nobody has the live database open here

    def reset() -> None:
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(old_template, db)

    args = ["restore", backup_id, "--yes"]
    window = 0.0
    for _ in range(2):  # calibrate, and check a whole restore works
        started = time.monotonic()
        proc = spawn_cli(args, env)
        first = _wait_for_temp(proc, settings.backup_dir)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        window = max(window, time.monotonic() - (first or started))
        assert db_state(db) == new_state
        reset()
    outcomes: Counter[str] = Counter()
    for trial in range(trials):
        where = f"restore/{mode} seed={seed} trial={trial}"
        safety_before = {i.id for i in BackupStore(settings).list() if i.kind == "pre-restore"}
        proc = spawn_cli(args, env)
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            _wait_for_temp(proc, settings.backup_dir)
            time.sleep(rng.uniform(0.0, window * 1.1))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=120)
        killed = proc.returncode == -signal.SIGKILL
        assert killed or proc.returncode == 0, (where, proc.returncode)
        journal = Path(f"{db}-journal")
        hot = journal.exists() and journal.stat().st_size > 0
        state = db_state(db)
        assert state in (old_state, new_state), where
        store = BackupStore(settings)
        new_safety = [
            i for i in store.list() if i.kind == "pre-restore" and i.id not in safety_before
        ]
        record_path = settings.backup_dir / "restore-intent.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else None
        if state == new_state:
            # The old state is safe: filed as a safety snapshot, or (killed before filing it)
            # in the complete safety copy the restore's record names.
            if not new_safety:
                assert record is not None and record["safety_copied"], where
                assert db_state(Path(record["safety_copy"])) == old_state, where
            else:
                assert verify_copy(store, "primary", new_safety[0].id).ok, where
        for info in new_safety:  # a safety snapshot holds the old state
            assert info.metadata is not None
            assert info.metadata.row_counts["employees"] == old_state[3], where
        for info in store.list():
            assert info.verified and info.copy_state("primary") == "ok", (where, info)
        assert not is_locked(settings), where
        label = ("old" if state == old_state else "new") + (
            " (killed)" if killed else " (finished first)"
        )
        if state == old_state and new_safety:
            label += ", safety snapshot taken"
        if record is not None:
            label += f", killed at {record['stage']}"
        if hot:
            label += ", hot journal rolled back"
        outcomes[label] += 1
        # The next restore cleans up after the killed one (filing its safety copy) and
        # succeeds; the old state is then in a safety snapshot whatever the kill hit.
        restore_backup(settings, backup_id)
        assert db_state(db) == new_state, where
        assert_no_debris(settings.backup_dir, settings.secondary_dir)
        held = [
            i.metadata.row_counts["employees"]
            for i in BackupStore(settings).list()
            if i.kind == "pre-restore" and i.id not in safety_before and i.metadata
        ]
        assert old_state[3] in held, where
        reset()
    row["detail"] = f"seed {seed}; " + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))


def test_web_backup_and_runs_at_once(demo_app: object, reliability: Recorder) -> None:
    from flask import Flask

    from tablettracker_backups.verify import verify_backup
    from tablettracker_backups.web.extension import get_state
    from tablettracker_backups.web.views import BLUEPRINT
    from tests.conftest import csrf_from, login, wait_for_job

    assert isinstance(demo_app, Flask)
    rounds = 3
    row = reliability(
        "web-triggered backup and two `run`s started at once",
        trials=rounds * 3,
        checked="no deadlock; the web answers 303 (job) or 409 with a clear busy message, and "
        "its job ends done or failed saying another operation runs; runs wait and succeed; no "
        "debris; every backup verifies; live DB intact",
    )
    with demo_app.app_context():
        settings = get_state().settings
    rules = {r.endpoint: r.rule for r in demo_app.url_map.iter_rules()}
    admin = demo_app.test_client()
    login(admin, "admin", demo_app.config["DEMO_PASSWORD"])
    token = csrf_from(admin.get(rules[f"{BLUEPRINT}.dashboard"]).get_data(as_text=True))
    env = cli_env(
        settings.database,
        settings.backup_dir,
        settings.secondary_dir,
        home=settings.database.parent,
        BACKUPS_LOCK_TIMEOUT="60",
    )
    outcomes: Counter[str] = Counter()
    from tablettracker_backups.locking import is_locked

    for round_ in range(rounds):
        procs = [spawn_cli(["run", "--force"], env) for _ in range(2)]
        if round_ > 0:  # post while a run holds the lock (the first round races them)
            deadline = time.monotonic() + 60
            while not is_locked(settings) and time.monotonic() < deadline:
                time.sleep(0.005)
        response = admin.post(rules[f"{BLUEPRINT}.backup_now"], data={"csrf_token": token})
        if response.status_code == 409:
            assert "another" in response.get_data(as_text=True)
            outcomes["web: 409 busy"] += 1
        else:
            assert response.status_code == 303, response.status_code
            job_id = response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
            job = wait_for_job(settings, job_id)
            if job.state == "done":
                outcomes["web: job done"] += 1
            else:
                assert "another" in job.message or "progress" in job.message, job.message
                outcomes["web: job refused (busy)"] += 1
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode in (0, 1), err
            assert b"Traceback" not in out + err
            outcomes["run: ok"] += 1
    assert_no_debris(settings.backup_dir, settings.secondary_dir)
    store = BackupStore(settings)
    for backup_id in store.ids():
        assert verify_backup(store, backup_id).ok, backup_id
    with sqlite3.connect(settings.database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    row["detail"] = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))


@pytest.mark.parametrize("room", ["none", "for the check, not the safety snapshot"])
def test_restore_with_a_full_backup_folder(
    full_fs: Path, tmp_path: Path, reliability: Recorder, room: str
) -> None:
    mount_point = full_fs
    checking = room == "none"
    row = reliability(
        "restore while the backup folder is full: "
        + (
            "no room to check the backup"
            if checking
            else "room to check the backup, none for the pre-restore safety snapshot"
        ),
        trials=1,
        checked="exit 2 with one line saying nothing was changed and naming the failed step ("
        + (
            "the restore's record: 'could not record the restore', not 'no sound copy'"
            if checking
            else "'could not take a safety snapshot'"
        )
        + "); live DB unchanged and intact; no debris; after freeing space the restore works",
    )
    db = make_db(tmp_path / "instance.db")
    backups = mount_point / "backups"
    env = cli_env(db, backups, None, home=tmp_path)
    taken = run_cli(["backup", "--json"], env)
    assert taken.returncode == 0, taken.stderr
    backup_id = json.loads(taken.stdout)["id"]
    make_old_state(db)
    before = db_state(db)
    if checking:
        fill(mount_point / "filler")
    else:
        # Leave room for the checked copy of the backup (its raw size) and 64 KiB more: the
        # check passes, and the safety snapshot of the (as large) live database cannot fit.
        raw = json.loads(taken.stdout)["raw_size"]
        stats = os.statvfs(mount_point)
        spare = stats.f_bavail * stats.f_frsize - raw - 64 * 1024
        assert spare > 0 and db.stat().st_size > 64 * 1024
        with (mount_point / "filler").open("wb") as filler:
            filler.write(b"\0" * spare)
    result = run_cli(["restore", backup_id, "--yes"], env)
    if checking:
        line = assert_one_line_error(result, "nothing was changed", "no space left")
        assert "could not record the restore" in line and "no sound copy" not in line, line
    else:
        line = assert_one_line_error(result, "nothing was changed", "no space left")
        assert "could not take a safety snapshot" in line, line
    assert db_state(db) == before
    (mount_point / "filler").unlink()
    assert_no_debris(backups)
    again = run_cli(["restore", backup_id, "--yes"], env)
    assert again.returncode == 0, again.stderr
    assert db_state(db) != before
    row["detail"] = line.replace(str(mount_point), "<tiny>").replace(str(tmp_path), "")[:200]


# -- kill -9 during the offsite upload --------------------------------------------------------


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The real S3 server the offsite tests use (SeaweedFS), stopped by its pid afterwards."""
    from tests.s3kit import SeaweedServer, weed_binary

    binary = weed_binary()
    probe = subprocess.run([binary, "version"], capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:  # pragma: no cover - other platforms
        pytest.skip("the weed binary cannot run here")
    server = SeaweedServer(binary, tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_kill_9_run_at_each_offsite_part_upload(
    seaweed: object, tmp_path: Path, reliability: Recorder
) -> None:
    from tablettracker_backups.crashpoints import ENV, Stage
    from tablettracker_backups.offsite.client import OffsiteStore
    from tablettracker_backups.offsite.sync import verify_offsite
    from tests.test_offsite import ACCESS_KEY, BUCKET, SECRET_KEY, _big_incompressible_db

    # A 12 MiB backup goes up in three 5 MiB parts; a named crash point kills at the same place
    # every time, so each part is killed after once (a second round repeated the same cases).
    hits = (1, 2, 3)
    row = reliability(
        "kill -9 `run` at the offsite-part-upload crash point (after part 1, 2 or 3 of 3), "
        "real SeaweedFS server, multipart",
        trials=len(hits),
        checked="killed there each time (SIGKILL); no incomplete copy is listed offsite and "
        "every complete one reads back and verifies; the next run uploads what was missed, "
        "aborts the leftover multipart upload, removes orphan objects, and is not behind; "
        "local backups all verified, no local debris",
    )
    db = tmp_path / "instance" / "tablet_counter.db"
    db.parent.mkdir()
    _big_incompressible_db(db, 12 * 2**20)
    s3 = {
        "s3_bucket": BUCKET,
        "s3_endpoint_url": seaweed.endpoint,  # type: ignore[attr-defined]
        "s3_prefix": "kill-parts/",
        "s3_region": "us-east-1",
        "s3_addressing_style": "path",
        "s3_access_key_id": ACCESS_KEY,
        "s3_secret_access_key": SECRET_KEY,
        "s3_multipart_threshold": "5MiB",
        "s3_multipart_chunksize": "5MiB",
    }
    settings = settings_for(db, tmp_path, **s3)
    env = env_for(settings, tmp_path)
    env.update({f"BACKUPS_{k.upper()}": str(v) for k, v in s3.items()})
    offsite = OffsiteStore.from_settings(settings)
    outcomes: Counter[str] = Counter()
    for trial, hit in enumerate(hits):
        where = f"offsite trial {trial}, part {hit}"
        result = run_cli(
            ["run", "--force"], {**env, ENV: f"{Stage.OFFSITE_PART_UPLOAD.value}:{hit}"}
        )
        assert result.returncode == -signal.SIGKILL, (where, result.returncode, result.stderr)
        newest = BackupStore(settings).list()[0].id  # committed locally, upload killed
        complete = [o for o in offsite.list() if o.complete]
        assert newest not in [o.id for o in complete], where
        parts = _pending_multipart(seaweed, settings)
        outcomes[f"after part {hit}: multipart upload left" if parts else f"after part {hit}"] += 1
        # What the listing calls complete reads back and verifies.
        for checked in verify_offsite(settings, [o.id for o in complete]):
            assert checked.ok, (where, checked)
        # The next run catches up and cleans up.
        caught_up = run(settings)
        assert caught_up.error is None, (where, caught_up.error)
        assert caught_up.offsite is not None and caught_up.offsite.ok, (where, caught_up.offsite)
        assert caught_up.health.offsite["behind"] == 0, where
        assert offsite.orphan_keys() == [], where
        assert _pending_multipart(seaweed, settings) == [], where  # parts cost storage
        assert_no_debris(settings.backup_dir, settings.secondary_dir)
        for info in BackupStore(settings).list():
            assert info.verified, (where, info.id)
    row["detail"] = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))


def _pending_multipart(server: object, settings: Settings) -> list[str]:
    """Multipart uploads under our prefix that were started and never completed or aborted."""
    assert settings.s3 is not None
    client = server.client()  # type: ignore[attr-defined]
    answer = client.list_multipart_uploads(Bucket=settings.s3.bucket, Prefix=settings.s3.prefix)
    return [str(u["Key"]) for u in answer.get("Uploads", [])]


def _wait_for_new_metadata(proc: object, directory: Path, limit: float = 60.0) -> float | None:
    """Wait until the process has committed a new backup (a new metadata file) or exited."""
    assert isinstance(proc, subprocess.Popen)
    before = set(folder_state(directory)["meta"])
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if set(folder_state(directory)["meta"]) - before:
            return time.monotonic()
        time.sleep(0.002)
    return None


# -- the app dies mid-transaction -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_app_killed_mid_transaction(
    big_templates: dict[str, Path], tmp_path: Path, reliability: Recorder, mode: str
) -> None:
    row = reliability(
        f"the app killed -9 mid-transaction, pages spilled ({mode} journal)",
        trials=1,
        checked="a hot journal / uncommitted WAL frames are left; backup (CLI) succeeds, holds "
        "the last committed state, not the half-done transaction; live DB intact afterwards",
    )
    db = live_copy(big_templates, mode, tmp_path / "instance")
    committed = db_state(db)
    conn = sqlite3.connect(db)
    expected = invariant(conn)
    conn.close()
    app = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('PRAGMA cache_size=16')\n"  # force pages out to the file mid-transaction
            "c.execute('BEGIN IMMEDIATE')\n"
            "c.execute(\"UPDATE count_sessions SET notes = 'HALF' || notes,"
            ' tablets_counted = 0")\n'
            "print('dirty', flush=True)\n"
            "sys.stdin.read()\n",
            str(db),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert app.stdout is not None and app.stdout.readline().strip() == "dirty"
    os.kill(app.pid, signal.SIGKILL)
    app.communicate(timeout=30)
    side = {p.name[len(db.name) :]: p.stat().st_size for p in db.parent.iterdir() if p != db}
    assert side.get("-journal", 0) > 0 or side.get("-wal", 0) > 0, side
    env = cli_env(db, tmp_path / "b", None, home=tmp_path)
    result = run_cli(["backup", "--json"], env)
    assert result.returncode == 0, result.stderr
    backup_id = json.loads(result.stdout)["id"]
    from tablettracker_backups.extract import extract_verified

    settings = settings_from_mapping({"database": db, "dir": tmp_path / "b"})
    store = BackupStore(settings)
    meta = store.read_metadata("primary", backup_id)
    extracted = tmp_path / "extracted.db"
    extract_verified(store.data_path("primary", backup_id, meta.compression), meta, extracted)
    assert db_state(extracted) == committed
    conn = sqlite3.connect(extracted)
    assert invariant(conn) == expected
    conn.close()
    assert db_state(db) == committed
    row["detail"] = "left beside the DB: " + ", ".join(f"{k} {v} B" for k, v in side.items())

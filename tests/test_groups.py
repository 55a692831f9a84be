"""Coordinated snapshots and group restores (issue 22): several databases, one moment.

Two real SQLite files that an app writes in one ``ATTACH`` transaction: a transfer moves a row
out of one database and into the other, so the total number of rows across both never
changes. A writer process does that the whole time (rollback journal and WAL); every
coordinated snapshot and every group restore must keep the total. Kill -9 at every stage of a
group restore leaves each member wholly old or wholly new, and the next ``run`` over the site
settles the group: never mixed. The CLI runs as real processes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from tablettracker_backups import intent
from tablettracker_backups.cli import cli
from tablettracker_backups.compression import decompress_file
from tablettracker_backups.coordinated import create_group_backup
from tablettracker_backups.crashpoints import ENV, Stage
from tablettracker_backups.errors import ConfigError, RestoreError
from tablettracker_backups.group_restore import restore_group
from tablettracker_backups.groups import find_group, group_ref, list_groups
from tablettracker_backups.settings import Settings, settings_from_mapping
from tablettracker_backups.site import Site, build_site
from tablettracker_backups.sources import file_layer
from tablettracker_backups.store import BackupInfo, BackupStore
from tests.faultkit import ROOT, cli_env, run_cli

#: Rows across the two databases: the transfers' invariant.
TOTAL = 400
#: Bytes of filler in each database, so copying one takes a few milliseconds (time enough for
#: the writer to commit between two copies taken one after the other), under 4,096 pages (one
#: backup-API step: each copy on its own is one state).
FILLER = 4 * 2**20


def make_pair(root: Path, *, wal: bool) -> tuple[Path, Path]:
    """``shop.db`` holding every row and ``ledger.db`` holding none, both with filler."""
    root.mkdir(parents=True, exist_ok=True)
    paths = (root / "shop.db", root / "ledger.db")
    for index, path in enumerate(paths):
        with closing(sqlite3.connect(path)) as conn:
            if wal:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, tag TEXT NOT NULL)")
            conn.execute("CREATE TABLE filler (id INTEGER PRIMARY KEY, data BLOB)")
            conn.executemany(
                "INSERT INTO filler (data) VALUES (?)",
                [(os.urandom(4000),) for _ in range(FILLER // 4000)],
            )
            if index == 0:
                conn.executemany(
                    "INSERT INTO items (tag) VALUES (?)", [(f"item-{n}",) for n in range(TOTAL)]
                )
            conn.commit()
    return paths


def write_site(root: Path, *, extra: str = "") -> Path:
    """The two databases as a site in a TOML file."""
    path = root / "site.toml"
    path.write_text(
        '[backups]\nbackup_dir = "backups"\nkeep_recent = "0"\ndisk_warning = "1MB"\n'
        'disk_critical = "1MB"\nbusy_timeout = 60\n' + extra + "\n"
        '[databases.shop]\ndatabase = "shop.db"\n[databases.ledger]\ndatabase = "ledger.db"\n'
    )
    return path


def site_of(config: Path) -> Site:
    return build_site(file_layer(config))


def counts(path: Path) -> int:
    with closing(sqlite3.connect(path, timeout=60)) as conn:
        return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])


def live_total(shop: Path, ledger: Path) -> int:
    """The rows across both live databases, read as the app would: one transaction over both,
    holding their write locks (a reader alone sees each WAL file at its own moment)."""
    with closing(sqlite3.connect(shop, timeout=60, isolation_level=None)) as conn:
        conn.execute("ATTACH DATABASE ? AS other", (str(ledger),))
        conn.execute("BEGIN IMMEDIATE")
        try:
            return int(
                conn.execute(
                    "SELECT (SELECT count(*) FROM main.items) + (SELECT count(*) FROM other.items)"
                ).fetchone()[0]
            )
        finally:
            conn.execute("ROLLBACK")


def tags(path: Path) -> frozenset[str]:
    with closing(sqlite3.connect(path, timeout=60)) as conn:
        return frozenset(str(r[0]) for r in conn.execute("SELECT tag FROM items"))


def read_backup(settings: Settings, info: BackupInfo, scratch: Path) -> Path:
    """A backup's database, decompressed into ``scratch``."""
    assert info.metadata is not None
    out = scratch / f"{settings.database_name}-{info.id}.db"
    decompress_file(
        BackupStore(settings).data_path("primary", info.id, info.metadata.compression),
        out,
        algorithm=info.metadata.compression,
    )
    return out


def transfer_writer(first: str, second: str, stop_file: str, pause: float) -> None:
    """The app: move one row at a time from one database to the other in one transaction
    over both (ATTACH), flipping direction when the source is empty, ``pause`` seconds apart
    (SQLite's locks are not fair: an app committing back to back with no pause at all can
    starve anyone else's write lock); print the commits."""
    conn = sqlite3.connect(first, timeout=180, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("ATTACH DATABASE ? AS other", (second,))
    conn.execute("PRAGMA other.synchronous=OFF")
    source, dest = "main", "other"
    done = 0
    while not os.path.exists(stop_file):
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(f"SELECT id, tag FROM {source}.items ORDER BY id LIMIT 1").fetchone()
        if row is None:
            conn.execute("ROLLBACK")
            source, dest = dest, source
            continue
        conn.execute(f"DELETE FROM {source}.items WHERE id = ?", (row[0],))
        conn.execute(f"INSERT INTO {dest}.items (tag) VALUES (?)", (row[1],))
        conn.execute("COMMIT")
        done += 1
        time.sleep(pause)
    conn.close()
    print(done)


def spawn_transfers(
    first: Path, second: Path, stop_file: Path, *, pause: float
) -> subprocess.Popen[str]:
    code = (
        "import sys; from tests.test_groups import transfer_writer; "
        "transfer_writer(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(first), str(second), str(stop_file), str(pause)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_transfers(proc: subprocess.Popen[str], stop_file: Path) -> int:
    stop_file.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return int(out.split()[-1])


def group_total(site: Site, group_id: str, scratch: Path) -> tuple[int, list[int]]:
    """The rows across a group's members, and each member's."""
    group = find_group(site.databases, group_id)
    each = []
    for member in group.members:
        assert member.settings is not None and member.info is not None
        each.append(counts(read_backup(member.settings, member.info, scratch)))
    return sum(each), each


# -- coordinated snapshots -------------------------------------------------------------------


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_every_coordinated_snapshot_keeps_the_transfer_invariant(
    tmp_path: Path, journal: str
) -> None:
    shop, ledger = make_pair(tmp_path, wal=journal == "wal")
    site = site_of(write_site(tmp_path))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    stop = tmp_path / "stop"
    writer = spawn_transfers(shop, ledger, stop, pause=0.001)
    taken: list[str] = []
    try:
        time.sleep(0.2)  # the writer is committing
        for _ in range(6):
            taken.append(create_group_backup(site.databases, notify_owner=False).group_id)
        # Once through the command line too, as a real process.
        done = run_cli(
            ["backup", "--all", "--json", "--config", str(tmp_path / "site.toml")],
            cli_env(None, home=tmp_path),
        )
        assert done.returncode == 0, done.stderr
        taken.append(json.loads(done.stdout)["group"])
    finally:
        transfers = stop_transfers(writer, stop)
    assert transfers > 50  # the writer really wrote throughout
    seen = set()
    for group_id in taken:
        total, each = group_total(site, group_id, scratch)
        assert total == TOTAL, (group_id, each)
        seen.add(tuple(each))
    assert len(seen) > 1  # the snapshots caught different moments of the transfers
    assert live_total(shop, ledger) == TOTAL


def test_a_group_is_one_restore_point_in_list_and_its_json(tmp_path: Path) -> None:
    make_pair(tmp_path, wal=False)
    config = write_site(tmp_path)
    site = site_of(config)
    group = create_group_backup(site.databases, label="before the import", notify_owner=False)
    result = CliRunner().invoke(cli, ["list", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    (listed,) = doc["groups"]
    assert listed["id"] == group.group_id and listed["whole"] is True
    assert listed["label"] == "before the import"
    members = {name: r.metadata.id for name, r in group.members}
    assert listed["members"] == members
    for name, rows in doc["databases"].items():
        (row,) = rows
        assert row["group"] == {"id": group.group_id, "members": members}
        assert row["id"] == members[name]
    text = CliRunner().invoke(cli, ["list", "--config", str(config)]).output
    assert text.count(group.group_id) == 3  # the group's row, and a line under each member
    assert "whole" in text
    # One member pruned (or lost): the group is no longer a restore point, and says why.
    BackupStore(site.databases[1]).delete(members["ledger"])
    (partial,) = list_groups(site.databases)
    assert not partial.whole and "ledger" in partial.problems[0]
    with pytest.raises(RestoreError, match="not a whole restore point"):
        restore_group(site.databases, group.group_id)


def test_run_with_coordinated_on_takes_one_group_for_the_site(tmp_path: Path) -> None:
    make_pair(tmp_path, wal=True)
    config = write_site(tmp_path, extra="coordinated = true")
    done = run_cli(["run", "--json", "--config", str(config)], cli_env(None, home=tmp_path))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    group_id = doc["group"]
    assert group_id and doc["group_error"] is None
    site = site_of(config)
    (group,) = list_groups(site.databases)
    assert group.id == group_id and group.whole
    for name, part in doc["databases"].items():
        assert part["backup"]["id"] == group.member(name).backup_id
    # The report says so on a terminal too.
    text = CliRunner().invoke(cli, ["run", "--force", "--config", str(config)])
    assert "Coordinated snapshot " in text.stdout, text.output
    # Not due: no second group, and no lone backups either.
    again = json.loads(
        run_cli(["run", "--json", "--config", str(config)], cli_env(None, home=tmp_path)).stdout
    )
    assert again["group"] is None
    assert all(p["backup"] is None for p in again["databases"].values())


def test_coordinated_is_a_setting_like_the_others(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    assert settings_from_mapping({"database": db}).coordinated is False
    assert settings_from_mapping({"database": db, "coordinated": "on"}).coordinated is True
    with pytest.raises(ConfigError, match="BACKUPS_COORDINATED must be on or off"):
        settings_from_mapping({"database": db, "coordinated": "sometimes"})
    make_pair(tmp_path, wal=False)
    config = write_site(tmp_path)
    # From the environment, for the whole site; a database's own entry can leave it out.
    env = cli_env(None, home=tmp_path, BACKUPS_COORDINATED="yes")
    done = run_cli(["run", "--json", "--config", str(config)], env)
    assert json.loads(done.stdout)["group"] is not None, done.stderr
    # In the file, for the site; the ledger's own entry leaves it out (then fewer than two
    # databases take part: each is backed up alone). The environment would beat the entry.
    alone = tmp_path / "alone.toml"
    alone.write_text(
        config.read_text()
        .replace("[backups]\n", "[backups]\ncoordinated = true\n")
        .replace("[databases.ledger]\n", "[databases.ledger]\ncoordinated = false\n")
    )
    assert [s.coordinated for s in site_of(alone).databases] == [True, False]
    done = run_cli(
        ["run", "--force", "--json", "--config", str(alone)], cli_env(None, home=tmp_path)
    )
    assert json.loads(done.stdout)["group"] is None, done.stderr


# -- group restore ------------------------------------------------------------------------------


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_group_restores_under_the_writer_keep_the_invariant(tmp_path: Path, journal: str) -> None:
    shop, ledger = make_pair(tmp_path, wal=journal == "wal")
    config = write_site(tmp_path)
    site = site_of(config)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    stop = tmp_path / "stop"
    writer = spawn_transfers(shop, ledger, stop, pause=0.005)
    env = cli_env(None, home=tmp_path)
    try:
        time.sleep(0.2)
        groups = [create_group_backup(site.databases, notify_owner=False) for _ in range(2)]
        for group in groups:
            done = run_cli(
                ["restore", "--group", group.group_id, "--yes", "--json", "--config", str(config)],
                env,
                timeout=180,
            )
            assert done.returncode == 0, done.stderr
            restored = json.loads(done.stdout)
            assert set(restored["members"]) == {"shop", "ledger"}
            # The safety snapshots of the members were taken under the one hold: together
            # they hold the total too (no transfer half in one of them).
            safety = [
                counts(
                    read_backup(
                        s,
                        BackupStore(s).get(
                            restored["members"][s.database_name]["safety_snapshot_id"]
                        ),
                        scratch,
                    )
                )
                for s in site.databases
            ]
            assert sum(safety) == TOTAL, safety
            assert live_total(shop, ledger) == TOTAL
    finally:
        transfers = stop_transfers(writer, stop)
    assert transfers > 50
    assert live_total(shop, ledger) == TOTAL
    for settings in site.databases:
        assert intent.read(settings) is None
        assert not intent.in_group(settings)


def _fault_in_ledger(name: str, target: Path, conn: object) -> None:
    """After the write, before the checks: damage the last member (its check fails)."""
    if name == "ledger":
        assert isinstance(conn, sqlite3.Connection)
        conn.execute("DELETE FROM filler WHERE id % 2 = 0")


def test_a_failed_check_puts_every_member_back(tmp_path: Path) -> None:
    shop, ledger = make_pair(tmp_path, wal=False)
    site = site_of(write_site(tmp_path))
    group = create_group_backup(site.databases, notify_owner=False)
    move(shop, ledger, 150)
    before = (tags(shop), tags(ledger))
    with pytest.raises(RestoreError, match=r"every member written .* was put back"):
        restore_group(site.databases, group.group_id, _after_write=_fault_in_ledger)
    # Both as they were: not the shop restored and the ledger put back.
    assert (tags(shop), tags(ledger)) == before
    for settings in site.databases:
        assert intent.read(settings) is None and not intent.in_group(settings)
        kinds = [i.kind for i in BackupStore(settings).list()]
        assert "pre-restore" in kinds


def move(shop: Path, ledger: Path, rows: int) -> None:
    """Transfer ``rows`` rows from the shop to the ledger, in one transaction over both."""
    with closing(sqlite3.connect(shop, isolation_level=None)) as conn:
        conn.execute("ATTACH DATABASE ? AS other", (str(ledger),))
        conn.execute("BEGIN IMMEDIATE")
        picked = conn.execute("SELECT id, tag FROM main.items ORDER BY id LIMIT ?", (rows,))
        for row_id, tag in picked.fetchall():
            conn.execute("DELETE FROM main.items WHERE id = ?", (row_id,))
            conn.execute("INSERT INTO other.items (tag) VALUES (?)", (tag,))
        conn.execute("COMMIT")


# -- kill -9 at every stage of a group restore --------------------------------------------------


@dataclass(frozen=True)
class Kill:
    stage: Stage
    hit: int = 1
    journal: str = "delete"
    #: True: the next command finds every member restored; False: every member put back.
    forward: bool = False

    def __str__(self) -> str:
        return f"{self.stage.value}:{self.hit}-{self.journal}"


KILLS = [
    Kill(Stage.GROUP_HOLD),
    Kill(Stage.SAFETY_COPY, journal="delete"),
    Kill(Stage.GROUP_SAFETY, journal="wal"),
    Kill(Stage.GROUP_SAFETY),
    Kill(Stage.RESTORE_WRITE, journal="wal"),
    Kill(Stage.GROUP_MEMBER_WRITTEN),
    Kill(Stage.GROUP_MEMBER_WRITTEN, journal="wal"),
    Kill(Stage.RESTORE_WRITE, hit=2, journal="wal"),
    Kill(Stage.GROUP_WRITTEN),
    Kill(Stage.GROUP_WRITTEN, journal="wal"),
    Kill(Stage.GROUP_RELEASED, forward=True),
    Kill(Stage.COMPRESS, forward=True),
]

ROLLBACK_SCRIPT = """
import sys
from tablettracker_backups.group_restore import restore_group
from tablettracker_backups.site import build_site
from tablettracker_backups.sources import file_layer
from tests.test_groups import _fault_in_ledger

site = build_site(file_layer(__import__("pathlib").Path(sys.argv[1])))
restore_group(site.databases, sys.argv[2], _after_write=_fault_in_ledger)
"""


def state_of(
    shop: Path, ledger: Path, old: tuple[frozenset[str], ...], new: tuple[frozenset[str], ...]
) -> tuple[str, str]:
    """Each member: wholly ``old``, wholly ``new`` (anything else fails)."""
    found = []
    for index, path in enumerate((shop, ledger)):
        now = tags(path)
        assert now in (old[index], new[index]), (path.name, len(now))
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        found.append("new" if now == new[index] else "old")
    return found[0], found[1]


@pytest.mark.parametrize("kill", [*KILLS, "rollback"], ids=[*map(str, KILLS), "group-rollback"])
def test_kill_at_every_stage_of_a_group_restore_is_settled_by_the_next_run(
    tmp_path: Path, kill: Kill | str
) -> None:
    journal = kill.journal if isinstance(kill, Kill) else "delete"
    shop, ledger = make_pair(tmp_path, wal=journal == "wal")
    config = write_site(tmp_path)
    site = site_of(config)
    group = create_group_backup(site.databases, notify_owner=False)
    new = (tags(shop), tags(ledger))
    move(shop, ledger, 150)
    old = (tags(shop), tags(ledger))
    env = cli_env(None, home=tmp_path)
    if isinstance(kill, Kill):
        crash = {**env, ENV: f"{kill.stage.value}:{kill.hit}"}
        done = run_cli(
            ["restore", "--group", group.group_id, "--yes", "--config", str(config)], crash
        )
        forward = kill.forward
    else:
        crash = {**env, ENV: f"{Stage.GROUP_ROLLBACK.value}:1"}
        done = subprocess.run(
            [sys.executable, "-c", ROLLBACK_SCRIPT, str(config), group.group_id],
            cwd=ROOT,
            env=crash,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        forward = False
    assert done.returncode == -9, (done.returncode, done.stderr)  # killed right there
    at_kill = state_of(shop, ledger, old, new)
    assert all(intent.in_group(s) for s in site.databases)
    # A single database's restore must not settle one member alone.
    alone = run_cli(
        ["restore", "latest", "--yes", "--database", "shop", "--config", str(config)], env
    )
    assert alone.returncode == 2 and "group restore" in alone.stderr, alone.stderr
    # The next run over the site settles the group: all new, or all old.
    after = run_cli(["run", "--json", "--config", str(config)], env)
    doc = json.loads(after.stdout)
    assert "interrupted" in (doc["group_restore"] or ""), (after.stderr, doc)
    settled = state_of(shop, ledger, old, new)
    assert settled == (("new", "new") if forward else ("old", "old")), (at_kill, settled)
    for settings in site.databases:
        assert not intent.in_group(settings)
        assert not list(settings.backup_dir.glob(f"{intent.SAFETY_PREFIX}*")), settings.backup_dir
        record = intent.read(settings)
        assert record is not None and record.found_at is not None  # health says so
        infos = BackupStore(settings).list()
        assert all(i.verified for i in infos)
    # Settled: the group restores again, whole.
    again = run_cli(["restore", "--group", group.group_id, "--yes", "--config", str(config)], env)
    assert again.returncode == 0, again.stderr
    assert state_of(shop, ledger, old, new) == ("new", "new")


def test_group_of_a_member_id_and_bad_ids(tmp_path: Path) -> None:
    make_pair(tmp_path, wal=False)
    site = site_of(write_site(tmp_path))
    group = create_group_backup(site.databases, notify_owner=False)
    member = group.members[0][1].metadata
    assert find_group(site.databases, member.id).id == group.group_id
    ref = group_ref(member)
    assert ref is not None and ref.id == group.group_id
    result = CliRunner().invoke(
        cli, ["restore", "--group", "nope", "--yes", "--config", str(tmp_path / "site.toml")]
    )
    assert result.exit_code == 2 and "invalid backup id" in result.output
    result = CliRunner().invoke(
        cli, ["restore", "--all", "--yes", "--config", str(tmp_path / "site.toml")]
    )
    assert result.exit_code == 2 and "--at TIME" in result.output


@pytest.mark.parametrize("stage", [Stage.GROUP_SNAPSHOT, Stage.GROUP_MEMBER_FILED])
def test_kill_during_a_coordinated_snapshot_leaves_valid_backups_only(
    tmp_path: Path, stage: Stage
) -> None:
    shop, ledger = make_pair(tmp_path, wal=True)
    config = write_site(tmp_path)
    site = site_of(config)
    env = cli_env(None, home=tmp_path)
    killed = run_cli(["backup", "--all", "--config", str(config)], {**env, ENV: stage.value})
    assert killed.returncode == -9, killed.stderr
    groups = list_groups(site.databases)
    if stage is Stage.GROUP_SNAPSHOT:
        assert groups == []  # nothing was copied yet: no member, no group
    else:
        (partial,) = groups  # the first member is filed, the second is not
        assert not partial.whole and len(partial.problems) == 1
    # The databases were let go (the app writes on), and the next coordinated snapshot is
    # whole; no temporary file is left anywhere.
    move(shop, ledger, 10)
    again = run_cli(["backup", "--all", "--json", "--config", str(config)], env)
    assert again.returncode == 0, again.stderr
    whole = find_group(site.databases, json.loads(again.stdout)["group"])
    assert whole.whole
    for settings in site.databases:
        assert not [p for p in settings.backup_dir.iterdir() if p.name.startswith(".tmp-")]
        assert all(i.verified for i in BackupStore(settings).list())

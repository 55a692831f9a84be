"""Durability order, observed on the real CLI with strace.

A backup is durable only if, in each folder, the data file is fsynced before it is renamed into
place, the folder is fsynced after the rename, and the metadata (the commit marker) is renamed
in only after that. Prune must remove the commit marker before the data, so a kill between the
two never leaves a listed backup without its data. Neither order can be seen from the files
left afterwards, so these tests read the system calls themselves.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tablettracker_backups.backup import create_backup
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore
from tests.faultkit import ROOT, cli_command, cli_env

STRACE = shutil.which("strace")
#: The issue's exact trace set, plus the *at variants a libc may use instead.
TRACED = "fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat"

pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed")


@dataclass(frozen=True)
class Call:
    """One traced system call: its name and the paths it named (fds resolved by ``-y``)."""

    name: str
    paths: tuple[str, ...]


_LINE = re.compile(r"^(?:\[pid\s+)?\d*\]?\s*(\w+)\((.*)")
_PATH = re.compile(r'"((?:[^"\\]|\\.)*)"|\d+<([^>]*)>')


def parse_trace(text: str) -> list[Call]:
    """The calls in an ``strace -f -y`` log, in the order they started."""
    calls = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or "resumed>" in line:
            continue
        name, rest = match.groups()
        if "= -1" in rest:  # a failed call changed nothing
            continue
        paths = tuple(a or b for a, b in _PATH.findall(rest))
        calls.append(Call(name, paths))
    return calls


def traced_cli(args: list[str], env: dict[str, str], log: Path) -> list[Call]:
    """Run ``python -m tablettracker_backups ARGS`` under strace; return its calls."""
    assert STRACE is not None
    done = subprocess.run(
        [
            *(STRACE, "-f", "-y", "-qq", "-e", f"trace={TRACED}", "-e", "signal=none"),
            *("-o", str(log), *cli_command(*args)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return parse_trace(log.read_text())


def first(calls: list[Call], name: tuple[str, ...], test: object, after: int = -1) -> int:
    """Index of the first call after ``after`` named ``name`` whose paths satisfy ``test``."""
    assert callable(test)
    for index, call in enumerate(calls):
        if index > after and call.name in name and test(call.paths):
            return index
    raise AssertionError(f"no {name} call matching the test after #{after}")


FSYNC = ("fsync", "fdatasync")
RENAME = ("rename", "renameat", "renameat2")
UNLINK = ("unlink", "unlinkat")


def commit_steps(calls: list[Call], folder: Path, final_name: str) -> tuple[int, int, int]:
    """(fsync of the temp file, its rename to ``final_name``, the folder's fsync after it)."""
    final = str(folder / final_name)
    rename = first(calls, RENAME, lambda p: p[-1] == final)
    temp = calls[rename].paths[0]
    assert Path(temp).parent == folder and Path(temp).name.startswith(".tmp-"), temp
    synced = [i for i, c in enumerate(calls[:rename]) if c.name in FSYNC and c.paths == (temp,)]
    assert synced, f"{temp} was renamed to {final_name} without an fsync first"
    directory = first(calls, FSYNC, lambda p: p == (str(folder),), after=rename)
    return synced[-1], rename, directory


def test_backup_fsyncs_renames_and_commits_in_order(settings: Settings, tmp_path: Path) -> None:
    # The usual case: folders that already hold a backup (taken in-process, which also lets
    # bench/mutation.py select this test for mutants of the commit code).
    earlier = create_backup(settings).metadata.id
    env = cli_env(settings.database, settings.backup_dir, settings.secondary_dir, home=tmp_path)
    calls = traced_cli(["backup"], env, tmp_path / "backup.trace")
    (backup_id,) = [info.id for info in BackupStore(settings).list() if info.id != earlier]
    last_commit = -1
    for folder in settings.locations:
        data_sync, data_rename, data_dir = commit_steps(calls, folder, f"{backup_id}.db.zst")
        meta_sync, meta_rename, meta_dir = commit_steps(calls, folder, f"{backup_id}.json")
        assert data_sync < data_rename < data_dir, "data: fsync, rename, folder fsync"
        assert meta_sync < meta_rename < meta_dir, "metadata: fsync, rename, folder fsync"
        # The commit marker lands only once the data is durably in place.
        assert data_dir < meta_rename, "metadata renamed in before the data was durable"
        # And the secondary copy is made from a committed primary one.
        assert data_rename > last_commit, "secondary copy began before the primary commit"
        last_commit = meta_dir
    # Nothing of this backup's is renamed after its last commit marker.
    later = [c for c in calls[last_commit + 1 :] if c.name in RENAME and backup_id in c.paths[-1]]
    assert later == []


def test_prune_deletes_the_commit_marker_before_the_data(
    settings: Settings, tmp_path: Path
) -> None:
    ids = [create_backup(settings).metadata.id for _ in range(3)]
    env = cli_env(
        settings.database,
        settings.backup_dir,
        settings.secondary_dir,
        home=tmp_path,
        BACKUPS_KEEP_MINUTELY="0",
        BACKUPS_KEEP_HOURLY="0",
        BACKUPS_KEEP_DAILY="0",
        BACKUPS_KEEP_WEEKLY="0",
        BACKUPS_KEEP_MONTHLY="0",
        BACKUPS_KEEP_YEARLY="0",
        BACKUPS_KEEP_RECENT="0",
    )
    calls = traced_cli(["prune"], env, tmp_path / "prune.trace")
    remaining = [info.id for info in BackupStore(settings).list()]
    assert remaining == [ids[-1]]  # retention keeps the newest only
    for backup_id in ids[:-1]:
        for folder in settings.locations:
            meta = first(calls, UNLINK, lambda p, f=folder, b=backup_id: p == (f"{f}/{b}.json",))
            data = first(calls, UNLINK, lambda p, f=folder, b=backup_id: p == (f"{f}/{b}.db.zst",))
            assert meta < data, f"{folder.name}: data of {backup_id} deleted before its metadata"

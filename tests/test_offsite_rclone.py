"""rclone as the offsite store (``BACKUPS_RCLONE_REMOTE``): the same sync, checks, encryption
and recovery as S3, through Debian's ``rclone`` binary, against a real ``rclone serve webdav``
on 127.0.0.1 and rclone's local backend."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tablettracker_backups.encryption import load_identity
from tablettracker_backups.errors import ConfigError
from tablettracker_backups.offsite.client import OffsiteStore
from tablettracker_backups.offsite.sync import verify_offsite
from tablettracker_backups.runner import run
from tablettracker_backups.settings import Settings
from tablettracker_backups.storage.rclone import RcloneStore
from tablettracker_backups.storage.sealed import AGE_HEADER, SealedStore
from tests.conftest import flip_byte
from tests.storage_conformance import WebdavServer, rclone_webdav

pytestmark = pytest.mark.skipif(
    shutil.which("rclone") is None, reason="rclone is not installed (Debian: apt install rclone)"
)


@pytest.fixture(scope="module")
def webdav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebdavServer]:
    with rclone_webdav(tmp_path_factory.mktemp("webdav")) as server:
        yield server


def _quiet(values: dict[str, object]) -> dict[str, object]:
    # Exit codes here are about offsite, not a shared test disk that happens to be 90% full.
    return {"disk_warning": "1MB", "disk_critical": "1MB", **values}


def _counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        conn.close()


def test_an_encrypted_rclone_remote_alone_recovers_a_fresh_machine(
    webdav: WebdavServer,
    make_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    db_path: Path,
    tmp_path: Path,
) -> None:
    identity_file, recipient = keys("owner")
    folder = f"t-{uuid.uuid4().hex[:12]}"
    settings = make_settings(
        **_quiet(
            {
                "rclone_remote": f"srv:{folder}",
                "rclone_config": str(webdav.config),
                "encrypt_to": recipient,
            }
        )
    )
    offsite = OffsiteStore.from_settings(settings)
    assert isinstance(offsite.objects, SealedStore)  # plaintext is refused in one place
    assert isinstance(offsite.objects.inner, RcloneStore)

    taken = run(settings, force=True)
    assert taken.offsite is not None and taken.offsite.ok, taken.offsite
    assert taken.backup is not None
    backup_id = taken.backup.metadata.id
    assert [u.id for u in taken.offsite.uploaded] == [backup_id]
    # What the WebDAV server holds: the age file and metadata that names no table.
    served = webdav.folder / folder
    assert sorted(p.name for p in served.iterdir()) == [
        f"{backup_id}.db.zst.age",
        f"{backup_id}.json",
    ]
    assert (served / f"{backup_id}.db.zst.age").read_bytes().startswith(AGE_HEADER)
    document = (served / f"{backup_id}.json").read_text()
    for table in _counts(db_path):
        assert table not in document, table
    assert json.loads(document)["encryption"]["sealed"]

    # Full read-back with the identity: decrypted, decompressed, integrity-checked.
    [checked] = verify_offsite(settings, identity=load_identity(identity_file))
    assert checked.ok and checked.depth == "full", checked

    # A new machine: an empty home, no config file, no backup folder; the remote's settings,
    # its rclone.conf and the identity are all it has.
    machine = tmp_path / "new-machine"
    (machine / "home").mkdir(parents=True)
    target = machine / "instance" / "tablet_counter.db"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(machine / "home"),
        "XDG_CONFIG_HOME": str(machine / "home" / ".config"),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "BACKUPS_RCLONE_REMOTE": f"srv:{folder}",
        "BACKUPS_RCLONE_CONFIG": str(webdav.config),
    }
    command = [sys.executable, "-m", "tablettracker_backups", "restore", "latest"]
    command += ["--from-offsite", "--to", str(target)]
    missing = subprocess.run(
        command, cwd=machine, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "--identity" in missing.stderr and "Traceback" not in missing.stderr
    assert not target.exists()
    done = subprocess.run(
        [*command, "--identity", str(identity_file)],
        cwd=machine,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert backup_id in done.stdout
    assert _counts(target) == _counts(db_path)
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_plain_copy_on_rclone_s_local_backend_is_checked_and_replaced_when_damaged(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    root = tmp_path / "drive"
    root.mkdir()
    config = tmp_path / "rclone.conf"
    config.write_text("[disk]\ntype = local\n")
    settings = make_settings(
        **_quiet({"rclone_remote": f"disk:{root}", "rclone_config": str(config)})
    )
    taken = run(settings, force=True)
    assert taken.offsite is not None and taken.offsite.ok, taken.offsite
    assert taken.backup is not None
    meta = taken.backup.metadata
    assert taken.offsite.uploaded[0].check  # how the stored copy was checked, for the report
    stored = root / meta.data_file
    assert stored.read_bytes() == (settings.backup_dir / meta.data_file).read_bytes()
    assert stat_mode(stored) == 0o600  # rclone writes owner-only files

    flip_byte(stored)
    [checked] = verify_offsite(settings)
    assert not checked.ok and checked.error, checked
    # The next run sees the damaged copy in its record and uploads a sound one again.
    again = run(settings, force=False)
    assert again.offsite is not None, again
    [rechecked] = verify_offsite(settings, [meta.id])
    assert rechecked.ok, (rechecked, again.offsite)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_an_unreachable_remote_keeps_the_local_backup_and_says_where(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    config = tmp_path / "rclone.conf"
    # A WebDAV server nobody listens on (port 9 is discard; refused on 127.0.0.1).
    config.write_text("[gone]\ntype = webdav\nurl = http://127.0.0.1:9/\nvendor = other\n")
    settings = make_settings(
        **_quiet({"rclone_remote": "gone:backups", "rclone_config": str(config)})
    )
    result = run(settings, force=True)
    assert result.backup is not None  # the local backup is taken regardless
    assert result.offsite is not None and not result.offsite.ok
    assert "rclone gone:backups" in result.offsite.errors[0]
    assert "\n" not in result.offsite.errors[0]
    assert result.exit_code != 0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"rclone_remote": "gdrive:tt", "s3_bucket": "b"},
            "set BACKUPS_S3_BUCKET or BACKUPS_RCLONE_REMOTE, not both",
        ),
        ({"rclone_keep_daily": "3"}, "BACKUPS_RCLONE_KEEP_DAILY is set but BACKUPS_RCLONE_REMOTE"),
        ({"rclone_remote": "--config=/etc/x:y"}, "must name an rclone remote"),
        ({"rclone_remote": "gdrive:tt", "rclone_config": "/no/such/rclone.conf"}, "no rclone"),
        ({"rclone_remote": "gdrive:tt", "rclone_verify_per_run": "x"}, "whole number"),
    ],
)
def test_rclone_settings_are_checked_at_start_up(
    make_settings: Callable[..., Settings], values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_settings(**values)


def test_rclone_keeps_its_own_retention_and_the_remote_is_shown_without_secrets(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from tablettracker_backups.offsite.policy import offsite_policy
    from tablettracker_backups.sources import shown_value

    settings = make_settings(
        rclone_remote=":webdav,url=http://127.0.0.1:1/,pass=hunter2:tt", rclone_keep_daily="3"
    )
    assert settings.offsite is settings.rclone and settings.rclone is not None
    assert offsite_policy(settings).daily == 3
    assert settings.retention.daily != 3
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in shown_value("rclone_remote", settings.rclone.remote)
    assert "hunter2" not in OffsiteStore.from_settings(settings).where


def test_init_writes_a_named_remote_but_never_a_connection_strings_parameters(
    make_settings: Callable[..., Settings],
) -> None:
    from tablettracker_backups.bootstrap import _offsite_lines

    named = make_settings(rclone_remote="gdrive:tablettracker")
    assert 'rclone_remote = "gdrive:tablettracker"' in _offsite_lines(named)
    secret = make_settings(rclone_remote=":webdav,url='http://h/',pass=hunter2:tt")
    written = "\n".join(_offsite_lines(secret))
    assert "hunter2" not in written and "rclone_remote =" not in written
    assert "environment" in written

"""Offsite copies against a real S3-compatible server: SeaweedFS's ``weed mini`` on 127.0.0.1.

One server runs per module (it takes a few seconds to start); each test works under its own
key prefix so tests never see each other's objects. Faults are real: a wrong secret, a server
killed with SIGKILL in the middle of a run, a byte flipped in a stored object.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from itertools import pairwise
from pathlib import Path

import pytest
from click.testing import CliRunner

from tablettracker_backups.audit import read_entries
from tablettracker_backups.backup import create_backup
from tablettracker_backups.cli import cli
from tablettracker_backups.errors import (
    BackupNotFound,
    ObjectCorrupt,
    OffsiteError,
    RestoreError,
    VerificationError,
)
from tablettracker_backups.health import check_health
from tablettracker_backups.offsite.client import OffsiteStore
from tablettracker_backups.offsite.policy import copy_states, offsite_lag
from tablettracker_backups.offsite.record import read_state
from tablettracker_backups.offsite.sync import sync_offsite, verify_offsite
from tablettracker_backups.restore import recover_from_offsite
from tablettracker_backups.runner import run
from tablettracker_backups.settings import Settings
from tablettracker_backups.storage.s3 import S3Store, local_digests
from tablettracker_backups.store import BackupStore
from tests.conftest import flip_byte, make_db
from tests.netkit import recording_proxy
from tests.s3kit import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer, running_seaweed
from tests.s3kit import free_ports as _free_ports

boto3 = pytest.importorskip("boto3")

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS server shared by this module's tests, stopped by its pid afterwards."""
    with running_seaweed(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the machine's own AWS configuration out of the tests."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("BACKUPS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def s3_settings(
    s3_server: SeaweedServer, make_settings: Callable[..., Settings]
) -> Callable[..., Settings]:
    """Settings with an offsite store under a prefix of the test's own."""
    prefix = f"t-{uuid.uuid4().hex[:12]}/"

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "s3_bucket": BUCKET,
            "s3_endpoint_url": s3_server.endpoint,
            "s3_prefix": prefix,
            "s3_region": "us-east-1",
            "s3_addressing_style": "path",
            "s3_access_key_id": ACCESS_KEY,
            "s3_secret_access_key": SECRET_KEY,
            # Exit codes here are about offsite; a shared test disk that is 90% full must not
            # turn them into a disk warning.
            "disk_warning": "1MB",
            "disk_critical": "1MB",
        }
        values.update(overrides)
        return make_settings(**values)

    return build


def _row_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def _secret_absent(*texts: str) -> None:
    for text in texts:
        assert SECRET_KEY not in text


def _state_texts(settings: Settings) -> list[str]:
    return [
        p.read_text(errors="replace")
        for p in settings.backup_dir.iterdir()
        if p.is_file() and p.suffix in (".json", ".jsonl")
    ]


# -- upload and read-back ----------------------------------------------------------------------


def test_upload_is_checked_and_reads_back(
    s3_settings: Callable[..., Settings], tmp_path: Path, db_path: Path
) -> None:
    settings = s3_settings()
    meta = create_backup(settings).metadata
    offsite = OffsiteStore.from_settings(settings)
    offsite.check_access()
    data = BackupStore(settings).data_path("primary", meta.id, meta.compression)

    result = offsite.upload(data, meta)

    assert result.check == "provider SHA-256 checksum"
    assert not result.multipart
    listed = offsite.list()
    assert [o.id for o in listed] == [meta.id]
    assert listed[0].data_size == meta.stored_size
    assert offsite.read_metadata(meta.id).sha256 == meta.sha256
    restored = tmp_path / "from-offsite.db"
    offsite.fetch_verified(meta.id, restored)
    assert _row_counts(restored) == _row_counts(db_path)
    assert offsite.verify(meta.id, scratch_dir=tmp_path).ok


def test_run_uploads_and_list_shows_offsite(s3_settings: Callable[..., Settings]) -> None:
    settings = s3_settings()
    result = run(settings, force=True)

    assert result.error is None, result.error
    assert result.offsite is not None and result.offsite.ok, result.offsite
    backup_id = result.backup.metadata.id if result.backup else ""
    assert [u.id for u in result.offsite.uploaded] == [backup_id]
    state = read_state(settings)
    assert state.copies[backup_id].ok
    # The rolling verify read the new copy back in full in the same run.
    assert [(v.id, v.ok) for v in result.offsite.verified] == [(backup_id, True)]
    assert state.copies[backup_id].read_back_at is not None
    record = settings.backup_dir / "offsite.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert copy_states(settings, BackupStore(settings).list()) == {backup_id: "ok"}
    assert result.health.offsite["behind"] == 0

    runner = CliRunner()
    env = {"BACKUPS_DATABASE": str(settings.database), "BACKUPS_DIR": str(settings.backup_dir)}
    env.update(
        {
            "BACKUPS_SECONDARY_DIR": str(settings.secondary_dir),
            "BACKUPS_S3_BUCKET": BUCKET,
            "BACKUPS_S3_ENDPOINT_URL": settings.s3.endpoint_url if settings.s3 else "",
            "BACKUPS_S3_PREFIX": settings.s3.prefix if settings.s3 else "",
            "BACKUPS_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "BACKUPS_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "BACKUPS_S3_ADDRESSING_STYLE": "path",
            "BACKUPS_DISK_WARNING": "1MB",
            "BACKUPS_DISK_CRITICAL": "1MB",
        }
    )
    listed = runner.invoke(cli, ["list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)[0]["copies"] == {
        "primary": "ok",
        "secondary": "ok",
        "offsite": "ok",
    }
    text = runner.invoke(cli, ["list"], env=env)
    assert "off:ok" in text.output
    shown = runner.invoke(cli, ["show", "latest", "--json"], env=env)
    assert json.loads(shown.output)["copies"]["offsite"] == "ok"
    assert "offsite ok" in runner.invoke(cli, ["show", backup_id], env=env).output
    checked = runner.invoke(cli, ["verify", "--offsite", "--all", "--json"], env=env)
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output) == [{"id": backup_id, "ok": True, "error": None}]
    ran = runner.invoke(cli, ["run", "--json", "--force"], env=env)
    assert ran.exit_code == 0, ran.output
    _secret_absent(listed.output, text.output, checked.output, ran.output, *_state_texts(settings))


def test_an_offsite_copy_that_differs_is_replaced(s3_settings: Callable[..., Settings]) -> None:
    from dataclasses import replace

    from tablettracker_backups.offsite.record import write_state

    settings = s3_settings()
    first = run(settings, force=True)
    assert first.backup is not None
    backup_id = first.backup.metadata.id
    state = read_state(settings)
    # The record says the offsite copy is another file (as after a mix-up of two machines).
    write_state(settings, state.with_copy(replace(state.copies[backup_id], sha256="0" * 64)))
    assert copy_states(settings, BackupStore(settings).list()) == {backup_id: "pending"}
    again = run(settings)
    assert again.offsite is not None
    assert [u.id for u in again.offsite.uploaded] == [backup_id]
    assert copy_states(settings, BackupStore(settings).list()) == {backup_id: "ok"}


def test_credentials_from_the_aws_chain(
    s3_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    settings = s3_settings(s3_access_key_id=None, s3_secret_access_key=None)
    assert settings.s3 is not None and settings.s3.secret_access_key is None
    assert SECRET_KEY not in repr(s3_settings())
    OffsiteStore.from_settings(settings).check_access()


def test_checksum_off_checks_by_reading_back(
    s3_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """For providers that refuse checksum headers: the upload is read back and hashed."""
    settings = s3_settings(s3_checksum="off")
    meta = create_backup(settings).metadata
    offsite = OffsiteStore.from_settings(settings)
    data = BackupStore(settings).data_path("primary", meta.id, meta.compression)
    assert offsite.upload(data, meta).check == "read-back SHA-256"
    assert offsite.verify(meta.id, scratch_dir=tmp_path).ok


def test_half_configured_credentials_are_refused(s3_settings: Callable[..., Settings]) -> None:
    from tablettracker_backups.errors import ConfigError

    with pytest.raises(ConfigError, match="set both BACKUPS_S3_ACCESS_KEY_ID"):
        s3_settings(s3_secret_access_key=None)
    with pytest.raises(ConfigError, match="BACKUPS_S3_CHECKSUM"):
        s3_settings(s3_checksum="md5")


def test_rolling_verify_covers_every_copy_within_the_period(
    make_settings: Callable[..., Settings],
) -> None:
    from tablettracker_backups.offsite.policy import rolling_verify_count

    hourly = make_settings(s3_bucket=BUCKET, interval="1h", s3_verify_period_days=30)
    daily = make_settings(s3_bucket=BUCKET, interval="1d", s3_verify_period_days=30)
    assert rolling_verify_count(hourly, 0) == 0
    assert rolling_verify_count(hourly, 1) == 1
    assert rolling_verify_count(hourly, 100) == 2  # 720 runs a month: the minimum is enough
    assert rolling_verify_count(daily, 100) == 4  # 30 runs a month: 4 a run covers 100
    assert rolling_verify_count(daily, 100) * 30 >= 100


def test_init_config_names_the_offsite_store_but_not_its_keys(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from tablettracker_backups.bootstrap import render_config
    from tablettracker_backups.settings import values_from_toml

    settings = make_settings(
        s3_bucket=BUCKET,
        s3_endpoint_url="https://s3.example.test",
        s3_region="eu-central-003",
        s3_addressing_style="path",
        s3_access_key_id=ACCESS_KEY,
        s3_secret_access_key=SECRET_KEY,
    )
    text = render_config(settings, 3600)
    assert SECRET_KEY not in text and ACCESS_KEY not in text
    path = tmp_path / "config.toml"
    path.write_text(text)
    values = values_from_toml(path)
    assert values["s3_bucket"] == BUCKET
    assert values["s3_endpoint_url"] == "https://s3.example.test"
    assert values["s3_addressing_style"] == "path"
    assert values["s3_prefix"] == "tablettracker-backups/"


# -- each check of an upload on its own ---------------------------------------------------------


def test_a_local_copy_damaged_in_place_is_never_sent(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings]
) -> None:
    """The local SHA-256 check before an upload, on its own: the checks after the upload
    compare the stored object with the local file, so a damaged file would pass them all
    and go offsite as a good copy. Watched through a recording proxy: nothing is sent."""
    with recording_proxy(s3_server.endpoint) as proxy:
        settings = s3_settings(s3_endpoint_url=f"http://{proxy.base}")
        meta = create_backup(settings).metadata
        data = BackupStore(settings).data_path("primary", meta.id, meta.compression)
        flip_byte(data)  # same size: the listing still calls the copy ok
        offsite = OffsiteStore.from_settings(settings)
        with pytest.raises(VerificationError, match="does not match its metadata; not uploading"):
            offsite.upload(data, meta)
        assert [r for r in proxy.requests if r.method in ("PUT", "POST")] == []
        # A sync takes the sound secondary copy instead.
        result = sync_offsite(settings)
        assert [u.id for u in result.uploaded] == [meta.id], result
        assert offsite.verify(meta.id, scratch_dir=settings.backup_dir).ok


@pytest.mark.parametrize(
    ("stored", "with_checksum", "error"),
    [
        ("truncated", False, r"is \d+ bytes in s3://.* after upload, expected"),
        ("one byte changed", True, "has a different SHA-256 in s3://.* than was sent"),
        ("one byte changed", False, "read back from s3://.* differently than it was sent"),
    ],
)
def test_each_check_after_an_upload_on_its_own(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    stored: str,
    with_checksum: bool,
    error: str,
) -> None:
    """What the provider holds after an upload differs from the local file: shorter; same
    size with the provider's own SHA-256; same size with no checksum (read back). Each is
    refused by its own check, in its own words."""
    settings = s3_settings()
    meta = create_backup(settings).metadata
    assert settings.s3 is not None
    data = BackupStore(settings).data_path("primary", meta.id, meta.compression)
    body = bytearray(data.read_bytes())
    if stored == "truncated":
        del body[-1]
    else:
        body[len(body) // 2] ^= 0xFF
    key = settings.s3.prefix + meta.data_file
    extra = {"ChecksumAlgorithm": "SHA256"} if with_checksum else {}
    s3_server.client().put_object(Bucket=BUCKET, Key=key, Body=bytes(body), **extra)
    offsite = OffsiteStore.from_settings(settings)
    digests = local_digests(
        data,
        multipart_threshold=settings.s3.multipart_threshold,
        chunksize=settings.s3.multipart_chunksize,
    )
    assert isinstance(offsite.objects, S3Store)
    with pytest.raises(ObjectCorrupt, match=error):
        offsite.objects._check_stored(meta.data_file, key, digests)


def test_only_keys_under_the_prefix_are_deleted(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings]
) -> None:
    settings = s3_settings()
    assert settings.s3 is not None
    outside = f"elsewhere-{settings.s3.prefix}20261123T201500Z-3f9a1c.db.zst"
    client = s3_server.client()
    client.put_object(Bucket=BUCKET, Key=outside, Body=b"not ours")
    offsite = OffsiteStore.from_settings(settings)
    with pytest.raises(ValueError, match="outside the prefix"):
        offsite.delete_key(outside)
    assert client.get_object(Bucket=BUCKET, Key=outside)["Body"].read() == b"not ours"
    client.delete_object(Bucket=BUCKET, Key=outside)


# -- multipart ---------------------------------------------------------------------------------


def _big_incompressible_db(path: Path, size: int) -> None:
    make_db(path)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        for _ in range(size // MiB):
            conn.execute("INSERT INTO attachments (data) VALUES (?)", (os.urandom(MiB),))


def test_multipart_upload_over_the_part_size(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    db = tmp_path / "big.db"
    _big_incompressible_db(db, 11 * MiB)
    settings = s3_settings(
        database=db, s3_multipart_threshold="5MiB", s3_multipart_chunksize="5MiB"
    )
    meta = create_backup(settings).metadata
    assert meta.stored_size > 10 * MiB
    offsite = OffsiteStore.from_settings(settings)
    data = BackupStore(settings).data_path("primary", meta.id, meta.compression)
    seen: list[int] = []

    result = offsite.upload(data, meta, progress=seen.append)

    assert result.multipart and result.parts == 3
    assert result.check == "provider SHA-256 checksum"
    assert sum(seen) == meta.stored_size
    head = s3_server.client().head_object(
        Bucket=BUCKET, Key=offsite.data_key(meta.id, meta.compression), ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"].endswith("-3")
    assert (
        head["ChecksumSHA256"]
        == local_digests(data, multipart_threshold=5 * MiB, chunksize=5 * MiB).expected_checksum
    )
    restored = tmp_path / "restored.db"
    offsite.fetch_verified(meta.id, restored)
    assert hashlib.sha256(restored.read_bytes()).hexdigest() == meta.raw_sha256


# -- failures ----------------------------------------------------------------------------------


def test_wrong_credentials_keep_the_local_backup(
    s3_settings: Callable[..., Settings],
) -> None:
    settings = s3_settings(s3_secret_access_key="not-the-secret")
    result = run(settings, force=True)

    assert result.error is None
    assert result.backup is not None
    info = BackupStore(settings).get(result.backup.metadata.id)
    assert info.verified
    assert result.exit_code == 1
    assert result.offsite is not None
    assert any("rejected the credentials" in w for w in result.warnings), result.warnings
    report = check_health(settings)
    codes = {f.code: f for f in report.findings}
    assert codes["offsite-behind"].level == "warning"
    assert "1 backup(s) behind" in codes["offsite-behind"].message
    assert copy_states(settings, BackupStore(settings).list()) == {info.id: "pending"}

    runner = CliRunner()
    env = {
        "BACKUPS_DATABASE": str(settings.database),
        "BACKUPS_S3_BUCKET": BUCKET,
        "BACKUPS_S3_ENDPOINT_URL": settings.s3.endpoint_url if settings.s3 else "",
        "BACKUPS_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "BACKUPS_S3_SECRET_ACCESS_KEY": "not-the-secret",
    }
    checked = runner.invoke(cli, ["verify", "--offsite"], env=env)
    assert checked.exit_code == 2
    assert checked.output.startswith("Error: ")
    assert "rejected the credentials" in checked.output
    assert "Traceback" not in checked.output
    assert "not-the-secret" not in checked.output


def test_missing_bucket_and_unreachable_endpoint(
    s3_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(OffsiteError, match="bucket 'no-such-bucket' does not exist"):
        OffsiteStore.from_settings(s3_settings(s3_bucket="no-such-bucket")).check_access()
    with pytest.raises(OffsiteError, match="bucket 'no-such-bucket' does not exist"):
        OffsiteStore.from_settings(s3_settings(s3_bucket="no-such-bucket")).list()
    closed = _free_ports(1)[0]
    with pytest.raises(OffsiteError, match="cannot reach the offsite store"):
        OffsiteStore.from_settings(s3_settings(s3_endpoint_url=f"http://127.0.0.1:{closed}")).list()


class _KillOnBackupStored(logging.Handler):
    """Kills the server the moment the run has stored its local backup, before the upload."""

    def __init__(self, server: SeaweedServer) -> None:
        super().__init__()
        self.server = server
        self.fired = False

    def emit(self, record: logging.LogRecord) -> None:
        if (
            not self.fired
            and record.getMessage().startswith("backup ")
            and "stored" in (record.getMessage())
        ):
            self.fired = True
            self.server.kill()


def test_server_killed_mid_run_then_catches_up(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings]
) -> None:
    settings = s3_settings()
    first = run(settings, force=True)
    assert first.offsite is not None and first.offsite.ok
    backup_logger = logging.getLogger("tablettracker_backups.backup")
    handler = _KillOnBackupStored(s3_server)
    backup_logger.addHandler(handler)
    previous_level = backup_logger.level
    backup_logger.setLevel(logging.INFO)
    try:
        second = run(settings, force=True)
        # Local retention keeps one backup per hour, so the extra one is a safety snapshot.
        extra = create_backup(settings, kind="pre-restore", trigger="test")
    finally:
        backup_logger.removeHandler(handler)
        backup_logger.setLevel(previous_level)
    assert handler.fired
    assert not s3_server.running
    # The run stored and verified its local backup although the store was gone.
    assert second.error is None
    assert second.backup is not None
    assert BackupStore(settings).get(second.backup.metadata.id).verified
    assert any("cannot reach the offsite store" in w for w in second.warnings), second.warnings
    assert second.exit_code == 1
    assert second.health.offsite["behind"] == 1
    lag = offsite_lag(settings, BackupStore(settings).list())
    assert lag.behind == (extra.metadata.id, second.backup.metadata.id)
    assert lag.behind_since == second.backup.metadata.created_at
    findings = {f.code: f for f in check_health(settings).findings}
    assert findings["offsite-behind"].level == "warning"
    assert "2 backup(s) behind since" in findings["offsite-behind"].message
    assert "cannot reach" in findings["offsite-behind"].message

    # The server comes back: the next run uploads what was missed.
    s3_server.start()
    caught_up = run(settings)
    assert caught_up.offsite is not None and caught_up.offsite.ok, caught_up.offsite
    uploaded = {u.id for u in caught_up.offsite.uploaded}
    assert uploaded == {second.backup.metadata.id, extra.metadata.id}
    assert caught_up.health.offsite["behind"] == 0
    assert not [f for f in caught_up.health.findings if f.code.startswith("offsite")]
    assert caught_up.exit_code == 0


def test_server_killed_during_a_multipart_upload(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    db = tmp_path / "big.db"
    _big_incompressible_db(db, 11 * MiB)
    settings = s3_settings(
        database=db, s3_multipart_threshold="5MiB", s3_multipart_chunksize="5MiB"
    )
    meta = create_backup(settings).metadata
    offsite = OffsiteStore.from_settings(settings)
    data = BackupStore(settings).data_path("primary", meta.id, meta.compression)
    sent = [0]

    def kill_after_first_part(size: int) -> None:
        sent[0] += size
        if sent[0] >= 5 * MiB and s3_server.running:
            s3_server.kill()

    try:
        with pytest.raises(OffsiteError):
            offsite.upload(data, meta, progress=kill_after_first_part)
    finally:
        if not s3_server.running:
            s3_server.start()
    assert sent[0] >= 5 * MiB
    assert BackupStore(settings).get(meta.id).verified
    # Nothing half-uploaded counts as a backup; the next sync uploads it whole.
    assert meta.id not in {o.id for o in offsite.list()}
    synced = sync_offsite(settings)
    assert [u.id for u in synced.uploaded] == [meta.id]
    assert offsite.verify(meta.id, scratch_dir=tmp_path).ok


# -- damage and recovery -----------------------------------------------------------------------


def _flip_offsite_byte(server: SeaweedServer, key: str) -> None:
    client = server.client()
    body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))


def test_flipped_byte_is_detected_and_recovery_uses_another_copy(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = s3_settings()
    # Retention keeps one backup per hour; a pinned one is kept whatever its slot. (A safety
    # snapshot would be kept by count, but it is never "latest", offsite or not.)
    older = create_backup(settings, kind="manual", trigger="test", pinned=True)
    newer = run(settings, force=True)
    assert newer.backup is not None
    assert newer.offsite is not None
    assert {u.id for u in newer.offsite.uploaded} == {older.metadata.id, newer.backup.metadata.id}
    # Both may share a second; ids order them, and "latest" means the greatest id.
    newer_id, older_id = sorted({older.metadata.id, newer.backup.metadata.id}, reverse=True)
    offsite = OffsiteStore.from_settings(settings)
    _flip_offsite_byte(s3_server, offsite.data_key(newer_id, "zstd"))

    results = {r.id: r for r in verify_offsite(settings)}
    assert results[older_id].ok
    assert not results[newer_id].ok
    assert results[newer_id].error
    infos = BackupStore(settings).list()
    assert copy_states(settings, infos)[newer_id] == "pending"  # damaged offsite: re-upload
    assert read_state(settings).copies[newer_id].ok is False
    assert any(f.code == "offsite-damaged" for f in check_health(settings).findings)

    # A named backup must pass or nothing is written ...
    with pytest.raises(VerificationError, match="failed its checks"):
        recover_from_offsite(settings, newer_id, to=tmp_path / "named.db")
    assert not (tmp_path / "named.db").exists()
    # ... while "latest" passes over the damaged copy to the newest sound one, and says so.
    recovered = recover_from_offsite(settings, "latest", to=tmp_path / "latest.db")
    assert recovered.id == older_id
    assert [s[0] for s in recovered.skipped] == [newer_id]
    assert _row_counts(tmp_path / "latest.db") == older.metadata.row_counts
    assert recovered.metadata.id == older_id
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []

    # The next run replaces the damaged offsite copy from the sound local one.
    repaired = run(settings)
    assert repaired.offsite is not None
    assert newer_id in {u.id for u in repaired.offsite.uploaded}
    assert all(r.ok for r in verify_offsite(settings, [newer_id]))


def test_a_repair_passes_over_a_damaged_local_copy_to_the_offsite_one(
    s3_settings: Callable[..., Settings],
) -> None:
    """heal checks a source before copying from it: the secondary copy is damaged in place
    (same size, so the listing calls it ok), so the missing primary is rebuilt from the
    offsite copy instead; then the damaged secondary too."""
    settings = s3_settings()
    first = run(settings, force=True)
    assert first.backup is not None and first.offsite is not None and first.offsite.ok
    backup_id = first.backup.metadata.id
    assert settings.secondary_dir is not None
    for name in (f"{backup_id}.db.zst", f"{backup_id}.json"):
        (settings.backup_dir / name).unlink()
    flip_byte(settings.secondary_dir / f"{backup_id}.db.zst")
    # No re-verify first: it would mark the copy damaged, and heal would skip it for that.
    result = run(settings, reverify=False)
    assert [(r.location, r.source, r.ok) for r in result.repaired if r.id == backup_id] == [
        ("primary", "offsite", True),
        ("secondary", "offsite", True),
    ], result.repaired
    info = BackupStore(settings).get(backup_id)
    assert all(
        BackupStore(settings).checksum_matches(info, where) for where in ("primary", "secondary")
    )


def test_a_repair_refuses_a_damaged_download_before_it_is_committed(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings]
) -> None:
    """heal hashes a downloaded copy before its rename: a damaged offsite object is refused
    in those words (the re-hash after the rename would only say the rebuilt copy differs)."""
    settings = s3_settings()
    first = run(settings, force=True)
    assert first.backup is not None and first.offsite is not None and first.offsite.ok
    meta = first.backup.metadata
    assert settings.s3 is not None and settings.secondary_dir is not None
    client = s3_server.client()
    key = settings.s3.prefix + meta.data_file
    body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    for name in (f"{meta.id}.db.zst", f"{meta.id}.json"):
        (settings.backup_dir / name).unlink()
    flip_byte(settings.secondary_dir / f"{meta.id}.db.zst")
    result = run(settings)
    failed = [r for r in result.repaired if r.id == meta.id]
    assert [(r.location, r.source, r.ok) for r in failed] == [
        ("primary", "offsite", False),
        ("secondary", "offsite", False),
    ], failed
    assert all(
        r.error == f"the offsite copy of {meta.id} does not match its metadata" for r in failed
    ), failed
    assert not (settings.backup_dir / f"{meta.id}.db.zst").exists()


def test_recovery_from_offsite_refuses_and_passes_over_word_for_word(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = s3_settings()
    where = OffsiteStore.from_settings(settings).where
    target = tmp_path / "recovered" / "tablet_counter.db"

    def refused(error: type[Exception], backup_id: str = "latest", to: Path = target) -> str:
        with pytest.raises(error) as caught:
            recover_from_offsite(settings, backup_id, to=to)
        assert not to.exists()
        return str(caught.value)

    assert refused(BackupNotFound) == f"there are no backups in the offsite store {where}"
    # A safety snapshot is never "latest", offsite or not.
    create_backup(settings, kind="pre-restore")
    sync_offsite(settings)
    assert refused(BackupNotFound) == (
        f"there is no good regular backup in the offsite store {where}"
    )
    time.sleep(1.1)  # ids order backups by the second: the regular one is newer ...
    regular = create_backup(settings, pinned=True).metadata
    time.sleep(1.1)  # ... and a second safety snapshot newer still, to be passed over
    create_backup(settings, kind="pre-restore")
    assert {u.id for u in sync_offsite(settings).uploaded} >= {regular.id}
    unknown = "20200101T000000Z-000000"
    assert refused(BackupNotFound, unknown) == f"no backup {unknown} in the offsite store {where}"

    steps: list[int] = []
    recovered = recover_from_offsite(settings, to=target, progress=steps.append)
    assert (recovered.id, recovered.path, recovered.skipped) == (regular.id, target, ())
    assert sum(steps) == regular.stored_size  # the download, reported as it came
    assert _row_counts(target) == regular.row_counts
    # The path must be new: an existing file, or a link to one that is not there yet.
    exists = f"{target} already exists; recover into a new path, then move it into place"
    with pytest.raises(RestoreError) as caught:
        recover_from_offsite(settings, to=target)
    assert str(caught.value) == exists
    link = tmp_path / "recovered" / "link.db"
    link.symlink_to(tmp_path / "nowhere.db")
    with pytest.raises(RestoreError) as caught:
        recover_from_offsite(settings, to=link)
    assert str(caught.value) == exists.replace(str(target), str(link))
    assert not (tmp_path / "nowhere.db").exists()

    # The only regular backup damaged: named, it fails with its reason; latest says which.
    key = OffsiteStore.from_settings(settings).data_key(regular.id, "zstd")
    _flip_offsite_byte(s3_server, key)
    again = tmp_path / "again.db"
    named = refused(VerificationError, regular.id, to=again)
    prefix, suffix = f"offsite backup {regular.id} failed its checks: ", "; nothing was written"
    assert named.startswith(prefix) and named.endswith(suffix)
    reason = named[len(prefix) : -len(suffix)]
    # Named as the owner knows it (the object), never as the scratch download.
    assert reason.startswith(f"offsite {key}: SHA-256 does not match its metadata")
    assert refused(VerificationError, to=again) == (
        f"every offsite backup failed its checks (newest {regular.id}: {reason})"
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_a_backup_kept_only_offsite_resolves_as_its_offsite_copy(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from tablettracker_backups.restore import resolve_backup
    from tablettracker_backups.store import CopyState, CopyStatus

    settings = s3_settings()
    meta = create_backup(settings, pinned=True).metadata  # pinned: offsite retention keeps it
    # Newer ones that cannot be "latest": a safety snapshot, and one whose metadata object
    # will be unreadable. ids order backups by the second.
    time.sleep(1.1)
    safety = create_backup(settings, kind="pre-restore").metadata
    time.sleep(1.1)
    unreadable = create_backup(settings).metadata
    assert sync_offsite(settings).ok
    offsite = OffsiteStore.from_settings(settings)
    assert offsite.complete_ids()[:3] == [unreadable.id, safety.id, meta.id]
    store = BackupStore(settings)
    for made in (meta, safety, unreadable):
        store.delete(made.id)
    s3_server.client().put_object(Bucket=BUCKET, Key=offsite.metadata_key(unreadable.id), Body=b"{")
    for name in (meta.id, "latest"):
        info = resolve_backup(BackupStore(settings), name)
        assert (info.id, info.created_at, info.verified) == (meta.id, meta.created_at, True)
        assert info.copies == (CopyState("offsite", CopyStatus.OK),)
        assert info.metadata is not None and info.metadata.sha256 == meta.sha256
    unknown = "20200101T000000Z-000000"
    with pytest.raises(BackupNotFound) as caught:
        resolve_backup(store, unknown)
    assert str(caught.value) == f"no backup with id {unknown}"  # the local answer, as it was
    # Recovery says why it passed over the unreadable one (the safety snapshot is simply
    # never a candidate).
    recovered = recover_from_offsite(settings, to=tmp_path / "recovered.db")
    assert recovered.id == meta.id
    assert [skipped for skipped, _ in recovered.skipped] == [unreadable.id]


def test_restore_falls_back_to_offsite_when_local_copies_are_bad_or_gone(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings], tmp_path: Path, db_path: Path
) -> None:
    from tablettracker_backups.restore import restore_backup

    settings = s3_settings()
    with closing(sqlite3.connect(db_path)) as conn:  # 2.5 MiB that does not compress
        conn.execute("CREATE TABLE attachments (body BLOB)")
        conn.executemany(
            "INSERT INTO attachments VALUES (?)", [(os.urandom(65536),) for _ in range(40)]
        )
        conn.commit()
    taken = run(settings, force=True)
    assert taken.backup is not None and taken.offsite is not None and taken.offsite.ok
    meta = taken.backup.metadata
    store = BackupStore(settings)
    # Real damage to both local copies (same size, one bit flipped): restore must not use them.
    for location in store.locations:
        flip_byte(store.data_path(location, meta.id, meta.compression))
    steps: list[tuple[str, int, int]] = []
    result = restore_backup(
        settings, meta.id, to=tmp_path / "a.db", progress=lambda *step: steps.append(step)
    )
    assert result.source_location == "offsite"
    assert [m.split(":")[0] for m in result.fell_back] == [
        "primary copy skipped",
        "secondary copy skipped",
        "restored from the offsite copy",
    ]
    assert _row_counts(tmp_path / "a.db") == _row_counts(db_path)
    # The download is reported against the stored size, and adds up to it.
    downloads = [(done, total) for stage, done, total in steps if stage == "download"]
    assert downloads and downloads[-1] == (meta.stored_size, meta.stored_size)
    assert all(a[0] < b[0] for a, b in pairwise(downloads))

    # The offsite copy damaged too: nothing is written, and each copy says why.
    key = OffsiteStore.from_settings(settings).data_key(meta.id, meta.compression)
    original = s3_server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    _flip_offsite_byte(s3_server, key)
    with pytest.raises(RestoreError) as caught:
        restore_backup(settings, meta.id, to=tmp_path / "none.db")
    assert str(caught.value).startswith(f"no sound copy of backup {meta.id}; nothing was changed (")
    assert f"; offsite copy skipped: offsite {key}: SHA-256 does not match" in str(caught.value)
    assert not (tmp_path / "none.db").exists()
    s3_server.client().put_object(Bucket=BUCKET, Key=key, Body=original)

    # Local copies gone altogether: "latest" and the id both come from the offsite store.
    store.delete(meta.id)
    assert store.ids() == []
    result = restore_backup(settings, "latest", to=tmp_path / "b.db")
    assert (result.backup_id, result.source_location) == (meta.id, "offsite")
    assert _row_counts(tmp_path / "b.db") == _row_counts(db_path)
    assert not [p for p in settings.backup_dir.iterdir() if p.name.startswith(".tmp-")]

    # With the store unreachable too, the restore fails clearly and writes nothing.
    closed = _free_ports(1)[0]
    unreachable = s3_settings(s3_endpoint_url=f"http://127.0.0.1:{closed}")
    from tablettracker_backups.errors import BackupNotFound

    with pytest.raises(BackupNotFound, match="cannot reach the offsite store"):
        restore_backup(unreachable, meta.id, to=tmp_path / "c.db")
    assert not (tmp_path / "c.db").exists()


def test_a_rollback_never_asks_the_offsite_store(
    s3_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # The rollback writes back the safety copy it took under its own lock moments ago: no
    # store is asked, not even with an offsite store configured (here unreachable).
    from tablettracker_backups.restore import restore_backup

    settings = s3_settings(s3_endpoint_url=f"http://127.0.0.1:{_free_ports(1)[0]}")
    backup = create_backup(settings).metadata

    def fault(target: Path, held: sqlite3.Connection | None) -> None:
        assert held is not None
        held.execute("DELETE FROM employees")

    started = time.monotonic()
    with pytest.raises(RestoreError, match="was put back"):
        restore_backup(settings, backup.id, _after_write=fault)
    assert time.monotonic() - started < 30  # no wait on an unreachable store's timeouts
    entry = read_entries(settings)[0]
    assert not [n for n in entry.details["fell_back"] if "offsite" in n]


def test_offsite_retention_keeps_its_own_counts(s3_settings: Callable[..., Settings]) -> None:
    settings = s3_settings()
    safety = [create_backup(settings, kind="pre-restore", trigger="test") for _ in range(2)]
    first = run(settings, force=True)
    assert first.offsite is not None and len(first.offsite.uploaded) == 3
    # Offsite now keeps no safety snapshots (locally the default, 10, still applies).
    stricter = s3_settings(s3_keep_pre_restore=0)
    second = run(stricter)
    assert second.offsite is not None and second.offsite.ok
    assert set(second.offsite.pruned) == {s.metadata.id for s in safety}
    assert first.backup is not None
    assert [o.id for o in OffsiteStore.from_settings(stricter).list()] == [first.backup.metadata.id]
    local = BackupStore(stricter).list()
    assert {s.metadata.id for s in safety} <= {i.id for i in local}
    states = copy_states(stricter, local)
    assert states[first.backup.metadata.id] == "ok"
    assert {states[s.metadata.id] for s in safety} == {"none"}
    assert second.health.offsite["behind"] == 0
    # The newest verified offsite backup is never pruned, whatever the counts.
    nothing = s3_settings(
        s3_keep_hourly=0,
        s3_keep_daily=0,
        s3_keep_weekly=0,
        s3_keep_monthly=0,
        s3_keep_yearly=0,
        s3_keep_pre_restore=0,
    )
    third = run(nothing)
    assert third.offsite is not None and third.offsite.pruned == ()
    assert [o.id for o in OffsiteStore.from_settings(nothing).list()] == [first.backup.metadata.id]


def fresh_machine_env(machine: Path, server: SeaweedServer, prefix: str) -> dict[str, str]:
    """The whole environment of a new machine: an empty home, no config file, no AWS
    configuration, only the offsite settings and credentials."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(machine / "home"),
        "XDG_CONFIG_HOME": str(machine / "home" / ".config"),
        "AWS_CONFIG_FILE": str(machine / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(machine / "none"),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "BACKUPS_S3_BUCKET": BUCKET,
        "BACKUPS_S3_ENDPOINT_URL": server.endpoint,
        "BACKUPS_S3_PREFIX": prefix,
        "BACKUPS_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "BACKUPS_S3_SECRET_ACCESS_KEY": SECRET_KEY,
    }


def test_full_recovery_from_offsite_alone(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings], tmp_path: Path, db_path: Path
) -> None:
    settings = s3_settings()
    taken = run(settings, force=True)
    assert taken.offsite is not None and taken.offsite.ok
    assert settings.s3 is not None
    # A new machine: an empty home, no config file, no backup folder, only the credentials.
    machine = tmp_path / "new-machine"
    (machine / "home").mkdir(parents=True)
    target = machine / "instance" / "tablet_counter.db"
    env = fresh_machine_env(machine, s3_server, settings.s3.prefix)
    command = [
        sys.executable,
        "-m",
        "tablettracker_backups",
        "restore",
        "latest",
        "--from-offsite",
        "--to",
        str(target),
    ]
    done = subprocess.run(
        command,
        cwd=machine,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert taken.backup is not None
    assert taken.backup.metadata.id in done.stdout
    _secret_absent(done.stdout, done.stderr)
    assert _row_counts(target) == _row_counts(db_path)
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(p.name for p in target.parent.iterdir()) == ["tablet_counter.db"]

    again = subprocess.run(
        command,
        cwd=machine,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 2
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr

    wrong = subprocess.run(
        [*command[:-1], str(machine / "other.db")],
        cwd=machine,
        env={**env, "BACKUPS_S3_SECRET_ACCESS_KEY": "wrong-secret-value"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("Error: ") and len(wrong.stderr.strip().splitlines()) == 1
    assert "rejected the credentials" in wrong.stderr
    assert "wrong-secret-value" not in wrong.stdout + wrong.stderr
    assert not (machine / "other.db").exists()


# -- web dashboard -----------------------------------------------------------------------------


def test_dashboard_and_list_show_offsite_copies(s3_server: SeaweedServer, tmp_path: Path) -> None:
    from tablettracker_backups.demo import create_app
    from tablettracker_backups.web.extension import get_state
    from tests.conftest import login

    prefix = f"web-{uuid.uuid4().hex[:12]}/"
    app = create_app(
        {
            "INSTANCE_PATH": tmp_path / "instance-demo",
            "TESTING": True,
            "BACKUPS_LOCK_TIMEOUT": 0,
            "BACKUPS_S3_BUCKET": BUCKET,
            "BACKUPS_S3_ENDPOINT_URL": s3_server.endpoint,
            "BACKUPS_S3_PREFIX": prefix,
            "BACKUPS_S3_ADDRESSING_STYLE": "path",
            "BACKUPS_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "BACKUPS_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        }
    )
    with app.app_context():
        settings = get_state().settings
    uploaded = run(settings, force=True)
    assert uploaded.offsite is not None and uploaded.offsite.ok
    assert uploaded.backup is not None
    pending = create_backup(settings, kind="pre-restore", trigger="test").metadata.id
    client = app.test_client()
    login(client, "admin", app.config["DEMO_PASSWORD"])

    listing = client.get("/admin/backups/backups").get_data(as_text=True)
    assert "offsite: ok" in listing and "offsite: pending" in listing
    detail = client.get(f"/admin/backups/backups/{pending}").get_data(as_text=True)
    assert "offsite: pending" in detail
    dashboard = client.get("/admin/backups/").get_data(as_text=True)
    assert "Offsite copies" in dashboard
    assert "1 backup(s) behind since" in dashboard
    for page in (listing, detail, dashboard):
        _secret_absent(page)


def test_verify_offsite_shares_the_lock_with_run(s3_settings: Callable[..., Settings]) -> None:
    from tablettracker_backups.errors import LockedError
    from tablettracker_backups.locking import operation_lock
    from tablettracker_backups.offsite.record import read_state

    settings = s3_settings(lock_timeout=0.2)
    run(settings)
    before = read_state(settings)
    # While a run (here: anyone holding the lock) may be updating the offsite record,
    # verify --offsite waits, then gives up without touching the record.
    with operation_lock(settings), pytest.raises(LockedError):
        verify_offsite(settings)
    assert read_state(settings) == before
    assert all(r.ok for r in verify_offsite(settings))


def test_the_sync_json_and_what_verify_offsite_records(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings]
) -> None:
    from tablettracker_backups.errors import BackupNotFound

    settings = s3_settings()
    result = run(settings, force=True)
    assert result.offsite is not None and result.backup is not None
    backup_id = result.backup.metadata.id
    (upload,) = result.offsite.uploaded
    assert result.offsite.to_dict() == {
        "ok": True,
        "uploaded": [
            {"id": backup_id, "size": upload.size, "check": upload.check, "parts": upload.parts}
        ],
        "pruned": [],
        "verified": [{"id": backup_id, "ok": True, "error": None}],
        "collected_objects": 0,
        "collected_bytes": 0,
        "behind": [],
        "errors": [],
    }
    assert upload.size == result.backup.metadata.stored_size
    with pytest.raises(BackupNotFound, match="no backup 20200101T000000Z-000000 in the offsite"):
        verify_offsite(settings, ["20200101T000000Z-000000"])
    # Damaged offsite: verify (of every copy, by default) says so and the record keeps it.
    assert settings.s3 is not None
    key = f"{settings.s3.prefix}{backup_id}.db.zst"
    client = s3_server.client()
    body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    (checked,) = verify_offsite(settings)
    assert (checked.id, checked.ok) == (backup_id, False) and checked.error
    copy = read_state(settings).copies[backup_id]
    assert copy.ok is False and copy.error == checked.error
    assert copy.read_back_at is not None


def test_reconcile_records_what_the_listing_shows_it_cannot_use(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings]
) -> None:
    """A record rebuilt from a listing alone (say, a new machine): an object whose data is
    gone, and one whose metadata does not read, are both recorded as not sound, as of now."""
    from datetime import datetime, timezone

    from tablettracker_backups.offsite.record import OffsiteState
    from tablettracker_backups.offsite.sync import _reconcile

    settings = s3_settings()
    kept = create_backup(settings, kind="manual", trigger="test", pinned=True).metadata
    result = run(settings, force=True)
    assert result.backup is not None and result.offsite is not None
    assert {u.id for u in result.offsite.uploaded} == {kept.id, result.backup.metadata.id}
    gone = result.backup.metadata.id
    offsite = OffsiteStore.from_settings(settings)
    client = s3_server.client()
    client.delete_object(Bucket=BUCKET, Key=offsite.data_key(gone, "zstd"))
    unreadable = "20991231T000000Z-000000"  # listed first (newest): the others still follow
    client.put_object(Bucket=BUCKET, Key=offsite.metadata_key(unreadable), Body=b"{")
    client.put_object(Bucket=BUCKET, Key=offsite.data_key(unreadable, "zstd"), Body=b"x")
    now = datetime.now(timezone.utc)
    state = _reconcile(offsite, OffsiteState(), offsite.list(), now)
    missing, damaged = state.copies[gone], state.copies[unreadable]
    assert (missing.kind, missing.size, missing.ok, missing.error) == (
        "scheduled",
        0,
        False,
        "data object missing",
    )
    assert (missing.sha256, missing.upload_check, missing.read_back_at) == ("", "", now)
    assert (damaged.kind, damaged.size, damaged.sha256, damaged.ok) == ("scheduled", 0, "", False)
    assert damaged.upload_check == "" and damaged.read_back_at == now and damaged.error
    # The sound one is learned from its metadata, as listed, never read back yet.
    learned = state.copies[kept.id]
    assert (learned.kind, learned.size, learned.upload_check, learned.ok) == (
        "manual",
        kept.stored_size,
        "listed",
        True,
    )
    assert learned.read_back_at is None and learned.error is None


def test_a_failed_sync_is_recorded_with_its_time_and_error(
    s3_server: SeaweedServer, s3_settings: Callable[..., Settings]
) -> None:
    """The record health reads: a sync that failed says when and why (a bucket that does not
    exist: the listing itself fails)."""
    from tablettracker_backups.locking import operation_lock

    settings = s3_settings(s3_bucket="no-such-bucket-here")
    create_backup(settings)
    with operation_lock(settings):
        result = sync_offsite(settings)
    assert result.errors and not result.ok
    state = read_state(settings)
    assert state.last_sync_ok is False and state.last_error == result.errors[0]
    assert state.last_error_at is not None and state.last_error_at == state.last_sync_at

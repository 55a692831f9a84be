"""Encrypted offsite copies against a real S3 server (SeaweedFS, as in test_offsite.py).

What the provider holds is read back with a plain S3 client, as the provider (or anyone with
the bucket's keys) would: no object may contain the SQLite header or a table's name. Damage is
real (bytes changed in the stored objects), a sync is killed with SIGKILL mid-encryption, and
recovery on an empty machine runs the real command in a fresh process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tablettracker_backups.backup import create_backup
from tablettracker_backups.cli import cli
from tablettracker_backups.encryption import (
    AGE_HEADER,
    SealResult,
    encrypt_file,
    encrypted_metadata,
    fingerprint,
    public_metadata,
)
from tablettracker_backups.encryption import load_identity as open_key
from tablettracker_backups.errors import (
    AgeIdentityError,
    BackupError,
    ObjectCorrupt,
    PlaintextRefused,
    RestoreError,
    VerificationError,
)
from tablettracker_backups.health import check_health
from tablettracker_backups.offsite.client import OffsiteStore
from tablettracker_backups.offsite.record import read_state
from tablettracker_backups.offsite.sync import sync_offsite, verify_offsite
from tablettracker_backups.restore import preview_restore, recover_from_offsite, restore_backup
from tablettracker_backups.runner import RunResult, run
from tablettracker_backups.settings import Settings
from tablettracker_backups.storage.sealed import Seal, SealedStore
from tablettracker_backups.store import BackupStore
from tests import faultkit, test_offsite
from tests.netkit import recording_proxy
from tests.test_offsite import (
    ACCESS_KEY,
    BUCKET,
    SECRET_KEY,
    SeaweedServer,
    _big_incompressible_db,
    _row_counts,
)

# test_offsite.py's fixtures: its own SeaweedFS server (one per module), a prefix per test,
# and no AWS configuration from the machine.
s3_server = test_offsite.s3_server
s3_settings = test_offsite.s3_settings
_no_ambient_aws = test_offsite._no_ambient_aws

pytest.importorskip("pyrage")

SQLITE_HEADER = b"SQLite format 3\x00"
MiB = 1024 * 1024


def stored_objects(server: SeaweedServer, settings: Settings) -> dict[str, bytes]:
    """Every object under the settings' prefix, as the provider holds it."""
    assert settings.s3 is not None
    client = server.client()
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=settings.s3.prefix).get("Contents", [])
    return {
        item["Key"]: client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        for item in listed
    }


def table_names(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    return [str(r[0]) for r in rows if not str(r[0]).startswith("sqlite_")]


def assert_provider_sees_no_plaintext(objects: dict[str, bytes], db: Path) -> None:
    names = table_names(db)
    assert names, "the database has tables"
    for key, body in objects.items():
        assert SQLITE_HEADER not in body, key
        assert not [n for n in names if n.encode() in body], key
        if not key.endswith(".json"):
            assert body.startswith(AGE_HEADER), key


def cli_env(settings: Settings, server: SeaweedServer, **extra: str) -> dict[str, str]:
    assert settings.s3 is not None
    env = {
        "BACKUPS_DATABASE": str(settings.database),
        "BACKUPS_DIR": str(settings.backup_dir),
        "BACKUPS_S3_BUCKET": BUCKET,
        "BACKUPS_S3_ENDPOINT_URL": server.endpoint,
        "BACKUPS_S3_PREFIX": settings.s3.prefix,
        "BACKUPS_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "BACKUPS_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "BACKUPS_S3_ADDRESSING_STYLE": "path",
    }
    env.update(extra)
    return env


def encrypted_run(
    s3_settings: Callable[..., Settings], keys: Callable[[str], tuple[Path, str]]
) -> tuple[Settings, Path, str, RunResult]:
    """A run with BACKUPS_ENCRYPT_TO set (offsite mode) that backed up and uploaded: the
    settings, the owner's identity file, its public key, and the run."""
    identity_file, recipient = keys("owner")
    settings = s3_settings(encrypt_to=recipient)
    result = run(settings, force=True)
    assert result.error is None and result.backup is not None, result
    assert result.offsite is not None and result.offsite.ok, result.offsite
    return settings, identity_file, recipient, result


# -- the round trip ----------------------------------------------------------------------------


def test_offsite_mode_round_trip(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    db_path: Path,
    tmp_path: Path,
) -> None:
    settings, identity_file, recipient, result = encrypted_run(s3_settings, keys)
    assert result.backup is not None and result.offsite is not None
    backup_id = result.backup.metadata.id

    # Local copies stay plain (and hold the schema, as the live database does) ...
    local = settings.backup_dir / result.backup.metadata.data_file
    assert local.name.endswith(".db.zst") and not local.read_bytes().startswith(AGE_HEADER)
    # ... while the provider holds only ciphertext and metadata that names no table.
    objects = stored_objects(s3_server, settings)
    assert settings.s3 is not None
    prefix = settings.s3.prefix
    assert_provider_sees_no_plaintext(objects, db_path)
    assert sorted(objects) == [f"{prefix}{backup_id}.db.zst.age", f"{prefix}{backup_id}.json"]
    document = json.loads(objects[f"{prefix}{backup_id}.json"])
    assert document["encryption"]["recipients"] == [fingerprint(recipient)]
    assert document["row_counts"] == {} and document["source"]["path"] == ""
    assert document["encryption"]["inner_sha256"] == result.backup.metadata.sha256
    copy = read_state(settings).copies[backup_id]
    assert copy.recipients == (fingerprint(recipient),) and copy.ok
    # The run's read-back had no identity: it checked the ciphertext.
    assert [(v.id, v.ok, v.depth) for v in result.offsite.verified] == [(backup_id, True, "sealed")]
    assert any(f.code == "encryption-drill" for f in result.health.findings)

    # The full drill with the identity, through the CLI.
    runner = CliRunner()
    env = cli_env(settings, s3_server, BACKUPS_ENCRYPT_TO=recipient)
    drilled = runner.invoke(
        cli, ["verify", "--offsite", "--identity", str(identity_file), "--json"], env=env
    )
    assert drilled.exit_code == 0, drilled.output
    assert json.loads(drilled.output) == [
        {"id": backup_id, "ok": True, "error": None, "depth": "full", "note": None}
    ]
    assert not [f for f in check_health(settings).findings if f.code.startswith("encryption")]
    listed = json.loads(runner.invoke(cli, ["list", "--json"], env=env).output)
    assert [(i["encrypted_to"], i["offsite_encrypted_to"]) for i in listed] == [
        (None, [fingerprint(recipient)])
    ]
    sealed = runner.invoke(cli, ["verify", "--offsite"], env=env)
    assert sealed.exit_code == 0 and "ciphertext checked" in sealed.output

    target = tmp_path / "recovered.db"
    recovered = recover_from_offsite(settings, to=target, identity=open_key(identity_file))
    assert recovered.id == backup_id
    assert _row_counts(target) == _row_counts(db_path)
    assert recovered.metadata.row_counts == result.backup.metadata.row_counts
    # Nothing uploaded twice: the next run finds the copy in step.
    again = run(settings)
    assert again.offsite is not None and again.offsite.uploaded == ()


def test_all_mode_uploads_the_local_ciphertext_as_it_is(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    db_path: Path,
    tmp_path: Path,
) -> None:
    identity_file, recipient = keys("owner")
    settings = s3_settings(encrypt_to=recipient, encrypt="all")
    result = run(settings, force=True)
    assert result.backup is not None and result.offsite is not None and result.offsite.ok
    meta = result.backup.metadata
    local = (settings.backup_dir / meta.data_file).read_bytes()
    assert settings.s3 is not None
    objects = stored_objects(s3_server, settings)
    assert objects[f"{settings.s3.prefix}{meta.data_file}"] == local
    assert_provider_sees_no_plaintext(objects, db_path)
    target = tmp_path / "recovered.db"
    recover_from_offsite(settings, to=target, identity=open_key(identity_file))
    assert _row_counts(target) == _row_counts(db_path)


# -- damage, and the wrong or missing key -------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_damaged_offsite_ciphertext_is_rejected_with_nothing_written(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    tmp_path: Path,
    damage: str,
) -> None:
    settings, identity_file, _, taken = encrypted_run(s3_settings, keys)
    assert taken.backup is not None
    backup_id = taken.backup.metadata.id
    assert settings.s3 is not None
    key = f"{settings.s3.prefix}{backup_id}.db.zst.age"
    client = s3_server.client()
    body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    if damage == "flip":
        body[len(body) // 2] ^= 0x01
    elif damage == "truncate":
        del body[-5:]
    else:
        body += b"appended"
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))

    machine = tmp_path / "machine"
    machine.mkdir()
    target = machine / "recovered.db"
    with pytest.raises(VerificationError, match="nothing was written"):
        recover_from_offsite(settings, backup_id, to=target, identity=open_key(identity_file))
    assert sorted(p.name for p in machine.iterdir()) == []
    full = verify_offsite(settings, [backup_id], identity=open_key(identity_file))
    sealed = verify_offsite(settings, [backup_id])
    assert [(r.ok, r.depth) for r in full] == [(False, "full")]
    assert [(r.ok, r.depth) for r in sealed] == [(False, "sealed")]
    assert read_state(settings).copies[backup_id].ok is False


def test_missing_and_wrong_identity_on_an_empty_machine(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    db_path: Path,
    tmp_path: Path,
) -> None:
    settings, identity_file, recipient, taken = encrypted_run(s3_settings, keys)
    stranger_file, stranger = keys("stranger")
    assert taken.backup is not None and settings.s3 is not None
    # A new machine: empty home, no config, no backup folder; the credentials and the identity
    # (brought along from where the owner keeps it) are all it has.
    machine = tmp_path / "new-machine"
    (machine / "home").mkdir(parents=True)
    target = machine / "instance" / "tablet_counter.db"
    env = test_offsite.fresh_machine_env(machine, s3_server, settings.s3.prefix)
    command = [sys.executable, "-m", "tablettracker_backups", "restore", "latest"]
    command += ["--from-offsite", "--to", str(target)]

    def restore(*extra: str, **more_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *extra],
            cwd=machine,
            env={**env, **more_env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    missing = restore()
    wrong = restore("--identity", str(stranger_file))
    faultkit.assert_one_line_error(missing, fingerprint(recipient), "--identity FILE")
    faultkit.assert_one_line_error(wrong, fingerprint(recipient), fingerprint(stranger))
    assert missing.returncode == wrong.returncode == 2
    assert not target.exists()

    done = restore(BACKUPS_IDENTITY_FILE=str(identity_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert taken.backup.metadata.id in done.stdout and "decrypted" in done.stdout
    assert _row_counts(target) == _row_counts(db_path)
    assert sorted(p.name for p in target.parent.iterdir()) == ["tablet_counter.db"]
    assert "AGE-SECRET-KEY" not in done.stdout + done.stderr


# -- plaintext can never go offsite ---------------------------------------------------------------


def test_without_pyrage_nothing_is_uploaded_and_health_is_critical(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, recipient = keys("owner")
    settings = s3_settings(encrypt_to=recipient)
    monkeypatch.setitem(sys.modules, "pyrage", None)  # the package is not installed
    result = run(settings, force=True)
    assert result.backup is not None  # the local backup is taken (offsite mode) ...
    assert result.offsite is not None and result.offsite.uploaded == ()
    # Refused before any upload is tried (encrypting would refuse too, one backup later).
    assert result.offsite.errors[0].startswith("1 backup(s) not uploaded: ")
    assert "pyrage" in result.offsite.errors[0]
    assert stored_objects(s3_server, settings) == {}  # ... and nothing goes offsite
    finding = next(f for f in result.health.findings if f.code == "encryption-unavailable")
    assert finding.level == "critical" and "nothing is uploaded offsite" in finding.message
    assert result.exit_code == 2


def test_the_store_refuses_plaintext_and_checks_what_it_stored(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
) -> None:
    _, recipient = keys("owner")
    settings = s3_settings(encrypt_to=recipient)
    meta = create_backup(settings).metadata
    offsite = OffsiteStore.from_settings(settings)
    data = BackupStore(settings).data_path_for("primary", meta)
    with pytest.raises(PlaintextRefused, match=rf"refusing to store {meta.id}.db.zst .*age file"):
        offsite.upload(data, meta)
    assert stored_objects(s3_server, settings) == {}

    # After an upload the object's first bytes are read back: a plain one is caught.
    assert settings.s3 is not None and isinstance(offsite.objects, SealedStore)
    name = f"{meta.id}.db.zst.age"
    s3_server.client().put_object(
        Bucket=BUCKET, Key=settings.s3.prefix + name, Body=data.read_bytes()
    )
    with pytest.raises(ObjectCorrupt, match=f"{name} is no longer sealed"):
        offsite.objects._check_stored(name, Seal.AGE)


def test_no_plaintext_byte_is_sent_for_a_mislabelled_file(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
) -> None:
    """The age-header check before an upload, on its own. A plain file is offered as an
    encrypted one: its metadata says encrypted, matches the file byte for byte (so the local
    SHA-256 check passes) and names no table (so the sealed-metadata check passes). The
    bucket is watched through a recording proxy: not one byte of the file may be sent, not
    even for the read-back check after the upload to delete again."""
    _, recipient = keys("owner")
    with recording_proxy(s3_server.endpoint) as proxy:
        settings = s3_settings(encrypt_to=recipient, s3_endpoint_url=f"http://{proxy.base}")
        # The control: a real encrypted upload through the proxy is seen, body and all.
        result = run(settings, force=True)
        assert result.offsite is not None and result.offsite.ok, result.offsite
        writes = [r for r in proxy.requests if r.method in ("PUT", "POST")]
        assert any(AGE_HEADER in r.body for r in writes), [(r.method, r.path) for r in writes]
        del proxy.requests[:]

        meta = create_backup(settings).metadata  # plain locally (offsite mode)
        plain = BackupStore(settings).data_path_for("primary", meta)
        body = plain.read_bytes()
        assert not body.startswith(AGE_HEADER)
        seal = SealResult(len(body), hashlib.sha256(body).hexdigest(), len(body), meta.sha256)
        mislabelled = public_metadata(encrypted_metadata(meta, seal, [recipient]))
        offsite = OffsiteStore.from_settings(settings)
        with pytest.raises(BackupError) as refused:
            offsite.upload(plain, mislabelled)

        # What the provider was sent decides, whatever a later check did about it.
        sent = [r for r in proxy.requests if r.method in ("PUT", "POST")]
        assert sent == [], [(r.method, r.path) for r in sent]
        assert not [r for r in proxy.requests if body[:512] in r.body]
        assert isinstance(refused.value, VerificationError), refused.value
        assert "it is not an age file" in str(refused.value)
        assert meta.id not in {o.id for o in offsite.list()}


def test_metadata_that_names_the_schema_is_never_sent(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    db_path: Path,
    tmp_path: Path,
) -> None:
    """The sealed-metadata check before an upload, on its own: a real age file, offered with
    its metadata before the table names and row counts were sealed away. Nothing after the
    upload reads the metadata, so only this check keeps the schema from the provider."""
    _, recipient = keys("owner")
    with recording_proxy(s3_server.endpoint) as proxy:
        settings = s3_settings(encrypt_to=recipient, s3_endpoint_url=f"http://{proxy.base}")
        meta = create_backup(settings).metadata
        plain = BackupStore(settings).data_path_for("primary", meta)
        sealed_file = tmp_path / f"{meta.id}.db.zst.age"
        seal = encrypt_file(plain, sealed_file, [recipient], expected_sha256=meta.sha256)
        unsealed = encrypted_metadata(meta, seal, [recipient])  # not public_metadata()
        assert unsealed.row_counts
        offsite = OffsiteStore.from_settings(settings)
        with pytest.raises(BackupError) as refused:
            offsite.upload(sealed_file, unsealed)
        assert [r for r in proxy.requests if r.method in ("PUT", "POST")] == []
        for name in table_names(db_path):
            assert not [r for r in proxy.requests if name.encode() in r.body], name
        assert isinstance(refused.value, VerificationError), refused.value
        assert "it names the schema" in str(refused.value)
        assert offsite.list() == []


def test_kill_9_during_upload_encryption_leaves_nothing_listed(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    tmp_path: Path,
) -> None:
    _, recipient = keys("owner")
    big = tmp_path / "big.db"
    _big_incompressible_db(big, 96 * MiB)
    settings = s3_settings(database=big, secondary_dir=None, encrypt_to=recipient)
    meta = create_backup(settings).metadata
    assert settings.s3 is not None
    env = faultkit.cli_env(None, **cli_env(settings, s3_server, BACKUPS_ENCRYPT_TO=recipient))
    caught = faultkit.kill_when_written(
        faultkit.spawn_cli(["run"], env), settings.backup_dir, ".upload.age"
    )
    assert caught is not None, "the upload finished before its encryption was seen"
    offsite = OffsiteStore.from_settings(settings)
    assert offsite.list() == []
    assert not [k for k in stored_objects(s3_server, settings) if k.endswith(".json")]
    assert [i.id for i in BackupStore(settings).list()] == [meta.id]

    # The next run clears the leftover and uploads the backup, encrypted.
    again = run(settings)
    assert again.offsite is not None and again.offsite.ok, again.offsite
    assert meta.id in {u.id for u in again.offsite.uploaded}
    assert not [p for p in settings.backup_dir.iterdir() if p.name.startswith(".tmp-")]
    assert_provider_sees_no_plaintext(stored_objects(s3_server, settings), big)


# -- key rotation --------------------------------------------------------------------------------


def test_key_rotation_offsite(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    tmp_path: Path,
) -> None:
    plain_settings = s3_settings()
    plain = run(plain_settings, force=True)  # before encryption was set up
    old_file, old = keys("old")
    new_file, new = keys("new")
    older = create_backup(s3_settings(), kind="pre-restore").metadata
    first = run(s3_settings(encrypt_to=old))
    settings = s3_settings(encrypt_to=new)
    second = create_backup(settings, kind="pre-restore").metadata
    last = run(settings)
    assert first.offsite is not None and last.offsite is not None and plain.backup is not None
    assert [u.id for u in first.offsite.uploaded] == [older.id]
    assert [u.id for u in last.offsite.uploaded] == [second.id]

    report = check_health(settings)
    needs = {tuple(n["fingerprints"]): n for n in report.encryption["needs"]}
    assert needs[(fingerprint(old),)]["where"] == "offsite"
    assert needs[(fingerprint(old),)]["current"] is False
    assert needs[(fingerprint(new),)]["current"] is True
    assert report.encryption["plaintext_offsite"] == [plain.backup.metadata.id]
    assert any(f.code == "offsite-plaintext" for f in report.findings)
    shown = CliRunner().invoke(
        cli, ["status"], env=cli_env(settings, s3_server, BACKUPS_ENCRYPT_TO=new)
    )
    assert f"need key {fingerprint(old)} (no longer in BACKUPS_ENCRYPT_TO)" in shown.output
    assert "1 offsite backup(s) unencrypted" in shown.output

    results = {r.id: r for r in verify_offsite(settings, identity=open_key(new_file))}
    assert (results[second.id].ok, results[second.id].depth) == (True, "full")
    assert (results[older.id].ok, results[older.id].depth) == (True, "sealed")
    assert fingerprint(old) in (results[older.id].note or "")
    with pytest.raises(AgeIdentityError, match=fingerprint(old)):
        recover_from_offsite(settings, older.id, to=tmp_path / "x.db", identity=open_key(new_file))
    recover_from_offsite(settings, older.id, to=tmp_path / "old.db", identity=open_key(old_file))
    assert _row_counts(tmp_path / "old.db") == older.row_counts
    assert sync_offsite(settings).ok


def test_local_restore_falls_back_to_the_encrypted_offsite_copy(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    db_path: Path,
    tmp_path: Path,
) -> None:
    settings, identity_file, recipient, taken = encrypted_run(s3_settings, keys)
    assert taken.backup is not None
    backup_id = taken.backup.metadata.id
    BackupStore(settings).delete(backup_id)  # every local copy gone: only offsite is left
    target = tmp_path / "restored.db"

    # Its preview needs the sealed row counts, and so the identity.
    with pytest.raises(AgeIdentityError) as caught:
        preview_restore(dataclasses.replace(settings, database=target), backup_id)
    assert str(caught.value).startswith(
        f"offsite backup {backup_id} is encrypted: give --identity FILE (or "
        "BACKUPS_IDENTITY_FILE) with the identity of "
    )
    identity = open_key(identity_file)
    preview = preview_restore(settings, backup_id, identity=identity)
    # Counts from the sealed metadata; the content is only compared from a local copy (a
    # preview downloads nothing), and it says so rather than calling equal counts "same".
    assert {t.status for t in preview.tables} == {"unchecked"}
    assert preview.compare_note is not None and "content not compared" in preview.compare_note
    runner = CliRunner()
    env = cli_env(settings, s3_server, BACKUPS_ENCRYPT_TO=recipient)
    if settings.secondary_dir is not None:
        env["BACKUPS_SECONDARY_DIR"] = str(settings.secondary_dir)
    refused = runner.invoke(cli, ["restore", backup_id, "--preview"], env=env)
    assert refused.exit_code == 2 and "--identity FILE" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    shown = runner.invoke(
        cli,
        ["restore", backup_id, "--preview", "--json", "--identity", str(identity_file)],
        env=env,
    )
    assert shown.exit_code == 0, shown.output
    assert {t["status"] for t in json.loads(shown.output)["tables"]} == {"unchecked"}

    # Without the identity the offsite copy is skipped with the reason; nothing is written.
    with pytest.raises(RestoreError, match=f"offsite copy skipped: .*{fingerprint(recipient)}"):
        restore_backup(settings, backup_id, to=target)
    assert not target.exists()
    restored = restore_backup(settings, backup_id, to=target, identity=identity)
    assert restored.source_location == "offsite"
    assert _row_counts(target) == _row_counts(db_path)


def test_a_lost_local_copy_heals_from_the_sealed_offsite_copy_with_the_identity(
    s3_server: SeaweedServer,
    s3_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    tmp_path: Path,
) -> None:
    """Issue 24's bug: with BACKUPS_ENCRYPT=offsite the local copies are plain and the offsite
    one sealed. A pinned backup's local data file is lost in every folder: without the
    identity the run cannot rebuild it and health says which key heals it; with it, the
    sealed copy is decrypted, checked against the local metadata, and the copy is back."""
    from tablettracker_backups.health import check_health
    from tablettracker_backups.pins import set_pin
    from tablettracker_backups.verify import verify_backup

    settings, identity_file, recipient, taken = encrypted_run(s3_settings, keys)
    assert taken.backup is not None
    backup = taken.backup.metadata
    set_pin(settings, backup.id, pinned=True, label="keep")
    for folder in settings.locations:
        (folder / backup.data_file).unlink()  # the data only: the manifests are still there

    without = run(settings, force=True)
    (failed,) = [r for r in without.repaired if r.id == backup.id and r.location == "primary"]
    assert not failed.ok and failed.source == "offsite"
    assert failed.error is not None
    assert failed.error.startswith(
        f"the offsite copy of {backup.id} is encrypted: give --identity FILE (or "
        "BACKUPS_IDENTITY_FILE) with the identity of "
    )
    assert fingerprint(recipient) in failed.error
    assert failed.error.endswith("with it, `run --identity FILE` rebuilds the primary copy")
    said = [f.message for f in check_health(settings).findings if backup.id in f.message]
    assert any("rebuilding it failed" in m and "--identity FILE" in m for m in said), said
    assert not (settings.backup_dir / backup.data_file).exists()
    # The pin holds offsite too, though no local copy is sound: this is the last copy.
    assert backup.id in read_state(settings).copies

    healed = run(settings, force=True, identity=open_key(identity_file))
    rebuilt = {r.location for r in healed.repaired if r.id == backup.id and r.ok}
    assert rebuilt == set(settings_locations(settings)), healed.repaired
    store = BackupStore(settings)
    info = store.get(backup.id)
    assert [c.state for c in info.copies] == ["ok"] * len(info.copies)
    assert info.pinned and info.label == "keep"  # the state travels with the copy
    assert verify_backup(store, backup.id).ok  # plain again, and whole
    assert not (settings.backup_dir / (backup.data_file + ".age")).exists()
    assert not [p for p in settings.backup_dir.iterdir() if p.name.startswith(".tmp-")]


def settings_locations(settings: Settings) -> list[str]:
    return ["primary"] + (["secondary"] if settings.secondary_dir is not None else [])

"""Encryption at rest with age, on the local side: keys, identities, BACKUPS_ENCRYPT=all.

Everything is real: keys made by pyrage, real SQLite files, files damaged on disk, a backup
process killed with SIGKILL. The offsite side (SeaweedFS) is in test_offsite_encryption.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import stat
import sys
from collections.abc import Callable
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from tablettracker_backups.backup import create_backup
from tablettracker_backups.cli import cli
from tablettracker_backups.encryption import (
    AGE_HEADER,
    ARMOR_HEADER,
    SealResult,
    check_sealed,
    create_identity_file,
    decrypt_file,
    encrypt_file,
    encrypted_metadata,
    fingerprint,
    load_identity,
)
from tablettracker_backups.errors import (
    AgeIdentityError,
    ConfigError,
    EncryptionUnavailable,
    RestoreError,
    VerificationError,
)
from tablettracker_backups.health import check_health
from tablettracker_backups.keys import DEFAULT_DRILL_DAYS, DRILLS
from tablettracker_backups.metadata import BackupMetadata, SourceInfo, Verification
from tablettracker_backups.recipients import parse_recipients
from tablettracker_backups.restore import preview_restore, restore_backup
from tablettracker_backups.settings import Settings, settings_from_mapping
from tablettracker_backups.sources import load_settings
from tablettracker_backups.status import update_status
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import verify_backup
from tests.conftest import flip_byte, make_db
from tests.faultkit import cli_env, kill_when_written, spawn_cli

pyrage = pytest.importorskip("pyrage")

SQLITE_HEADER = b"SQLite format 3\x00"
MiB = 1024 * 1024


def table_names(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    return [str(r[0]) for r in rows if not str(r[0]).startswith("sqlite_")]


def row_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {
            t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in table_names(db)
        }


def runner_env(settings: Settings, recipient: str) -> dict[str, str]:
    """The environment for ``CliRunner`` of a BACKUPS_ENCRYPT=all setup in one folder."""
    return {
        "BACKUPS_DATABASE": str(settings.database),
        "BACKUPS_DIR": str(settings.backup_dir),
        "BACKUPS_ENCRYPT_TO": recipient,
        "BACKUPS_ENCRYPT": "all",
    }


@pytest.fixture
def encrypted_all(
    make_settings: Callable[..., Settings], keys: Callable[[str], tuple[Path, str]]
) -> tuple[Settings, Path, str]:
    """Settings with BACKUPS_ENCRYPT=all to one key, one folder, and that key's identity."""
    identity, recipient = keys("owner")
    settings = make_settings(secondary_dir=None, encrypt_to=recipient, encrypt="all")
    return settings, identity, recipient


# -- settings and keys --------------------------------------------------------------------------


def test_recipients_are_checked_at_start_up(
    make_settings: Callable[..., Settings], keys: Callable[[str], tuple[Path, str]], tmp_path: Path
) -> None:
    _, one = keys("one")
    _, two = keys("two")
    assert parse_recipients(f" {one},{two}\n{one} ") == (one, two)
    assert parse_recipients([one, f"{two} {one}"]) == (one, two)
    settings = make_settings(encrypt_to=f"{one} {two}")
    assert settings.encryption is not None
    assert settings.encryption.recipients == (one, two)
    assert settings.encryption.mode == "offsite"  # the default once recipients are set
    assert make_settings(encrypt_to=one, encrypt="ALL").encryption.local  # type: ignore[union-attr]
    assert make_settings().encryption is None

    typo = one[:-1] + ("q" if one[-1] != "q" else "p")
    cases = {
        typo: "not a valid age public key",
        one[:-3]: "not a valid age public key",
        "ssh-ed25519 AAAAC3Nza": "is not an age X25519 public key",
        "AGE-SECRET-KEY-1QQQQQQ": "keep it OFF the server",
    }
    for value, message in cases.items():
        with pytest.raises(ConfigError, match=message) as caught:
            make_settings(encrypt_to=value)
        assert "\n" not in str(caught.value)
        assert "AGE-SECRET-KEY-1QQQQQQ" not in str(caught.value)
    with pytest.raises(ConfigError, match="needs BACKUPS_ENCRYPT_TO"):
        make_settings(encrypt="all")
    with pytest.raises(ConfigError, match="must be one of offsite, all"):
        make_settings(encrypt_to=one, encrypt="everything")

    # A TOML config file may list them; the identity file is no setting at all.
    config = tmp_path / "config.toml"
    config.write_text(
        f'[backups]\ndatabase = "{tmp_path / "x.db"}"\nencrypt_to = ["{one}", "{two}"]\n'
    )
    from_file = load_settings(config_file=config, environ={})
    assert from_file.encryption is not None and from_file.encryption.recipients == (one, two)
    config.write_text(f'[backups]\ndatabase = "x.db"\nidentity_file = "{tmp_path}/k"\n')
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(config_file=config, environ={})


def test_keygen_writes_an_owner_only_identity_and_never_overwrites(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "identity.txt"
    old_umask = os.umask(0)  # even with a permissive umask the file is owner-only
    try:
        made = runner.invoke(cli, ["keygen", "--output", str(target)])
    finally:
        os.umask(old_umask)
    assert made.exit_code == 0, made.output
    recipient = made.stdout.strip()
    assert recipient.startswith("age1") and parse_recipients(recipient) == (recipient,)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    text = target.read_text()
    assert "AGE-SECRET-KEY-1" in text and recipient in text
    assert "AGE-SECRET-KEY" not in made.stdout + made.stderr
    assert "OFF the server" in made.stderr and "second copy" in made.stderr
    assert load_identity(target).fingerprints == (fingerprint(recipient),)

    again = runner.invoke(cli, ["keygen", "--output", str(target)])
    assert again.exit_code == 2
    assert again.stderr.startswith("Error: refusing to overwrite")
    assert len(again.stderr.strip().splitlines()) == 1
    assert target.read_text() == text

    helped = " ".join(runner.invoke(cli, ["keygen", "--help"]).output.split())
    assert "Keep the identity file OFF the server" in helped
    assert "keep a second copy somewhere safe" in helped


def test_passphrase_protected_identity_files(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "protected.age"
    made = runner.invoke(
        cli, ["keygen", "--output", str(target), "--passphrase"], input="correct horse\n" * 2
    )
    assert made.exit_code == 0, made.output
    recipient = made.stdout.strip().splitlines()[-1]
    assert target.read_bytes().startswith(ARMOR_HEADER)
    assert b"AGE-SECRET-KEY" not in target.read_bytes()
    opened = load_identity(target, passphrase=lambda: "correct horse")
    assert opened.fingerprints == (fingerprint(recipient),)

    with pytest.raises(AgeIdentityError, match="wrong passphrase"):
        load_identity(target, passphrase=lambda: "wrong")
    with pytest.raises(AgeIdentityError, match="passphrase-protected"):
        load_identity(target)

    # age's binary form (age -p without -a), made with age's own passphrase encryption.
    plain = tmp_path / "plain.txt"
    binary_recipient = create_identity_file(plain)
    binary = tmp_path / "binary.age"
    binary.write_bytes(pyrage.passphrase.encrypt(plain.read_bytes(), "pw"))
    assert binary.read_bytes().startswith(AGE_HEADER)
    assert load_identity(binary, passphrase=lambda: "pw").fingerprints == (
        fingerprint(binary_recipient),
    )


def test_identity_file_problems_are_one_line(tmp_path: Path) -> None:
    secretish = tmp_path / "garbage.txt"
    secretish.write_text("# comment\nAGE-SECRET-KEY-1NOTAREALKEYATALLXYZ\n")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n")
    other = tmp_path / "other.txt"
    other.write_text("hello\n")
    cases = {
        tmp_path / "missing.txt": "does not exist",
        folder: "is a folder",
        secretish: "line 2 .* is not a valid age identity",
        empty: "holds no age identity",
        other: "line 1 .* is not an age identity",
    }
    for path, message in cases.items():
        with pytest.raises(AgeIdentityError, match=message) as caught:
            load_identity(path)
        assert "\n" not in str(caught.value)
        assert "NOTAREALKEY" not in str(caught.value)


# -- BACKUPS_ENCRYPT=all -----------------------------------------------------------------------


def test_all_mode_round_trip(
    encrypted_all: tuple[Settings, Path, str], db_path: Path, tmp_path: Path
) -> None:
    settings, identity_file, recipient = encrypted_all
    meta = create_backup(settings).metadata
    data = settings.backup_dir / meta.data_file
    assert data.name.endswith(".db.zst.age")
    stored = data.read_bytes()
    assert stored.startswith(AGE_HEADER)
    assert SQLITE_HEADER not in stored
    assert not [name for name in table_names(db_path) if name.encode() in stored]
    assert meta.encryption is not None
    assert meta.encryption.recipients == (fingerprint(recipient),)
    assert meta.stored_size == len(stored)
    assert meta.verification.ok and meta.row_counts == row_counts(db_path)
    assert not [p for p in settings.backup_dir.iterdir() if p.name.startswith(".tmp-")]
    assert not list(settings.backup_dir.glob("*.db.zst"))  # no plain copy beside it

    store = BackupStore(settings)
    sealed = verify_backup(store, meta.id)
    assert sealed.ok and [(c.location, c.depth) for c in sealed.copies] == [("primary", "sealed")]
    identity = load_identity(identity_file)
    full = verify_backup(store, meta.id, identity=identity)
    assert full.ok and [c.depth for c in full.copies] == ["full"]

    target = tmp_path / "restored.db"
    restore_backup(settings, meta.id, to=target, identity=identity)
    assert row_counts(target) == row_counts(db_path)
    # Over the live database: the safety snapshot is encrypted too, and listed.
    restore_backup(settings, meta.id, identity=identity)
    safety = [i for i in store.list() if i.kind == "pre-restore"]
    assert len(safety) == 1 and safety[0].metadata is not None
    assert safety[0].metadata.encryption is not None
    assert not list(settings.backup_dir.glob("*.db.zst"))  # no plain copy left beside it


def test_all_mode_previews_without_the_identity_and_rolls_back_with_it(
    encrypted_all: tuple[Settings, Path, str], db_path: Path, tmp_path: Path
) -> None:
    settings, identity_file, _ = encrypted_all
    meta = create_backup(settings).metadata
    # Local metadata keeps its row counts in the clear: a preview needs no key.
    preview = preview_restore(settings, meta.id)
    assert {t.name: t.backup_rows for t in preview.tables} == row_counts(db_path)
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("DELETE FROM count_sessions")
        conn.commit()
    before = row_counts(db_path)

    def fault(target: Path, held: sqlite3.Connection | None) -> None:
        assert held is not None  # the restore's own connection, under its lock
        held.execute("DELETE FROM employees")

    # The check after the write fails: the safety copy taken under the same lock is put
    # back, then filed encrypted like every local backup.
    with pytest.raises(RestoreError) as caught:
        restore_backup(settings, meta.id, identity=load_identity(identity_file), _after_write=fault)
    assert str(caught.value).endswith("is as it was before the restore")
    assert row_counts(db_path) == before
    (safety,) = [i for i in BackupStore(settings).list() if i.kind == "pre-restore"]
    assert safety.metadata is not None and safety.metadata.encryption is not None


def test_missing_and_wrong_identity_get_one_line_and_change_nothing(
    encrypted_all: tuple[Settings, Path, str],
    keys: Callable[[str], tuple[Path, str]],
    tmp_path: Path,
) -> None:
    settings, _, recipient = encrypted_all
    meta = create_backup(settings).metadata
    stranger_file, stranger = keys("stranger")
    runner = CliRunner()
    env = runner_env(settings, recipient)
    target = tmp_path / "restored.db"
    missing = runner.invoke(cli, ["restore", meta.id, "--to", str(target), "--yes"], env=env)
    wrong = runner.invoke(
        cli,
        ["restore", meta.id, "--to", str(target), "--yes", "--identity", str(stranger_file)],
        env=env,
    )
    for outcome in (missing, wrong):
        assert outcome.exit_code == 2, outcome.output
        assert outcome.stderr.startswith("Error: ")
        assert len(outcome.stderr.strip().splitlines()) == 1, outcome.stderr
        assert "Traceback" not in outcome.output
    assert "--identity FILE" in missing.stderr
    assert fingerprint(recipient) in wrong.stderr and fingerprint(stranger) in wrong.stderr
    assert not target.exists()
    assert not [p for p in tmp_path.rglob(".tmp-*")]

    # The same through BACKUPS_IDENTITY_FILE, and for a database named by the library alone.
    by_env = runner.invoke(
        cli,
        ["restore", meta.id, "--to", str(target), "--yes"],
        env={**env, "BACKUPS_IDENTITY_FILE": str(stranger_file)},
    )
    assert by_env.exit_code == 2 and fingerprint(stranger) in by_env.stderr
    with pytest.raises(AgeIdentityError, match=fingerprint(recipient)):
        restore_backup(settings, meta.id, to=target, identity=load_identity(stranger_file))
    assert not target.exists()


def test_all_mode_restore_of_a_plain_backup_needs_the_identity_up_front(
    make_settings: Callable[..., Settings], keys: Callable[[str], tuple[Path, str]]
) -> None:
    """A backup taken before BACKUPS_ENCRYPT=all was turned on opens without a key, but the
    safety snapshot the restore takes is encrypted, and undoing a failed restore must open
    it: so the identity is asked for before anything happens, not found missing too late."""
    _, recipient = keys("owner")
    plain = make_settings(secondary_dir=None)
    backup_id = create_backup(plain).metadata.id
    settings = make_settings(secondary_dir=None, encrypt_to=recipient, encrypt="all")
    live = settings.database.read_bytes()
    with pytest.raises(AgeIdentityError, match="restoring needs --identity FILE"):
        restore_backup(settings, backup_id)
    assert settings.database.read_bytes() == live
    assert BackupStore(settings).ids() == [backup_id]  # no safety snapshot either


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_damaged_ciphertext_is_rejected_with_nothing_written(
    encrypted_all: tuple[Settings, Path, str], tmp_path: Path, damage: str
) -> None:
    settings, identity_file, _ = encrypted_all
    meta = create_backup(settings).metadata
    data = settings.backup_dir / meta.data_file
    original = data.read_bytes()
    if damage == "flip":
        flip_byte(data)
    elif damage == "truncate":
        data.write_bytes(original[:-7])
    else:
        data.write_bytes(original + b"\x00extra")
    identity = load_identity(identity_file)
    target = tmp_path / "restored.db"

    with pytest.raises(RestoreError, match="no sound copy") as caught:
        restore_backup(settings, meta.id, to=target, identity=identity)
    assert "\n" not in str(caught.value)
    assert not target.exists()
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    # Without the identity the ciphertext check sees it too, and records it.
    store = BackupStore(settings)
    (copy,) = verify_backup(store, meta.id).copies
    assert (copy.location, copy.ok, copy.depth, copy.note) == ("primary", False, "sealed", None)
    assert copy.error and f"primary copy of {meta.id}" in copy.error
    assert store.read_metadata("primary", meta.id).verification.ok is False


def test_a_sealed_copy_that_cannot_be_read_is_not_marked_bad(
    encrypted_all: tuple[Settings, Path, str], keys: Callable[[str], tuple[Path, str]]
) -> None:
    """A read error (a real EIO: the data file made a link to /proc/self/mem) says "could
    not check"; the copy itself is not judged, so its recorded verification stays good."""
    settings, _, recipient = encrypted_all
    meta = create_backup(settings).metadata
    data = settings.backup_dir / meta.data_file
    data.unlink()
    data.symlink_to("/proc/self/mem")
    store = BackupStore(settings)
    result = verify_backup(store, meta.id)
    (copy,) = result.copies
    assert (copy.location, copy.ok, copy.depth, copy.note) == ("primary", False, "sealed", None)
    assert copy.error is not None and copy.error.startswith("could not check: ")
    assert str(data) in copy.error
    assert not result.ok
    assert store.read_metadata("primary", meta.id).verification.ok is True
    # With a key that does not open it, the note still names the key it needs.
    stranger_file, _ = keys("stranger")
    (copy,) = verify_backup(store, meta.id, identity=load_identity(stranger_file)).copies
    assert copy.error is not None and copy.error.startswith("could not check: ")
    assert copy.note is not None and fingerprint(recipient) in copy.note


def test_a_damaged_inner_file_is_named_as_the_file_the_owner_knows(
    encrypted_all: tuple[Settings, Path, str], tmp_path: Path
) -> None:
    """Ciphertext intact, but what it holds does not decompress: the error names the stored
    file, never the decrypted scratch copy (a .tmp- name nobody has seen)."""
    settings, identity_file, recipient = encrypted_all
    meta = create_backup(settings).metadata
    data = settings.backup_dir / meta.data_file
    identity = load_identity(identity_file)
    inner = tmp_path / "inner.db.zst"
    decrypt_file(data, inner, meta, identity, label="the test's copy")
    flip_byte(inner)
    resealed = encrypt_file(inner, tmp_path / "resealed.age", [recipient])
    (tmp_path / "resealed.age").replace(data)
    path = settings.backup_dir / f"{meta.id}.json"
    document = json.loads(path.read_text())
    document.update(stored_size=resealed.size, sha256=resealed.sha256)
    document["encryption"].update(
        inner_size=resealed.inner_size, inner_sha256=resealed.inner_sha256
    )
    path.write_text(json.dumps(document))
    (copy,) = verify_backup(BackupStore(settings), meta.id, identity=identity).copies
    assert copy.ok is False and copy.error is not None
    assert copy.error.startswith(f"{meta.data_file} does not decompress: "), copy.error
    assert ".tmp-" not in copy.error


def test_a_failed_decryption_removes_the_plaintext_it_already_wrote(
    tmp_path: Path, keys: Callable[[str], tuple[Path, str]]
) -> None:
    """pyrage's decrypt_io writes plaintext, then raises OSError at a late flipped byte."""
    identity_file, recipient = keys("owner")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(3 * MiB))
    sealed = tmp_path / "sealed.age"
    result = encrypt_file(plain, sealed, [recipient])
    assert result == SealResult(sealed.stat().st_size, result.sha256, 3 * MiB, result.inner_sha256)
    meta = encrypted_metadata(_plain_meta(plain, result), result, [recipient])
    flip_byte(sealed, offset=int(sealed.stat().st_size * 0.9))
    out = tmp_path / "out.bin"
    written: list[int] = []
    with pytest.raises(VerificationError, match=r"does not decrypt .*damaged"):
        decrypt_file(
            sealed,
            out,
            meta,
            load_identity(identity_file),
            label="test file",
            progress=written.append,
        )
    assert sum(written) > MiB  # it had got far before the damage ...
    assert not out.exists()  # ... and nothing of it is left


def _plain_meta(path: Path, sealed: SealResult) -> BackupMetadata:
    """Metadata for a plain test file (only the fields encryption looks at matter)."""
    now = datetime.now(timezone.utc)
    return BackupMetadata(
        id="20261123T201500Z-3f9a1c",
        created_at=now,
        kind="manual",
        trigger="test",
        source=SourceInfo(str(path), 0, 4096, 0, "delete", "3"),
        tool_version="test",
        schema_fingerprint="0" * 64,
        row_counts={"t": 1},
        raw_size=sealed.inner_size,
        raw_sha256=sealed.inner_sha256,
        stored_size=sealed.inner_size,
        sha256=sealed.inner_sha256,
        compression="zstd",
        compression_level=6,
        durations={},
        verification=Verification(True, now, "ok", 0),
    )


def test_each_check_of_encrypt_and_decrypt_on_its_own(
    tmp_path: Path, keys: Callable[[str], tuple[Path, str]]
) -> None:
    """Every check of encrypt_file and decrypt_file, each from the state it guards against,
    with the checks after it in place (the decryption itself would pass in each case)."""
    identity_file, recipient = keys("owner")
    identity = load_identity(identity_file)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(256 * 1024))
    sealed = tmp_path / "sealed.age"
    seal = encrypt_file(plain, sealed, [recipient])
    meta = encrypted_metadata(_plain_meta(plain, seal), seal, [recipient])
    out = tmp_path / "out.bin"
    decrypt_file(sealed, out, meta, identity, label="the control")  # all checks pass
    out.unlink()

    # encrypt: the file changed since it was verified (a different SHA-256 was expected).
    with pytest.raises(VerificationError, match="no longer matches the SHA-256"):
        encrypt_file(plain, tmp_path / "again.age", [recipient], expected_sha256="0" * 64)
    assert not (tmp_path / "again.age").exists()

    # decrypt: a plain file under metadata that matches it (only the header tells).
    mislabelled = dataclasses.replace(meta, stored_size=seal.inner_size, sha256=seal.inner_sha256)
    with pytest.raises(VerificationError, match="is not an age file"):
        decrypt_file(plain, out, mislabelled, identity, label="plain")
    assert not out.exists()

    # decrypt: the same content encrypted again: it decrypts to the right bytes, but it is
    # not the ciphertext that was stored and checked.
    other = tmp_path / "other.age"
    encrypt_file(plain, other, [recipient])
    with pytest.raises(VerificationError, match="the ciphertext's SHA-256 does not match"):
        decrypt_file(other, out, meta, identity, label="re-encrypted")
    assert not out.exists()

    # The check without the key (sealed): the plain file, and a flipped byte (same size).
    with pytest.raises(VerificationError, match="is not an age file"):
        check_sealed(plain, mislabelled, label="plain")
    flipped = tmp_path / "flipped.age"
    flipped.write_bytes(sealed.read_bytes())
    flip_byte(flipped)
    with pytest.raises(VerificationError, match="the ciphertext's SHA-256 does not match"):
        check_sealed(flipped, meta, label="flipped")
    check_sealed(sealed, meta, label="the control")

    # decrypt: other content whose ciphertext the metadata describes (inner hash stale).
    changed = tmp_path / "changed.bin"
    changed.write_bytes(os.urandom(256 * 1024))
    swapped = tmp_path / "swapped.age"
    reseal = encrypt_file(changed, swapped, [recipient])
    stale = dataclasses.replace(meta, stored_size=reseal.size, sha256=reseal.sha256)
    with pytest.raises(VerificationError, match="the decrypted data does not match"):
        decrypt_file(swapped, out, stale, identity, label="swapped")
    assert not out.exists()

    # The metadata of an encrypted form must be built from that form's own seal.
    with pytest.raises(VerificationError, match="is not of this backup"):
        encrypted_metadata(_plain_meta(plain, seal), reseal, [recipient])


def test_key_rotation_keeps_old_backups_listed_with_their_keys(
    make_settings: Callable[..., Settings],
    keys: Callable[[str], tuple[Path, str]],
    tmp_path: Path,
) -> None:
    old_file, old = keys("old")
    new_file, new = keys("new")
    first = create_backup(make_settings(secondary_dir=None, encrypt_to=old, encrypt="all"))
    settings = make_settings(secondary_dir=None, encrypt_to=new, encrypt="all")
    second = create_backup(settings)
    assert second.metadata.encryption is not None
    assert second.metadata.encryption.recipients == (fingerprint(new),)

    report = check_health(settings)
    needs = {tuple(n["fingerprints"]): n for n in report.encryption["needs"]}
    assert needs[(fingerprint(old),)]["current"] is False
    assert needs[(fingerprint(old),)]["newest"] == first.metadata.id
    assert needs[(fingerprint(new),)]["current"] is True
    runner = CliRunner()
    env = runner_env(settings, new)
    shown = runner.invoke(cli, ["status"], env=env)
    assert f"need key {fingerprint(old)} (no longer in BACKUPS_ENCRYPT_TO)" in shown.output
    assert f"need key {fingerprint(new)}:" in shown.output
    listed = {
        i["id"]: i for i in json.loads(runner.invoke(cli, ["list", "--json"], env=env).output)
    }
    assert listed[first.metadata.id]["encrypted_to"] == [fingerprint(old)]
    assert listed[second.metadata.id]["encrypted_to"] == [fingerprint(new)]
    shown_old = runner.invoke(cli, ["show", first.metadata.id], env=env).output
    assert f"encrypted:   age, opened by key {fingerprint(old)}" in shown_old

    # The new key checks the new backup in full and the old one only as ciphertext, saying so.
    checked = runner.invoke(cli, ["verify", "--all", "--identity", str(new_file)], env=env)
    assert checked.exit_code == 1, checked.output
    assert f"{second.metadata.id}: ok\n" in checked.output
    assert f"{first.metadata.id}: ok (encrypted: ciphertext checked" in checked.output
    assert f"encrypted to key {fingerprint(old)}" in checked.output
    # The old key still opens the old backup.
    target = tmp_path / "old.db"
    restore_backup(settings, first.metadata.id, to=target, identity=load_identity(old_file))
    assert row_counts(target) == first.metadata.row_counts


def test_encryption_configured_without_pyrage_never_stores_plaintext(
    encrypted_all: tuple[Settings, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _, recipient = encrypted_all
    monkeypatch.setitem(sys.modules, "pyrage", None)  # what an uninstalled package looks like
    hint = r"pip install 'tablettracker-backups\[encrypt\]'"
    with pytest.raises(EncryptionUnavailable, match=hint):
        create_backup(settings)
    # Refused up front: no folder made, no plain snapshot written even for a moment.
    assert not settings.backup_dir.exists()
    assert BackupStore(settings).list() == []
    assert not list(settings.backup_dir.glob("*.db.zst"))
    finding = next(f for f in check_health(settings).findings if f.code == "encryption-unavailable")
    assert finding.level == "critical" and "no backup is taken" in finding.message
    runner = CliRunner()
    env = runner_env(settings, recipient)
    refused = runner.invoke(cli, ["backup"], env=env)
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1


def test_health_reminds_of_the_drill_with_the_identity(
    encrypted_all: tuple[Settings, Path, str],
) -> None:
    settings, identity_file, _ = encrypted_all
    meta = create_backup(settings).metadata

    def drill_finding() -> str | None:
        found = [f for f in check_health(settings).findings if f.code == "encryption-drill"]
        return found[0].message if found else None

    assert drill_finding() == (
        f"no full check of an encrypted backup with its identity within {DEFAULT_DRILL_DAYS} "
        "days (never done): run 'tablettracker-backups verify --identity FILE' where the "
        "identity is kept, to prove it still opens them"
    )
    verify_backup(BackupStore(settings), meta.id)  # without the identity: no drill
    assert drill_finding() is not None
    verify_backup(BackupStore(settings), meta.id, identity=load_identity(identity_file))
    assert drill_finding() is None
    long_ago = datetime.now(timezone.utc) - timedelta(days=31)
    update_status(settings, **{DRILLS: {"local": {"at": long_ago.isoformat(), "id": meta.id}}})
    assert "(last one 31" in (drill_finding() or "")


def test_kill_9_during_encryption_leaves_nothing_listed(
    encrypted_all: tuple[Settings, Path, str], tmp_path: Path
) -> None:
    settings, _, recipient = encrypted_all
    big = tmp_path / "big.db"
    make_db(big)
    with sqlite3.connect(big) as conn:
        conn.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        for _ in range(96):
            conn.execute("INSERT INTO attachments (data) VALUES (?)", (os.urandom(MiB),))
    settings = settings_from_mapping(
        {"database": big, "dir": settings.backup_dir, "encrypt_to": recipient, "encrypt": "all"}
    )
    env = cli_env(big, settings.backup_dir, BACKUPS_ENCRYPT_TO=recipient, BACKUPS_ENCRYPT="all")
    proc = spawn_cli(["backup"], env)
    caught = kill_when_written(proc, settings.backup_dir, ".db.zst.age")
    assert caught is not None, "the backup finished before its encryption was seen"
    assert proc.returncode == -signal.SIGKILL
    store = BackupStore(settings)
    assert store.list() == []
    # The next backup clears the debris and commits only itself.
    done = create_backup(settings)
    assert [i.id for i in store.list()] == [done.metadata.id]
    names = sorted(p.name for p in settings.backup_dir.iterdir() if not p.name.startswith("."))
    # database.json is the folder's identity (issue 13), not a backup.
    assert names == sorted([done.metadata.data_file, f"{done.metadata.id}.json", "database.json"])
    assert not [p for p in settings.backup_dir.iterdir() if p.name.startswith(".tmp-")]


def test_status_and_health_json_name_the_keys(
    encrypted_all: tuple[Settings, Path, str],
) -> None:
    settings, _, recipient = encrypted_all
    create_backup(settings)
    runner = CliRunner()
    env = runner_env(settings, recipient)
    shown = runner.invoke(cli, ["status", "--json"], env=env)
    document = json.loads(shown.output)["encryption"]
    assert document["configured"] is True and document["mode"] == "all"
    assert document["recipients"] == [fingerprint(recipient)]
    assert [n["count"] for n in document["needs"]] == [1]

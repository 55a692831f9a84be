# ruff: noqa: E501  (test node ids are long; the table reads better one per line)
"""Planted bugs: each safety check removed on its own, and the test that must notice.

    python bench/plants.py                    # every plant
    python bench/plants.py heal-confirm csrf-empty-token
    python bench/plants.py --list             # ids, checks and tests, nothing run
    python bench/plants.py --clean heal-confirm   # the same tests without the plant (must pass)

Each plant is one exact text replacement in one source file: the check it removes (or moves
just past its edge) and nothing else, so every later check is still in place. It is applied
to a scratch copy of the package and the tests under ``--workdir`` (default
``/tmp/ttb-plants/<id>``), never to the working tree, and the named tests run there
(``PYTHONPATH`` points at the copy, so CLI subprocesses import the planted code too). A plant
is *killed* when a named test fails; *survived* when they all pass. The replacement must
match exactly once, so a plant that no longer fits the code is reported, not silently skipped.

``tests/SAFETY.md`` lists the same plants with the check each removes. Nothing here runs in
CI: it proves that the suite's tests fail without each check.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = "tablettracker_backups/"


@dataclass(frozen=True)
class Plant:
    id: str
    #: The file (under the package) and the exact text the plant replaces.
    file: str
    old: str
    new: str
    #: Test node ids (or files) that must fail with the plant in place.
    tests: tuple[str, ...]
    #: Set for a plant no test can kill without faking a library: why (it must survive).
    survives: str = ""


T = "tests/"

PLANTS: tuple[Plant, ...] = (
    # -- the four plants of issue 25 ------------------------------------------------------
    Plant(
        "heal-confirm",
        "heal.py",
        "    if not store.checksum_matches(info, location):\n",
        "    if False and not store.checksum_matches(info, location):\n",
        (T + "test_trust.py::test_a_rebuilt_copy_damaged_before_its_rename_is_not_kept",),
    ),
    Plant(
        "anomaly-min-rows",
        "anomaly.py",
        "        if before < MIN_ROWS:\n",
        "        if before <= MIN_ROWS:\n",
        (T + "test_notify.py::test_anomaly_minimum_table_size_at_its_edge",),
    ),
    Plant(
        "anomaly-drop-share",
        "anomaly.py",
        "if lost <= 0 or lost / before <= drop:",
        "if lost <= 0 or (lost - 1) / before <= drop:",
        (T + "test_notify.py::test_anomaly_drop_share_at_its_edge",),
    ),
    Plant(
        "csrf-empty-token",
        "web/csrf.py",
        "    expected = session.get(SESSION_KEY)\n"
        '    given = request.form.get(FIELD, "")\n'
        "    if (\n"
        "        not isinstance(expected, str)\n"
        "        or not given\n"
        "        or not hmac.compare_digest(given.encode(), expected.encode())\n"
        "    ):",
        '    expected = session.get(SESSION_KEY, "")\n'
        '    given = request.form.get(FIELD, "")\n'
        "    if not isinstance(expected, str) or not hmac.compare_digest(\n"
        "        given.encode(), expected.encode()\n"
        "    ):",
        (T + "test_hostile.py::test_a_fresh_client_cannot_post_anywhere",),
    ),
    Plant(
        "offsite-age-header-before-upload",
        "storage/sealed.py",
        "            if not is_age(content):\n",
        "            if False:\n",
        (T + "test_offsite_encryption.py::test_no_plaintext_byte_is_sent_for_a_mislabelled_file",),
    ),
    # -- backup -------------------------------------------------------------------------------
    Plant(
        "backup-source-is-sqlite",
        "backup.py",
        "        check_sqlite_file(settings.database)\n        if settings.encryption is not None",
        "        if settings.encryption is not None",
        (T + "test_backup.py::test_missing_database_creates_nothing",),
    ),
    Plant(
        "backup-require-pyrage",
        "backup.py",
        "            require_pyrage()\n",
        "            pass\n",
        (
            T
            + "test_encryption.py::test_encryption_configured_without_pyrage_never_stores_plaintext",
        ),
    ),
    Plant(
        "backup-snapshot-opens",
        "backup.py",
        "        if not keep_unreadable:\n",
        "        if False:\n",
        (T + "test_corpus.py::test_corpus_database_is_backed_up_verified_and_restored",),
        survives="the live database is refused first when it does not open (even a malformed "
        "schema stops the snapshot: backup-source-is-sqlite), and the snapshot has its pages, "
        "so no database reaches this check; it stays as a guard behind that one",
    ),
    Plant(
        "backup-prove-stored",
        "backup.py",
        "    proof = decompress_file(stored, None, algorithm=algorithm, "
        "expected_sha256=stream.sha256)\n"
        "    if proof.raw_sha256 != stream.raw_sha256 or proof.raw_size != stream.raw_size:\n",
        "    return\n    proof = decompress_file(stored, None, algorithm=algorithm)\n"
        "    if proof.raw_sha256 != stream.raw_sha256 or proof.raw_size != stream.raw_size:\n",
        (
            T
            + "test_backup.py::test_the_read_back_proof_checks_the_stored_bytes_not_only_what_they_decompress_to",
        ),
    ),
    Plant(
        "backup-copy-matches-metadata",
        "replicate.py",
        "        return _put(target, part.key, local.path_of(part.key), part.sha256, stage, progress)\n",
        "        path = local.path_of(part.key)\n"
        '        actual = __import__("hashlib").sha256(path.read_bytes()).hexdigest()\n'
        "        return _put(target, part.key, path, actual, stage, progress)\n",
        (T + "test_backup.py::test_a_copy_from_a_damaged_source_is_refused_and_leaves_nothing",),
    ),
    Plant(
        "backup-folder-identity",
        "backup.py",
        "        claim_folders(settings)\n",
        "        pass\n",
        (T + "test_trust.py::test_a_folder_belongs_to_one_database",),
    ),
    Plant(
        "backup-operation-lock",
        "backup.py",
        "            with operation_lock(settings):\n",
        '            with __import__("contextlib").nullcontext():\n',
        (T + "test_locking.py::test_backup_and_restore_each_wait_for_the_lock",),
    ),
    # -- verify -------------------------------------------------------------------------------
    Plant(
        "verify-data-file-present",
        "extract.py",
        "        if not data_file.is_file():\n",
        "        if False:\n",
        (T + "test_verify.py::test_missing_and_truncated_data_files_are_named",),
    ),
    Plant(
        "verify-stored-size",
        "extract.py",
        "        if size != metadata.stored_size:\n",
        "        if False:\n",
        (T + "test_verify.py::test_missing_and_truncated_data_files_are_named",),
    ),
    Plant(
        "verify-stored-sha256",
        "extract.py",
        "            expected_sha256=metadata.content_sha256,\n",
        "            expected_sha256=None,\n",
        (T + "test_verify.py::test_flipped_gzip_header_byte_fails_verify",),
    ),
    Plant(
        "verify-raw-sha256",
        "extract.py",
        "        if stream.raw_sha256 != metadata.raw_sha256:\n",
        "        if False:\n",
        (T + "test_verify.py::test_decompressed_hash_mismatch_fails_verify",),
    ),
    Plant(
        "verify-opens-as-sqlite",
        "extract.py",
        "    elif not unreadable:\n",
        "    elif False:\n",
        (T + "test_verify.py::test_restore_passes_over_a_copy_that_does_not_open_as_sqlite",),
    ),
    Plant(
        "verify-integrity-agrees",
        "extract.py",
        '    if check.integrity != "ok" and not recorded.source_damaged:\n',
        "    if False:\n",
        (T + "test_verify.py::test_each_database_check_fails_verify_and_restore",),
    ),
    Plant(
        "verify-foreign-keys-agree",
        "extract.py",
        "    if check.foreign_key_violations != recorded.foreign_key_violations:\n",
        "    if False:\n",
        (T + "test_verify.py::test_each_database_check_fails_verify_and_restore",),
    ),
    Plant(
        "verify-row-counts-agree",
        "extract.py",
        "    if check.row_counts != metadata.row_counts:\n",
        "    if False:\n",
        (T + "test_verify.py::test_each_database_check_fails_verify_and_restore",),
    ),
    Plant(
        "verify-schema-agrees",
        "extract.py",
        "    if check.schema_fingerprint != metadata.schema_fingerprint:\n",
        "    if False:\n",
        (T + "test_verify.py::test_each_database_check_fails_verify_and_restore",),
    ),
    # -- encryption -----------------------------------------------------------------------------
    Plant(
        "encrypt-source-unchanged",
        "encryption.py",
        "        if expected_sha256 is not None and reader.digest.hexdigest() != "
        "expected_sha256:\n",
        "        if False:\n",
        (T + "test_encryption.py::test_each_check_of_encrypt_and_decrypt_on_its_own",),
    ),
    Plant(
        "encrypt-output-is-age",
        "encryption.py",
        "        if not is_age(read_header(dest)):\n",
        "        if False:\n",
        (T + "test_encryption.py",),
        survives="pyrage always writes the age header; no real fault changes the file "
        "between its write and this read (a fake pyrage would be needed)",
    ),
    Plant(
        "decrypt-input-is-age",
        "encryption.py",
        "    if not is_age(read_header(source)):\n",
        "    if False:\n",
        (T + "test_encryption.py::test_each_check_of_encrypt_and_decrypt_on_its_own",),
    ),
    Plant(
        "decrypt-ciphertext-sha256",
        "encryption.py",
        "        if reader.size != metadata.stored_size or reader.digest.hexdigest() != "
        "metadata.sha256:\n",
        "        if False:\n",
        (T + "test_encryption.py::test_each_check_of_encrypt_and_decrypt_on_its_own",),
    ),
    Plant(
        "decrypt-plaintext-sha256",
        "encryption.py",
        "        if writer.size != info.inner_size or writer.digest.hexdigest() != "
        "info.inner_sha256:\n",
        "        if False:\n",
        (T + "test_encryption.py::test_each_check_of_encrypt_and_decrypt_on_its_own",),
    ),
    Plant(
        "sealed-check-header",
        "encryption.py",
        "    if not is_age(read_header(path)):\n",
        "    if False:\n",
        (T + "test_encryption.py::test_each_check_of_encrypt_and_decrypt_on_its_own",),
    ),
    Plant(
        "sealed-check-sha256",
        "encryption.py",
        "    if digest != metadata.sha256:\n",
        "    if False:\n",
        (T + "test_encryption.py::test_each_check_of_encrypt_and_decrypt_on_its_own",),
    ),
    Plant(
        "sealed-form-is-of-this-backup",
        "encryption.py",
        "    if sealed.inner_sha256 != metadata.sha256 or sealed.inner_size != "
        "metadata.stored_size:\n",
        "    if False:\n",
        (T + "test_encryption.py::test_each_check_of_encrypt_and_decrypt_on_its_own",),
    ),
    Plant(
        "recipients-are-valid",
        "recipients.py",
        "            if not _bech32_valid(text):\n",
        "            if False:\n",
        (T + "test_encryption.py::test_recipients_are_checked_at_start_up",),
    ),
    # -- heal ---------------------------------------------------------------------------------
    Plant(
        "heal-source-checks-out",
        "heal.py",
        "            if not store.checksum_matches(info, source):\n",
        "            if False:\n",
        (T + "test_offsite.py::test_a_repair_passes_over_a_damaged_local_copy_to_the_offsite_one",),
    ),
    Plant(
        "local-put-hash",
        "storage/local.py",
        "        if hasher.hexdigest() != sha256:\n",
        "        if False:\n",
        (T + "test_storage.py::test_a_put_whose_hash_does_not_match_stores_nothing",),
    ),
    Plant(
        "heal-no-folder-for-an-absent-disk",
        "heal.py",
        "        if not folder.parent.is_dir():\n",
        "        if False:\n",
        (T + "test_trust.py::test_a_repair_never_creates_the_folder_of_a_disk_that_is_away",),
    ),
    Plant(
        "heal-leaves-differing-copies",
        "heal.py",
        "REPAIRABLE = (CopyStatus.MISSING, CopyStatus.DAMAGED)",
        "REPAIRABLE = (CopyStatus.MISSING, CopyStatus.DAMAGED, CopyStatus.DIFFERS)",
        (T + "test_trust.py::test_a_copy_that_differs_is_left_for_a_person",),
    ),
    # -- restore ------------------------------------------------------------------------------
    Plant(
        "restore-valid-id",
        "restore.py",
        '    if backup_id != "latest":\n        validate_backup_id(backup_id)\n'
        "    BackupStore(settings).require_folder()",
        "    BackupStore(settings).require_folder()",
        (T + "test_restore.py::test_bad_ids_and_missing_backups",),
    ),
    Plant(
        "restore-folder-exists",
        "restore.py",
        "    BackupStore(settings).require_folder()  # a typo in the folder: refuse, create "
        "nothing\n    _check_target_kind(target)",
        "    _check_target_kind(target)",
        (T + "test_restore.py::test_bad_ids_and_missing_backups",),
    ),
    Plant(
        "restore-operation-lock",
        "restore.py",
        "        locks.enter_context(operation_lock(settings))\n        cleanup_debris(settings)\n",
        "        cleanup_debris(settings)\n",
        (T + "test_locking.py::test_backup_and_restore_each_wait_for_the_lock",),
    ),
    Plant(
        "restore-target-is-sqlite",
        "restore.py",
        "        _check_overwritable(target)\n",
        "        pass\n",
        (T + "test_restore.py::test_refuses_to_overwrite_a_file_that_is_not_a_database",),
    ),
    Plant(
        "restore-no-leftover-wal",
        "restore.py",
        "        _check_no_leftovers(target)\n",
        "        pass\n",
        (T + "test_restore.py::test_refuses_a_stale_wal_beside_a_missing_database",),
    ),
    Plant(
        "restore-identity-up-front",
        "restore.py",
        "    if identity is None and settings.encryption is not None and "
        "settings.encryption.local:\n",
        "    if False:\n",
        (
            T
            + "test_encryption.py::test_all_mode_restore_of_a_plain_backup_needs_the_identity_up_front",
        ),
    ),
    Plant(
        "restore-after-quick-check",
        "restore.py",
        "        if quick:\n            found = integrity(conn, full=False)\n",
        "        if False:\n            found = integrity(conn, full=False)\n",
        (T + "test_restore.py::test_failed_check_after_write_puts_the_safety_snapshot_back",),
    ),
    Plant(
        "restore-after-row-counts",
        "restore.py",
        "        if now != counts:\n",
        "        if False:\n",
        (T + "test_restore.py::test_failed_check_after_write_puts_the_safety_snapshot_back",),
    ),
    Plant(
        "restore-after-schema",
        "restore.py",
        "        if schema_fingerprint(conn) != fingerprint:\n",
        "        if False:\n",
        (T + "test_restore.py::test_failed_check_after_write_puts_the_safety_snapshot_back",),
    ),
    Plant(
        "restore-undo-after-failed-check",
        "restore.py",
        "                    _put_back(held, safety, after_failed, progress, on_rollback_captured)\n",
        "                    pass\n",
        (T + "test_restore.py::test_failed_check_after_write_puts_the_safety_snapshot_back",),
    ),
    # Issue 26: one lock hold from the safety copy to the check.
    Plant(
        "restore-hold-released-before-the-write",
        "overwrite.py",
        "                copy_it(conn)  # under the RESERVED lock taken on entering\n",
        "                copy_it(conn)  # under the RESERVED lock taken on entering\n"
        '                conn.execute("PRAGMA locking_mode=NORMAL")\n'
        '                conn.execute("SELECT 1 FROM sqlite_master").fetchall()\n'
        "                time.sleep(0.2)\n",
        (
            T + "test_restore_live.py::test_no_committed_write_is_lost_restoring_under_writers",
            T + "test_restore_live.py::test_the_lock_is_held_from_the_safety_copy_to_the_check",
        ),
    ),
    Plant(
        "restore-wal-copy-before-the-lock",
        "overwrite.py",
        "        if pages <= 1 and pending is not None:\n",
        "        if pending is not None:\n",
        (T + "test_restore_live.py::test_no_committed_write_is_lost_restoring_under_writers",),
    ),
    Plant(
        "restore-bytes-compared",
        "overwrite.py",
        "        return same_pages(self._raw_fd, source)\n",
        "        return True\n",
        (
            T
            + "test_restore.py::test_with_raw_reads_a_changed_value_fails_the_check_though_counts_and_schema_match",
        ),
    ),
    Plant(
        "restore-check-on-a-fresh-connection-after-the-release",
        "restore.py",
        "                held.check(lambda conn: _verify_restored(conn, meta, target, held, scratch))\n",
        "                pass\n",
        (T + "test_restore.py::test_failed_check_after_write_puts_the_safety_snapshot_back",),
    ),
    Plant(
        "restore-safety-copy-not-durable",
        "overwrite.py",
        "        fsync_path(capture)\n",
        "        pass\n",
        (T + "test_durability.py",),
        survives="a copy not fsynced survives a killed process: only a power cut shows it, and "
        "no test here cuts the power (the order is read by strace in test_durability: see "
        "its restore row when added)",
    ),
    Plant(
        "restore-folder-of-another-database",
        "restore.py",
        "    if recorded is not None and not same_database(recorded, settings):\n",
        "    if False:\n",
        (T + "test_restore.py::test_a_folder_of_another_database_is_refused_unless_named",),
    ),
    Plant(
        "restore-not-a-regular-file",
        "restore.py",
        "    _check_target_kind(target)\n",
        "    pass\n",
        (
            T
            + "test_restore.py::test_a_target_that_is_not_a_regular_file_is_refused_and_nothing_is_made_beside_it",
        ),
    ),
    Plant(
        "restore-unrecorded",
        "restore.py",
        "            record = intent.begin(settings, backup_id=info.id, target=target, live=is_live)\n",
        "            record = intent.RestoreIntent(info.id, str(target), is_live, "
        "datetime.now(timezone.utc), intent.VERIFY, datetime.now(timezone.utc), 0, '')\n",
        (T + "test_crashpoints.py",),
        survives="the first crash point comes after the hold stage's record is written; a "
        "kill before it (while the backup is extracted and checked) has changed nothing, and "
        "its scratch file is removed by the next command's cleanup with or without a record",
    ),
    Plant(
        "restore-busy-is-not-damage",
        "restore.py",
        "    if isinstance(exc, DatabaseBusy):\n",
        "    if False:\n",
        (
            T
            + "test_restore.py::test_a_database_nobody_may_read_gets_no_restore_and_says_what_to_do",
        ),
    ),
    Plant(
        "restore-gate",
        "web/restoregate.py",
        "            blocked = request.method in WRITE_METHODS or (\n",
        "            blocked = False and (\n",
        (T + "test_restore_live.py::test_the_apps_writes_get_503_while_a_restore_runs",),
    ),
    Plant(
        "restore-at-after-a-restore",
        "restore_points.py",
        "    if restored and (not before or restored[-1].at >= before[-1].created_at):\n",
        "    if False:\n",
        (T + "test_restore_points.py::test_a_moment_after_a_restore_is_the_restored_state",),
    ),
    Plant(
        "recover-target-is-new",
        "restore.py",
        "    if target.exists() or target.is_symlink():\n",
        "    if False:\n",
        (T + "test_offsite.py::test_recovery_from_offsite_refuses_and_passes_over_word_for_word",),
    ),
    Plant(
        "recover-latest-is-good-and-regular",
        "restore.py",
        "    return meta.kind in REGULAR_KINDS and not meta.source_damaged\n",
        "    return True\n",
        (T + "test_offsite.py",),
    ),
    # -- coordinated snapshots and group restore (issue 22) -----------------------------------
    Plant(
        "group-snapshot-together",
        "coordinated.py",
        "        began_at = pin_together(sources, readers, busy_timeout=busy_timeout)\n",
        "        began_at = datetime.now(timezone.utc)\n",
        (T + "test_groups.py::test_every_coordinated_snapshot_keeps_the_transfer_invariant",),
    ),
    Plant(
        "group-rollback-every-member",
        "group_restore.py",
        "        if not member.written:\n"
        "            continue  # not written, or its write failed: a failed write changed nothing\n",
        "        if not member.written or not member.failed:\n"
        "            continue  # not written, or its write failed: a failed write changed nothing\n",
        (T + "test_groups.py::test_a_failed_check_puts_every_member_back",),
    ),
    Plant(
        "group-settle-forward-only-once-released",
        "group_restore.py",
        "FORWARD = (RELEASED, FILING)\n",
        "FORWARD = (WRITE, CHECK, RELEASED, FILING)\n",
        (
            T
            + "test_groups.py::test_kill_at_every_stage_of_a_group_restore_is_settled_by_the_next_run",
        ),
    ),
    Plant(
        "group-member-not-restored-alone",
        "restore.py",
        "        if intent.in_group(settings):\n",
        "        if False:\n",
        (
            T
            + "test_groups.py::test_kill_at_every_stage_of_a_group_restore_is_settled_by_the_next_run",
        ),
    ),
    Plant(
        "group-member-not-settled-alone",
        "backup.py",
        "    if pending and record is not None and not intent.in_group(settings):\n",
        "    if pending and record is not None:\n",
        (
            T
            + "test_groups.py::test_kill_at_every_stage_of_a_group_restore_is_settled_by_the_next_run",
        ),
    ),
    # -- offsite ------------------------------------------------------------------------------
    Plant(
        "offsite-refuse-unencrypted",
        "layout.py",
        '    return "sealed-json" if manifest_id(name) is not None else "age"\n',
        '    return "sealed-json" if manifest_id(name) is not None else "plain-ok"\n',
        (
            T
            + "test_offsite_encryption.py::test_the_store_refuses_plaintext_and_checks_what_it_stored",
        ),
    ),
    Plant(
        "offsite-metadata-is-sealed",
        "storage/sealed.py",
        "            if _names_schema(document):\n",
        "            if False:\n",
        (T + "test_offsite_encryption.py::test_metadata_that_names_the_schema_is_never_sent",),
    ),
    Plant(
        "offsite-local-copy-matches",
        "offsite/client.py",
        "    if size != metadata.stored_size or sha256 != metadata.sha256:\n",
        "    if False:\n",
        (T + "test_offsite.py::test_a_local_copy_damaged_in_place_is_never_sent",),
    ),
    Plant(
        "offsite-uploaded-size",
        "storage/s3.py",
        "        if size != digests.size:\n",
        "        if False:\n",
        (T + "test_offsite.py::test_each_check_after_an_upload_on_its_own",),
    ),
    Plant(
        "offsite-uploaded-checksum",
        "storage/s3.py",
        '        if reported and "-" not in reported and "-" not in digests.expected_checksum:\n',
        "        if False:\n",
        (T + "test_offsite.py::test_each_check_after_an_upload_on_its_own",),
    ),
    Plant(
        "offsite-read-back",
        "storage/s3.py",
        "        if hasher.size != digests.size or hasher.hexdigest() != digests.sha256:\n",
        "        if False:\n",
        (T + "test_offsite.py::test_each_check_after_an_upload_on_its_own",),
    ),
    Plant(
        "offsite-age-header-after-upload",
        "storage/sealed.py",
        "        if self._refusal(key, seal, stored) is not None:\n",
        "        if False:\n",
        (
            T
            + "test_offsite_encryption.py::test_the_store_refuses_plaintext_and_checks_what_it_stored",
        ),
    ),
    # -- replicate (secondary copies, heal, uploads) -----------------------------------------
    Plant(
        "replicate-download-hash",
        "replicate.py",
        "        if got.sha256 != part.sha256:\n",
        "        if False:\n",
        (
            T
            + "test_replicate.py::test_a_remote_source_is_downloaded_checked_and_its_scratch_file_removed",
        ),
    ),
    Plant(
        "replicate-no-debris",
        "replicate.py",
        "        for key in created:\n            _delete_quietly(target, key)\n",
        "        pass\n",
        (T + "test_replicate.py::test_a_manifest_that_fails_takes_the_parts_it_followed_away",),
    ),
    Plant(
        "replicate-vet-first",
        "replicate.py",
        "    if isinstance(target, SealedStore):\n",
        "    if False:\n",
        (T + "test_replicate.py::test_a_sealed_target_refuses_before_any_part_is_sent",),
    ),
    Plant(
        "offsite-delete-inside-prefix",
        "offsite/client.py",
        "        if not key.startswith(self.key_prefix):\n",
        "        if False:\n",
        (T + "test_offsite.py::test_only_keys_under_the_prefix_are_deleted",),
    ),
    Plant(
        "offsite-no-upload-without-pyrage",
        "offsite/sync.py",
        "            require_pyrage()\n",
        "            pass\n",
        (
            T
            + "test_offsite_encryption.py::test_without_pyrage_nothing_is_uploaded_and_health_is_critical",
        ),
    ),
    Plant(
        "offsite-encrypt-the-verified-file",
        "offsite/sync.py",
        "expected_sha256=meta.sha256)",
        "expected_sha256=None)",
        (T + "test_offsite_encryption.py", T + "test_offsite.py"),
        survives="encrypted_metadata compares the same two SHA-256s right after "
        "(sealed.inner_sha256 with meta.sha256): two guards on one condition",
    ),
    # -- offsite, format 2 (issue 20) ------------------------------------------------------------
    Plant(
        "offsite-pages-manifest-last",
        "offsite/pages.py",
        "    parts = PAGES.parts(local, metadata)\n",
        "    parts = PAGES.parts(local, metadata)\n"
        "    _store(objects, listing, manifest_key(metadata.id), manifest, progress)\n",
        (T + "test_offsite_pages.py::test_a_kill_at_each_upload_stage_lists_no_half_backup",),
    ),
    Plant(
        "offsite-pages-other-database",
        "offsite/pages.py",
        "    if theirs != database:\n",
        "    if False:\n",
        (
            T
            + "test_offsite_pages.py::test_two_databases_or_two_sites_sharing_a_prefix_are_refused",
        ),
    ),
    Plant(
        "offsite-pages-other-folder",
        "offsite/pages.py",
        "    if key is not None and their_key != key_fingerprint(key):\n",
        "    if False:\n",
        (
            T
            + "test_offsite_pages.py::test_two_databases_or_two_sites_sharing_a_prefix_are_refused",
        ),
    ),
    Plant(
        "offsite-gc-liveness",
        "offsite/pages.py",
        "        if plain in live:\n            continue\n",
        "",
        (
            T
            + "test_offsite_pages.py::test_prune_keeps_shared_objects_and_collects_the_rest_after_the_grace",
        ),
    ),
    Plant(
        "offsite-gc-grace",
        "offsite/pages.py",
        "        if modified is None or modified > cutoff:\n",
        "        if False:\n",
        (
            T
            + "test_offsite_pages.py::test_prune_keeps_shared_objects_and_collects_the_rest_after_the_grace",
        ),
    ),
    Plant(
        "offsite-gc-unreadable-manifest",
        "offsite/pages.py",
        '            raise OffsiteError(f"offsite manifest {name} or its index: {exc}") from exc\n',
        "            continue\n",
        (T + "test_offsite_pages.py::test_an_unreadable_remote_manifest_stops_collection",),
    ),
    Plant(
        "offsite-gc-pending-before-prune",
        "offsite/sync.py",
        "        sync.state = replace(sync.state, collect_pending=True)\n        sync.save()\n",
        "        pass\n",
        (
            T
            + "test_offsite_pages.py::test_a_kill_while_pruning_keeps_every_kept_backup_and_the_next_sync_finishes",
        ),
    ),
    Plant(
        "offsite-gc-pending-while-young",
        "offsite/sync.py",
        "collect_pending=done.young > 0)",
        "collect_pending=False)",
        (
            T
            + "test_offsite_pages.py::test_prune_keeps_shared_objects_and_collects_the_rest_after_the_grace",
        ),
    ),
    Plant(
        "offsite-sealed-check-age-header",
        "offsite/pages.py",
        "        if not is_age(head):\n",
        "        if False:\n",
        (
            T
            + "test_offsite_pages.py::test_a_sealed_object_that_is_no_age_file_fails_the_check_without_the_identity",
        ),
    ),
    Plant(
        "offsite-damaged-object-dropped",
        "offsite/client.py",
        "        self.objects.delete(remote_key(key, sealed=sealed))\n",
        "        pass\n",
        (
            T
            + "test_offsite_pages.py::test_a_damaged_remote_pack_is_named_removed_and_uploaded_again",
        ),
    ),
    # -- CSRF and the task token -------------------------------------------------------------
    Plant(
        "csrf-pages-check-the-token",
        "web/views.py",
        "    csrf.protect()\n",
        "    pass\n",
        (T + "test_hostile.py::test_every_admin_post_needs_the_csrf_token",),
    ),
    Plant(
        "csrf-token-compared",
        "web/csrf.py",
        "        or not hmac.compare_digest(given.encode(), expected.encode())\n",
        "",
        (T + "test_hostile.py::test_every_admin_post_needs_the_csrf_token",),
    ),
    Plant(
        "csrf-flask-wtf-without-default-check",
        "web/csrf.py",
        "            ext.protect()\n",
        "            pass\n",
        (
            T
            + "test_hostile.py::test_admin_posts_need_the_token_when_the_host_turned_flask_wtfs_default_check_off",
        ),
    ),
    Plant(
        "task-off-without-a-token",
        "web/tasks.py",
        "    if state.task_token is None:\n        abort(404)\n",
        "",
        (T + "test_web.py::test_task_endpoint_is_404_without_a_token",),
    ),
    Plant(
        "task-bearer-scheme",
        "web/tasks.py",
        '    if scheme.lower() != "bearer" or not given.strip():\n',
        "    if not given.strip():\n",
        (T + "test_hostile.py::test_task_endpoint_tokens",),
    ),
    Plant(
        "task-token-compared",
        "web/tasks.py",
        "    return hmac.compare_digest(given.strip().encode(), expected.encode())\n",
        "    return True\n",
        (T + "test_hostile.py::test_task_endpoint_tokens",),
    ),
    Plant(
        "task-metrics-need-the-token",
        "web/tasks.py",
        "    refused = _refuse()\n    if refused is not None:\n        return refused\n"
        "    try:\n        from tablettracker_backups import metrics",
        "    try:\n        from tablettracker_backups import metrics",
        (
            T + "test_metrics.py",
            T + "test_web.py",
        ),
    ),
    # -- the catalog (issue 21) ----------------------------------------------------------------
    Plant(
        "catalog-changed-file",
        "catalog.py",
        "    if (row.manifest_sig, row.state_sig) != key:\n",
        "    if False and (row.manifest_sig, row.state_sig) != key:\n",
        (T + "test_catalog.py::test_changes_behind_the_catalogs_back_show_at_the_next_listing",),
    ),
    Plant(
        "catalog-rebuild-damaged",
        "catalog.py",
        '            logger.info("catalog of %s is damaged (%s): rebuilding", self.folder, exc)\n            return None, True\n',
        '            logger.info("catalog of %s is damaged (%s): rebuilding", self.folder, exc)\n            return None, False\n',
        (T + "test_catalog.py::test_a_lost_or_damaged_catalog_is_rebuilt",),
    ),
    Plant(
        "catalog-rebuild-foreign",
        "catalog.py",
        "        return bool(app == APPLICATION_ID and version == SCHEMA_VERSION and tables == 1)\n",
        "        return bool(tables == 1)\n",
        (T + "test_catalog.py::test_a_lost_or_damaged_catalog_is_rebuilt",),
    ),
    Plant(
        "catalog-settle",
        "catalog.py",
        "            if info.st_mtime_ns > racy_after:\n",
        "            if info.st_mtime_ns > racy_after + 20_000_000_000:\n",
        (T + "test_catalog.py::test_a_file_changed_within_the_settle_window_is_parsed_every_time",),
    ),
    Plant(
        "catalog-row-classes",
        "catalog.py",
        "            return _ALLOWED_GLOBALS[module, name]\n        except KeyError as exc:\n",
        "            return _ALLOWED_GLOBALS[module, name]\n        except KeyError as exc:\n            return super().find_class(module, name)  # type: ignore[no-any-return]\n",
        (T + "test_catalog.py::test_a_planted_row_cannot_run_code",),
    ),
    Plant(
        "catalog-data-sizes",
        "store.py",
        "FILES.size_problem(views[location].sizes.get(meta.data_file), meta)\n",
        "FILES.size_problem(meta.stored_size, meta)\n",
        (T + "test_catalog.py::test_listing_through_the_catalog_is_the_manifests_listing",),
    ),
    Plant(
        "catalog-gone",
        "catalog.py",
        "        drop = [i for i in rows if i not in found.manifests or i in found.unstable]\n",
        "        drop = [i for i in rows if i in found.unstable]\n",
        (T + "test_catalog.py::test_changes_behind_the_catalogs_back_show_at_the_next_listing",),
    ),
    Plant(
        "catalog-busy-left-alone",
        "catalog.py",
        '            logger.debug("catalog of %s unusable now, reading the manifests: %s", self.folder, exc)\n            return None, False\n',
        '            logger.debug("catalog of %s unusable now, reading the manifests: %s", self.folder, exc)\n            return None, True\n',
        (T + "test_catalog.py::test_a_busy_catalog_is_read_around_and_left_alone",),
    ),
    Plant(
        "catalog-row-check",
        "catalog.py",
        "    if row.row_check != _row_check(backup_id, row):\n",
        "    if False and row.row_check != _row_check(backup_id, row):\n",
        (T + "test_catalog.py::test_a_torn_row_is_parsed_again",),
    ),
    Plant(
        "catalog-stale-journal",
        "catalog.py",
        '            remove_quietly(self.directory / f"{CATALOG_FILE}-journal")\n',
        "",
        (T + "test_catalog.py::test_a_rebuild_over_a_hot_journal_keeps_the_new_catalog",),
    ),
    # -- thresholds, each at its edge -----------------------------------------------------------
    Plant(
        "health-disk-at-the-limit",
        "health.py",
        "            if usage.free < limit:\n",
        "            if usage.free <= limit:\n",
        (T + "test_health.py",),
    ),
    Plant(
        "health-disk-fraction-or-bytes",
        "health.py",
        "            limit = threshold * usage.total if threshold < 1 else threshold\n",
        "            limit = threshold * usage.total if threshold <= 1 else threshold\n",
        (T + "test_health.py",),
    ),
    Plant(
        "health-room-for-the-next-backup",
        "health.py",
        "            if usage.free < needed:\n",
        "            if usage.free <= needed:\n",
        (T + "test_health.py",),
        survives="free space moves in 4 KiB blocks and the need is rarely a block multiple: "
        "the exact edge cannot be met on a real file system",
    ),
    Plant(
        "health-age-warning-edge",
        "health.py",
        "        elif age > interval + interval / 2 + GRACE:\n",
        "        elif age >= interval + interval / 2 + GRACE:\n",
        (T + "test_health.py",),
    ),
    Plant(
        "health-age-critical-edge",
        "health.py",
        "        elif age > 3 * interval + GRACE:\n",
        "        elif age >= 3 * interval + GRACE:\n",
        (T + "test_health.py",),
    ),
    Plant(
        "recent-tier-budget-edge",
        "retention.py",
        "    thinned = wanted > tier.budget\n",
        "    thinned = wanted >= tier.budget\n",
        (T + "test_retention.py",),
    ),
    Plant(
        "recent-tier-dense-half-edge",
        "retention.py",
        "            if spent + candidate.cost > tier.budget // 2:\n",
        "            if spent + candidate.cost >= tier.budget // 2:\n",
        (T + "test_retention.py",),
    ),
    Plant(
        "recent-tier-spread-fits-edge",
        "retention.py",
        "            if sum(c.cost for c in picks) <= tier.budget - spent:\n",
        "            if sum(c.cost for c in picks) < tier.budget - spent:\n",
        (T + "test_retention.py",),
    ),
    Plant(
        "recent-tier-window-edge",
        "retention.py",
        "    inside = [c for c in regular if c.created_at > now - tier.window]\n",
        "    inside = [c for c in regular if c.created_at >= now - tier.window]\n",
        (T + "test_retention.py",),
    ),
    Plant(
        "auto-in-process-size-edge",
        "autosnapshot.py",
        "        check.size <= IN_PROCESS_MAX_BYTES\n",
        "        check.size < IN_PROCESS_MAX_BYTES\n",
        (T + "test_autosnapshot.py",),
    ),
    Plant(
        "auto-in-process-seconds-edge",
        "autosnapshot.py",
        "        and last <= IN_PROCESS_MAX_SECONDS\n",
        "        and last < IN_PROCESS_MAX_SECONDS\n",
        (T + "test_autosnapshot.py",),
    ),
    # -- format 2, the page store (issue 20) -------------------------------------------------
    Plant(
        "pages-object-hash",
        "pagestore.py",
        "    if _sha256(data) != sha256:\n",
        "    if False:\n",
        (
            T
            + "test_pages_store.py::test_a_damaged_pack_is_found_on_read_named_and_healed_from_the_other_copy",
        ),
    ),
    Plant(
        "pages-page-hash",
        "pagestore.py",
        "                    if len(page) != size or page_hash(key, page) != hash_:\n",
        "                    if len(page) != size:\n",
        (T + "test_pages_store.py::test_a_page_that_does_not_match_its_hash_is_refused",),
    ),
    Plant(
        "pages-heal-replaces",
        "heal.py",
        "                target.delete(key)\n",
        "                pass\n",
        (
            T
            + "test_pages_store.py::test_a_damaged_pack_is_found_on_read_named_and_healed_from_the_other_copy",
        ),
    ),
    Plant(
        "pages-held-by-name",
        "replicate.py",
        "    return info.sha256 == part.sha256 or content_sha256(part.key) == part.sha256\n",
        "    return info.sha256 == part.sha256\n",
        (
            T
            + "test_pages_store.py::test_an_incremental_backup_stores_only_the_changed_pages_and_copies_only_them",
        ),
    ),
    Plant(
        "pages-debris-cleanup",
        "backup.py",
        "            removed += [pages / key for key in LocalStore(pages).cleanup()]\n",
        "            pass\n",
        (T + "test_pages_store.py::test_a_kill_between_packs_and_manifest_lists_no_half_backup",),
    ),
    # -- garbage collection of format 2 (issue 20) ---------------------------------------
    Plant(
        "gc-grace",
        "garbage.py",
        "        if modified is None or modified > cutoff:\n",
        "        if modified is None:\n",
        (
            T
            + "test_garbage.py::test_objects_inside_the_grace_period_survive_and_just_outside_are_collected",
        ),
    ),
    Plant(
        "gc-grace-edge",
        "garbage.py",
        "        if modified is None or modified > cutoff:\n",
        "        if modified is None or modified > cutoff + timedelta(minutes=2):\n",
        (
            T
            + "test_garbage.py::test_objects_inside_the_grace_period_survive_and_just_outside_are_collected",
        ),
    ),
    Plant(
        "gc-every-manifest",
        "garbage.py",
        "    for name in names:\n",
        "    for name in [n for n in names if manifest_id(n)][-1:]:\n",
        (T + "test_garbage.py::test_liveness_comes_from_every_manifest_not_only_the_newest",),
    ),
    Plant(
        "gc-refuse-unreadable-manifest",
        "garbage.py",
        '            raise _Refused(f"manifest {name} cannot be read ({exc})") from exc\n',
        "            continue\n",
        (
            T
            + "test_garbage.py::test_a_manifest_or_index_that_cannot_be_read_stops_all_collection_in_its_folder[manifest]",
            T
            + "test_garbage.py::test_a_manifest_or_index_that_cannot_be_read_stops_all_collection_in_its_folder[newer-format]",
        ),
    ),
    Plant(
        "gc-refuse-unreadable-index",
        "garbage.py",
        '            raise _Refused(f"the page index of backup {backup_id} cannot be read ({exc})") from exc\n',
        "            continue\n",
        (
            T
            + "test_garbage.py::test_a_manifest_or_index_that_cannot_be_read_stops_all_collection_in_its_folder[node-pack]",
        ),
    ),
    Plant(
        "gc-replan",
        "garbage.py",
        "            if key not in still:\n",
        "            if False:\n",
        (T + "test_garbage.py::test_the_plan_is_checked_again_before_anything_is_deleted",),
    ),
    Plant(
        "gc-prune-runs-it",
        "prune.py",
        "    garbage = collect(store.locations)\n",
        "    garbage = collect(store.locations, dry_run=True)\n",
        (T + "test_garbage.py::test_prune_dry_run_shows_the_plan_in_bytes_and_deletes_nothing",),
    ),
    Plant(
        "gc-mostly-dead",
        "garbage.py",
        "                if share is not None and share < MOSTLY_DEAD:\n",
        "                if share is not None and share < 0:\n",
        (
            T
            + "test_garbage.py::test_a_needed_pack_that_mostly_holds_unneeded_pages_is_reported_not_deleted",
        ),
    ),
    # -- checks at the speed of snapshots (issue 20) -------------------------------------
    Plant(
        "checks-budget-edge",
        "checks.py",
        "    if estimate <= budget:\n",
        "    if estimate < budget:\n",
        (T + "test_checks.py::test_the_budget_at_its_edges",),
    ),
    Plant(
        "checks-scheduled-always",
        "checks.py",
        "    if kind in ALWAYS_CHECKED:\n",
        "    if False:\n",
        (T + "test_checks.py::test_a_scheduled_backup_is_always_checked",),
    ),
    Plant(
        "checks-estimate-from-full-checks",
        "backup.py",
        '        ("verify" if plan.full else "header_check"): round(check_seconds, 4),\n',
        '        "verify": round(check_seconds, 4),\n',
        (T + "test_checks.py::test_the_estimate_comes_from_a_snapshot_whose_full_checks_ran",),
    ),
    Plant(
        "checks-header-size",
        "snapshot.py",
        "    if page_size * page_count != size:\n",
        "    if False:\n",
        (T + "test_checks.py::test_the_header_check_refuses_a_file_that_is_not_whole",),
    ),
    Plant(
        "checks-restore-checks-first",
        "extract.py",
        "    if not metadata.checked:\n        found = _inspect(dest, unreadable=unreadable)\n",
        "    if False:\n        found = _inspect(dest, unreadable=unreadable)\n",
        (
            T
            + "test_checks.py::test_restore_of_latest_unchecked_and_damaged_is_refused_and_latest_moves_back",
            T + "test_checks.py::test_restore_of_an_unchecked_snapshot_checks_it_before_writing",
        ),
    ),
    Plant(
        "checks-latest-damage-refused",
        "restore.py",
        "    if latest and meta.source_damaged:\n",
        "    if False:\n",
        (
            T
            + "test_checks.py::test_restore_of_latest_unchecked_and_damaged_is_refused_and_latest_moves_back",
        ),
    ),
    Plant(
        "checks-late-findings-kept",
        "metadata.py",
        "        if not manifest.checked and self.findings is not None and self.findings.checked:\n",
        "        if False:\n",
        (T + "test_checks.py::test_verify_checks_an_unchecked_snapshot_and_records_what_it_found",),
    ),
    Plant(
        "checks-listed-unchecked",
        "cli/list_cmd.py",
        '    if not info.checked:\n        return "not checked"\n',
        "",
        (
            T
            + "test_checks.py::test_an_unchecked_snapshot_is_listed_shown_and_reported_as_not_checked",
        ),
    ),
    Plant(
        "checks-info-checked",
        "store.py",
        "        return self.metadata is not None and self.metadata.checked\n",
        "        return self.metadata is not None\n",
        (
            T
            + "test_checks.py::test_an_unchecked_snapshot_is_listed_shown_and_reported_as_not_checked",
            T + "test_checks.py::test_the_pages_say_not_checked_yet",
        ),
    ),
    Plant(
        "checks-drill-unchecked-first",
        "runner.py",
        "    if unchecked:\n        return unchecked[0].id\n",
        "",
        (T + "test_checks.py::test_the_drill_checks_an_unchecked_snapshot_first",),
    ),
    Plant(
        "checks-anomaly-against-checked",
        "backup.py",
        "    previous = previous_good([i for i in infos if i.metadata is not None and i.metadata.checked])\n",
        "    previous = previous_good(infos)\n",
        (
            T
            + "test_checks.py::test_a_drop_seen_by_an_unchecked_snapshot_is_found_by_the_next_checked_one",
        ),
    ),
    Plant(
        "checks-anomaly-unchecked-schema-only",
        "backup.py",
        "    if not current.checked:\n        found = tuple(",
        "    if False:\n        found = tuple(",
        (
            T
            + "test_checks.py::test_a_drop_seen_by_an_unchecked_snapshot_is_found_by_the_next_checked_one",
        ),
    ),
    Plant(
        "checks-overdue-edge",
        "health.py",
        "    if since is not None and now - since <= 2 * interval + GRACE:\n",
        "    if since is not None and now - since <= 2 * interval + GRACE + timedelta(minutes=2):\n",
        (T + "test_checks.py::test_health_warns_when_no_snapshot_was_checked_for_two_intervals",),
    ),
    Plant(
        "raw-read-descriptor-outlives",
        "snapshot.py",
        "                    fd = os.open(database, os.O_RDONLY)\n",
        "                    os.close(os.open(database, os.O_RDONLY))\n"
        "                    fd = os.open(database, os.O_RDONLY)\n",
        (
            T
            + "test_checks.py::test_a_cli_raw_read_holds_its_shared_lock_while_the_app_holds_a_write_lock",
        ),
    ),
    Plant(
        "raw-read-not-in-wal",
        "snapshot.py",
        '                    if mode == "wal":\n                        return None\n',
        "",
        (T + "test_checks.py::test_in_wal_mode_the_cli_reads_through_sqlite",),
    ),
    Plant(
        "raw-read-not-in-process",
        "backup.py",
        "    raw_reads: bool = False,\n) -> BackupResult:\n",
        "    raw_reads: bool = True,\n) -> BackupResult:\n",
        (
            T
            + "test_pages_store.py::test_the_host_apps_own_lock_survives_a_snapshot_taken_in_its_process[delete-0.0]",
        ),
    ),
    Plant(
        "checks-retention-keeps-checked",
        "retention.py",
        "    if newest_checked is not None and not reasons[newest_checked.id]:\n",
        "    if False:\n",
        (
            T
            + "test_checks.py::test_retention_keeps_the_newest_checked_good_backup_behind_unchecked_ones",
        ),
    ),
    Plant(
        "retention-minute-edge",
        "retention.py",
        "and candidate.created_at <= horizon:",
        "and candidate.created_at < horizon:",
        (T + "test_retention.py::test_the_minute_window_edges",),
    ),
    Plant(
        "retention-minute-window",
        "retention.py",
        'if name == "minutely" and horizon is not None and candidate.created_at <= horizon:',
        "if False:",
        (
            T
            + "test_retention.py::test_two_years_of_hourly_backups_fill_exactly_the_default_slots",
            T + "test_retention.py::test_the_minute_window_edges",
        ),
    ),
    Plant(
        "auto-files-default",
        "autosnapshot.py",
        '        interval, reason = FILES_DEFAULT_INTERVAL, "files"\n',
        '        interval, reason = interval, ""\n',
        (
            T
            + "test_autosnapshot.py::test_the_default_interval_is_a_second_in_the_page_store_and_five_minutes_in_format_1",
        ),
    ),
    Plant(
        "auto-owner-setting",
        "autosnapshot.py",
        "        not settings.snapshot_after_write_set\n",
        "        True\n",
        (
            T
            + "test_autosnapshot.py::test_the_default_interval_is_a_second_in_the_page_store_and_five_minutes_in_format_1",
        ),
    ),
    Plant(
        "gc-walk-skips-unseen",
        "pagestore.py",
        "        new = [ref for ref in refs if ref.sha not in seen]\n",
        "        new = [ref for ref in refs if ref.sha not in seen][:1]\n",
        (
            T
            + "test_garbage.py::test_a_shared_walk_reads_each_node_once_and_needs_what_every_full_walk_needs",
        ),
    ),
    # -- migrate: version 1 backups into version 2 (issue 20) ------------------------------
    Plant(
        "migrate-verify-twin",
        "migrate.py",
        "        self._verify_twin(folder, twin)\n        crash_point(Stage.MIGRATE_VERIFIED)  # pragma: no mutate\n        self.store.write_metadata(",
        "        crash_point(Stage.MIGRATE_VERIFIED)  # pragma: no mutate\n        self.store.write_metadata(",
        (
            T
            + "test_migrate.py::test_a_twin_damaged_after_its_pages_were_written_is_never_trusted[primary-1]",
        ),
    ),
    Plant(
        "migrate-verify-secondary-twin",
        "migrate.py",
        "        try:\n            self._verify_twin(folder, twin)\n        except VerificationError:\n",
        "        try:\n            pass\n        except VerificationError:\n",
        (
            T
            + "test_migrate.py::test_a_twin_damaged_after_its_pages_were_written_is_never_trusted[secondary-2]",
        ),
    ),
    Plant(
        "migrate-repair-secondary",
        "migrate.py",
        "            for key in damaged:\n                target.delete(key)\n",
        "            for key in damaged:\n                pass\n",
        (
            T
            + "test_migrate.py::test_a_twin_damaged_after_its_pages_were_written_is_never_trusted[secondary-2]",
        ),
    ),
    Plant(
        "migrate-verify-on-resume",
        "migrate.py",
        "            self._verify_twin(folder, meta)\n",
        "            pass\n",
        (T + "test_migrate.py::test_a_copy_whose_twin_does_not_verify_keeps_its_version_1_file",),
    ),
    Plant(
        "migrate-damaged-secondary",
        "migrate.py",
        "        if problems:\n",
        "        if False:\n",
        (
            T
            + "test_migrate.py::test_damaged_and_encrypted_backups_are_left_as_they_are_and_reported",
        ),
    ),
    Plant(
        "migrate-secondary-waits",
        "migrate.py",
        "        if not isinstance(primary, BackupMetadata) or not _twin_of(primary, meta):\n",
        "        if not isinstance(primary, BackupMetadata):\n",
        (
            T
            + "test_migrate.py::test_damaged_and_encrypted_backups_are_left_as_they_are_and_reported",
        ),
    ),
    Plant(
        "migrate-encrypted-left",
        "migrate.py",
        "        if meta.encryption is not None:\n",
        "        if False:\n",
        (
            T
            + "test_migrate.py::test_damaged_and_encrypted_backups_are_left_as_they_are_and_reported",
        ),
    ),
    # -- retention weighs the bytes only a snapshot holds (issue 20) -------------------------
    Plant(
        "retention-own-bytes",
        "retention.py",
        "            found[i.id].own if i.id in found else cost(i),\n",
        "            cost(i),\n",
        (
            T
            + "test_footprint.py::test_the_recent_tier_weighs_the_bytes_only_each_snapshot_holds_at_its_budgets_edge",
        ),
    ),
    Plant(
        "retention-default-budget-whole",
        "retention.py",
        "        budget = 10 * (newest.whole or newest.cost) if newest is not None else 0\n",
        "        budget = 10 * newest.cost if newest is not None else 0\n",
        (T + "test_footprint.py::test_the_default_budget_is_ten_whole_copies_of_the_newest",),
    ),
    Plant(
        "health-disk-whole-copy",
        "health.py",
        "        ratio = whole / max(newest.metadata.raw_size, 1)\n",
        "        ratio = newest.metadata.stored_size / max(newest.metadata.raw_size, 1)\n",
        (
            T
            + "test_footprint.py::test_the_disk_space_check_at_its_edge_for_an_incremental_backup[short]",
        ),
    ),
    Plant(
        "metrics-stored-once",
        "metrics.py",
        "        stored_bytes=folder_bytes(\n            settings.backup_dir, [i.metadata for i in infos if i.metadata is not None]\n        ),\n",
        "        stored_bytes=sum(i.metadata.stored_size for i in infos if i.metadata is not None),\n",
        (T + "test_footprint.py::test_metrics_show_the_real_sizes_of_format_2_backups",),
    ),
    Plant(
        "footprint-shared",
        "footprint.py",
        "            own=sum(sizes.get(key, 0) for key in keys if users[key] == 1),\n",
        "            own=sum(sizes.get(key, 0) for key in keys),\n",
        (
            T
            + "test_footprint.py::test_own_bytes_are_exactly_what_deleting_that_backup_alone_frees",
        ),
    ),
)


def prepare(plant: Plant, workdir: Path, *, clean: bool) -> None:
    """A fresh scratch copy of the package and tests, with the plant applied."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in ("tablettracker_backups", "tests", "templates", "static"):
        shutil.copytree(ROOT / name, workdir / name, ignore=ignore)
    for name in ("README.md", "pyproject.toml"):
        shutil.copy(ROOT / name, workdir / name)
    source = workdir / PKG / plant.file
    text = source.read_text()
    count = text.count(plant.old)
    if count != 1:
        raise SystemExit(f"{plant.id}: the planted text matches {count} times in {plant.file}")
    if not clean:
        source.write_text(text.replace(plant.old, plant.new))


def run(plant: Plant, workdir: Path, *, clean: bool) -> tuple[str, str, float]:
    """(outcome, detail, seconds): killed / survived / error (/ passed, failed when clean)."""
    prepare(plant, workdir, clean=clean)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPS_")}
    env["PYTHONPATH"] = str(workdir)
    args = [
        sys.executable,
        # One process: under xdist a stopped run exits 2 (interrupted), not 1 (failed).
        *("-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist"),
        *("-o", "tmp_path_retention_policy=none"),
        # Its own temporary folder: pytest removes all but the newest three of the shared
        # ones, so another pytest run starting meanwhile would delete this one's files.
        f"--basetemp={workdir / '.pytest-tmp'}",
        *plant.tests,
    ]
    began = time.monotonic()
    result = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - began
    output = result.stdout + result.stderr
    failed = re.findall(r"^FAILED (\S+)", output, re.MULTILINE)
    shutil.rmtree(workdir, ignore_errors=True)
    if clean:
        return ("passed" if result.returncode == 0 else "failed"), "; ".join(failed), seconds
    if result.returncode == 1 and failed:
        return "killed", failed[0], seconds
    if result.returncode == 0:
        return "survived", "", seconds
    return "error", output[-1500:], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ids", nargs="*", help="plants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the plants, run nothing")
    parser.add_argument("--clean", action="store_true", help="run the tests without the plant")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ttb-plants"))
    options = parser.parse_args()
    known = {p.id: p for p in PLANTS}
    unknown = [i for i in options.ids if i not in known]
    if unknown:
        raise SystemExit(f"unknown plants: {', '.join(unknown)}")
    chosen = [known[i] for i in options.ids] if options.ids else list(PLANTS)
    if options.list:
        for plant in chosen:
            print(f"{plant.id}\t{plant.file}\t{' '.join(plant.tests)}\t{plant.survives}")
        return
    bad = 0
    for plant in chosen:
        outcome, detail, seconds = run(plant, options.workdir / plant.id, clean=options.clean)
        wanted = "passed" if options.clean else ("survived" if plant.survives else "killed")
        bad += outcome != wanted
        print(f"{plant.id}: {outcome} in {seconds:.1f}s {detail}", flush=True)
    if bad:
        raise SystemExit(f"{bad} of {len(chosen)} plants did not give the expected outcome")


if __name__ == "__main__":
    main()

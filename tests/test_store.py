"""Backup folders: listing marks missing, differing and damaged copies; debris never lists."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tablettracker_backups.backup import create_backup
from tablettracker_backups.errors import BackupNotFound, InvalidBackupId
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import CopyStatus
from tablettracker_backups.store import BackupStore, CopyState
from tests.conftest import flip_byte, rewrite_metadata

OK, MISSING, DIFFERS, DAMAGED = (
    CopyStatus.OK,
    CopyStatus.MISSING,
    CopyStatus.DIFFERS,
    CopyStatus.DAMAGED,
)


@pytest.fixture
def taken(settings: Settings) -> str:
    """One committed backup in both folders; returns its id."""
    return create_backup(settings).metadata.id


def states(settings: Settings, backup_id: str) -> dict[str, str]:
    return {c.location: c.state for c in BackupStore(settings).get(backup_id).copies}


def test_healthy_backup_lists_with_both_copies(settings: Settings, taken: str) -> None:
    store = BackupStore(settings)
    [info] = store.list()
    assert info.id == taken
    assert info.verified and not info.problems
    assert states(settings, taken) == {"primary": OK, "secondary": OK}
    assert store.latest().id == taken
    summary = info.to_dict()
    assert summary["copies"] == {"primary": "ok", "secondary": "ok"}
    assert summary["size"] == info.stored_size > 0


def test_missing_secondary_copy_is_marked(settings: Settings, taken: str) -> None:
    for name in (f"{taken}.json", f"{taken}.db.zst"):
        (settings.secondary_dir / name).unlink()  # type: ignore[operator]
    info = BackupStore(settings).get(taken)
    assert states(settings, taken) == {"primary": OK, "secondary": MISSING}
    assert info.copy_state("secondary") == MISSING
    assert info.verified  # the primary copy is sound


def test_missing_secondary_data_file_is_marked_damaged(settings: Settings, taken: str) -> None:
    (settings.secondary_dir / f"{taken}.db.zst").unlink()  # type: ignore[operator]
    info = BackupStore(settings).get(taken)
    assert states(settings, taken)["secondary"] == DAMAGED
    assert any("data file is missing" in p for p in info.problems)


def test_secondary_copy_of_another_size_is_marked(settings: Settings, taken: str) -> None:
    data = settings.secondary_dir / f"{taken}.db.zst"  # type: ignore[operator]
    data.write_bytes(data.read_bytes()[:-10])
    info = BackupStore(settings).get(taken)
    assert states(settings, taken) == {"primary": OK, "secondary": DAMAGED}
    assert any("bytes, metadata says" in p for p in info.problems)
    assert info.verified


def test_secondary_copy_that_differs_is_marked(settings: Settings, taken: str) -> None:
    path = settings.secondary_dir / f"{taken}.json"  # type: ignore[operator]
    doc = json.loads(path.read_text())
    doc["sha256"] = "0" * 64
    path.write_text(json.dumps(doc))
    info = BackupStore(settings).get(taken)
    assert states(settings, taken) == {"primary": OK, "secondary": DIFFERS}
    assert any("differs" in p for p in info.problems)


@pytest.mark.parametrize(
    "damage",
    [
        b"this is not json",
        b"",
        b"[1, 2, 3]",
        b'{"format_version": 1}',
    ],
)
def test_damaged_metadata_still_lists_and_is_marked(
    settings: Settings, taken: str, damage: bytes
) -> None:
    for folder in settings.locations:
        (folder / f"{taken}.json").write_bytes(damage)
    [info] = BackupStore(settings).list()
    assert info.id == taken
    assert info.metadata is None
    assert info.kind == "unknown"
    assert not info.verified
    assert info.problems
    assert all(c.state == DAMAGED for c in info.copies)
    assert info.to_dict()["size"] is None
    # The id's own time stands in for the lost created_at.
    assert info.created_at.strftime("%Y%m%dT%H%M%SZ") == taken[:16]
    with pytest.raises(BackupNotFound):
        BackupStore(settings).latest()


def test_metadata_pointing_at_another_file_is_marked(settings: Settings, taken: str) -> None:
    rewrite_metadata(settings, taken, data_file="../../etc/passwd")
    [info] = BackupStore(settings).list()
    assert info.metadata is None
    assert any("another file" in p for p in info.problems)
    assert not info.verified


def test_one_damaged_metadata_copy_does_not_hide_the_good_one(
    settings: Settings, taken: str
) -> None:
    (settings.backup_dir / f"{taken}.json").write_text("{broken")
    info = BackupStore(settings).get(taken)
    assert info.metadata is not None
    assert info.verified
    assert states(settings, taken) == {"primary": DAMAGED, "secondary": OK}


def test_flipped_byte_is_invisible_to_the_cheap_look(settings: Settings, taken: str) -> None:
    """list does no hashing (it must stay fast); verify and health catch a flipped byte."""
    flip_byte(settings.backup_dir / f"{taken}.db.zst")
    assert states(settings, taken) == {"primary": OK, "secondary": OK}


def test_data_file_without_metadata_never_lists(settings: Settings, taken: str) -> None:
    orphan = "20250101T000000Z-0a0b0c"
    (settings.backup_dir / f"{orphan}.db.zst").write_bytes(b"partial")
    store = BackupStore(settings)
    assert store.ids() == [taken]
    with pytest.raises(BackupNotFound):
        store.get(orphan)
    removed = store.cleanup_orphans()
    assert removed == [settings.backup_dir / f"{orphan}.db.zst"]
    assert (settings.backup_dir / f"{taken}.db.zst").exists()


@pytest.mark.parametrize(
    "name",
    [
        "20261399T999999Z-3f9a1c.json",  # right shape, impossible date
        "20261399T999999Z-3f9a1c.db.zst",
        "notes.json",
        "status.json",
        "alerts.jsonl",
        "README.txt",
        "20261123T201500Z-3F9A1C.json",
    ],
)
def test_stray_files_are_ignored(settings: Settings, taken: str, name: str) -> None:
    (settings.backup_dir / name).write_text("{}")
    store = BackupStore(settings)
    assert [i.id for i in store.list()] == [taken]
    store.cleanup_orphans()
    assert (settings.backup_dir / name).exists()
    create_backup(settings)  # cleanup inside a real backup must not trip over it either
    assert len(store.list()) == 2


def test_get_rejects_bad_and_unknown_ids(settings: Settings, taken: str) -> None:
    store = BackupStore(settings)
    with pytest.raises(InvalidBackupId):
        store.get("../../etc/passwd")
    with pytest.raises(BackupNotFound):
        store.get("20200101T000000Z-000000")
    with pytest.raises(InvalidBackupId):
        store.delete("..")


def test_delete_removes_every_copy(settings: Settings, taken: str) -> None:
    store = BackupStore(settings)
    store.delete(taken)
    assert store.list() == []
    for folder in settings.locations:
        assert not [p for p in folder.iterdir() if p.name.startswith(taken)]


def test_missing_folders_list_as_empty(make_settings: object, tmp_path: Path) -> None:
    from tablettracker_backups.settings import settings_from_mapping

    settings = settings_from_mapping(
        {"database": tmp_path / "x.db", "dir": tmp_path / "nothing-here"}
    )
    store = BackupStore(settings)
    assert store.list() == []
    with pytest.raises(BackupNotFound, match="no verified backup"):
        store.latest()


id_like = st.builds(
    lambda stamp, suffix, ext: f"{stamp}-{suffix}{ext}",
    st.from_regex(r"[0-9]{8}T[0-9]{6}Z", fullmatch=True) | st.text(max_size=16),
    st.from_regex(r"[0-9a-fA-F]{6}", fullmatch=True) | st.text(max_size=8),
    st.sampled_from([".json", ".db.zst", ".db.gz", "", ".tmp", ".json.bak"]),
)


@hypothesis_settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(names=st.lists(id_like, max_size=6), content=st.binary(max_size=64))
def test_stray_files_never_break_listing_or_cleanup(
    settings: Settings, taken: str, names: list[str], content: bytes
) -> None:
    """Whatever else lies in a backup folder, list() works and cleanup keeps real backups."""
    made: list[Path] = []
    for name in names:
        if not name or "/" in name or "\x00" in name or name in (".", "..") or taken in name:
            continue
        path = settings.backup_dir / name
        try:
            path.write_bytes(content)
        except OSError:
            continue  # a name the file system refuses (too long, ...)
        made.append(path)
    try:
        store = BackupStore(settings)
        infos = store.list()
        assert taken in [i.id for i in infos]
        assert store.get(taken).verified
        store.cleanup_orphans()
        assert (settings.backup_dir / f"{taken}.db.zst").exists()
        assert (settings.backup_dir / f"{taken}.json").exists()
    finally:
        for path in made:
            path.unlink(missing_ok=True)


def test_secondary_symlink_to_primary_is_refused(db_path: Path, tmp_path: Path) -> None:
    from tablettracker_backups.errors import ConfigError
    from tablettracker_backups.settings import settings_from_mapping

    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="BACKUPS_SECONDARY_DIR must differ"):
        settings_from_mapping(
            {"database": db_path, "dir": tmp_path / "real", "secondary_dir": tmp_path / "alias"}
        )


# -- what `list --json` prints, and the less travelled paths (mutation survivors) -------------


def test_to_dict_is_the_list_json_entry(settings: Settings, taken: str) -> None:
    info = BackupStore(settings).get(taken)
    meta = info.metadata
    assert meta is not None
    assert info.to_dict() == {
        "id": taken,
        "created_at": meta.created_at.isoformat().replace("+00:00", "Z"),
        "kind": "manual",
        "size": meta.stored_size,
        "raw_size": meta.raw_size,
        "verified": True,
        "checked": True,
        "checks": dict.fromkeys(
            ("sha256", "schema", "integrity", "foreign_keys", "row_counts"),
            meta.verification.verified_at.isoformat().replace("+00:00", "Z"),
        ),
        "verified_at": meta.verification.verified_at.isoformat().replace("+00:00", "Z"),
        "compression": "zstd",
        "sha256": meta.sha256,
        "copies": {"primary": "ok", "secondary": "ok"},
        "problems": [],
        "good": True,
        "label": None,
        "pinned": False,
        "findings": meta.findings.to_dict(),
        "encrypted_to": None,
        "newer": False,
    }
    assert info.to_dict()["verified_at"].endswith("Z")


def test_latest_by_verification_and_kind(settings: Settings) -> None:
    from datetime import timedelta

    from tests.conftest import backdate

    store = BackupStore(settings)
    with pytest.raises(BackupNotFound, match=r"^no backups yet$"):
        store.newest()
    with pytest.raises(BackupNotFound, match=r"^there is no verified backup yet$"):
        store.latest()
    old = create_backup(settings).metadata.id
    safety = create_backup(settings, kind="pre-restore").metadata.id
    newest = create_backup(settings).metadata.id
    backdate(settings, old, timedelta(hours=2))
    backdate(settings, safety, timedelta(hours=1))
    meta = json.loads(store.metadata_path("primary", newest).read_text())
    rewrite_metadata(settings, newest, verification={**meta["verification"], "ok": False})
    assert store.newest().id == newest
    # latest: the newest good regular backup, never the safety snapshot (the trust issue)
    assert store.latest().id == old
    assert store.newest_safety_snapshot().id == safety


def test_orphans_are_cleaned_in_the_secondary_when_the_primary_folder_is_missing(
    settings: Settings,
) -> None:
    settings.secondary_dir.mkdir()  # type: ignore[union-attr]
    orphan = settings.secondary_dir / "20200101T000000Z-abcdef.db.zst"  # type: ignore[operator]
    orphan.write_bytes(b"half a backup")
    assert BackupStore(settings).cleanup_orphans() == [orphan]
    assert not orphan.exists()


def test_an_unreadable_primary_folder_is_an_error_not_an_empty_list(
    make_settings: object, tmp_path: Path
) -> None:
    from tablettracker_backups.errors import StorageError

    assert callable(make_settings)
    (tmp_path / "plainfile").write_text("x")
    settings = make_settings(dir=tmp_path / "plainfile")
    with pytest.raises(StorageError, match="plainfile"):
        BackupStore(settings).ids()


def test_metadata_that_cannot_be_deleted_stops_the_delete(settings: Settings, taken: str) -> None:
    from tablettracker_backups.errors import StorageError

    store = BackupStore(settings)
    meta = store.metadata_path("primary", taken)
    meta.unlink()
    meta.mkdir()  # a folder where the metadata file was: unlink fails (not "missing")
    with pytest.raises(StorageError, match=f"{meta}"):
        store.delete(taken)
    assert store.data_path("primary", taken, "zstd").exists()  # nothing deleted after it


def _settle(settings: Settings, seconds: float = 60.0) -> None:
    """Date the folders' modification time back, as if nothing had changed for a while."""
    import os
    import time

    for folder in settings.locations:
        moment = time.time() - seconds
        os.utime(folder, (moment, moment))


def test_listing_cache_reuses_a_listing_only_while_the_folders_are_unchanged(
    settings: Settings,
) -> None:
    from tablettracker_backups.store import ListingCache
    from tablettracker_backups.verify import verify_backup

    first = create_backup(settings).metadata.id
    cache = ListingCache()
    store = BackupStore(settings, cache=cache)
    _settle(settings)
    assert [i.id for i in store.list()] == [first]
    # Unchanged folders: the cached listing is used, so an in-place edit (no rename, which
    # nothing of ours does) is not seen: proof that the folders were not read again.
    path = settings.backup_dir / f"{first}.json"
    document = json.loads(path.read_text())
    document["kind"] = "pre-restore"
    path.write_text(json.dumps(document))
    assert store.list()[0].kind == "manual"
    assert BackupStore(settings).list()[0].kind == "pre-restore"  # no cache: read
    # A new backup changes the folders: listed at once, and not cached while the folders'
    # time is too fresh to trust.
    second = create_backup(settings).metadata.id
    assert {i.id for i in store.list()} == {first, second}
    assert ListingCache.stamp(settings.locations) is None
    _settle(settings)
    assert {i.id for i in store.list()} == {first, second}
    # Verification rewrites metadata by renaming: the next listing sees its outcome.
    flip_byte(settings.backup_dir / f"{second}.db.zst")
    verify_backup(BackupStore(settings), second)
    _settle(settings, 30)
    damaged = next(i for i in store.list() if i.id == second)
    assert damaged.copy_state("primary") == CopyStatus.DAMAGED
    # Deleting a backup changes the folder too.
    BackupStore(settings).delete(second)
    _settle(settings, 20)
    assert [i.id for i in store.list()] == [first]


def test_a_secondary_folder_that_cannot_be_listed_hides_only_its_own_copies(
    make_settings: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(secondary_dir=None)
    taken = create_backup(settings).metadata.id
    (tmp_path / "not-a-folder").write_text("x")
    both = make_settings(secondary_dir=tmp_path / "not-a-folder")
    caplog.set_level(logging.WARNING, logger="tablettracker_backups.store")
    store = BackupStore(both)
    assert store.ids() == [taken]
    assert "cannot list the secondary folder" in caplog.text
    (info,) = store.list()
    assert info.copy_state("primary") == "ok" and info.copy_state("secondary") == "missing"


def test_latest_says_why_when_every_verified_backup_holds_damaged_data(
    settings: Settings,
) -> None:
    backup = create_backup(settings).metadata
    document = json.loads(BackupStore(settings).metadata_path("primary", backup.id).read_text())
    rewrite_metadata(settings, backup.id, findings={**document["findings"], "source_damaged": True})
    with pytest.raises(BackupNotFound) as caught:
        BackupStore(settings).latest()
    assert str(caught.value) == (
        "there is no good backup: every verified backup holds damaged data (source-damaged); "
        "give a backup id to restore one anyway"
    )
    with pytest.raises(BackupNotFound, match=r"^there is no verified safety snapshot"):
        BackupStore(settings).newest_safety_snapshot()


def _settled(settings: Settings) -> None:
    """Folders older than the listing cache's settle time (2 s), as they are between runs."""
    for folder in settings.locations:
        if folder.exists():
            os.utime(folder, (time.time() - 10, time.time() - 10))


def test_values_derived_from_a_listing_are_remembered_per_listing(settings: Settings) -> None:
    from tablettracker_backups.store import ListingCache

    create_backup(settings)
    _settled(settings)
    store = BackupStore(settings, cache=ListingCache())
    store.list()
    first = store.memo("plan", object)
    assert store.memo("plan", object) is first
    assert store.memo("other", object) is not first
    # The oldest of too many keys is forgotten; one used again is kept.
    for number in range(ListingCache.MEMO_SIZE):
        store.memo(("filler", number), object)
        store.memo("plan", object)
    assert store.memo("plan", object) is first
    # A new backup is a new listing: everything is computed again.
    create_backup(settings)
    _settled(settings)
    store.list()
    assert store.memo("plan", object) is not first
    # Without a cache nothing is remembered.
    plain = BackupStore(settings)
    plain.list()
    assert plain.memo("plan", object) is not plain.memo("plan", object)


def test_only_a_verified_regular_backup_makes_latest_say_damaged(settings: Settings) -> None:
    backup = create_backup(settings).metadata
    document = json.loads(BackupStore(settings).metadata_path("primary", backup.id).read_text())
    rewrite_metadata(settings, backup.id, verification={**document["verification"], "ok": False})
    with pytest.raises(BackupNotFound, match=r"^there is no verified backup yet$"):
        BackupStore(settings).latest()


def test_delete_removes_encrypted_copies_and_to_dict_names_their_keys(
    make_settings: Callable[..., Settings], keys: Callable[[str], tuple[Path, str]]
) -> None:
    from tablettracker_backups.encryption import fingerprint

    _, recipient = keys("owner")
    settings = make_settings(encrypt_to=recipient, encrypt="all")
    backup = create_backup(settings).metadata
    store = BackupStore(settings)
    (info,) = store.list()
    assert info.to_dict()["encrypted_to"] == [fingerprint(recipient)]
    store.delete(backup.id)
    for folder in settings.locations:
        assert [p.name for p in folder.iterdir() if p.name.startswith(backup.id)] == []


def test_the_memo_keeps_the_newest_sixteen(settings: Settings) -> None:
    from tablettracker_backups.store import ListingCache

    cache = ListingCache()
    values = {n: cache.memo(n, object) for n in range(ListingCache.MEMO_SIZE)}
    assert all(cache.memo(n, object) is values[n] for n in values)  # all sixteen kept
    newest = cache.memo("one more", object)
    assert cache.memo("one more", object) is newest
    assert cache.memo(0, object) is not values[0]  # the least recently used went


def test_a_listing_too_fresh_to_trust_remembers_nothing(settings: Settings) -> None:
    from tablettracker_backups.store import ListingCache

    create_backup(settings)  # the folders changed just now
    store = BackupStore(settings, cache=ListingCache())
    store.list()
    assert store.generation is None
    assert store.memo("plan", object) is not store.memo("plan", object)


# -- what one look at a backup says about each copy, word for word ----------------------------


def fail_verification(folder: Path, backup_id: str, error: str) -> None:
    """One copy's metadata says its last verification failed (an on-disk edit)."""
    path = folder / f"{backup_id}.json"
    document = json.loads(path.read_text())
    document["verification"].update(ok=False, error=error)
    path.write_text(json.dumps(document))


def test_a_damaged_metadata_copy_says_why(settings: Settings, taken: str) -> None:
    (settings.backup_dir / f"{taken}.json").write_text("{broken")
    info = BackupStore(settings).get(taken)
    primary = info.copies[0]
    assert (primary.location, primary.state) == ("primary", DAMAGED)
    assert primary.detail == info.problems[0]
    assert primary.detail.startswith(f"primary copy of {taken}: ")


def test_a_copy_that_failed_verification_says_why_and_the_sound_one_is_shown(
    settings: Settings, taken: str
) -> None:
    fail_verification(settings.backup_dir, taken, "decompressed database's SHA-256 differs")
    info = BackupStore(settings).get(taken)
    assert info.copies[0] == CopyState(
        "primary", DAMAGED, "decompressed database's SHA-256 differs"
    )
    assert info.copies[1] == CopyState("secondary", OK)
    assert info.problems == (
        f"primary copy of {taken} failed verification: decompressed database's SHA-256 differs",
    )
    # The metadata shown is the secondary's, whose verification passed.
    assert info.metadata is not None and info.metadata.verification.ok
    assert info.verified


def test_with_no_verified_copy_the_metadata_shown_is_of_a_copy_whose_data_is_there(
    settings: Settings, taken: str
) -> None:
    BackupStore(settings).data_path("primary", taken, "zstd").unlink()
    assert settings.secondary_dir is not None
    fail_verification(settings.secondary_dir, taken, "row counts differ from its metadata")
    info = BackupStore(settings).get(taken)
    assert [c.state for c in info.copies] == [DAMAGED, DAMAGED]
    assert info.metadata is not None
    assert info.metadata.verification.error == "row counts differ from its metadata"
    assert not info.verified


def test_ids_are_newest_first(settings: Settings) -> None:
    """Ids begin with their UTC time, so the reverse sort is newest first."""
    made = [create_backup(settings).metadata.id for _ in range(3)]
    assert BackupStore(settings).ids() == sorted(made, reverse=True)


def test_metadata_that_is_not_utf8_is_damage_not_a_crash(settings: Settings, taken: str) -> None:
    (settings.backup_dir / f"{taken}.json").write_bytes(b'{"id": "\xff\xfe"}')
    assert states(settings, taken) == {"primary": DAMAGED, "secondary": OK}


def test_metadata_that_cannot_be_opened_is_damage_not_a_crash(
    settings: Settings, taken: str
) -> None:
    loop = settings.backup_dir / f"{taken}.json"
    loop.unlink()
    loop.symlink_to(loop.name)  # a link to itself: opening it fails with ELOOP
    info = BackupStore(settings).get(taken)
    assert states(settings, taken) == {"primary": DAMAGED, "secondary": OK}
    assert str(loop) in info.copies[0].detail


def test_metadata_under_another_backups_name_is_damage(settings: Settings) -> None:
    first = create_backup(settings).metadata.id
    second = create_backup(settings).metadata.id
    for folder in settings.locations:
        (folder / f"{second}.json").write_text((folder / f"{first}.json").read_text())
    info = BackupStore(settings).get(second)
    assert [c.state for c in info.copies] == [DAMAGED, DAMAGED]
    assert info.metadata is None


# -- the manifest is written once; what changes lives in the state document (issue 24) --------


def test_a_verification_and_a_pin_never_rewrite_the_manifest(settings: Settings) -> None:
    from tablettracker_backups.pins import set_pin
    from tablettracker_backups.verify import verify_backup

    backup = create_backup(settings).metadata
    store = BackupStore(settings)
    manifests = {loc: store.read_manifest(loc, backup.id) for loc in store.locations}
    verify_backup(store, backup.id)
    set_pin(settings, backup.id, pinned=True, label="before the migration")
    for location in store.locations:
        assert store.read_manifest(location, backup.id) == manifests[location]
        state = store.read_state_bytes(location, backup.id)
        assert state is not None and b"before the migration" in state
    info = store.get(backup.id)
    assert info.pinned and info.label == "before the migration"
    assert info.metadata is not None and info.metadata.verification.verified_at > (
        backup.verification.verified_at
    )
    # A state document naming another backup is damage, shown as such, not believed.
    other = create_backup(settings).metadata
    store.write_state_bytes(
        "secondary", other.id, store.read_state_bytes("primary", backup.id) or b""
    )
    assert store.get(other.id).copy_state("secondary") == "damaged"
    assert "state names backup" in "; ".join(store.get(other.id).problems)


def test_a_backup_written_by_a_newer_version_is_listed_as_such_and_kept(
    settings: Settings,
) -> None:
    import json

    from tablettracker_backups.prune import prune

    backup = create_backup(settings).metadata
    for folder in settings.locations:
        path = folder / f"{backup.id}.json"
        document = json.loads(path.read_text())
        document["format_version"] = 3
        path.write_text(json.dumps(document))
    info = BackupStore(settings).get(backup.id)
    assert [c.state for c in info.copies] == ["newer", "newer"]
    assert info.newer and info.problems == ()  # not damage
    assert "written by a newer version of tablettracker-backups (format 3" in info.copies[0].detail
    # This version cannot judge it, so it never deletes it, whatever retention says.
    strict = dataclasses.replace(
        settings,
        retention=dataclasses.replace(
            settings.retention, hourly=0, daily=0, weekly=0, monthly=0, yearly=0
        ),
        keep_recent=0,
    )
    middle = create_backup(strict).metadata.id
    create_backup(strict)
    result = prune(BackupStore(strict))
    assert result.deleted == (middle,)  # retention did delete: all it may
    reasons = {d.id: d.reasons for d in result.plan.decisions}
    assert "pinned" in reasons[backup.id]
    assert backup.id in BackupStore(settings).ids()

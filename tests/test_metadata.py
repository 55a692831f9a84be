"""Backup ids and metadata documents: strict validation, round trips, fuzzing."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tablettracker_backups.errors import InvalidBackupId, MetadataError
from tablettracker_backups.layout import data_key as data_filename
from tablettracker_backups.layout import manifest_key as metadata_filename
from tablettracker_backups.metadata import (
    BackupMetadata,
    SourceInfo,
    Verification,
    id_time,
    new_backup_id,
    validate_backup_id,
)

# The same id written with other scripts' digits (\d would match them).
FULL_WIDTH_ID = "20261123T201500Z-3f9a1c".translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})
ARABIC_INDIC_ID = "20261123T201500Z-3f9a1c".translate(
    {ord(d): 0x0660 + int(d) for d in "0123456789"}
)
WHEN = datetime(2026, 11, 23, 20, 15, 0, 123456, tzinfo=timezone.utc)


def sample(**changes: Any) -> BackupMetadata:
    values: dict[str, Any] = {
        "id": "20261123T201500Z-3f9a1c",
        "created_at": WHEN,
        "kind": "scheduled",
        "trigger": "cli",
        "source": SourceInfo("/srv/app.db", 8192, 4096, 2, "wal", "3.46.1"),
        "tool_version": "0.1.0",
        "schema_fingerprint": "a" * 64,
        "row_counts": {"po_lines": 160, "employees": 4},
        "raw_size": 8192,
        "raw_sha256": "b" * 64,
        "stored_size": 700,
        "sha256": "c" * 64,
        "compression": "zstd",
        "compression_level": 3,
        "durations": {"total": 0.25, "snapshot": 0.01},
        "verification": Verification(True, WHEN + timedelta(seconds=1), "ok", 0),
    }
    values.update(changes)
    return BackupMetadata(**values)


def document(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(sample().to_json())
    doc.update(changes)
    return doc


# -- ids --------------------------------------------------------------------------------------


def test_new_id_format_sorts_by_time_and_validates() -> None:
    ids = [new_backup_id(WHEN + timedelta(seconds=s)) for s in (0, 1, 59, 3600, 86400 * 40)]
    assert ids == sorted(ids)
    for backup_id in ids:
        assert validate_backup_id(backup_id) == backup_id
        assert len(backup_id) == 23
    assert ids[0].startswith("20261123T201500Z-")
    assert id_time(ids[0]) == WHEN.replace(microsecond=0)
    # A local-time input still yields a UTC id.
    local = WHEN.astimezone(timezone(timedelta(hours=-5)))
    assert new_backup_id(local).startswith("20261123T201500Z-")
    assert len({new_backup_id(WHEN) for _ in range(50)}) > 45


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "latest",
        "../../etc/passwd",
        "20261123T201500Z-3f9a1c/..",
        "../20261123T201500Z-3f9a",
        "20261123T201500Z-3f9a1c\x00",
        "2026112\x00T201500Z-3f9a1c",
        "20261123T201500Z-3F9A1C",  # upper-case hex
        "20261123T201500Z-3f9a1g",
        "20261123T201500Z-3f9a1c\n",
        "20261123T201500Z-3f9a1c.json",
        "20261123T201500-3f9a1c0",
        "20261323T201500Z-3f9a1c",  # month 13
        "20260230T201500Z-3f9a1c",  # 30 February
        "20261123T251500Z-3f9a1c",  # hour 25
        FULL_WIDTH_ID,
        ARABIC_INDIC_ID,
        "20261123T201500Z-3f9a1\u0663",
        "20261123T201500Z-3f9a1c" * 100,
        "x" * 10_000,
        None,
        20261123,
        b"20261123T201500Z-3f9a1c",
    ],
)
def test_bad_ids_rejected(bad: object) -> None:
    with pytest.raises(InvalidBackupId) as caught:
        validate_backup_id(bad)
    assert "\n" not in str(caught.value)
    assert len(str(caught.value)) < 200


def test_file_names_derive_from_valid_ids_only() -> None:
    assert data_filename("20261123T201500Z-3f9a1c", "zstd") == "20261123T201500Z-3f9a1c.db.zst"
    assert data_filename("20261123T201500Z-3f9a1c", "gzip") == "20261123T201500Z-3f9a1c.db.gz"
    assert metadata_filename("20261123T201500Z-3f9a1c") == "20261123T201500Z-3f9a1c.json"
    with pytest.raises(InvalidBackupId):
        metadata_filename("../x")
    with pytest.raises(InvalidBackupId):
        data_filename("/etc/passwd", "zstd")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.binary(max_size=40), st.integers(), st.none()))
def test_validate_backup_id_fuzz(value: object) -> None:
    try:
        result = validate_backup_id(value)
    except InvalidBackupId:
        return
    assert isinstance(result, str)
    assert result.isascii() and "/" not in result and "\x00" not in result
    assert len(result) == 23


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 30)))
def test_any_generated_id_validates(moment: datetime) -> None:
    backup_id = new_backup_id(moment.replace(tzinfo=timezone.utc))
    assert validate_backup_id(backup_id) == backup_id


# -- metadata documents -----------------------------------------------------------------------


def test_json_round_trip() -> None:
    meta = sample(extra={"note": "hello", "nested": {"a": [1, 2]}})
    text = meta.to_json()
    again = BackupMetadata.from_json(text, expected_id=meta.id)
    assert again == meta
    assert BackupMetadata.from_json(text.encode()) == meta
    doc = json.loads(text)
    assert doc["created_at"] == "2026-11-23T20:15:00.123456Z"
    assert doc["data_file"] == "20261123T201500Z-3f9a1c.db.zst"
    assert meta.data_file == doc["data_file"]
    failed = sample(verification=Verification(False, WHEN, "ok", 0, error="SHA-256 differs"))
    assert BackupMetadata.from_json(failed.to_json()) == failed


@pytest.mark.parametrize(
    "data_file",
    [
        "../../etc/passwd",
        "/etc/shadow",
        "20261123T201500Z-3f9a1c.db.gz",  # right id, wrong compression
        "20261123T201500Z-000000.db.zst",  # another backup's file
        "20261123T201500Z-3f9a1c.db.zst/../x",
    ],
)
def test_metadata_pointing_at_another_file_is_rejected(data_file: str) -> None:
    with pytest.raises(MetadataError, match="another file"):
        BackupMetadata.from_dict(document(data_file=data_file))


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"format_version": 2}, "format"),
        ({"id": "../evil"}, "invalid backup id"),
        ({"id": "20261123T201500Z-000000"}, "not 20261123T201500Z-3f9a1c"),
        ({"kind": "weekly"}, "kind"),
        ({"compression": "lz4"}, "compression"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": "2026-11-23T20:15:00"}, "time zone"),
        ({"created_at": 1700000000}, "created_at"),
        ({"sha256": "C" * 64}, "sha256"),
        ({"raw_sha256": "b" * 63}, "raw_sha256"),
        ({"stored_size": -1}, "stored_size"),
        ({"raw_size": True}, "raw_size"),
        ({"row_counts": {"po_lines": -3}}, "po_lines"),
        ({"row_counts": []}, "row_counts"),
        ({"durations": {"total": "fast"}}, "total"),
        ({"verification": {"ok": "yes"}}, "ok"),
        ({"source": None}, "source"),
        ({"extra": []}, "extra"),
    ],
)
def test_malformed_fields_rejected(changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(MetadataError) as caught:
        BackupMetadata.from_dict(document(**changes), expected_id="20261123T201500Z-3f9a1c")
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        "null",
        '"string"',
        "{",
        b"\xff\xfe\x00garbage",
        "[" * 100_000 + "]" * 100_000,
        '{"a": ' + " " * (1024 * 1024) + "1}",
    ],
)
def test_unreadable_json_is_a_metadata_error(text: str | bytes) -> None:
    with pytest.raises(MetadataError):
        BackupMetadata.from_json(text)


def test_out_of_range_timestamps_are_metadata_errors() -> None:
    for value in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        with pytest.raises(MetadataError, match="created_at"):
            BackupMetadata.from_dict(document(created_at=value))


# -- fuzzing: only MetadataError may escape ---------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "zstd",
            "gzip",
            "scheduled",
            "pre-restore",
            "20261123T201500Z-3f9a1c",
            "2026-11-23T20:15:00Z",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "a" * 64,
        ]
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = sorted(document())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5),
    st.lists(st.sampled_from(FIELDS), max_size=3),
)
def test_from_json_fuzz_mutated_documents(changes: dict[str, Any], dropped: list[str]) -> None:
    doc = document(**changes)
    for key in dropped:
        doc.pop(key, None)
    try:
        meta = BackupMetadata.from_json(json.dumps(doc), expected_id="20261123T201500Z-3f9a1c")
    except MetadataError:
        return
    # Whatever parses is safe to use: a valid id and a derived, in-folder file name.
    assert meta.id == "20261123T201500Z-3f9a1c"
    assert "/" not in meta.data_file
    assert BackupMetadata.from_json(meta.to_json()) == meta


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), json_values.map(json.dumps)))
def test_from_json_fuzz_arbitrary_text(text: str | bytes) -> None:
    with contextlib.suppress(MetadataError):
        BackupMetadata.from_json(text)

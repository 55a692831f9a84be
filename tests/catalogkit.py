"""Synthetic restore points, written fast: tiny real manifests (and empty data files) for the
catalog's tests and bench/bench_catalog.py, which need many backups but no data in them."""

from __future__ import annotations

import json
import os
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tablettracker_backups.metadata import (
    BackupMetadata,
    BackupState,
    SourceInfo,
    Verification,
    utc_iso,
)

START = datetime(2026, 12, 1, tzinfo=timezone.utc)


def sample_meta(backup_id: str, created_at: datetime, *, kind: str = "auto") -> BackupMetadata:
    """A valid manifest for an empty (0-byte) data file."""
    return BackupMetadata(
        id=backup_id,
        created_at=created_at,
        kind=kind,
        trigger="synthetic",
        source=SourceInfo("/srv/app.db", 8192, 4096, 2, "delete", "3.46.1"),
        tool_version="0.1.0",
        schema_fingerprint="a" * 64,
        row_counts={"po_lines": 160, "employees": 4},
        raw_size=8192,
        raw_sha256="b" * 64,
        stored_size=0,
        sha256="c" * 64,
        compression="zstd",
        compression_level=3,
        durations={"total": 0.25},
        verification=Verification(True, created_at + timedelta(seconds=1), "ok", 0),
    )


def backup_id_at(moment: datetime) -> str:
    """A fresh id for ``moment`` (random tail, as the tool makes them)."""
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def write_points(
    folder: Path, count: int, *, start: datetime = START, step: timedelta = timedelta(seconds=1)
) -> list[str]:
    """``count`` restore points one ``step`` apart from ``start`` (oldest first), each a
    manifest and an empty data file, written without fsync; returns their ids."""
    folder.mkdir(parents=True, exist_ok=True)
    template = sample_meta("20261201T000000Z-000000", start).to_json()
    ids = []
    for n in range(count):
        moment = start + step * n
        backup_id = f"{moment:%Y%m%dT%H%M%SZ}-{n % 0xFFFFFF:06x}"
        stamp = utc_iso(moment)
        text = template.replace("20261201T000000Z-000000", backup_id).replace(
            utc_iso(start), stamp, 1
        )
        (folder / f"{backup_id}.db.zst").write_bytes(b"")
        (folder / f"{backup_id}.json").write_text(text)
        ids.append(backup_id)
    return ids


def write_manifest(folder: Path, meta: BackupMetadata, *, data: bool = True) -> None:
    """One backup's manifest (and empty data file), by rename as every writer does."""
    if data:
        (folder / meta.data_file).write_bytes(b"")
    _replace(folder / f"{meta.id}.json", meta.to_json())


def write_state(folder: Path, state: BackupState) -> None:
    """One backup's state document, by rename."""
    _replace(folder / f"{state.id}.state.json", state.to_json())


def write_raw(path: Path, text: str) -> None:
    """Any text under a backup file's name, by rename."""
    _replace(path, text)


def edit_manifest(folder: Path, backup_id: str, **changes: object) -> None:
    """Rewrite fields of a manifest (datetimes as ISO strings), by rename."""
    path = folder / f"{backup_id}.json"
    document = json.loads(path.read_text())
    for key, value in changes.items():
        document[key] = utc_iso(value) if isinstance(value, datetime) else value
    _replace(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def _replace(path: Path, text: str) -> None:
    partial = path.with_name(f".edit-{secrets.token_hex(3)}-{path.name}")
    partial.write_text(text)
    os.replace(partial, path)

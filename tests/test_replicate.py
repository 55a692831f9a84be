"""The one replicate path: every object checked against its hash, the manifest last, nothing
left behind by a replication that fails (secondary copies, heal and offsite uploads use it)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tablettracker_backups.errors import ObjectCorrupt, ObjectNotFound, PlaintextRefused
from tablettracker_backups.layout import offsite_seal
from tablettracker_backups.replicate import Part, replicate
from tablettracker_backups.storage.base import ByteProgress, ObjectInfo, Source
from tablettracker_backups.storage.local import LocalStore
from tablettracker_backups.storage.rclone import RcloneStore
from tablettracker_backups.storage.sealed import AGE_HEADER, SealedStore

ID = "20261207T120000Z-abcdef"
DATA = f"{ID}.db.zst"
MANIFEST = f"{ID}.json"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Recording(LocalStore):
    """A real local folder that records each put, and can refuse one key."""

    def __init__(self, root: Path, *, fail_on: str | None = None) -> None:
        super().__init__(root, create=True)
        self.puts: list[str] = []
        self.fail_on = fail_on

    def put(
        self,
        key: str,
        source: Source,
        *,
        sha256: str,
        progress: ByteProgress | None = None,
        crash_stage: object = None,
    ) -> ObjectInfo:
        if key == self.fail_on:
            raise OSError(f"planted failure storing {key}")
        self.puts.append(key)
        return super().put(key, source, sha256=sha256, progress=progress)


def _source(tmp_path: Path, data: bytes) -> LocalStore:
    store = LocalStore(tmp_path / "source", create=True)
    store.put(DATA, data, sha256=sha(data))
    return store


def test_parts_then_the_manifest_last(tmp_path: Path) -> None:
    data = b"backup bytes " * 1000
    source = _source(tmp_path, data)
    target = Recording(tmp_path / "target")
    done = replicate(
        source,
        target,
        [Part(DATA, sha(data))],
        (MANIFEST, b"{}"),
        after=[(f"{ID}.state.json", b'{"pinned": true}')],
        scratch=tmp_path,
    )
    assert target.puts == [DATA, MANIFEST, f"{ID}.state.json"]
    assert [(p.key, p.size, p.sha256) for p in done.parts] == [(DATA, len(data), sha(data))]
    assert (target.root / DATA).read_bytes() == data


def test_a_damaged_source_part_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    data = b"backup bytes " * 1000
    source = _source(tmp_path, data)
    damaged = bytearray(data)
    damaged[500] ^= 0xFF
    (source.root / DATA).write_bytes(bytes(damaged))  # same size, one byte changed
    target = Recording(tmp_path / "target")
    with pytest.raises(ObjectCorrupt):
        replicate(source, target, [Part(DATA, sha(data))], (MANIFEST, b"{}"), scratch=tmp_path)
    assert sorted(p.name for p in target.root.iterdir()) == []


def test_a_manifest_that_fails_takes_the_parts_it_followed_away(tmp_path: Path) -> None:
    data = b"x" * 5000
    source = _source(tmp_path, data)
    target = Recording(tmp_path / "target", fail_on=MANIFEST)
    with pytest.raises(OSError, match="planted failure"):
        replicate(source, target, [Part(DATA, sha(data))], (MANIFEST, b"{}"), scratch=tmp_path)
    assert target.puts == [DATA]
    assert sorted(p.name for p in target.root.iterdir()) == []


def test_a_missing_source_part_stores_nothing(tmp_path: Path) -> None:
    source = LocalStore(tmp_path / "source", create=True)
    target = Recording(tmp_path / "target")
    with pytest.raises(ObjectNotFound):
        replicate(source, target, [Part(DATA, sha(b"x"))], (MANIFEST, b"{}"), scratch=tmp_path)
    assert target.puts == []


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed")
def test_a_remote_source_is_downloaded_checked_and_its_scratch_file_removed(
    tmp_path: Path,
) -> None:
    config = tmp_path / "rclone.conf"
    config.write_text("[disk]\ntype = local\n")
    (tmp_path / "remote").mkdir()
    remote = RcloneStore(f"disk:{tmp_path / 'remote'}", config=config)
    data = b"remote bytes " * 4000
    remote.put(DATA, data, sha256=sha(data))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    target = Recording(tmp_path / "target")
    replicate(remote, target, [Part(DATA, sha(data))], (MANIFEST, b"{}"), scratch=scratch)
    assert (target.root / DATA).read_bytes() == data
    assert list(scratch.iterdir()) == []

    # The download is checked before it is stored: a changed byte offsite stores nothing.
    changed = bytearray(data)
    changed[7] ^= 0x01
    (tmp_path / "remote" / DATA).write_bytes(bytes(changed))
    other = Recording(tmp_path / "other")
    with pytest.raises(ObjectCorrupt, match="does not hash to the SHA-256 its backup recorded"):
        replicate(remote, other, [Part(DATA, sha(data))], (MANIFEST, b"{}"), scratch=scratch)
    assert other.puts == [] and list(scratch.iterdir()) == []


def test_a_sealed_target_refuses_before_any_part_is_sent(tmp_path: Path) -> None:
    inner = Recording(tmp_path / "offsite")
    sealed = SealedStore(inner, policy=offsite_seal)
    age = tmp_path / "good.age"
    age.write_bytes(AGE_HEADER + b"ciphertext")
    parts = [Part(f"{DATA}.age", sha(age.read_bytes()), path=age)]
    # The data would pass; the manifest names the schema: nothing at all is sent.
    manifest = b'{"row_counts": {"po_lines": 160}, "encryption": {"sealed": "x"}}'
    with pytest.raises(PlaintextRefused, match="names the schema"):
        replicate(None, sealed, parts, (MANIFEST, manifest), scratch=tmp_path)
    assert inner.puts == []
    # Sealed metadata goes, after the data.
    replicate(None, sealed, parts, (MANIFEST, b'{"encryption": {"sealed": "x"}}'), scratch=tmp_path)
    assert inner.puts == [f"{DATA}.age", MANIFEST]


def test_a_state_document_that_fails_takes_the_copy_away_manifest_first(tmp_path: Path) -> None:
    """A pin or a label lives only in the state document: a copy committed without it would
    list unpinned, and prune could take a backup the owner pinned."""
    data = b"x" * 5000
    source = _source(tmp_path, data)
    state = f"{ID}.state.json"
    target = Recording(tmp_path / "target", fail_on=state)
    with pytest.raises(OSError, match="planted failure"):
        replicate(
            source,
            target,
            [Part(DATA, sha(data))],
            (MANIFEST, b"{}"),
            after=[(state, b'{"pinned": true}')],
            scratch=tmp_path,
        )
    assert target.puts == [DATA, MANIFEST]
    assert sorted(p.name for p in target.root.iterdir()) == []


def test_a_rollback_never_deletes_what_the_target_already_held(tmp_path: Path) -> None:
    """Repairing a copy (or replacing an upload) over objects the target holds: when the
    manifest then fails, the objects that were there before stay."""
    data = b"y" * 5000
    source = _source(tmp_path, data)
    target = Recording(tmp_path / "target", fail_on=MANIFEST)
    target.root.joinpath(DATA).write_bytes(data)  # held before, e.g. marked damaged by mistake
    target.root.joinpath("other.json").write_bytes(b"{}")
    with pytest.raises(OSError, match="planted failure"):
        replicate(source, target, [Part(DATA, sha(data))], (MANIFEST, b"{}"), scratch=tmp_path)
    assert sorted(p.name for p in target.root.iterdir()) == [DATA, "other.json"]
    assert (target.root / DATA).read_bytes() == data

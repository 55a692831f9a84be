"""One conformance suite for every object store, then what each store does on its own.

Every test taking ``case`` runs against each implementation: a local folder, S3 (SeaweedFS on
127.0.0.1), rclone's local backend, rclone over ``rclone serve webdav`` on 127.0.0.1, and the
sealed wrapper over a local folder and over S3. Each gets a fresh, empty store, and looks
behind it with ``case.raw()`` (every file or object it physically holds). Faults are real: a
child process SIGKILLed mid-put, bytes changed in the stored object, debris planted in the
folder or bucket, a FIFO named like an object.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tablettracker_backups.crashpoints import ENV, Stage
from tablettracker_backups.errors import (
    BackupNotFound,
    ConfigError,
    InvalidKey,
    ObjectCorrupt,
    ObjectNotFound,
    OffsiteError,
    PlaintextRefused,
    StorageError,
    VerificationError,
)
from tablettracker_backups.settings import S3Settings
from tablettracker_backups.storage import (
    AGE_HEADER,
    MAX_KEY_LENGTH,
    LocalStore,
    ObjectInfo,
    ObjectStore,
    RcloneStore,
    Seal,
    SealedStore,
    validate_key,
)
from tablettracker_backups.storage.rclone import redact
from tablettracker_backups.storage.s3 import make_client
from tests import netkit
from tests.s3kit import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer, running_seaweed
from tests.storage_conformance import (
    BIG,
    PART,
    ROOT,
    MiB,
    StoreCase,
    WebdavServer,
    build_store,
    folder_contents,
    plant_folder_debris,
    put_in_child,
    rclone_webdav,
    s3_spec,
    sealed_case,
    sha,
    tamper_file,
)
from tests.test_durability import parse_trace

pytest.importorskip("boto3")

IMPLEMENTATIONS = ["local", "s3", "rclone-local", "rclone-webdav", "sealed-local", "sealed-s3"]


# -- servers and cases --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS server for this module; tests keep apart by key prefix."""
    with running_seaweed(tmp_path_factory.mktemp("s3")) as server:
        yield server


@dataclass(frozen=True)
class S3Clients:
    """One boto3 client for the stores under test and one to look behind them."""

    store: Any
    raw: Any


@pytest.fixture(scope="module")
def s3_clients(s3_server: SeaweedServer) -> S3Clients:
    spec = s3_spec(s3_server.endpoint, BUCKET, "", ACCESS_KEY, SECRET_KEY)
    return S3Clients(make_client(S3Settings(**spec["s3"])), s3_server.client())


def need_rclone() -> None:
    if shutil.which("rclone") is None:
        pytest.skip("rclone is not installed (Debian: apt install rclone)")


@pytest.fixture(scope="module")
def webdav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebdavServer]:
    """``rclone serve webdav`` on 127.0.0.1 for this module; tests keep apart by folder."""
    need_rclone()
    with rclone_webdav(tmp_path_factory.mktemp("webdav")) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the machine's own AWS configuration out of the tests."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def folder_case(name: str, store: ObjectStore, spec: dict[str, Any], root: Path) -> StoreCase:
    return StoreCase(
        name=name,
        store=store,
        spec=spec,
        raw=lambda: folder_contents(root),
        tamper=lambda key, data: tamper_file(root, key, data),
        plant_debris=lambda: plant_folder_debris(root),
        notes={"root": root},
    )


def local_case(tmp_path: Path) -> StoreCase:
    root = tmp_path / "store"
    spec = {"kind": "local", "root": str(root)}
    return folder_case("local", build_store(spec), spec, root)


def rclone_local_case(tmp_path: Path) -> StoreCase:
    need_rclone()
    root = tmp_path / "rclone-root"
    root.mkdir()
    config = tmp_path / "rclone.conf"
    config.write_text("[disk]\ntype = local\n")
    spec = {"kind": "rclone", "remote": f"disk:{root}", "config": str(config)}
    return folder_case("rclone-local", build_store(spec), spec, root)


def rclone_webdav_case(server: WebdavServer) -> StoreCase:
    folder = f"t-{uuid.uuid4().hex[:12]}"
    root = server.folder / folder
    spec = {"kind": "rclone", "remote": f"srv:{folder}", "config": str(server.config)}
    case = folder_case("rclone-webdav", build_store(spec), spec, root)
    # The server writes through rclone's VFS, which may drop a PUT cut short.
    case.debris_certain = False
    return case


def s3_case(server: SeaweedServer, clients: S3Clients) -> StoreCase:
    prefix = f"t-{uuid.uuid4().hex[:12]}/"
    spec = s3_spec(server.endpoint, BUCKET, prefix, ACCESS_KEY, SECRET_KEY)
    client = clients.raw

    def raw() -> set[str]:
        found = {
            item["Key"][len(prefix) :]
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=prefix
            )
            for item in page.get("Contents", [])
        }
        uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
        return found | {f"{u['Key'][len(prefix) :]} (unfinished upload)" for u in uploads}

    def tamper(key: str, data: bytes) -> None:
        client.put_object(Bucket=BUCKET, Key=prefix + key, Body=data)

    def plant_debris() -> set[str]:
        key = prefix + "partial"
        upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)
        client.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
        )
        client.put_object(Bucket=BUCKET, Key=prefix + "folder/", Body=b"")
        client.put_object(Bucket=BUCKET, Key=prefix + "bad name", Body=b"not a key")
        client.put_object(Bucket=BUCKET, Key=prefix + ".tmp-0badf00d-obj", Body=b"half")
        return {"partial (unfinished upload)"}

    return StoreCase(
        name="s3",
        store=build_store(spec, s3_client=clients.store),
        spec=spec,
        raw=raw,
        tamper=tamper,
        plant_debris=plant_debris,
        notes={"client": client, "prefix": prefix},
    )


@pytest.fixture(params=IMPLEMENTATIONS)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> StoreCase:
    """A fresh, empty store of each implementation."""
    name = request.param
    if name.endswith("local") and not name.startswith("rclone"):
        built = local_case(tmp_path)
    elif name.endswith("s3"):
        built = s3_case(request.getfixturevalue("s3_server"), request.getfixturevalue("s3_clients"))
    elif name == "rclone-local":
        built = rclone_local_case(tmp_path)
    else:
        built = rclone_webdav_case(request.getfixturevalue("webdav"))
    return sealed_case(built) if name.startswith("sealed") else built


def keys(store: ObjectStore, prefix: str = "") -> list[str]:
    return sorted(info.key for info in store.list(prefix))


# -- the conformance suite ----------------------------------------------------------------------


def test_put_stat_read_list_and_get_file_round_trip(case: StoreCase, tmp_path: Path) -> None:
    data = case.payload(3000)
    sent: list[int] = []
    info = case.store.put("one", data, sha256=sha(data), progress=sent.append)
    assert (info.key, info.size, info.sha256) == ("one", 3000, sha(data))
    assert sum(sent) == 3000
    # A file source too, streamed.
    source = tmp_path / "source"
    other = case.payload(5000, seed=1)
    source.write_bytes(other)
    assert case.store.put("two", source, sha256=sha(other)).size == 5000

    stat_info = case.store.stat("one")
    assert (stat_info.key, stat_info.size) == ("one", 3000)
    assert stat_info.sha256 in (None, sha(data))
    assert stat_info.modified is not None and stat_info.modified.utcoffset() is not None
    assert case.store.read("one") == data
    listed = {i.key: i.size for i in case.store.list()}
    assert listed == {"one": 3000, "two": 5000}

    dest = tmp_path / "out"
    got: list[int] = []
    fetched = case.store.get_file("two", dest, progress=got.append)
    assert dest.read_bytes() == other and sum(got) == 5000
    assert (fetched.key, fetched.size, fetched.sha256) == ("two", 5000, sha(other))
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    # Nothing but the two objects is left behind.
    assert case.raw() == {"one", "two"}


def test_ranged_reads(case: StoreCase) -> None:
    data = case.payload(1000)
    case.store.put("ranged", data, sha256=sha(data))
    read = case.store.read
    assert read("ranged", offset=10, length=20) == data[10:30]
    assert read("ranged", offset=0, length=1000) == data
    assert read("ranged", offset=999) == data[999:]
    assert read("ranged", offset=990, length=50) == data[990:]  # runs past the end
    assert read("ranged", offset=1000) == b""  # starts at the end
    assert read("ranged", offset=5000, length=10) == b""  # starts past it
    assert read("ranged", offset=500, length=0) == b""
    assert read("ranged", length=1) == data[:1]
    with pytest.raises(ValueError):
        read("ranged", offset=-1)
    with pytest.raises(ValueError):
        read("ranged", length=-1)


def test_a_missing_object(case: StoreCase, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(ObjectNotFound, match="no object nothing/here in "):
        case.store.stat("nothing/here")
    with pytest.raises(ObjectNotFound):
        case.store.read("nothing/here")
    with pytest.raises(ObjectNotFound):
        case.store.read("nothing/here", length=0)
    with pytest.raises(ObjectNotFound):
        case.store.get_file("nothing/here", dest)
    assert not dest.exists()
    case.store.delete("nothing/here")
    assert keys(case.store) == [] and case.store.cleanup() == []
    # Old except clauses keep catching it.
    assert issubclass(ObjectNotFound, BackupNotFound)


def test_a_key_that_names_a_folder_is_no_object(case: StoreCase, tmp_path: Path) -> None:
    # rclone's cat of a folder prints every file in it: the store must never read one.
    data = case.payload(100)
    case.store.put("folder/inside", data, sha256=sha(data))
    with pytest.raises(ObjectNotFound):
        case.store.stat("folder")
    with pytest.raises(ObjectNotFound):
        case.store.read("folder")
    with pytest.raises(ObjectNotFound):
        case.store.get_file("folder", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    case.store.delete("folder")
    assert keys(case.store) == ["folder/inside"]


def test_a_put_whose_hash_does_not_match_stores_nothing(case: StoreCase, tmp_path: Path) -> None:
    data = case.payload(2000)
    wrong = sha(data + b"!")
    with pytest.raises(ObjectCorrupt, match="not storing new"):
        case.store.put("new", data, sha256=wrong)
    source = tmp_path / "source"
    source.write_bytes(data)
    with pytest.raises(ObjectCorrupt):
        case.store.put("new", source, sha256=wrong)
    with pytest.raises(ObjectNotFound):
        case.store.stat("new")
    assert case.raw() == set()  # no temporary name either
    # Over an existing object: the old one stays, whole.
    old = case.payload(1500, seed=2)
    case.store.put("kept", old, sha256=sha(old))
    with pytest.raises(ObjectCorrupt):
        case.store.put("kept", data, sha256=wrong)
    assert case.store.read("kept") == old
    assert case.raw() == {"kept"}
    with pytest.raises(ValueError):
        case.store.put("kept", data, sha256=sha(data).upper())


def test_a_put_replaces_an_object_whole(case: StoreCase) -> None:
    first, second = case.payload(4000), case.payload(1000, seed=3)
    case.store.put("same", first, sha256=sha(first))
    case.store.put("same", second, sha256=sha(second))
    assert case.store.read("same") == second
    assert [(i.key, i.size) for i in case.store.list()] == [("same", 1000)]


def test_an_interrupted_put_is_never_listed_and_cleanup_removes_its_debris(
    case: StoreCase, tmp_path: Path
) -> None:
    data = case.payload(BIG)
    source = tmp_path / "big"
    source.write_bytes(data)
    done = put_in_child(case.spec, source, "deep/big", kill_after=6 * MiB)
    assert done.returncode == -9, done.stdout + done.stderr
    assert keys(case.store) == []
    with pytest.raises(ObjectNotFound):
        case.store.stat("deep/big")
    debris = settled(case)
    if case.debris_certain:
        assert debris, "the killed put left nothing to clean up"
    removed = case.store.cleanup()
    assert len(removed) == len(debris)
    assert case.raw() == set()
    assert case.store.cleanup() == []


def settled(case: StoreCase) -> set[str]:
    """What the store holds once it stops changing (a server may still be finishing a
    request that was cut short)."""
    last = case.raw()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = case.raw()
        if now == last:
            return now
        last = now
    return last


def test_a_listing_shows_no_debris(case: StoreCase) -> None:
    data = case.payload(100)
    case.store.put("real", data, sha256=sha(data))
    temps = case.plant_debris()
    before = case.raw()
    listed: list[str] = []
    # A FIFO named like an object must not hang the listing.
    lister = threading.Thread(target=lambda: listed.extend(keys(case.store)), daemon=True)
    lister.start()
    lister.join(30)
    assert not lister.is_alive(), "the listing hung"
    assert listed == ["real"]
    removed = case.store.cleanup()
    assert len(removed) == len(temps)
    # Only the debris of interrupted puts goes; what strangers put there is not ours.
    assert case.raw() == before - temps
    assert keys(case.store) == ["real"]


def test_a_changed_byte_is_read_as_changed(case: StoreCase, tmp_path: Path) -> None:
    data = case.payload(4096)
    stored = case.store.put("flip", data, sha256=sha(data))
    changed = bytearray(data)
    changed[2000] ^= 0x01
    case.tamper("flip", bytes(changed))
    assert case.store.read("flip", offset=1990, length=20) == bytes(changed[1990:2010])
    fetched = case.store.get_file("flip", tmp_path / "out")
    assert fetched.sha256 == sha(bytes(changed)) != stored.sha256


def test_a_listing_during_a_put_sees_it_absent_or_whole(case: StoreCase) -> None:
    data = case.payload(BIG)
    seen: list[int | None] = []
    other_keys: set[str] = set()
    putting = threading.Event()
    finished = threading.Event()
    during = 0

    def lister() -> None:
        nonlocal during
        while not finished.is_set():
            was_putting = putting.is_set()
            listing = {info.key: info.size for info in case.store.list()}
            seen.append(listing.get("growing"))
            other_keys.update(set(listing) - {"growing"})
            during += was_putting and not finished.is_set()

    sent = 0

    def slowly(size: int) -> None:
        # Slow the put down (about 20 ms per MiB) so listings land in the middle of it.
        nonlocal sent
        before, sent = sent, sent + size
        for _ in range(sent // MiB - before // MiB):
            time.sleep(0.02)

    thread = threading.Thread(target=lister, daemon=True)
    thread.start()
    putting.set()
    try:
        case.store.put("growing", data, sha256=sha(data), progress=slowly)
    finally:
        finished.set()
        thread.join(60)
    assert during >= 2, f"only {during} listings ran during the put"
    assert set(seen) <= {None, BIG}, sorted({s for s in seen if s is not None})
    assert other_keys == set()
    assert {i.key: i.size for i in case.store.list()} == {"growing": BIG}


def test_keys_with_subfolders(case: StoreCase) -> None:
    names = ["packs/ab/abcdef", "packs/cd/cdef01", "packs-old/x", "top"]
    for number, name in enumerate(names):
        data = case.payload(100 + number)
        case.store.put(name, data, sha256=sha(data))
    assert keys(case.store) == sorted(names)
    assert keys(case.store, "packs/") == ["packs/ab/abcdef", "packs/cd/cdef01"]
    assert keys(case.store, "packs/a") == ["packs/ab/abcdef"]
    assert keys(case.store, "packs") == ["packs-old/x", "packs/ab/abcdef", "packs/cd/cdef01"]
    assert keys(case.store, "nothing/") == []
    assert case.store.stat("packs/cd/cdef01").size == 101
    case.store.delete("packs/ab/abcdef")
    assert keys(case.store, "packs/") == ["packs/cd/cdef01"]


BAD_KEYS = [
    "",
    "/abs",
    "a/../b",
    "..",
    "a/./b",
    "a//b",
    "trailing/",
    "sp ace",
    "caf\u00e9",
    "new\nline",
    "back\\slash",
    ".tmp-0badf00d-x",
    "a/.tmp-x",
    "x" * (MAX_KEY_LENGTH + 1),
]


def test_invalid_keys_are_refused_by_every_method(case: StoreCase, tmp_path: Path) -> None:
    data = case.payload(100)
    for key in BAD_KEYS:
        with pytest.raises(InvalidKey):
            case.store.put(key, data, sha256=sha(data))
        with pytest.raises(InvalidKey):
            case.store.stat(key)
        with pytest.raises(InvalidKey):
            case.store.read(key)
        with pytest.raises(InvalidKey):
            case.store.get_file(key, tmp_path / "dest")
        with pytest.raises(InvalidKey):
            case.store.delete(key)
    with pytest.raises(InvalidKey):
        list(case.store.list("../"))
    assert case.raw() == set() and not (tmp_path / "dest").exists()


def test_delete_is_idempotent(case: StoreCase) -> None:
    data = case.payload(100)
    case.store.put("gone", data, sha256=sha(data))
    case.store.delete("gone")
    case.store.delete("gone")
    with pytest.raises(ObjectNotFound):
        case.store.stat("gone")
    assert keys(case.store) == []


def test_get_file_never_overwrites_a_file(case: StoreCase, tmp_path: Path) -> None:
    data = case.payload(100)
    case.store.put("obj", data, sha256=sha(data))
    dest = tmp_path / "taken"
    dest.write_bytes(b"mine")
    with pytest.raises(StorageError):
        case.store.get_file("obj", dest)
    assert dest.read_bytes() == b"mine"


# -- keys ---------------------------------------------------------------------------------------


def test_key_rules_at_their_edges() -> None:
    longest = "/".join(["a" * 200] * 5) + "/" + "b" * 19
    assert len(longest) == MAX_KEY_LENGTH
    assert validate_key(longest) == longest
    with pytest.raises(InvalidKey, match="1025 characters long"):
        validate_key(longest + "b")
    for good in ("a", "A-z_0.9", "a/b/c", "...", "a..b", ".hidden", "x.tmp-y", "tmp-x"):
        assert validate_key(good) == good
    for bad in BAD_KEYS:
        with pytest.raises(InvalidKey) as caught:
            validate_key(bad)
        assert "\n" not in str(caught.value)
    with pytest.raises(InvalidKey):
        validate_key(None)


# -- the local folder ---------------------------------------------------------------------------


def test_local_folders_are_owner_only_and_files_0600(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = LocalStore(tmp_path / "root", create=True)
        store.put("a/b/c", b"data", sha256=sha(b"data"))
    finally:
        os.umask(old)
    for folder in ("root", "root/a", "root/a/b"):
        assert stat.S_IMODE((tmp_path / folder).stat().st_mode) == 0o700, folder
    assert stat.S_IMODE((tmp_path / "root/a/b/c").stat().st_mode) == 0o600


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_local_put_and_delete_are_durable_in_order(tmp_path: Path) -> None:
    # New folders are made durable in their parent before anything goes in them; the object
    # is fsynced before its rename and the folder after it; a delete is fsynced too.
    root = tmp_path / "root"
    code = (
        "import sys, hashlib; from pathlib import Path\n"
        "from tablettracker_backups.storage import LocalStore\n"
        "store = LocalStore(Path(sys.argv[1]), create=True)\n"
        "store.put('a/b/c', b'x', sha256=hashlib.sha256(b'x').hexdigest())\n"
        "store.delete('a/b/c')\n"
    )
    log = tmp_path / "trace"
    traced = "fsync,fdatasync,rename,renameat,renameat2,mkdir,mkdirat,unlink,unlinkat"
    done = subprocess.run(
        [
            *("strace", "-f", "-y", "-qq", "-e", f"trace={traced}", "-o", str(log)),
            *(sys.executable, "-c", code, str(root)),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    plain = {"fdatasync": "fsync", "renameat": "rename", "renameat2": "rename"}
    plain |= {"mkdirat": "mkdir", "unlinkat": "unlink"}
    steps = []
    for call in parse_trace(log.read_text()):
        shown = [
            re.sub(r"\.tmp-[0-9a-f]{8}-", ".tmp-*-", p[len(str(root)) :] or "/")
            for p in call.paths
            if p == str(root) or p.startswith(f"{root}/")
        ]
        if shown:
            steps.append(f"{plain.get(call.name, call.name)} {' '.join(shown)}")
    assert steps == [
        "mkdir /",
        "mkdir /a",
        "fsync /",
        "mkdir /a/b",
        "fsync /a",
        "fsync /a/b/.tmp-*-c",
        "rename /a/b/.tmp-*-c /a/b/c",
        "fsync /a/b",
        "unlink /a/b/c",
        "fsync /a/b",
    ]


def test_a_local_store_not_created_lists_nothing_and_refuses_puts(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "absent", create=False)
    assert list(store.list()) == [] and store.cleanup() == []
    with pytest.raises(StorageError, match="does not exist"):
        store.put("a", b"x", sha256=sha(b"x"))
    assert not (tmp_path / "absent").exists()


def test_a_fifo_or_link_named_like_an_object_is_none(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root", create=True)
    os.mkfifo(tmp_path / "root" / "fifo")
    (tmp_path / "secret").write_bytes(b"outside")
    (tmp_path / "root" / "link").symlink_to(tmp_path / "secret")
    outcome: list[str] = []

    def attempt() -> None:
        for key in ("fifo", "link"):
            for call in (store.stat, store.read, lambda k: store.get_file(k, tmp_path / k)):
                try:
                    call(key)
                except ObjectNotFound as exc:
                    outcome.append(str(exc))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "a FIFO hung a read"
    assert len(outcome) == 6 and all("not a regular file" in o for o in outcome)
    assert not (tmp_path / "fifo").exists() and not (tmp_path / "link").exists()


def test_the_local_crash_point_between_fsync_and_rename(tmp_path: Path) -> None:
    # A caller's crash stage is reached with the temporary file complete and not renamed.
    root = tmp_path / "root"
    code = (
        "import sys; from pathlib import Path; import hashlib\n"
        "from tablettracker_backups.crashpoints import Stage\n"
        "from tablettracker_backups.storage import LocalStore\n"
        "store = LocalStore(Path(sys.argv[1]), create=True)\n"
        "store.put('obj', b'x' * 5000, sha256=hashlib.sha256(b'x' * 5000).hexdigest(),"
        " crash_stage=Stage.DATA_RENAME)\n"
    )
    env = {**os.environ, ENV: Stage.DATA_RENAME.value, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(root)], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == -9, done.stderr
    (temp,) = folder_contents(root)
    assert temp.startswith(".tmp-") and (root / temp).read_bytes() == b"x" * 5000
    store = LocalStore(root)
    assert list(store.list()) == []
    assert store.cleanup() == [temp] and folder_contents(root) == set()


# -- S3 -----------------------------------------------------------------------------------------


def test_s3_puts_are_checked_by_the_provider_checksum_or_by_reading_back(
    s3_server: SeaweedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tablettracker_backups.storage.s3")
    spec = s3_spec(s3_server.endpoint, BUCKET, f"t-{uuid.uuid4().hex[:8]}/", ACCESS_KEY, SECRET_KEY)
    data = os.urandom(BIG)
    store = build_store(spec)
    store.put("multi", data, sha256=sha(data))
    assert "checked by provider SHA-256 checksum" in caplog.text
    caplog.clear()
    spec["s3"]["checksum"] = "off"
    build_store(spec).put("plain", data[:1000], sha256=sha(data[:1000]))
    assert "checked by read-back SHA-256" in caplog.text
    assert store.read("multi", offset=PART - 3, length=6) == data[PART - 3 : PART + 3]


def test_s3_file_puts_go_up_in_parts_and_their_composite_checksum_is_checked(
    s3_server: SeaweedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tablettracker_backups.storage.s3")
    spec = s3_spec(s3_server.endpoint, BUCKET, f"t-{uuid.uuid4().hex[:8]}/", ACCESS_KEY, SECRET_KEY)
    source = tmp_path / "big"
    data = os.urandom(BIG)
    source.write_bytes(data)
    build_store(spec).put("big", source, sha256=sha(data))
    assert "(12582912 bytes, 3 parts, checked by provider SHA-256 checksum)" in caplog.text


def test_s3_failures_are_one_line_with_their_cause_kept(s3_server: SeaweedServer) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}/"
    wrong = build_store(s3_spec(s3_server.endpoint, BUCKET, prefix, ACCESS_KEY, "wrong"))
    with pytest.raises(OffsiteError, match="rejected the credentials") as caught:
        wrong.put("x", b"x", sha256=sha(b"x"))
    assert "\n" not in str(caught.value) and "wrong" not in str(caught.value)
    assert caught.value.__cause__ is not None  # the botocore error, for the logs
    missing = build_store(s3_spec(s3_server.endpoint, "no-such-bucket", "", ACCESS_KEY, SECRET_KEY))
    with pytest.raises(OffsiteError, match="bucket 'no-such-bucket' does not exist"):
        list(missing.list())
    closed = netkit.refused_port()
    away = build_store(s3_spec(f"http://127.0.0.1:{closed}", BUCKET, "", ACCESS_KEY, SECRET_KEY))
    with pytest.raises(OffsiteError, match="cannot reach the offsite store"):
        away.stat("x")


def test_s3_puts_reach_the_part_upload_crash_point(
    s3_server: SeaweedServer, s3_clients: S3Clients, tmp_path: Path
) -> None:
    case = s3_case(s3_server, s3_clients)
    source = tmp_path / "big"
    data = os.urandom(BIG)
    source.write_bytes(data)
    crash = {ENV: f"{Stage.OFFSITE_PART_UPLOAD.value}:2"}
    done = put_in_child(case.spec, source, "big", kill_after=2 * BIG, env=crash)
    assert done.returncode == -9, done.stdout + done.stderr
    client, prefix = case.notes["client"], case.notes["prefix"]
    (upload,) = client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)["Uploads"]
    parts = client.list_parts(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    assert len(parts["Parts"]) >= 2 and keys(case.store) == []
    assert case.store.cleanup() == ["big"] and case.raw() == set()


def test_s3_cleanup_leaves_other_prefixes_alone(s3_server: SeaweedServer) -> None:
    ours, theirs = f"t-{uuid.uuid4().hex[:8]}/", f"t-{uuid.uuid4().hex[:8]}/"
    client = s3_server.client()
    for prefix in (ours, theirs):
        client.create_multipart_upload(Bucket=BUCKET, Key=prefix + "partial")
    store = build_store(s3_spec(s3_server.endpoint, BUCKET, ours, ACCESS_KEY, SECRET_KEY))
    assert store.cleanup() == ["partial"]
    left = client.list_multipart_uploads(Bucket=BUCKET, Prefix=theirs).get("Uploads", [])
    assert [u["Key"] for u in left] == [theirs + "partial"]
    client.abort_multipart_upload(Bucket=BUCKET, Key=left[0]["Key"], UploadId=left[0]["UploadId"])


# -- rclone -------------------------------------------------------------------------------------


def test_rclone_checks_by_its_sha256_or_by_reading_back(
    tmp_path: Path, webdav: WebdavServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tablettracker_backups.storage.rclone")
    rclone_local_case(tmp_path).store.put("a", b"data", sha256=sha(b"data"))
    assert "checked by rclone's SHA-256" in caplog.text
    caplog.clear()
    rclone_webdav_case(webdav).store.put("a", b"data", sha256=sha(b"data"))
    assert "checked by read-back SHA-256" in caplog.text  # WebDAV has no SHA-256


def test_rclone_writes_owner_only_files(tmp_path: Path) -> None:
    case = rclone_local_case(tmp_path)
    case.store.put("a/b", b"data", sha256=sha(b"data"))
    assert stat.S_IMODE((case.notes["root"] / "a" / "b").stat().st_mode) == 0o600


def test_a_missing_rclone_binary_says_how_to_install_it(tmp_path: Path) -> None:
    store = RcloneStore(":local:/tmp", rclone=str(tmp_path / "no-rclone"))
    with pytest.raises(ConfigError, match=r"install rclone \(Debian: apt install rclone\)") as e:
        list(store.list())
    assert "\n" not in str(e.value)


def test_rclone_failures_end_with_rclones_own_last_line(tmp_path: Path) -> None:
    need_rclone()
    config = tmp_path / "rclone.conf"
    config.write_text("")
    store = RcloneStore("nosuchremote:folder", config=config)
    with pytest.raises(OffsiteError) as caught:
        store.put("a", b"x", sha256=sha(b"x"))
    message = str(caught.value)
    assert message.startswith("rclone could not upload a at rclone nosuchremote:folder: ")
    assert "didn't find section in config file" in message and "\n" not in message


def test_rclone_hides_the_parameters_of_a_connection_string(tmp_path: Path) -> None:
    need_rclone()
    secret = "SECRETd4e5f6"
    closed = netkit.refused_port()
    remote = f":webdav,url='http://127.0.0.1:{closed}',bearer_token={secret}:bucket/folder"
    assert redact(remote) == ":webdav,...:bucket/folder"
    assert redact(":s3,secret_access_key='a:b',region=x:bucket") == ":s3,...:bucket"
    assert redact("name,secret=x:folder") == "name,...:folder"
    # A value with a colon left unquoted: hidden up to the last colon, never shown.
    assert redact(":webdav,url=http://h:1/,pass=hunter2:tt") == ":webdav,...:tt"
    assert redact(":webdav,url=http://u:hunter2@h/:dir") == ":webdav,...:dir"
    assert redact(":sftp,host=h,pass=hunter:2:dir") == ":sftp,...:dir"
    assert redact("gdrive:tablettracker") == "gdrive:tablettracker"
    assert redact("/srv/copies") == "/srv/copies"
    config = tmp_path / "rclone.conf"
    config.write_text("")
    store = RcloneStore(remote, config=config, timeout=20)
    assert store.where == "rclone :webdav,...:bucket/folder"
    with pytest.raises(OffsiteError) as caught:
        store.put("a", b"x", sha256=sha(b"x"))
    assert "connection refused" in str(caught.value) and secret not in str(caught.value)
    # rclone quotes the whole connection string in this error; the message does not.
    with pytest.raises(OffsiteError) as caught:
        store.stat("a")
    assert 'Failed to create file system for ":webdav,...:bucket/folder/a"' in str(caught.value)
    assert secret not in str(caught.value)


def test_an_rclone_call_that_hangs_is_stopped_by_its_timeout(tmp_path: Path) -> None:
    need_rclone()
    with netkit.silent_port() as port:
        config = tmp_path / "rclone.conf"
        config.write_text(f"[hung]\ntype = webdav\nurl = http://127.0.0.1:{port}/\n")
        store = RcloneStore("hung:folder", config=config, timeout=1)
        started = time.monotonic()
        with pytest.raises(OffsiteError, match=r"rclone timed out after 1 s trying to look up a"):
            store.stat("a")
        assert time.monotonic() - started < 10


def test_an_empty_rclone_remote_is_a_config_error() -> None:
    for remote in ("", "  ", "gdrive:x\nother", "--config=/tmp/other.conf"):
        with pytest.raises(ConfigError, match="BACKUPS_RCLONE_REMOTE"):
            RcloneStore(remote)


# -- the sealed wrapper -------------------------------------------------------------------------


class Recording(ObjectStore):
    """Passes every call to ``inner`` and records its name and key: what the inner store was
    asked to do."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.where = inner.where
        self.calls: list[tuple[str, str]] = []

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.calls.append(("list", prefix))
        return self.inner.list(prefix)

    def stat(self, key: str) -> ObjectInfo:
        self.calls.append(("stat", key))
        return self.inner.stat(key)

    def read(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        self.calls.append(("read", key))
        return self.inner.read(key, offset=offset, length=length)

    def get_file(self, key: str, dest: Path, *, progress: Any = None) -> ObjectInfo:
        self.calls.append(("get_file", key))
        return self.inner.get_file(key, dest, progress=progress)

    def put(self, key: str, source: Any, *, sha256: str, progress: Any = None) -> ObjectInfo:
        self.calls.append(("put", key))
        return self.inner.put(key, source, sha256=sha256, progress=progress)

    def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        self.inner.delete(key)

    def cleanup(self) -> list[str]:
        self.calls.append(("cleanup", ""))
        return self.inner.cleanup()


class Mangling(Recording):
    """A store that stores what it is given, then changes its first byte: a lying remote."""

    def put(self, key: str, source: Any, *, sha256: str, progress: Any = None) -> ObjectInfo:
        info = super().put(key, source, sha256=sha256, progress=progress)
        tamper_file(self.inner.root, key, b"X" + self.inner.read(key)[1:])  # type: ignore[attr-defined]
        return info


def policy(key: str) -> Seal:
    return {"data": Seal.AGE, "meta": Seal.SEALED_JSON}.get(key.split("/")[0], Seal.PLAIN_OK)


SEALED_DOC: dict[str, Any] = {
    "id": "x",
    "row_counts": {},
    "source": {"path": "", "size": 1},
    "findings": {"foreign_key_samples": [], "foreign_key_tables": {}, "not_counted": {}},
    "extra": {},
    "encryption": {"recipients": ["ab12"], "sealed": "YWdlLWVuY3J5cHRpb24="},
}


def as_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


@pytest.fixture(params=["local", "s3"])
def sealed_parts(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[StoreCase, Recording]:
    """A sealed store over a recording local folder or S3 bucket."""
    if request.param == "local":
        inner = local_case(tmp_path)
    else:
        inner = s3_case(request.getfixturevalue("s3_server"), request.getfixturevalue("s3_clients"))
    recording = Recording(inner.store)
    return inner, recording


def test_plaintext_is_refused_before_a_byte_reaches_the_inner_store(
    sealed_parts: tuple[StoreCase, Recording], tmp_path: Path
) -> None:
    inner, recording = sealed_parts
    store = SealedStore(recording, policy=policy)
    plain = b"SQLite format 3\x00" + b"rows" * 100
    source = tmp_path / "plain"
    source.write_bytes(plain)
    almost = AGE_HEADER[:-1] + b"x" + plain
    for key, content in [
        ("data/a", plain),
        ("data/b", source),
        ("data/c", AGE_HEADER[:-1]),  # the header less its newline
        ("data/d", almost),  # one byte of the header changed
        ("data/e", b""),
        ("meta/a", plain),
        ("meta/b", as_json({**SEALED_DOC, "encryption": None})),
        ("meta/c", as_json({**SEALED_DOC, "encryption": {"sealed": ""}})),
        ("meta/d", as_json({**SEALED_DOC, "row_counts": {"orders": 3}})),
        ("meta/e", as_json({**SEALED_DOC, "source": {"path": "/srv/app.db"}})),
        ("meta/f", as_json({**SEALED_DOC, "findings": {"foreign_key_tables": {"orders": 1}}})),
        ("meta/g", as_json({**SEALED_DOC, "extra": {"anomalies": [{"table": "orders"}]}})),
        ("meta/h", b"[1, 2]"),
        ("meta/i", b"{" * 200_000),
        ("meta/j", b" " * (1024 * 1024 + 1)),
    ]:
        data = content if isinstance(content, bytes) else content.read_bytes()
        with pytest.raises(PlaintextRefused, match=f"refusing to store {key} in sealed") as e:
            store.put(key, content, sha256=sha(data))
        assert "\n" not in str(e.value)
    assert issubclass(PlaintextRefused, VerificationError)
    assert recording.calls == [] and inner.raw() == set()


def test_sealed_objects_and_plain_ones_go_through(
    sealed_parts: tuple[StoreCase, Recording],
) -> None:
    inner, recording = sealed_parts
    store = SealedStore(recording, policy=policy)
    sealed = AGE_HEADER + b"ciphertext"
    document = as_json(SEALED_DOC)
    store.put("data/a", sealed, sha256=sha(sealed))
    store.put("data/header-only", AGE_HEADER, sha256=sha(AGE_HEADER))
    store.put("meta/a", document, sha256=sha(document))
    store.put("notes/a", b"anything", sha256=sha(b"anything"))
    assert inner.raw() == {"data/a", "data/header-only", "meta/a", "notes/a"}
    # Each sealed object was read back after it was stored; the plain one was not.
    assert [c for c in recording.calls if c[0] == "read"] == [
        ("read", "data/a"),
        ("read", "data/header-only"),
        ("read", "meta/a"),
    ]
    assert store.read("meta/a") == document
    assert store.where == f"sealed({inner.store.where})"


def test_a_store_that_mangles_the_header_is_caught_and_the_object_removed(
    tmp_path: Path,
) -> None:
    mangling = Mangling(LocalStore(tmp_path / "root", create=True))
    store = SealedStore(mangling, policy=policy)
    sealed = AGE_HEADER + b"ciphertext"
    with pytest.raises(ObjectCorrupt, match="data/a is no longer sealed in local folder"):
        store.put("data/a", sealed, sha256=sha(sealed))
    assert folder_contents(tmp_path / "root") == set()
    document = as_json(SEALED_DOC)
    with pytest.raises(ObjectCorrupt, match="meta/a is no longer sealed"):
        store.put("meta/a", document, sha256=sha(document))
    assert folder_contents(tmp_path / "root") == set()
    # A plain-ok object is not read back, so the mangled one stays: the rule is per key.
    store.put("notes/a", b"anything", sha256=sha(b"anything"))
    assert (tmp_path / "root" / "notes" / "a").read_bytes() == b"Xnything"


def test_a_file_where_a_folder_must_be_is_a_one_line_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root", create=True)
    store.put("a", b"x", sha256=sha(b"x"))
    with pytest.raises(StorageError, match=r"/root/a exists and is not a folder$"):
        store.put("a/b", b"y", sha256=sha(b"y"))
    assert folder_contents(tmp_path / "root") == {"a"}

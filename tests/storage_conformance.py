"""The object stores under test, each with a look behind it: what it physically holds.

tests/test_storage.py runs one conformance suite against every implementation, as Litestream's
``RunWithReplicaClient`` does. Each implementation comes as a :class:`StoreCase`: a fresh, empty
store, plus what the suite needs to look behind the store's back (every file or object it
holds, temporary names and unfinished uploads included), to change a stored byte, and to plant
debris. A case is described by a JSON ``spec`` too, so a child process can build the same
store and be killed in the middle of a put (``python -m tests.storage_conformance``).

Servers are real: SeaweedFS for S3 (tests/s3kit.py) and ``rclone serve webdav`` on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tablettracker_backups.settings import S3Settings
from tablettracker_backups.storage import (
    AGE_HEADER,
    LocalStore,
    ObjectStore,
    RcloneStore,
    S3Store,
    Seal,
    SealedStore,
)

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
#: Big enough for a three-part multipart upload (5 MiB parts), and to kill a put in the middle.
BIG = 12 * MiB
PART = 5 * MiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def age_everywhere(key: str) -> Seal:
    """The conformance suite's sealing policy: every object must be an age file."""
    return Seal.AGE


def build_store(spec: dict[str, Any], *, s3_client: Any = None) -> ObjectStore:
    """The store a spec describes (the same in the test and in a child process);
    ``s3_client`` shares one boto3 client (making one takes a few hundred ms)."""
    kind = spec["kind"]
    if kind == "local":
        return LocalStore(Path(spec["root"]), create=True)
    if kind == "s3":
        return S3Store(S3Settings(**spec["s3"]), client=s3_client)
    if kind == "rclone":
        return RcloneStore(spec["remote"], config=Path(spec["config"]))
    if kind == "sealed":
        return SealedStore(build_store(spec["inner"], s3_client=s3_client), policy=age_everywhere)
    raise ValueError(kind)


def s3_spec(endpoint: str, bucket: str, prefix: str, access: str, secret: str) -> dict[str, Any]:
    return {
        "kind": "s3",
        "s3": {
            "bucket": bucket,
            "endpoint_url": endpoint,
            "prefix": prefix,
            "region": "us-east-1",
            "access_key_id": access,
            "secret_access_key": secret,
            "addressing_style": "path",
            "multipart_threshold": PART,
            "multipart_chunksize": PART,
        },
    }


# -- what a store physically holds --------------------------------------------------------------


def folder_contents(root: Path) -> set[str]:
    """Every non-folder entry under ``root`` (files, FIFOs, links; temporary ones too)."""
    found: set[str] = set()
    for directory, _, files in os.walk(root):
        for name in files:
            found.add((Path(directory) / name).relative_to(root).as_posix())
    return found


def tamper_file(root: Path, key: str, data: bytes) -> None:
    """Change an object's bytes in place, behind the store's back (same inode, no rename)."""
    with (root / key).open("r+b") as handle:
        handle.write(data)
        handle.truncate()


def plant_folder_debris(root: Path, *, fifo: bool = True, link: bool = True) -> set[str]:
    """What interrupted puts and strangers leave in a folder; returns the temporary names."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    temps = {".tmp-0badf00d-obj", "sub/.tmp-0badf00d-x"}
    for name in temps:
        (root / name).write_bytes(b"half an object")
    (root / "empty-folder").mkdir()
    (root / "bad name").write_bytes(b"not a key")
    if fifo:
        os.mkfifo(root / "fifo")
    if link:
        outside = root.parent / f"{root.name}-outside"
        outside.write_bytes(b"outside the store")
        (root / "link").symlink_to(outside)
    return temps


@dataclass
class StoreCase:
    """One implementation under test, fresh and empty."""

    name: str
    store: ObjectStore
    spec: dict[str, Any]
    #: Everything the store physically holds, temporary names and unfinished uploads included.
    raw: Callable[[], set[str]]
    #: Replace an object's stored bytes behind the store's back.
    tamper: Callable[[str, bytes], None]
    #: Plant debris (temporary names, a folder, a FIFO, a partial upload ...); returns the
    #: names that are debris of interrupted puts, which cleanup must remove.
    plant_debris: Callable[[], set[str]]
    #: Every object must start with the age header (a sealed store).
    sealed: bool = False
    #: A put killed in the middle certainly leaves debris behind (some remotes clean up).
    debris_certain: bool = True
    notes: dict[str, Any] = field(default_factory=dict)

    def payload(self, size: int, seed: int = 0) -> bytes:
        """``size`` random bytes, starting with the age header when the store demands it."""
        data = random.Random(f"{self.name}-{size}-{seed}").randbytes(size)
        if self.sealed:
            assert size >= len(AGE_HEADER)
            data = AGE_HEADER + data[len(AGE_HEADER) :]
        return data


def sealed_case(inner: StoreCase) -> StoreCase:
    """``inner`` behind a sealed store whose policy demands age files everywhere."""
    return StoreCase(
        name=f"sealed-{inner.name}",
        store=SealedStore(inner.store, policy=age_everywhere),
        spec={"kind": "sealed", "inner": inner.spec},
        raw=inner.raw,
        tamper=inner.tamper,
        plant_debris=inner.plant_debris,
        sealed=True,
        debris_certain=inner.debris_certain,
        notes={"inner": inner},
    )


# -- rclone serve webdav ------------------------------------------------------------------------


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WebdavServer:
    """``rclone serve webdav`` of a local folder on 127.0.0.1, and an rclone.conf naming it."""

    folder: Path
    port: int
    config: Path
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def rclone_webdav(workdir: Path) -> Iterator[WebdavServer]:
    """Serve ``workdir/served`` over WebDAV; the remote ``srv:`` in ``workdir/rclone.conf``
    reaches it. Stopped by its pid afterwards."""
    folder = workdir / "served"
    folder.mkdir()
    port = free_port()
    config = workdir / "rclone.conf"
    config.write_text(f"[srv]\ntype = webdav\nurl = http://127.0.0.1:{port}/\nvendor = other\n")
    empty = workdir / "serve.conf"
    empty.write_text("")
    log = (workdir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            "rclone",
            "--config",
            str(empty),
            "serve",
            "webdav",
            str(folder),
            "--addr",
            f"127.0.0.1:{port}",
            # The tests plant debris in the folder behind the server's back: no listing cache.
            "--dir-cache-time",
            "0s",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError((workdir / "serve.log").read_text(errors="replace"))
            with contextlib.closing(socket.socket()) as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("rclone serve webdav did not start")
            time.sleep(0.05)
        yield WebdavServer(folder, port, config, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


# -- a put killed in the middle -----------------------------------------------------------------


def put_in_child(
    spec: dict[str, Any],
    source: Path,
    key: str,
    *,
    kill_after: int,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Put ``source`` under ``key`` in a child process that SIGKILLs itself, and every
    process it started (rclone), once ``kill_after`` bytes have gone out; ``env`` adds to
    its environment (a crash point)."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BACKUPS_"))}
    env = {**child_env, **(env or {}), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.storage_conformance",
            json.dumps(spec),
            str(source),
            key,
            str(kill_after),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        # Its own process group, so the kill takes rclone with it and nothing else.
        start_new_session=True,
    )


def _child(spec_json: str, source: str, key: str, kill_after: str) -> None:
    store = build_store(json.loads(spec_json))
    data = Path(source).read_bytes()
    sent = 0

    def progress(size: int) -> None:
        nonlocal sent
        sent += size
        if sent >= int(kill_after):
            os.killpg(os.getpid(), signal.SIGKILL)

    store.put(key, Path(source), sha256=sha(data), progress=progress)
    print("the put finished before the kill")


if __name__ == "__main__":
    _child(*sys.argv[1:])

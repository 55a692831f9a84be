"""Objects on any rclone remote (Google Drive, Dropbox, OneDrive, SFTP, Backblaze B2, WebDAV
...), through the ``rclone`` binary (Debian: ``apt install rclone``), which the user configures
with ``rclone config``.

Each call runs ``rclone`` as a subprocess (no shell), with a timeout, rclone's own connect and
idle timeouts, one try and its own config file when one is given:

* list: ``lsjson -R --files-only``; stat: ``lsjson --stat``;
* read: ``cat --offset --count`` (after a stat: ``cat`` of a folder would print every file in
  it); download: ``cat`` streamed into the new file;
* put: ``rcat`` to a temporary key (``.tmp-*`` beside the final one, never listed), the stored
  SHA-256 checked (``lsjson --hash`` where the backend knows it, else read back), then
  ``moveto`` onto the key: a rename where the backend has one, else rclone's own copy then
  delete. So the final key holds the old object or the whole checked new one;
* delete: ``deletefile`` (a missing object is fine); cleanup deletes every temporary key.

Failures are one :class:`OffsiteError` line ending with rclone's own last error line; a
remote given as a connection string (``:s3,secret_access_key=...:bucket``) is shown without
its parameters, in messages and in rclone's quoted errors alike.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import re
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from tablettracker_backups.errors import (
    ConfigError,
    ObjectCorrupt,
    ObjectNotFound,
    OffsiteError,
    StorageError,
)
from tablettracker_backups.fsutil import (
    TEMP_PREFIX,
    describe_os_error,
    open_private,
    remove_quietly,
)
from tablettracker_backups.storage.base import (
    ByteProgress,
    Hasher,
    ObjectInfo,
    ObjectStore,
    Source,
    check_range,
    check_sha256,
    is_listable,
    is_temp_name,
    iter_source,
    mismatch,
    open_source,
    validate_key,
    validate_prefix,
)

logger = logging.getLogger(__name__)

INSTALL_HINT = "install rclone (Debian: apt install rclone)"
#: Seconds any one rclone call may take, plus the time to move its bytes at :data:`MIN_RATE`.
TIMEOUT = 120.0
#: The slowest transfer (bytes per second) a call's timeout allows for; rclone's own idle
#: timeout (``--timeout``) stops a transfer that stalls long before.
MIN_RATE = 128 * 1024
#: rclone's exit codes for "directory not found" and "file not found".
NOT_FOUND_CODES = {3, 4}
_LOG_PREFIX = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\s+(?:[A-Z]+\s*:\s*)?")
_MODTIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?\Z")


def redact(remote: str) -> str:
    """``remote`` without the parameters of a connection string (they may hold secrets):
    ``:s3,access_key_id=K,secret_access_key=S:bucket`` is shown as ``:s3,...:bucket``."""
    quote = ""
    start = 1 if remote.startswith(":") else 0
    for index in range(start, len(remote)):
        char = remote[index]
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == ":":
            spec = remote[:index]
            if "," in spec:
                tail = remote[index + 1 :]
                if any(char in tail for char in ",=:@"):
                    # A value with a colon left unquoted (``url=http://h:1/``): hide up to
                    # the last colon rather than show a parameter.
                    tail = remote.rpartition(":")[2]
                return spec[: spec.index(",")] + ",...:" + tail
            return remote
    return remote


def parse_modtime(text: object) -> datetime | None:
    """rclone's ``ModTime`` (RFC 3339, nanoseconds) as tz-aware UTC; None when unreadable."""
    if not isinstance(text, str):
        return None
    match = _MODTIME.match(text)
    if match is None:
        return None
    stamp, fraction, zone = match.groups()
    iso = stamp + (f".{fraction[:6].ljust(6, '0')}" if fraction else "")
    iso += "+00:00" if zone in (None, "Z") else zone
    try:
        return datetime.fromisoformat(iso).astimezone(timezone.utc)
    except ValueError:
        return None


class _Watchdog:
    """Kills a process that runs past its deadline; ``fired`` says whether it did."""

    def __init__(self, proc: subprocess.Popen[bytes], seconds: float) -> None:
        self.fired = threading.Event()
        self._proc = proc
        self._timer = threading.Timer(seconds, self._kill)
        self._timer.daemon = True
        self._timer.start()

    def _kill(self) -> None:
        self.fired.set()
        self._proc.kill()

    def cancel(self) -> None:
        self._timer.cancel()


class RcloneStore(ObjectStore):
    """Objects under ``remote`` (``gdrive:tablettracker``, ``:local:/srv/copies`` ...), with
    rclone's config file ``config`` (default: rclone's own), running the binary ``rclone``.

    Raises :class:`ConfigError` for an empty remote.
    """

    def __init__(
        self,
        remote: str,
        *,
        config: Path | None = None,
        rclone: str = "rclone",
        timeout: float = TIMEOUT,
    ) -> None:
        # A remote starting with "-" would reach rclone as an option.
        if not remote.strip() or remote.startswith("-") or any(c in remote for c in "\0\r\n"):
            raise ConfigError(
                "BACKUPS_RCLONE_REMOTE must name an rclone remote and folder, "
                "for example gdrive:tablettracker"
            )
        self.remote = remote
        self.config = config
        self.rclone = rclone
        self.timeout = timeout
        self.where = f"rclone {redact(remote)}"

    # -- running rclone ------------------------------------------------------------------

    def _path(self, key: str) -> str:
        """The rclone path of ``key`` (validated) or of the temporary key ``key``."""
        if self.remote.endswith((":", "/")):
            return self.remote + key
        return f"{self.remote}/{key}"

    def _folder(self, folder: str) -> str:
        return self._path(folder) if folder else self.remote

    def _argv(self, *args: str) -> list[str]:
        argv = [self.rclone]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        return [
            *argv,
            "--ask-password=false",  # never wait for a config password on stdin
            "--log-level",
            "ERROR",
            "--retries",
            "1",
            "--low-level-retries",
            "3",
            "--contimeout",
            "10s",
            "--timeout",
            "60s",
            *args,
        ]

    def _spawn(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        try:
            # Owner-only: what rclone writes to a local folder is a backup's.
            return subprocess.Popen(self._argv(*args), umask=0o077, **kwargs)
        except OSError as exc:
            raise ConfigError(
                f"cannot run {self.rclone} ({exc.strerror or exc}): {INSTALL_HINT}"
            ) from exc

    def _error(self, action: str, stderr: bytes, returncode: int) -> OffsiteError:
        lines = [
            _LOG_PREFIX.sub("", line).strip()
            for line in stderr.decode("utf-8", "replace").splitlines()
        ]
        last = next((line for line in reversed(lines) if line), f"exit status {returncode}")
        last = last.replace(self.remote, redact(self.remote))
        if len(last) > 300:
            last = last[:297] + "..."
        return OffsiteError(f"rclone could not {action} at {self.where}: {last}")

    def _timed_out(self, action: str, seconds: float) -> OffsiteError:
        return OffsiteError(
            f"rclone timed out after {seconds:g} s trying to {action} at {self.where}"
        )

    @contextlib.contextmanager
    def _process(
        self, action: str, args: list[str], seconds: float, *, missing: str | None, stdin: Any
    ) -> Iterator[subprocess.Popen[bytes]]:
        """rclone running ``args``, its stdout a pipe; the block does its I/O (and closes a
        stdin pipe when done). Afterwards a process still running past ``seconds`` is killed
        and a failure raised: ObjectNotFound (naming ``missing``) for a not-found exit, else
        one OffsiteError line."""
        with tempfile.TemporaryFile() as errors:
            proc = self._spawn(args, stdin=stdin, stdout=subprocess.PIPE, stderr=errors)
            watchdog = _Watchdog(proc, seconds)
            try:
                yield proc
                returncode = proc.wait()
            finally:
                watchdog.cancel()
                for pipe in (proc.stdin, proc.stdout):
                    if pipe is not None:
                        with contextlib.suppress(OSError):
                            pipe.close()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if watchdog.fired.is_set():
                raise self._timed_out(action, seconds)
            if returncode != 0:
                errors.seek(0)
                failure = self._error(action, errors.read(), returncode)
                if missing is not None and returncode in NOT_FOUND_CODES:
                    raise ObjectNotFound(f"no object {missing} in {self.where}") from failure
                raise failure

    def _run(
        self, action: str, *args: str, timeout: float | None = None, missing: str | None = None
    ) -> bytes:
        """rclone's stdout; raises ObjectNotFound (naming ``missing``) for a not-found exit."""
        seconds = self.timeout if timeout is None else timeout
        with self._process(
            action, list(args), seconds, missing=missing, stdin=subprocess.DEVNULL
        ) as proc:
            assert proc.stdout is not None  # a pipe
            out = proc.stdout.read()
        return out

    def _transfer_timeout(self, size: int) -> float:
        return self.timeout + size / MIN_RATE

    # -- reading -------------------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo:
        return self._stat(validate_key(key))

    def _stat(self, key: str, *, with_hash: bool = False) -> ObjectInfo:
        """``key`` (already validated, or a temporary key) as rclone sees it."""
        args = ["lsjson", "--stat", "--no-mimetype", self._path(key)]
        if with_hash:
            args[2:2] = ["--hash", "--hash-type", "sha256"]
        out = self._run(f"look up {key}", *args, missing=key)
        try:
            item = json.loads(out)
            if not isinstance(item, dict):
                raise TypeError
            if item.get("IsDir"):
                raise ObjectNotFound(f"no object {key} in {self.where} (it is a folder)")
            hashes = item.get("Hashes") or {}
            digest = hashes.get("sha256") if isinstance(hashes, dict) else None
            return ObjectInfo(
                key,
                int(item["Size"]),
                parse_modtime(item.get("ModTime")),
                digest.lower() if isinstance(digest, str) and digest else None,
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise OffsiteError(
                f"rclone described {key} at {self.where} in a form this cannot read"
            ) from exc

    def read(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        info = self.stat(key)
        wanted = info.size - offset if length is None else min(length, info.size - offset)
        if wanted <= 0:
            return b""
        args = ["cat", "--offset", str(offset)]
        if length is not None:
            args += ["--count", str(length)]
        return self._run(
            f"read {key}",
            *args,
            self._path(key),
            timeout=self._transfer_timeout(wanted),
            missing=key,
        )

    def get_file(self, key: str, dest: Path, *, progress: ByteProgress | None = None) -> ObjectInfo:
        info = self.stat(key)
        created = open_private(dest)  # never ours to remove if it already exists
        try:
            with created as out:
                hasher = self._stream_out(key, info.size, out, progress)
        except BaseException:
            remove_quietly(dest)
            raise
        return ObjectInfo(key, hasher.size, info.modified, hasher.hexdigest())

    def _stream_out(
        self, key: str, size: int, out: IO[bytes] | None, progress: ByteProgress | None
    ) -> Hasher:
        """``cat`` the object (already validated or temporary) into ``out`` (or only hash it);
        returns what passed."""
        hasher = Hasher(progress)
        with self._process(
            f"download {key}",
            ["cat", self._path(key)],
            self._transfer_timeout(size),
            missing=key,
            stdin=subprocess.DEVNULL,
        ) as proc:
            assert proc.stdout is not None  # a pipe
            for chunk in iter_source(proc.stdout):
                if out is not None:
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise StorageError(describe_os_error(exc, out.name)) from exc
                hasher.update(chunk)
        return hasher

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        folder = prefix.rpartition("/")[0]
        for path, item in self._list(folder):
            if path.startswith(prefix) and is_listable(path):
                yield ObjectInfo(path, int(item["Size"]), parse_modtime(item.get("ModTime")))

    def _list(self, folder: str) -> builtins.list[tuple[str, dict[str, Any]]]:
        """Every file under ``folder`` (temporary ones too) as (key, rclone's description)."""
        try:
            out = self._run(
                "list the objects",
                "lsjson",
                "-R",
                "--files-only",
                "--no-mimetype",
                self._folder(folder),
                missing=folder,
            )
        except ObjectNotFound:
            return []  # no folder yet: nothing stored
        try:
            items = json.loads(out)
            found = []
            for item in items:
                path = item["Path"]
                if not isinstance(path, str) or item.get("IsDir"):
                    continue
                int(item["Size"])
                found.append((f"{folder}/{path}" if folder else path, item))
        except (ValueError, TypeError, KeyError) as exc:
            raise OffsiteError(f"rclone listed {self.where} in a form this cannot read") from exc
        return found

    # -- writing -------------------------------------------------------------------------

    def put(
        self,
        key: str,
        source: Source,
        *,
        sha256: str,
        progress: ByteProgress | None = None,
    ) -> ObjectInfo:
        validate_key(key)
        check_sha256(sha256)
        folder, _, name = key.rpartition("/")
        temp = f"{TEMP_PREFIX}{secrets.token_hex(4)}-{name}"
        temp = f"{folder}/{temp}" if folder else temp
        if isinstance(source, bytes):
            size = len(source)
        else:
            try:
                size = source.stat().st_size
            except OSError as exc:
                raise StorageError(describe_os_error(exc, source)) from exc
        try:
            sent = self._send(key, temp, source, size, progress)
            if sent.hexdigest() != sha256:
                raise mismatch(key, self.where, sent.hexdigest(), sha256)
            check = self._check_stored(key, temp, sent)
            self._run(
                f"store {key}",
                "moveto",
                self._path(temp),
                self._path(key),
                timeout=self._transfer_timeout(size),
            )
        except BaseException:
            self._delete_quietly(temp)
            raise
        logger.info("stored %s in %s (%d bytes, checked by %s)", key, self.where, size, check)
        return ObjectInfo(key, size, None, sha256, checked_by=check)

    def _send(
        self, key: str, temp: str, source: Source, size: int, progress: ByteProgress | None
    ) -> Hasher:
        """``rcat`` ``source`` to the temporary key; returns what was sent."""
        hasher = Hasher(progress)
        with self._process(
            f"upload {key}",
            ["rcat", "--size", str(size), self._path(temp)],
            self._transfer_timeout(size),
            missing=None,
            stdin=subprocess.PIPE,
        ) as proc:
            assert proc.stdin is not None  # a pipe
            try:
                with open_source(source) as handle:
                    for chunk in iter_source(handle):
                        try:
                            proc.stdin.write(chunk)
                        except BrokenPipeError:
                            break  # rclone gave up; its exit status says why
                        hasher.update(chunk)
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            except OSError as exc:
                shown = key if isinstance(source, bytes) else source
                raise StorageError(describe_os_error(exc, shown)) from exc
        return hasher

    def _check_stored(self, key: str, temp: str, sent: Hasher) -> str:
        """Compare the stored temporary object with what was sent; returns how it was checked.

        Raises :class:`ObjectCorrupt` when it differs.
        """
        info = self._stat(temp, with_hash=True)
        if info.size != sent.size:
            raise ObjectCorrupt(
                f"{key} is {info.size} bytes in {self.where} after upload, expected {sent.size}"
            )
        if info.sha256 is not None:
            if info.sha256 != sent.hexdigest():
                raise ObjectCorrupt(f"{key} has a different SHA-256 in {self.where} than was sent")
            return "rclone's SHA-256"
        stored = self._stream_out(temp, info.size, None, None)
        if stored.size != sent.size or stored.hexdigest() != sent.hexdigest():
            raise ObjectCorrupt(f"{key} read back from {self.where} differently than it was sent")
        return "read-back SHA-256"

    def delete(self, key: str) -> None:
        validate_key(key)
        self._delete(key)

    def _delete(self, key: str) -> None:
        try:
            self._run(f"delete {key}", "deletefile", self._path(key))
        except OffsiteError:
            # rclone says "is a directory or doesn't exist" for both: look.
            try:
                self._stat(key)
            except ObjectNotFound:
                return
            raise

    def _delete_quietly(self, temp: str) -> None:
        try:
            self._delete(temp)
        except (OffsiteError, ConfigError) as exc:
            logger.warning("could not remove a failed upload: %s", exc)

    def cleanup(self) -> builtins.list[str]:
        removed: builtins.list[str] = []
        for path, _ in self._list(""):
            if any(is_temp_name(segment) for segment in path.split("/")):
                self._delete(path)
                removed.append(path)
        if removed:
            logger.info("removed %d interrupted uploads from %s", len(removed), self.where)
        return sorted(removed)

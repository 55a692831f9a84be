"""Objects as files in a local folder: ``packs/ab/abcd`` is ``<root>/packs/ab/abcd``.

A put writes a temporary file in the object's own folder (named as :func:`fsutil.temp_path`
names them, so the existing leftovers cleanup recognises it), hashes the bytes as they are
written, fsyncs, renames over the final name and fsyncs the folder: a reader sees the old
object or the whole new one, and a crash leaves at most a ``.tmp-*`` file. Folders are created
owner-only (0700), files 0600.

Only regular files are objects. Everything is opened non-blocking and without following a
final symlink, and checked with ``fstat``, so a FIFO named like an object never hangs a read,
and a listing looks at directory entries only (it opens nothing).
"""

from __future__ import annotations

import builtins
import errno
import logging
import os
import stat
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from tablettracker_backups.crashpoints import Stage
from tablettracker_backups.errors import ObjectNotFound, StorageError
from tablettracker_backups.fsutil import (
    CHUNK,
    Writeback,
    commit,
    describe_os_error,
    ensure_private_dir,
    fsync_path,
    open_private,
    remove_quietly,
    removed_on_error,
    temp_path,
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


def _modified(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, tz=timezone.utc)


class LocalStore(ObjectStore):
    """Objects in the folder ``root``; ``create`` makes it (owner-only) if missing."""

    def __init__(self, root: Path, *, create: bool = False) -> None:
        self.root = root
        self.where = f"local folder {root}"
        if create:
            ensure_private_dir(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def path_of(self, key: str) -> Path:
        """The file that holds (or would hold) ``key``, to read it in place."""
        return self._path(key)

    def _missing(self, key: str, detail: str = "") -> ObjectNotFound:
        return ObjectNotFound(f"no object {key} in {self.where}{detail}")

    # -- reading -------------------------------------------------------------------------

    def _open(self, key: str) -> tuple[BinaryIO, os.stat_result]:
        """The object's file, open for reading, and its stat; only a regular file is one."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise self._missing(key) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._missing(key, f" ({path} is not a regular file)") from exc
            raise StorageError(describe_os_error(exc, path)) from exc
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise StorageError(describe_os_error(exc, path)) from exc
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise self._missing(key, f" ({path} is not a regular file)")
        return os.fdopen(fd, "rb"), st

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.lstat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise self._missing(key) from exc
        except OSError as exc:
            raise StorageError(describe_os_error(exc, path)) from exc
        if not stat.S_ISREG(st.st_mode):
            raise self._missing(key, f" ({path} is not a regular file)")
        return ObjectInfo(key, st.st_size, _modified(st))

    def read(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        handle, _ = self._open(key)
        with handle:
            try:
                handle.seek(offset)
                return handle.read() if length is None else handle.read(length)
            except OSError as exc:
                raise StorageError(describe_os_error(exc, self._path(key))) from exc

    def get_file(self, key: str, dest: Path, *, progress: ByteProgress | None = None) -> ObjectInfo:
        handle, st = self._open(key)
        with handle:
            created = open_private(dest)  # never ours to remove if it already exists
            hasher = Hasher(progress)
            with removed_on_error(dest), created as out:
                for chunk in iter_source(handle):
                    out.write(chunk)
                    hasher.update(chunk)
        return ObjectInfo(key, hasher.size, _modified(st), hasher.hexdigest())

    # -- listing -------------------------------------------------------------------------

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        folder, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        yield from (info for info in self._walk(start, folder) if info.key.startswith(prefix))

    def _walk(self, directory: Path, key_prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise StorageError(describe_os_error(exc, directory)) from exc
        for entry in entries:
            key = f"{key_prefix}/{entry.name}" if key_prefix else entry.name
            try:
                # From the directory entry alone: nothing is opened, symlinks are not followed.
                if entry.is_dir(follow_symlinks=False):
                    if not is_temp_name(entry.name):
                        yield from self._walk(Path(entry.path), key)
                    continue
                if not entry.is_file(follow_symlinks=False) or not is_listable(key):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we looked
            except OSError as exc:
                raise StorageError(describe_os_error(exc, entry.path)) from exc
            yield ObjectInfo(key, st.st_size, _modified(st))

    # -- writing -------------------------------------------------------------------------

    def _make_folders(self, key: str) -> Path:
        """The object's folder, its missing levels created owner-only and made durable."""
        if not self.root.is_dir():
            raise StorageError(f"{self.where} does not exist (is its disk mounted?)")
        folder = self.root
        for segment in key.split("/")[:-1]:
            parent, folder = folder, folder / segment
            try:
                folder.mkdir(mode=0o700)
            except FileExistsError as exc:
                if not folder.is_dir():
                    raise StorageError(f"{folder} exists and is not a folder") from exc
                continue
            except OSError as exc:
                raise StorageError(describe_os_error(exc, folder)) from exc
            try:
                fsync_path(parent)
            except OSError as exc:
                raise StorageError(describe_os_error(exc, parent)) from exc
        return folder

    def put(
        self,
        key: str,
        source: Source,
        *,
        sha256: str,
        progress: ByteProgress | None = None,
        crash_stage: Stage | None = None,
    ) -> ObjectInfo:
        """As :meth:`ObjectStore.put`; ``crash_stage`` names the crash point between the
        temporary file's fsync and its rename (see :mod:`crashpoints`)."""
        final = self._path(key)
        check_sha256(sha256)
        folder = self._make_folders(key)
        temp = temp_path(folder, final.name)
        hasher = Hasher(progress)
        with (
            removed_on_error(temp, shown=final),
            open_private(temp, shown=final) as out,
            open_source(source) as handle,
        ):
            writeback = Writeback(out)
            while chunk := handle.read(CHUNK):
                out.write(chunk)
                writeback.wrote(len(chunk))
                hasher.update(chunk)
        if hasher.hexdigest() != sha256:
            remove_quietly(temp)
            raise mismatch(key, self.where, hasher.hexdigest(), sha256)
        commit(temp, final, crash_stage=crash_stage)
        try:
            modified: datetime | None = _modified(final.stat())
        except OSError:
            modified = None
        return ObjectInfo(key, hasher.size, modified, sha256, checked_by="SHA-256 while writing")

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            raise StorageError(describe_os_error(exc, path)) from exc
        try:
            # Callers delete in an order (a commit marker before its data): keep it on disk.
            fsync_path(path.parent)
        except OSError as exc:
            raise StorageError(describe_os_error(exc, path.parent)) from exc

    def cleanup(self) -> builtins.list[str]:
        removed: builtins.list[str] = []
        for directory, folders, files in os.walk(self.root):
            folders[:] = [name for name in folders if not is_temp_name(name)]
            for name in files:
                if not is_temp_name(name):
                    continue
                path = Path(directory) / name
                try:
                    if not stat.S_ISREG(path.lstat().st_mode):
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise StorageError(describe_os_error(exc, path)) from exc
                removed.append(path.relative_to(self.root).as_posix())
        if removed:
            logger.info("removed %d leftover temporary files from %s", len(removed), self.where)
        return sorted(removed)

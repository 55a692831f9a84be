"""Small file-system helpers: owner-only creation, fsync, atomic replace, error mapping.

A backup is either complete and verified or it does not exist, so every file is written under a
temporary name (``.tmp-*``), fsynced, renamed into place, and the directory fsynced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.errors import StorageError

TEMP_PREFIX = ".tmp-"
#: Scratch folders of operations that take no lock (a restore preview): ``<prefix><pid>-<x>``,
#: so a later clean-up can tell one whose process is gone.
SCRATCH_DIR_PREFIX = ".scratch-"
CHUNK = 1024 * 1024


def describe_os_error(exc: OSError, path: Path | str) -> str:
    """A one-line explanation of an OS error, naming the path."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device holding {path}"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded writing {path}"
    if exc.errno == errno.EFBIG:
        return f"file size limit exceeded writing {path}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied: cannot write to {path}"
    return f"{exc.strerror or exc} ({path})"


def ensure_private_dir(path: Path, *, parents: bool = True) -> None:
    """Create ``path`` (and, with ``parents``, its parents) owner-only if missing.

    Raises :class:`StorageError`.
    """
    try:
        path.mkdir(mode=0o700, parents=parents, exist_ok=True)
        if not path.is_dir():
            raise StorageError(f"{path} is not a folder")
    except FileExistsError as exc:
        raise StorageError(f"{path} exists and is not a folder") from exc
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from exc


def check_writable_dir(path: Path, *, parents: bool = True) -> None:
    """Raise :class:`StorageError` unless ``path`` is a folder this process can write.

    The folder is created if missing (its parents too, with ``parents``).
    """
    if not parents and not path.parent.is_dir():
        if path.parent.exists():
            raise StorageError(f"{path.parent} is not a folder, so {path} cannot be")
        raise StorageError(f"{path.parent} does not exist (is its disk mounted?)")
    ensure_private_dir(path, parents=parents)
    if not os.access(path, os.W_OK | os.X_OK):
        raise StorageError(f"permission denied: cannot write to {path}")


def temp_path(directory: Path, name: str) -> Path:
    """A fresh temporary name in ``directory`` that the cleanup step recognises."""
    return directory / f"{TEMP_PREFIX}{secrets.token_hex(4)}-{name}"


def open_private(path: Path, *, shown: Path | None = None) -> BinaryIO:
    """Create ``path`` exclusively, mode 0600, for binary writing. Errors name ``shown``
    (default ``path``): a temporary file's errors should name the file it becomes."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise StorageError(describe_os_error(exc, shown or path)) from exc
    return os.fdopen(fd, "wb")


#: Bytes written between two nudges to the kernel to start writing a new file out. A live app's
#: fsync can wait for the chunk in flight (ext4 orders data before the journal commit), so keep
#: it small: 4 MiB is ~20 ms of disk time.
WRITEBACK_BYTES = 4 * 1024 * 1024


class Writeback:
    """Start writing a big new file to disk as it grows, instead of all at the final fsync.

    Left alone, the kernel keeps hundreds of MB dirty and the final fsync flushes them in one
    burst; a live app's commits (each an fsync of its own) queue behind that burst for hundreds
    of milliseconds. Nudging the kernel every :data:`WRITEBACK_BYTES` (``posix_fadvise``
    DONTNEED starts asynchronous writeback of the range and never blocks on it) spreads the
    writing out, so the final fsync has little left to do. Where ``posix_fadvise`` is missing
    (macOS) this does nothing.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.done = 0
        self.written = 0

    def wrote(self, size: int) -> None:
        """Count ``size`` more bytes written to the handle; nudge when enough have piled up."""
        self.written += size
        if self.written - self.done >= WRITEBACK_BYTES and hasattr(os, "posix_fadvise"):
            self.handle.flush()
            with contextlib.suppress(OSError):  # only advice: fsync still makes it durable
                os.posix_fadvise(
                    self.handle.fileno(),
                    self.done,
                    self.written - self.done,
                    os.POSIX_FADV_DONTNEED,
                )
            self.done = self.written


def fsync_path(path: Path) -> None:
    """Make a file's data, or the renames in a folder, durable (raises ``OSError``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(temp: Path, final: Path, *, crash_stage: Stage | None = None) -> None:
    """fsync ``temp``, rename it to ``final`` and fsync the folder; raises StorageError.

    ``crash_stage`` names the crash point between the fsync and the rename (see crashpoints).
    """
    try:
        fsync_path(temp)
        if crash_stage is not None:
            crash_point(crash_stage)  # pragma: no mutate
        os.replace(temp, final)
        fsync_path(final.parent)
    except OSError as exc:
        remove_quietly(temp)
        raise StorageError(describe_os_error(exc, final)) from exc


def atomic_write_bytes(final: Path, data: bytes, *, crash_stage: Stage | None = None) -> None:
    """Write ``data`` to ``final`` atomically, owner-only; raises :class:`StorageError`."""
    temp = temp_path(final.parent, final.name)
    try:
        with open_private(temp, shown=final) as handle:
            handle.write(data)
    except OSError as exc:
        remove_quietly(temp)
        raise StorageError(describe_os_error(exc, final)) from exc
    commit(temp, final, crash_stage=crash_stage)


def keep_beside(target: Path, copy: Path, tag: str) -> Path:
    """Rename the file ``copy`` (on the same file system) to ``<target>.<tag>-<UTC time>.db``
    beside ``target``, never over an existing file; returns the new path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    final = target.with_name(f"{target.name}.{tag}-{stamp}.db")
    while final.exists():
        final = target.with_name(f"{target.name}.{tag}-{stamp}-{secrets.token_hex(2)}.db")
    commit(copy, final)
    return final


def write_replace(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` by a rename (readers see the old or the new text, a killed
    process leaves one of them) but without fsync: for notes that need not outlive a power cut
    and must not cost one. Raises :class:`StorageError`."""
    temp = temp_path(final.parent, final.name)
    try:
        with open_private(temp, shown=final) as handle:
            handle.write(data)
        os.replace(temp, final)
    except OSError as exc:
        remove_quietly(temp)
        raise StorageError(describe_os_error(exc, final)) from exc


def remove_quietly(path: Path) -> None:
    """Delete ``path`` if it exists; errors are ignored (used on cleanup paths only)."""
    with contextlib.suppress(OSError):
        path.unlink()


@contextlib.contextmanager
def removed_on_error(path: Path, *, shown: Path | None = None) -> Iterator[None]:
    """Remove ``path`` if the block fails in any way (Ctrl-C included), so no partial output
    outlives it; an ``OSError`` becomes a one-line StorageError naming ``shown`` (default
    ``path``)."""
    try:
        yield
    except OSError as exc:
        remove_quietly(path)
        raise StorageError(describe_os_error(exc, shown or path)) from exc
    except BaseException:
        remove_quietly(path)
        raise


def iter_chunks(handle: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    """Read ``handle`` in fixed-size chunks until the end."""
    while chunk := handle.read(size):
        yield chunk


def cleanup_temp_files(directory: Path) -> list[Path]:
    """Delete leftover ``.tmp-*`` files from an interrupted operation; call under the lock."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if entry.name.startswith(TEMP_PREFIX) and entry.is_file():
            remove_quietly(entry)
            removed.append(entry)
    return removed


def remove_stale_scratch_dirs(directory: Path) -> int:
    """Remove the scratch folders (:data:`SCRATCH_DIR_PREFIX`) whose process is gone; returns
    the bytes freed."""
    freed = 0
    try:
        entries = list(directory.iterdir())
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(SCRATCH_DIR_PREFIX) or not entry.is_dir():
            continue
        pid = entry.name[len(SCRATCH_DIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and _process_exists(int(pid)):
            continue
        for item in entry.iterdir():
            with contextlib.suppress(OSError):
                freed += item.stat().st_size
        shutil.rmtree(entry, ignore_errors=True)
    return freed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


#: Where Linux lists mounted file systems.
PROC_MOUNTS = Path("/proc/mounts")


def _unescape_mount_field(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path: Path, mounts: Path = PROC_MOUNTS) -> str | None:
    """The type (``ext4``, ``nfs4``, ``fuse.sshfs`` ...) of the file system holding ``path``,
    from the longest mount point that contains it; None when ``mounts`` cannot be read."""
    try:
        lines = mounts.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape_mount_field(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        # Later lines win a tie: a file system mounted over another hides it.
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fields[2])
    return None if best is None else best[1]

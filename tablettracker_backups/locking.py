"""The one lock that keeps backup, restore, prune and run from interleaving."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import filelock

from tablettracker_backups.errors import LockedError, StorageError
from tablettracker_backups.fsutil import ensure_private_dir
from tablettracker_backups.settings import Settings

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def acquire_lock(settings: Settings, *, timeout: float | None = None) -> filelock.FileLock:
    """Take the backup folder's lock and return it (the caller releases it).

    Waits up to ``timeout`` seconds (default: the configured lock timeout), then raises
    :class:`LockedError`; raises :class:`StorageError` when the lock file cannot be made.
    """
    wait = settings.lock_timeout if timeout is None else timeout
    busy = (
        f"another backup, restore or prune is in progress (waited {wait:g}s); "
        "try again when it has finished"
    )
    return _acquire(settings, LOCK_NAME, timeout=wait, busy=busy)


def _acquire(settings: Settings, name: str, *, timeout: float, busy: str) -> filelock.FileLock:
    ensure_private_dir(settings.state_dir)
    lock = filelock.FileLock(str(settings.state_dir / name), mode=0o600)
    try:
        lock.acquire(timeout=timeout)
    except filelock.Timeout as exc:
        raise LockedError(busy) from exc
    except OSError as exc:
        raise StorageError(f"cannot take the lock in {settings.state_dir}: {exc}") from exc
    return lock


@contextmanager
def folder_lock(settings: Settings, name: str, *, timeout: float, busy: str) -> Iterator[None]:
    """Hold the OS file lock ``name`` in the state folder for the block; after ``timeout``
    seconds raise :class:`LockedError` with the message ``busy``."""
    lock = _acquire(settings, name, timeout=timeout, busy=busy)
    try:
        yield
    finally:
        lock.release()


@contextmanager
def operation_lock(settings: Settings, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the backup folder's lock for the block (see :func:`acquire_lock`).

    The lock is an OS file lock, so a killed process releases it.
    """
    # The work is in an undecorated function: mutmut 3 does not mutate decorated ones.
    lock = acquire_lock(settings, timeout=timeout)
    try:
        yield
    finally:
        lock.release()


def is_locked(settings: Settings) -> bool:
    """True when another operation holds the lock right now."""
    try:
        with operation_lock(settings, timeout=0):
            return False
    except LockedError:
        return True

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
    ensure_private_dir(settings.state_dir)
    wait = settings.lock_timeout if timeout is None else timeout
    lock = filelock.FileLock(str(settings.state_dir / LOCK_NAME), mode=0o600)
    try:
        lock.acquire(timeout=wait)
    except filelock.Timeout:
        raise LockedError(
            f"another backup, restore or prune is in progress (waited {wait:g}s); "
            "try again when it has finished"
        ) from None
    except OSError as exc:
        raise StorageError(f"cannot take the lock in {settings.state_dir}: {exc}") from None
    return lock


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

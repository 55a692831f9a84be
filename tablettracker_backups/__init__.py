"""tablettracker-backups: verified, rotated, restorable backups of a live SQLite database.

The core (snapshot, store, retention, restore, health) needs no Flask. The Flask extension is
imported lazily, so ``from tablettracker_backups import BackupManager`` works while a scheduled
task that only uses the core never imports Flask.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tablettracker_backups.version import __version__

# A library leaves logging to the application; without a handler of ours, Python's
# last-resort handler would print every warning to stderr, so a CLI error that should be one
# line came out as several (e.g. "restore of X: primary copy is not usable" before "Error:").
logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from tablettracker_backups.web.extension import BackupManager

__all__ = ["BackupManager", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "BackupManager":
        from tablettracker_backups.web.extension import BackupManager

        return BackupManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

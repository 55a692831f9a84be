"""tablettracker-backups: verified, rotated, restorable backups of a live SQLite database.

The core (snapshot, store, retention, restore, health) needs no Flask. The Flask extension is
imported lazily, so ``from tablettracker_backups import BackupManager`` works while a scheduled
task that only uses the core never imports Flask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tablettracker_backups.extension import BackupManager

__all__ = ["BackupManager", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "BackupManager":
        from tablettracker_backups.extension import BackupManager

        return BackupManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

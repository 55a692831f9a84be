"""What ``init_app`` stores in ``app.extensions``, and how the pages and endpoint read it.

Its own module so that the extension, which mounts the pages, and the pages, which read the
state, do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from tablettracker_backups.settings import Settings
from tablettracker_backups.store import ListingCache

EXTENSION_KEY = "tablettracker_backups"


def default_is_admin(user: Any) -> bool:
    """The default admin check: the user's ``is_admin`` attribute (False if absent)."""
    return bool(getattr(user, "is_admin", False))


@dataclass(frozen=True)
class BackupState:
    """What ``init_app`` stores in ``app.extensions``: validated settings and web options."""

    settings: Settings
    #: The validated core values, lower-case and prefix-less (the CLI re-validates overrides).
    values: dict[str, Any]
    is_admin: Callable[[Any], bool]
    task_token: str | None
    base_template: str
    task_url: str
    #: Largest request body (bytes) a POST to the pages or the task URL may carry.
    max_post_bytes: int = 128_000
    #: The folders' listing, reused by page loads while the folders are unchanged.
    listing: ListingCache = field(default_factory=ListingCache, compare=False, repr=False)


def get_state() -> BackupState:
    """The current app's :class:`BackupState` (inside an app context)."""
    state: BackupState = current_app.extensions[EXTENSION_KEY]
    return state

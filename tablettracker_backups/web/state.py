"""What ``init_app`` stores in ``app.extensions``, and how the pages and endpoint read it.

Its own module so that the extension, which mounts the pages, and the pages, which read the
state, do not import each other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from tablettracker_backups.settings import Settings
from tablettracker_backups.site import Site
from tablettracker_backups.sources import Layer
from tablettracker_backups.store import ListingCache

logger = logging.getLogger(__name__)

EXTENSION_KEY = "tablettracker_backups"


def default_is_admin(user: Any) -> bool:
    """The default admin check: the user's ``is_admin`` attribute (False if absent)."""
    return bool(getattr(user, "is_admin", False))


@dataclass(frozen=True)
class Member:
    """One database of the site as the pages use it: its settings, the values a web job's
    worker rebuilds them from, and its own listing cache."""

    settings: Settings
    values: dict[str, Any]
    listing: ListingCache = field(default_factory=ListingCache, compare=False, repr=False)

    @property
    def name(self) -> str:
        """The database's name (``BACKUPS_DATABASES`` key, else its file's stem)."""
        return self.settings.database_name


@dataclass(frozen=True)
class BackupState:
    """What ``init_app`` stores in ``app.extensions``: validated settings and web options."""

    settings: Settings
    #: The effective core values, lower-case and prefix-less, folders resolved (a web job's
    #: worker rebuilds the same settings from them).
    values: dict[str, Any]
    #: Every value with its origin (app config, environment): ``flask backups`` puts its
    #: command-line options over them.
    layers: Layer
    is_admin: Callable[[Any], bool]
    task_token: str | None
    base_template: str
    task_url: str
    #: Answer the host's write requests with 503 while a restore runs (BACKUPS_RESTORE_GATE).
    restore_gate: bool = True
    #: Largest request body (bytes) a POST to the pages or the task URL may carry.
    max_post_bytes: int = 128_000
    #: The folders' listing, reused by page loads while the folders are unchanged.
    listing: ListingCache = field(default_factory=ListingCache, compare=False, repr=False)
    #: Every database of the site (``BACKUPS_DATABASES``); ``settings`` is its first (what
    #: the CLI under ``flask backups`` and a site of one use). The task endpoint runs them all.
    site: Site | None = field(default=None, compare=False, repr=False)
    #: Each database by name, in the site's order, for the pages, the write trigger and the
    #: restore gate; the first shares ``values`` and ``listing`` (see :meth:`members_of`).
    members: dict[str, Member] = field(default_factory=dict, compare=False, repr=False)
    #: What has been logged once already (``explain_forbidden``).
    logged: set[str] = field(default_factory=set, compare=False, repr=False)

    @property
    def several(self) -> bool:
        """Whether the site has more than one database (the pages then show a table of them,
        and a database's pages live under its name)."""
        return len(self.members) > 1

    def member(self, name: str) -> Member | None:
        """The database called ``name``, or None."""
        return self.members.get(name)

    def first(self) -> Member:
        """The site's first database (its only one, for a site of one)."""
        if self.members:
            return next(iter(self.members.values()))
        return Member(self.settings, self.values, self.listing)

    def explain_forbidden(self, user: Any) -> None:
        """Log, once per app, why every user gets 403: the default admin check reads
        ``user.is_admin``, and this app's user has none. A real admin turned away with no
        clue would otherwise have nothing to go on."""
        if self.is_admin is not default_is_admin or hasattr(user, "is_admin"):
            return
        if "no-is-admin" in self.logged:
            return
        self.logged.add("no-is-admin")
        logger.warning(
            "403 on the backup pages: %s has no is_admin attribute and BACKUPS_IS_ADMIN is not "
            "set, so no user can see them; set BACKUPS_IS_ADMIN = lambda user: ... in the "
            "app's config, or give the user class an is_admin property (logged once)",
            type(user).__name__,
        )


def get_state() -> BackupState:
    """The current app's :class:`BackupState` (inside an app context)."""
    state: BackupState = current_app.extensions[EXTENSION_KEY]
    return state

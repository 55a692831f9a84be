"""The demo TabletTracker: a small host app that mounts the backup pages.

``create_app(config=None)`` builds it; ``tablettracker-backups demo`` serves it. Flask is
imported only when the app is built, so the schema module stays usable without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["create_app"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The demo app; see :func:`tablettracker_backups.demo.app.create_app`."""
    from tablettracker_backups.demo.app import create_app as build

    return build(config)

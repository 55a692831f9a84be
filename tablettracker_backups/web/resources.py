"""Where the top-level ``templates/`` and ``static/`` folders are, installed or not.

In a wheel they are force-included inside the package; in a source checkout or an editable
install they sit beside the package, at the repository's top level.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def resource_dir(name: str) -> Path:
    """The ``templates`` or ``static`` folder; raises ``FileNotFoundError`` if neither exists."""
    for candidate in (PACKAGE_DIR / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {name}/ folder of tablettracker_backups")

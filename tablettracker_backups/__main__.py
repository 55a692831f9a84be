"""``python -m tablettracker_backups``: the same CLI as the console script."""

from __future__ import annotations

from tablettracker_backups.console import main

if __name__ == "__main__":
    main()

"""How sizes, ages and moments are shown to a person: one home for the CLI and the pages.

A leaf module: it imports nothing else from the package, so every face and the core's messages
can use it without pulling anything in.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


def human_size(size: int | float | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_age(delta: timedelta) -> str:
    """``45 s``, ``12 min``, ``3.2 h``, ``4.5 days``; a negative one ``... in the future``."""
    seconds = delta.total_seconds()
    if seconds < 0:
        return f"{format_age(-delta)} in the future"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def human_age(moment: datetime | None, now: datetime | None = None) -> str:
    """'3.2 h ago', 'never', or '5 min in the future'."""
    if moment is None:
        return "never"
    delta = (now or datetime.now(timezone.utc)) - moment
    text = format_age(delta)
    return text if delta.total_seconds() < 0 else f"{text} ago"


def local_time(moment: datetime | None) -> str:
    """A UTC moment shown in the machine's local time zone, the zone named."""
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")

"""The states things can be in, as ``str`` Enums: one spelling for the code, JSON and CSS.

Each member is its plain value in JSON, in f-strings and when compared with a string, so the
JSON shapes stay what they were. ``css_class`` is the one place a page's class name comes from.
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    """Base: a ``str`` whose text is its value on every Python version we support."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @property
    def css_class(self) -> str:
        """The CSS class the pages use for this state, e.g. ``ttb-copy-missing``."""
        return f"ttb-{self.css_prefix()}{self.value}"

    @classmethod
    def css_prefix(cls) -> str:
        return ""


class Level(State):
    """A health verdict; its exit code is its position."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def exit_code(self) -> int:
        """0 ok, 1 warning, 2 critical."""
        return list(Level).index(self)


class CopyStatus(State):
    """How one folder's copy of a backup stands against its metadata."""

    OK = "ok"
    MISSING = "missing"
    DIFFERS = "differs"
    DAMAGED = "damaged"
    #: Written by a newer version of this tool, in a format this one does not read: not
    #: damaged, and never deleted by this version.
    NEWER = "newer"

    @classmethod
    def css_prefix(cls) -> str:
        return "copy-"


class OffsiteStatus(State):
    """How the offsite copy of a backup stands, from the local record."""

    OK = "ok"
    DAMAGED = "damaged"
    PENDING = "pending"
    NONE = "none"
    DIFFERS = "differs"

    @classmethod
    def css_prefix(cls) -> str:
        return "copy-offsite-"


class EncryptMode(State):
    """What ``BACKUPS_ENCRYPT`` encrypts: the offsite copies only, or the local folders too."""

    OFFSITE = "offsite"
    ALL = "all"


class CheckDepth(State):
    """How far a check of an encrypted copy could go.

    ``full``: decrypted, decompressed, hashed and integrity-checked; ``sealed``: without the
    identity, only the ciphertext's size, SHA-256 and age header.
    """

    FULL = "full"
    SEALED = "sealed"


class JobState(State):
    """Where a job started from the pages is."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class TableChange(State):
    """What a restore would do to one table."""

    ADDED = "added"
    REMOVED = "removed"
    #: Its content differs (whatever the row counts).
    CHANGED = "changed"
    #: Identical content.
    SAME = "same"
    #: Equal row counts; the content was not compared (time budget, or no copy to read).
    UNCHECKED = "unchecked"

    @classmethod
    def css_prefix(cls) -> str:
        return "table-"

"""Exception types raised by the core library.

Every error the library raises on purpose is a :class:`BackupError`, so a face (CLI, web page,
task endpoint) can catch one type and show its message as a single line.
"""

from __future__ import annotations


class BackupError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(BackupError):
    """A setting is missing or has a value that cannot be used."""


class NoDatabaseConfigured(ConfigError):
    """No live database is configured; each face says how to name one."""


class DatabaseError(BackupError):
    """The live database is missing, unreadable, locked, or not a SQLite database."""


class DatabaseBusy(DatabaseError):
    """The database stayed locked by another connection for longer than the busy timeout: a
    reason to try again later, never a sign of damage."""


class InvalidBackupId(BackupError):
    """A backup id is malformed (and so could not name a file inside the backup folder)."""


class BackupNotFound(BackupError):
    """No backup with that id exists in any configured location."""


class ObjectNotFound(BackupNotFound):
    """An object store holds no object under that key."""


class InvalidKey(BackupError):
    """An object key is malformed (and so could not name an object inside a store)."""


class MetadataError(BackupError):
    """A backup's metadata document is unreadable, malformed or inconsistent."""


class NewerFormat(MetadataError):
    """A backup (or its state) written by a newer version of this tool, in a format this one
    does not read: not damaged, only unreadable here."""


class StorageError(BackupError):
    """A backup folder is unwritable, full, or otherwise failed an I/O operation."""


class VerificationError(BackupError):
    """A backup (or a copy of it) failed a checksum, integrity or row-count check."""


class ObjectCorrupt(VerificationError):
    """An object's bytes do not hash to the SHA-256 they must have; nothing was stored."""


class PlaintextRefused(VerificationError):
    """A sealed store was handed something that is not sealed; none of it was sent."""


class RestoreError(BackupError):
    """A restore was refused or failed; the message says what state the database is in."""


class LockedError(BackupError):
    """Another backup, restore, prune or run holds the lock."""


class OffsiteError(BackupError):
    """The offsite object store could not be reached or refused an operation."""


class OffsitePrefixTaken(OffsiteError):
    """The offsite prefix holds the page store of another backup folder (another database or
    another site): nothing is uploaded there or deleted from it."""


class EncryptionUnavailable(ConfigError):
    """Encryption is configured but the age library (pyrage) is not installed."""


class AgeIdentityError(BackupError):
    """An encrypted backup needs an identity that was not given, or the one given cannot open
    it, or the identity file cannot be read."""


class IdentityError(BackupError):
    """A backup folder belongs to another database than the one configured."""


class InvalidLabel(BackupError):
    """A backup's label is too long or holds control characters."""


class InvalidTime(BackupError):
    """A moment to restore to is not an ISO 8601 date and time."""

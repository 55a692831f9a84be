"""Where each part of a backup lives: the one module that turns a backup into names and keys.

As restic's ``layout`` package is for its repository, this is the only code that builds a
backup's file name in a folder or its key in an object store (tests/test_architecture.py
checks that no other module does); everything else asks it. Every name is built from a
validated backup id, so no name can point outside its folder or prefix.

Format version 1 ("files"), in a folder or under an offsite prefix:

* ``<id>.db.zst`` (or ``.db.gz``; ``.age`` appended when encrypted): the data, one compressed
  file of the whole database.
* ``<id>.json``: the **manifest**, what the backup *is* (its source, checks, sizes, hashes). It
  is written last, as the commit marker, and never rewritten.
* ``<id>.state.json``: what changes after the fact (the latest verification, the pin and the
  label), apart from the manifest, so recording a verification or a pin never rewrites what
  the backup is. Older folders have none: their manifests still carry those fields, which are
  read as the state until a state document exists.
* ``database.json`` at the top: which database the folder belongs to.
* ``.catalog/catalog.sqlite``: the folder's catalog (:mod:`tablettracker_backups.catalog`),
  an index of the manifests and state documents rebuilt from them whenever it is lost or
  damaged. Never part of a backup: nothing is copied from or to it.

Format version 2 ("pages") adds, shared by every backup of the folder (see
:mod:`tablettracker_backups.pagestore`):

* ``pages/key``: the folder's page-hash key (32 random bytes).
* ``pages/packs/<ab>/<sha256>``: a pack, zstd-compressed pages, named by the SHA-256 of its
  bytes (``<ab>`` is its first two hex digits, so no folder holds too many files).
* ``pages/nodes/<ab>/<sha256>``: a node pack, the new nodes of one snapshot's page index,
  named the same way.

Offsite, format 2 keeps the same names under the prefix, plus ``pages/owner`` (which backup
folder the prefix's page store belongs to, see :mod:`tablettracker_backups.offsite.pages`).
With offsite encryption every pack, node pack and the key are age files named
``<name>.age`` (:func:`sealed_key`): still named by the SHA-256 of their plaintext, so a
sealed store can tell what it holds from a listing.

A version 2 manifest names its index's root node; it has no data file of its own.
"""

from __future__ import annotations

import re
from enum import Enum

from tablettracker_backups.errors import InvalidBackupId

#: ASCII digits only, anchored at the very end (``$`` would also match before a trailing
#: newline, and ``\d`` matches any Unicode digit): a file name in a backup folder is input.
ID_PATTERN = re.compile(r"\A([0-9]{8}T[0-9]{6}Z)-([0-9a-f]{6})\Z")
#: The data file's extension per compression.
EXTENSIONS = {"zstd": ".db.zst", "gzip": ".db.gz"}
#: Appended to the data file's name when it is an age file (``<id>.db.zst.age``), so a person
#: (or ``age -d``) can tell at a glance what it is.
AGE_SUFFIX = ".age"
#: Every name a data file can end with, encrypted or not.
DATA_SUFFIXES = tuple(ext + tail for ext in EXTENSIONS.values() for tail in ("", AGE_SUFFIX))
MANIFEST_SUFFIX = ".json"
STATE_SUFFIX = ".state.json"
#: The folder's identity document (see :mod:`tablettracker_backups.identity`).
IDENTITY_KEY = "database.json"
#: Everything of format version 2 lives under this prefix.
PAGES_PREFIX = "pages/"
#: The key the page hashes of a folder are computed with.
PAGE_KEY_KEY = "pages/key"
PACKS_PREFIX = "pages/packs/"
NODES_PREFIX = "pages/nodes/"
#: Which backup folder an offsite prefix's page store belongs to (fingerprints only).
OWNER_KEY = "pages/owner"
_CONTENT_KEY = re.compile(r"\Apages/(?:packs|nodes)/([0-9a-f]{2})/([0-9a-f]{64})\Z")
_SHA256_HEX = re.compile(r"\A[0-9a-f]{64}\Z")
#: The catalog's own folder inside a backup folder: hidden (a dot name :func:`parse` never
#: takes for a backup's part), and a folder so that its journal coming and going never changes
#: the backup folder's modification time (what :class:`~.store.ListingCache` watches).
CATALOG_DIR = ".catalog"
#: The catalog file in :data:`CATALOG_DIR`.
CATALOG_FILE = "catalog.sqlite"


class Part(str, Enum):
    """What one object of a backup is."""

    DATA = "data"
    MANIFEST = "manifest"
    STATE = "state"


def _checked(backup_id: str) -> str:
    if not isinstance(backup_id, str) or not ID_PATTERN.match(backup_id):
        raise InvalidBackupId(
            f"invalid backup id {str(backup_id)[:60]!r}: expected the form 20261123T201500Z-3f9a1c"
        )
    return backup_id


def data_key(backup_id: str, compression: str, *, encrypted: bool = False) -> str:
    """The data object's name: ``<id>.db.zst``, ``<id>.db.gz``, with ``.age`` when sealed."""
    return _checked(backup_id) + EXTENSIONS[compression] + (AGE_SUFFIX if encrypted else "")


def manifest_key(backup_id: str) -> str:
    """The manifest's name: ``<id>.json``."""
    return _checked(backup_id) + MANIFEST_SUFFIX


def state_key(backup_id: str) -> str:
    """The name of what changes after the fact: ``<id>.state.json``."""
    return _checked(backup_id) + STATE_SUFFIX


def _content(prefix: str, sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256_HEX.match(sha256):
        raise ValueError(f"not a SHA-256: {str(sha256)[:70]!r}")  # a caller's bug
    return f"{prefix}{sha256[:2]}/{sha256}"


def pack_key(sha256: str) -> str:
    """A pack's name: ``pages/packs/<ab>/<sha256>``."""
    return _content(PACKS_PREFIX, sha256)


def node_key(sha256: str) -> str:
    """A node pack's name: ``pages/nodes/<ab>/<sha256>``."""
    return _content(NODES_PREFIX, sha256)


def content_sha256(key: str) -> str | None:
    """The SHA-256 an object named by its hash (a pack, a node) must have; None for any
    other key. Such an object's name says what it holds: a store that has it has it."""
    found = _CONTENT_KEY.match(key)
    if found is None or found.group(2)[:2] != found.group(1):
        return None
    return found.group(2)


def sealed_key(key: str) -> str:
    """The name of ``key``'s age-sealed form offsite: ``<key>.age``."""
    return key + AGE_SUFFIX


def unsealed_key(key: str) -> str | None:
    """The plaintext name of a sealed object's key (``<key>.age``); None for any other key."""
    return key[: -len(AGE_SUFFIX)] if key.endswith(AGE_SUFFIX) else None


def data_keys(backup_id: str) -> tuple[str, ...]:
    """Every name the data object of ``backup_id`` can have (to delete it whatever it is)."""
    return tuple(_checked(backup_id) + suffix for suffix in DATA_SUFFIXES)


def parse(name: str) -> tuple[Part, str] | None:
    """What the object named ``name`` is and whose, or None for any other name (a stray
    file, a temporary name, another extension)."""
    if name.endswith(STATE_SUFFIX):
        stem, part = name[: -len(STATE_SUFFIX)], Part.STATE
    elif name.endswith(MANIFEST_SUFFIX):
        stem, part = name[: -len(MANIFEST_SUFFIX)], Part.MANIFEST
    else:
        suffix = next((s for s in DATA_SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            return None
        stem, part = name[: -len(suffix)], Part.DATA
    return (part, stem) if ID_PATTERN.match(stem) else None


def data_file_id(name: str) -> str | None:
    """The backup id of a data object named ``name``; None for any other name."""
    found = parse(name)
    return found[1] if found is not None and found[0] is Part.DATA else None


def manifest_id(name: str) -> str | None:
    """The backup id of a manifest named ``name``; None for any other name."""
    found = parse(name)
    return found[1] if found is not None and found[0] is Part.MANIFEST else None


def offsite_seal(key: str) -> str:
    """What an encrypted offsite store demands of the object under ``key`` (the policy of
    :class:`~.storage.sealed.SealedStore`): a manifest is readable JSON with its details
    sealed (``sealed-json``); the page store's owner document holds only fingerprints
    (``plain-ok``); anything else must be an age file (``age``), so no name, however odd,
    lets plaintext through."""
    if key == OWNER_KEY:
        return "plain-ok"
    name = key.rpartition("/")[2]
    return "sealed-json" if manifest_id(name) is not None else "age"

"""The page store: backup format version 2, a database kept as pages, each page stored once.

A SQLite database is an array of fixed-size pages, and a write changes few of them. Here a
snapshot is its pages:

* Each page is hashed with a keyed BLAKE2b (16 bytes; the key is the folder's own,
  ``pages/key``), so a page already stored, by this snapshot or the one before it, is not
  stored again, and a listing of hashes tells nobody without the key what a page holds.
  Keyed BLAKE2b and not HMAC-SHA-256: they ran at the same speed here (440 and 460 MiB/s on
  4 KiB pages, with SHA-NI); without SHA-NI BLAKE2b is two to three times faster.
* New pages go, concatenated, into **packs** of about :data:`PACK_BYTES`, one zstd frame each
  (one frame, not one per page, so a full snapshot compresses as well as version 1 does). A
  pack is immutable and named by the SHA-256 of its bytes, checked on every read.
* The snapshot's **page index** is a tree of small **nodes** (as restic's trees of blobs): a
  leaf lists :data:`PAGES_PER_LEAF` pages (hash, pack, offset), an inner node up to
  :data:`FANOUT` children. A node is known by its SHA-256, so an unchanged subtree is the same
  node and is not written again: a snapshot writes its new pages and the path to them, and its
  own size grows with the change, not with the database. The new nodes of one snapshot go
  into one **node pack** (as restic keeps tree blobs in packs), named by its SHA-256: a node
  names each child by hash, node pack and place, or "this pack" for a child beside it (a
  pack cannot hold its own name). One file per node would cost an fsync each: 8,300 of them
  (5 ms each here) for a 1 GB database's first snapshot.
* The manifest names the root (:class:`PageIndex`, in its ``extra["pages"]``) and is written
  last, after every pack and node pack (each with a temporary name, fsync, rename), so a
  crash leaves objects no manifest names (for garbage collection), never a listed
  half-backup.

Reading pages consistently is the caller's job: :func:`write_pages` reads a file descriptor
on a file that does not change while it reads. Today that is always a scratch copy the
backup API wrote under a read transaction (in every process and journal mode): the checks
read that copy too. Raw reads of the live file under the read transaction's SHARED lock (in
a process of our own, rollback journal only) pay once the checks no longer need a copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import secrets
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from tablettracker_backups.crashpoints import Stage
from tablettracker_backups.errors import (
    MetadataError,
    ObjectCorrupt,
    ObjectNotFound,
    StorageError,
    VerificationError,
)
from tablettracker_backups.fsutil import describe_os_error
from tablettracker_backups.layout import PAGE_KEY_KEY, node_key, pack_key
from tablettracker_backups.storage.base import ObjectStore
from tablettracker_backups.storage.local import LocalStore

logger = logging.getLogger(__name__)

#: Pages listed by one leaf node (a leaf is about 32 * 22 bytes plus its packs' names): small,
#: so a change scattered over the database rewrites little of the index.
PAGES_PER_LEAF = 32
#: Children of one inner node.
FANOUT = 64
#: Uncompressed bytes of pages per pack.
PACK_BYTES = 4 * 1024 * 1024
#: Bytes of a page hash.
HASH_SIZE = 16
#: What the manifest says the page hashes are.
HASH_NAME = "blake2b-128-keyed"
KEY_SIZE = 32
_LEAF = b"TTBL1"
_INNER = b"TTBI1"
_ENTRY = struct.Struct(">16sHI")
_COUNT = struct.Struct(">H")
#: Largest node a reader accepts (a leaf with a pack per page is about 2 KiB, an inner node
#: about 4.6 KiB).
MAX_NODE_BYTES = 64 * 1024
#: Largest node pack a reader accepts (a 1 GiB database's first snapshot writes about 7 MiB).
MAX_NODE_PACK_BYTES = 1024 * 1024 * 1024
#: Largest pack a reader accepts, decompressed (a pack is sealed after the leaf that filled it).
MAX_PACK_BYTES = PACK_BYTES + PAGES_PER_LEAF * 65536

#: Called with the pages done and the pages in all.
PageProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class PageIndex:
    """What a version 2 manifest records of its snapshot's pages (``extra["pages"]``)."""

    #: SHA-256 of the index's root node.
    root: str
    #: Levels of inner nodes above the leaves (0: the root is a leaf).
    depth: int
    page_size: int
    page_count: int
    #: The node pack holding the root, and the root's place in it.
    root_pack: str = ""
    root_offset: int = 0
    root_length: int = 0
    #: Bytes of packs and nodes this snapshot wrote (what it added to the store).
    added: int = 0
    new_packs: int = 0
    new_nodes: int = 0
    hash: str = HASH_NAME

    @property
    def root_ref(self) -> NodeRef:
        """Where the root node is."""
        return NodeRef(self.root, self.root_pack, self.root_offset, self.root_length)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form."""
        return {
            "root": self.root,
            "root_pack": self.root_pack,
            "root_offset": self.root_offset,
            "root_length": self.root_length,
            "depth": self.depth,
            "page_size": self.page_size,
            "page_count": self.page_count,
            "added": self.added,
            "new_packs": self.new_packs,
            "new_nodes": self.new_nodes,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, doc: object) -> PageIndex:
        """Validate a manifest's ``extra["pages"]``; raises :class:`MetadataError`."""
        if not isinstance(doc, dict):
            raise MetadataError("the manifest names no page index")
        root, root_pack = doc.get("root"), doc.get("root_pack")
        for value in (root, root_pack):
            if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
                raise MetadataError("the page index's root is not named by SHA-256s")
        assert isinstance(root, str) and isinstance(root_pack, str)
        if doc.get("hash") != HASH_NAME:
            raise MetadataError(f"the page index uses an unknown page hash {doc.get('hash')!r}")
        numbers = {}
        for name in (
            "depth",
            "page_size",
            "page_count",
            "added",
            "new_packs",
            "new_nodes",
            "root_offset",
            "root_length",
        ):
            value = doc.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise MetadataError(f"the page index's {name} must be a whole number")
            numbers[name] = value
        if numbers["depth"] > 8 or not 512 <= numbers["page_size"] <= 65536:
            raise MetadataError("the page index's shape is impossible")
        if _depth_for(numbers["page_count"]) != numbers["depth"]:
            raise MetadataError("the page index's depth does not fit its page count")
        if not 0 < numbers["root_length"] <= MAX_NODE_BYTES:
            raise MetadataError("the page index's root has an impossible length")
        return cls(
            root=root,
            root_pack=root_pack,
            root_offset=numbers["root_offset"],
            root_length=numbers["root_length"],
            depth=numbers["depth"],
            page_size=numbers["page_size"],
            page_count=numbers["page_count"],
            added=numbers["added"],
            new_packs=numbers["new_packs"],
            new_nodes=numbers["new_nodes"],
        )


def _depth_for(page_count: int) -> int:
    leaves = max(1, -(-page_count // PAGES_PER_LEAF))
    depth = 0
    while leaves > 1:
        leaves = -(-leaves // FANOUT)
        depth += 1
    return depth


@dataclass
class _Entry:
    """Where one page lives."""

    page_hash: bytes
    pack: int  # an index into the writer's pack list
    offset: int


@dataclass(frozen=True)
class Written:
    """What :func:`write_pages` stored: the index for the manifest and the database's facts."""

    index: PageIndex
    raw_size: int
    raw_sha256: str
    seconds: float


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def page_hash(key: bytes, page: bytes | memoryview) -> bytes:
    """The keyed hash of one page."""
    return hashlib.blake2b(page, digest_size=HASH_SIZE, key=key).digest()


def folder_key(store: ObjectStore, *, create: bool = False) -> bytes:
    """The folder's page-hash key; with ``create``, made (random, atomically) when missing.
    Raises :class:`ObjectNotFound` without it, :class:`ObjectCorrupt` when it is damaged."""
    try:
        key = store.read(PAGE_KEY_KEY)
    except ObjectNotFound:
        if not create:
            raise
        key = secrets.token_bytes(KEY_SIZE)
        store.put(PAGE_KEY_KEY, key, sha256=_sha256(key))
        return folder_key(store)
    if len(key) != KEY_SIZE:
        raise ObjectCorrupt(f"{PAGE_KEY_KEY} in {store.where} is not a page-hash key")
    return key


# -- nodes ---------------------------------------------------------------------------------


def _encode_leaf(entries: list[_Entry], packs: list[str]) -> bytes:
    used: dict[int, int] = {}
    for entry in entries:
        used.setdefault(entry.pack, len(used))
    out = [_LEAF, _COUNT.pack(len(used))]
    out += [bytes.fromhex(packs[number]) for number in used]
    out.append(_COUNT.pack(len(entries)))
    out += [_ENTRY.pack(e.page_hash, used[e.pack], e.offset) for e in entries]
    return b"".join(out)


@dataclass(frozen=True)
class NodeRef:
    """Where a node is: its SHA-256, the node pack holding it and its place there."""

    sha: str
    #: The node pack's SHA-256; "" in a node of the same pack ("this pack": a node pack
    #: cannot name itself, its name is the hash of its bytes).
    pack: str
    offset: int
    length: int


_REF = struct.Struct(">32s32sII")
_SAME_PACK = bytes(32)


def _encode_inner(children: list[NodeRef]) -> bytes:
    refs = [
        _REF.pack(
            bytes.fromhex(c.sha),
            bytes.fromhex(c.pack) if c.pack else _SAME_PACK,
            c.offset,
            c.length,
        )
        for c in children
    ]
    return b"".join([_INNER, _COUNT.pack(len(children)), *refs])


def _decode_leaf(data: bytes, shown: str) -> list[tuple[bytes, str, int]]:
    """A leaf's pages: (hash, pack SHA-256, offset) each."""
    try:
        if not data.startswith(_LEAF):
            raise ValueError("not a leaf")
        at = len(_LEAF)
        (n_packs,) = _COUNT.unpack_from(data, at)
        at += _COUNT.size
        packs = [data[at + 32 * i : at + 32 * (i + 1)].hex() for i in range(n_packs)]
        at += 32 * n_packs
        (n_entries,) = _COUNT.unpack_from(data, at)
        at += _COUNT.size
        if len(data) != at + n_entries * _ENTRY.size or n_entries > PAGES_PER_LEAF:
            raise ValueError("wrong length")
        found = []
        for hash_, pack, offset in _ENTRY.iter_unpack(data[at:]):
            found.append((hash_, packs[pack], offset))
        return found
    except (ValueError, IndexError, struct.error) as exc:
        raise VerificationError(f"index node {shown} is malformed ({exc})") from exc


def _decode_inner(data: bytes, shown: str, pack: str) -> list[NodeRef]:
    """An inner node's children; a child in "this pack" is in ``pack``, the node's own."""
    if not data.startswith(_INNER):
        raise VerificationError(f"index node {shown} is malformed (not an inner node)")
    at = len(_INNER)
    try:
        (count,) = _COUNT.unpack_from(data, at)
    except struct.error as exc:
        raise VerificationError(f"index node {shown} is malformed ({exc})") from exc
    at += _COUNT.size
    if len(data) != at + _REF.size * count or not 0 < count <= FANOUT:
        raise VerificationError(f"index node {shown} is malformed (wrong length)")
    return [
        NodeRef(sha.hex(), pack if where == _SAME_PACK else where.hex(), offset, length)
        for sha, where, offset, length in _REF.iter_unpack(data[at:])
    ]


class DamagedObject(ObjectCorrupt):
    """An object named by its hash whose bytes do not hash to its name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        #: The damaged object's key.
        self.key = key


def read_object(store: ObjectStore, key: str, sha256: str, *, limit: int | None = None) -> bytes:
    """The object named by its hash, checked: raises :class:`ObjectCorrupt` (naming it and
    the store) when its bytes do not hash to its name, :class:`ObjectNotFound` when missing."""
    data = store.read(key)
    if limit is not None and len(data) > limit:
        raise ObjectCorrupt(f"{key} in {store.where} is larger than any such object")
    if _sha256(data) != sha256:
        raise DamagedObject(
            key, f"{key} in {store.where} is damaged: its bytes do not hash to its name"
        )
    return data


@dataclass
class Tree:
    """A snapshot's page index as read back: every node and where it is, every page's place."""

    #: Every node reached: its SHA-256 and place (the pack named in full).
    nodes: dict[str, NodeRef] = field(default_factory=dict)
    #: Each inner node by its children's SHA-256s (to reuse it over the same children).
    inner: dict[tuple[str, ...], str] = field(default_factory=dict)
    #: Per page, in order: (hash, pack SHA-256, offset in the pack's pages).
    pages: list[tuple[bytes, str, int]] = field(default_factory=list)

    @property
    def packs(self) -> list[str]:
        """Every page pack the snapshot needs, each once, in order of first use."""
        return list(dict.fromkeys(pack for _, pack, _ in self.pages))

    @property
    def node_packs(self) -> list[str]:
        """Every node pack the snapshot needs, each once."""
        return list(dict.fromkeys(ref.pack for ref in self.nodes.values()))


class _NodeReader:
    """Nodes read out of their packs, each pack read (and checked) once."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.packs: dict[str, bytes] = {}

    def read(self, ref: NodeRef) -> bytes:
        data = self.packs.get(ref.pack)
        if data is None:
            data = self.packs[ref.pack] = read_object(
                self.store, node_key(ref.pack), ref.pack, limit=MAX_NODE_PACK_BYTES
            )
        node = data[ref.offset : ref.offset + ref.length]
        if _sha256(node) != ref.sha:
            key = node_key(ref.pack)
            raise DamagedObject(key, f"{key} in {self.store.where}: node {ref.sha[:12]} is damaged")
        return node


def read_tree(store: ObjectStore, index: PageIndex) -> Tree:
    """Walk the index from its root, checking each node pack's and node's hash and shape.
    Raises :class:`ObjectCorrupt`, :class:`ObjectNotFound` or :class:`VerificationError`."""
    tree = Tree()
    _walk(store, index, tree, lambda hash_, pack, offset: tree.pages.append((hash_, pack, offset)))
    return tree


def walk_index(
    store: ObjectStore,
    index: PageIndex,
    page: Callable[[bytes, str, int], None],
    *,
    seen: set[str] | None = None,
) -> list[str]:
    """Give each page of the index to ``page`` (hash, pack, offset), in order, keeping no
    list of them (garbage collection walks every backup); returns the node packs of the nodes
    it read. With ``seen`` (node SHA-256s, shared over several walks and added to here), a
    node already in it is not read again and its pages are not given again: a backup shares
    most of its index with the one before, so walking a folder costs what its backups
    changed, not what they hold. Raises as :func:`read_tree` does."""
    tree = Tree()
    _walk(store, index, tree, page, seen)
    return tree.node_packs


def _walk(
    store: ObjectStore,
    index: PageIndex,
    tree: Tree,
    page: Callable[[bytes, str, int], None],
    seen: set[str] | None = None,
) -> None:
    """Walk the index into ``tree`` (its nodes), giving each page to ``page`` (hash, pack,
    offset) in order, without keeping a list of them; nodes in ``seen`` are skipped, and
    each node read is added to it. Raises as :func:`read_tree` does."""
    reader = _NodeReader(store)
    skipped = False

    def fresh(refs: list[NodeRef]) -> list[NodeRef]:
        nonlocal skipped
        if seen is None:
            return refs
        new = [ref for ref in refs if ref.sha not in seen]
        skipped = skipped or len(new) < len(refs)
        return new

    level = fresh([index.root_ref])
    for _ in range(index.depth):
        children: list[NodeRef] = []
        for ref in level:
            tree.nodes[ref.sha] = ref
            below = _decode_inner(reader.read(ref), ref.sha[:12], ref.pack)
            tree.inner[tuple(c.sha for c in below)] = ref.sha
            children += below
        if seen is not None:
            seen.update(ref.sha for ref in level)
        level = fresh(children)
    count = 0
    for ref in level:
        tree.nodes[ref.sha] = ref
        for found in _decode_leaf(reader.read(ref), ref.sha[:12]):
            page(*found)
            count += 1
        if seen is not None:
            seen.add(ref.sha)
    if count != index.page_count and not skipped:
        raise VerificationError(
            f"the page index lists {count} pages, its manifest {index.page_count}"
        )


# -- writing -------------------------------------------------------------------------------


class _Writer:
    """Packs pages and writes nodes for one snapshot."""

    def __init__(self, store: LocalStore, key: bytes, level: int) -> None:
        self.store = store
        self.key = key
        self.compressor = zstandard.ZstdCompressor(level=level)
        #: Pack SHA-256 per pack number; None for the pack being filled.
        self.packs: list[str | None] = []
        self.pack_numbers: dict[str, int] = {}
        #: Every page hash known to be stored (the parent's and this snapshot's new ones):
        #: its pack number << 32 | its offset.
        self.known: dict[bytes, int] = {}
        #: Every node known to be stored, and every new one ("" for this snapshot's pack).
        self.nodes: dict[str, NodeRef] = {}
        self.inner: dict[tuple[str, ...], str] = {}
        self.new_node_data: list[bytes] = []
        self.node_size = 0
        self.current: list[bytes] = []
        self.current_size = 0
        self.current_number: int | None = None
        self.waiting: list[list[_Entry]] = []
        self.leaves: list[NodeRef] = []
        self.added = 0
        self.new_packs = 0
        self.new_nodes = 0

    def adopt(self, store: ObjectStore, parent: PageIndex) -> None:
        """Reuse what the parent snapshot stored: its pages and nodes, but never a page in a
        pack that is not there (a damaged one is the drill's and heal's to find). Its pages
        go straight into the map of known pages, never into a list of their own (at 1 GB
        that list alone is some 40 MiB). Raises as :func:`read_tree` does, adopting nothing."""
        tree = Tree()
        try:
            _walk(store, parent, tree, self._remember)
        except BaseException:
            self.known, self.packs, self.pack_numbers = {}, [], {}
            raise
        missing = set()
        for pack, number in self.pack_numbers.items():
            try:
                self.store.stat(pack_key(pack))
            except ObjectNotFound:
                logger.warning("storing again the pages of %s: it is missing", pack_key(pack))
                missing.add(number)
        if missing:
            self.known = {h: p for h, p in self.known.items() if p >> 32 not in missing}
            return
        self.nodes.update(tree.nodes)
        self.inner.update(tree.inner)

    def _remember(self, hash_: bytes, pack: str, offset: int) -> None:
        number = self.pack_numbers.get(pack)
        if number is None:
            number = self.pack_numbers[pack] = len(self.packs)
            self.packs.append(pack)
        self.known.setdefault(hash_, number << 32 | offset)

    def add(self, page: bytes) -> _Entry:
        hash_ = page_hash(self.key, page)
        place = self.known.get(hash_)
        if place is not None:
            return _Entry(hash_, place >> 32, place & 0xFFFFFFFF)
        if self.current_number is None:
            self.current_number = len(self.packs)
            self.packs.append(None)
        offset = self.current_size
        self.current.append(page)
        self.current_size += len(page)
        self.known[hash_] = self.current_number << 32 | offset
        return _Entry(hash_, self.current_number, offset)

    def leaf(self, entries: list[_Entry]) -> None:
        self.waiting.append(entries)
        if self.current_size >= PACK_BYTES:
            self.seal()

    def seal(self) -> None:
        """Write the pack being filled, then add every leaf that waited for its name."""
        if self.current_number is not None:
            data = self.compressor.compress(b"".join(self.current))
            sha = _sha256(data)
            self.store.put(pack_key(sha), data, sha256=sha, crash_stage=Stage.PACK_WRITE)
            self.packs[self.current_number] = sha
            self.pack_numbers.setdefault(sha, self.current_number)
            self.added += len(data)
            self.new_packs += 1
            self.current, self.current_size, self.current_number = [], 0, None
        packs = [sha or "" for sha in self.packs]
        for entries in self.waiting:
            self.leaves.append(self.node(_encode_leaf(entries, packs)))
        self.waiting = []

    def node(self, data: bytes) -> NodeRef:
        """The node ``data``: where it already is, or its place in this snapshot's node pack
        ("" for the pack: written last, when its name is known)."""
        sha = _sha256(data)
        found = self.nodes.get(sha)
        if found is None:
            found = self.nodes[sha] = NodeRef(sha, "", self.node_size, len(data))
            self.new_node_data.append(data)
            self.node_size += len(data)
            self.new_nodes += 1
        return found

    def inner_node(self, children: list[NodeRef]) -> NodeRef:
        # An inner node over the same children is the parent's own node: reused as it is
        # (encoded again here, it would name its children's packs differently).
        same = self.inner.get(tuple(c.sha for c in children))
        if same is not None:
            return self.nodes[same]
        ref = self.node(_encode_inner(children))
        self.inner[tuple(c.sha for c in children)] = ref.sha
        return ref

    def finish(self) -> tuple[NodeRef, int]:
        """Write the inner levels, then this snapshot's node pack; the root and the depth."""
        self.seal()
        level = self.leaves or [self.node(_encode_leaf([], []))]
        depth = 0
        while len(level) > 1:
            level = [
                self.inner_node(level[at : at + FANOUT]) for at in range(0, len(level), FANOUT)
            ]
            depth += 1
        root = level[0]
        if self.new_node_data:
            data = b"".join(self.new_node_data)
            sha = _sha256(data)
            self.store.put(node_key(sha), data, sha256=sha, crash_stage=Stage.NODE_WRITE)
            self.added += len(data)
            if not root.pack:
                root = dataclasses.replace(root, pack=sha)
        return root, depth


def write_pages(
    store: LocalStore,
    fd: int,
    *,
    page_size: int,
    page_count: int,
    parent: PageIndex | None = None,
    level: int = 6,
    progress: PageProgress | None = None,
) -> Written:
    """Store the ``page_count`` pages read from ``fd`` (a file that does not change while
    this reads) into the page store ``store``, reusing what the ``parent`` snapshot stored.

    Returns the new snapshot's :class:`PageIndex` and the database's size and SHA-256. A
    ``parent`` whose index cannot be read is skipped (everything is stored again), with a
    warning. Raises :class:`StorageError` (and what the store raises) when writing fails;
    what was written before then is named by no manifest.
    """
    started = time.monotonic()
    writer = _Writer(store, folder_key(store, create=True), level)
    if parent is not None:
        try:
            writer.adopt(store, parent)
        except (ObjectCorrupt, ObjectNotFound, VerificationError) as exc:
            logger.warning("storing every page again: the previous snapshot's index: %s", exc)
    whole = hashlib.sha256()
    chunk_pages = max(1, PAGES_PER_LEAF)
    for first in range(0, page_count, chunk_pages):
        count = min(chunk_pages, page_count - first)
        try:
            data = os.pread(fd, count * page_size, first * page_size)
        except OSError as exc:
            raise StorageError(f"cannot read page {first + 1} of the snapshot: {exc}") from exc
        if len(data) != count * page_size:
            raise StorageError(
                f"the snapshot ended at page {first + len(data) // page_size} of {page_count}"
            )
        whole.update(data)
        view = memoryview(data)
        writer.leaf(
            [writer.add(bytes(view[at : at + page_size])) for at in range(0, len(data), page_size)]
        )
        if progress is not None:
            progress(first + count, page_count)
    root, depth = writer.finish()
    index = PageIndex(
        root=root.sha,
        root_pack=root.pack,
        root_offset=root.offset,
        root_length=root.length,
        depth=depth,
        page_size=page_size,
        page_count=page_count,
        added=writer.added,
        new_packs=writer.new_packs,
        new_nodes=writer.new_nodes,
    )
    return Written(index, page_size * page_count, whole.hexdigest(), time.monotonic() - started)


def write_file_pages(
    store: LocalStore,
    path: Path,
    *,
    parent: PageIndex | None = None,
    level: int = 6,
    progress: PageProgress | None = None,
) -> Written:
    """:func:`write_pages` of a database file this package owns (a scratch snapshot): its
    page size and count read from it through SQLite."""
    with closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as conn:
        try:
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
        except sqlite3.Error as exc:
            raise VerificationError(f"{path.name} is not a readable database: {exc}") from exc
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from exc
    try:
        return write_pages(
            store,
            fd,
            page_size=page_size,
            page_count=page_count,
            parent=parent,
            level=level,
            progress=progress,
        )
    finally:
        os.close(fd)


# -- reading -------------------------------------------------------------------------------


def _pages_by_pack(tree: Tree) -> dict[str, list[tuple[int, bytes, int]]]:
    wanted: dict[str, list[tuple[int, bytes, int]]] = {}
    for number, (hash_, pack, offset) in enumerate(tree.pages):
        wanted.setdefault(pack, []).append((number, hash_, offset))
    return wanted


def _unpack(store: ObjectStore, sha: str) -> bytes:
    """A pack's pages: its bytes checked against its name, then decompressed."""
    key = pack_key(sha)
    data = read_object(store, key, sha)
    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_PACK_BYTES)
    except zstandard.ZstdError as exc:
        raise ObjectCorrupt(f"{key} in {store.where} does not decompress: {exc}") from exc


def build_database(
    store: ObjectStore,
    index: PageIndex,
    dest: Path,
    *,
    progress: PageProgress | None = None,
) -> None:
    """Write the database ``index`` describes into the new file ``dest`` (owner-only).

    Every node and pack is checked against its name as it is read, and every page against
    its keyed hash. Raises :class:`ObjectCorrupt` (naming the damaged object and the store),
    :class:`ObjectNotFound`, :class:`VerificationError` or :class:`StorageError`; ``dest``
    is removed on failure.
    """
    key = folder_key(store)
    tree = read_tree(store, index)
    size = index.page_size
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise StorageError(describe_os_error(exc, dest)) from exc
    done = 0
    try:
        try:
            os.ftruncate(fd, size * index.page_count)
            for sha, pages in _pages_by_pack(tree).items():
                data = _unpack(store, sha)
                for number, hash_, offset in pages:
                    page = data[offset : offset + size]
                    if len(page) != size or page_hash(key, page) != hash_:
                        raise ObjectCorrupt(
                            f"{pack_key(sha)} in {store.where} is damaged: page {number + 1} "
                            "does not match its hash"
                        )
                    os.pwrite(fd, page, number * size)
                done += len(pages)
                if progress is not None:
                    progress(done, index.page_count)
        except OSError as exc:
            raise StorageError(describe_os_error(exc, dest)) from exc
        finally:
            os.close(fd)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def object_keys(store: ObjectStore, index: PageIndex) -> Iterator[tuple[str, str]]:
    """Every object the snapshot needs, (key, SHA-256) each: the folder key, its nodes, its
    packs. Reads (and checks) its nodes."""
    key = store.read(PAGE_KEY_KEY)
    yield PAGE_KEY_KEY, _sha256(key)
    tree = read_tree(store, index)
    for sha in tree.node_packs:
        yield node_key(sha), sha
    for sha in tree.packs:
        yield pack_key(sha), sha


@dataclass(frozen=True)
class Damage:
    """What re-hashing a snapshot's objects found."""

    #: One line per problem.
    problems: tuple[str, ...] = ()
    #: Objects present whose bytes do not hash to their name (to replace from another copy).
    damaged: tuple[str, ...] = ()


def check_objects(store: ObjectStore, index: PageIndex) -> Damage:
    """Re-hash every object the snapshot needs (what the index reaches while it can be read)."""
    problems: list[str] = []
    damaged: list[str] = []
    walk = object_keys(store, index)
    while True:
        try:
            key, sha = next(walk)
        except StopIteration:
            break
        except DamagedObject as exc:
            # A node: the walk cannot go on below it.
            problems.append(str(exc))
            damaged.append(exc.key)
            break
        except (ObjectCorrupt, ObjectNotFound, VerificationError) as exc:
            problems.append(str(exc))
            break
        if key == PAGE_KEY_KEY:
            continue
        try:
            read_object(store, key, sha)
        except ObjectCorrupt as exc:
            problems.append(str(exc))
            damaged.append(key)
        except ObjectNotFound as exc:
            problems.append(str(exc))
    return Damage(tuple(problems), tuple(damaged))

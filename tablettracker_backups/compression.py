"""Streaming compression (zstd by default, gzip selectable) with SHA-256 on both sides.

Memory stays bounded by the chunk size whatever the database size: data flows through in
1 MiB chunks, and the hashes are computed as it passes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from tablettracker_backups.crashpoints import Stage, crash_point
from tablettracker_backups.errors import StorageError, VerificationError
from tablettracker_backups.fsutil import (
    CHUNK,
    Writeback,
    describe_os_error,
    iter_chunks,
    open_private,
)

Progress = Callable[[int], None]

#: zstd worker threads. Compression is most of a backup's CPU time, and the integrity check runs
#: beside it; with workers zstd uses every core while the main thread reads and hashes. The
#: output is still one ordinary zstd frame.
ZSTD_THREADS = min(os.cpu_count() or 1, 4)
#: Bytes per zstd job. Each worker buffers about two jobs, so the default (4 x window, 8 MiB
#: and up) costs ~50 MB with two workers; 2 MiB keeps that near 15 MB (a 1 GB backup stays
#: well under 100 MB of RSS) and the output barely grows (0.1% on TabletTracker data).
ZSTD_JOB_SIZE = 2 * 1024 * 1024


@dataclass(frozen=True)
class StreamResult:
    """Sizes and SHA-256 digests of a stream's input (raw) and output (stored) sides."""

    raw_size: int
    raw_sha256: str
    stored_size: int
    sha256: str


class HashingWriter:
    """A write-only file object that hashes and counts what passes through it.

    The first exception writing raised is kept in ``error``: a C library calling ``write``
    (pyrage) may report it as its own error, and the caller re-raises the original.
    """

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0
        self.writeback = Writeback(target)
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        try:
            written = self.target.write(data)
            self.writeback.wrote(len(data))
        except BaseException as exc:
            self.error = self.error or exc
            raise
        return written

    def flush(self) -> None:
        self.target.flush()


class HashingReader:
    """A read-only file object that hashes and counts what is read through it.

    Like :class:`HashingWriter`, it keeps the first exception reading raised in ``error``.
    """

    def __init__(self, inner: BinaryIO, progress: Progress | None = None) -> None:
        self.inner = inner
        self.digest = hashlib.sha256()
        self.size = 0
        self.progress = progress
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.inner.read(size)
        except BaseException as exc:
            self.error = self.error or exc
            raise
        self.digest.update(data)
        self.size += len(data)
        if self.progress is not None and data:
            self.progress(len(data))
        return data

    def drain(self) -> None:
        """Read (and hash) the rest, so the digest covers the whole input."""
        while self.read(CHUNK):
            pass


def compress_file(
    source: Path,
    dest: Path,
    *,
    algorithm: str,
    level: int,
    progress: Progress | None = None,
) -> StreamResult:
    """Compress ``source`` into a new owner-only file ``dest``; raises StorageError."""
    raw_digest = hashlib.sha256()
    raw_size = 0
    try:
        with source.open("rb") as reader, open_private(dest) as raw_out:
            out = HashingWriter(raw_out)
            sink = cast(BinaryIO, out)
            stream: BinaryIO
            if algorithm == "zstd":
                params = zstandard.ZstdCompressionParameters.from_level(
                    level, threads=ZSTD_THREADS, job_size=ZSTD_JOB_SIZE, write_checksum=1
                )
                compressor = zstandard.ZstdCompressor(compression_params=params)
                stream = cast(BinaryIO, compressor.stream_writer(sink, closefd=False))
            else:
                stream = cast(
                    BinaryIO,
                    gzip.GzipFile(
                        filename="", mode="wb", compresslevel=level, fileobj=sink, mtime=0
                    ),
                )
            with stream:
                for chunk in iter_chunks(reader):
                    raw_digest.update(chunk)
                    raw_size += len(chunk)
                    stream.write(chunk)
                    crash_point(Stage.COMPRESS)  # pragma: no mutate
                    if progress is not None:
                        progress(len(chunk))
            raw_out.flush()
    except OSError as exc:
        raise StorageError(describe_os_error(exc, dest)) from exc
    return StreamResult(raw_size, raw_digest.hexdigest(), out.size, out.digest.hexdigest())


def open_decompressed(handle: BinaryIO, algorithm: str) -> BinaryIO:
    """A readable stream of the raw bytes inside a stored backup file."""
    if algorithm == "zstd":
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(handle, closefd=False))
    return cast(BinaryIO, gzip.GzipFile(fileobj=handle, mode="rb"))


class _Discard:
    """A sink for :func:`decompress_file` when only the hashes are wanted."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def decompress_file(
    source: Path,
    dest: Path | None,
    *,
    algorithm: str,
    expected_sha256: str | None = None,
    progress: Progress | None = None,
    shown: str | None = None,
) -> StreamResult:
    """Decompress ``source`` into a new owner-only file ``dest`` (``None``: hash only).

    Checks the stored file's SHA-256 as it reads when ``expected_sha256`` is given. Raises
    :class:`VerificationError` for a damaged file, :class:`StorageError` for I/O trouble.
    Errors name ``shown`` (default: the file's name): a scratch file (a download, a decrypted
    copy) should be named as what the owner knows.
    """
    name = source.name if shown is None else shown
    raw = hashlib.sha256()
    raw_size = 0
    try:
        with (
            source.open("rb") as handle,
            open_private(dest) if dest is not None else nullcontext(_Discard()) as out,
        ):
            reader = HashingReader(handle)
            try:
                stream = open_decompressed(cast(BinaryIO, reader), algorithm)
                with stream:
                    while chunk := stream.read(CHUNK):
                        raw.update(chunk)
                        raw_size += len(chunk)
                        out.write(chunk)
                        if progress is not None:
                            progress(len(chunk))
                # Read any trailing bytes so the stored hash covers the whole file.
                reader.drain()
            except (zstandard.ZstdError, gzip.BadGzipFile, EOFError, ValueError) as exc:
                # Name the root cause when we can: hash the rest and compare with the metadata.
                reader.drain()
                if expected_sha256 is not None and reader.digest.hexdigest() != expected_sha256:
                    raise VerificationError(
                        f"{name}: SHA-256 does not match its metadata (the file is "
                        f"damaged; it does not decompress: {exc})"
                    ) from exc
                raise VerificationError(f"{name} does not decompress: {exc}") from exc
            out.flush()
    except OSError as exc:
        raise StorageError(describe_os_error(exc, dest or source)) from exc
    result = StreamResult(raw_size, raw.hexdigest(), reader.size, reader.digest.hexdigest())
    if expected_sha256 is not None and result.sha256 != expected_sha256:
        raise VerificationError(f"{name}: SHA-256 does not match its metadata")
    return result


def hash_file(path: Path, progress: Progress | None = None) -> tuple[int, str]:
    """(size, SHA-256 hex) of a file; raises :class:`StorageError`."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            for chunk in iter_chunks(handle):
                digest.update(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(len(chunk))
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from exc
    return size, digest.hexdigest()


def copy_file(source: Path, dest: Path) -> tuple[int, str]:
    """Copy ``source`` to a new owner-only ``dest``; returns (size, SHA-256 of what was written)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with source.open("rb") as reader, open_private(dest) as writer:
            writeback = Writeback(writer)
            for chunk in iter_chunks(reader):
                digest.update(chunk)
                size += len(chunk)
                writer.write(chunk)
                writeback.wrote(len(chunk))
    except OSError as exc:
        raise StorageError(describe_os_error(exc, dest)) from exc
    return size, digest.hexdigest()

"""Encryption at rest with age (through pyrage): recipients, identities, and streaming
encryption and decryption of backup files.

Only X25519 *recipients* (public keys, ``age1...``) are needed to encrypt, so only they live on
the server. The *identity* (``AGE-SECRET-KEY-1...``) that decrypts stays with the owner and is
handed to restore and verify when needed; it is never part of the settings.

pyrage is imported only when a key is used: settings, listing and health work without it, and
health reports encryption that is configured but cannot run. Files stream through
``pyrage.encrypt_io`` / ``decrypt_io`` in age's 64 KiB chunks, so memory stays flat whatever
the backup's size (``pyrage.encrypt`` on bytes needs about 3x the file). ``decrypt_io`` raises
``OSError``, not ``DecryptError``, on a flipped or truncated byte, after it has already written
plaintext: every decryption therefore goes to a new scratch file that is removed on any error.

What the encrypted copy's metadata may show is decided here too: the row counts per table and
the source path name the schema, so they are *sealed* (encrypted to the same recipients) and
left out of the readable metadata that goes offsite.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, cast

from tablettracker_backups.compression import HashingReader, HashingWriter, Progress, hash_file
from tablettracker_backups.errors import (
    AgeIdentityError,
    ConfigError,
    EncryptionUnavailable,
    MetadataError,
    StorageError,
    VerificationError,
)
from tablettracker_backups.fsutil import (
    describe_os_error,
    open_private,
    remove_quietly,
    removed_on_error,
)
from tablettracker_backups.metadata import BackupMetadata, EncryptionInfo, Findings, utc_iso
from tablettracker_backups.recipients import shown_key

# The age file's first line and how to spot it live with the sealed store, the one place that
# refuses plaintext; they are used (and re-exported) from here.
from tablettracker_backups.storage.sealed import AGE_HEADER, is_age, read_header

logger = logging.getLogger(__name__)

#: The first line of an ASCII-armored age file (``age -a``), as passphrase-protected identity
#: files often are.
ARMOR_HEADER = b"-----BEGIN AGE ENCRYPTED FILE-----"
#: Identity files larger than this are refused unread (a real one is a few hundred bytes).
MAX_IDENTITY_BYTES = 64 * 1024
INSTALL_HINT = "pip install 'tablettracker-backups[encrypt]'"

PassphraseSource = Callable[[], str]

# -- pyrage --------------------------------------------------------------------------------------


def pyrage_available() -> bool:
    """Whether the age library can be imported."""
    try:
        _pyrage()
    except EncryptionUnavailable:
        return False
    return True


def require_pyrage() -> None:
    """Raise :class:`EncryptionUnavailable` unless the age library can be imported."""
    _pyrage()


def _pyrage() -> ModuleType:
    try:
        import pyrage
    except ImportError as exc:
        raise EncryptionUnavailable(
            f"encryption is configured but the age library (pyrage) is not installed: "
            f"{INSTALL_HINT}"
        ) from exc
    return pyrage


# -- recipients ----------------------------------------------------------------------------------


def fingerprint(recipient: str) -> str:
    """A short, stable name for a public key: the first 8 bytes of its SHA-256, in hex.

    Recorded in each encrypted backup's metadata, so listings can say which key opens it
    without storing the keys themselves.
    """
    return hashlib.sha256(recipient.strip().encode("ascii")).hexdigest()[:16]


def describe_keys(fingerprints: Iterable[str]) -> str:
    """``key 3f9a...`` or ``keys 3f9a..., 77aa...`` for a message."""
    listed = list(fingerprints)
    return ("key " if len(listed) == 1 else "keys ") + ", ".join(listed)


# -- identities ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """The private keys from one identity file, and the fingerprints of their public keys."""

    path: Path
    fingerprints: tuple[str, ...]
    keys: tuple[Any, ...] = field(repr=False, compare=False)

    def opens(self, info: EncryptionInfo) -> bool:
        """Whether one of these keys is among the backup's recipients."""
        return bool(set(self.fingerprints) & set(info.recipients))


def load_identity(path: Path, *, passphrase: PassphraseSource | None = None) -> Identity:
    """Read an age identity file (``age-keygen`` or ``keygen`` output), or an age
    passphrase-protected one (``age -p``, binary or armored), asking ``passphrase()`` for its
    passphrase only when the file is protected.

    Raises :class:`AgeIdentityError` with one line (the file's secret is never quoted), or
    :class:`EncryptionUnavailable`.
    """
    age = _pyrage()
    data = _read_identity_file(path)
    if data.startswith(AGE_HEADER) or data.lstrip().startswith(ARMOR_HEADER):
        data = _unlock(age, data, path, passphrase)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AgeIdentityError(f"{path} is not an age identity file (not text)") from exc
    keys: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("AGE-PLUGIN-"):
            raise AgeIdentityError(
                f"line {number} of {path} is an age plugin identity: unsupported"
            )
        if not line.upper().startswith("AGE-SECRET-KEY-1"):
            raise AgeIdentityError(
                f"line {number} of {path} is not an age identity (AGE-SECRET-KEY-1...)"
            )
        try:
            keys.append(age.x25519.Identity.from_str(line))
        except age.IdentityError as exc:
            raise AgeIdentityError(
                f"line {number} of {path} is not a valid age identity (damaged or mistyped)"
            ) from exc
    if not keys:
        raise AgeIdentityError(f"{path} holds no age identity (AGE-SECRET-KEY-1...)")
    prints = tuple(fingerprint(str(key.to_public())) for key in keys)
    return Identity(path=path, fingerprints=prints, keys=tuple(keys))


def _read_identity_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_IDENTITY_BYTES + 1)
    except FileNotFoundError as exc:
        raise AgeIdentityError(f"identity file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise AgeIdentityError(f"identity file {path} is a folder") from exc
    except OSError as exc:
        raise AgeIdentityError(f"cannot read identity file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_IDENTITY_BYTES:
        raise AgeIdentityError(f"{path} is too large to be an age identity file")
    return data


def _unlock(age: ModuleType, data: bytes, path: Path, passphrase: PassphraseSource | None) -> bytes:
    """The identity inside a passphrase-protected age file."""
    if passphrase is None:
        raise AgeIdentityError(
            f"identity file {path} is passphrase-protected; its passphrase is asked for on a "
            "terminal"
        )
    try:
        return cast(bytes, age.passphrase.decrypt(data, passphrase()))
    except age.DecryptError as exc:
        if "No matching keys" in str(exc):
            raise AgeIdentityError(
                f"{path} is an age file encrypted to a key, not a passphrase-protected identity"
            ) from exc
        raise AgeIdentityError(f"wrong passphrase for identity file {path}") from exc


def create_identity_file(path: Path, *, passphrase: str | None = None) -> str:
    """Write a new X25519 identity to ``path`` (owner-only, never over an existing file) in
    ``age-keygen``'s format, protected by ``passphrase`` when given (as ``age -p -a`` would);
    returns its recipient (the public key, ``age1...``).

    Raises :class:`StorageError` (the file exists, or cannot be written) or
    :class:`EncryptionUnavailable`.
    """
    age = _pyrage()
    key = age.x25519.Identity.generate()
    recipient = str(key.to_public())
    text = (
        f"# created: {utc_iso(datetime.now(timezone.utc))}\n"
        f"# public key: {recipient}\n"
        f"# fingerprint: {fingerprint(recipient)}\n"
        f"{key}\n"
    )
    data = text.encode("ascii")
    if passphrase is not None:
        data = age.passphrase.encrypt(data, passphrase, armored=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise StorageError(
            f"refusing to overwrite {path}: an identity file may be the only key to older "
            "backups; choose another --output"
        ) from exc
    except OSError as exc:
        raise StorageError(describe_os_error(exc, path)) from exc
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is narrowed by the umask, never widened: be exact
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        remove_quietly(path)
        raise StorageError(describe_os_error(exc, path)) from exc
    return recipient


# -- streams -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealResult:
    """An encrypted file: its size and SHA-256, and those of the plaintext that went in."""

    size: int
    sha256: str
    inner_size: int
    inner_sha256: str


def encrypt_file(
    source: Path,
    dest: Path,
    recipients: Iterable[str],
    *,
    expected_sha256: str | None = None,
    progress: Progress | None = None,
) -> SealResult:
    """Encrypt ``source`` to ``recipients`` into the new owner-only file ``dest``, streaming.

    ``expected_sha256`` is what ``source`` must hash to (it was verified as that); a file that
    changed since is refused. ``dest`` is removed on any error. Raises :class:`StorageError`,
    :class:`VerificationError`, :class:`ConfigError` (a recipient pyrage refuses) or
    :class:`EncryptionUnavailable`.
    """
    age = _pyrage()
    keys = _recipient_keys(age, recipients)
    created = open_private(dest)  # fails, creating nothing, if dest exists: never ours to remove
    with removed_on_error(dest):
        with created as raw_out, source.open("rb") as raw_in:
            reader = HashingReader(cast(BinaryIO, raw_in), progress)
            writer = HashingWriter(raw_out)
            try:
                age.encrypt_io(reader, writer, keys)
            except age.EncryptError as exc:
                # pyrage turns an exception raised in our read or write (even Ctrl-C) into
                # EncryptError: re-raise the original.
                original = reader.error or writer.error
                if original is not None:
                    raise original from exc
                raise StorageError(f"cannot encrypt {source.name}: {exc}") from exc
            raw_out.flush()
        if expected_sha256 is not None and reader.digest.hexdigest() != expected_sha256:
            raise VerificationError(
                f"{source.name} no longer matches the SHA-256 it was verified with; "
                "not encrypting it"
            )
        if not is_age(read_header(dest)):
            raise VerificationError(f"encrypting {source.name} did not produce an age file")
    return SealResult(
        writer.size, writer.digest.hexdigest(), reader.size, reader.digest.hexdigest()
    )


def _recipient_keys(age: ModuleType, recipients: Iterable[str]) -> list[Any]:
    keys = []
    for recipient in recipients:
        try:
            keys.append(age.x25519.Recipient.from_str(recipient))
        except age.RecipientError as exc:
            raise ConfigError(
                f"BACKUPS_ENCRYPT_TO: {shown_key(recipient)} is not a valid age public key"
            ) from exc
    if not keys:
        raise ConfigError("no recipients to encrypt to: set BACKUPS_ENCRYPT_TO")
    return keys


def missing_identity(label: str, info: EncryptionInfo) -> AgeIdentityError:
    """The one-line error for an encrypted backup opened without an identity."""
    return AgeIdentityError(
        f"{label} is encrypted: give --identity FILE (or BACKUPS_IDENTITY_FILE) with the "
        f"identity of {describe_keys(info.recipients)}"
    )


def wrong_identity(label: str, info: EncryptionInfo, identity: Identity) -> AgeIdentityError:
    """The one-line error for an identity that is not among a backup's recipients."""
    return AgeIdentityError(
        f"identity {identity.path} ({describe_keys(identity.fingerprints)}) cannot open "
        f"{label}: it was encrypted to {describe_keys(info.recipients)}"
    )


def decrypt_file(
    source: Path,
    dest: Path,
    metadata: BackupMetadata,
    identity: Identity | None,
    *,
    label: str,
    progress: Progress | None = None,
) -> None:
    """Decrypt the encrypted data file ``source`` into the new owner-only file ``dest`` and
    check it: the ciphertext's size and SHA-256, and the plaintext's against the metadata.

    On any error ``dest`` is removed, so no partial plaintext outlives the call. Raises
    :class:`AgeIdentityError` (no identity, or not one of the recipients),
    :class:`VerificationError` (damaged: flipped, truncated or appended bytes),
    :class:`StorageError`.
    """
    info = metadata.encryption
    if info is None:
        raise ValueError(f"{label} is not encrypted")
    if identity is None:
        raise missing_identity(label, info)
    if not identity.opens(info):
        raise wrong_identity(label, info, identity)
    age = _pyrage()
    if not is_age(read_header(source)):
        raise VerificationError(f"{label} is not an age file (damaged, or not encrypted)")
    created = open_private(dest)  # fails, creating nothing, if dest exists: never ours to remove
    with removed_on_error(dest):
        with created as raw_out, source.open("rb") as raw_in:
            reader = HashingReader(cast(BinaryIO, raw_in), progress)
            writer = HashingWriter(raw_out)
            _decrypt_stream(age, reader, writer, identity, label, info)
            reader.drain()
            raw_out.flush()
        if reader.size != metadata.stored_size or reader.digest.hexdigest() != metadata.sha256:
            raise VerificationError(
                f"{label}: the ciphertext's SHA-256 does not match its metadata"
            )
        if writer.size != info.inner_size or writer.digest.hexdigest() != info.inner_sha256:
            raise VerificationError(f"{label}: the decrypted data does not match its metadata")


def _decrypt_stream(
    age: ModuleType,
    reader: HashingReader,
    writer: HashingWriter,
    identity: Identity,
    label: str,
    info: EncryptionInfo,
) -> None:
    try:
        age.decrypt_io(reader, writer, identity.keys)
    except age.DecryptError as exc:
        original = reader.error or writer.error
        if original is not None:
            raise original from exc
        if "No matching keys" in str(exc):
            # The recipients in the metadata said this identity fits; the file disagrees.
            raise wrong_identity(label, info, identity) from exc
        raise VerificationError(f"{label} does not decrypt ({exc}): it is damaged") from exc
    except OSError as exc:
        original = reader.error or writer.error
        if original is not None:
            raise original from exc
        # pyrage's own errors carry no errno: a flipped, truncated or appended byte.
        if exc.errno is None:
            raise VerificationError(f"{label} does not decrypt ({exc}): it is damaged") from exc
        raise


def check_sealed(path: Path, metadata: BackupMetadata, *, label: str) -> None:
    """What can be checked without the identity: the age header, size and SHA-256 of the
    ciphertext. Raises :class:`VerificationError` or :class:`StorageError`."""
    if not path.is_file():
        raise VerificationError(f"{label}: data file is missing")
    if not is_age(read_header(path)):
        raise VerificationError(f"{label} is not an age file (damaged, or stored unencrypted)")
    size, digest = hash_file(path)
    if size != metadata.stored_size:
        raise VerificationError(f"{label} is {size} bytes, metadata says {metadata.stored_size}")
    if digest != metadata.sha256:
        raise VerificationError(f"{label}: the ciphertext's SHA-256 does not match its metadata")


# -- metadata ------------------------------------------------------------------------------------


def encrypted_metadata(
    metadata: BackupMetadata, sealed: SealResult, recipients: Iterable[str]
) -> BackupMetadata:
    """``metadata`` (of the plain compressed file) for its encrypted form ``sealed``."""
    if sealed.inner_sha256 != metadata.sha256 or sealed.inner_size != metadata.stored_size:
        raise VerificationError(f"the encrypted form of {metadata.id} is not of this backup")
    listed = list(recipients)
    return dataclasses.replace(
        metadata,
        stored_size=sealed.size,
        sha256=sealed.sha256,
        encryption=EncryptionInfo(
            recipients=tuple(fingerprint(r) for r in listed),
            inner_size=sealed.inner_size,
            inner_sha256=sealed.inner_sha256,
            sealed=_seal_details(metadata, listed),
        ),
    )


def seal_bytes(data: bytes, recipients: Iterable[str]) -> bytes:
    """``data`` (a format 2 pack, node pack or key: a few MiB at most) as an age file to
    ``recipients``. Raises :class:`ConfigError`, :class:`EncryptionUnavailable`."""
    age = _pyrage()
    sealed: bytes = age.encrypt(data, _recipient_keys(age, recipients))
    return sealed


def open_bytes(data: bytes, identity: Identity, *, label: str) -> bytes:
    """The plaintext of the age file ``data``. Raises :class:`AgeIdentityError` when
    ``identity`` is not one of its recipients, :class:`VerificationError` when it is damaged
    (age authenticates every chunk: a flipped byte does not decrypt)."""
    age = _pyrage()
    if not is_age(data):
        raise VerificationError(f"{label} is not an age file (damaged, or not encrypted)")
    try:
        plain: bytes = age.decrypt(data, list(identity.keys))
    except age.DecryptError as exc:
        if "No matching keys" in str(exc):
            raise AgeIdentityError(
                f"{label} is not encrypted to the identity given ({exc})"
            ) from exc
        raise VerificationError(f"{label} does not decrypt ({exc}): it is damaged") from exc
    return plain


def sealed_pages_metadata(metadata: BackupMetadata, recipients: Iterable[str]) -> BackupMetadata:
    """A format 2 manifest for a copy whose packs and nodes are sealed to ``recipients``: its
    ``sha256`` (the index root) and ``stored_size`` stay; ``encryption`` names the keys and
    seals the schema-naming details (:func:`public_metadata` then drops them)."""
    listed = list(recipients)
    return dataclasses.replace(
        metadata,
        encryption=EncryptionInfo(
            recipients=tuple(fingerprint(r) for r in listed),
            inner_size=metadata.stored_size,
            inner_sha256=metadata.sha256,
            sealed=_seal_details(metadata, listed),
        ),
    )


#: The metadata ``extra`` key of a backup's anomalies (:data:`anomaly.EXTRA_KEY`); their
#: messages name tables, so an encrypted copy keeps them sealed.
ANOMALIES_KEY = "anomalies"


def _seal_details(metadata: BackupMetadata, recipients: list[str]) -> str:
    """The schema-naming parts of the metadata, encrypted to ``recipients`` (base64).

    A few KiB at most, so pyrage's in-memory ``encrypt`` is fine here.
    """
    age = _pyrage()
    document: dict[str, Any] = {
        "row_counts": metadata.row_counts,
        "source_path": metadata.source.path,
        # Findings and anomalies name tables too (issues 10 and 13).
        "findings": metadata.findings.to_dict(),
    }
    if ANOMALIES_KEY in metadata.extra:
        document["anomalies"] = metadata.extra[ANOMALIES_KEY]
    blob = age.encrypt(
        json.dumps(document, sort_keys=True).encode(), _recipient_keys(age, recipients)
    )
    return base64.b64encode(blob).decode("ascii")


def public_metadata(metadata: BackupMetadata) -> BackupMetadata:
    """The metadata an encrypted copy may show to whoever can read the bucket: without the
    table names and row counts and the source path (they are in ``encryption.sealed``)."""
    if metadata.encryption is None:
        raise ValueError(f"backup {metadata.id} is not encrypted")
    findings = metadata.findings
    return dataclasses.replace(
        metadata,
        row_counts={},
        source=dataclasses.replace(metadata.source, path=""),
        findings=dataclasses.replace(
            findings, foreign_key_samples=(), foreign_key_tables={}, not_counted={}
        ),
        extra={k: v for k, v in metadata.extra.items() if k != ANOMALIES_KEY},
    )


def unseal_metadata(metadata: BackupMetadata, identity: Identity) -> BackupMetadata:
    """``metadata`` with the sealed details put back; raises :class:`VerificationError`."""
    info = metadata.encryption
    if info is None:
        return metadata
    age = _pyrage()
    label = f"the sealed metadata of {metadata.id}"
    try:
        plain = age.decrypt(base64.b64decode(info.sealed), list(identity.keys))
        document = json.loads(plain)
        counts = document["row_counts"]
        path = document["source_path"]
        if not isinstance(path, str) or not isinstance(counts, dict):
            raise TypeError
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts.values()):
            raise TypeError
        findings = metadata.findings
        if "findings" in document:  # sealed before issue 13's findings: keep what is shown
            if not isinstance(document["findings"], dict):
                raise TypeError
            findings = Findings.from_dict(document["findings"])
        extra = dict(metadata.extra)
        if "anomalies" in document:
            extra[ANOMALIES_KEY] = document["anomalies"]
    except age.DecryptError as exc:
        if "No matching keys" in str(exc):
            raise wrong_identity(label, info, identity) from exc
        raise VerificationError(f"{label} does not decrypt: it is damaged") from exc
    except (ValueError, TypeError, KeyError, MetadataError) as exc:
        raise VerificationError(f"{label} is malformed") from exc
    return dataclasses.replace(
        metadata,
        row_counts={str(k): int(v) for k, v in counts.items()},
        source=dataclasses.replace(metadata.source, path=path),
        findings=findings,
        extra=extra,
    )

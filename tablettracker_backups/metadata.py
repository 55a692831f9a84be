"""Backup ids and the JSON metadata document that commits a backup into existence.

A backup id looks like ``20261123T201500Z-3f9a1c``: the UTC time it was taken, then six random
hex digits. Ids sort by time, and the strict pattern means nothing built from an id can name a
file outside the backup folder.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from tablettracker_backups.changes import SourceSignature
from tablettracker_backups.errors import InvalidBackupId, InvalidLabel, MetadataError, NewerFormat
from tablettracker_backups.layout import EXTENSIONS, ID_PATTERN, data_key

FORMAT_VERSION = 1
#: Format version 2 (``pages``): the data lives in the folder's page store
#: (:mod:`tablettracker_backups.pagestore`); the manifest's ``extra["pages"]`` names it.
PAGES_VERSION = 2
#: The format versions this code reads.
KNOWN_VERSIONS = (FORMAT_VERSION, PAGES_VERSION)
#: The ``extra`` key naming a coordinated snapshot's group in each member's manifest:
#: ``{"id": GROUP_ID, "members": {NAME: BACKUP_ID}}`` (see :mod:`.coordinated`).
GROUP_KEY = "group"
#: ``auto`` is a write-triggered snapshot; ``pre-restore`` the safety snapshot a restore takes.
KINDS = ("scheduled", "manual", "auto", "pre-restore")
#: Kinds that can be ``latest``: every kind but the safety snapshot, which holds the data a
#: restore just replaced.
REGULAR_KINDS = ("scheduled", "manual", "auto")
#: Foreign-key violations recorded by example (the count is always complete).
FK_SAMPLES = 5
#: Longest label a person may give a backup.
MAX_LABEL = 200
#: Metadata files larger than this are refused unread (a real one is a few KiB).
MAX_METADATA_BYTES = 1024 * 1024
#: The checks that read the whole database (a *full* check), by the name a verification
#: records them under: ``integrity_check``, ``foreign_key_check`` and the row counts.
FULL_CHECKS = ("integrity", "foreign_keys", "row_counts")
#: The cheap checks every snapshot gets: every page's keyed hash and the database's SHA-256
#: (``sha256``), and its header, page count and schema read through SQLite (``schema``).
QUICK_CHECKS = ("sha256", "schema")
#: Every check a verification can record.
CHECK_NAMES = QUICK_CHECKS + FULL_CHECKS
#: What the findings say of a snapshot whose full checks have not run yet.
NOT_CHECKED = "not checked yet"


def new_backup_id(now: datetime) -> str:
    """A fresh id for a backup taken at ``now`` (timezone-aware)."""
    return f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def validate_backup_id(value: object) -> str:
    """Return ``value`` if it is a well-formed backup id; raise :class:`InvalidBackupId`."""
    if not isinstance(value, str) or len(value) != 23 or not ID_PATTERN.match(value):
        shown = repr(value)[:60]
        raise InvalidBackupId(
            f"invalid backup id {shown}: expected the form 20261123T201500Z-3f9a1c"
        )
    try:
        id_time(value)
    except ValueError as exc:
        raise InvalidBackupId(f"invalid backup id {value!r}: not a real date and time") from exc
    return value


def id_time(backup_id: str) -> datetime:
    """The UTC time encoded in a (syntactically valid) backup id; raises ``ValueError``."""
    return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def validate_label(value: object) -> str | None:
    """A label as given by a person, trimmed; ``None`` for an empty one.

    Raises :class:`InvalidLabel` for a label that is too long or holds control characters
    (it is shown on pages and in terminals).
    """
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    if len(text) > MAX_LABEL:
        raise InvalidLabel(f"a label may be at most {MAX_LABEL} characters long")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise InvalidLabel("a label may not contain control characters (newlines, tabs ...)")
    return text


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, to the microsecond."""
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_utc(value: object, what: str) -> datetime:
    """A timezone-aware datetime from :func:`utc_iso` output; raises :class:`MetadataError`."""
    if not isinstance(value, str):
        raise MetadataError(f"{what} must be a timestamp string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise MetadataError(f"{what} is not an ISO timestamp: {value[:40]!r}") from exc
    if moment.tzinfo is None:
        raise MetadataError(f"{what} has no time zone")
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError as exc:
        # "0001-01-01T00:00:00+01:00" is a valid ISO string whose UTC time is before year 1.
        raise MetadataError(f"{what} is out of range: {value[:40]!r}") from exc


@dataclass(frozen=True)
class SourceInfo:
    """What the live database looked like when the snapshot was taken."""

    path: str
    size: int
    page_size: int
    page_count: int
    journal_mode: str
    sqlite_version: str
    #: ``stat()`` of the database files just before the snapshot's read transaction, so a
    #: later "changed since this backup?" needs no file opened (absent in older metadata).
    signature: SourceSignature | None = None


@dataclass(frozen=True)
class Verification:
    """The outcome of the last full verification of this backup."""

    ok: bool
    verified_at: datetime
    integrity_check: str
    foreign_key_violations: int
    error: str | None = None
    #: When each check (:data:`CHECK_NAMES`) last ran on this copy. ``None`` in documents
    #: written before checks were recorded: every check ran, at ``verified_at``.
    checks: dict[str, datetime] | None = None

    def ran(self, name: str) -> datetime | None:
        """When the check ``name`` last ran on this copy, or None if it never did."""
        if self.checks is None:
            return self.verified_at
        return self.checks.get(name)

    @property
    def complete(self) -> bool:
        """Every full check (:data:`FULL_CHECKS`) has run on this copy."""
        return all(self.ran(name) is not None for name in FULL_CHECKS)

    def with_checks(self, names: tuple[str, ...], at: datetime) -> dict[str, datetime]:
        """The checks recorded here, plus ``names`` run at ``at``."""
        known = {name: when for name in CHECK_NAMES if (when := self.ran(name)) is not None}
        return {**known, **dict.fromkeys(names, at)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``checks`` only when recorded: older documents stay as they were)."""
        document = asdict(self)
        document["verified_at"] = utc_iso(self.verified_at)
        if self.checks is None:
            del document["checks"]
        else:
            document["checks"] = {name: utc_iso(at) for name, at in sorted(self.checks.items())}
        return document

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Verification:
        """Validate a decoded ``verification`` object; raises :class:`MetadataError`."""
        checks = doc.get("checks")
        parsed: dict[str, datetime] | None = None
        if checks is not None:
            if not isinstance(checks, dict) or not set(checks) <= set(CHECK_NAMES):
                raise MetadataError(f"verification field 'checks' may name only {CHECK_NAMES}")
            parsed = {str(k): parse_utc(v, f"checks.{k}") for k, v in checks.items()}
        return cls(
            ok=_bool(doc, "ok"),
            verified_at=parse_utc(doc.get("verified_at"), "verified_at"),
            integrity_check=_str(doc, "integrity_check"),
            foreign_key_violations=_nonneg(doc, "foreign_key_violations"),
            error=_opt_str(doc, "error"),
            checks=parsed,
        )


@dataclass(frozen=True)
class EncryptionInfo:
    """How a stored data file is encrypted (age, to X25519 recipients).

    The metadata's ``stored_size`` and ``sha256`` then describe the ciphertext as stored; the
    compressed stream inside is ``inner_size`` bytes hashing to ``inner_sha256``.
    ``recipients`` are fingerprints (:func:`tablettracker_backups.encryption.fingerprint`) of
    the public keys it was encrypted to: which identities can open it. ``sealed`` is the part
    of the metadata that names the schema (row counts per table, the source path), encrypted
    to the same recipients, so the copy kept offsite can drop it from its readable metadata.
    """

    recipients: tuple[str, ...]
    inner_size: int
    inner_sha256: str
    sealed: str
    scheme: str = "age"


@dataclass(frozen=True)
class ForeignKeySample:
    """One foreign-key violation: the child row and the table it should point into."""

    table: str
    rowid: int | None
    parent: str


@dataclass(frozen=True)
class Findings:
    """What the checks found in the *data* of the snapshot.

    None of this makes a copy unfaithful; only ``source_damaged`` (the live database failed
    ``integrity_check``, so the snapshot holds damaged data) keeps a faithful copy from
    counting as a good backup.
    """

    integrity: str = "ok"
    foreign_key_violations: int = 0
    foreign_key_samples: tuple[ForeignKeySample, ...] = ()
    #: Violations per child table (to name the tables whose count rose).
    foreign_key_tables: dict[str, int] = field(default_factory=dict)
    #: Tables whose rows could not be counted, and why (a virtual table's module not loaded).
    not_counted: dict[str, str] = field(default_factory=dict)
    source_damaged: bool = False
    #: False while the full checks (:data:`FULL_CHECKS`) have not run on the snapshot: then
    #: nothing above was looked for, and nothing may be reported as found sound.
    checked: bool = True

    def summary(self) -> str:
        """One short phrase: ``ok``, ``source-damaged``, ``12 foreign-key violations``,
        ``not checked yet``, ..."""
        if not self.checked:
            return NOT_CHECKED
        parts = []
        if self.source_damaged:
            parts.append("source-damaged")
        if self.foreign_key_violations:
            parts.append(f"{self.foreign_key_violations} foreign-key violation(s)")
        if self.not_counted:
            parts.append(f"{len(self.not_counted)} table(s) not counted")
        return ", ".join(parts) or "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``findings`` object of the metadata)."""
        return {
            "integrity": self.integrity,
            "foreign_key_violations": self.foreign_key_violations,
            "foreign_key_samples": [asdict(sample) for sample in self.foreign_key_samples],
            "foreign_key_tables": dict(self.foreign_key_tables),
            "not_counted": dict(self.not_counted),
            "source_damaged": self.source_damaged,
            # Only when false: the findings of a checked snapshot keep the shape they had.
            **({} if self.checked else {"checked": False}),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Findings:
        """Validate a decoded ``findings`` object; raises :class:`MetadataError`."""
        samples = doc.get("foreign_key_samples", [])
        if not isinstance(samples, list) or len(samples) > 100:
            raise MetadataError("metadata field 'foreign_key_samples' must be a short list")
        parsed = []
        for sample in samples:
            if not isinstance(sample, dict):
                raise MetadataError("a foreign-key sample must be an object")
            rowid = sample.get("rowid")
            if rowid is not None and (not isinstance(rowid, int) or isinstance(rowid, bool)):
                raise MetadataError("a foreign-key sample's rowid must be an integer or null")
            parsed.append(ForeignKeySample(_str(sample, "table"), rowid, _str(sample, "parent")))
        tables = _obj(doc, "foreign_key_tables") if "foreign_key_tables" in doc else {}
        not_counted = _obj(doc, "not_counted") if "not_counted" in doc else {}
        return cls(
            integrity=_str(doc, "integrity"),
            foreign_key_violations=_nonneg(doc, "foreign_key_violations"),
            foreign_key_samples=tuple(parsed),
            foreign_key_tables={str(k): _nonneg(tables, k) for k in tables},
            not_counted={str(k): _str(not_counted, k) for k in not_counted},
            source_damaged=_bool(doc, "source_damaged"),
            checked=_bool(doc, "checked") if "checked" in doc else True,
        )


@dataclass(frozen=True)
class BackupMetadata:
    """The JSON document stored beside each backup's data file."""

    id: str
    created_at: datetime
    kind: str
    trigger: str
    source: SourceInfo
    tool_version: str
    schema_fingerprint: str
    row_counts: dict[str, int]
    raw_size: int
    raw_sha256: str
    stored_size: int
    sha256: str
    compression: str
    compression_level: int
    durations: dict[str, float]
    verification: Verification
    findings: Findings = field(default_factory=Findings)
    #: A person's note ("before the migration"); shown in list, detail and ``--json``.
    label: str | None = None
    #: Never pruned while true (``backup --keep``, ``pin ID``; ``unpin ID`` ends it).
    pinned: bool = False
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    #: Set when the data file is an age file; ``None`` for a plain one.
    encryption: EncryptionInfo | None = None
    #: When the run that took it started (``created_at`` is when its read transaction began,
    #: the moment the data is as of); absent in older metadata.
    started_at: datetime | None = None

    @property
    def source_damaged(self) -> bool:
        """The live database failed ``integrity_check`` when this snapshot was taken."""
        return self.findings.source_damaged

    @property
    def checked(self) -> bool:
        """The full checks (:data:`FULL_CHECKS`) have run on the snapshot: at its backup, or
        later (verify, the drill, a restore), as its state document records."""
        return self.findings.checked

    @property
    def grouped(self) -> bool:
        """A member of a coordinated snapshot (its manifest names the group)."""
        return isinstance(self.extra.get(GROUP_KEY), dict)

    @property
    def data_file(self) -> str:
        """The data file's name in any backup folder."""
        return data_key(self.id, self.compression, encrypted=self.encryption is not None)

    @property
    def content_sha256(self) -> str:
        """SHA-256 of the compressed stream, encrypted or not: what says "the same backup"
        when one place holds it plain and another encrypted (each encryption differs)."""
        return self.encryption.inner_sha256 if self.encryption else self.sha256

    def to_json(self) -> str:
        """Serialise to the on-disk JSON text."""
        document = asdict(self)
        document["created_at"] = utc_iso(self.created_at)
        if self.started_at is None:
            del document["started_at"]
        else:
            document["started_at"] = utc_iso(self.started_at)
        document["verification"] = self.verification.to_dict()
        if self.format_version == FORMAT_VERSION:
            document["data_file"] = self.data_file
        if self.encryption is None:
            # Plain backups keep the document they always had.
            del document["encryption"]
        document["findings"] = self.findings.to_dict()
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, expected_id: str | None = None) -> BackupMetadata:
        """Parse and validate metadata; raises :class:`MetadataError` on anything odd."""
        if len(text) > MAX_METADATA_BYTES:
            raise MetadataError("metadata is larger than any real backup's")
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise MetadataError("metadata is not valid JSON") from exc
        if not isinstance(document, dict):
            raise MetadataError("metadata is not a JSON object")
        return cls.from_dict(document, expected_id=expected_id)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, expected_id: str | None = None) -> BackupMetadata:
        """Validate a decoded metadata object; raises :class:`MetadataError`."""
        version = doc.get("format_version")
        newest = max(KNOWN_VERSIONS)
        if isinstance(version, int) and not isinstance(version, bool) and version > newest:
            raise NewerFormat(
                f"written by a newer version of tablettracker-backups (format {version}; this "
                f"one reads formats up to {newest}): upgrade to read it"
            )
        if version not in KNOWN_VERSIONS or isinstance(version, bool):
            raise MetadataError(f"unsupported metadata format {version!r}")
        assert isinstance(version, int)
        try:
            backup_id = validate_backup_id(doc.get("id"))
        except InvalidBackupId as exc:
            raise MetadataError(f"metadata has an {exc}") from exc
        if expected_id is not None and backup_id != expected_id:
            raise MetadataError(f"metadata names backup {backup_id}, not {expected_id}")
        compression = _choice(doc, "compression", tuple(EXTENSIONS))
        encryption = _encryption(doc.get("encryption"))
        data_file = doc.get("data_file")
        expected_file = data_key(backup_id, compression, encrypted=encryption is not None)
        if version != FORMAT_VERSION and data_file is not None:
            raise MetadataError("a format 2 manifest names no data file")
        if data_file is not None and data_file != expected_file:
            raise MetadataError(f"metadata points at another file ({str(data_file)[:60]!r})")
        source = _obj(doc, "source")
        verification = _obj(doc, "verification")
        row_counts = _obj(doc, "row_counts")
        durations = _obj(doc, "durations")
        extra = doc.get("extra", {})
        if not isinstance(extra, dict):
            raise MetadataError("metadata field 'extra' must be an object")
        if version == PAGES_VERSION and not isinstance(extra.get("pages"), dict):
            raise MetadataError("a format 2 manifest must name its page index (extra.pages)")
        checked = Verification.from_dict(verification)
        # Older files have no findings: what their checks recorded is all there is (and they
        # were only kept when the data was clean).
        findings = (
            Findings.from_dict(_obj(doc, "findings"))
            if doc.get("findings") is not None
            else Findings(checked.integrity_check, checked.foreign_key_violations)
        )
        label = _opt_str(doc, "label")
        if label is not None and len(label) > MAX_LABEL:
            raise MetadataError(f"metadata field 'label' is longer than {MAX_LABEL} characters")
        pinned = doc.get("pinned", False)
        if not isinstance(pinned, bool):
            raise MetadataError("metadata field 'pinned' must be true or false")
        started_at = doc.get("started_at")
        return cls(
            id=backup_id,
            created_at=parse_utc(doc.get("created_at"), "created_at"),
            started_at=None if started_at is None else parse_utc(started_at, "started_at"),
            kind=_choice(doc, "kind", KINDS),
            trigger=_str(doc, "trigger"),
            source=SourceInfo(
                path=_str(source, "path"),
                size=_nonneg(source, "size"),
                page_size=_nonneg(source, "page_size"),
                page_count=_nonneg(source, "page_count"),
                journal_mode=_str(source, "journal_mode"),
                sqlite_version=_str(source, "sqlite_version"),
                signature=SourceSignature.from_dict(source.get("signature")),
            ),
            tool_version=_str(doc, "tool_version"),
            schema_fingerprint=_hex(doc, "schema_fingerprint"),
            row_counts={str(k): _nonneg(row_counts, k) for k in row_counts},
            raw_size=_nonneg(doc, "raw_size"),
            raw_sha256=_hex(doc, "raw_sha256"),
            stored_size=_nonneg(doc, "stored_size"),
            sha256=_hex(doc, "sha256"),
            compression=compression,
            compression_level=_nonneg(doc, "compression_level"),
            durations={str(k): _number(durations, k) for k in durations},
            verification=checked,
            findings=findings,
            label=label,
            pinned=pinned,
            extra=extra,
            encryption=encryption,
            format_version=version,
        )


def _encryption(value: object) -> EncryptionInfo | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MetadataError("metadata field 'encryption' must be an object")
    if value.get("scheme") != "age":
        raise MetadataError("metadata field 'encryption' names an unknown scheme")
    recipients = value.get("recipients")
    if (
        not isinstance(recipients, list)
        or not recipients
        or not all(isinstance(r, str) and re.fullmatch(r"[0-9a-f]{16}", r) for r in recipients)
    ):
        raise MetadataError("metadata field 'recipients' must list key fingerprints")
    sealed = value.get("sealed")
    if not isinstance(sealed, str) or not re.fullmatch(r"[A-Za-z0-9+/=]+", sealed):
        raise MetadataError("metadata field 'sealed' must be base64 text")
    return EncryptionInfo(
        recipients=tuple(recipients),
        inner_size=_nonneg(value, "inner_size"),
        inner_sha256=_hex(value, "inner_sha256"),
        sealed=sealed,
    )


def _obj(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise MetadataError(f"metadata field {key!r} must be an object")
    return value


def _str(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise MetadataError(f"metadata field {key!r} must be a string")
    return value


def _opt_str(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise MetadataError(f"metadata field {key!r} must be a string or null")
    return value


def _bool(doc: dict[str, Any], key: str) -> bool:
    value = doc.get(key)
    if not isinstance(value, bool):
        raise MetadataError(f"metadata field {key!r} must be true or false")
    return value


def _nonneg(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MetadataError(f"metadata field {str(key)[:40]!r} must be a non-negative integer")
    return value


def _number(doc: dict[str, Any], key: str) -> float:
    value = doc.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MetadataError(f"metadata field {str(key)[:40]!r} must be a number")
    return float(value)


def _hex(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise MetadataError(f"metadata field {key!r} must be a SHA-256 hex digest")
    return value


def _choice(doc: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = doc.get(key)
    if value not in choices:
        raise MetadataError(f"metadata field {key!r} must be one of {', '.join(choices)}")
    return str(value)


#: The state document's own format.
STATE_VERSION = 1


@dataclass(frozen=True)
class BackupState:
    """What changes about one copy of a backup after it was written, kept apart from its
    manifest (which is never rewritten): the latest verification of this copy, the pin and the
    label; and, for a snapshot filed before its full checks ran, what they found when they did
    (``findings``, ``row_counts``). Its values win over the manifest's own, which are those at
    the backup's creation."""

    id: str
    verification: Verification
    pinned: bool = False
    label: str | None = None
    findings: Findings | None = None
    row_counts: dict[str, int] | None = None

    @classmethod
    def of(cls, meta: BackupMetadata) -> BackupState:
        """The state as ``meta`` (a merged view) shows it."""
        checked = meta.checked and meta.verification.checks is not None
        return cls(
            meta.id,
            meta.verification,
            meta.pinned,
            meta.label,
            meta.findings if checked else None,
            dict(meta.row_counts) if checked else None,
        )

    def applied_to(self, manifest: BackupMetadata) -> BackupMetadata:
        """The manifest as this state says it stands now (a late check's findings only
        where the manifest has none of its own)."""
        merged = replace(
            manifest, verification=self.verification, pinned=self.pinned, label=self.label
        )
        if not manifest.checked and self.findings is not None and self.findings.checked:
            merged = replace(merged, findings=self.findings, row_counts=dict(self.row_counts or {}))
        return merged

    def to_json(self) -> str:
        """The document's text."""
        document: dict[str, Any] = {
            "state_version": STATE_VERSION,
            "id": self.id,
            "verification": self.verification.to_dict(),
            "pinned": self.pinned,
            "label": self.label,
        }
        if self.findings is not None:
            document["findings"] = self.findings.to_dict()
            document["row_counts"] = dict(self.row_counts or {})
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, expected_id: str) -> BackupState:
        """Parse and validate a state document; raises :class:`MetadataError`."""
        if len(text) > MAX_METADATA_BYTES:
            raise MetadataError("state is larger than any real backup's")
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise MetadataError("state is not valid JSON") from exc
        if not isinstance(doc, dict):
            raise MetadataError("state is not a JSON object")
        version = doc.get("state_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > STATE_VERSION:
            raise NewerFormat(
                f"its state was written by a newer version of tablettracker-backups (format "
                f"{version}): upgrade to read it"
            )
        if version != STATE_VERSION:
            raise MetadataError(f"unsupported state format {version!r}")
        if doc.get("id") != expected_id:
            named = str(doc.get("id"))[:40]
            raise MetadataError(f"state names backup {named!r}, not {expected_id}")
        label = _opt_str(doc, "label")
        if label is not None and len(label) > MAX_LABEL:
            raise MetadataError(f"state field 'label' is longer than {MAX_LABEL} characters")
        findings = None
        row_counts = None
        if doc.get("findings") is not None:
            findings = Findings.from_dict(_obj(doc, "findings"))
            counts = _obj(doc, "row_counts")
            row_counts = {str(k): _nonneg(counts, k) for k in counts}
        return cls(
            id=expected_id,
            verification=Verification.from_dict(_obj(doc, "verification")),
            pinned=_bool(doc, "pinned"),
            label=label,
            findings=findings,
            row_counts=row_counts,
        )

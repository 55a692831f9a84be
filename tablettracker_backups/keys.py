"""Which age keys the backups need, and when the owner last proved a key opens them.

An encrypted backup is only as good as the identity that opens it. Without the network and
without any private key, this answers for ``status`` and ``health``:

* which keys (by fingerprint) the encrypted backups need, local ones from their metadata and
  offsite ones from the local offsite record; after a key rotation the older backups stay
  listed with the keys they need;
* when a *drill* (a full check with the identity: decrypt, hash, integrity_check, as
  ``verify --offsite --identity FILE`` does) last passed, which verify records here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tablettracker_backups.encryption import fingerprint, pyrage_available
from tablettracker_backups.errors import BackupError, MetadataError
from tablettracker_backups.metadata import id_time, parse_utc, utc_iso
from tablettracker_backups.offsite.record import OffsiteState
from tablettracker_backups.settings import Settings
from tablettracker_backups.status import read_status, update_status
from tablettracker_backups.store import BackupInfo

logger = logging.getLogger(__name__)

#: The status file's key for the last passing drill per place (``local``, ``offsite``).
DRILLS = "encryption_drills"
#: The drill period when there is no offsite store (whose verify period is used otherwise).
DEFAULT_DRILL_DAYS = 30


def record_drill(settings: Settings, where: str, backup_id: str) -> None:
    """Remember that a full check with the identity passed in ``where`` just now.

    Never raises: a full status folder must not turn a passed check into a failure.
    """
    try:
        drills = read_status(settings).get(DRILLS)
        updated = dict(drills) if isinstance(drills, dict) else {}
        updated[where] = {"at": utc_iso(datetime.now(timezone.utc)), "id": backup_id}
        update_status(settings, **{DRILLS: updated})
    except BackupError as exc:
        logger.warning("could not record the drill with the identity: %s", exc)


def last_drill(settings: Settings, where: str) -> datetime | None:
    """When a full check with the identity last passed in ``where``; None if never."""
    drills = read_status(settings).get(DRILLS)
    entry = drills.get(where) if isinstance(drills, dict) else None
    if not isinstance(entry, dict):
        return None
    try:
        return parse_utc(entry.get("at"), "drill time")
    except MetadataError:
        return None


@dataclass(frozen=True)
class KeyNeed:
    """Backups in one place that any one of ``fingerprints`` opens."""

    where: str
    fingerprints: tuple[str, ...]
    count: int
    oldest: str
    newest: str
    #: One of these keys is still in ``BACKUPS_ENCRYPT_TO`` (else: an older, rotated-out key).
    current: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "where": self.where,
            "fingerprints": list(self.fingerprints),
            "count": self.count,
            "oldest": self.oldest,
            "newest": self.newest,
            "current": self.current,
        }


@dataclass(frozen=True)
class EncryptionStatus:
    """Encryption as configured, and what the existing backups need."""

    configured: bool
    mode: str | None = None
    #: Fingerprints of the keys new backups are encrypted to.
    recipients: tuple[str, ...] = ()
    #: pyrage can be imported.
    available: bool = True
    needs: tuple[KeyNeed, ...] = ()
    #: Offsite copies stored unencrypted (uploaded before encryption was set up), newest first.
    plaintext_offsite: tuple[str, ...] = ()
    #: Where the drill with the identity is expected (``offsite`` when there is a store).
    drill_where: str = "offsite"
    last_drill_at: datetime | None = None
    drill_period_days: int = DEFAULT_DRILL_DAYS

    @property
    def encrypted_backups(self) -> int:
        """How many encrypted backups (copies in one place each) exist in the drill's place."""
        return sum(n.count for n in self.needs if n.where == self.drill_where)

    def drill_overdue(self, now: datetime) -> bool:
        """Encrypted backups exist where the drill is expected, and none passed within the
        period."""
        if not self.configured or not self.encrypted_backups:
            return False
        if self.last_drill_at is None:
            return True
        return (now - self.last_drill_at).days >= self.drill_period_days

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``health --json``, ``status --json``)."""
        return {
            "configured": self.configured,
            "mode": self.mode,
            "recipients": list(self.recipients),
            "available": self.available,
            "needs": [n.to_dict() for n in self.needs],
            "plaintext_offsite": list(self.plaintext_offsite),
            "drill_where": self.drill_where,
            "last_drill_at": utc_iso(self.last_drill_at) if self.last_drill_at else None,
            "drill_period_days": self.drill_period_days,
        }


def encryption_status(
    settings: Settings, infos: Iterable[BackupInfo], state: OffsiteState | None
) -> EncryptionStatus:
    """What encryption is set up, and which keys the backups need (no network, no keys)."""
    config = settings.encryption
    current = {fingerprint(r) for r in config.recipients} if config else set()
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for info in infos:
        meta = info.metadata
        if meta is not None and meta.encryption is not None:
            groups.setdefault(("local", meta.encryption.recipients), []).append(info.id)
    plaintext: list[str] = []
    for copy in state.copies.values() if state else ():
        if copy.recipients:
            groups.setdefault(("offsite", copy.recipients), []).append(copy.id)
        else:
            plaintext.append(copy.id)
    needs = tuple(
        KeyNeed(
            where=where,
            fingerprints=prints,
            count=len(ids),
            oldest=min(ids, key=id_time),
            newest=max(ids, key=id_time),
            current=bool(current & set(prints)),
        )
        for (where, prints), ids in sorted(
            groups.items(), key=lambda item: max(item[1]), reverse=True
        )
    )
    drill_where = "offsite" if settings.offsite is not None else "local"
    period = (
        settings.offsite.verify_period_days if settings.offsite is not None else DEFAULT_DRILL_DAYS
    )
    return EncryptionStatus(
        configured=config is not None,
        mode=str(config.mode) if config else None,
        recipients=tuple(fingerprint(r) for r in config.recipients) if config else (),
        available=pyrage_available() if config else True,
        needs=needs,
        plaintext_offsite=tuple(sorted(plaintext, reverse=True)),
        drill_where=drill_where,
        last_drill_at=last_drill(settings, drill_where),
        drill_period_days=period,
    )

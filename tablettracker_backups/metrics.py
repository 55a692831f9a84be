"""Prometheus metrics, read from the backup folder and the status file at scrape time.

There are no in-process counters: every value comes from what is on disk when asked, so every
web worker, the CLI and a node_exporter text file give the same answer, and a restart loses
nothing. Nothing here hashes or opens a backup's data (a scrape must stay cheap): ages and sizes
come from the metadata (and, for format 2, the page indexes, remembered per process), the
health verdict from the report the last ``run`` or ``health`` saved.

``prometheus_client`` (the ``metrics`` extra) is imported only when metrics are made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from tablettracker_backups.errors import BackupError, ConfigError, StorageError
from tablettracker_backups.footprint import folder_bytes
from tablettracker_backups.fsutil import commit, describe_os_error, remove_quietly
from tablettracker_backups.health import slot_counts
from tablettracker_backups.metadata import parse_utc
from tablettracker_backups.offsite.policy import offsite_lag
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import CopyStatus, Level
from tablettracker_backups.status import read_status
from tablettracker_backups.store import BackupInfo, BackupStore

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

PREFIX = "tablettracker_backups_"
SLOTS = ("minutely", "hourly", "daily", "weekly", "monthly", "yearly", "pre-restore")
MISSING_CLIENT = (
    "metrics need the prometheus_client package: pip install 'tablettracker-backups[metrics]'"
)


@dataclass(frozen=True)
class Snapshot:
    """The values behind the metrics, at one moment. Timestamps are Unix seconds; 0 = never."""

    last_success: float = 0.0
    last_verified: float = 0.0
    last_attempt: float = 0.0
    last_duration: float | None = None
    last_size: int | None = None
    slots: dict[str, int] = field(default_factory=dict)
    health_status: int | None = None
    offsite_behind: int | None = None
    disk_free: dict[str, int] = field(default_factory=dict)
    #: The newest backup that restores as it is (safety snapshots included): the recovery point.
    newest_restore_point: float = 0.0
    #: Bytes every backup takes in the primary folder (one copy each; an object shared by
    #: format 2 backups counted once), what the folder holds for this database.
    stored_bytes: int = 0
    #: The size of the database the newest backup holds.
    logical_bytes: int | None = None
    #: What the newest backup added to the folder when it was taken (format 1: its file).
    last_added: int | None = None
    #: Copies (in any folder) whose bytes failed their last check.
    damaged_copies: int = 0


def _good(info: BackupInfo) -> bool:
    # ``good`` (the trust issue's stricter verdict) where the store has it, else verified.
    return bool(getattr(info, "good", info.verified))


def _stamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else 0.0


def read_snapshot(settings: Settings, *, now: datetime | None = None) -> Snapshot:
    """Read the folder and status file; raises :class:`StorageError` if the folder cannot be
    listed."""
    now = now or datetime.now(timezone.utc)
    infos = BackupStore(settings).list()
    regular = [i for i in infos if i.kind != "pre-restore"]
    newest = next((i for i in regular if i.metadata is not None), None)
    good = next((i for i in regular if _good(i)), None)
    verified_at = [
        i.metadata.verification.verified_at
        for i in infos
        if i.metadata is not None and i.verified and i.metadata.verification.ok
    ]
    status = read_status(settings)
    attempts = [i.created_at for i in regular[:1]]
    failure = status.get("last_backup_failure")  # the trust issue's record of a failed backup
    for value in (
        status.get("last_run_at"),
        failure.get("at") if isinstance(failure, dict) else None,
    ):
        if value:
            with contextlib.suppress(BackupError):
                attempts.append(parse_utc(value, "last attempt"))
    health = status.get("health")
    level = health.get("status") if isinstance(health, dict) else None
    counts = slot_counts(settings, infos, now)
    disk: dict[str, int] = {}
    for name, folder in zip(("primary", "secondary"), settings.locations, strict=False):
        try:
            disk[name] = shutil.disk_usage(folder).free
        except OSError:
            continue
    restorable = next((i for i in infos if i.metadata is not None and i.verified), None)
    return Snapshot(
        newest_restore_point=_stamp(restorable.created_at if restorable else None),
        stored_bytes=folder_bytes(
            settings.backup_dir, [i.metadata for i in infos if i.metadata is not None]
        ),
        logical_bytes=newest.metadata.raw_size if newest and newest.metadata else None,
        last_added=newest.metadata.stored_size if newest and newest.metadata else None,
        damaged_copies=sum(c.state == CopyStatus.DAMAGED for i in infos for c in i.copies),
        last_success=_stamp(good.created_at if good else None),
        last_verified=_stamp(max(verified_at, default=None)),
        last_attempt=_stamp(max(attempts, default=None)),
        last_duration=newest.metadata.durations.get("total")
        if newest and newest.metadata
        else None,
        last_size=newest.metadata.stored_size if newest and newest.metadata else None,
        slots={slot: counts.get(slot, 0) for slot in SLOTS},
        health_status=[str(v) for v in Level].index(level) if level in list(Level) else None,
        offsite_behind=len(offsite_lag(settings, infos, now=now).behind)
        if settings.offsite
        else None,
        disk_free=disk,
    )


class BackupsCollector:
    """A ``prometheus_client`` collector: each ``collect()`` reads the folders afresh. Every
    series carries a ``database`` label (the database's name), so one Prometheus, one Grafana
    dashboard and one set of alert rules serve every database of a site."""

    def __init__(self, settings: Settings | Sequence[Settings]) -> None:
        self.databases = (settings,) if isinstance(settings, Settings) else tuple(settings)

    def collect(self) -> Iterator[Metric]:
        """The metrics, from a :class:`Snapshot` of each database taken now."""
        from prometheus_client.core import GaugeMetricFamily

        snaps = [(s.database_name, read_snapshot(s)) for s in self.databases]

        def gauge(
            name: str, doc: str, value: Callable[[Snapshot], float | None], unit: str = ""
        ) -> Iterator[Metric]:
            family = GaugeMetricFamily(PREFIX + name, doc, labels=["database"], unit=unit)
            for database, snap in snaps:
                found = value(snap)
                if found is not None:
                    family.add_metric([database], found)
            if family.samples:
                yield family

        yield from gauge(
            "last_success_timestamp_seconds",
            "When the newest good backup was taken (0: never).",
            lambda s: s.last_success,
        )
        yield from gauge(
            "newest_restore_point_timestamp_seconds",
            "When the newest backup that restores as it is was taken, safety snapshots "
            "included (0: never): the recovery point.",
            lambda s: s.newest_restore_point,
        )
        yield from gauge(
            "last_verified_timestamp_seconds",
            "When a backup last passed a full verification (0: never).",
            lambda s: s.last_verified,
        )
        yield from gauge(
            "last_attempt_timestamp_seconds",
            "When a backup or scheduled run was last attempted (0: never).",
            lambda s: s.last_attempt,
        )
        yield from gauge(
            "last_duration_seconds", "How long the newest backup took.", lambda s: s.last_duration
        )
        yield from gauge(
            "last_size_bytes", "Stored size of the newest backup.", lambda s: s.last_size
        )
        yield from gauge(
            "stored_bytes",
            "Bytes every backup of the database takes in its primary folder (objects shared "
            "by format 2 backups counted once).",
            lambda s: s.stored_bytes,
        )
        yield from gauge(
            "logical_bytes",
            "Size of the database the newest backup holds.",
            lambda s: s.logical_bytes,
        )
        yield from gauge(
            "last_added_bytes",
            "What the newest backup added to the folder (format 1: its whole file).",
            lambda s: s.last_added,
        )
        yield from gauge(
            "damaged_copies",
            "Backup copies whose bytes failed their last check, in any folder.",
            lambda s: s.damaged_copies,
        )
        slots = GaugeMetricFamily(
            PREFIX + "backups", "Backups kept per retention slot.", labels=["database", "slot"]
        )
        for database, snap in snaps:
            for slot, count in snap.slots.items():
                slots.add_metric([database, slot], count)
        yield slots
        yield from gauge(
            "health_status",
            "The last saved health verdict: 0 ok, 1 warning, 2 critical.",
            lambda s: s.health_status,
        )
        yield from gauge(
            "offsite_behind",
            "Verified backups not yet uploaded to the offsite store.",
            lambda s: s.offsite_behind,
        )
        free = GaugeMetricFamily(
            PREFIX + "disk_free_bytes",
            "Free space where backups are kept.",
            labels=["database", "folder"],
        )
        for database, snap in snaps:
            for folder, value in snap.disk_free.items():
                free.add_metric([database, folder], value)
        yield free


def registry(settings: Settings | Sequence[Settings]) -> CollectorRegistry:
    """A registry holding only this package's collector; raises :class:`ConfigError` when
    ``prometheus_client`` is not installed."""
    try:
        from prometheus_client.registry import CollectorRegistry
    except ImportError as exc:
        raise ConfigError(MISSING_CLIENT) from exc
    found = CollectorRegistry(auto_describe=False)
    found.register(BackupsCollector(settings))
    return found


def render(settings: Settings | Sequence[Settings]) -> bytes:
    """The metrics in Prometheus' text format; raises :class:`ConfigError` when
    ``prometheus_client`` is not installed."""
    found = registry(settings)
    from prometheus_client.exposition import generate_latest

    return generate_latest(found)


def write_textfile(settings: Settings | Sequence[Settings], path: Path) -> None:
    """Write the metrics to ``path`` atomically, for node_exporter's textfile collector.

    The temporary name does not end in ``.prom``, so the collector never reads a half-written
    file; the file is world-readable (0644) because node_exporter usually runs as another user.
    Raises :class:`StorageError`.
    """
    data = render(settings)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, 0o644)  # the umask may have taken bits away
    except OSError as exc:
        remove_quietly(temp)
        raise StorageError(describe_os_error(exc, path)) from exc
    commit(temp, path)

"""``show ID``: one backup's metadata, findings, copies and row counts."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from tablettracker_backups.anomaly import recorded_anomalies
from tablettracker_backups.cli.common import (
    EXIT_CRITICAL,
    BackupsCommand,
    emit_json,
    json_option,
    pick_backup,
    print_findings,
    settings_command,
)
from tablettracker_backups.display import human_age, human_size, local_time
from tablettracker_backups.encryption import describe_keys
from tablettracker_backups.footprint import Footprint, of_listing
from tablettracker_backups.metadata import CHECK_NAMES, BackupMetadata
from tablettracker_backups.offsite.policy import copy_states
from tablettracker_backups.prune import plan_for_store
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore, newest_good


@click.command(cls=BackupsCommand)
@click.argument("backup_id", metavar="ID")
@settings_command
@json_option
def show(settings: Settings, backup_id: str, as_json: bool) -> None:
    """Show one backup's metadata, findings, copies and per-table row counts.

    ID may be 'latest' (the newest good regular backup, as marked in list).

    \b
    Example:
      tablettracker-backups show 20261123T201500Z-3f9a1c
    """

    store = BackupStore(settings)
    info = store.get(pick_backup(settings, backup_id))
    infos = store.list()
    reasons = plan_for_store(store).reasons(info.id)
    offsite = copy_states(settings, infos).get(info.id)
    latest = newest_good(infos)
    is_latest = latest is not None and latest.id == info.id
    if as_json:
        document: dict[str, Any] = dict(info.to_dict(), kept_because=list(reasons))
        document["latest"] = is_latest
        if offsite is not None:
            document["copies"]["offsite"] = offsite
        if info.metadata is not None:
            document["metadata"] = json.loads(info.metadata.to_json())
        size = of_listing(settings.backup_dir, infos).get(info.id)
        document["sizes"] = size.to_dict() if size is not None else None
        emit_json(document)
        _fail_without_metadata(info)
        return
    click.echo(f"Backup {info.id}" + (" (latest)" if is_latest else ""))
    if info.label:
        click.echo(f"  label:       {info.label}")
    click.echo(f"  taken:       {local_time(info.created_at)} ({human_age(info.created_at)})")
    click.echo(f"  kind:        {info.kind}")
    click.echo(f"  verified:    {'yes' if info.verified else 'NO'}")
    click.echo(f"  data:        {info.metadata.findings.summary() if info.metadata else '?'}")
    click.echo(
        f"  copies:      {', '.join(f'{c.location} {c.state}' for c in info.copies)}"
        + (f", offsite {offsite}" if offsite is not None else "")
    )
    click.echo(f"  kept:        {', '.join(reasons) or 'not kept by retention'}")
    meta = info.metadata
    if meta is not None:
        _show_metadata(meta, of_listing(settings.backup_dir, infos).get(info.id))
        for found in recorded_anomalies(meta):
            click.echo(f"  anomaly:     {found.get('message')}")
    for problem in info.problems:
        click.echo(f"  ! {problem}")
    _fail_without_metadata(info)


def _show_metadata(meta: BackupMetadata, size: Footprint | None) -> None:
    click.echo(f"  trigger:     {meta.trigger}")
    click.echo(
        f"  source:      {meta.source.path} ({meta.source.journal_mode} mode, "
        f"{meta.source.page_count} pages of {meta.source.page_size} B)"
    )
    if meta.format_version > 1 and size is not None:
        click.echo(
            f"  sizes:       {human_size(size.logical)} database; added "
            f"{human_size(size.added)} when taken; holds {human_size(size.own)} no other "
            f"backup needs; a whole copy (shared pages included) is {human_size(size.stored)} "
            f"(format 2, {meta.compression} level {meta.compression_level})"
        )
    else:
        click.echo(
            f"  sizes:       {human_size(meta.raw_size)} database, "
            f"{human_size(meta.stored_size)} stored ({meta.compression} "
            f"level {meta.compression_level})"
        )
    click.echo(f"  sha256:      {meta.sha256}")
    if meta.encryption is not None:
        click.echo(f"  encrypted:   age, opened by {describe_keys(meta.encryption.recipients)}")
    click.echo(
        f"  verified at: {local_time(meta.verification.verified_at)}"
        + (f" ({meta.verification.error})" if meta.verification.error else "")
    )
    click.echo(f"  checks:      {_checks_line(meta)}")
    print_findings(meta, indent="  ")
    if not meta.checked:
        click.echo("  rows:        not counted yet (the full checks have not run)")
        return
    click.echo("  rows:")
    for table, count in sorted(meta.row_counts.items()):
        click.echo(f"    {table:<28} {count:>12,}")
    for table in sorted(meta.findings.not_counted):
        click.echo(f"    {table:<28} {'not counted':>12}")


def _checks_line(meta: BackupMetadata) -> str:
    """Which checks ran on the snapshot and when; those that have not, said so."""
    ran = [(name, meta.verification.ran(name)) for name in CHECK_NAMES]
    done = ", ".join(f"{name} {local_time(at)}" for name, at in ran if at is not None)
    missing = [name for name, at in ran if at is None]
    if missing:
        return f"{done}; NOT CHECKED YET: {', '.join(missing)} (verify runs them)"
    return done


def _fail_without_metadata(info: Any) -> None:
    """Damaged metadata in every copy is bad input for ``show``: one line, exit 2."""
    if info.metadata is None:
        problem = info.problems[0] if info.problems else "no readable metadata"
        click.echo(f"Error: backup {info.id} is damaged: {problem}", err=True)
        sys.exit(EXIT_CRITICAL)

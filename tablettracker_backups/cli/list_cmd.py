"""``list``: every backup, newest first, with why it is kept and where its copies are."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click

from tablettracker_backups.cli.common import (
    BackupsCommand,
    emit_json,
    json_option,
    settings_command,
)
from tablettracker_backups.display import human_size, local_time
from tablettracker_backups.offsite.policy import copy_states
from tablettracker_backups.offsite.record import read_state
from tablettracker_backups.retention import RetentionPlan, plan_for_backups
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import OffsiteStatus
from tablettracker_backups.store import BackupInfo, BackupStore, newest_good


@click.command("list", cls=BackupsCommand)
@settings_command
@json_option
def list_backups(settings: Settings, as_json: bool) -> None:
    """List backups, newest first, with why each is kept and where its copies are.

    The backup marked * is 'latest': the newest good regular backup, what 'show latest' and
    'restore latest' take (never a pre-restore safety snapshot, never a source-damaged one).

    \b
    Example:
      tablettracker-backups list --json | jq '.[0].id'
    """

    store = BackupStore(settings)
    store.require_folder()
    infos = store.list()
    plan = plan_for_backups(settings, infos, now=datetime.now(timezone.utc))
    latest = newest_good(infos)
    # From the local offsite record only: listing never waits on the network.
    offsite = copy_states(settings, infos)

    record = read_state(settings) if offsite else None

    def as_dict(info: BackupInfo) -> dict[str, Any]:
        document: dict[str, Any] = dict(
            info.to_dict(),
            kept_because=list(plan.reasons(info.id)),
            latest=latest is not None and info.id == latest.id,
        )
        if offsite:
            document["copies"]["offsite"] = offsite[info.id]
            copy = record.copies.get(info.id) if record else None
            document["offsite_encrypted_to"] = (list(copy.recipients) or None) if copy else None
        return document

    if as_json:
        emit_json([as_dict(i) for i in infos])
        return
    if not infos:
        click.echo(f"No backups yet. Take one with: {settings.command_line('backup', where=False)}")
        return
    _print_list(infos, plan, latest, offsite)


def _print_list(
    infos: list[BackupInfo],
    plan: RetentionPlan,
    latest: BackupInfo | None,
    offsite: dict[str, OffsiteStatus],
) -> None:
    shown = {
        i.id: " ".join(f"{c.location[:3]}:{c.state}" for c in i.copies)
        + (f" off:{offsite[i.id]}" if offsite else "")
        for i in infos
    }
    width = max(22, *(len(text) for text in shown.values()))
    click.echo(
        f"  {'ID':<24} {'TAKEN (local time)':<24} {'KIND':<11} {'SIZE':>10} "
        f"{'VERIFIED':<8} {'DATA':<14} {'COPIES':<{width}} KEPT BECAUSE"
    )
    for info in infos:
        reasons = ", ".join(plan.reasons(info.id)) or "(pruned next run)"
        mark = "*" if latest is not None and info.id == latest.id else " "
        click.echo(
            f"{mark} {info.id:<24} {local_time(info.created_at):<24} {info.kind:<11} "
            f"{human_size(info.stored_size):>10} {'yes' if info.verified else 'NO':<8} "
            f"{_data_column(info):<14} {shown[info.id]:<{width}} {reasons}"
        )
        if info.label:
            click.echo(f"    label: {info.label}" + (" (pinned)" if info.pinned else ""))
        for problem in info.problems:
            click.echo(f"    ! {problem}")
    click.echo(
        f"* latest: {latest.id}" if latest else "* latest: none (no good regular backup yet)"
    )
    note = _zone_note([i.created_at for i in infos])
    if note:
        click.echo(note)


def _data_column(info: BackupInfo) -> str:
    """What the checks found in the data, in a few characters."""
    if info.metadata is None:
        return "?"
    found = info.metadata.findings
    if found.source_damaged:
        return "DAMAGED"
    if found.foreign_key_violations:
        return f"fk:{found.foreign_key_violations}"
    if found.not_counted:
        return f"ok ({len(found.not_counted)} n/c)"
    return "ok"


def _zone_note(moments: list[datetime]) -> str | None:
    """When the local zone is not UTC, say which zone the times are in, and that slot names
    (``daily 2026-11-23``) are UTC dates, which can differ near midnight."""
    if not moments:
        return None
    local = moments[0].astimezone()
    offset = local.utcoffset()
    if offset is not None and not offset and local.tzname() in ("UTC", "GMT", "Z"):
        return None
    return (
        f"Times are local ({local.tzname()}, UTC{local:%z}); retention slot names "
        "(hourly/daily/...) use UTC dates and hours."
    )

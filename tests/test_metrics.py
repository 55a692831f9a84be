"""Prometheus metrics, parsed with prometheus_client's own parser: from the CLI, a node_exporter
text file, and the token-protected endpoint of the demo app."""

from __future__ import annotations

import stat
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from tablettracker_backups import metrics
from tablettracker_backups.backup import create_backup
from tablettracker_backups.cli import cli
from tablettracker_backups.runner import run
from tablettracker_backups.settings import Settings
from tablettracker_backups.store import BackupStore
from tablettracker_backups.web.state import get_state
from tests.conftest import backdate

#: The names the issue promises, exactly.
NAMES = {
    "tablettracker_backups_last_success_timestamp_seconds",
    "tablettracker_backups_last_verified_timestamp_seconds",
    "tablettracker_backups_last_attempt_timestamp_seconds",
    "tablettracker_backups_last_duration_seconds",
    "tablettracker_backups_last_size_bytes",
    "tablettracker_backups_backups",
    "tablettracker_backups_health_status",
    "tablettracker_backups_disk_free_bytes",
}
#: Added for the Grafana dashboard (the many-databases issue): recovery point, bytes, damage.
ADDED = {
    "tablettracker_backups_newest_restore_point_timestamp_seconds",
    "tablettracker_backups_stored_bytes",
    "tablettracker_backups_damaged_copies",
    # The real sizes (issue 20): the database's, and what the newest backup added.
    "tablettracker_backups_logical_bytes",
    "tablettracker_backups_last_added_bytes",
}


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)], through prometheus_client's parser."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def one(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    [(_, value)] = samples[name]
    return value


def test_metrics_read_the_folder_and_status_at_scrape_time(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    result = run(settings)
    assert result.backup is not None
    meta = result.backup.metadata
    samples = parse(metrics.render(settings).decode())
    assert set(samples) == NAMES | ADDED  # no offsite store configured: no offsite_behind
    # Every series names its database, so one dashboard and one rule set serve a site.
    assert {lab["database"] for name in samples for lab, _ in samples[name]} == {
        settings.database_name
    }
    assert one(samples, "tablettracker_backups_stored_bytes") == meta.stored_size
    assert one(samples, "tablettracker_backups_damaged_copies") == 0
    assert one(
        samples, "tablettracker_backups_newest_restore_point_timestamp_seconds"
    ) == pytest.approx(meta.created_at.timestamp(), abs=1e-3)
    assert one(samples, "tablettracker_backups_last_success_timestamp_seconds") == pytest.approx(
        meta.created_at.timestamp(), abs=1e-3
    )
    assert one(samples, "tablettracker_backups_last_size_bytes") == meta.stored_size
    assert one(samples, "tablettracker_backups_last_added_bytes") == meta.stored_size
    assert one(samples, "tablettracker_backups_logical_bytes") == meta.raw_size
    assert one(samples, "tablettracker_backups_last_duration_seconds") == meta.durations["total"]
    assert one(samples, "tablettracker_backups_health_status") == 0
    verified = one(samples, "tablettracker_backups_last_verified_timestamp_seconds")
    assert verified >= meta.created_at.timestamp()
    assert one(samples, "tablettracker_backups_last_attempt_timestamp_seconds") >= (
        meta.created_at.timestamp() - 1
    )
    slots = {labels["slot"]: value for labels, value in samples["tablettracker_backups_backups"]}
    assert set(slots) == {
        "minutely",
        "hourly",
        "daily",
        "weekly",
        "monthly",
        "yearly",
        "pre-restore",
    }
    assert slots["hourly"] == 1 and slots["pre-restore"] == 0
    disk = {labels["folder"]: v for labels, v in samples["tablettracker_backups_disk_free_bytes"]}
    assert set(disk) == {"primary", "secondary"} and disk["primary"] > 0

    # Nothing is cached in the process: a backup taken elsewhere shows at the next scrape.
    backdate(settings, meta.id, timedelta(hours=2))
    newer = create_backup(settings)
    again = parse(metrics.render(settings).decode())
    assert one(again, "tablettracker_backups_last_success_timestamp_seconds") == pytest.approx(
        newer.metadata.created_at.timestamp(), abs=1e-3
    )
    assert {lab["slot"]: v for lab, v in again["tablettracker_backups_backups"]}["hourly"] == 2


def test_no_backup_yet_reads_as_never(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    settings.backup_dir.mkdir(mode=0o700)
    samples = parse(metrics.render(settings).decode())
    assert one(samples, "tablettracker_backups_last_success_timestamp_seconds") == 0
    assert "tablettracker_backups_last_size_bytes" not in samples
    assert "tablettracker_backups_health_status" not in samples  # no report saved yet


def test_health_status_and_offsite_behind(make_settings: Callable[..., Settings]) -> None:
    # An offsite store that was never reached: the local record says everything is behind.
    settings = make_settings(s3_bucket="nowhere", s3_endpoint_url="http://127.0.0.1:9")
    create_backup(settings)
    from tablettracker_backups.health import check_health, save_report

    report = check_health(settings)
    save_report(settings, report)
    samples = parse(metrics.render(settings).decode())
    assert one(samples, "tablettracker_backups_offsite_behind") == 1
    assert one(samples, "tablettracker_backups_health_status") == report.exit_code == 1


def test_cli_prints_and_writes_a_textfile_atomically(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    run(settings)
    args = ["--database", str(settings.database), "--backup-dir", str(settings.backup_dir)]
    printed = CliRunner().invoke(cli, ["metrics", *args])
    assert printed.exit_code == 0, printed.output
    assert set(parse(printed.output)) >= NAMES
    target = tmp_path / "textfile" / "backups.prom"
    target.parent.mkdir()
    written = CliRunner().invoke(cli, ["metrics", "--textfile", str(target), *args])
    assert written.exit_code == 0 and written.output == ""
    assert set(parse(target.read_text())) >= NAMES
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["backups.prom"]  # no temporary left
    missing = CliRunner().invoke(
        cli,
        ["metrics", "--database", str(settings.database), "--backup-dir", str(tmp_path / "typo")],
    )
    assert missing.exit_code == 2 and "no backup folder" in missing.output


def test_metrics_endpoint_needs_the_task_token(demo_app: Flask) -> None:
    client = demo_app.test_client()
    token = demo_app.config["BACKUPS_TASK_TOKEN"]
    url = "/tasks/backups/metrics"
    with demo_app.app_context():
        settings = get_state().settings
    create_backup(settings)
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get(url, headers={"Authorization": f"Bearer {token}x"}).status_code == 401
    assert client.get(url, headers={"Authorization": f"Basic {token}"}).status_code == 401
    assert client.post(url, headers={"Authorization": f"Bearer {token}"}).status_code == 405
    response = client.get(url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = parse(response.get_data(as_text=True))
    assert one(samples, "tablettracker_backups_last_size_bytes") == (
        BackupStore(settings).list()[0].stored_size
    )


def test_metrics_endpoint_is_404_without_a_token(tmp_path: Path) -> None:
    from tablettracker_backups.demo import create_app

    app = create_app(
        {
            "INSTANCE_PATH": tmp_path / "instance-no-token",
            "TESTING": True,
            "BACKUPS_TASK_TOKEN": None,
        }
    )
    client = app.test_client()
    assert client.get("/tasks/backups/metrics").status_code == 404
    assert (
        client.get(
            "/tasks/backups/metrics", headers={"Authorization": "Bearer anything"}
        ).status_code
        == 404
    )


def test_each_database_has_its_own_series_and_damage_is_counted(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from tablettracker_backups.verify import verify_backup
    from tests.conftest import flip_byte, make_db

    tablets = make_settings()
    audit_db = tmp_path / "audit.db"
    make_db(audit_db)
    audit = make_settings(database=audit_db, dir=tmp_path / "audit-backups", secondary_dir=None)
    first = create_backup(tablets).metadata
    create_backup(tablets)
    other = create_backup(audit).metadata
    flip_byte(tablets.secondary_dir / first.data_file)  # type: ignore[operator]
    verify_backup(BackupStore(tablets), first.id)
    registry = metrics.registry([tablets, audit])
    from prometheus_client.exposition import generate_latest

    samples = parse(generate_latest(registry).decode())
    by_db = {lab["database"]: v for lab, v in samples["tablettracker_backups_damaged_copies"]}
    assert by_db == {tablets.database_name: 1, audit.database_name: 0}
    stored = {lab["database"]: v for lab, v in samples["tablettracker_backups_stored_bytes"]}
    assert stored[audit.database_name] == other.stored_size
    assert stored[tablets.database_name] == sum(
        i.metadata.stored_size for i in BackupStore(tablets).list() if i.metadata
    )
    folders = {
        (lab["database"], lab["folder"])
        for lab, _ in samples["tablettracker_backups_disk_free_bytes"]
    }
    assert folders == {
        (tablets.database_name, "primary"),
        (tablets.database_name, "secondary"),
        (audit.database_name, "primary"),
    }


def test_the_grafana_dashboard_queries_only_metrics_that_exist(
    make_settings: Callable[..., Settings],
) -> None:
    """The shipped dashboard (a panel per database, repeated over the ``database`` variable)
    asks only for series the collector really exports, each filtered by the database."""
    import json
    import re
    from importlib.resources import files

    dashboard = json.loads(
        files("tablettracker_backups").joinpath("grafana/tablettracker-backups.json").read_text()
    )
    from tablettracker_backups.health import check_health, save_report

    # An offsite store (never reached) so that every series exists, offsite_behind included.
    settings = make_settings(s3_bucket="nowhere", s3_endpoint_url="http://127.0.0.1:9")
    create_backup(settings)
    save_report(settings, check_health(settings))
    exported = set(parse(metrics.render(settings).decode()))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "database")
    assert exprs and all('database=~"$database"' in e for e in exprs), exprs
    used = {
        m
        for e in [*exprs, variable["query"]["query"]]
        for m in re.findall(r"tablettracker_backups_\w+", e)
    }
    assert used and used <= exported, used - exported
    assert {p["repeat"] for p in dashboard["panels"] if p.get("type") != "row"} <= {
        "database",
        None,
    }

"""A site of named databases (``BACKUPS_DATABASES``, ``[databases.NAME]``): parsing from the
app's config and a TOML file, each database's own namespace and identity, ``run`` over all of
them (one failing never stops the others), ``--database NAME``, and the task endpoint. Real
SQLite files and folders; the CLI through click's runner and once as a real subprocess."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flask import Flask

from tablettracker_backups.cli import cli
from tablettracker_backups.cli.common import report_each_database
from tablettracker_backups.demo import create_app
from tablettracker_backups.errors import ConfigError, LockedError
from tablettracker_backups.identity import adopt_command
from tablettracker_backups.settings import Settings
from tablettracker_backups.site import Site, build_site
from tablettracker_backups.sources import (
    app_layer,
    file_layer,
    merge,
    option_layer,
    resolve,
)
from tests.conftest import login, make_db
from tests.netkit import http_sink

ROOT = Path(__file__).resolve().parent.parent
ROOMY = {"BACKUPS_DISK_WARNING": "1MB", "BACKUPS_DISK_CRITICAL": "1MB"}


def audit_db(path: Path) -> Path:
    """A small second database: an audit log."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)")
        conn.executemany("INSERT INTO events (what) VALUES (?)", [("a",), ("b",), ("c",)])
    conn.close()
    return path


def site_from_app(config: dict[str, Any], instance: Path) -> Site:
    return build_site(app_layer(config, instance_path=instance))


def write_site(tmp_path: Path, *, audit_first: bool = False, extra: str = "") -> Path:
    """Two databases under one root in a TOML file; audit overrides keep_daily."""
    tablets = '[databases.tablets]\ndatabase = "tablet_counter.db"\n'
    audit = '[databases.audit]\ndatabase = "audit.db"\nkeep_daily = 7\n'
    tables = audit + tablets if audit_first else tablets + audit
    path = tmp_path / "site.toml"
    path.write_text(
        '[backups]\nbackup_dir = "site-backups"\nkeep_daily = 30\nkeep_recent = "0"\n'
        'disk_warning = "1MB"\ndisk_critical = "1MB"\n' + extra + "\n" + tables
    )
    return path


@pytest.fixture
def site_toml(tmp_path: Path) -> Path:
    make_db(tmp_path / "tablet_counter.db")
    audit_db(tmp_path / "audit.db")
    return write_site(tmp_path)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


# -- parsing --------------------------------------------------------------------------------


def test_the_apps_config_names_a_site_relative_paths_inside_the_instance_folder(
    tmp_path: Path,
) -> None:
    instance = tmp_path / "instance"
    site = site_from_app(
        {
            "BACKUPS_DATABASES": {
                "tablets": "instance/tablet_counter.db",
                "audit": {"database": "audit.db", "keep_daily": 7, "interval": "1d"},
            },
            "BACKUPS_KEEP_DAILY": 30,
        },
        instance,
    )
    assert site.named and site.names == ("tablets", "audit")
    tablets, audit = site.databases
    assert tablets.database == instance / "tablet_counter.db"
    assert audit.database == instance / "audit.db"
    # No BACKUPS_DIR: backups/<name>/ beside each database.
    assert tablets.backup_dir == instance / "backups" / "tablets"
    assert audit.backup_dir == instance / "backups" / "audit"
    # The override is the audit database's only.
    assert (tablets.retention.daily, audit.retention.daily) == (30, 7)
    assert (tablets.interval, audit.interval) == (3600, 86400)
    assert audit.origins["keep_daily"] == (
        "7",
        "app config BACKUPS_DATABASES['audit']['keep_daily']",
    )
    assert tablets.origins["keep_daily"] == ("30", "app config BACKUPS_KEEP_DAILY")
    assert audit.origins["database_name"][1] == "app config BACKUPS_DATABASES key 'audit'"


def test_a_toml_file_names_a_site_and_each_root_gets_a_namespace(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        '[backups]\nbackup_dir = "/srv/b"\nsecondary_dir = "/mnt/usb/b"\ns3_bucket = "bk"\n'
        's3_prefix = "shop/"\n'
        '[databases]\ntablets = "tablet_counter.db"\n'
        '[databases.audit]\ndatabase = "logs/audit.db"\nkeep_hourly = 2\n'
        'secondary_dir = "/mnt/other/audit-copies"\ns3_prefix = "audit-only/"\n'
    )
    site = build_site(file_layer(path))
    tablets, audit = site.databases
    assert tablets.database == tmp_path / "tablet_counter.db"
    assert audit.database == tmp_path / "logs" / "audit.db"
    assert (tablets.backup_dir, audit.backup_dir) == (Path("/srv/b/tablets"), Path("/srv/b/audit"))
    # A site-wide root is namespaced; a database's own folder or prefix is used as written.
    assert tablets.secondary_dir == Path("/mnt/usb/b/tablets")
    assert audit.secondary_dir == Path("/mnt/other/audit-copies")
    assert tablets.s3 is not None and audit.s3 is not None
    assert (tablets.s3.prefix, audit.s3.prefix) == ("shop/tablets/", "audit-only/")
    assert (tablets.retention.hourly, audit.retention.hourly) == (24, 2)
    assert tablets.origins["dir"][1].endswith("backup_dir (the site's root, + tablets)")


def test_the_default_offsite_prefix_and_an_rclone_remote_are_namespaced(tmp_path: Path) -> None:
    make_db(tmp_path / "a.db")
    config = {"BACKUPS_DATABASES": {"one": "a.db", "two": "b.db"}, "BACKUPS_S3_BUCKET": "bk"}
    one, two = site_from_app(config, tmp_path).databases
    assert one.s3 is not None and two.s3 is not None
    assert (one.s3.prefix, two.s3.prefix) == (
        "tablettracker-backups/one/",
        "tablettracker-backups/two/",
    )
    config = {"BACKUPS_DATABASES": {"one": "a.db", "two": "b.db"}, "BACKUPS_RCLONE_REMOTE": "gd:"}
    one, two = site_from_app(config, tmp_path).databases
    assert one.rclone is not None and two.rclone is not None
    assert (one.rclone.remote, two.rclone.remote) == ("gd:one", "gd:two")


def test_the_environment_beats_a_databases_own_entry_as_it_beats_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[databases.audit]\ndatabase = "audit.db"\nkeep_daily = 7\n')
    layers = merge(file_layer(path), option_layer({"keep_daily": 3}))
    (audit,) = build_site(layers).databases
    assert audit.retention.daily == 3


def test_a_site_of_one_is_exactly_the_settings_of_today(tmp_path: Path) -> None:
    config = {"BACKUPS_DATABASE": "instance/tablet_counter.db", "BACKUPS_KEEP_DAILY": 9}
    layer = app_layer(config, instance_path=tmp_path)
    site = build_site(layer)
    assert not site.named
    assert site.databases == (resolve(layer),)
    assert site.one().origins == resolve(layer).origins
    assert site.one().selector is None


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (
            {"BACKUPS_DATABASE": "x.db", "BACKUPS_DATABASES": {"a": "a.db"}},
            "set BACKUPS_DATABASE or BACKUPS_DATABASES, not both",
        ),
        ({"BACKUPS_DATABASES": {"a/b": "a.db"}}, "BACKUPS_DATABASES: each database's name must"),
        ({"BACKUPS_DATABASES": {"..": "a.db"}}, "each database's name must be a short name"),
        ({"BACKUPS_DATABASES": {}}, "must name at least one database"),
        ({"BACKUPS_DATABASES": {"a": {"keep_dayly": 3}}}, "did you mean 'keep_daily'"),
        ({"BACKUPS_DATABASES": {"a": {"keep_daily": 3}}}, "names no database file"),
        ({"BACKUPS_DATABASES": {"a": {"database": "a.db", "database_name": "b"}}}, "its key"),
        (
            {"BACKUPS_DATABASES": {"a": "a.db", "b": {"database": "b.db", "dir": "backups/a"}}},
            "databases 'a' and 'b' share the backup folder",
        ),
        ({"BACKUPS_DATABASES": {"a": "a.db", "b": "./a.db"}}, "share the file"),
    ],
)
def test_a_bad_site_is_refused_in_one_line(
    tmp_path: Path, config: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        site_from_app(config, tmp_path)
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


# -- the command line -------------------------------------------------------------------------


def test_run_backs_up_each_database_into_its_own_namespace(site_toml: Path) -> None:
    result = invoke("run", "--config", str(site_toml), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["databases"]) == {"tablets", "audit"} and report["exit_code"] == 0
    root = site_toml.parent / "site-backups"
    identities = {}
    for name in ("tablets", "audit"):
        backup_id = report["databases"][name]["backup"]["id"]
        other = "audit" if name == "tablets" else "tablets"
        assert (root / name / f"{backup_id}.db.zst").is_file()
        assert not (root / other / f"{backup_id}.db.zst").exists()
        identities[name] = json.loads((root / name / "database.json").read_text())
    assert identities["tablets"]["name"] == "tablets"
    assert identities["audit"]["name"] == "audit"
    assert identities["tablets"]["path"] != identities["audit"]["path"]
    # Each folder holds only its own database's data.
    listed = invoke("list", "--config", str(site_toml), "--database", "audit", "--json")
    assert [e["id"] for e in json.loads(listed.stdout)] == [
        report["databases"]["audit"]["backup"]["id"]
    ]


def test_run_goes_on_past_a_broken_database_and_the_report_names_it(tmp_path: Path) -> None:
    # The broken database comes first: a run that stopped there would back up nothing.
    make_db(tmp_path / "tablet_counter.db")
    site = write_site(tmp_path, audit_first=True)  # audit.db does not exist
    result = invoke("run", "--config", str(site))
    assert result.exit_code == 2, result.output
    out = result.stdout
    assert out.index("== audit (") < out.index("== tablets (")
    assert "Backed up: " in out.split("== tablets (")[1]
    assert out.rstrip().endswith("Site: audit FAILED, tablets ok (exit 2)")
    assert "Error: audit: " in result.stderr and "audit.db" in result.stderr
    backups = list((tmp_path / "site-backups" / "tablets").glob("*.db.zst"))
    assert len(backups) == 1


def test_run_over_a_site_as_a_real_process(tmp_path: Path) -> None:
    make_db(tmp_path / "tablet_counter.db")
    site = write_site(tmp_path, audit_first=True)  # audit.db does not exist
    done = subprocess.run(
        [sys.executable, "-m", "tablettracker_backups", "run", "--config", str(site), "--json"],
        cwd=ROOT,
        env={**os.environ, **ROOMY},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    report = json.loads(done.stdout)
    assert report["exit_code"] == 2
    assert list(report["databases"]) == ["audit", "tablets"]
    audit, tablets = report["databases"]["audit"], report["databases"]["tablets"]
    assert audit["ok"] is False and "audit.db" in audit["error"]
    assert tablets["ok"] is True and tablets["backup"]["id"]
    assert tablets["health"]["status"] == "ok"
    assert "Traceback" not in done.stderr


def test_a_shared_ping_url_is_pinged_once_with_the_worst_exit_code(tmp_path: Path) -> None:
    # One dead-man check for the site: a later database's success must not hide a failure.
    make_db(tmp_path / "tablet_counter.db")
    with http_sink() as sink:
        site = write_site(
            tmp_path, audit_first=True, extra=f'ping_url = "http://{sink.base}/check"'
        )
        result = invoke("run", "--config", str(site))
        assert result.exit_code == 2, result.output
        seen = sink.wait_for(2)
    assert [r.path for r in seen] == ["/check/start", "/check/2"]
    body = seen[1].body.decode()
    assert "[audit] " in body and "audit.db does not exist" in body
    assert "[tablets] " in body and "exit 0" in body


def test_database_picks_one_by_name_or_by_file(site_toml: Path) -> None:
    made = invoke("backup", "--config", str(site_toml), "--database", "audit", "--json")
    assert made.exit_code == 0, made.output
    backup_id = json.loads(made.stdout)["id"]
    root = site_toml.parent / "site-backups"
    assert (root / "audit" / f"{backup_id}.db.zst").is_file()
    assert not (root / "tablets").exists()
    by_path = invoke(
        "list",
        "--config",
        str(site_toml),
        "--database",
        str(site_toml.parent / "audit.db"),
        "--json",
    )
    assert [e["id"] for e in json.loads(by_path.stdout)] == [backup_id]
    # A picked database is reported as a site of one: today's run JSON.
    ran = invoke("run", "--config", str(site_toml), "--database", "tablets", "--json")
    assert ran.exit_code == 0, ran.output
    assert "databases" not in json.loads(ran.stdout)
    assert json.loads(ran.stdout)["backup"]["id"]


@pytest.mark.parametrize("command", ["backup", "verify", "show"])
def test_a_one_database_command_on_a_site_of_two_asks_which(site_toml: Path, command: str) -> None:
    args = [command, "--config", str(site_toml)] + (["latest"] if command == "show" else [])
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: this site has 2 databases (tablets, audit) and this command works on one: "
        "pick it with --database NAME"
    ]
    assert not (site_toml.parent / "site-backups").exists()


def test_a_name_that_is_not_in_the_site_lists_the_names(site_toml: Path) -> None:
    result = invoke("backup", "--config", str(site_toml), "--database", "sessions")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: --database sessions: neither the name nor the file of a database of this "
        "site (its databases: tablets, audit)"
    )


def test_both_database_settings_at_once_is_one_line(
    site_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKUPS_DATABASE", str(site_toml.parent / "tablet_counter.db"))
    result = invoke("status", "--config", str(site_toml))
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: set BACKUPS_DATABASE or BACKUPS_DATABASES, not both")


def test_a_bad_name_in_the_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[databases."a/b"]\ndatabase = "a.db"\n')
    result = invoke("run", "--config", str(path))
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "databases: each database's name must be a short name" in line


def test_health_and_status_have_a_section_per_database(site_toml: Path) -> None:
    assert invoke("run", "--config", str(site_toml)).exit_code == 0
    health = invoke("health", "--config", str(site_toml), "--json")
    assert health.exit_code == 0, health.output
    report = json.loads(health.stdout)
    assert set(report["databases"]) == {"tablets", "audit"}
    assert report["databases"]["audit"]["status"] == "ok"
    status = invoke("status", "--config", str(site_toml))
    assert status.exit_code == 0, status.output
    tablets, audit = status.stdout.split("== audit (")
    assert "BACKUPS_KEEP_DAILY    = 30" in tablets and "BACKUPS_KEEP_DAILY    = 7" in audit
    assert str(site_toml.parent / "site-backups" / "audit") in audit


def test_hints_pick_the_database_they_are_about(site_toml: Path) -> None:
    site = build_site(file_layer(site_toml))
    audit = site.pick("audit").one()
    assert audit.command_line("restore", "X") == (
        f"tablettracker-backups restore X --database audit --config {site_toml}"
    )
    # A hint that names the database itself is not given a second --database.
    assert audit.command_line("adopt", "--database", "a.db").count("--database") == 1
    assert adopt_command(audit) == (
        f"tablettracker-backups adopt --database audit --config {site_toml}"
    )


# -- the host app ------------------------------------------------------------------------------


@pytest.fixture
def site_app(tmp_path: Path) -> Flask:
    instance = tmp_path / "instance"
    app = create_app(
        {
            "INSTANCE_PATH": instance,
            "TESTING": True,
            "BACKUPS_LOCK_TIMEOUT": 0,
            "BACKUPS_DATABASE": None,
            # audit first, and missing: the run must go on to the tablets.
            "BACKUPS_DATABASES": {
                "audit": "instance/audit.db",
                "tablets": "instance/tablet_counter.db",
            },
            "BACKUPS_DISK_WARNING": "1MB",
            "BACKUPS_DISK_CRITICAL": "1MB",
        }
    )
    return app


def test_the_task_endpoint_runs_the_whole_site(site_app: Flask, tmp_path: Path) -> None:
    token = site_app.config["BACKUPS_TASK_TOKEN"]
    response = site_app.test_client().post(
        "/tasks/backups/run", headers={"Authorization": f"Bearer {token}"}
    )
    body = response.get_json()
    # audit.db is missing: it could not start (500, the worst), the tablets ran all the same.
    assert response.status_code == 500
    assert body["ok"] is False and body["exit_code"] == 2
    assert body["databases"]["audit"]["ok"] is False
    assert "audit.db" in body["databases"]["audit"]["error"]
    tablets = body["databases"]["tablets"]
    assert tablets["ok"] is True and tablets["backup"]["id"]
    instance = tmp_path / "instance"
    assert (instance / "backups" / "tablets" / f"{tablets['backup']['id']}.db.zst").is_file()
    # Once the audit database exists, the whole site runs: 200.
    audit_db(instance / "audit.db")
    again = site_app.test_client().post(
        "/tasks/backups/run", headers={"Authorization": f"Bearer {token}"}
    )
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["databases"]["audit"]["backup"]["id"]


def test_the_pages_show_every_database_of_the_site(site_app: Flask, tmp_path: Path) -> None:
    audit_db(tmp_path / "instance" / "audit.db")
    client = site_app.test_client()
    login(client, "admin", site_app.config["DEMO_PASSWORD"])
    page = client.get("/admin/backups/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    # One row per database (tests/test_site_pages.py has the rest), each leading to its pages.
    for name in ("audit", "tablets"):
        assert f'href="/admin/backups/db/{name}/"' in html
    own = client.get("/admin/backups/db/audit/")
    assert str(tmp_path / "instance" / "backups" / "audit") in own.get_data(as_text=True)
    # The host app's own pages are untouched.
    assert client.get("/").status_code in (200, 302)


def test_flask_backups_reads_the_site_from_the_apps_config(site_app: Flask, tmp_path: Path) -> None:
    audit_db(tmp_path / "instance" / "audit.db")
    runner = site_app.test_cli_runner()
    asked = runner.invoke(args=["backups", "backup"])
    assert asked.exit_code == 2
    assert "this site has 2 databases (audit, tablets)" in asked.stderr
    made = runner.invoke(args=["backups", "backup", "--database", "tablets", "--json"])
    assert made.exit_code == 0, made.output
    backup_id = json.loads(made.stdout)["id"]
    assert (tmp_path / "instance" / "backups" / "tablets" / f"{backup_id}.db.zst").is_file()
    ran = runner.invoke(args=["backups", "run", "--json"])
    assert ran.exit_code == 0, ran.output
    assert set(json.loads(ran.stdout)["databases"]) == {"audit", "tablets"}


def test_metrics_cover_every_database_of_the_site(
    site_toml: Path, site_app: Flask, tmp_path: Path
) -> None:
    """One scrape, every database, each series labelled with its name (CLI and endpoint)."""
    from prometheus_client.parser import text_string_to_metric_families

    def databases(text: str) -> set[str]:
        return {
            sample.labels["database"]
            for family in text_string_to_metric_families(text)
            if family.name == "tablettracker_backups_last_success_timestamp_seconds"
            for sample in family.samples
        }

    assert invoke("run", "--config", str(site_toml)).exit_code == 0
    printed = invoke("metrics", "--config", str(site_toml))
    assert printed.exit_code == 0, printed.output
    assert databases(printed.stdout) == {"tablets", "audit"}
    picked = invoke("metrics", "--config", str(site_toml), "--database", "audit")
    assert databases(picked.stdout) == {"audit"}

    audit_db(tmp_path / "instance" / "audit.db")
    token = site_app.config["BACKUPS_TASK_TOKEN"]
    client = site_app.test_client()
    client.post("/tasks/backups/run", headers={"Authorization": f"Bearer {token}"})
    scraped = client.get("/tasks/backups/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scraped.status_code == 200
    assert databases(scraped.get_data(as_text=True)) == {"audit", "tablets"}


def test_one_databases_error_becomes_its_section_and_the_others_still_report(
    site_toml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = build_site(file_layer(site_toml))
    seen: list[str] = []

    def show(settings: Settings) -> int:
        seen.append(settings.database_name)
        if settings.database_name == "tablets":
            raise LockedError("tablets is busy")
        return 0

    def as_dict(settings: Settings) -> dict[str, object]:
        return {"exit_code": show(settings), "name": settings.database_name}

    with pytest.raises(SystemExit) as text_exit:
        report_each_database(site, as_json=False, as_dict=as_dict, show=show)
    out, err = capsys.readouterr()
    assert text_exit.value.code == 2 and seen == ["tablets", "audit"]
    assert "Error: tablets: tablets is busy" in err
    assert out.rstrip().endswith("Site: tablets FAILED, audit ok (exit 2)")
    with pytest.raises(SystemExit) as json_exit:
        report_each_database(site, as_json=True, as_dict=as_dict, show=show)
    body = json.loads(capsys.readouterr().out)
    assert json_exit.value.code == 2 and body["exit_code"] == 2
    assert body["databases"]["tablets"] == {"ok": False, "error": "tablets is busy", "exit_code": 2}
    assert body["databases"]["audit"] == {"exit_code": 0, "name": "audit"}

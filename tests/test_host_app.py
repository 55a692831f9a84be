"""A host app as TabletTracker's developer builds it, driven the way they work.

The app (tests/hostapp/) has an app factory, an instance-relative config
(``instance/config.py``), its own User model and login page and Flask-WTF CSRF, and knows this
package only through ``BackupManager().init_app(app)``. Its scheduled task runs as a real
``flask --app … backups run`` process started in another folder, as PythonAnywhere's task
runner and cron start it; the pages run in this process through Flask's test client.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

HOSTAPP = Path(__file__).resolve().parent / "hostapp" / "tablettracker"
FLASK = Path(sys.executable).parent / "flask"
P = "/admin/backups"


def host_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a scheduled task: no BACKUPS_* of the machine, its own ~/.config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUPS_", "FLASK_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env.update(extra)
    return env


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the host app in its own project folder (so its instance folder is its own),
    configured as the README says, with a secondary folder on "another disk"."""
    root = tmp_path / "project"
    shutil.copytree(HOSTAPP, root / "tablettracker")
    (root / "instance").mkdir()
    (tmp_path / "disk2").mkdir()
    write_config(root, "")
    return root


def write_config(project: Path, extra: str) -> None:
    """``instance/config.py``: the README's relative database path, and ``extra`` lines."""
    mirror = project.parent / "disk2" / "mirror"
    (project / "instance" / "config.py").write_text(
        'BACKUPS_DATABASE = "instance/tablet_counter.db"\n'
        f"BACKUPS_SECONDARY_DIR = {str(mirror)!r}\n"
        'BACKUPS_IS_ADMIN = lambda user: user.role == "admin"\n'
        'BACKUPS_DISK_WARNING = "1MB"\n'
        'BACKUPS_DISK_CRITICAL = "1MB"\n' + extra
    )


@pytest.fixture
def flask_cli(project: Path, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``flask --app <project>/tablettracker backups ARGS`` as a real process started in a
    folder that is neither the project nor its instance folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def call(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FLASK), "--app", str(project / "tablettracker"), "backups", *args],
            cwd=elsewhere,
            env={**host_env(tmp_path), **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )

    return call


@pytest.fixture
def host_app(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Flask]]:
    """The host app's factory, imported from the project folder (as its WSGI file does)."""
    monkeypatch.syspath_prepend(str(project))
    for name in [m for m in sys.modules if m == "tablettracker" or m.startswith("tablettracker.")]:
        monkeypatch.delitem(sys.modules, name)
    import tablettracker

    yield tablettracker.create_app
    for name in [m for m in sys.modules if m == "tablettracker" or m.startswith("tablettracker.")]:
        del sys.modules[name]


def log_in(client: FlaskClient, username: str) -> None:
    """Through the host's own login form, with Flask-WTF's CSRF token."""
    page = client.get("/login").get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert match, page
    response = client.post(
        "/login",
        data={
            "csrf_token": match.group(1),
            "username": username,
            "password": f"{username}-password",
        },
    )
    assert response.status_code == 302, response.get_data(as_text=True)


def task_command(output: str) -> list[str]:
    """The scheduled task's command as ``init`` printed it for PythonAnywhere's Tasks tab."""
    lines = output.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("PythonAnywhere:"))
    return shlex.split(lines[index + 1])


def test_init_writes_no_file_and_its_task_runs_from_any_folder(
    project: Path, tmp_path: Path, flask_cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    instance = project / "instance"
    init = flask_cli("init")
    assert init.returncode == 0, init.stderr
    # The app's config is the configuration: nothing under ~/.config, nothing anywhere else.
    assert not (tmp_path / "xdg").exists()
    assert "Config:          the app's config (no file written" in init.stdout
    command = task_command(init.stdout)
    assert command == [str(FLASK), "--app", str(project / "tablettracker"), "backups", "run"]
    cron = next(line for line in init.stdout.splitlines() if line.startswith("  17 * * * * "))
    assert shlex.join(command) in cron
    # The task, exactly as printed, from another folder: the relative database path in the
    # app's config means the instance folder there too, and both folders get the backup.
    other = tmp_path / "task-runner-home"
    other.mkdir()
    ran = subprocess.run(
        [*command, "--force"], cwd=other, env=host_env(tmp_path), capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Health: OK" in ran.stdout
    stored = instance / "backups" / "tablet_counter"
    assert len(list(stored.glob("*.db.zst"))) == 2
    assert len(list((tmp_path / "disk2" / "mirror").glob("*.db.zst"))) == 2
    assert not (other / "instance").exists() and not list(other.iterdir())


def test_status_shows_where_each_setting_came_from(
    project: Path, flask_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """Option over environment over app config over default, for ``flask backups``."""
    override = tmp_path / "disk2" / "other-mirror"
    shown = flask_cli(
        "status",
        "--json",
        "--secondary-dir",
        str(override),
        env={"BACKUPS_INTERVAL": "2h", "BACKUPS_SECONDARY_DIR": str(tmp_path / "ignored")},
    )
    assert shown.returncode in (0, 1, 2), shown.stderr
    origins = json.loads(shown.stdout)["settings"]
    instance = project / "instance"
    assert origins["BACKUPS_DATABASE"] == {
        "value": str(instance / "tablet_counter.db"),
        "origin": "app config BACKUPS_DATABASE",
    }
    assert origins["BACKUPS_DIR"] == {
        "value": str(instance / "backups" / "tablet_counter"),
        "origin": "default (backups/<name>/ beside the database)",
    }
    assert origins["BACKUPS_SECONDARY_DIR"] == {
        "value": str(override),
        "origin": "command line --secondary-dir",
    }
    assert origins["BACKUPS_INTERVAL"] == {"value": "2h", "origin": "environment BACKUPS_INTERVAL"}
    assert origins["BACKUPS_DISK_WARNING"]["origin"] == "app config BACKUPS_DISK_WARNING"
    # Defaults are not listed: "the rest are defaults".
    assert "BACKUPS_KEEP_DAILY" not in origins
    text = flask_cli("status", env={"BACKUPS_INTERVAL": "2h"}).stdout
    assert (
        f"BACKUPS_DATABASE      = {instance / 'tablet_counter.db'}  [app config BACKUPS_DATABASE]"
        in text
    )
    assert "BACKUPS_INTERVAL      = 2h  [environment BACKUPS_INTERVAL]" in text


@pytest.mark.parametrize(
    ("line", "env", "error"),
    [
        (
            'BACKUPS_SECONDARY_DIRECTORY = "/x"\n',
            {},
            "Error: unknown setting BACKUPS_SECONDARY_DIRECTORY in the app's config; did you "
            "mean BACKUPS_SECONDARY_DIR?",
        ),
        (
            'BACKUPS_KEEP_DAILY = "many"\n',
            {},
            "Error: BACKUPS_KEEP_DAILY must be a whole number, not 'many' (set in app config "
            "BACKUPS_KEEP_DAILY)",
        ),
        (
            "",
            {"BACKUPS_INTERVAL": "bogus"},
            "Error: BACKUPS_INTERVAL must be a duration like 3600, 90m, 1h or 1d, not 'bogus' "
            "(set in environment BACKUPS_INTERVAL)",
        ),
        (
            "",
            {"BACKUPS_DIR": "backups"},
            "Error: BACKUPS_DIR='backups' in the environment is a relative path: from this "
            "process's folder it means {elsewhere}/backups, and web workers and scheduled "
            "tasks start in different folders; give the absolute path, or set it in the app's "
            "config (relative paths there are inside the instance folder)",
        ),
    ],
)
def test_a_bad_or_unknown_key_stops_the_app_at_start_up_in_one_line(
    project: Path,
    tmp_path: Path,
    host_app: Callable[..., Flask],
    flask_cli: Callable[..., subprocess.CompletedProcess[str]],
    monkeypatch: pytest.MonkeyPatch,
    line: str,
    env: dict[str, str],
    error: str,
) -> None:
    from tablettracker_backups.errors import ConfigError

    write_config(project, line)
    ran = flask_cli("run", env=env)
    assert ran.returncode == 2
    assert ran.stderr.strip() == error.format(elsewhere=tmp_path / "elsewhere"), ran.stderr
    assert not (project / "instance" / "backups").exists()
    # The web app fails the same way, at start-up.
    monkeypatch.chdir(tmp_path / "elsewhere")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        host_app()
    assert f"Error: {caught.value}" == error.format(elsewhere=tmp_path / "elsewhere")


def findings_on_the_dashboard(client: FlaskClient) -> list[str]:
    """Every finding the dashboard shows, as ``level: message``: the problems (their check's
    own words are under "What the check said") and the notes under Details."""
    page = client.get(f"{P}/").get_data(as_text=True)

    def text(fragment: str) -> str:
        return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()

    found = [
        f"{level}: {text(said)}"
        for level, said in re.findall(
            r'<li [^>]*data-ttb-problem="[^"]*" data-ttb-level="([^"]+)">.*?'
            r"<summary>What the check said</summary>(.*?)</details>",
            page,
            re.S,
        )
    ]
    found += [
        f"{level}: {text(note)}"
        for level, note in re.findall(
            r'<li data-ttb-note="[^"]*" data-ttb-level="([^"]+)">(.*?)</li>', page, re.S
        )
    ]
    return found


def test_the_scheduled_task_and_the_pages_report_the_same_findings(
    project: Path,
    tmp_path: Path,
    host_app: Callable[..., Flask],
    flask_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    ran = flask_cli("run", "--json")
    assert ran.returncode == 0, ran.stderr
    backup_id = json.loads(ran.stdout)["backup"]["id"]
    # A copy goes missing from the secondary folder: a warning both must report.
    mirror = tmp_path / "disk2" / "mirror"
    for copy in mirror.glob(f"{backup_id}.*"):
        copy.unlink()
    health = flask_cli("health", "--json")
    assert health.returncode == 0, health.stdout
    from_task = [f"{f['level']}: {f['message']}" for f in json.loads(health.stdout)["findings"]]
    assert from_task == [
        f"ok: 1 secondary cop(ies) missing or damaged ({backup_id}); the next run rebuilds "
        "them from a sound copy"
    ]
    client = host_app().test_client()
    log_in(client, "boss")
    assert findings_on_the_dashboard(client) == from_task
    # The secondary disk goes away: what the scheduled run itself reports, a page load after
    # it reports too.
    shutil.rmtree(mirror)
    mirror.write_text("not a folder")
    rerun = flask_cli("run", "--json", "--force")
    assert rerun.returncode == 1, rerun.stdout
    run_health = [
        f"{f['level']}: {f['message']}" for f in json.loads(rerun.stdout)["health"]["findings"]
    ]
    assert any(line.startswith("warning: ") for line in run_health), run_health
    assert findings_on_the_dashboard(client) == run_health


def test_pages_behind_the_hosts_own_login_and_admin_rule(
    host_app: Callable[..., Flask],
) -> None:
    client = host_app().test_client()
    assert client.get(f"{P}/").status_code == 302  # to the host's login page
    log_in(client, "clerk")
    assert client.get(f"{P}/").status_code == 403
    boss = host_app().test_client()
    log_in(boss, "boss")
    page = boss.get(f"{P}/")
    assert page.status_code == 200
    # Before any run, the hints name the host app's own commands.
    text = page.get_data(as_text=True)
    assert "<code>flask backups health</code>" in text
    assert ">flask backups init</code>" in text


def test_a_403_for_want_of_an_admin_rule_is_logged_once_with_the_reason(
    project: Path, host_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """The host's User has a role but no is_admin, and BACKUPS_IS_ADMIN is not set: even the
    boss gets 403, and the log says why, once."""
    config = project / "instance" / "config.py"
    config.write_text(
        "\n".join(line for line in config.read_text().splitlines() if "IS_ADMIN" not in line)
    )
    app = host_app()
    boss = app.test_client()
    log_in(boss, "boss")
    with caplog.at_level(logging.WARNING, logger="tablettracker_backups"):
        assert boss.get(f"{P}/").status_code == 403
        assert boss.get(f"{P}/backups").status_code == 403
    said = [r.getMessage() for r in caplog.records if "403" in r.getMessage()]
    assert said == [
        "403 on the backup pages: User has no is_admin attribute and BACKUPS_IS_ADMIN is not "
        "set, so no user can see them; set BACKUPS_IS_ADMIN = lambda user: ... in the app's "
        "config, or give the user class an is_admin property (logged once)"
    ]


def test_an_admin_rule_that_says_no_is_not_logged(
    host_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    clerk = host_app().test_client()
    log_in(clerk, "clerk")
    with caplog.at_level(logging.WARNING, logger="tablettracker_backups"):
        assert clerk.get(f"{P}/").status_code == 403
    assert not [r for r in caplog.records if "403" in r.getMessage()]


def readme_snippets(marker: str) -> dict[str, str]:
    """The code blocks of README.md marked ``<!-- snippet: NAME -->``, by NAME."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    found = dict(re.findall(r"<!-- snippet: (\S+) -->\s*```\w*\n(.*?)```", text, re.S))
    return {name: body for name, body in found.items() if name.startswith(marker)}


def test_the_readme_integration_snippets_work_as_written(tmp_path: Path) -> None:
    """The README's app, written to a project folder as it stands, backs up through the
    scheduled task the README gives, from another folder, into the instance folder."""
    snippets = readme_snippets("integration/")
    assert set(snippets) == {"integration/app.py", "integration/user.py"}, set(snippets)
    project = tmp_path / "tablettracker"
    (project / "instance").mkdir(parents=True)
    for name, body in snippets.items():
        (project / name.split("/", 1)[1]).write_text(body)
    from tests.conftest import make_db

    make_db(project / "instance" / "tablet_counter.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ran = subprocess.run(
        [str(FLASK), "--app", str(project / "app.py"), "backups", "run", "--json"],
        cwd=elsewhere,
        env=host_env(tmp_path, BACKUPS_DISK_WARNING="1MB", BACKUPS_DISK_CRITICAL="1MB"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Exit 1: the README's secondary folder (/home/me/backups-mirror) is not on this machine.
    assert ran.returncode == 1, ran.stderr
    result: dict[str, Any] = json.loads(ran.stdout)
    backup_id = result["backup"]["id"]
    stored = project / "instance" / "backups" / "tablet_counter" / f"{backup_id}.db.zst"
    assert stored.is_file()
    assert any("backups-mirror" in w for w in result["warnings"]), result["warnings"]
    # The other way to say who is an admin: the README's User, with no BACKUPS_IS_ADMIN.
    import runpy

    from tablettracker_backups.web.state import default_is_admin

    user_class = runpy.run_path(str(project / "user.py"))["User"]
    assert default_is_admin(user_class(1, "admin"))
    assert not default_is_admin(user_class(2, "staff"))

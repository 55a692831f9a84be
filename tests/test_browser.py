"""What a person does, in a real headless Chromium against the demo served on 127.0.0.1.

The demo runs as a real process (``python -m tablettracker_backups demo``), and the long
actions run in its real detached worker processes. Screenshots go to ``test-artifacts/``: the
dashboard and the restore confirmation, and every page in every state at 390 and 1280 px.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Upper bound for any one wait (a page, a job): generous for a loaded two-core machine.
WAIT_MS = 90_000


@dataclass(frozen=True)
class Demo:
    url: str
    password: str
    instance: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """The demo app served by the real CLI command on a free port."""
    port = _free_port()
    instance = tmp_path / "instance"
    log = (tmp_path / "demo.log").open("w+")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tablettracker_backups",
            "demo",
            "--port",
            str(port),
            "--instance",
            str(instance),
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + WAIT_MS / 1000
        password = None
        while password is None or not _accepts(port):
            assert process.poll() is None, _read(log)
            assert time.monotonic() < deadline, _read(log)
            match = re.search(r"Admin login: admin / (\S+)", _read(log))
            password = match.group(1) if match else None
            time.sleep(0.1)
        # The command it prints for the shell finds the demo's database and first backup.
        printed = re.search(r"From a shell: \S*tablettracker-backups (.+)", _read(log))
        first = re.search(r"First backup (\S+) verified", _read(log))
        assert printed and first, _read(log)
        listed = subprocess.run(
            [sys.executable, "-m", "tablettracker_backups", *shlex.split(printed.group(1))],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0 and first.group(1) in listed.stdout, listed
        yield Demo(f"http://127.0.0.1:{port}", password, instance)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def _read(log: object) -> str:
    assert hasattr(log, "seek") and hasattr(log, "read")
    log.seek(0)
    text: str = log.read()
    return text


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (bash .ci/setup installs it)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _login(page: object, demo: Demo, username: str) -> None:
    page.goto(f"{demo.url}/login")  # type: ignore[attr-defined]
    page.fill("#username", username)  # type: ignore[attr-defined]
    page.fill("#password", demo.password)  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_url(f"{demo.url}/")  # type: ignore[attr-defined]


def _wait_done(page: object) -> str:
    """Wait on a job page until it shows its result; return the result's text."""
    result = page.wait_for_selector("[data-ttb-result]", timeout=WAIT_MS)  # type: ignore[attr-defined]
    text: str = result.inner_text()
    return text


def test_admin_backs_up_edits_and_restores(demo: Demo, browser: object) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    _login(page, demo, "admin")

    # Back up now, from the dashboard; the job page shows progress, then the result.
    page.click("text=Backups")
    page.wait_for_selector("h1:has-text('Backups')")
    page.click("button:has-text('Back up now')")
    assert "Done:" in _wait_done(page)
    backup_id = page.inner_text("a[href*='/backups/2']")
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", backup_id)

    # It is listed, verified.
    page.click("nav.ttb-nav >> text=All backups")
    row = page.locator(f"tr[data-backup-id='{backup_id}']")
    assert "yes" in row.locator("td[data-label=Verified]").inner_text()
    page.screenshot(path=str(ARTIFACTS / "backup-list.png"), full_page=True)

    page.goto(f"{demo.url}/admin/backups/")
    page.wait_for_selector("svg.ttb-chart")
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # Change data in the app: edit a purchase order's supplier.
    page.goto(f"{demo.url}/po/1")
    old_supplier = page.inner_text("#supplier")
    page.click("text=Edit this purchase order")
    page.fill("#supplier", "Changed After Backup Ltd")
    page.click("button:has-text('Save')")
    assert page.inner_text("#supplier") == "Changed After Backup Ltd"

    # Restore the earlier backup: one click from the list, a preview, a typed confirmation.
    page.goto(f"{demo.url}/admin/backups/backups")
    page.locator(f"tr[data-backup-id='{backup_id}'] >> text=Restore…").click()
    page.wait_for_selector("[data-ttb-same]")  # only an edit: every table keeps its row count
    button = page.locator("button:has-text('Restore this backup')")
    assert button.is_disabled()  # the script enables it only once the id is typed
    page.fill("#ttb-confirm", backup_id)
    assert button.is_enabled()
    page.screenshot(path=str(ARTIFACTS / "restore-confirmation.png"), full_page=True)
    button.click()
    result = _wait_done(page)
    assert "Done:" in result and "safety snapshot" in result
    safety = page.get_attribute("[data-ttb-safety]", "data-ttb-safety")
    assert safety and safety != backup_id
    page.screenshot(path=str(ARTIFACTS / "restore-result.png"), full_page=True)

    # The old data is back in the app.
    page.goto(f"{demo.url}/po/1")
    assert page.inner_text("#supplier") == old_supplier

    # The audit log names the admin for each action.
    page.goto(f"{demo.url}/admin/backups/audit")
    audit = page.inner_text("table")
    assert "backup" in audit and "restore" in audit and "admin" in audit
    context.close()


def test_non_admin_cannot_reach_the_pages(demo: Demo, browser: object) -> None:
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    response = page.goto(f"{demo.url}/admin/backups/")
    assert response is not None and "/login" in page.url  # anonymous: sent to log in
    _login(page, demo, "staff")
    assert page.locator("header >> text=Backups").count() == 0
    for path in ("/admin/backups/", "/admin/backups/backups", "/admin/backups/audit"):
        response = page.goto(f"{demo.url}{path}")
        assert response is not None and response.status == 403, path
    context.close()


def test_pages_work_without_javascript(demo: Demo, browser: object) -> None:
    context = browser.new_context(java_script_enabled=False)  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    _login(page, demo, "admin")
    page.goto(f"{demo.url}/admin/backups/")
    page.click("button:has-text('Back up now')")
    # The job page reloads itself (meta refresh) until the worker has finished.
    assert "Done:" in _wait_done(page)
    page.goto(f"{demo.url}/admin/backups/backups")
    backup_id = page.get_attribute("tr[data-backup-id]", "data-backup-id")
    # The list's filter and date jump are a plain GET form.
    page.select_option("select[name=kind]", "manual")
    page.fill("input[name=date]", "2099-01-01")
    page.click("button:has-text('Show')")
    assert "kind=manual" in page.url and "date=2099-01-01" in page.url
    assert page.get_attribute("tr.ttb-target", "data-backup-id") == backup_id
    page.locator(f"tr[data-backup-id='{backup_id}'] >> text=Restore…").click()
    page.fill("#ttb-confirm", "wrong")
    page.click("button:has-text('Restore this backup')")
    assert "Nothing was restored" in page.inner_text("[role=alert]")
    page.fill("#ttb-confirm", "RESTORE")
    page.click("button:has-text('Restore this backup')")
    assert "Done:" in _wait_done(page)
    context.close()


# -- every page, every state, phone and desktop widths -----------------------------------------

WIDTHS = (390, 1280)


def _demo_settings(demo: Demo) -> object:
    from tablettracker_backups.settings import settings_from_mapping

    return settings_from_mapping({"database": demo.instance / "tablet_counter.db"})


def _check_pages(page: object, demo: Demo, state: str, pages: dict[str, str]) -> dict[str, int]:
    """Visit each page at each width: no sideways scroll; a screenshot each. Returns the
    median height of the list's rows at each width (0 when the list is not among the pages)."""
    heights: dict[str, int] = {}
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})  # type: ignore[attr-defined]
        for name, path in pages.items():
            response = page.goto(f"{demo.url}{path}")  # type: ignore[attr-defined]
            expected = 404 if name == "not-found" else 200
            assert response is not None and response.status == expected, (state, name)
            page.wait_for_load_state("load")  # type: ignore[attr-defined]
            scroll = page.evaluate("document.scrollingElement.scrollWidth")  # type: ignore[attr-defined]
            inner = page.evaluate("innerWidth")  # type: ignore[attr-defined]
            shot = ARTIFACTS / f"{state}-{name}-{width}.png"
            page.screenshot(path=str(shot), full_page=True)  # type: ignore[attr-defined]
            assert scroll <= inner, f"{state} {name} at {width} px scrolls sideways: {scroll}"
            if name == "list":
                rows = page.evaluate(  # type: ignore[attr-defined]
                    "[...document.querySelectorAll('tr[data-backup-id]')]"
                    ".map(r => r.getBoundingClientRect().height).sort((a, b) => a - b)"
                )
                heights[f"{width}"] = int(rows[len(rows) // 2]) if rows else 0  # the median
    return heights


def test_no_page_scrolls_sideways_at_phone_or_desktop_width(demo: Demo, browser: object) -> None:
    from datetime import datetime, timezone

    from tablettracker_backups.backup import create_backup
    from tablettracker_backups.fsutil import ensure_private_dir
    from tablettracker_backups.jobs.queue import FAILED, RUNNING, Job, jobs_dir, write_job
    from tablettracker_backups.store import BackupStore
    from tablettracker_backups.verify import verify_backup
    from tests.conftest import flip_byte

    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    _login(page, demo, "admin")
    prefix = "/admin/backups"
    everywhere = {
        "dashboard": f"{prefix}/",
        "list": f"{prefix}/backups",
        "prune": f"{prefix}/prune",
        "audit": f"{prefix}/audit",
    }

    # Empty: a fresh install, no backup yet.
    _check_pages(page, demo, "empty", everywhere)

    # Many backups of every kind, one damaged, the live database changed since; the audit
    # log has the pages', the command line's and a restore's entries.
    settings = _demo_settings(demo)
    from datetime import timedelta

    from tests.conftest import backdate

    kinds = ["manual"] + ["scheduled"] * 22 + ["pre-restore"]
    ids = []
    for hours, kind in enumerate(kinds):  # one a day back, newest first
        backup_id = create_backup(settings, kind=kind, trigger="browser-test").metadata.id  # type: ignore[arg-type]
        backdate(settings, backup_id, timedelta(hours=24 * hours + 1))
        ids.append(backup_id)
    store = BackupStore(settings)  # type: ignore[arg-type]
    damaged = ids[3]
    flip_byte(store.data_path("primary", damaged, "zstd"))
    verify_backup(store, damaged)
    import sqlite3

    conn = sqlite3.connect(settings.database)  # type: ignore[attr-defined]
    with conn:
        conn.execute("DELETE FROM count_sessions WHERE id <= 200")
        conn.execute("CREATE TABLE a_table_with_a_rather_long_name_for_a_phone (x)")
    conn.close()
    subprocess.run(  # an entry from the command line in the audit log
        [
            sys.executable,
            "-m",
            "tablettracker_backups",
            "verify",
            ids[0],
            "--database",
            str(settings.database),
        ],  # type: ignore[attr-defined]
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=True,
        capture_output=True,
    )
    # Jobs: one running (the pages are busy), one failed.
    now = datetime.now(timezone.utc)
    folder = jobs_dir(settings)  # type: ignore[arg-type]
    ensure_private_dir(folder)
    write_job(
        folder,
        Job(
            "00000000000000f1",
            "verify",
            {"id": damaged},
            "ada",
            FAILED,
            now,
            now,
            message=f"backup {damaged} failed verification: primary copy is damaged",
        ),
    )
    write_job(
        folder,
        Job(
            "00000000000000f2",
            "backup",
            {},
            "ada",
            RUNNING,
            now,
            now,
            stage="compress",
            done=40,
            total=100,
        ),
    )
    sound = BackupStore(settings).list()[0].id  # type: ignore[arg-type]
    pages = {
        **everywhere,
        "list-page-2": f"{prefix}/backups?page=2",
        "list-safety": f"{prefix}/backups?kind=safety",
        "detail": f"{prefix}/backups/{sound}",
        "detail-damaged": f"{prefix}/backups/{damaged}",
        "restore": f"{prefix}/backups/{sound}/restore",
        "restore-damaged": f"{prefix}/backups/{damaged}/restore",
        "job-running": f"{prefix}/jobs/00000000000000f2",
        "job-failed": f"{prefix}/jobs/00000000000000f1",
        "not-found": f"{prefix}/backups/20200101T000000Z-abcdef",
    }
    heights = _check_pages(page, demo, "busy", pages)
    # Compact rows: a backup is a line or two on a desktop, a short card on a phone.
    assert 0 < heights["1280"] <= 80, heights
    assert 0 < heights["390"] <= 200, heights
    context.close()

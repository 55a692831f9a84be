"""What a person does, in a real headless Chromium against the demo served on 127.0.0.1.

The demo runs as a real process (``python -m tablettracker_backups demo``), and the long
actions run in its real detached worker processes. Screenshots of the dashboard and the restore
confirmation go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import re
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
    assert "yes" in row.locator("td").nth(4).inner_text()
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
    page.wait_for_selector("table.ttb-diff")
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

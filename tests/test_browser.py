"""What a person does, in a real headless Chromium against the demo served on 127.0.0.1.

The demo runs as a real process (``python -m tablettracker_backups demo``), and the long
actions run in its real detached worker processes. Screenshots go to ``test-artifacts/``: the
dashboard and the restore confirmation, and every page in every state (empty, busy, failed,
damaged) at 360, 390, 1024, 1280 and 1920 px. One browser serves the whole module.
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

from tests.conftest import TIGHT_RETENTION

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
    """The demo app served by the real CLI command on a free port, as a site of one (the
    pages as they were before sites: every test here holds them to that)."""
    yield from serve_demo(tmp_path, "--one-database")


@pytest.fixture
def site_demo(tmp_path: Path) -> Iterator[Demo]:
    """The demo as ``tablettracker-backups demo`` serves it by default: a site of two
    databases, ``tablets`` and ``audit``."""
    yield from serve_demo(tmp_path)


def serve_demo(tmp_path: Path, *options: str) -> Iterator[Demo]:
    """Serve the demo with the real CLI command on a free port until the test is done."""
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
            *options,
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


@pytest.fixture(scope="module")
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
    page.click("summary:has-text('Details')")  # ids, the set-up command and the chart
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
    # The deferred script disables the button (and enables it only once the id is typed);
    # wait for it to have run rather than read the state of a page still loading.
    page.wait_for_selector("button:has-text('Restore this backup'):disabled")
    button = page.locator("button:has-text('Restore this backup')")
    assert button.is_disabled()
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

WIDTHS = (360, 390, 1024, 1280, 1920)
PREFIX = "/admin/backups"

#: Every action button a person may need: each row's, the dashboard's, the warnings'.
ACTIONS = ", ".join(
    f"{scope} {what}"
    for scope in (
        "tr[data-backup-id] .ttb-row-actions",
        ".ttb-points tr",
        ".ttb-problems",
        ".ttb-warning-card",
        ".ttb-actions",
    )
    for what in ("button", "a.ttb-button")
)

#: Each button: fully inside the viewport, and inside every box that clips it (a scroll box
#: that hides it until scrolled counts as clipping: the owner must see it without hunting).
CLIPPED = """(selector) => {
  const width = document.documentElement.clientWidth;
  const bad = [];
  for (const el of document.querySelectorAll(selector)) {
    const r = el.getBoundingClientRect();
    const name = el.textContent.trim() + " @" + Math.round(r.left) + "-" + Math.round(r.right);
    if (r.width === 0 || r.height === 0) { bad.push(name + " not shown"); continue; }
    if (r.left < -0.5 || r.right > width + 0.5) {
      bad.push(name + " outside the viewport"); continue;
    }
    for (let box = el.parentElement; box; box = box.parentElement) {
      const style = getComputedStyle(box);
      if (style.overflowX === "visible" && style.overflowY === "visible") { continue; }
      const b = box.getBoundingClientRect();
      const out = r.left < b.left - 0.5 || r.right > b.right + 0.5;
      if (out || r.top < b.top - 0.5 || r.bottom > b.bottom + 0.5) {
        bad.push(name + " clipped by ." + box.className); break;
      }
    }
  }
  return bad;
}"""


def _demo_settings(demo: Demo) -> object:
    from tablettracker_backups.settings import settings_from_mapping

    return settings_from_mapping({"database": demo.instance / "tablet_counter.db"})


def _check_pages(page: object, demo: Demo, state: str, pages: dict[str, str]) -> dict[str, int]:
    """Visit each page at each width: no sideways scroll, every action button visible and
    unclipped, the restore button on every restorable row, no CSP violation; a screenshot
    each. Returns the median height of the list's rows at each width."""
    heights: dict[str, int] = {}
    violations: list[str] = []
    page.on(  # type: ignore[attr-defined]
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})  # type: ignore[attr-defined]
        for name, path in pages.items():
            response = page.goto(f"{demo.url}{path}")  # type: ignore[attr-defined]
            expected = 404 if name == "not-found" else 200
            assert response is not None and response.status == expected, (state, name)
            assert "default-src 'self'" in response.headers["content-security-policy"]
            page.wait_for_load_state("load")  # type: ignore[attr-defined]
            shot = ARTIFACTS / f"{state}-{name}-{width}.png"
            page.screenshot(path=str(shot), full_page=True)  # type: ignore[attr-defined]
            where = f"{state} {name} at {width} px"
            scroll = page.evaluate("document.scrollingElement.scrollWidth")  # type: ignore[attr-defined]
            assert scroll <= width, f"{where} scrolls sideways: {scroll}"
            assert page.evaluate(CLIPPED, ACTIONS) == [], where  # type: ignore[attr-defined]
            rows = page.locator("tr[data-backup-id]")  # type: ignore[attr-defined]
            restorable = page.locator(  # type: ignore[attr-defined]
                "tr[data-backup-id]:has(td[data-label=Verified] .ttb-yes)"
            )
            with_button = page.locator(  # type: ignore[attr-defined]
                "tr[data-backup-id]:has(td[data-label=Verified] .ttb-yes) >> text=Restore…"
            )
            assert restorable.count() == with_button.count(), where
            if name.startswith("list"):
                found = page.evaluate(  # type: ignore[attr-defined]
                    "[...document.querySelectorAll('tr[data-backup-id]')]"
                    ".map(r => r.getBoundingClientRect().height).sort((a, b) => a - b)"
                )
                heights[f"{name}-{width}"] = int(found[len(found) // 2]) if found else 0
                assert rows.count() == len(found)
    assert violations == [], violations
    return heights


def _login_fresh(browser: object, demo: Demo) -> object:
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    _login(page, demo, "admin")
    return page


def test_every_page_fits_every_width_in_every_state(demo: Demo, browser: object) -> None:
    import sqlite3
    from datetime import datetime, timedelta, timezone

    from tablettracker_backups.backup import create_backup
    from tablettracker_backups.fsutil import ensure_private_dir
    from tablettracker_backups.jobs.queue import DONE, FAILED, RUNNING, Job, jobs_dir, write_job
    from tablettracker_backups.pins import set_pin
    from tablettracker_backups.status import record_run
    from tablettracker_backups.store import BackupStore
    from tablettracker_backups.verify import verify_backup
    from tests.conftest import backdate, flip_byte

    ARTIFACTS.mkdir(exist_ok=True)
    page = _login_fresh(browser, demo)
    settings = _demo_settings(demo)
    store = BackupStore(settings)  # type: ignore[arg-type]
    for backup_id in store.ids():  # the demo's first backup: a truly empty install
        store.delete(backup_id)
    everywhere = {
        "dashboard": f"{PREFIX}/",
        "list": f"{PREFIX}/backups",
        "prune": f"{PREFIX}/prune",
        "audit": f"{PREFIX}/audit",
        "restore-at": f"{PREFIX}/restore-at",
    }
    _check_pages(page, demo, "empty", everywhere)
    # Nothing to verify or prune in an empty folder: not offered.
    page.goto(f"{demo.url}{PREFIX}/")  # type: ignore[attr-defined]
    assert page.locator("text=Verify all backups").count() == 0  # type: ignore[attr-defined]
    assert page.locator("text=Prune (preview first)").count() == 0  # type: ignore[attr-defined]

    # Busy: backups of every kind one a day back, a long label, a damaged one, rows lost (a
    # data-loss warning), a running job, the audit log's entries from every face.
    kinds = ["manual", "auto"] + ["scheduled"] * 21 + ["pre-restore"]
    ids = []
    for hours, kind in enumerate(kinds):
        backup_id = create_backup(settings, kind=kind, trigger="browser-test").metadata.id  # type: ignore[arg-type]
        backdate(settings, backup_id, timedelta(hours=24 * hours + 1))
        ids.append(backup_id)
    set_pin(settings, ids[1], pinned=True, label="before-the-" + "x" * 189, actor="ada")  # type: ignore[arg-type]
    damaged = ids[3]
    flip_byte(store.data_path("primary", damaged, "zstd"))
    verify_backup(store, damaged, notify_owner=False)
    conn = sqlite3.connect(settings.database)  # type: ignore[attr-defined]
    with conn:
        conn.execute("DELETE FROM count_sessions WHERE id > 100")
        conn.execute("CREATE TABLE a_table_with_a_rather_long_name_for_a_phone (x)")
    conn.close()
    found = create_backup(settings, kind="scheduled", trigger="browser-test").metadata.id  # type: ignore[arg-type]
    now = datetime.now(timezone.utc)
    folder = jobs_dir(settings)  # type: ignore[arg-type]
    ensure_private_dir(folder)
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
    sound = found
    past, future = (now - timedelta(days=3)).astimezone(), (now + timedelta(days=3)).astimezone()
    busy = {
        **{k: v for k, v in everywhere.items() if k != "restore-at"},
        "list-safety": f"{PREFIX}/backups?kind=safety",
        "list-auto": f"{PREFIX}/backups?kind=auto",
        "detail": f"{PREFIX}/backups/{sound}",
        "detail-evidence": f"{PREFIX}/backups/{ids[0]}",
        "restore": f"{PREFIX}/backups/{ids[0]}/restore",
        "restore-at-past": f"{PREFIX}/restore-at?date={past:%Y-%m-%d}&time=12:00",
        "restore-at-future": f"{PREFIX}/restore-at?date={future:%Y-%m-%d}&time=12:00",
        "job-running": f"{PREFIX}/jobs/00000000000000f2",
        "not-found": f"{PREFIX}/backups/20200101T000000Z-abcdef",
    }
    heights = _check_pages(page, demo, "busy", busy)
    # Compact rows: a backup is a line or two on a desktop, a short card on a phone.
    assert 0 < heights["list-1280"] <= 80, heights
    assert 0 < heights["list-390"] <= 200, heights
    page.goto(f"{demo.url}{PREFIX}/")  # type: ignore[attr-defined]
    card = page.locator(f"[data-ttb-warning='{found}']")  # type: ignore[attr-defined]
    assert "count_sessions lost 220 of its 320 rows" in card.inner_text()
    assert page.locator("[data-ttb-verdict=warning]").count() == 1  # type: ignore[attr-defined]
    page.goto(f"{demo.url}{busy['restore-at-future']}")  # type: ignore[attr-defined]
    assert page.locator("[data-ttb-future]").count() == 1  # type: ignore[attr-defined]
    assert page.locator(".ttb-points a.ttb-button").count() == 0  # type: ignore[attr-defined]

    # Failed: the last scheduled run failed with a raw error; a verify-all found one damaged
    # backup in the middle of many; a failed job.
    record_run(
        settings,  # type: ignore[arg-type]
        at=now,
        result={"ok": False, "error": "zstd decompress error: Unknown frame descriptor"},
    )
    results = [{"id": i, "ok": i != damaged, "copies": []} for i in ids]
    results[3]["copies"] = [{"location": "primary", "ok": False, "error": "zstd decompress error"}]
    write_job(
        folder,
        Job("00000000000000f2", "backup", {}, "ada", DONE, now, now, message="done"),
    )
    write_job(
        folder,
        Job(
            "00000000000000f3",
            "verify-all",
            {},
            "ada",
            DONE,
            now,
            now,
            message=f"verified {len(ids)} backup(s): 1 damaged",
            result={"results": results},
        ),
    )
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
    failed = {
        "dashboard": f"{PREFIX}/",
        "job-verify-all": f"{PREFIX}/jobs/00000000000000f3",
        "job-failed": f"{PREFIX}/jobs/00000000000000f1",
    }
    _check_pages(page, demo, "failed", failed)
    page.goto(f"{demo.url}{PREFIX}/")  # type: ignore[attr-defined]
    verdict = page.inner_text("[data-ttb-verdict]")  # type: ignore[attr-defined]
    assert verdict.startswith("At risk: ") and "zstd" not in verdict
    first = page.locator(".ttb-problems > li").first  # type: ignore[attr-defined]
    assert first.get_attribute("data-ttb-problem") == "last-run-failed"
    assert first.locator("button:has-text('Back up now')").is_visible()
    # The raw error waits, folded, under "What the check said".
    assert "zstd" not in first.locator(".ttb-problem-words").inner_text()
    said = first.locator("details.ttb-said")
    assert "zstd" in (said.text_content() or "") and said.get_attribute("open") is None
    page.goto(f"{demo.url}{failed['job-verify-all']}")  # type: ignore[attr-defined]
    assert page.locator(".ttb-results li").first.inner_text().startswith(damaged)  # type: ignore[attr-defined]

    # Damaged: a backup known to be damaged, and one damaged in place since its check (its
    # download is refused with a page that says so).
    quiet = ids[5]
    flip_byte(store.data_path("primary", quiet, "zstd"))
    damaged_pages = {
        "detail": f"{PREFIX}/backups/{damaged}",
        "restore": f"{PREFIX}/backups/{damaged}/restore",
    }
    _check_pages(page, demo, "damaged", damaged_pages)
    page.goto(f"{demo.url}{PREFIX}/backups/{quiet}")  # type: ignore[attr-defined]
    with page.expect_response(lambda r: "/download" in r.url) as refused:  # type: ignore[attr-defined]
        page.click("button:has-text('Download')")  # type: ignore[attr-defined]
    assert refused.value.status == 409
    page.wait_for_selector("h1:has-text('Damaged backup')")  # type: ignore[attr-defined]
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})  # type: ignore[attr-defined]
        shot = ARTIFACTS / f"damaged-download-{width}.png"
        page.screenshot(path=str(shot), full_page=True)  # type: ignore[attr-defined]
    assert page.locator("a.ttb-id").count() == 1  # the newest sound backup, linked  # type: ignore[attr-defined]
    page.context.close()  # type: ignore[attr-defined]


# -- the anomaly flow, end to end --------------------------------------------------------------

#: Retention that keeps only the newest backup of an hour: without its pin, the evidence of a
#: data-loss warning would be the next prune's.
TIGHT = {**TIGHT_RETENTION, "BACKUPS_SNAPSHOT_AFTER_WRITE": "off"}


@pytest.fixture
def tight_demo(tmp_path: Path) -> Iterator[Demo]:
    """The demo app with tight retention, served by a real HTTP server on a free port (in a
    thread of this process: the demo command has no retention options)."""
    import threading

    from werkzeug.serving import make_server

    from tablettracker_backups.demo import create_app

    app = create_app({"INSTANCE_PATH": tmp_path / "instance", **TIGHT})
    server = make_server("127.0.0.1", _free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Demo(
            f"http://127.0.0.1:{server.server_port}",
            app.config["DEMO_PASSWORD"],
            tmp_path / "instance",
        )
    finally:
        server.shutdown()
        thread.join(timeout=30)


def _rows(database: Path, table: str) -> int:
    import sqlite3

    conn = sqlite3.connect(database)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def test_lost_rows_warn_keep_their_evidence_and_come_back_from_the_warning(
    tight_demo: Demo, browser: object
) -> None:
    import sqlite3

    from tablettracker_backups.backup import create_backup
    from tablettracker_backups.settings import settings_from_mapping
    from tablettracker_backups.store import BackupStore

    ARTIFACTS.mkdir(exist_ok=True)
    database = tight_demo.instance / "tablet_counter.db"
    settings = settings_from_mapping({"database": database})
    evidence = create_backup(settings, kind="scheduled", trigger="test").metadata.id
    assert _rows(database, "po_lines") == 160
    page = _login_fresh(browser, tight_demo)
    page.on("dialog", lambda dialog: dialog.accept())  # type: ignore[attr-defined]

    # A script deletes a quarter of the purchase-order lines; the owner backs up.
    conn = sqlite3.connect(database)
    with conn:
        conn.execute("DELETE FROM po_lines WHERE id > 120")
    conn.close()
    page.goto(f"{tight_demo.url}{PREFIX}/")  # type: ignore[attr-defined]
    page.click(".ttb-main-actions button:has-text('Back up now')")  # type: ignore[attr-defined]
    assert "Done:" in _wait_done(page)
    page.goto(f"{tight_demo.url}{PREFIX}/")  # type: ignore[attr-defined]
    card = page.locator(".ttb-warning-card")  # type: ignore[attr-defined]
    assert "Table po_lines lost 40 of its 160 rows (25%)" in card.inner_text()
    assert f"Backup {evidence} still has them" in card.inner_text()
    assert page.get_attribute("[data-ttb-verdict]", "data-ttb-verdict") == "warning"  # type: ignore[attr-defined]
    page.set_viewport_size({"width": 390, "height": 900})  # type: ignore[attr-defined]
    page.screenshot(path=str(ARTIFACTS / "anomaly-dashboard-390.png"), full_page=True)  # type: ignore[attr-defined]
    assert page.evaluate(CLIPPED, ACTIONS) == []  # type: ignore[attr-defined]
    page.set_viewport_size({"width": 1280, "height": 900})  # type: ignore[attr-defined]

    # The scheduled run (through its URL) and a prune from the pages keep the evidence.
    token = (tight_demo.instance / "task_token.txt").read_text().strip()
    create_backup(settings, kind="scheduled", trigger="test")  # one more for prune to take
    answer = page.request.post(  # type: ignore[attr-defined]
        f"{tight_demo.url}/tasks/backups/run", headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status == 200
    body = answer.json()
    assert body["pruned"] and evidence not in body["pruned"]
    page.goto(f"{tight_demo.url}{PREFIX}/prune")  # type: ignore[attr-defined]
    if page.locator("button:has-text('Delete')").count():  # type: ignore[attr-defined]
        page.click("button:has-text('Delete')")  # type: ignore[attr-defined]
        page.wait_for_selector("[data-ttb-pruned]")  # type: ignore[attr-defined]
    assert evidence in BackupStore(settings).ids()
    page.goto(f"{tight_demo.url}{PREFIX}/backups/{evidence}")  # type: ignore[attr-defined]
    assert "evidence of a data-loss warning" in page.inner_text("[data-ttb-evidence]")  # type: ignore[attr-defined]

    # Restore from the warning's own button brings the rows back.
    page.goto(f"{tight_demo.url}{PREFIX}/")  # type: ignore[attr-defined]
    page.click(".ttb-warning-card >> text=Preview restore")  # type: ignore[attr-defined]
    # A click only waits for the navigation to start; count() does not wait for the table.
    page.wait_for_load_state("load")  # type: ignore[attr-defined]
    page.wait_for_selector("#ttb-confirm")  # type: ignore[attr-defined]
    assert page.locator("tr[data-table=po_lines]").count() == 1  # type: ignore[attr-defined]
    page.fill("#ttb-confirm", "RESTORE")  # type: ignore[attr-defined]
    page.click("button:has-text('Restore this backup')")  # type: ignore[attr-defined]
    assert "Done:" in _wait_done(page)
    assert _rows(database, "po_lines") == 160

    # The warning stays until the owner dismisses it; then the evidence is no longer pinned.
    page.goto(f"{tight_demo.url}{PREFIX}/")  # type: ignore[attr-defined]
    assert page.locator("[data-ttb-undo]").count() == 1  # type: ignore[attr-defined]
    with page.expect_navigation():  # type: ignore[attr-defined]
        page.click(".ttb-warning-card button:has-text('Dismiss')")  # type: ignore[attr-defined]
    assert page.locator(".ttb-warning-card").count() == 0  # type: ignore[attr-defined]
    assert not BackupStore(settings).get(evidence).pinned
    page.context.close()  # type: ignore[attr-defined]


# -- a site of several databases (issue 22) -----------------------------------------------------

#: The site table's buttons: each row's.
SITE_ACTIONS = ", ".join(
    f"tr[data-ttb-database] .ttb-row-actions {what}" for what in ("button", "a.ttb-button")
)
#: Screenshots of the site's dashboard, for a person to look at (not committed).
SHOTS = ROOT / "shots"

#: The verdict above the table, and in every card the verdict above the buttons.
VERDICT_FIRST = """() => {
  const bad = [];
  const verdict = document.querySelector("[data-ttb-verdict]").getBoundingClientRect();
  const table = document.querySelector("table.ttb-site").getBoundingClientRect();
  if (verdict.bottom > table.top) bad.push("the site's verdict is not above the table");
  for (const row of document.querySelectorAll("tr[data-ttb-database]")) {
    const name = row.querySelector("td[data-label=Database]").getBoundingClientRect();
    const said = row.querySelector("[data-ttb-row-verdict]").getBoundingClientRect();
    const buttons = row.querySelector(".ttb-row-actions").getBoundingClientRect();
    if (said.top > buttons.top || name.top > buttons.top) {
      bad.push(row.dataset.ttbDatabase + ": buttons before its verdict");
    }
  }
  return bad;
}"""


def _site_member(demo: Demo, name: str, file: str) -> object:
    from tablettracker_backups.settings import settings_from_mapping

    return settings_from_mapping(
        {
            "database": demo.instance / file,
            "database_name": name,
            "dir": demo.instance / "backups" / name,
        }
    )


def _check_site(page: object, demo: Demo, state: str) -> dict[str, str]:
    """The site's dashboard at every width: no sideways scroll, every row's buttons visible
    and unclipped, the verdict before the buttons; a screenshot each (under shots/). Returns
    each row's level."""
    SHOTS.mkdir(exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})  # type: ignore[attr-defined]
        response = page.goto(f"{demo.url}{PREFIX}/")  # type: ignore[attr-defined]
        assert response is not None and response.status == 200, state
        page.wait_for_load_state("load")  # type: ignore[attr-defined]
        page.screenshot(path=str(SHOTS / f"site-{state}-{width}.png"), full_page=True)  # type: ignore[attr-defined]
        where = f"site {state} at {width} px"
        scroll = page.evaluate("document.scrollingElement.scrollWidth")  # type: ignore[attr-defined]
        assert scroll <= width, f"{where} scrolls sideways: {scroll}"
        assert page.evaluate(CLIPPED, SITE_ACTIONS) == [], where  # type: ignore[attr-defined]
        assert page.evaluate(VERDICT_FIRST) == [], where  # type: ignore[attr-defined]
    levels: dict[str, str] = page.evaluate(  # type: ignore[attr-defined]
        "Object.fromEntries([...document.querySelectorAll('tr[data-ttb-database]')]"
        ".map(r => [r.dataset.ttbDatabase, r.dataset.ttbLevel]))"
    )
    return levels


def test_the_site_dashboard_shows_every_database_at_every_width(
    site_demo: Demo, browser: object
) -> None:
    from datetime import datetime, timezone

    from tablettracker_backups.backup import create_backup
    from tablettracker_backups.fsutil import ensure_private_dir
    from tablettracker_backups.jobs.queue import RUNNING, Job, jobs_dir, write_job
    from tablettracker_backups.status import record_run
    from tablettracker_backups.store import BackupStore
    from tablettracker_backups.verify import verify_backup
    from tests.conftest import flip_byte

    demo = site_demo
    tablets = _site_member(demo, "tablets", "tablet_counter.db")
    audit_log = _site_member(demo, "audit", "audit_log.db")
    page = _login_fresh(browser, demo)

    # The demo took a first backup of each: both rows, each leading to its own pages.
    page.goto(f"{demo.url}{PREFIX}/")  # type: ignore[attr-defined]
    assert page.locator("tr[data-ttb-database]").count() == 2  # type: ignore[attr-defined]
    page.click("tr[data-ttb-database=audit] td[data-label=Database] a")  # type: ignore[attr-defined]
    page.wait_for_url(f"{demo.url}{PREFIX}/db/audit/")  # type: ignore[attr-defined]
    assert page.inner_text("[data-ttb-database]") == "audit:"  # type: ignore[attr-defined]
    page.click("nav.ttb-nav >> text=All backups")  # type: ignore[attr-defined]
    page.wait_for_url(f"{demo.url}{PREFIX}/db/audit/backups")  # type: ignore[attr-defined]
    assert page.locator("tr[data-backup-id]").count() == 1  # type: ignore[attr-defined]
    page.click("[data-ttb-site-link]")  # type: ignore[attr-defined]
    page.wait_for_url(f"{demo.url}{PREFIX}/")  # type: ignore[attr-defined]
    # Back up the audit log from its row: the job runs on it, and its row shows the backup.
    page.click("tr[data-ttb-database=audit] button:has-text('Back up now')")  # type: ignore[attr-defined]
    assert "Done:" in _wait_done(page)
    assert f"{PREFIX}/db/audit/jobs/" in page.url  # type: ignore[attr-defined]
    assert len(BackupStore(audit_log).list()) == 2  # type: ignore[arg-type]
    assert len(BackupStore(tablets).list()) == 1  # type: ignore[arg-type]
    # An unknown name is a page that says so.
    missing = page.goto(f"{demo.url}{PREFIX}/db/nope/")  # type: ignore[attr-defined]
    assert missing is not None and missing.status == 404

    # Empty: no backup of either.
    for settings in (tablets, audit_log):
        store = BackupStore(settings)  # type: ignore[arg-type]
        for backup_id in store.ids():
            store.delete(backup_id)
    levels = _check_site(page, demo, "empty")
    assert levels == {"tablets": "critical", "audit": "critical"}, levels

    # Busy: a few backups of each, a job running on the audit log.
    for _ in range(3):
        for settings in (tablets, audit_log):
            create_backup(settings, kind="scheduled", trigger="browser-test")  # type: ignore[arg-type]
    now = datetime.now(timezone.utc)
    folder = jobs_dir(audit_log)  # type: ignore[arg-type]
    ensure_private_dir(folder)
    write_job(folder, Job("00000000000000f2", "backup", {}, "ada", RUNNING, now, now))
    levels = _check_site(page, demo, "busy")
    assert levels["tablets"] == levels["audit"] != "critical", levels
    running = page.locator("tr[data-ttb-database=audit] [data-ttb-active]")  # type: ignore[attr-defined]
    assert running.count() == 1
    assert page.locator("tr[data-ttb-database=tablets] [data-ttb-active]").count() == 0  # type: ignore[attr-defined]
    write_job(folder, Job("00000000000000f2", "backup", {}, "ada", "done", now, now))

    # Failed: tablets' last scheduled run failed; the audit log is fine.
    record_run(tablets, at=now, result={"ok": False, "error": "disk I/O error"})  # type: ignore[arg-type]
    levels = _check_site(page, demo, "failed")
    assert levels["tablets"] == "critical" and levels["audit"] != "critical", levels
    verdict = page.inner_text("[data-ttb-verdict]")  # type: ignore[attr-defined]
    assert verdict.startswith("At risk: tablets:") and "audit:" not in verdict, verdict
    # The worst row is the first one, on a phone as on a desktop.
    first = page.locator("tr[data-ttb-database]").first  # type: ignore[attr-defined]
    assert first.get_attribute("data-ttb-database") == "tablets"

    # Damaged: the audit log's newest backup has a flipped byte, found by a verification.
    record_run(tablets, at=now, result={"ok": True})  # type: ignore[arg-type]
    store = BackupStore(audit_log)  # type: ignore[arg-type]
    newest = store.list()[0]
    assert newest.metadata is not None
    flip_byte(store.data_path("primary", newest.id, newest.metadata.compression))
    verify_backup(store, newest.id, notify_owner=False)
    levels = _check_site(page, demo, "damaged")
    assert levels["tablets"] != "critical", levels
    damaged = page.locator("tr[data-ttb-database=audit] [data-ttb-damaged-count]")  # type: ignore[attr-defined]
    assert damaged.count() == 1 and "damaged" in damaged.inner_text()
    assert page.locator("tr[data-ttb-database=tablets] [data-ttb-damaged-count]").count() == 0  # type: ignore[attr-defined]
    # One database's own pages fit every width too, and say which database they are about.
    base = f"{PREFIX}/db/audit"
    sound = next(i.id for i in store.list() if i.verified)
    _check_pages(
        page,
        demo,
        "site-audit",
        {
            "dashboard": f"{base}/",
            "list": f"{base}/backups",
            "restore-at": f"{base}/restore-at",
            "restore": f"{base}/backups/{sound}/restore",
        },
    )
    page.goto(f"{demo.url}{base}/backups/{sound}/restore")  # type: ignore[attr-defined]
    assert page.inner_text("h1") == f"Restore backup {sound} into audit?"  # type: ignore[attr-defined]


#: On the group restore page: the heading and the verdict above every member's section.
GROUP_VERDICT_FIRST = """() => {
  const heading = document.querySelector("h1").getBoundingClientRect();
  const verdict = document.querySelector("[data-ttb-group-verdict]").getBoundingClientRect();
  const first = document.querySelector("[data-ttb-member]").getBoundingClientRect();
  return heading.bottom <= verdict.top && verdict.bottom <= first.top
    && verdict.top < window.innerHeight;
}"""


def test_the_group_restore_preview_reads_first_and_confirms_on_a_phone(
    site_demo: Demo, browser: object
) -> None:
    from tablettracker_backups.coordinated import create_group_backup

    demo = site_demo
    tablets = _site_member(demo, "tablets", "tablet_counter.db")
    audit_log = _site_member(demo, "audit", "audit_log.db")
    group = create_group_backup([tablets, audit_log], trigger="browser-test").group_id  # type: ignore[list-item]
    page = _login_fresh(browser, demo)
    SHOTS.mkdir(exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 800})  # type: ignore[attr-defined]
        page.goto(f"{demo.url}{PREFIX}/")  # type: ignore[attr-defined]
        page.screenshot(path=str(SHOTS / f"site-groups-{width}.png"), full_page=True)  # type: ignore[attr-defined]
        page.click(f"[data-ttb-group='{group}'] a")  # type: ignore[attr-defined]
        page.wait_for_url(f"{demo.url}{PREFIX}/groups/{group}/restore")  # type: ignore[attr-defined]
        page.screenshot(path=str(SHOTS / f"group-restore-{width}.png"), full_page=True)  # type: ignore[attr-defined]
        where = f"group restore at {width} px"
        scroll = page.evaluate("document.scrollingElement.scrollWidth")  # type: ignore[attr-defined]
        assert scroll <= width, f"{where} scrolls sideways: {scroll}"
        assert page.evaluate(GROUP_VERDICT_FIRST), where  # type: ignore[attr-defined]
        assert page.evaluate(CLIPPED, "form.ttb-confirm button, form.ttb-confirm a") == [], where  # type: ignore[attr-defined]
        assert page.locator("[data-ttb-member]").count() == 2, where  # type: ignore[attr-defined]
    # On a phone: the button is reached by scrolling, and it runs the restore.
    page.set_viewport_size({"width": 360, "height": 800})  # type: ignore[attr-defined]
    page.fill("#ttb-confirm", "RESTORE")  # type: ignore[attr-defined]
    button = page.locator("form.ttb-confirm button[type=submit]")  # type: ignore[attr-defined]
    button.scroll_into_view_if_needed()
    box = button.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, box
    button.click()
    assert "Done:" in _wait_done(page)
    assert f"{PREFIX}/db/tablets/jobs/" in page.url  # type: ignore[attr-defined]

"""Admin page load times against the number of backups and the size of the database.

Usage::

    python bench/bench_pages.py --workdir /tmp/bench-pages [--big-size 1GB] [--requests 40]

Builds three backup folders (kept in ``--workdir`` and reused with ``--reuse``):

* ``few``: a 1 MiB TabletTracker database (the demo's seed data) with 10 backups;
* ``many``: the same database with 1,000 backups;
* ``big``: a ``--big-size`` database (default 1 GiB, ``bench/generate.py``) with 10 backups.

Each folder has a primary and a secondary copy, as the README recommends. One backup per
database is real (``create_backup``: verified, compressed, hashed); the others are its data file
hard-linked under new ids, one an hour back in time, with their metadata rewritten to match
(every 10th manual, every 50th a pre-restore snapshot), so 1,000 backups of a 1 GiB database
take no extra disk and every data file still matches its SHA-256.

Then each scenario runs in a fresh Python process: a minimal host app (Flask-Login, the
blueprint's default layout) with an admin logged in through the test client, the dashboard and
the list requested alternately ``--requests`` times each after one cold request each (template
compilation, first listing); ``--rounds`` times, the scenarios alternating. Reported: cold
time (median over rounds), median and 90th percentile of the warm requests' wall time inside
the process (no network), and the median CPU time of the process per request (steadier on a
shared machine). Targets, on warm medians from the same run, wall and CPU both: many/few at
most 3 for the dashboard and the list, big/few at most 2 for the dashboard. Results go to
stdout (a table) and ``bench/results/pages-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the package importable from a clone
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import generate, parse_size

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCENARIOS = {"few": 10, "many": 1000, "big": 10}
TARGETS = [
    ("dashboard", "many", "few", 3.0),
    ("list", "many", "few", 3.0),
    ("dashboard", "big", "few", 2.0),
]
PAGES = {"dashboard": "/admin/backups/", "list": "/admin/backups/backups"}


def _settings_values(folder: Path) -> dict[str, Any]:
    return {
        "database": str(folder / "live.db"),
        "dir": str(folder / "backups"),
        "secondary_dir": str(folder / "mirror"),
    }


def build(folder: Path, database: Path, count: int) -> None:
    """A backup folder pair with ``count`` backups of ``database`` (see the module docstring)."""
    from tablettracker_backups.backup import create_backup
    from tablettracker_backups.metadata import new_backup_id, utc_iso
    from tablettracker_backups.settings import settings_from_mapping

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    os.link(database, folder / "live.db")  # the pages only read it; no need for a copy
    settings = settings_from_mapping(_settings_values(folder))
    real = create_backup(settings, trigger="bench").metadata
    document = json.loads(real.to_json())
    suffix = real.data_file[len(real.id) :]
    for index in range(1, count):
        moment = real.created_at - timedelta(hours=index)
        backup_id = new_backup_id(moment)
        kind = "pre-restore" if index % 50 == 0 else "manual" if index % 10 == 0 else "scheduled"
        clone = dict(
            document,
            id=backup_id,
            created_at=utc_iso(moment),
            kind=kind,
            data_file=backup_id + suffix,
            verification=dict(document["verification"], verified_at=utc_iso(moment)),
        )
        text = json.dumps(clone, indent=2, sort_keys=True) + "\n"
        for location in ("backups", "mirror"):
            os.link(folder / location / real.data_file, folder / location / (backup_id + suffix))
            (folder / location / f"{backup_id}.json").write_text(text)


def small_database(path: Path) -> None:
    """About 1 MiB of TabletTracker data (generate.py writes in batches of several MiB)."""
    import sqlite3

    from tablettracker_backups.demo.schema import seed

    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    try:
        seed(conn, purchase_orders=600, lines_per_order=4, sessions_per_line=2, note_bytes=100)
    finally:
        conn.close()


def run_scenario(folder: Path, requests: int) -> dict[str, Any]:
    """Time the pages in this process (called in a fresh interpreter per scenario)."""
    from flask import Flask
    from flask_login import LoginManager, UserMixin, login_user

    from tablettracker_backups import BackupManager

    class Admin(UserMixin):  # type: ignore[misc]
        def __init__(self, name: str) -> None:
            self.id = name
            self.is_admin = True

    app = Flask("bench-host")
    app.config.update(
        SECRET_KEY="bench",
        **{f"BACKUPS_{k.upper()}": v for k, v in _settings_values(folder).items()},
    )
    LoginManager(app).user_loader(Admin)

    @app.route("/login")
    def login() -> str:
        login_user(Admin("admin"))
        return "in"

    BackupManager(app)
    client = app.test_client()
    client.get("/login")

    def timed(url: str) -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        response = client.get(url)
        response.get_data()
        elapsed = (time.perf_counter() - started, time.process_time() - cpu)
        assert response.status_code == 200, (url, response.status_code)
        return elapsed

    cold = {name: timed(url)[0] for name, url in PAGES.items()}
    warm: dict[str, list[tuple[float, float]]] = {name: [] for name in PAGES}
    for _ in range(requests):
        for name, url in PAGES.items():
            warm[name].append(timed(url))
    return {
        name: {
            "cold_ms": cold[name] * 1000,
            "wall_ms": [w * 1000 for w, _ in warm[name]],
            "cpu_ms": [c * 1000 for _, c in warm[name]],
        }
        for name in PAGES
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-pages"))
    parser.add_argument("--big-size", default="1GB")
    parser.add_argument("--requests", type=int, default=40, help="per page, per round")
    parser.add_argument("--rounds", type=int, default=3, help="scenario processes, alternated")
    parser.add_argument("--reuse", action="store_true", help="reuse databases and backups")
    parser.add_argument("--scenario", help=argparse.SUPPRESS)  # internal: one child process
    args = parser.parse_args(argv)
    work = args.workdir.absolute()

    if args.scenario:
        print(json.dumps(run_scenario(work / args.scenario, args.requests)))
        return 0

    work.mkdir(parents=True, exist_ok=True)
    databases = {"small": work / "small.db", "big": work / "big.db"}
    sizes = {"small": parse_size("1MB"), "big": parse_size(args.big_size)}
    for name, path in databases.items():
        if not (args.reuse and path.exists()):
            print(f"generating the {name} database ({sizes[name] / 2**20:.0f} MiB)...", flush=True)
            small_database(path) if name == "small" else generate(path, sizes[name])
    for scenario, count in SCENARIOS.items():
        folder = work / scenario
        database = databases["big" if scenario == "big" else "small"]
        if not (args.reuse and (folder / "backups").is_dir()):
            print(f"building {scenario}: {count} backups...", flush=True)
            build(folder, database, count)

    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    # Rounds alternate the scenarios, so a burst of load from elsewhere on a shared machine
    # falls on all of them rather than on one.
    runs: dict[str, list[dict[str, Any]]] = {scenario: [] for scenario in SCENARIOS}
    for _ in range(args.rounds):
        for scenario in SCENARIOS:
            done = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--workdir",
                    str(work),
                    "--requests",
                    str(args.requests),
                    "--scenario",
                    scenario,
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs[scenario].append(json.loads(done.stdout.strip().splitlines()[-1]))
    results: dict[str, Any] = {}
    for scenario, rounds in runs.items():
        results[scenario] = {}
        for page in PAGES:
            wall = sorted(w for r in rounds for w in r[page]["wall_ms"])
            cpu = sorted(c for r in rounds for c in r[page]["cpu_ms"])
            results[scenario][page] = {
                "cold_ms": statistics.median(r[page]["cold_ms"] for r in rounds),
                "median_ms": statistics.median(wall),
                "p90_ms": wall[int(len(wall) * 0.9) - 1],
                "cpu_median_ms": statistics.median(cpu),
                "requests": len(wall),
            }

    report: dict[str, Any] = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
        "database_bytes": {name: path.stat().st_size for name, path in databases.items()},
        "backups": SCENARIOS,
        "rounds": args.rounds,
        "results": results,
        "targets": [],
    }
    print(
        f"\n{'scenario':<10}{'page':<11}{'cold ms':>9}{'median ms':>11}{'p90 ms':>9}{'cpu ms':>9}"
    )
    for scenario, pages in results.items():
        for page, figures in pages.items():
            print(
                f"{scenario:<10}{page:<11}{figures['cold_ms']:>9.1f}{figures['median_ms']:>11.2f}"
                f"{figures['p90_ms']:>9.2f}{figures['cpu_median_ms']:>9.2f}"
            )
    print()
    for page, slow, fast, limit in TARGETS:
        ratio = results[slow][page]["median_ms"] / results[fast][page]["median_ms"]
        cpu_ratio = results[slow][page]["cpu_median_ms"] / results[fast][page]["cpu_median_ms"]
        verdict = "PASS" if max(ratio, cpu_ratio) <= limit else "FAIL"
        report["targets"].append(
            {
                "page": page,
                "ratio": f"{slow}/{fast}",
                "wall": ratio,
                "cpu": cpu_ratio,
                "limit": limit,
                "verdict": verdict,
            }
        )
        print(
            f"{page:<10} {slow}/{fast}: wall {ratio:5.2f}, cpu {cpu_ratio:5.2f} "
            f"(target <= {limit:g}): {verdict}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"pages-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

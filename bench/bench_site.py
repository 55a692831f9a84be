"""A site of many databases: ``run``, ``list`` and the dashboard against a site of one.

Usage::

    python bench/bench_site.py --workdir /tmp/bench-site [--databases 20] [--rounds 3]

Two sites in ``--workdir``, rebuilt each round: ``one`` (the baseline: one database) and
``many`` (``--databases`` of them, default 20), each database a small TabletTracker file (the
demo's seed data, about 130 KiB), configured as ``[databases.NAME]`` tables in a TOML file
with one root folder (each database backs up into ``<root>/<name>/``). Each round, in a fresh
Python process per site (the sites alternating, so both see the same machine):

* ``run``: the CLI's ``run --config FILE`` through click's runner, twice: the first run backs
  up every database (``run-first``), the second finds nothing changed (``run-again``, what
  most scheduled runs are);
* ``list``: ``list --config FILE --database NAME`` for every database in turn (a site of
  several needs the name), the time per call;
* ``dashboard``: the demo app configured with the same databases (``BACKUPS_DATABASES``), an
  admin logged in through the test client, the dashboard (a table of every database for the
  site, the usual page for one) requested cold once, then ``--requests`` times warm; and, for
  the site, one database's own dashboard (``/db/<name>/``), which must cost what the baseline's
  does.

Reported per site (medians over rounds): wall time, and time per database; the ratio of the
site's per-database time to the baseline's (1.0 = a database costs the same whether alone or
one of 20). Results go to stdout and ``bench/results/site-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the package importable from a clone
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def names(count: int) -> list[str]:
    return [f"db{index:02d}" for index in range(1, count + 1)]


def build(folder: Path, count: int) -> Path:
    """``count`` small databases and the TOML file naming them; returns the file."""
    import sqlite3

    from tablettracker_backups.demo.schema import seed

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    lines = ["[backups]", f'backup_dir = "{folder / "backups"}"', 'keep_recent = "0"', ""]
    for name in names(count):
        path = folder / f"{name}.db"
        conn = sqlite3.connect(path)
        try:
            seed(conn, purchase_orders=60, lines_per_order=3, sessions_per_line=2)
        finally:
            conn.close()
        lines += [f"[databases.{name}]", f'database = "{path}"', ""]
    config = folder / "site.toml"
    config.write_text("\n".join(lines))
    return config


def measure(folder: Path, count: int, requests: int) -> dict[str, Any]:
    """Time ``run``, ``list`` and the pages for the site in ``folder`` (a fresh process)."""
    from click.testing import CliRunner

    from tablettracker_backups.cli import cli
    from tablettracker_backups.demo import create_app

    config = folder / "site.toml"
    runner = CliRunner()
    timings: dict[str, Any] = {}
    for label in ("run-first", "run-again"):
        started = time.perf_counter()
        result = runner.invoke(cli, ["run", "--config", str(config), "--json"])
        timings[label] = time.perf_counter() - started
        if result.exit_code not in (0, 1):  # 1: a warning (no secondary folder ...)
            raise RuntimeError(f"{label} failed ({result.exit_code}): {result.output[-500:]}")
    took = []
    for name in names(count):
        started = time.perf_counter()
        result = runner.invoke(cli, ["list", "--config", str(config), "--database", name])
        took.append(time.perf_counter() - started)
        if result.exit_code != 0:
            raise RuntimeError(f"list {name} failed: {result.output[-500:]}")
    timings["list"] = sum(took)

    app = create_app(
        {
            "INSTANCE_PATH": folder / "instance",
            "TESTING": True,
            "BACKUPS_DATABASE": None,
            "BACKUPS_DIR": str(folder / "backups"),
            "BACKUPS_KEEP_RECENT": "0",
            "BACKUPS_SNAPSHOT_AFTER_WRITE": "off",
            "BACKUPS_DATABASES": {name: str(folder / f"{name}.db") for name in names(count)},
        }
    )
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    form = {"username": "admin", "password": app.config["DEMO_PASSWORD"], "csrf_token": token}
    if client.post("/login", data=form).status_code != 303:
        raise RuntimeError("could not log in")

    def timed(path: str) -> float:
        started = time.perf_counter()
        response = client.get(path)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code}")
        return elapsed

    timings["dashboard-cold"] = timed("/admin/backups/")
    timings["dashboard"] = statistics.median(timed("/admin/backups/") for _ in range(requests))
    one = "/admin/backups/" if count == 1 else f"/admin/backups/db/{names(count)[-1]}/"
    timings["one-database-page"] = statistics.median(timed(one) for _ in range(requests))
    return timings


#: What scales with the number of databases (the per-database ratio is reported for these).
PER_DATABASE = ("run-first", "run-again", "list", "dashboard-cold", "dashboard")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--databases", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--measure", nargs=2, metavar=("FOLDER", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        folder, count = Path(args.measure[0]), int(args.measure[1])
        print(json.dumps(measure(folder, count, args.requests)))
        return 0

    sites = {"one": 1, "many": args.databases}
    rounds: dict[str, list[dict[str, float]]] = {site: [] for site in sites}
    for number in range(args.rounds):
        for site, count in sites.items():
            folder = args.workdir / site
            build(folder, count)
            out = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--workdir",
                    str(args.workdir),
                    "--requests",
                    str(args.requests),
                    "--measure",
                    str(folder),
                    str(count),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rounds[site].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {number + 1} {site}: done", file=sys.stderr)

    report: dict[str, Any] = {"databases": args.databases, "rounds": args.rounds, "sites": {}}
    print(f"{'':18} {'one (s)':>9} {'many (s)':>9} {'per db':>9} {'ratio':>6}")
    for key in rounds["one"][0]:
        one = statistics.median(r[key] for r in rounds["one"])
        many = statistics.median(r[key] for r in rounds["many"])
        per = many / args.databases if key in PER_DATABASE else many
        ratio = per / one if one else float("nan")
        report["sites"][key] = {"one": one, "many": many, "many_per_database": per, "ratio": ratio}
        print(f"{key:18} {one:9.3f} {many:9.3f} {per:9.3f} {ratio:6.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"site-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What age encryption costs a backup: time and peak memory, against the same backup without it,
in one run on the same database.

Usage::

    python bench/bench_encrypt.py --db /tmp/tt.db [--repeat 3]

Methods, each run as its own process so its peak memory (max RSS, from ``wait4``) is its own:

* ``plain``: ``create_backup`` with default settings, no encryption.
* ``all``: the same with ``BACKUPS_ENCRYPT=all`` to one X25519 recipient: the verified,
  compressed file is then encrypted with ``pyrage.encrypt_io`` (streaming) before it is
  committed. Its ``encrypt`` duration is the encryption's share.
* ``seal``: what ``BACKUPS_ENCRYPT=offsite`` adds per upload: ``encrypt_file`` of the stored
  file of a plain backup (taken once, before the timed runs) into a new file.
* ``open``: the restore side, ``decrypt_file`` of that encrypted file, checked against its
  metadata.

Plain and all alternate (their order rotates between repeats), so load from other work on a
shared machine falls on both alike; the load average is recorded before and after each run.
Results go to a table on stdout and to JSON under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))

from bench.bench_backup import run_method, warm_cache  # noqa: E402

METHODS = ("plain", "all", "seal", "open")
#: Run once before the timed runs, in a child too: a parent that had done a backup itself
#: would hand its own peak memory to every child it forks (Linux counts it until exec).
SETUP = "sample"
#: Targets from the issue.
MAX_RSS_MB = 100
MAX_ADDED = 0.15


def _key(workdir: Path) -> tuple[str, Path]:
    """One identity for the whole run (made by the parent, read by the children)."""
    from tablettracker_backups.encryption import create_identity_file

    path = workdir / "bench-identity.txt"
    if not path.exists():
        create_identity_file(path)
    text = path.read_text()
    recipient = next(line.split(": ")[1] for line in text.splitlines() if "public key" in line)
    return recipient, path


def run_backup(db: Path, workdir: Path, *, encrypt: bool) -> dict[str, Any]:
    from tablettracker_backups.backup import create_backup
    from tablettracker_backups.settings import settings_from_mapping

    values: dict[str, Any] = {"database": db, "dir": workdir / ("all" if encrypt else "plain")}
    if encrypt:
        values.update(encrypt_to=_key(workdir)[0], encrypt="all")
    meta = create_backup(settings_from_mapping(values), kind="manual", trigger="bench").metadata
    for path in (workdir / values["dir"]).iterdir():  # keep only one backup's worth of disk
        if path.name.startswith(meta.id):
            path.unlink()
    return {"stored_size": meta.stored_size, "durations": meta.durations}


def _sample(workdir: Path) -> Path:
    """The stored file of one plain backup, made once by the parent."""
    return next((workdir / "sample").glob("*.db.zst"))


def run_seal(workdir: Path) -> dict[str, Any]:
    from tablettracker_backups.encryption import encrypt_file

    source = _sample(workdir)
    dest = workdir / "sample.age"
    dest.unlink(missing_ok=True)
    began = time.monotonic()
    sealed = encrypt_file(source, dest, [_key(workdir)[0]])
    seconds = time.monotonic() - began
    (workdir / "sample.seal.json").write_text(json.dumps(asdict(sealed)))
    return {"stored_size": sealed.size, "durations": {"encrypt": seconds, "total": seconds}}


def run_open(workdir: Path) -> dict[str, Any]:
    from tablettracker_backups.encryption import (
        SealResult,
        decrypt_file,
        encrypted_metadata,
        load_identity,
    )
    from tablettracker_backups.metadata import BackupMetadata

    source = _sample(workdir)
    plain_meta = BackupMetadata.from_json((source.parent / f"{source.name[:23]}.json").read_text())
    sealed = SealResult(**json.loads((workdir / "sample.seal.json").read_text()))
    recipient, identity_path = _key(workdir)
    meta = encrypted_metadata(plain_meta, sealed, [recipient])
    out = workdir / "sample.opened"
    out.unlink(missing_ok=True)
    began = time.monotonic()
    decrypt_file(workdir / "sample.age", out, meta, load_identity(identity_path), label="bench")
    seconds = time.monotonic() - began
    out.unlink()
    return {"stored_size": sealed.inner_size, "durations": {"decrypt": seconds, "total": seconds}}


def child_main(method: str, db: Path, workdir: Path) -> int:
    if method == SETUP:
        from tablettracker_backups.backup import create_backup
        from tablettracker_backups.settings import settings_from_mapping

        _key(workdir)
        create_backup(settings_from_mapping({"database": db, "dir": workdir / "sample"}))
        result: dict[str, Any] = {}
    elif method in ("plain", "all"):
        result = run_backup(db, workdir, encrypt=method == "all")
    elif method == "seal":
        result = run_seal(workdir)
    else:
        result = run_open(workdir)
    print(json.dumps(result))
    return 0


@dataclass
class Run:
    method: str
    repeat: int
    seconds: float
    cpu: float
    rss_mib: float
    load_before: float
    load_after: float
    output: dict[str, Any] | None


def one(method: str, db: Path, workdir: Path, repeat: int) -> Run:
    load_before = os.getloadavg()[0]
    seconds, cpu, rss, output = run_method(method, db, workdir, script=Path(__file__).resolve())
    run = Run(method, repeat, seconds, cpu, rss, load_before, os.getloadavg()[0], output)
    print(
        f"  {method:<6} #{repeat}: {seconds:7.2f} s wall, {cpu:6.2f} s CPU, {rss:6.1f} MiB, "
        f"load {run.load_before:.1f} -> {run.load_after:.1f}",
        flush=True,
    )
    return run


def summarise(runs: list[Run]) -> dict[str, Any]:
    def median(method: str, field: str) -> float | None:
        values = [getattr(r, field) for r in runs if r.method == method and r.output]
        return statistics.median(values) if values else None

    def stage(method: str, name: str) -> float | None:
        values = [
            float(r.output["durations"][name])
            for r in runs
            if r.method == method and r.output and name in r.output["durations"]
        ]
        return statistics.median(values) if values else None

    plain, encrypted = median("plain", "seconds"), median("all", "seconds")
    summary: dict[str, Any] = {
        method: {
            "wall_median": median(method, "seconds"),
            "wall_best": min((r.seconds for r in runs if r.method == method), default=None),
            "cpu_median": median(method, "cpu"),
            "rss_max_mib": max((r.rss_mib for r in runs if r.method == method), default=None),
        }
        for method in METHODS
    }
    summary["all"]["encrypt_stage_median"] = stage("all", "encrypt")
    summary["plain"]["total_stage_median"] = stage("plain", "total")
    pairs = [
        (p.seconds, a.seconds)
        for p in runs
        if p.method == "plain"
        for a in runs
        if a.method == "all" and a.repeat == p.repeat
    ]
    summary["ratios"] = {
        "all_over_plain_wall_median": encrypted / plain if plain and encrypted else None,
        "all_over_plain_per_repeat": [a / p for p, a in pairs],
        "all_over_plain_cpu": (
            summary["all"]["cpu_median"] / summary["plain"]["cpu_median"]
            if summary["plain"]["cpu_median"]
            else None
        ),
        "encrypt_stage_over_plain_total": (
            summary["all"]["encrypt_stage_median"] / summary["plain"]["total_stage_median"]
            if summary["plain"]["total_stage_median"]
            else None
        ),
        "seal_over_plain_wall": (
            summary["seal"]["wall_median"] / plain
            if plain and summary["seal"]["wall_median"]
            else None
        ),
    }
    rss = max(v["rss_max_mib"] or 0.0 for k, v in summary.items() if k in METHODS)
    summary["verdicts"] = {
        f"peak RSS under {MAX_RSS_MB} MB": rss * 1.048576 < MAX_RSS_MB,
        f"encryption adds at most {MAX_ADDED:.0%}": (
            summary["ratios"]["all_over_plain_wall_median"] is not None
            and summary["ratios"]["all_over_plain_wall_median"] <= 1 + MAX_ADDED
        ),
    }
    return summary


def print_table(summary: dict[str, Any]) -> None:
    print()
    print(f"| | {' | '.join(METHODS)} |")
    print(f"|---|{'---:|' * len(METHODS)}")
    for label, key in (
        ("wall time, median", "wall_median"),
        ("wall time, best", "wall_best"),
        ("CPU time, median", "cpu_median"),
        ("peak RSS (MiB)", "rss_max_mib"),
    ):
        cells = [summary[m][key] for m in METHODS]
        print(f"| {label} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    print()
    for name, value in summary["ratios"].items():
        shown = (
            ", ".join(f"{v:.3f}" for v in value)
            if isinstance(value, list)
            else ("-" if value is None else f"{value:.3f}")
        )
        print(f"- {name}: {shown}")
    for name, ok in summary["verdicts"].items():
        print(f"- {name}: {'PASS' if ok else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", type=Path, required=True, help="database to back up")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path, default=None, help="results file")
    parser.add_argument("--child", choices=(*METHODS, SETUP), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.db, args.workdir)
    if not args.db.is_file():
        print(
            f"error: {args.db} does not exist (create it with bench/generate.py)", file=sys.stderr
        )
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-encrypt-", dir=args.workdir))
    print(
        f"benchmarking {args.db} ({args.db.stat().st_size / 2**20:.0f} MiB), {os.cpu_count()} CPUs"
    )
    run_method(SETUP, args.db, workdir, script=Path(__file__).resolve())
    warm_cache(args.db)
    runs: list[Run] = []
    for repeat in range(args.repeat):
        order = ["plain", "all"] if repeat % 2 == 0 else ["all", "plain"]
        for method in [*order, "seal", "open"]:
            runs.append(one(method, args.db, workdir, repeat))
    summary = summarise(runs)
    print_table(summary)
    results = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "db": str(args.db),
        "db_size": args.db.stat().st_size,
        "cpus": os.cpu_count(),
        "summary": summary,
        "runs": [asdict(r) for r in runs],
    }
    path = args.json or HERE / "results" / f"encrypt-{datetime.now():%Y%m%dT%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path}")
    for leftover in sorted(workdir.rglob("*"), reverse=True):
        leftover.rmdir() if leftover.is_dir() else leftover.unlink()
    workdir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Garbage collection's liveness walk: every kept format 2 backup's index, walked in full one
after the other (the first version of collection) against one shared walk that skips the
nodes an earlier backup already gave (what ``garbage._live`` does now), in one run.

Usage::

    python bench/bench_gc.py --size 64MB --snapshots 48 [--fraction 0.01]

A TabletTracker-shaped database (bench/generate.py) gets a first backup, then ``--snapshots``
incrementals, each after changing about ``--fraction`` of its pages (rows spread over the
file: the worst case for the index, bench_pages_store.py's ``random``). Packs and nodes go
straight into a page store folder (``pagestore.write_file_pages``); no manifests are needed to
walk. Both walks must find the same packs and pages (checked), and each is timed (best of
``--repeat``). Reported: seconds for each, the ratio, and pages given to the callback.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))

from bench.bench_pages_store import change  # noqa: E402
from bench.generate import generate, parse_size  # noqa: E402
from tablettracker_backups.pagestore import (  # noqa: E402
    PageIndex,
    folder_key,
    walk_index,
    write_file_pages,
)
from tablettracker_backups.storage.local import LocalStore  # noqa: E402


def walk_all(store: LocalStore, indexes: list[PageIndex], shared: bool) -> tuple[float, int, set]:
    seen: set[str] | None = set() if shared else None
    needed: set[tuple[str, int]] = set()
    given = 0

    def page(_hash: bytes, pack: str, offset: int) -> None:
        nonlocal given
        given += 1
        needed.add((pack, offset))

    started = time.perf_counter()
    for index in indexes:
        walk_index(store, index, page, seen=seen)
    return time.perf_counter() - started, given, needed


def _seconds(result: tuple[float, int, set]) -> float:
    return result[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", default="64MB")
    parser.add_argument("--snapshots", type=int, default=48)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-gc-") as scratch:
        work = Path(scratch)
        db = work / "tablet_counter.db"
        generate(db, parse_size(args.size))
        (work / "folder").mkdir()
        store = LocalStore(work / "folder")
        folder_key(store, create=True)
        indexes = [write_file_pages(store, db).index]
        for n in range(args.snapshots):
            change(db, "random", args.fraction, seed=n)
            indexes.append(write_file_pages(store, db, parent=indexes[-1]).index)
        full = min(
            (walk_all(store, indexes, False) for _ in range(args.repeat)), key=lambda r: r[0]
        )
        shared = min(
            (walk_all(store, indexes, True) for _ in range(args.repeat)), key=lambda r: r[0]
        )
        if full[2] != shared[2]:
            raise SystemExit("the shared walk needs other pages than the full walks: a bug")
        result: dict[str, Any] = {
            "size": args.size,
            "pages": indexes[-1].page_count,
            "backups": len(indexes),
            "fraction": args.fraction,
            "full_walks_s": round(full[0], 3),
            "shared_walk_s": round(shared[0], 3),
            "ratio": round(full[0] / shared[0], 1) if shared[0] else None,
            "pages_given_full": full[1],
            "pages_given_shared": shared[1],
        }
    print(
        f"{result['backups']} backups of {result['pages']} pages, {args.fraction:.2%} changed "
        f"each: full walks {result['full_walks_s']} s, shared walk {result['shared_walk_s']} s "
        f"({result['ratio']}x); pages given {result['pages_given_full']} vs "
        f"{result['pages_given_shared']}"
    )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (out / f"gc-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

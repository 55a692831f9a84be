"""Mutation testing of the core modules with mutmut 3, one module at a time, each time-capped.

    pip install -e '.[mutation]'
    python bench/mutation.py                      # every module, 20 minutes each
    python bench/mutation.py store verify --cap 600
    python bench/mutation.py --survivors store    # re-run last survivors against today's tests
    python bench/mutation.py --resume health      # ... and the mutants a cap left unchecked
    python bench/mutation.py --report             # the table from the saved results only
    python bench/mutation.py --sample 80 backup   # 80 mutants drawn at random (seeded), all judged
    python bench/mutation.py --extend 40 backup   # ... and 40 more, from those not drawn yet

For each module a scratch copy of the package and the tests is made under ``--workdir``
(default ``/tmp/ttb-mutation/<module>``), a ``[tool.mutmut]`` table naming that one module and
its relevant test files is appended to the copy's pyproject.toml, and ``mutmut run`` is started
there. mutmut runs the selected tests once to learn which test reaches which function, then runs
each mutant against only the tests that reach the mutated function. A module that exceeds its cap
is stopped; mutants not reached by then are reported as "not checked", never as killed.

Results go to ``bench/results/mutation-<module>.json`` (git-ignored) and a table to stdout.
Score = killed / (killed + survived + no tests): a mutant that no selected test reaches counts
against the score. Timeouts are listed apart (a mutant that makes the tests hang is detected,
but by the time limit, not by an assertion). Nothing here runs in CI.

A time cap is biased: mutmut runs the mutants with the fastest tests first, so the ones a cap
leaves unchecked are those in the big functions every test reaches. ``--sample N`` instead draws
N mutants uniformly at random (``--seed``, so a run can be replayed) and judges every one of them,
with no cap; the score is then an estimate for the whole module, and the report gives its 95%
interval (and, across modules, a stratified estimate weighted by each module's mutant count).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

CLI = "tests/test_cli.py"
#: Module -> (candidate source paths, first existing wins; the test files that exercise it).
#: Only tests that call the module in-process can be selected per mutant (mutmut learns the
#: mapping in-process), so each list favours fast in-process tests; a test that also runs the
#: CLI as a subprocess still catches a mutant, because the subprocess imports the mutated copy.
MODULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "snapshot": (
        ("snapshot.py",),
        (
            "tests/test_snapshot.py",
            "tests/test_backup.py",
            "tests/test_restore.py",
            "tests/test_verify.py",
            "tests/test_corpus.py",  # databases as real apps leave them: damage, extensions
            CLI,
        ),
    ),
    "verify": (
        ("verify.py",),
        (
            "tests/test_verify.py",
            "tests/test_backup.py",
            "tests/test_store.py",
            "tests/test_restore.py",
            "tests/test_runner.py",
            "tests/test_encryption.py",  # the sealed (age) checks
            "tests/test_notify.py",  # a failed verify tells the owner
            "tests/test_corpus.py",  # the findings of real-app databases, compared on verify
            CLI,
        ),
    ),
    "store": (
        ("store.py",),
        (
            "tests/test_store.py",
            "tests/test_prune.py",
            "tests/test_backup.py",
            "tests/test_verify.py",
            "tests/test_retention.py",
            "tests/test_durability.py",
            "tests/test_health.py",
            "tests/test_hostile.py",
            CLI,
        ),
    ),
    # fsutil is called by nearly every test: only the fast ones that check it directly, or
    # each mutant runs hundreds of tests (13 mutants in 10 minutes with the wider list).
    "fsutil": (
        ("fsutil.py",),
        (
            "tests/test_fsutil.py",
            "tests/test_durability.py",
            "tests/test_store.py",
            "tests/test_locking.py",
        ),
    ),
    "backup": (
        ("backup.py",),
        (
            "tests/test_backup.py",
            "tests/test_durability.py",
            "tests/test_verify.py",
            "tests/test_crashpoints.py",
            "tests/test_encryption.py",
            # Not test_trust.py: its web-job tests start the job worker as a subprocess,
            # which fails for its own reasons under mutmut's layout (seen: the stats run).
            "tests/test_notify.py",
            CLI,
        ),
    ),
    "restore": (
        ("restore.py",),
        (
            "tests/test_restore.py",
            "tests/test_restore_points.py",
            "tests/test_trust.py",
            "tests/test_encryption.py",
            "tests/test_verify.py",
            "tests/test_offsite.py",  # recover_from_offsite and the offsite fallback
            "tests/test_offsite_encryption.py",  # sealed previews and encrypted recovery
            "tests/test_corpus.py",  # previews of databases as real apps leave them
            "tests/test_notify.py",  # a restore's own notifications
            CLI,
        ),
    ),
    "retention": (("retention.py",), ("tests/test_retention.py", "tests/test_runner.py", CLI)),
    "prune": (
        ("prune.py",),
        (
            "tests/test_prune.py",
            "tests/test_retention.py",
            "tests/test_runner.py",
            "tests/test_durability.py",
            CLI,
        ),
    ),
    "health": (
        ("health.py",),
        (
            "tests/test_health.py",
            "tests/test_runner.py",
            CLI,
            "tests/test_offsite.py",
            "tests/test_encryption.py",  # the key drill and encryption findings
            "tests/test_offsite_encryption.py",  # plaintext copies left offsite
        ),
    ),
    "locking": (
        ("locking.py",),
        ("tests/test_locking.py", "tests/test_runner.py"),
    ),
    "offsite_sync": (
        ("offsite/sync.py", "offsite_sync.py"),
        ("tests/test_offsite.py", "tests/test_offsite_encryption.py"),
    ),
}

#: The statuses a score counts (a timeout is listed apart; "not checked" and "not sampled" were
#: never judged).
JUDGED = ("killed", "survived", "no tests")
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS.update({code: "timeout" for code in (36, 24, -24, 152, 255)})
STATUS.update({37: "type check", -11: "segfault", -9: "segfault"})


def source_of(module: str) -> Path:
    """The module's file in the package (the first candidate path that exists)."""
    for candidate in MODULES[module][0]:
        path = ROOT / "tablettracker_backups" / candidate
        if path.exists():
            return path
    raise SystemExit(f"no source file for {module}: {MODULES[module][0]}")


def prepare(module: str, workdir: Path, children: int) -> None:
    """A fresh scratch copy with a [tool.mutmut] table for ``module``."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in ("tablettracker_backups", "tests", "templates", "static"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, workdir / name, ignore=ignore)
    shutil.copy(ROOT / "README.md", workdir / "README.md")
    write_config(module, workdir)
    (workdir / "source.sha256").write_text(digest(source_of(module)))


def write_config(module: str, workdir: Path) -> None:
    """The project's pyproject.toml with a [tool.mutmut] table naming ``module`` and today's
    test selection (mutmut collects stats for tests new to the selection on its next run)."""
    shutil.copy(ROOT / "pyproject.toml", workdir / "pyproject.toml")
    relative = source_of(module).relative_to(ROOT).as_posix()
    tests = [t for t in MODULES[module][1] if (ROOT / t.split("::")[0]).exists()]
    table = {
        "source_paths": ["tablettracker_backups/"],
        "only_mutate": [relative],
        "also_copy": ["templates/", "static/", "README.md"],
        "pytest_add_cli_args_test_selection": tests,
        # -x: the first failing test kills the mutant; the others need not run. Each mutant's
        # pytest session removes its tmp_path folders when it ends: left in place they filled
        # 74 GB of disk in 90 minutes, and a test failing for want of space counts as a kill.
        "pytest_add_cli_args": [
            *("-p", "no:cacheprovider", "-q", "-x"),
            *("-o", "tmp_path_retention_policy=none"),
            # A mutant killed for its time limit leaves a test's tmpfs mounted (tiny_fs), and
            # pytest's sweep of old folders warns (an error here) on it: the sweep is not a test.
            *("-W", "ignore:(rm_rf) error removing:pytest.PytestWarning"),
        ],
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    with (workdir / "pyproject.toml").open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def refresh_package(module: str, workdir: Path) -> None:
    """Today's code for every module but the mutated one (whose source the caller checked is
    unchanged), in the scratch copy and in mutmut's: today's tests may need today's code."""
    package = ROOT / "tablettracker_backups"
    mutated = source_of(module).relative_to(package)
    for source in package.rglob("*"):
        relative = source.relative_to(package)
        if source.is_dir() or relative == mutated or "__pycache__" in relative.parts:
            continue
        for copy in (workdir, workdir / "mutants"):
            target = copy / "tablettracker_backups" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: Starts mutmut with no other checkout on sys.path: an editable install of another checkout
#: puts its folder there, and its ``tests`` package would shadow the scratch copy's (mutmut
#: itself puts ``mutants/`` first, ahead of any installed copy of the package).
SYS_PATH = """
import os, sys
keep = os.path.join(os.getcwd(), "mutants")
sys.path[:] = [
    p for p in sys.path
    if os.path.abspath(p or ".") == keep
    or not os.path.isfile(os.path.join(p or ".", "tests", "conftest.py"))
]
"""
#: Each pytest session (one per mutant, two at a time) gets a folder of its own for its
#: tmp_path folders. In one shared temporary root, one session's sweep of old folders removed
#: another's running test's files, and the test failed: a mutant counted as killed that no
#: assertion caught (seen: five of six survivors re-run at once all "killed" this way).
OWN_BASETEMP = """
import shutil
from mutmut.runners.harness import PytestRunner
_args = PytestRunner._pytest_args_regular_run
_run = PytestRunner.run_tests
def _own(pid):
    return os.path.join(os.environ["PYTEST_DEBUG_TEMPROOT"], f"session-{pid}")
def _args_with_own_basetemp(self, tests):
    return [*_args(self, tests), f"--basetemp={_own(os.getpid())}"]
def _run_and_clean(self, *, mutant_name, tests):
    try:
        return _run(self, mutant_name=mutant_name, tests=tests)
    finally:
        shutil.rmtree(_own(os.getpid()), ignore_errors=True)
PytestRunner._pytest_args_regular_run = _args_with_own_basetemp
PytestRunner.run_tests = _run_and_clean
"""
BOOT = (
    SYS_PATH
    + OWN_BASETEMP
    + """
from mutmut.__main__ import cli
sys.argv[0] = "mutmut"
cli()
"""
)


#: Generates the mutants (as ``mutmut run`` does first) and stops: the names to sample from.
GENERATE = (
    SYS_PATH
    + """
from pathlib import Path
from mutmut import __main__ as m
m.set_mutant_under_test("mutant_generation")
Path("mutants").mkdir(exist_ok=True)
m.copy_src_dir()
m.copy_also_copy_files()
m.setup_source_paths()
m.store_lines_covered_by_tests()
m.create_mutants(2)
"""
)


def generate(workdir: Path) -> None:
    """Write the mutants (and mutmut's per-file record, every mutant unchecked) in ``workdir``."""
    done = subprocess.run(
        [sys.executable, "-c", GENERATE], cwd=workdir, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"mutant generation failed: {(done.stderr or done.stdout).strip()[-500:]}")


def sample_of(names: list[str], size: int, seed: int, module: str) -> list[str]:
    """``size`` names drawn uniformly from ``names``; the same seed and module give the same."""
    if size >= len(names):
        return sorted(names)
    return sorted(random.Random(f"{seed}:{module}").sample(sorted(names), size))


def run_mutmut(workdir: Path, args: list[str], cap: float, log: Path) -> tuple[bool, float]:
    """Run ``mutmut ARGS`` in ``workdir`` for at most ``cap`` seconds; (finished, seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUPS_", "TTB_"))}
    env.pop("PYTHONPATH", None)  # mutmut puts mutants/ first; the CLI tests set their own
    # Each module's pytest folders apart, so one run's leftovers never reach another's.
    temproot = workdir / "pytest-tmp"
    temproot.mkdir(exist_ok=True)
    env["PYTEST_DEBUG_TEMPROOT"] = str(temproot)
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", BOOT, *args],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=cap)
            finished = True
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own session: mutmut and its workers
            proc.wait()
            finished = False
        finally:
            unmount_under(temproot)
    return finished, time.monotonic() - started


def unmount_under(folder: Path) -> None:
    """Unmount what the tests mounted under ``folder`` and a killed mutant left behind."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    inside = str(folder.resolve()) + "/"
    for line in mounts:
        point = line.split()[1].replace("\\040", " ")
        if point.startswith(inside):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def collect(module: str, workdir: Path) -> dict[str, str]:
    """Mutant name -> status, from mutmut's per-file record (saved after every mutant)."""
    relative = source_of(module).relative_to(ROOT).as_posix()
    meta = workdir / "mutants" / f"{relative}.meta"
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    return {
        name: "not checked" if code is None else STATUS.get(code, "suspicious")
        for name, code in codes.items()
    }


def score(statuses: dict[str, str]) -> tuple[Counter[str], float | None]:
    counts = Counter(statuses.values())
    judged = sum(counts[k] for k in JUDGED)
    return counts, (100.0 * counts["killed"] / judged) if judged else None


def save(
    module: str, statuses: dict[str, str], finished: bool, seconds: float, mode: str = "full"
) -> dict[str, object]:
    counts, percent = score(statuses)
    record = {
        "module": module,
        "source": source_of(module).relative_to(ROOT).as_posix(),
        "tests": list(MODULES[module][1]),
        "finished": finished,
        "seconds": round(seconds, 1),
        "counts": dict(counts),
        "score": None if percent is None else round(percent, 1),
        "survivors": sorted(n for n, s in statuses.items() if s in ("survived", "no tests")),
        "statuses": statuses,
        "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        #: full: every mutant from a fresh copy; survivors/resume: an earlier run's survivors
        #: (and unchecked mutants) run again against today's tests, the rest kept.
        "mode": mode,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"mutation-{module}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def diff_of(workdir: Path, name: str) -> str:
    """The changed lines of one mutant (``mutmut show``), '-' then '+'."""
    done = subprocess.run(
        [sys.executable, "-c", BOOT, "show", name],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = (done.stdout or done.stderr).splitlines()
    return "\n".join(line for line in lines if line.startswith(("- ", "+ ", "-\t", "+\t")))


#: Prints {name: diff} as JSON for the names on stdin: one process for all (``mutmut show``
#: starts a process per mutant, about a second each).
DIFFS = (
    SYS_PATH
    + """
import json
from mutmut.__main__ import find_mutant, get_diff_for_mutant
out = {}
for name in json.load(sys.stdin):
    try:
        out[name] = get_diff_for_mutant(name, path=find_mutant(name).path)
    except Exception as exc:  # a name mutmut no longer knows: say so, keep going
        out[name] = f"(no diff: {exc})"
print(json.dumps(out))
"""
)


def diffs_of(workdir: Path, names: list[str]) -> dict[str, str]:
    """The changed lines of each mutant (as :func:`diff_of`), from one process."""
    if not names:
        return {}
    done = subprocess.run(
        [sys.executable, "-c", DIFFS],
        cwd=workdir,
        input=json.dumps(names),
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {name: diff_of(workdir, name) for name in names}  # the slow way
    keep = ("- ", "+ ", "-\t", "+\t")
    return {
        name: "\n".join(line for line in str(text).splitlines() if line.startswith(keep))
        for name, text in found.items()
    }


def show(workdir: Path, names: list[str]) -> None:
    """Print each mutant's diff."""
    for name in names:
        print(f"# {name}\n{diff_of(workdir, name)}")


#: Reasons given by hand for survivors no test can or should kill, by mutant name.
REASONS_FILE = ROOT / "bench" / "mutation_reasons.json"
#: Survivors of these shapes are explained by rule (first match wins); each rule says why.
RULES: list[tuple[str, Callable[[str, str], bool]]] = [
    (
        "equivalent: SQL keywords and pragma names are case-insensitive",
        lambda old, new: _sql_case_only(old, new),
    ),
    (
        "log text only: the message goes to the log, no result depends on it",
        lambda old, new: "logger." in old and "logger." in new,
    ),
    (
        "equivalent: a thread's name is cosmetic",
        lambda old, new: (
            "thread_name_prefix" in old
            or ("Thread(" in old and _without(old, "name") == _without(new, "name"))
        ),
    ),
    (
        "equivalent: the thread is always joined before the function returns",
        lambda old, new: "Thread(" in old and _without(old, "daemon") == _without(new, "daemon"),
    ),
    (
        "equivalent: the page-cache size changes speed only",
        lambda old, new: "cache_size" in old,
    ),
    (
        "equivalent: zip's strict=False is the default, and None is as false",
        lambda old, new: "strict=False" in old and "strict=" not in new.replace("strict=None", ""),
    ),
    (
        "untestable here: this SQLite is built with SQLITE_USE_URI (PRAGMA compile_options), "
        "so a file: name is read as a URI with or without uri=True; the flag matters on "
        "builds without it",
        lambda old, new: "uri=True" in old and _without(old, "uri") == _without(new, "uri"),
    ),
    (
        "wording only: no test asserts this text word for word",
        lambda old, new: ("Error(" in old or "Finding(" in old) and _literal_only(old, new),
    ),
]


def _sql_case_only(old: str, new: str) -> bool:
    """True when only the case of SQL changed: keywords and names, not a quoted value (one
    after LIKE aside, which ignores ASCII case)."""
    import re

    if old == new or old.lower() != new.lower():
        return False
    if not re.search(r"\b(PRAGMA|SELECT|BEGIN|ROLLBACK|ORDER BY)\b", old, re.IGNORECASE):
        return False
    quoted = r"(\bLIKE\s+)?'[^']*'"
    pairs = zip(re.finditer(quoted, old, re.I), re.finditer(quoted, new, re.I), strict=False)
    return all(a.group(0) == b.group(0) or a.group(1) for a, b in pairs)


def _without(text: str, keyword: str) -> str:
    """``text`` without the keyword argument ``keyword=...`` (to see what else changed)."""
    import re

    return re.sub(rf",?\s*{keyword}=[^,)]*", "", text)


def _literal_only(old: str, new: str) -> bool:
    """True when the mutation only changed (or dropped) a string literal's text."""
    import re

    def strip(text: str) -> str:
        return re.sub(r'f?"(?:[^"\\]|\\.)*"', '""', text).replace("None", '""')

    return old != new and strip(old) == strip(new)


def reason_for(name: str, diff: str, hand: dict[str, str]) -> str:
    if name in hand:
        return hand[name]
    old = " ".join(line[2:].strip() for line in diff.splitlines() if line.startswith("- "))
    new = " ".join(line[2:].strip() for line in diff.splitlines() if line.startswith("+ "))
    for reason, applies in RULES:
        if applies(old, new):
            return reason
    return "NOT EXPLAINED: needs a test or a reason"


def markdown(records: list[dict[str, object]]) -> str:
    """bench/MUTATION.md: the table, then every survivor with its diff and reason."""
    hand = json.loads(REASONS_FILE.read_text()) if REASONS_FILE.exists() else {}
    out = [
        "# Mutation testing of the core",
        "",
        "Generated by `python bench/mutation.py --markdown` from the last run of each module",
        "(`bench/results/`, git-ignored). mutmut 3; each mutant runs against the tests that reach",
        "the mutated function (the module's test files are listed in `bench/mutation.py`).",
        'Score = killed / (killed + survived + no tests); timeouts are listed apart; "not',
        "checked\" means the module's time cap ran out first. mutmut 3 does not mutate decorated",
        "functions (properties, context managers), so those are not counted at all.",
        '"Equivalent" counts survivors whose reason says the mutant behaves exactly as the',
        "original; the usual mutation score leaves them out (last column). Survivors with any",
        "other reason (wording, unreachable, untestable here) count against both scores.",
        'A run marked "sample of N, seed S" judged N mutants drawn uniformly at random from',
        "the module (`--sample N --seed S`), every one of them, with no time cap: its score is",
        "an estimate for the whole module, with a 95% Wilson interval; the line under the table",
        "weights each module's sample by its mutant count (a stratified estimate). A",
        '"survivors re-run" judged that run\'s survivors again against later tests.',
        "",
        table(records),
        "",
        "Not run yet (no saved result): "
        + (", ".join(m for m in MODULES if m not in {r["module"] for r in records}) or "none")
        + ".",
        "",
        "## Survivors",
        "",
        "Each with its reason: a rule (the shape of the change) or a hand-written reason in",
        '`bench/mutation_reasons.json`. "NOT EXPLAINED" ones are open work.',
        "",
    ]
    for record in records:
        diffs = record.get("diffs", {})
        assert isinstance(diffs, dict)
        survivors = record["survivors"]
        assert isinstance(survivors, list)
        if not survivors:
            continue
        out.append(f"### {record['module']} ({len(survivors)})")
        out.append("")
        for name in survivors:
            diff = str(diffs.get(name, ""))
            short = name.split(".x", 1)[-1]
            change = " / ".join(
                line.strip()[:90] for line in diff.splitlines() if line.startswith(("- ", "+ "))
            )[:200]
            out.append(
                f"- `{short}` ({record['statuses'][name]}): {reason_for(name, diff, hand)}"  # type: ignore[index]
                f" — `{change.replace('`', '')}`"
            )
        out.append("")
    return "\n".join(out) + "\n"


def equivalent_count(record: dict[str, object], hand: dict[str, str]) -> int:
    """Survivors whose reason says the mutant behaves exactly as the original ("equivalent:"):
    no test can kill those, so the usual mutation score leaves them out. Survivors with any
    other reason (wording, unreachable, untestable here) still count against the score."""
    diffs = record.get("diffs", {})
    assert isinstance(diffs, dict)
    survivors = record["survivors"]
    assert isinstance(survivors, list)
    return sum(
        reason_for(name, str(diffs.get(name, "")), hand).startswith("equivalent")
        for name in survivors
        if record["statuses"][name] == "survived"  # type: ignore[index]
    )


def wilson(killed: int, judged: int) -> tuple[float, float]:
    """The 95% Wilson interval of a sampled score, in percent."""
    z = 1.96
    p = killed / judged
    centre = (p + z * z / (2 * judged)) / (1 + z * z / judged)
    half = (
        z * math.sqrt(p * (1 - p) / judged + z * z / (4 * judged * judged)) / (1 + z * z / judged)
    )
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def stratified(strata: list[tuple[int, int, int]]) -> tuple[float, float]:
    """Estimate and 95% half-width (percent) of the score over every mutant of every module,
    from (mutants in the module, judged, killed) per module: each module's sample score is
    weighted by its size; the variance uses (killed+2)/(judged+4), so that a module whose
    sample was all killed still adds its share of doubt, and the finite-population correction."""
    population = sum(size for size, judged, _ in strata if judged)
    estimate = variance = 0.0
    for size, judged, killed in strata:
        if not judged:
            continue
        weight = size / population
        estimate += weight * killed / judged
        shrunk = (killed + 2) / (judged + 4)
        correction = (size - judged) / size if size > 1 else 0.0
        variance += weight * weight * shrunk * (1 - shrunk) / judged * correction
    return 100.0 * estimate, 100.0 * 1.96 * math.sqrt(variance)


def table(records: list[dict[str, object]]) -> str:
    hand = json.loads(REASONS_FILE.read_text()) if REASONS_FILE.exists() else {}
    head = (
        "| module | mutants | judged | killed | survived | no tests | timeout | not checked | "
        "score (95% interval if sampled) | equivalent | score without them | run |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )
    rows = [head]
    equivalents_in_all = 0
    strata: list[tuple[int, int, int]] = []
    strata_without: list[tuple[int, int, int]] = []
    sampled = False
    for record in records:
        counts = record["counts"]
        assert isinstance(counts, dict)
        total = sum(counts.values())
        killed = int(counts.get("killed", 0))
        judged_here = sum(int(counts.get(k, 0)) for k in JUDGED)
        equivalents = equivalent_count(record, hand)
        equivalents_in_all += equivalents
        rest = judged_here - equivalents
        if not judged_here:
            score_cell = "-"
        else:
            score_cell = f"{100.0 * killed / judged_here:.1f}%"
            if counts.get("not sampled"):
                sampled = True
                low, high = wilson(killed, judged_here)
                score_cell += f" ({low:.0f}-{high:.0f}%)"
        without = f"{100.0 * killed / rest:.1f}%" if rest else "-"
        strata.append((total, judged_here, killed))
        # The module's equivalent share, seen in its sample, taken out of its size as well.
        size_without = round(total * rest / judged_here) if judged_here else 0
        strata_without.append((size_without, rest, killed))
        run = f"{record['seconds']}s" + ("" if record["finished"] else " (cap hit)")
        if record.get("mode", "full") != "full":
            run += f" ({record['mode']})"
        run += f", {record.get('at', 'date not recorded')}"
        rows.append(
            f"| {record['module']} | {total} | {judged_here} | {killed} | "
            f"{counts.get('survived', 0)} | {counts.get('no tests', 0)} | "
            f"{counts.get('timeout', 0)} | {counts.get('not checked', 0)} | "
            f"{score_cell} | {equivalents} | {without} | {run} |"
        )
    killed = sum(k for _, _, k in strata)
    judged = sum(j for _, j, _ in strata)
    if judged:
        rows.append(
            f"\nAll modules: {killed} of {judged} judged mutants killed "
            f"({100.0 * killed / judged:.1f}%); {equivalents_in_all} survivors are equivalent "
            f"mutants, and without them {killed} of {judged - equivalents_in_all} "
            f"({100.0 * killed / (judged - equivalents_in_all):.1f}%)."
        )
    if sampled:
        estimate, half = stratified(strata)
        estimate_without, half_without = stratified(strata_without)
        rows.append(
            f"\nEstimated over all {sum(t for t, _, _ in strata)} mutants (each module's sample "
            f"weighted by its size): {estimate:.1f}% killed (95% interval ±{half:.1f}); "
            f"leaving out equivalent mutants, {estimate_without:.1f}% (±{half_without:.1f})."
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=", ".join(MODULES))
    parser.add_argument("--cap", type=float, default=1200.0, help="seconds per module")
    parser.add_argument("--children", type=int, default=2, help="mutants run in parallel")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ttb-mutation"))
    parser.add_argument("--survivors", action="store_true", help="re-run the last survivors")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="re-run the last survivors and the mutants a time cap left unchecked",
    )
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="judge N mutants drawn at random (no cap) instead of all of them under a cap",
    )
    parser.add_argument("--seed", type=int, default=20261207, help="the --sample draw's seed")
    parser.add_argument(
        "--extend",
        type=int,
        metavar="N",
        help="judge N more mutants of the last sample, drawn from those not drawn yet",
    )
    parser.add_argument("--show", action="store_true", help="print the survivors' diffs")
    parser.add_argument("--report", action="store_true", help="only print the saved results")
    parser.add_argument(
        "--markdown", action="store_true", help="write bench/MUTATION.md from the saved results"
    )
    options = parser.parse_args()
    unknown = set(options.modules) - set(MODULES)
    if unknown:
        parser.error(f"unknown module(s): {', '.join(sorted(unknown))}")
    modules = [
        m
        for m in (options.modules or list(MODULES))
        if any((ROOT / "tablettracker_backups" / c).exists() for c in MODULES[m][0])
    ]
    records = []
    failures = 0
    for module in modules:
        workdir = options.workdir / module
        saved = RESULTS / f"mutation-{module}.json"
        if options.report or options.show or options.markdown:
            if saved.exists():
                records.append(json.loads(saved.read_text()))
                # Older records carry no date: the file was written when the run ended.
                ended = time.gmtime(saved.stat().st_mtime)
                records[-1].setdefault("at", time.strftime("%Y-%m-%d %H:%M UTC", ended))
                if options.show:
                    show(workdir, records[-1]["survivors"])
                if options.markdown and "diffs" not in records[-1] and workdir.exists():
                    records[-1]["diffs"] = diffs_of(workdir, records[-1]["survivors"])
            continue
        if options.survivors or options.resume or options.extend:
            if not saved.exists() or not workdir.exists():
                sys.exit(f"{module}: no earlier run to take survivors from")
            if (workdir / "source.sha256").read_text() != digest(source_of(module)):
                sys.exit(f"{module}: the source changed since its run; run it afresh")
            for copy in (workdir / "tests", workdir / "mutants" / "tests"):
                shutil.rmtree(copy)
                shutil.copytree(ROOT / "tests", copy)
            refresh_package(module, workdir)
            write_config(module, workdir)
            last = json.loads(saved.read_text())
            names = list(last["survivors"])
            if options.resume:
                names += [n for n, status in last["statuses"].items() if status == "not checked"]
            if options.extend:
                rest = sorted(
                    n for n, status in last["statuses"].items() if status == "not sampled"
                )
                judged = len(last["statuses"]) - len(rest)
                # A uniform draw from the mutants not drawn yet: the union is still a uniform
                # sample of the module (sampling without replacement, in two steps).
                names = sample_of(rest, options.extend, options.seed, f"{module}:{judged}")
            args = ["run", f"--max-children={options.children}", *names]
            # The saved record, not mutmut's own: that one has no "not sampled".
            previous = dict(last["statuses"])
        elif options.sample:
            prepare(module, workdir, options.children)
            generate(workdir)
            population = sorted(collect(module, workdir))
            drawn = sample_of(population, options.sample, options.seed, module)
            args = ["run", f"--max-children={options.children}", *drawn]
            previous = {name: "not sampled" for name in population if name not in drawn}
        else:
            prepare(module, workdir, options.children)
            args = ["run", f"--max-children={options.children}"]
            previous = {}
        print(f"{module}: mutating {source_of(module).relative_to(ROOT)} ...", flush=True)
        finished, seconds = run_mutmut(workdir, args, options.cap, workdir / "mutmut.log")
        log = (workdir / "mutmut.log").read_text(encoding="utf-8", errors="replace")
        if "failed to collect stats" in log:
            # A test failed before any mutant ran: keep the last result, say why.
            failing = [line for line in log.splitlines() if line.startswith("FAILED ")]
            print(f"{module}: not run, the selected tests fail unmutated: {failing[:3]}")
            failures += 1
            continue
        # Only what this run judged replaces the last result: mutmut forgets every exit code
        # when its configuration changes, and a mutant not run now is not "not checked".
        fresh = collect(module, workdir)
        if finished and all(status == "not checked" for status in fresh.values()):
            # mutmut stopped before judging anything (seen: its clean test run failing on a
            # folder left mounted): keep the last result, say why, never record it as a run.
            tail = [line for line in log.replace("\r", "\n").splitlines() if line.strip()]
            print(f"{module}: not run, mutmut judged nothing: {tail[-2:]}")
            failures += 1
            continue
        statuses = {
            **previous,
            **{k: v for k, v in fresh.items() if v != "not checked" or k not in previous},
        }
        mode = "resume" if options.resume else "survivors" if options.survivors else "full"
        if options.sample:
            mode = f"sample of {options.sample}, seed {options.seed}"
        elif options.extend:
            judged = sum(1 for status in statuses.values() if status != "not sampled")
            mode = f"sample of {judged} (extended), seed {options.seed}"
        elif mode != "full":
            base = str(json.loads(saved.read_text()).get("mode", "full"))
            mode = f"{mode} re-run of " + base.split(" re-run of ")[-1]
        record = save(module, statuses, finished, seconds, mode)
        record["diffs"] = diffs_of(workdir, record["survivors"])
        (RESULTS / f"mutation-{module}.json").write_text(json.dumps(record, indent=1) + "\n")
        records.append(record)
        print(table(records[-1:]), flush=True)
    if options.markdown:
        (ROOT / "bench" / "MUTATION.md").write_text(markdown(records))
    print(table(records))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Hostile input: bad databases, unwritable folders, malformed config, fuzzed metadata and ids,
hostile files in the backup folder, file modes, and secrets that must never leak.

Every bad input must give one line of error and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tablettracker_backups.errors import ConfigError, InvalidBackupId, MetadataError
from tablettracker_backups.metadata import BackupMetadata, validate_backup_id
from tablettracker_backups.settings import CORE_KEYS, settings_from_mapping
from tests.conftest import make_db
from tests.faultkit import ROOT, assert_one_line_error, cli_env, mount_tmpfs, run_cli, unmount
from tests.reliability import Recorder

#: What this file's reliability rows count, unless a row says otherwise (fuzz targets do).
RELIABILITY_KIND = "attack"

# -- the database -----------------------------------------------------------------------------


def _bad_databases(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, what the error must mention)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (folder / "nope.db", "does not exist")
    (folder / "empty.db").write_bytes(b"")
    cases["empty"] = (folder / "empty.db", "empty")
    (folder / "text.db").write_text("id,name\n1,ibuprofen\n" * 100)
    cases["CSV text, not SQLite"] = (folder / "text.db", "not a SQLite database")
    (folder / "random.db").write_bytes(os.urandom(64 * 1024))
    cases["random bytes (encrypted-looking)"] = (folder / "random.db", "not a SQLite database")
    (folder / "tiny.db").write_bytes(b"SQLite")
    cases["6-byte file"] = (folder / "tiny.db", "not a SQLite database")
    header = b"SQLite format 3\x00" + os.urandom(8192)
    (folder / "header.db").write_bytes(header)
    cases["SQLite header, garbage body"] = (folder / "header.db", "not a SQLite database")
    (folder / "adir.db").mkdir(exist_ok=True)
    cases["a folder"] = (folder / "adir.db", "folder")
    return cases


def parallel(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run independent CLI processes two at a time (the machine has two cores)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda job: job(), jobs))


def test_bad_databases(tmp_path: Path, reliability: Recorder) -> None:
    cases = _bad_databases(tmp_path / "dbs")
    commands = (["backup"], ["run"], ["verify"], ["init", "--write-config", "c.toml"])
    row = reliability(
        "bad live database: " + ", ".join(cases),
        trials=len(cases) * len(commands),
        checked=f"{', '.join(c[0] for c in commands)}: exit 2, one-line 'Error:' naming the "
        "problem (verify: any one line), no traceback; nothing created beside the database, "
        "no configured backup folder created, no config file written",
    )
    beside = sorted(p.name for p in (tmp_path / "dbs").iterdir())
    jobs = []
    for _name, (path, _needle) in cases.items():
        for command in commands:
            env = cli_env(path, tmp_path / "b" / path.name, home=tmp_path)
            jobs.append(lambda command=command, env=env: run_cli(command, env))
    results = parallel(jobs)
    index = 0
    for name, (_path, needle) in cases.items():
        for command in commands:
            result = results[index]
            index += 1
            assert result.returncode == 2, (name, command, result.stderr)
            line = assert_one_line_error(result)
            if command[0] != "verify":  # verify has no backup to look at: says so
                assert needle.lower() in line.lower(), (name, command, line)
    # Nothing beside the databases, none of the backup folders the commands were given, and no
    # config file (init was told to write c.toml in the repository root, its working folder).
    assert sorted(p.name for p in (tmp_path / "dbs").iterdir()) == beside
    assert not (tmp_path / "b").exists()
    assert not (ROOT / "c.toml").exists()
    row["detail"] = "e.g. " + assert_one_line_error(results[4]).replace(str(tmp_path), "")


def test_locked_database_gives_a_bounded_wait(tmp_path: Path, reliability: Recorder) -> None:
    row = reliability(
        "live database held under an EXCLUSIVE lock by another process",
        trials=2,
        checked="backup waits at most BACKUPS_BUSY_TIMEOUT (+ start-up), then exit 2 with one "
        "line saying it is locked; health reports it critical; works once the lock goes",
    )
    db = make_db(tmp_path / "t.db")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
            str(db),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        env = cli_env(db, tmp_path / "b", home=tmp_path, BACKUPS_BUSY_TIMEOUT="1")
        started = time.monotonic()
        result = run_cli(["backup"], env, timeout=60)
        waited = time.monotonic() - started
        line = assert_one_line_error(result, "locked")
        assert waited < 30, waited  # bounded: a hang would hit the 60 s subprocess timeout
        health = run_cli(["health", "--json"], env, timeout=60)
        assert health.returncode == 2 and "Traceback" not in health.stderr
        assert json.loads(health.stdout)["status"] == "critical"
    finally:
        holder.communicate("", timeout=30)
    assert run_cli(["backup"], env).returncode == 0
    row["detail"] = line.replace(str(tmp_path), "")[:150]


# -- unwritable folders -----------------------------------------------------------------------


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path | None]:
    """A read-only tmpfs mount (root ignores file modes, not a read-only file system)."""
    target = tmp_path / "ro"
    target.mkdir()
    if not mount_tmpfs(target, "ro,size=1m"):  # pragma: no cover - not root
        yield None
        return
    try:
        yield target
    finally:
        unmount(target)


def test_unwritable_backup_folders(
    tmp_path: Path, read_only_dir: Path | None, reliability: Recorder
) -> None:
    db = make_db(tmp_path / "t.db")
    (tmp_path / "plainfile").write_text("x")
    cases = {
        "backup folder under a regular file": (tmp_path / "plainfile" / "backups", ""),
        "backup folder is a regular file": (tmp_path / "plainfile", "file"),
    }
    if read_only_dir is not None:
        cases["backup folder on a read-only mount"] = (read_only_dir / "backups", "")
        cases["read-only mount itself"] = (read_only_dir, "")
    row = reliability(
        "unwritable backup folder: " + ", ".join(cases),
        trials=len(cases) * 3,
        checked="backup, run, health: non-zero exit, no traceback; backup/run one line",
    )
    details = []
    for _name, (folder, needle) in cases.items():
        env = cli_env(db, folder, home=tmp_path)
        for command in (["backup"], ["run"]):
            result = run_cli(command, env)
            line = assert_one_line_error(result, needle)
            details.append(line)
        health = run_cli(["health"], env)
        assert health.returncode == 2, health.stdout + health.stderr
        assert "Traceback" not in health.stdout + health.stderr
    # The database was never touched.
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    row["detail"] = "; ".join(sorted({d.replace(str(tmp_path), "")[:70] for d in details}))


SECONDARY_TROUBLE = {
    # case: (what stands in the way, the needle the warning must contain)
    "under a regular file": ("plainfile", "is not a folder"),
    "on a disk that is not mounted (parent folder missing)": ("unplugged", "does not exist"),
    "on a read-only mount": ("ro", "permission denied"),
}


@pytest.mark.parametrize("case", list(SECONDARY_TROUBLE))
def test_unwritable_secondary_folder_is_a_warning(
    tmp_path: Path, reliability: Recorder, request: pytest.FixtureRequest, case: str
) -> None:
    row = reliability(
        f"secondary folder {case}",
        trials=1,
        checked="`backup` exits 1 with exactly one stderr line 'Warning: secondary copy failed: "
        "<reason>'; the primary holds exactly the new backup and it fully verifies; `list` shows "
        "primary ok, secondary missing; `health` says warning (exit 1), not critical; nothing is "
        "created where the secondary should be; `run --force` then exits 1 with the same "
        "warning and stores a new backup that verifies",
    )
    blocker, needle = SECONDARY_TROUBLE[case]
    if blocker == "plainfile":
        (tmp_path / blocker).write_text("x")
    elif blocker == "ro" and request.getfixturevalue("read_only_dir") is None:
        pytest.skip("cannot mount a read-only tmpfs here")
    secondary = tmp_path / blocker / "mirror"
    db = make_db(tmp_path / "t.db")
    env = cli_env(db, tmp_path / "b", secondary, home=tmp_path)
    result = run_cli(["backup"], env)
    assert result.returncode == 1, result.stdout + result.stderr
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("Warning: secondary copy failed: ") and needle in warning, warning
    assert result.stdout.startswith("Backup ") and "stored in primary" in result.stdout
    from tablettracker_backups.store import BackupStore
    from tablettracker_backups.verify import verify_copy

    settings = settings_from_mapping({"database": db, "dir": tmp_path / "b"})
    store = BackupStore(settings)
    (info,) = store.list()
    assert verify_copy(store, "primary", info.id).ok
    listed = json.loads(run_cli(["list", "--json"], env).stdout)
    assert [item["copies"] for item in listed] == [{"primary": "ok", "secondary": "missing"}]
    health = run_cli(["health", "--json"], env)
    assert health.returncode == 1, health.stdout + health.stderr
    assert json.loads(health.stdout)["status"] == "warning"
    assert not secondary.exists()
    if blocker == "unplugged":
        assert not (tmp_path / blocker).exists()
    # The scheduled run goes ahead the same way.
    scheduled = run_cli(["run", "--force"], env)
    assert scheduled.returncode == 1, scheduled.stdout + scheduled.stderr
    assert "Warning: secondary copy failed: " in scheduled.stderr
    newest = store.list()[0]
    assert newest.id != info.id and verify_copy(store, "primary", newest.id).ok
    row["detail"] = f"exit 1: {warning.replace(str(tmp_path), '')[:140]}"


# -- malformed configuration ------------------------------------------------------------------

CONFIG_CASES: dict[str, tuple[str, str]] = {
    # name: (config file body, error needle)
    "TOML syntax error": ("[backups\ninterval = 1h", "not valid TOML"),
    "[backups] not a table": ("backups = 3", "table"),
    "unknown key": ("[backups]\nintervall = '1h'", "intervall"),
    "interval word": ("[backups]\ninterval = 'soon'", "INTERVAL"),
    "interval zero": ("[backups]\ninterval = 0", "INTERVAL"),
    "interval negative": ("[backups]\ninterval = -5", "INTERVAL"),
    "interval inf": ("[backups]\ninterval = inf", "INTERVAL"),
    "interval nan": ("[backups]\ninterval = nan", "INTERVAL"),
    "interval bool": ("[backups]\ninterval = true", "INTERVAL"),
    "interval huge": ("[backups]\ninterval = 1e300", "INTERVAL"),
    "keep_daily negative": ("[backups]\nkeep_daily = -1", "KEEP_DAILY"),
    "keep_daily word": ("[backups]\nkeep_daily = 'many'", "KEEP_DAILY"),
    "keep_daily float": ("[backups]\nkeep_daily = 1.5", "KEEP_DAILY"),
    "keep_daily array": ("[backups]\nkeep_daily = [1]", "KEEP_DAILY"),
    "compression rar": ("[backups]\ncompression = 'rar'", "COMPRESSION"),
    "compression level 99": ("[backups]\ncompression_level = 99", "COMPRESSION_LEVEL"),
    "disk_warning words": ("[backups]\ndisk_warning = 'lots'", "DISK_WARNING"),
    "disk_warning 150%": ("[backups]\ndisk_warning = '150%'", "DISK_WARNING"),
    "disk_critical nan": ("[backups]\ndisk_critical = nan", "DISK_CRITICAL"),
    "lock_timeout word": ("[backups]\nlock_timeout = 'x'", "LOCK_TIMEOUT"),
    "lock_timeout nan": ("[backups]\nlock_timeout = nan", "LOCK_TIMEOUT"),
    "lock_timeout inf": ("[backups]\nlock_timeout = inf", "LOCK_TIMEOUT"),
    "busy_timeout negative": ("[backups]\nbusy_timeout = -1", "BUSY_TIMEOUT"),
    "busy_timeout nan": ("[backups]\nbusy_timeout = nan", "BUSY_TIMEOUT"),
    "database empty": ("[backups]\ndatabase = ''", "DATABASE"),
    "database table": ("[backups]\ndatabase = {a = 1}", "DATABASE"),
    "dir empty": ("[backups]\ndir = ''", "DIR"),
    "secondary = dir": ("[backups]\ndir = '/tmp/x'\nsecondary_dir = '/tmp/x'", "SECONDARY"),
    "health_checksum_count word": ("[backups]\nhealth_checksum_count = 'all'", "CHECKSUM"),
    "s3 endpoint without bucket": ("[backups]\ns3_endpoint_url = 'http://x'", "BUCKET"),
    "s3 endpoint not http": (
        "[backups]\ns3_bucket = 'b'\ns3_endpoint_url = 'ftp://x'",
        "ENDPOINT",
    ),
}


def test_malformed_config(tmp_path: Path, reliability: Recorder) -> None:
    db = make_db(tmp_path / "t.db")
    jobs = []
    names = []
    for index, (name, (body, _needle)) in enumerate(CONFIG_CASES.items()):
        config = tmp_path / f"c{index}.toml"
        text = (
            body
            if "database" in body
            else body.replace("[backups]", f"[backups]\ndatabase = '{db}'", 1)
        )
        config.write_text(text)
        env = cli_env(None, home=tmp_path, BACKUPS_CONFIG=str(config))
        names.append(name)
        jobs.append(lambda env=env: run_cli(["backup"], env))
    (tmp_path / "latin1.toml").write_bytes(b"[backups]\ndatabase = '\xff\xfe'\n")
    (tmp_path / "adir.toml").mkdir()
    extra = {
        "config not UTF-8": (tmp_path / "latin1.toml", "config file"),
        "config is a folder": (tmp_path / "adir.toml", "directory"),
        "config missing": (tmp_path / "nope.toml", "does not exist"),
    }
    for name, (path, _needle) in extra.items():
        env = cli_env(None, home=tmp_path, BACKUPS_CONFIG=str(path))
        names.append(name)
        jobs.append(lambda env=env: run_cli(["backup"], env))
    env_cases = {
        "env BACKUPS_INTERVAL=abc": ({"BACKUPS_INTERVAL": "abc"}, "INTERVAL"),
        "env BACKUPS_KEEP_HOURLY=-3": ({"BACKUPS_KEEP_HOURLY": "-3"}, "KEEP_HOURLY"),
        "env BACKUPS_COMPRESSION_LEVEL=x": ({"BACKUPS_COMPRESSION_LEVEL": "x"}, "LEVEL"),
        "no database anywhere": ({}, "no database"),
    }
    for name, (values, _needle) in env_cases.items():
        env = cli_env(db if values else None, home=tmp_path, **values)
        names.append(name)
        jobs.append(lambda env=env: run_cli(["backup"], env))
    row = reliability(
        "malformed configuration (TOML file, environment)",
        trials=len(jobs),
        checked="exit 2, one line naming the bad setting, no traceback, no backup folder made",
    )
    needles = [n for _b, n in CONFIG_CASES.values()] + [n for _p, n in extra.values()]
    needles += [n for _v, n in env_cases.values()]
    results = parallel(jobs)
    failures = []
    for name, needle, result in zip(names, needles, results, strict=True):
        try:
            assert result.returncode == 2, result.returncode
            assert_one_line_error(result, needle)
        except AssertionError as exc:
            failures.append(f"{name}: {exc} :: {(result.stdout + result.stderr)[-300:]}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "backups").exists()
    row["detail"] = ", ".join(names)


# -- fuzzing ----------------------------------------------------------------------------------

#: Derandomized (reproducible) and without the example database: same inputs every run.
_FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _valid_document() -> dict[str, Any]:
    return {
        "format_version": 1,
        "id": "20261123T201500Z-3f9a1c",
        "created_at": "2026-11-23T20:15:00.123456Z",
        "kind": "scheduled",
        "trigger": "cli",
        "source": {
            "path": "/x/db",
            "size": 4096,
            "page_size": 4096,
            "page_count": 1,
            "journal_mode": "wal",
            "sqlite_version": "3.40.1",
        },
        "tool_version": "0.1.0",
        "schema_fingerprint": "a" * 64,
        "row_counts": {"t": 1},
        "raw_size": 4096,
        "raw_sha256": "b" * 64,
        "stored_size": 100,
        "sha256": "c" * 64,
        "compression": "zstd",
        "compression_level": 3,
        "durations": {"total": 0.1},
        "verification": {
            "ok": True,
            "verified_at": "2026-11-23T20:15:01Z",
            "integrity_check": "ok",
            "foreign_key_violations": 0,
            "error": None,
        },
        "data_file": "20261123T201500Z-3f9a1c.db.zst",
        "extra": {},
    }


SPECIALS: list[Any] = [
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "2026-11-23T20:15:00",
    "20261123T201500Z-3f9a1c",
    "20261123T201500Z-3f9a1c\n",
    "../../etc/passwd",
    "/etc/passwd",
    "2026-13-45T99:99:99Z",
    "1e999",
    "nan",
    "inf",
    "-1h",
    "10%",
    "100%",
    "",
    " ",
    "\x00",
    -1,
    0,
    2**70,
    -(2**70),
    1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
    True,
    None,
    [],
    {},
    {"a": [1, {"b": None}]},
]
#: Flat (non-recursive) values: fast to generate, and the specials come up often.
JSON_VALUES = st.one_of(
    st.sampled_from(SPECIALS),
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.lists(st.integers() | st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=5), max_size=3),
)
_DOC = _valid_document()
FIELD_PATHS = (
    [(k,) for k in _DOC]
    + [("source", k) for k in _DOC["source"]]
    + [("verification", k) for k in _DOC["verification"]]
)

_FUZZ_COUNT: dict[str, int] = {}
#: The fuzz tests count what they tried in this process, and test_fuzz_report reads the counts:
#: on xdist they must all run in one worker (in file order), or the report sees only a share.
FUZZ_WORKER = pytest.mark.xdist_group("fuzz")


def _count(name: str) -> None:
    _FUZZ_COUNT[name] = _FUZZ_COUNT.get(name, 0) + 1


_VALID_BYTES = json.dumps(_DOC, indent=2, sort_keys=True).encode()


def _edited(edit: tuple[int, int, bytes]) -> bytes:
    """The valid document's bytes with one span replaced: many edits still parse."""
    start, length, insert = edit
    return _VALID_BYTES[:start] + insert + _VALID_BYTES[start + length :]


def _assert_parses_back_or_one_line(data: bytes | str, name: str) -> None:
    """The property every metadata fuzz input must have: accepted input round-trips; rejected
    input raises MetadataError with a one-line message (what the CLI prints after 'Error:')."""
    try:
        parsed = BackupMetadata.from_json(data)
    except MetadataError as exc:
        _count(f"{name}: rejected")
        message = str(exc)
        assert message and "\n" not in message and len(message) < 400, repr(message)
        return
    _count(f"{name}: accepted")
    assert BackupMetadata.from_json(parsed.to_json()) == parsed


@FUZZ_WORKER
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.tuples(
            st.integers(0, len(_VALID_BYTES) - 1),
            st.integers(0, 3),
            st.binary(max_size=3) | st.sampled_from([b"0", b"9", b"a", b"Z", b" ", b"\\u00e9"]),
        ).map(_edited),
    )
)
def test_fuzz_metadata_bytes(data: bytes) -> None:
    _assert_parses_back_or_one_line(data, "metadata reader: random bytes or an edited document")


@FUZZ_WORKER
# One test drawing the field, not one case per field: test_fuzz_report below needs every
# field's examples counted before it runs, and twice in full xdist runs it found only one
# case's 25 (the file's single tests had all run before it).
@settings(_FUZZ, max_examples=25 * len(FIELD_PATHS))
@given(path=st.sampled_from(FIELD_PATHS), value=JSON_VALUES, drop=st.booleans())
def test_fuzz_metadata_fields(path: tuple[str, ...], value: Any, drop: bool) -> None:
    document = _valid_document()
    target = document
    for key in path[:-1]:
        target = target[key]
    if drop:
        target.pop(path[-1])
    else:
        target[path[-1]] = value
    _assert_parses_back_or_one_line(
        json.dumps(document), "metadata reader: one field replaced or removed"
    )


@FUZZ_WORKER
@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.from_regex(r"\A\d{8}T\d{6}Z-[0-9a-f]{6}\n?\Z"),
        st.from_regex(r"\A[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}\Z"),
        # Real moments: random digits are rarely a valid date, and which examples a
        # derandomized run draws shifts with the constants in the package's source.
        st.builds(
            lambda moment, suffix: f"{moment:%Y%m%dT%H%M%SZ}-{suffix}",
            st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)),
            st.from_regex(r"\A[0-9a-f]{6}\Z"),
        ),
    )
)
def test_fuzz_backup_id(value: str) -> None:
    from tablettracker_backups.layout import ID_PATTERN

    if ID_PATTERN.match(value):
        # Anything the folder listing accepts as an id is a plain 23-character ASCII name.
        assert len(value) == 23 and value.isascii(), repr(value)
    try:
        checked = validate_backup_id(value)
    except InvalidBackupId as exc:
        _count("backup id parser: rejected")
        assert "\n" not in str(exc) and str(exc), repr(str(exc))
        return
    _count("backup id parser: accepted")
    assert checked == value and checked.isascii() and len(checked) == 23
    assert "/" not in checked and "\x00" not in checked and "\n" not in checked


@FUZZ_WORKER
@pytest.mark.parametrize("key", sorted(CORE_KEYS))
@_FUZZ
@given(value=JSON_VALUES)
def test_fuzz_settings(key: str, value: Any) -> None:
    _assert_sane_or_one_line(key, value)


#: Keys the CLI fuzz sets through the environment (folders and the offsite store left out:
#: `list` must be able to run against the prepared folder).
_CLI_KEYS = sorted(
    k for k in CORE_KEYS if k not in ("database", "dir", "secondary_dir") and "s3" not in k
)
_CLI_VALUES = st.sampled_from(
    [str(v) for v in SPECIALS if isinstance(v, (str, int, float)) and "\x00" not in str(v)]
) | st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=12)


@pytest.fixture(scope="module")
def cli_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database and an empty backup folder, shared by the CLI fuzz examples."""
    folder = tmp_path_factory.mktemp("cli-fuzz")
    make_db(folder / "t.db")
    (folder / "backups").mkdir()
    return folder


@FUZZ_WORKER
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(key=st.sampled_from(_CLI_KEYS), value=_CLI_VALUES)
def test_fuzz_settings_through_the_cli(cli_folder: Path, key: str, value: str) -> None:
    from click.testing import CliRunner

    from tablettracker_backups.cli import cli
    from tablettracker_backups.settings import values_from_env

    variable = f"BACKUPS_{key.upper()}"
    env = {
        "BACKUPS_DATABASE": str(cli_folder / "t.db"),
        "BACKUPS_DIR": str(cli_folder / "backups"),
        variable: value,
    }
    try:
        settings_from_mapping(values_from_env(env))
        valid = True
    except ConfigError:
        valid = False
    result = CliRunner().invoke(cli, ["list", "--json"], env=env)
    if valid:
        _count("CLI settings through the environment: accepted")
        assert result.exit_code == 0, (variable, value, result.output)
        assert json.loads(result.stdout) == []
    else:
        _count("CLI settings through the environment: rejected")
        assert result.exit_code == 2, (variable, value, result.output)
        # With --json the error is JSON on stdout too (the trust issue), the same one line.
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: ") and variable in line, line
        assert json.loads(result.stdout) == {"error": line[len("Error: ") :], "exit_code": 2}


def _assert_sane_or_one_line(key: str, value: Any) -> None:
    """Accepted settings are sane (every number finite and not negative, every path absolute
    without NUL); rejected ones raise ConfigError in one line naming BACKUPS_<KEY>."""
    try:
        built = settings_from_mapping({"database": "/tmp/x.db", key: value})
    except ConfigError as exc:
        _count("settings: every key with hostile values: rejected")
        message = str(exc)
        assert "\n" not in message and f"BACKUPS_{key.upper()}" in message, (key, message)
        return
    _count("settings: every key with hostile values: accepted")
    for section in (built, built.retention, built.s3):
        if section is None:
            continue
        for name, field_value in vars(section).items():
            if isinstance(field_value, (int, float)) and not isinstance(field_value, bool):
                assert math.isfinite(field_value) and field_value >= 0, (key, name, field_value)
            if isinstance(field_value, Path):
                assert field_value.is_absolute() and "\x00" not in str(field_value), (key, name)


@FUZZ_WORKER
def test_every_key_with_every_special_value() -> None:
    """The exhaustive grid behind the random fuzzing: each field and key, each nasty value."""
    for path in FIELD_PATHS:
        for value in SPECIALS:
            document = _valid_document()
            target = document
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
            _assert_parses_back_or_one_line(
                json.dumps(document), "metadata reader: one field replaced or removed"
            )
    for name in sorted(CORE_KEYS):
        for value in SPECIALS:
            _assert_sane_or_one_line(name, value)


FUZZ_PROPERTIES = {
    "metadata reader": "accepted: parses back to the same metadata after to_json; rejected: "
    "MetadataError in one line",
    "backup id parser": "accepted: the same 23 ASCII characters, no '/', NUL or newline; the "
    "listing pattern accepts only 23-character ASCII names; rejected: InvalidBackupId in one line",
    "settings": "accepted: every number finite and >= 0, every path absolute without NUL; "
    "rejected: ConfigError in one line naming BACKUPS_<KEY>",
    "CLI settings": "accepted: `list --json` exits 0 and prints []; rejected: exit 2, exactly one "
    "stderr line 'Error: ...' naming BACKUPS_<KEY>, no traceback",
}


@FUZZ_WORKER
def test_fuzz_report(reliability: Recorder) -> None:
    """Runs after the fuzz tests above (file order) and reports how many inputs they tried,
    how many were accepted and how many rejected (both sides must be exercised)."""
    targets = sorted({name.rsplit(": ", 1)[0] for name in _FUZZ_COUNT})
    for target in targets:
        accepted = _FUZZ_COUNT.get(f"{target}: accepted", 0)
        rejected = _FUZZ_COUNT.get(f"{target}: rejected", 0)
        prop = next(v for k, v in FUZZ_PROPERTIES.items() if target.startswith(k))
        reliability(
            f"hypothesis fuzz (derandomized): {target}",
            trials=accepted + rejected,
            checked=prop,
            detail=f"accepted {accepted}, rejected {rejected}",
            kind="fuzz",
        )
        assert accepted and rejected, (target, accepted, rejected)


# -- hostile files in the backup folder -------------------------------------------------------


def test_hostile_files_in_backup_folder(tmp_path: Path, reliability: Recorder) -> None:
    row = reliability(
        "hostile files in the backup folder (newline in name, folder/symlink/FIFO/2 MiB "
        "metadata, orphan symlink and FIFO data, stray .tmp- folder)",
        trials=9,
        checked="list, verify --all, health, run: no traceback; the real backup still lists "
        "and verifies; nothing outside the folder is read or deleted",
    )
    db = make_db(tmp_path / "t.db")
    backups = tmp_path / "b"
    env = cli_env(db, backups, home=tmp_path)
    assert run_cli(["backup"], env).returncode == 0
    outside = tmp_path / "outside.db.zst"
    outside.write_bytes(b"precious")
    fake = "20261123T201500Z-aaaaaa"
    (backups / f"{fake}\n.json").write_text("{}")  # a newline in the name
    (backups / "20261123T201501Z-bbbbbb.json").mkdir()  # metadata that is a folder
    (backups / "20261123T201502Z-cccccc.db.zst").symlink_to(outside)  # orphan symlink
    (backups / "20261123T201503Z-dddddd.json").symlink_to("/etc/passwd")
    (backups / "20261123T201504Z-eeeeee.json").write_bytes(b" " * (2 * 2**20))  # 2 MiB
    (backups / ".tmp-dir").mkdir()
    (backups / "20261123T201505Z-ffffff.json").write_text('{"format_version": 1}')
    os.mkfifo(backups / "20261123T201506Z-abcdef.json")  # would block a plain open()
    os.mkfifo(backups / "20261123T201507Z-abcdef.db.zst")
    outputs = {}
    for args in (["list", "--json"], ["verify", "--all"], ["health"], ["run", "--force"]):
        result = run_cli(args, env, timeout=60)  # a hang fails here
        outputs[args[0]] = result
        assert "Traceback" not in result.stdout + result.stderr, (args, result.stderr)
    assert outputs["list"].returncode == 0, outputs["list"].stderr
    listed = json.loads(outputs["list"].stdout)
    real = [e for e in listed if e["verified"]]
    assert len(real) == 1, listed
    assert outside.read_bytes() == b"precious"
    assert Path("/etc/passwd").exists()
    row["detail"] = f"list showed {len(listed)} entries, {len(real)} verified"


# -- file modes -------------------------------------------------------------------------------


def test_created_files_are_owner_only(tmp_path: Path, reliability: Recorder) -> None:
    row = reliability(
        "files and folders the tool creates, under umask 000",
        trials=0,
        checked="init, backup, run, verify, health (with a failure logged): every file 0600, "
        "every folder 0700 (backup folders, secondary, state files, lock, config)",
    )
    (tmp_path / "instance").mkdir()
    db = make_db(tmp_path / "instance" / "t.db")
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env(db, tmp_path / "data" / "b", tmp_path / "data2" / "mirror", home=home)
    config = home / ".config" / "tablettracker-backups" / "config.toml"
    for args in (
        ["init", "--interval", "1h"],
        ["backup"],
        ["run", "--force"],
        ["verify", "--all"],
        ["health"],
        ["status"],
    ):
        result = run_cli(args, env, umask=0)
        assert result.returncode in (0, 1), (args, result.stderr)
    checked = 0
    for root in (tmp_path / "data", tmp_path / "data2", config.parent):
        for folder, dirs, files in os.walk(root):
            for name in dirs:
                mode = stat.S_IMODE((Path(folder) / name).stat().st_mode)
                assert mode == 0o700, (folder, name, oct(mode))
                checked += 1
            for name in files:
                if name == ".gitignore":
                    continue
                mode = stat.S_IMODE((Path(folder) / name).stat().st_mode)
                assert mode == 0o600, (folder, name, oct(mode))
                checked += 1
    assert config.exists()
    row["trials"] = checked
    row["detail"] = f"{checked} files and folders checked"


# -- secrets ----------------------------------------------------------------------------------

SECRET_KEY = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRETKEY"
ACCESS_KEY = "AKIAIOSFODNN7SECRETID"


def test_secrets_never_leak(tmp_path: Path, reliability: Recorder) -> None:
    commands = (
        ["backup", "--json"],
        ["backup"],
        ["list", "--json"],
        ["show", "latest", "--json"],
        ["verify", "--all", "--json"],
        ["run", "--force", "--json"],
        ["run", "--force"],
        ["health", "--json"],
        ["status"],
        ["prune", "--json"],
        ["backup", "--database", str(tmp_path / "missing.db")],
    )
    row = reliability(
        "secrets (S3 keys via environment) in output and files",
        trials=len(commands),
        checked="no key in stdout/stderr of any command (also on errors), status.json, "
        "alerts.jsonl, audit.jsonl, metadata or any other file the tool wrote",
    )
    db = make_db(tmp_path / "t.db")
    env = cli_env(
        db,
        tmp_path / "b",
        tmp_path / "m",
        home=tmp_path,
        BACKUPS_S3_BUCKET="tt-backups",
        BACKUPS_S3_ENDPOINT_URL="http://127.0.0.1:9",
        BACKUPS_S3_ACCESS_KEY_ID=ACCESS_KEY,
        BACKUPS_S3_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
    )
    for args in commands:
        result = run_cli(args, env)
        output = result.stdout + result.stderr
        assert "Traceback" not in output, (args, output)
        for secret in (SECRET_KEY, ACCESS_KEY, SECRET_KEY[:16]):
            assert secret not in output, (args, output)
    written = 0
    for root in (tmp_path / "b", tmp_path / "m"):
        for path in root.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                written += 1
                for secret in (SECRET_KEY, ACCESS_KEY):
                    assert secret.encode() not in content, path
    assert written > 3
    row["detail"] = f"{written} files scanned"


# -- the web pages ----------------------------------------------------------------------------

HOSTILE_IDS = {
    "dot-dot": "..%2F..%2F..%2Fetc%2Fpasswd",
    "dot-dot raw": "../../etc/passwd",
    "absolute": "%2Fetc%2Fpasswd",
    "NUL": "20261123T201500Z-3f9a1c%00",
    "newline": "20261123T201500Z-3f9a1c%0A",
    "very long": "2" * 5000,
    "unicode digits": "%D9%A2%D9%A0%D9%A2%D9%A6" + "1123T201500Z-3f9a1c",
    "unicode": "%E2%80%AE20261123T201500Z-3f9a1c",
    "data file name": "20261123T201500Z-3f9a1c.db.zst",
    "backslash": "..%5C..%5Cetc%5Cpasswd",
}


def _admin_rules(app: Any) -> list[tuple[str, str, str]]:
    """(rule, endpoint, method) for every admin page of the blueprint, from the URL map."""
    from tablettracker_backups.web.views import BLUEPRINT

    found = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith(f"{BLUEPRINT}.") or rule.endpoint.endswith(".static"):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((rule.rule, rule.endpoint, method))
    return found


def _dashboard(app: Any) -> str:
    from tablettracker_backups.web.views import BLUEPRINT

    return next(
        r.rule
        for r in app.url_map.iter_rules()
        if r.endpoint == f"{BLUEPRINT}.dashboard" and not r.arguments
    )


def _url(
    rule: str, backup_id: str, job_id: str = "0123456789abcdef", database: str = "tablet_counter"
) -> str:
    """A rule's URL; a database's own pages (``/db/<database>/...``, issue 22) are those of
    the demo's one database, as the name its file gives it."""
    return (
        rule.replace("<backup_id>", backup_id)
        .replace("<job_id>", job_id)
        .replace("<database>", database)
    )


def _web_setup(demo_app: Any) -> tuple[Any, str]:
    from tablettracker_backups.backup import create_backup
    from tablettracker_backups.web.extension import get_state

    with demo_app.app_context():
        settings = get_state().settings
    backup_id = create_backup(settings).metadata.id
    return settings, backup_id


def _state_of(settings: Any) -> tuple[list[str], list[str]]:
    """The backups, and the audit log's entries other than refused task tokens (those are
    audited on purpose: issue 23)."""
    import json

    from tablettracker_backups.store import BackupStore

    audit_log = settings.state_dir / "audit.jsonl"
    lines = audit_log.read_text().splitlines() if audit_log.exists() else []
    kept = [line for line in lines if json.loads(line).get("action") != "task-token"]
    return BackupStore(settings).ids(), kept


def test_every_admin_route_refuses_strangers(
    demo_app: Any, staff_client: Any, reliability: Recorder
) -> None:
    rules = _admin_rules(demo_app)
    row = reliability(
        f"web: every admin route ({len(rules)} route/method pairs) as anonymous and non-admin",
        trials=2 * len(rules),
        checked="anonymous: redirect to login (never 200); non-admin: 403; no backup, job or "
        "audit entry appears",
    )
    settings, backup_id = _web_setup(demo_app)
    before = _state_of(settings)
    anonymous = demo_app.test_client()
    # The non-admin's own valid CSRF token (from a host page with a form), so that POSTs get
    # past the CSRF check and meet the admin check.
    from tests.conftest import csrf_from

    staff_token = csrf_from(staff_client.get("/po/1/edit").get_data(as_text=True))
    for rule, endpoint, method in rules:
        url = _url(rule, backup_id)
        response = anonymous.open(url, method=method, data={"confirm": backup_id})
        # (a POST may already be refused by the host's CSRF check: 400)
        refused = (302, 303, 401) + ((400,) if method == "POST" else ())
        assert response.status_code in refused, (endpoint, method, response.status_code)
        if response.status_code in (302, 303):
            assert "/login" in response.headers["Location"], (endpoint, method)
        response = staff_client.open(
            url, method=method, data={"confirm": backup_id, "csrf_token": staff_token}
        )
        assert response.status_code == 403, (endpoint, method, response.status_code)
    assert _state_of(settings) == before
    row["detail"] = ", ".join(sorted({f"{m} {r}" for r, _e, m in rules}))[:300]


@pytest.mark.parametrize("own_tokens", [False, True], ids=["flask-wtf", "blueprint-csrf"])
def test_every_admin_post_needs_the_csrf_token(
    tmp_path: Path, reliability: Recorder, own_tokens: bool
) -> None:
    from tablettracker_backups.demo import create_app
    from tests.conftest import csrf_from, login

    app = create_app(
        {
            "INSTANCE_PATH": tmp_path / "inst",
            "TESTING": True,
            "BACKUPS_LOCK_TIMEOUT": 0,
            "DEMO_USE_FLASK_WTF": not own_tokens,
        }
    )
    posts = [(r, e, m) for r, e, m in _admin_rules(app) if m == "POST"]
    row = reliability(
        f"web: every admin POST without / with a forged CSRF token "
        f"({'blueprint tokens' if own_tokens else 'Flask-WTF'})",
        trials=3 * len(posts),
        checked="as admin: no token, a forged token, another session's token -> 400; nothing "
        "changes; the real token is accepted (so the check can fail)",
    )
    settings, backup_id = _web_setup(app)
    admin = app.test_client()
    login(admin, "admin", app.config["DEMO_PASSWORD"])
    other = app.test_client()
    login(other, "admin", app.config["DEMO_PASSWORD"])
    foreign = csrf_from(other.get(_dashboard(app)).get_data(as_text=True))
    real = csrf_from(admin.get(_dashboard(app)).get_data(as_text=True))
    assert foreign != real
    before = _state_of(settings)
    for rule, endpoint, _method in posts:
        url = _url(rule, backup_id)
        for token in (None, "forged-" + real[7:], foreign):
            data = {"confirm": backup_id, "expect": ""}
            if token is not None:
                data["csrf_token"] = token
            response = admin.post(url, data=data)
            assert response.status_code == 400, (endpoint, token, response.status_code)
    assert _state_of(settings) == before
    # The control: the real token works (download answers with the file).
    download = next(r for r, e, _m in posts if e.endswith(".download"))
    response = admin.post(_url(download, backup_id), data={"csrf_token": real})
    assert response.status_code == 200, response.get_data(as_text=True)[-300:]
    response.close()
    row["detail"] = f"{len(posts)} POST routes"


def _post_rules(app: Any) -> list[tuple[str, str]]:
    """(rule, endpoint) of every POST route of the app: the host's and the blueprint's."""
    return sorted(
        (rule.rule, rule.endpoint)
        for rule in app.url_map.iter_rules()
        if "POST" in (rule.methods or ()) and not rule.endpoint.endswith("static")
    )


def _orders(settings: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(settings.database) as conn:
        return conn.execute("SELECT id, supplier, status, notes FROM purchase_orders").fetchall()


@pytest.mark.parametrize("own_tokens", [False, True], ids=["flask-wtf", "blueprint-csrf"])
def test_a_fresh_client_cannot_post_anywhere(
    tmp_path: Path, reliability: Recorder, own_tokens: bool
) -> None:
    """Clients that never loaded a page: no cookie, so no session and no token in it. Every
    POST route, with the token field absent and empty; then a logged-in admin whose session
    holds no token yet (a session from before tokens, or one the host cleared)."""
    from tablettracker_backups.demo import create_app
    from tablettracker_backups.web.csrf import SESSION_KEY
    from tests.conftest import login

    app = create_app(
        {
            "INSTANCE_PATH": tmp_path / "inst",
            "TESTING": True,
            "BACKUPS_LOCK_TIMEOUT": 0,
            "DEMO_USE_FLASK_WTF": not own_tokens,
        }
    )
    posts = _post_rules(app)
    row = reliability(
        "web: every POST route from a fresh client (no session, no cookie) and from an admin "
        f"session with no token yet, token absent or empty "
        f"({'blueprint tokens' if own_tokens else 'Flask-WTF'})",
        trials=4 * len(posts),
        checked="fresh: login refused (400), every other route 400, 401 or a redirect to the "
        "login page, and still logged out; admin without a token: 400 on every page's POST; "
        "no backup, audit entry or database change",
    )
    settings, backup_id = _web_setup(app)
    from tablettracker_backups.web.extension import get_state

    with app.app_context():
        task_url = get_state().task_url
    before = (_state_of(settings), _orders(settings))
    form = {
        "confirm": backup_id,
        "expect": "",
        "username": "admin",
        "password": app.config["DEMO_PASSWORD"],  # right credentials: only the token is wrong
        "supplier": "Forged Supplies",
        "status": "closed",
    }
    dashboard = _dashboard(app)
    for rule, endpoint in posts:
        url = _url(rule.replace("<int:po_id>", "1"), backup_id)
        for token in (None, ""):
            fresh = app.test_client()
            data = dict(form) if token is None else {**form, "csrf_token": token}
            response = fresh.post(url, data=data)
            status = response.status_code
            if rule == task_url:
                assert status == 401, (endpoint, token, status)
            elif endpoint in ("demo.login", "demo.logout"):
                assert status == 400, (endpoint, token, status)  # the only ones before login
            else:
                assert status in (302, 303, 400), (endpoint, token, status)
                if status != 400:
                    assert "/login" in response.headers["Location"], (endpoint, token)
            # Not logged in by it either.
            assert fresh.get(dashboard).status_code in (302, 303), (endpoint, token)

    # A logged-in admin whose session holds no token yet.
    admin = app.test_client()
    login(admin, "admin", app.config["DEMO_PASSWORD"])
    for rule, endpoint in posts:
        if rule == task_url or endpoint == "demo.login":
            continue
        url = _url(rule.replace("<int:po_id>", "1"), backup_id)
        for token in (None, ""):
            with admin.session_transaction() as session:
                session.pop("csrf_token", None)  # Flask-WTF's key
                session.pop(SESSION_KEY, None)  # the blueprint's own
            data = dict(form) if token is None else {**form, "csrf_token": token}
            response = admin.post(url, data=data)
            assert response.status_code == 400, (endpoint, token, response.status_code)
    assert admin.get(dashboard).status_code == 200  # still logged in: logout was refused too
    assert (_state_of(settings), _orders(settings)) == before
    row["detail"] = ", ".join(endpoint for _rule, endpoint in posts)


def test_admin_posts_need_the_token_when_the_host_turned_flask_wtfs_default_check_off(
    tmp_path: Path,
) -> None:
    """A host may set WTF_CSRF_CHECK_DEFAULT=False and protect its own views one by one:
    the blueprint's pages then call Flask-WTF's check themselves."""
    from tablettracker_backups.demo import create_app
    from tests.conftest import csrf_from, login

    app = create_app(
        {
            "INSTANCE_PATH": tmp_path / "inst",
            "TESTING": True,
            "BACKUPS_LOCK_TIMEOUT": 0,
            "WTF_CSRF_CHECK_DEFAULT": False,
        }
    )
    settings, backup_id = _web_setup(app)
    admin = app.test_client()
    login(admin, "admin", app.config["DEMO_PASSWORD"])
    real = csrf_from(admin.get(_dashboard(app)).get_data(as_text=True))
    before = _state_of(settings)
    for rule, endpoint, _method in [r for r in _admin_rules(app) if r[2] == "POST"]:
        for token in (None, "", "forged-" + real[7:]):
            data = (
                {"confirm": backup_id}
                if token is None
                else {"confirm": backup_id, "csrf_token": token}
            )
            response = admin.post(_url(rule, backup_id), data=data)
            assert response.status_code == 400, (endpoint, token, response.status_code)
    assert _state_of(settings) == before
    download = next(r for r, e, _m in _admin_rules(app) if e.endswith(".download"))
    response = admin.post(_url(download, backup_id), data={"csrf_token": real})
    assert response.status_code == 200
    response.close()


def test_hostile_backup_ids_in_urls(
    demo_app: Any, admin_client: Any, reliability: Recorder
) -> None:
    from tests.conftest import csrf_from

    rules = [
        (r, e, m) for r, e, m in _admin_rules(demo_app) if "<backup_id>" in r or "<job_id>" in r
    ]
    row = reliability(
        "web: hostile backup and job ids in every id route (" + ", ".join(HOSTILE_IDS) + ")",
        trials=len(rules) * len(HOSTILE_IDS),
        checked="as admin with a valid CSRF token: 404 or 400 (never 200, never 500); no file "
        "outside the backup folders is sent; nothing changes",
    )
    settings, _backup_id = _web_setup(demo_app)
    token = csrf_from(admin_client.get(_dashboard(demo_app)).get_data(as_text=True))
    secret = Path("/etc/passwd").read_bytes()[:20]
    before = _state_of(settings)
    codes: dict[int, int] = {}
    for rule, endpoint, method in rules:
        for name, hostile in HOSTILE_IDS.items():
            url = _url(rule, hostile, job_id=hostile)
            response = admin_client.open(
                url, method=method, data={"csrf_token": token, "confirm": "RESTORE"}
            )
            codes[response.status_code] = codes.get(response.status_code, 0) + 1
            assert response.status_code in (400, 404, 405), (name, endpoint, response.status_code)
            assert secret not in response.get_data(), (name, endpoint)
    assert _state_of(settings) == before
    row["detail"] = "status codes: " + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))


def test_task_endpoint_tokens(demo_app: Any, reliability: Recorder) -> None:
    token = demo_app.config["BACKUPS_TASK_TOKEN"]
    wrong = {
        "missing header": None,
        "empty bearer": "Bearer ",
        "wrong token": "Bearer " + "x" * len(token),
        "one character off": "Bearer " + token[:-1] + ("A" if token[-1] != "A" else "B"),
        "prefix": "Bearer " + token[:-1],
        "token plus one": "Bearer " + token + "x",
        "upper-cased": "Bearer " + token.upper() if token.upper() != token else "Bearer X",
        "Basic scheme": "Basic " + token,
        "no scheme": token,
        "two tokens": f"Bearer {token} {token}",
        "NUL inside": "Bearer " + token[:5] + "\x00" + token[5:],
    }
    row = reliability(
        "web: scheduled-task endpoint with missing, wrong and almost-right tokens",
        trials=len(wrong) + 2,
        checked="401 with WWW-Authenticate and no backup taken for each; GET is 405; the token "
        "never appears in a response; the right token runs (200)",
    )
    settings, _ = _web_setup(demo_app)
    before = _state_of(settings)
    client = demo_app.test_client()
    from tablettracker_backups.web.extension import get_state

    with demo_app.app_context():
        url = get_state().task_url
    for number, (name, header) in enumerate(wrong.items()):
        headers = {} if header is None else {"Authorization": header}
        # Each from its own address: ten wrong tokens from one are refused with 429 (test_tasks).
        client_address = {"REMOTE_ADDR": f"10.1.0.{number + 1}"}
        response = client.post(url, headers=headers, environ_base=client_address)
        assert response.status_code in (400, 401), (name, response.status_code)
        assert token not in response.get_data(as_text=True), name
    assert client.get(url).status_code == 405
    assert _state_of(settings)[0] == before[0]
    response = client.post(url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert token not in response.get_data(as_text=True)
    row["detail"] = ", ".join(wrong)


def test_pages_and_logs_never_show_secrets(tmp_path: Path, reliability: Recorder) -> None:
    from tablettracker_backups.demo import create_app
    from tests.conftest import login

    app = create_app(
        {
            "INSTANCE_PATH": tmp_path / "inst",
            "TESTING": True,
            "BACKUPS_LOCK_TIMEOUT": 0,
            "BACKUPS_S3_BUCKET": "tt-backups",
            "BACKUPS_S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "BACKUPS_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "BACKUPS_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        }
    )
    token = app.config["BACKUPS_TASK_TOKEN"]
    settings, backup_id = _web_setup(app)
    admin = app.test_client()
    login(admin, "admin", app.config["DEMO_PASSWORD"])
    pages = [
        _url(rule, backup_id)
        for rule, _e, method in _admin_rules(app)
        if method == "GET" and "<job_id>" not in rule
    ]
    row = reliability(
        "web: secrets (task token, S3 keys) in pages, task answers, logs and state files",
        trials=len(pages) + 2,
        checked="no secret in any admin page, the task endpoint's answer, a web job's page, "
        "audit.jsonl, alerts.jsonl, status.json, metadata, job files or worker logs; every "
        "file the app and its worker wrote is 0600, every folder 0700",
    )
    for url in pages:
        body = admin.get(url).get_data(as_text=True)
        for secret in (token, SECRET_KEY, ACCESS_KEY):
            assert secret not in body, url
    answer = app.test_client().post(
        "/tasks/backups/run", headers={"Authorization": f"Bearer {token}"}
    )
    for secret in (token, SECRET_KEY, ACCESS_KEY):
        assert secret not in answer.get_data(as_text=True)
    # A web job: its worker process gets the keys through its environment, never a file.
    from tablettracker_backups.web.views import BLUEPRINT
    from tests.conftest import csrf_from, wait_for_job

    rules = {r.endpoint: r.rule for r in app.url_map.iter_rules()}
    csrf = csrf_from(admin.get(rules[f"{BLUEPRINT}.dashboard"]).get_data(as_text=True))
    started = admin.post(rules[f"{BLUEPRINT}.backup_now"], data={"csrf_token": csrf})
    assert started.status_code == 303, started.status_code
    job = wait_for_job(settings, started.headers["Location"].rstrip("/").rsplit("/", 1)[-1])
    job_page = admin.get(started.headers["Location"]).get_data(as_text=True)
    for secret in (token, SECRET_KEY, ACCESS_KEY):
        assert secret not in job_page
    scanned = 0
    for path in [settings.state_dir, *settings.state_dir.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, (path, oct(mode))
            continue
        assert mode == 0o600, (path, oct(mode))
        if not path.name.endswith((".zst", ".gz", ".lock")):
            content = path.read_bytes()
            scanned += 1
            for secret in (token, SECRET_KEY, ACCESS_KEY):
                assert secret.encode() not in content, path
    row["detail"] = (
        f"{len(pages)} pages, task answer {answer.status_code}, web job {job.state}, "
        f"{scanned} files scanned, all 0600/0700"
    )

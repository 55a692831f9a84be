"""Helpers for the fault and hostile-input tests: real CLI processes, writers, folder checks."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tablettracker_backups.layout import DATA_SUFFIXES, ID_PATTERN

ROOT = Path(__file__).resolve().parent.parent


def cli_env(
    database: Path | None,
    backup_dir: Path | None = None,
    secondary_dir: Path | None = None,
    *,
    home: Path | None = None,
    **extra: str,
) -> dict[str, str]:
    """An environment for a CLI subprocess: only our settings, no user config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPS_")}
    # A private HOME so a real ~/.config/tablettracker-backups/config.toml is never read.
    if home is not None:
        env["HOME"] = str(home)
        env["XDG_CONFIG_HOME"] = str(home / ".config")
    if database is not None:
        env["BACKUPS_DATABASE"] = str(database)
    if backup_dir is not None:
        env["BACKUPS_DIR"] = str(backup_dir)
    if secondary_dir is not None:
        env["BACKUPS_SECONDARY_DIR"] = str(secondary_dir)
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


def cli_command(*args: str) -> list[str]:
    """The argv of ``python -m tablettracker_backups ARGS``."""
    return [sys.executable, "-m", "tablettracker_backups", *args]


def spawn_cli(args: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start the CLI as a real process (cwd = the repository root)."""
    return subprocess.Popen(
        cli_command(*args),
        cwd=ROOT,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run_cli(
    args: list[str], env: Mapping[str, str], *, timeout: float = 120, umask: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion and capture its output."""

    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run(
        cli_command(*args),
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=set_umask if umask is not None else None,
    )


def kill_when_written(
    proc: subprocess.Popen[bytes], folder: Path, suffix: str, *, limit: float = 120
) -> str | None:
    """SIGKILL ``proc`` as soon as a non-empty temporary file ``.tmp-*SUFFIX`` shows up in
    ``folder`` (that is, in the middle of writing it); returns its name, or None when the
    process ended first. The process is killed and reaped either way."""
    caught = None
    deadline = time.monotonic() + limit
    try:
        while caught is None and proc.poll() is None and time.monotonic() < deadline:
            names = os.listdir(folder) if folder.is_dir() else []
            for name in names:
                if name.startswith(".tmp-") and name.endswith(suffix):
                    try:
                        if (folder / name).stat().st_size > 0:
                            caught = name
                    except FileNotFoundError:
                        pass
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    return caught


def stopped_at(proc: subprocess.Popen[bytes], *, limit: float = 60) -> bool:
    """Wait (bounded) until ``proc`` stopped itself at a crash point run with
    ``TTB_CRASH_SIGNAL=STOP``; False when it ended (or the time ran out) first."""
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            # /proc/PID/stat: "pid (comm) STATE ..."; the name may hold spaces and parentheses.
            state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = ""
        if state == "T":
            return True
        time.sleep(0.01)
    return False


def resume(proc: subprocess.Popen[bytes], *, timeout: float = 120) -> tuple[int, str, str]:
    """SIGCONT a stopped ``proc`` and let it finish: (exit code, stdout, stderr)."""
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def mount_tmpfs(target: Path, options: str) -> bool:
    """Mount a tmpfs at ``target`` (we run as root); False where mounting is not allowed."""
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def unmount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, no traceback, and one error line that mentions every needle."""
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if len(lines) == 3 and lines[0].startswith("Usage: ") and lines[1].startswith("Try '"):
        lines = lines[2:]  # click's own usage error: the third line is the one-line error
    assert len(lines) == 1, output
    line = lines[0]
    assert line.startswith(("Error:", "Busy:")), line
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    return line


# -- the live database and writers ------------------------------------------------------------


def invariant(conn: sqlite3.Connection) -> int:
    """What the writers keep constant: received tablets minus counted tablets.

    Both sums are read in one read transaction, so a writer committing between them cannot
    make a consistent database look unbalanced.
    """
    in_transaction = conn.in_transaction
    if not in_transaction:
        conn.execute("BEGIN")
    try:
        return _invariant(conn)
    finally:
        if not in_transaction:
            conn.execute("ROLLBACK")


def _invariant(conn: sqlite3.Connection) -> int:
    received = conn.execute("SELECT coalesce(sum(quantity_received), 0) FROM po_lines").fetchone()
    counted = conn.execute(
        "SELECT coalesce(sum(tablets_counted), 0) FROM count_sessions"
    ).fetchone()
    return int(received[0]) - int(counted[0])


def write_one(conn: sqlite3.Connection, rng: random.Random, tag: str) -> int:
    """One TabletTracker-shaped transaction: a count session and the line's received total."""
    lines = conn.execute("SELECT max(id) FROM po_lines").fetchone()[0]
    line = rng.randint(1, lines)
    tablets = rng.randint(1, 500)
    conn.execute("BEGIN IMMEDIATE")
    try:
        session = conn.execute(
            "INSERT INTO count_sessions (po_line_id, employee_id, counted_at, tablets_counted,"
            " notes) VALUES (?, 1, '2026-11-25T08:00:00', ?, ?)",
            (line, tablets, tag),
        ).lastrowid
        conn.execute(
            "UPDATE po_lines SET quantity_received = quantity_received + ? WHERE id = ?",
            (tablets, line),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    assert session is not None
    return session


@dataclass
class WriterThread:
    """Commits transactions to the live database until stopped; remembers what committed."""

    database: Path
    seed: int
    committed: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> WriterThread:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        rng = random.Random(self.seed)
        conn = sqlite3.connect(self.database, timeout=60, isolation_level=None)
        try:
            while not self._stop.is_set():
                try:
                    self.committed.append(write_one(conn, rng, f"writer-{self.seed}"))
                except sqlite3.Error as exc:  # pragma: no cover - reported by the test
                    self.errors.append(str(exc))
                    return
                self._stop.wait(0.002)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)


def check_live(database: Path, committed: list[int], expected_invariant: int) -> None:
    """The live database is intact, holds every committed transaction, and balances."""
    conn = sqlite3.connect(database, timeout=60)
    try:
        try:
            integrity = conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.Error as exc:
            raise AssertionError(
                f"{exc} {getattr(exc, 'sqlite_errorname', '')} {os.listdir(database.parent)}"
            ) from exc
        assert integrity == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        if committed:
            present = {
                row[0]
                for row in conn.execute(
                    "SELECT id FROM count_sessions WHERE id >= ?", (min(committed),)
                )
            }
            missing = set(committed) - present
            assert not missing, f"{len(missing)} committed transactions are missing"
        actual = invariant(conn)
        assert actual == expected_invariant, (actual, expected_invariant, len(committed))
    finally:
        conn.close()


# -- backup folders ---------------------------------------------------------------------------


def folder_state(directory: Path | None) -> dict[str, list[str]]:
    """Temporary files, metadata ids and data-file ids in a backup folder."""
    state: dict[str, list[str]] = {"tmp": [], "meta": [], "data": [], "other": []}
    if directory is None or not directory.is_dir():
        return state
    for name in sorted(os.listdir(directory)):
        # A restore's safety copy is scratch too, until it is filed as a backup.
        if name.startswith((".tmp-", ".restore-safety-")):
            state["tmp"].append(name)
        elif name.endswith(".json") and ID_PATTERN.match(name[:-5]):
            state["meta"].append(name[:-5])
        elif any(name.endswith(ext) for ext in DATA_SUFFIXES):
            state["data"].append(name.split(".", 1)[0])
        else:
            state["other"].append(name)
    return state


def assert_no_debris(*directories: Path | None) -> None:
    """No temporary files and no data file without metadata (or metadata without data)."""
    for directory in directories:
        state = folder_state(directory)
        assert state["tmp"] == [], (directory, state["tmp"])
        assert sorted(state["data"]) == sorted(state["meta"]), (directory, state)


def writer_main(database: str, seed: int, stop_file: str, pause: float = 0.001) -> None:
    """A writer process: commit transactions until ``stop_file`` exists, ``pause`` seconds
    apart; print committed ids."""
    import time

    rng = random.Random(seed)
    # Longer than any restore's own wait for the lock (test_restore_live gives it 90 s): the
    # restore must be the one to give up, never the stand-in for the app.
    conn = sqlite3.connect(database, timeout=180, isolation_level=None)
    committed = []
    while not os.path.exists(stop_file):
        committed.append(write_one(conn, rng, f"proc-{seed}"))
        time.sleep(pause)
    conn.close()
    print(" ".join(map(str, committed)))


def spawn_writer(
    database: Path, seed: int, stop_file: Path, *, pause: float = 0.001
) -> subprocess.Popen[str]:
    """Start :func:`writer_main` in its own process."""
    code = (
        "import sys; from tests.faultkit import writer_main; "
        "writer_main(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(database), str(seed), str(stop_file), str(pause)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_writers(procs: list[subprocess.Popen[str]], stop_file: Path) -> list[int]:
    """Stop writer processes; every id they committed."""
    stop_file.touch()
    committed: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        committed += [int(x) for x in out.split()]
    return committed

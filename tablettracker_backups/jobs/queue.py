"""Long actions started from the web pages, run by a detached worker process.

A web request must not run a backup, verification or restore itself: a large database outlives
the web worker's request timeout, and PythonAnywhere's web workers do not run background threads
reliably. So the request only records a *job file* (``<state dir>/jobs/<job id>.json``) and
starts ``python -m tablettracker_backups.jobs.worker <jobs dir> <job id>`` in a new session
(:mod:`.worker`); that worker
does the work and keeps the job file up to date with its stage, progress and a heartbeat. The
page polls the job file. A worker that dies stops its heartbeat, and the job is then shown as
failed; the OS file lock it held is released with it, so nothing stays blocked.

No Flask here: the blueprint is a thin face over :func:`start_job` and :func:`read_job`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import filelock

from tablettracker_backups.errors import (
    BackupError,
    BackupNotFound,
    LockedError,
    StorageError,
)
from tablettracker_backups.fsutil import atomic_write_bytes, ensure_private_dir, remove_quietly
from tablettracker_backups.locking import is_locked
from tablettracker_backups.metadata import parse_utc, utc_iso, validate_backup_id
from tablettracker_backups.settings import Settings
from tablettracker_backups.states import JobState

logger = logging.getLogger(__name__)

JOBS_DIR = "jobs"
JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
QUEUED, RUNNING, DONE, FAILED = JobState.QUEUED, JobState.RUNNING, JobState.DONE, JobState.FAILED
#: The actions a job can run, and what the pages call them.
ACTIONS = {
    "backup": "Back up now",
    "verify": "Verify backup",
    "verify-all": "Verify all backups",
    "restore": "Restore",
    "restore-group": "Restore every database",
    "auto": "Automatic snapshot",
}
#: Write-triggered snapshots (:mod:`tablettracker_backups.autosnapshot`): they never make a
#: person's action wait, and are not listed among the actions taken from the pages.
AUTO = "auto"
#: A job whose worker has not written its heartbeat for this long is considered dead.
STALE_AFTER = timedelta(seconds=60)
#: How often the worker's heartbeat thread touches the job file.
HEARTBEAT_SECONDS = 5.0
#: Finished job files kept for the pages; older ones are deleted when a new job starts.
KEEP_FINISHED = 50
#: ... and finished automatic snapshot jobs (one every few minutes on a busy day).
KEEP_FINISHED_AUTO = 10
#: Settings never written into a job file; the worker gets them through its environment.
#: Notification and ping URLs carry passwords and tokens.
SECRET_KEYS = frozenset({"s3_access_key_id", "s3_secret_access_key", "notify", "ping_url"})


@dataclass(frozen=True)
class Job:
    """One long action: what was asked, by whom, and how far it has got."""

    id: str
    action: str
    params: dict[str, str]
    actor: str
    state: JobState
    created_at: datetime
    updated_at: datetime
    message: str = ""
    stage: str = ""
    done: int = 0
    total: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    host: str | None = None
    #: The worker's settings (lower-case core keys, secrets left out).
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """The job succeeded or failed; nothing more will happen."""
        return self.state in (DONE, FAILED)

    @property
    def percent(self) -> int | None:
        """Progress of the current stage, 0-100, or None when unknown."""
        if self.total <= 0:
            return None
        return max(0, min(100, 100 * self.done // self.total))

    @property
    def title(self) -> str:
        """What a person would call the action."""
        return ACTIONS.get(self.action, self.action)

    def is_stale(self, now: datetime) -> bool:
        """True when the job is unfinished but its worker has shown no sign of life."""
        if self.finished:
            return False
        if now - self.updated_at > STALE_AFTER:
            return True
        # On the same machine a dead worker can be noticed at once, without waiting.
        return (
            self.state == RUNNING
            and self.pid is not None
            and self.host == socket.gethostname()
            and not _pid_alive(self.pid)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, without the settings (the status URL shows this)."""
        return {
            "id": self.id,
            "action": self.action,
            "title": self.title,
            "params": dict(self.params),
            "actor": self.actor,
            "state": self.state,
            "finished": self.finished,
            "created_at": utc_iso(self.created_at),
            "updated_at": utc_iso(self.updated_at),
            "message": self.message,
            "stage": self.stage,
            "done": self.done,
            "total": self.total,
            "percent": self.percent,
            "result": self.result,
        }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed process nobody has reaped yet (a zombie) still answers signal 0.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def validate_job_id(value: object) -> str:
    """Return ``value`` if it is a well-formed job id; raise :class:`BackupNotFound`."""
    if not isinstance(value, str) or not JOB_ID_PATTERN.match(value):
        raise BackupNotFound(f"no job {str(value)[:40]!r}")
    return value


def jobs_dir(settings: Settings) -> Path:
    """Where job files live (inside the owner-only primary backup folder)."""
    return settings.state_dir / JOBS_DIR


def _job_path(directory: Path, job_id: str) -> Path:
    return directory / f"{validate_job_id(job_id)}.json"


def _to_document(job: Job) -> bytes:
    document = asdict(job)
    document["created_at"] = utc_iso(job.created_at)
    document["updated_at"] = utc_iso(job.updated_at)
    return (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode()


def _from_document(raw: bytes, job_id: str) -> Job:
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("id") != job_id:
            raise ValueError("wrong job")
        return Job(
            id=job_id,
            action=str(doc["action"]),
            params={str(k): str(v) for k, v in dict(doc.get("params") or {}).items()},
            actor=str(doc["actor"]),
            state=JobState(str(doc["state"])),
            created_at=parse_utc(doc["created_at"], "created_at"),
            updated_at=parse_utc(doc["updated_at"], "updated_at"),
            message=str(doc.get("message") or ""),
            stage=str(doc.get("stage") or ""),
            done=int(doc.get("done") or 0),
            total=int(doc.get("total") or 0),
            result=dict(doc.get("result") or {}),
            pid=int(doc["pid"]) if doc.get("pid") is not None else None,
            host=str(doc["host"]) if doc.get("host") is not None else None,
            settings=dict(doc.get("settings") or {}),
        )
    except (ValueError, KeyError, TypeError, BackupError) as exc:
        raise StorageError(f"job file for {job_id} is unreadable") from exc


def write_job(directory: Path, job: Job) -> None:
    atomic_write_bytes(_job_path(directory, job.id), _to_document(job))


def load_job(directory: Path, job_id: str) -> Job:
    path = _job_path(directory, job_id)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise BackupNotFound(f"no job {job_id}") from exc
    except OSError as exc:
        raise StorageError(f"cannot read job {job_id}: {exc.strerror}") from exc
    return _from_document(raw, job_id)


@contextlib.contextmanager
def queue_lock(directory: Path) -> Iterator[None]:
    """A short lock around reading and changing job files (not the operation lock)."""
    # Parent first: mkdir(parents=True) would create a missing backup folder world-readable.
    ensure_private_dir(directory.parent)
    ensure_private_dir(directory)
    lock = filelock.FileLock(str(directory / ".queue.lock"), mode=0o600)
    try:
        lock.acquire(timeout=10)
    except filelock.Timeout as exc:
        raise LockedError("the job list is busy; try again") from exc
    try:
        yield
    finally:
        lock.release()


def _reap(directory: Path, job: Job, now: datetime) -> Job:
    """Mark a job whose worker died as failed (called under the queue lock)."""
    if not job.is_stale(now):
        return job
    dead = replace(
        job,
        state=FAILED,
        updated_at=now,
        message=(
            "the worker process stopped before finishing (no sign of life since "
            f"{utc_iso(job.updated_at)}). An unfinished backup leaves nothing behind and the "
            "lock was released; check the backup list and try again."
        ),
    )
    write_job(directory, dead)
    logger.warning("job %s (%s) was abandoned by its worker", job.id, job.action)
    return dead


def _all_jobs(directory: Path) -> list[Job]:
    try:
        names = sorted(os.listdir(directory), reverse=True)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(f"cannot list jobs in {directory}: {exc.strerror}") from exc
    jobs: list[Job] = []
    for name in names:
        if name.endswith(".json") and JOB_ID_PATTERN.match(name[:-5]):
            try:
                jobs.append(load_job(directory, name[:-5]))
            except BackupError:
                continue
    jobs.sort(key=lambda j: j.created_at, reverse=True)
    return jobs


def read_job(settings: Settings, job_id: str) -> Job:
    """One job by id, marked failed first if its worker died; raises BackupNotFound."""
    directory = jobs_dir(settings)
    validate_job_id(job_id)
    with queue_lock(directory):
        return _reap(directory, load_job(directory, job_id), datetime.now(timezone.utc))


def active_job(settings: Settings) -> Job | None:
    """The job a person started that is queued or running right now, if any."""
    directory = jobs_dir(settings)
    if not directory.is_dir():
        return None
    with queue_lock(directory):
        now = datetime.now(timezone.utc)
        for job in _all_jobs(directory):
            job = _reap(directory, job, now)
            if not job.finished and job.action != AUTO:
                return job
    return None


def recent_jobs(settings: Settings, *, limit: int = 10) -> list[Job]:
    """The newest jobs people started, newest first."""
    return [j for j in _all_jobs(jobs_dir(settings)) if j.action != AUTO][:limit]


def _prune_finished(directory: Path, jobs: list[Job]) -> None:
    finished = [j for j in jobs if j.finished and j.action != AUTO]
    automatic = [j for j in jobs if j.finished and j.action == AUTO]
    for job in [*finished[KEEP_FINISHED:], *automatic[KEEP_FINISHED_AUTO:]]:
        remove_quietly(_job_path(directory, job.id))
        remove_quietly(directory / f"{job.id}.log")


def portable_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings ``values`` as a job file keeps them: JSON scalars, no secrets, no ``None``."""
    portable: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECRET_KEYS or value is None:
            continue
        portable[key] = value if isinstance(value, bool | int | float | str) else str(value)
    return portable


def python_executable() -> str:
    """The Python interpreter for the worker.

    Under uWSGI (PythonAnywhere) ``sys.executable`` can be the uwsgi binary, so fall back to
    the interpreter of the virtualenv (``sys.prefix``) the web app runs in.
    """
    current = Path(sys.executable or "")
    if current.name.startswith("python") and current.is_file():
        return str(current)
    for name in ("python3", "python"):
        candidate = Path(sys.prefix) / "bin" / name
        if candidate.is_file():
            return str(candidate)
    return "python3"


def _worker_env(values: Mapping[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    for key in SECRET_KEYS:
        value = values.get(key)
        if value is not None:
            # A list (BACKUPS_NOTIFY in Flask config) travels as one space-separated string.
            text = " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
            env[f"BACKUPS_{key.upper()}"] = text
    # A source checkout that is not installed (the tests) must still be importable.
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


def start_job(
    settings: Settings,
    values: Mapping[str, Any],
    *,
    action: str,
    actor: str,
    params: Mapping[str, str] | None = None,
) -> Job:
    """Record a job and start its detached worker process.

    ``values`` are the lower-case core settings the worker rebuilds :class:`Settings` from.
    Raises :class:`LockedError` when another job or any other backup, restore or prune is
    running, and :class:`StorageError` when the worker cannot be started. An unfinished
    automatic snapshot job makes no other job wait, and an ``auto`` job does not ask for the
    operation lock up front (its worker takes it when due).
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown job action {action!r}")
    params = dict(params or {})
    if "id" in params:
        validate_backup_id(params["id"])
    directory = jobs_dir(settings)
    now = datetime.now(timezone.utc)
    with queue_lock(directory):
        jobs = _all_jobs(directory)
        for other in jobs:
            other = _reap(directory, other, now)
            if not other.finished and (action == AUTO or other.action != AUTO):
                raise LockedError(
                    f"{other.title.lower()} started by {other.actor} at "
                    f"{other.created_at:%H:%M:%S} UTC is still running; wait until it has finished"
                )
        if action != AUTO and is_locked(settings):
            raise LockedError(
                "another backup, restore or prune is running (a scheduled task or a console); "
                "try again when it has finished"
            )
        job = Job(
            id=secrets.token_hex(8),
            action=action,
            params=params,
            actor=actor,
            state=QUEUED,
            created_at=now,
            updated_at=now,
            message="waiting for the worker to start",
            settings=portable_values(values),
        )
        write_job(directory, job)
        _prune_finished(directory, jobs)
    try:
        launch_worker(directory, job.id, env=_worker_env(values), detach=True)
    except (OSError, subprocess.SubprocessError) as exc:
        failed = replace(job, state=FAILED, message=f"could not start the worker: {exc}")
        with queue_lock(directory):
            write_job(directory, failed)
        raise StorageError(f"could not start the worker process: {exc}") from exc
    logger.info("started job %s (%s)", job.id, action)
    return job


def worker_command(directory: Path, job_id: str, *, detach: bool) -> list[str]:
    """The command line of the worker (``detach``: of the launcher that starts it)."""
    module = "tablettracker_backups.jobs.worker"
    command = [python_executable(), "-m", module, str(directory), job_id]
    return [*command, "--detach"] if detach else command


def launch_worker(
    directory: Path, job_id: str, *, env: Mapping[str, str] | None = None, detach: bool
) -> None:
    """Start the worker in a new session, its output appended to ``<job id>.log``.

    With ``detach`` this starts a short-lived launcher and waits for it; the launcher starts
    the real worker and exits at once. The worker is then nobody's child: the web process
    never collects a zombie, and recycling the web worker does not touch it.
    """
    log_path = directory / f"{validate_job_id(job_id)}.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        process = subprocess.Popen(
            worker_command(directory, job_id, detach=detach),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            cwd=str(directory),
            env=dict(env) if env is not None else _worker_env({}),
            close_fds=True,
            start_new_session=True,
        )
    finally:
        os.close(fd)
    if detach:
        code = process.wait(timeout=60)
        if code != 0:
            try:
                said = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            except OSError:
                said = []
            raise subprocess.SubprocessError(
                f"the launcher exited with status {code}" + (f": {said[0][:300]}" if said else "")
            )

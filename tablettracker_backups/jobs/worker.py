"""The detached worker that runs a job started from the pages.

``python -m tablettracker_backups.jobs.worker <jobs dir> <job id>`` runs the job to the end and
keeps its job file up to date (stage, progress, heartbeat); with ``--detach`` it only starts that
worker in a new session and exits, so the web process never has a child to collect.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tablettracker_backups import audit, notify
from tablettracker_backups.autosnapshot import parse_not_before, run_worker
from tablettracker_backups.backup import create_backup
from tablettracker_backups.errors import BackupError, LockedError, RestoreError
from tablettracker_backups.group_restore import restore_group
from tablettracker_backups.jobs.queue import (
    AUTO,
    DONE,
    FAILED,
    HEARTBEAT_SECONDS,
    QUEUED,
    RUNNING,
    SECRET_KEYS,
    Job,
    launch_worker,
    load_job,
    queue_lock,
    write_job,
)
from tablettracker_backups.locking import operation_lock
from tablettracker_backups.metadata import validate_backup_id
from tablettracker_backups.restore import restore_backup
from tablettracker_backups.settings import Settings, settings_from_mapping, values_from_env
from tablettracker_backups.sources import FLASK_COMMAND
from tablettracker_backups.store import BackupStore
from tablettracker_backups.verify import failure_event, verify_backup

logger = logging.getLogger(__name__)


class _Reporter:
    """The worker's view of its job file: progress updates and a heartbeat, thread-safe."""

    def __init__(self, directory: Path, job: Job) -> None:
        self.directory = directory
        self.job = job
        self._lock = threading.Lock()
        self._last_write = 0.0

    def update(self, *, force: bool = False, **changes: Any) -> None:
        with self._lock:
            now = datetime.now(timezone.utc)
            self.job = replace(self.job, updated_at=now, **changes)
            # Progress arrives per MiB; the file is rewritten at most a few times a second.
            if force or time.monotonic() - self._last_write >= 0.5:
                self._last_write = time.monotonic()
                try:
                    write_job(self.directory, self.job)
                except BackupError as exc:
                    logger.warning("could not update job file: %s", exc)

    def stage(self, stage: str, done: int, total: int) -> None:
        self.update(stage=stage, done=done, total=total, force=stage != self.job.stage)


def _heartbeat(reporter: _Reporter, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        reporter.update(force=True)


Action = Callable[[Settings, Job, _Reporter], tuple[str, dict[str, Any]]]


def _do_backup(settings: Settings, job: Job, reporter: _Reporter) -> tuple[str, dict[str, Any]]:
    result = create_backup(
        settings,
        kind="manual",
        trigger=f"web:{job.actor}",
        progress=reporter.stage,
        raw_reads=True,  # the detached worker: not the host app's process
    )
    meta = result.metadata
    message = f"backup {meta.id} verified and stored in {', '.join(result.locations)}"
    if result.warnings:
        message += "; " + "; ".join(result.warnings)
    return message, {
        "id": meta.id,
        "size": meta.stored_size,
        "raw_size": meta.raw_size,
        "locations": list(result.locations),
        "warnings": list(result.warnings),
    }


def _do_verify(settings: Settings, job: Job, reporter: _Reporter) -> tuple[str, dict[str, Any]]:
    store = BackupStore(settings)
    single = job.action == "verify"
    ids = [validate_backup_id(job.params.get("id"))] if single else store.ids()
    checked = []
    # Verification rewrites metadata; the lock keeps prune and restore out meanwhile.
    with operation_lock(settings):
        for index, backup_id in enumerate(ids):
            reporter.stage(f"verifying {backup_id}", index, len(ids))
            checked.append(verify_backup(store, backup_id, notify_owner=False))
        reporter.stage("verified", len(ids), len(ids))
    # One message for the whole job, after the lock is released.
    notify.send(settings, [failure_event(settings, r) for r in checked if not r.ok])
    results = [r.to_dict() for r in checked]
    bad = [str(r["id"]) for r in results if not r["ok"]]
    if bad:
        raise _JobFailed(
            f"{len(bad)} of {len(ids)} backup(s) failed verification: {', '.join(bad)}",
            {"results": results},
        )
    return f"{len(ids)} backup(s) verified: every copy is sound", {"results": results}


def _do_restore(settings: Settings, job: Job, reporter: _Reporter) -> tuple[str, dict[str, Any]]:
    backup_id = validate_backup_id(job.params.get("id"))
    # restore_backup writes its own audit entry (with this actor) for every outcome it reaches.
    # The worker is a process of its own: no other connection to the database here.
    result = restore_backup(
        settings, backup_id, actor=job.actor, progress=reporter.stage, raw_reads=True
    )
    message = f"restored backup {result.backup_id} into {result.target}"
    if result.safety_snapshot_id:
        message += (
            f"; the database as it was is kept as safety snapshot {result.safety_snapshot_id}"
        )
    if result.fell_back:
        message += (
            f" (restored from the {result.source_location} copy: {'; '.join(result.fell_back)})"
        )
    return message, result.to_dict()


def _do_group_restore(
    settings: Settings, job: Job, reporter: _Reporter
) -> tuple[str, dict[str, Any]]:
    """Every member of a coordinated snapshot, all or nothing, through the core function the
    command line's ``restore --group`` calls. The job lives in the site's first database; the
    site's every database travels in ``params["members"]`` (no secrets: those come from the
    worker's environment, as for the first database)."""
    group_id = validate_backup_id(job.params.get("group"))
    try:
        raw = json.loads(job.params.get("members", ""))
    except ValueError as exc:
        raise BackupError("the job does not name the site's databases") from exc
    if not isinstance(raw, dict) or not raw:
        raise BackupError("the job does not name the site's databases")
    secrets_from_env = {k: v for k, v in values_from_env(os.environ).items() if k in SECRET_KEYS}
    databases = [
        replace(settings_from_mapping({**values, **secrets_from_env}), command=FLASK_COMMAND)
        for values in raw.values()
    ]
    # restore_group audits every member's outcome in that member's own log.
    result = restore_group(
        databases, group_id, actor=job.actor, progress=reporter.stage, raw_reads=True
    )
    done = "; ".join(
        f"{name}: {r.backup_id}"
        + (f" (safety snapshot {r.safety_snapshot_id})" if r.safety_snapshot_id else "")
        for name, r in result.members
    )
    message = (
        f"restored coordinated snapshot {result.group_id} into {len(result.members)} "
        f"databases, all checked: {done}"
    )
    return message, result.to_dict()


def _do_auto(settings: Settings, job: Job, reporter: _Reporter) -> tuple[str, dict[str, Any]]:
    return run_worker(
        settings, job.id, not_before=parse_not_before(job.params), progress=reporter.stage
    )


class _JobFailed(Exception):
    """An action finished but its outcome is a failure (with a result to show)."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


_ACTIONS: dict[str, Action] = {
    "backup": _do_backup,
    "verify": _do_verify,
    "verify-all": _do_verify,
    "restore": _do_restore,
    "restore-group": _do_group_restore,
    "auto": _do_auto,
}


def _worker_settings(job: Job, environ: Mapping[str, str]) -> Settings:
    values = dict(job.settings)
    secrets_from_env = {k: v for k, v in values_from_env(environ).items() if k in SECRET_KEYS}
    values.update(secrets_from_env)
    # Jobs are started by a host app's pages: their hints name its command.
    return replace(settings_from_mapping(values), command=FLASK_COMMAND)


def run_job(directory: Path, job_id: str, *, environ: Mapping[str, str] | None = None) -> Job:
    """Run a queued job to the end (the worker process); returns the finished job.

    Never raises for the action's own failure: that is recorded in the job file and the audit
    log. Raises :class:`BackupNotFound` or :class:`LockedError` when the job is not runnable.
    """
    with queue_lock(directory):
        job = load_job(directory, job_id)
        if job.state != QUEUED:
            raise LockedError(f"job {job_id} is {job.state}, not waiting to run")
        job = replace(
            job,
            state=RUNNING,
            pid=os.getpid(),
            host=socket.gethostname(),
            updated_at=datetime.now(timezone.utc),
            message="running",
        )
        write_job(directory, job)
    reporter = _Reporter(directory, job)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(reporter, stop), daemon=True)
    beat.start()
    settings: Settings | None = None
    failure: BaseException | None = None
    try:
        settings = _worker_settings(job, os.environ if environ is None else environ)
        action = _ACTIONS.get(job.action)
        if action is None:
            raise BackupError(f"this version cannot run {job.action!r} jobs")
        message, result = action(settings, job, reporter)
        state, ok = DONE, True
    except _JobFailed as exc:
        message, result, state, ok = str(exc), exc.result, FAILED, False
    except BackupError as exc:
        message, result, state, ok, failure = str(exc), {}, FAILED, False, exc
    except Exception as exc:  # the page must say something rather than hang at "running"
        logger.exception("job %s crashed", job_id)
        message = "an unexpected error stopped it; the server's log has the details"
        result, state, ok, failure = {}, FAILED, False, exc
    finally:
        stop.set()
        beat.join()
    # Audit first, then mark the job finished: whoever waits for "done" must find the entry.
    # A restore records its own outcome, except when refused before it started (lock, bad id).
    core_audited = job.action == "restore" and (ok or isinstance(failure, RestoreError))
    # Automatic snapshots leave their trace in the status file (every few minutes, nobody's).
    if settings is not None and not core_audited and job.action != AUTO:
        try:
            audit.record(
                settings,
                action=job.action,
                actor=job.actor,
                ok=ok,
                message=message,
                # The site's settings (a group restore's) are the job's, not the log's.
                details={
                    "via": "web",
                    "job": job.id,
                    **{k: v for k, v in job.params.items() if k != "members"},
                },
            )
        except BackupError as exc:
            logger.error("could not write the audit log: %s", exc)
    reporter.update(force=True, state=state, message=message, result=result)
    return reporter.job


def main(argv: Sequence[str] | None = None) -> int:
    """The worker's entry point; returns the process exit status (0 when the job succeeded)."""
    parser = argparse.ArgumentParser(
        prog="python -m tablettracker_backups.jobs.worker",
        description="Run one job started from the backup pages (internal).",
    )
    parser.add_argument("jobs_dir", type=Path)
    parser.add_argument("job_id")
    parser.add_argument("--detach", action="store_true", help="start the worker and return")
    args = parser.parse_args(argv)
    directory = args.jobs_dir.absolute()
    if not directory.is_dir():
        parser.error(f"no such jobs folder: {directory}")
    if args.detach:
        launch_worker(directory, args.job_id, detach=False)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        finished = run_job(directory, args.job_id)
    except BackupError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return 0 if finished.state == DONE else 2


if __name__ == "__main__":
    sys.exit(main())

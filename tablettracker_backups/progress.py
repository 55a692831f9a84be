"""Progress reports from long operations: one callback type, named by stage.

A backup reports ``snapshot`` (pages) then ``compress`` (bytes); a restore ``verify``,
``safety-snapshot``, ``safety-compress``, ``write``, ``check`` and, only on failure,
``rollback``. The CLI draws them on a terminal, the job worker writes them to the job file.
"""

from __future__ import annotations

from collections.abc import Callable

#: Called with (stage, done, total).
StageProgress = Callable[[str, int, int], None]
#: Called with (done, total) within one stage.
StepProgress = Callable[[int, int], None]


def for_stage(progress: StageProgress | None, stage: str) -> StepProgress | None:
    """A (done, total) callback that reports as ``stage``; None when nobody listens."""
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)

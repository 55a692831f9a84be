"""Dead-man pings, healthchecks.io style: the run says "started" and "finished (exit N)".

A notification needs something to notice a problem; a dead-man service notices silence. With
``BACKUPS_PING_URL`` set, ``run`` sends ``<url>/start`` when it begins, then ``<url>`` when it
exits 0 or ``<url>/<exit code>`` otherwise, with the run's summary (at most 10 kB) as the body.
The service alerts when a finish ping is missing or late, which covers the host being down,
the scheduled task expiring, and this package never starting.

Standard library only (``urllib`` honours ``HTTPS_PROXY``/``HTTP_PROXY``); a short timeout, and
a ping that fails is logged and remembered for the dashboard, never a failed run.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from tablettracker_backups.notifiers import Budget
from tablettracker_backups.notify import record_ping
from tablettracker_backups.settings import Settings
from tablettracker_backups.version import __version__

logger = logging.getLogger(__name__)

#: Seconds a ping may take; a dead-man service answers in milliseconds.
PING_TIMEOUT = 3.0
#: The most of the run's summary a finish ping carries (healthchecks.io keeps 10 kB).
MAX_BODY = 10_000


def ping_address(base: str, suffix: str) -> str:
    """``base`` with ``/suffix`` added to its path (a query string stays at the end)."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + (f"/{suffix}" if suffix else "")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def clip(text: str, limit: int = MAX_BODY) -> bytes:
    """``text`` as UTF-8, cut to at most ``limit`` bytes without splitting a character."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore").encode("utf-8")


def ping(
    settings: Settings, suffix: str = "", body: str = "", *, budget: Budget | None = None
) -> bool:
    """POST to the ping URL plus ``suffix`` (``start``, an exit code, or nothing); whether it
    was answered with a 2xx within the timeout. True when no ping URL is set. Never raises."""
    if not settings.ping_url:
        return True
    url = ping_address(settings.ping_url, suffix)
    what = suffix or "0"
    timeout = PING_TIMEOUT if budget is None else budget.take(PING_TIMEOUT)
    if timeout <= 0:
        logger.warning("ping %s skipped: no time left in this run's notification budget", what)
        record_ping(settings, what=what, ok=False, error="skipped: no time left")
        return False
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked in settings
        url,
        data=clip(body),
        method="POST",
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "User-Agent": f"tablettracker-backups/{__version__}",
        },
    )
    outcome: dict[str, str | None] = {}

    def send() -> None:
        try:
            # A fresh opener reads HTTPS_PROXY/HTTP_PROXY now; urlopen() keeps the first it made.
            opener = urllib.request.build_opener()
            with opener.open(request, timeout=timeout) as response:
                outcome["error"] = (
                    None if 200 <= response.status < 300 else f"HTTP {response.status}"
                )
        except urllib.error.HTTPError as exc:
            outcome["error"] = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            outcome["error"] = str(getattr(exc, "reason", None) or exc)

    # urlopen's timeout is per socket operation; a server that answers a byte at a time could
    # hold it far longer, so the wait itself is bounded too.
    worker = threading.Thread(target=send, name="ping", daemon=True)
    worker.start()
    worker.join(timeout)
    error = outcome.get("error", f"no answer within {timeout:.1f} s")
    if error is not None:
        logger.warning("ping %s to the dead-man service failed: %s", what, error)
    record_ping(settings, what=what, ok=error is None, error=error)
    return error is None

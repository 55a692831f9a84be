"""Delivering one message to notification targets through Apprise, within a time limit.

Apprise (the ``notify`` extra) speaks to each service; this module only bounds it: every target
is sent to in its own thread, and whatever has not answered when the time is up counts as
failed and is left behind (a daemon thread, ended by its own socket timeout or the process).
So a hung mail server or webhook costs a run at most the time it was given, never the backup.
Apprise's HTTP services use ``requests``, which honours ``HTTPS_PROXY``/``HTTP_PROXY``.

Also here: masking a target URL for display, since Apprise URLs carry passwords and tokens.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: What a target is told when the ``apprise`` package is not installed.
MISSING_APPRISE = (
    "the apprise package is not installed: pip install 'tablettracker-backups[notify]'"
)
#: Apprise's own connect and read timeouts per target are lowered to at most this.
SOCKET_TIMEOUT = 8.0
#: Message types Apprise knows (its ``NotifyType`` values); anything else is sent as info.
NOTIFY_TYPES = ("info", "success", "warning", "failure")

_IPV4 = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
_HOSTNAME = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+"
#: A host part that names a real host (shown when masking); anything else in that place is a
#: token (``slack://T1JJ3T3L2/...``, ``tgram://123:abc/...``) and is hidden.
_REAL_HOST = re.compile(rf"\A(?:localhost|{_IPV4}|\[[0-9a-f:.]+\]|{_HOSTNAME})\Z", re.IGNORECASE)
_EMAIL = re.compile(r"\A[^@/\s]+@[a-z0-9.-]+\.[a-z]{2,}\Z", re.IGNORECASE)
#: Query parameters whose values are settings, not secrets.
_PLAIN_PARAMS = frozenset(
    {
        "to",
        "from",
        "cc",
        "bcc",
        "name",
        "mode",
        "smtp",
        "format",
        "method",
        "priority",
        "cto",
        "rto",
    }
)


class Budget:
    """Seconds left for notifiers and pings in one run (or one action)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._deadline = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._deadline - time.monotonic())

    def take(self, limit: float) -> float:
        """At most ``limit`` seconds of what is left."""
        return min(limit, self.left())


@dataclass(frozen=True)
class TargetResult:
    """How sending to one target went. ``target`` is masked; ``key`` identifies the URL."""

    key: str
    target: str
    ok: bool
    error: str | None = None
    seconds: float = 0.0


def target_key(url: str) -> str:
    """A stable identity for a URL that does not reveal it (for the state file)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def apprise_available() -> bool:
    """Whether the ``apprise`` package can be imported (without importing it)."""
    return importlib.util.find_spec("apprise") is not None


def mask_url(url: str) -> str:
    """``url`` with passwords, tokens and webhook paths replaced by ``***``.

    Kept: the scheme, a host that is a real host name or address, its user and port, e-mail
    addresses in the path, and the values of harmless parameters (``to``, ``from``, ``mode``).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    rest, hash_sign, _fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    host, colon, port = hostport.rpartition(":")
    if not colon or not port.isdigit():
        host, port = hostport, ""
    shown = f"{scheme}://"
    if _REAL_HOST.match(host):
        if at:
            user, has_password, _password = userinfo.partition(":")
            shown += f"{user}{':***' if has_password else ''}@"
        shown += host + (f":{port}" if port else "")
    else:
        shown += "***"
    if slash:
        segments = path.split("/")
        shown += "/" + "/".join(
            s if not s or _EMAIL.match(s.replace("%40", "@")) else "***" for s in segments
        )
    if question:
        pairs = []
        for pair in query.split("&"):
            key, _, value = pair.partition("=")
            pairs.append(f"{key}={value if key.lower() in _PLAIN_PARAMS else '***'}")
        shown += "?" + "&".join(pairs)
    if hash_sign:
        shown += "#***"
    return shown


class _ThreadLog(logging.Handler):
    """Apprise explains a failure only in its log: keep each sending thread's last warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread is not None:
            self.last[record.thread] = record.getMessage()


def deliver(
    urls: Sequence[str], *, title: str, body: str, notify_type: str, timeout: float
) -> tuple[TargetResult, ...]:
    """Send one message to every URL at once; return each target's result after at most
    ``timeout`` seconds. Never raises: a failure is a result."""
    if not urls:
        return ()
    if not apprise_available():
        return tuple(TargetResult(target_key(u), mask_url(u), False, MISSING_APPRISE) for u in urls)
    if timeout <= 0:
        return tuple(
            TargetResult(target_key(u), mask_url(u), False, "no time left to send") for u in urls
        )
    import apprise

    # In memory only: Apprise would otherwise keep a cache under the user's home folder.
    asset = apprise.AppriseAsset(storage_mode="memory")
    results: dict[int, TargetResult] = {}
    log = _ThreadLog()
    apprise_logger = logging.getLogger("apprise")
    apprise_logger.addHandler(log)

    def send(index: int, url: str) -> None:
        began = time.monotonic()
        key, shown = target_key(url), mask_url(url)
        try:
            plugin = apprise.Apprise.instantiate(url, asset=asset)
            if plugin is None:
                results[index] = TargetResult(
                    key, shown, False, "Apprise does not understand this URL (scheme or parts)"
                )
                return
            socket_timeout = min(SOCKET_TIMEOUT, timeout)
            plugin.socket_connect_timeout = min(plugin.socket_connect_timeout, socket_timeout)
            plugin.socket_read_timeout = min(plugin.socket_read_timeout, socket_timeout)
            ok = plugin.notify(
                body=body,
                title=title,
                notify_type=notify_type if notify_type in NOTIFY_TYPES else "info",
                body_format="text",
            )
            error = None
            if not ok:
                error = log.last.get(threading.get_ident(), "the service did not accept it")
            results[index] = TargetResult(key, shown, bool(ok), error, time.monotonic() - began)
        except Exception as exc:  # a plugin's bug must not reach the backup
            results[index] = TargetResult(
                key, shown, False, f"{type(exc).__name__}: {exc}", time.monotonic() - began
            )

    deadline = time.monotonic() + timeout
    threads = [
        threading.Thread(target=send, args=(i, u), name=f"notify-{i}", daemon=True)
        for i, u in enumerate(urls)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    finally:
        apprise_logger.removeHandler(log)
    out = []
    for index, url in enumerate(urls):
        result = results.get(index)
        if result is None:
            result = TargetResult(
                target_key(url), mask_url(url), False, f"no answer within {timeout:.0f} s", timeout
            )
        if not result.ok:
            logger.warning("notification to %s failed: %s", result.target, result.error)
        out.append(result)
    return tuple(out)

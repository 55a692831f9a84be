"""CSRF tokens for the blueprint's forms: Flask-WTF's when the host uses it, else our own.

With Flask-WTF's ``CSRFProtect`` registered on the host app, its token and check are used, so
one token works for the host's forms and ours. Without it, a random token is kept in the
session and every POST must echo it in the ``csrf_token`` form field (compared in constant
time). The demo app uses these helpers for its own forms too.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from flask import current_app, g, request, session
from werkzeug.exceptions import BadRequest

SESSION_KEY = "_tablettracker_backups_csrf"
FIELD = "csrf_token"


class CSRFTokenError(BadRequest):
    """A POST without the form's token, or with a wrong or expired one (HTTP 400)."""

    description = "The form's security token is missing or expired."


def is_token_failure(error: BaseException) -> bool:
    """Whether a 400 was a refused form token (ours, or Flask-WTF's ``CSRFError``)."""
    if isinstance(error, CSRFTokenError):
        return True
    try:
        from flask_wtf.csrf import CSRFError
    except ImportError:  # Flask-WTF is optional
        return False
    return isinstance(error, CSRFError)


def _flask_wtf() -> Any | None:
    """The host's ``CSRFProtect`` when registered and enabled, else None."""
    ext = current_app.extensions.get("csrf")
    if ext is None or not current_app.config.get("WTF_CSRF_ENABLED", True):
        return None
    return ext


def field_name() -> str:
    """The form field carrying the token."""
    if _flask_wtf() is not None:
        return str(current_app.config.get("WTF_CSRF_FIELD_NAME", FIELD))
    return FIELD


def csrf_token() -> str:
    """The token to put in a form (a template global)."""
    if _flask_wtf() is not None:
        from flask_wtf.csrf import generate_csrf

        return str(generate_csrf())
    token = session.get(SESSION_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[SESSION_KEY] = token
    return token


def rotate(*_args: Any, **_kwargs: Any) -> None:
    """Forget the session's form token, so the next page gets a new one: connected to
    Flask-Login's ``user_logged_in`` and ``user_logged_out`` signals, so a token seen before a
    login (on a shared computer, in a page left open) is worthless after it. Flask-WTF's token
    too, when the host uses it."""
    session.pop(SESSION_KEY, None)
    if current_app.extensions.get("csrf") is not None:
        name = str(current_app.config.get("WTF_CSRF_FIELD_NAME", FIELD))
        session.pop(name, None)
        g.pop(name, None)  # Flask-WTF keeps the request's token here too


def protect() -> None:
    """Reject (400) a POST whose token is missing or wrong; do nothing for other methods."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    ext = _flask_wtf()
    if ext is not None:
        # CSRFProtect already checked app-wide unless the host turned the default check off.
        if not current_app.config.get("WTF_CSRF_CHECK_DEFAULT", True):
            ext.protect()
        return
    expected = session.get(SESSION_KEY)
    given = request.form.get(FIELD, "")
    if (
        not isinstance(expected, str)
        or not given
        or not hmac.compare_digest(given.encode(), expected.encode())
    ):
        raise CSRFTokenError()
